//! Where the rules under test come from, and which front end installs them:
//! the user's choice, before anything is installed (netfilter installs).

use std::path::{Path, PathBuf};

use crate::base::net::Family;
use crate::rules::golden;
use crate::rules::istio::{IstioCapture, Shape};
use crate::{Error, Result};

/// Which iptables front end installs a restore file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// iptables-nft-restore: the rules land in nf_tables (Debian's default).
    Nft,
    /// iptables-legacy-restore: the rules land in the legacy x_tables.
    Legacy,
    /// Native nftables (`nft -f`): for the built-in rules, their `inet`
    /// ruleset; `--nft` files are always installed this way.
    NftNative,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::NftNative => "nft-native",
        }
    }
}

/// Where the rules under test come from.
#[derive(Clone, Debug)]
pub enum RuleSource {
    /// The built-in reference generator.
    Builtin(IstioCapture),
    /// iptables-restore input for IPv4 and/or ip6tables-restore input for
    /// IPv6, installed with the run's backend.
    RestoreFiles { v4: Option<PathBuf>, v6: Option<PathBuf> },
    /// Restore input cut out of files as they were read: Istio's dry-run /
    /// golden format holds both families' blocks in one file
    /// ([`crate::rules::golden`]). Built by [`RuleSource::from_rule_files`].
    Split { v4: Option<Part>, v6: Option<Part> },
    /// A native nftables ruleset, installed with `nft -f`.
    NftFile(PathBuf),
    /// A shell script of iptables/nft/ip commands (the form
    /// `istio-iptables --dry-run` prints), run with `sh` in the pod.
    Script(PathBuf),
    /// A generator command line, run with `sh -c` in the pod after the
    /// topology is up (as an init container would be).
    Generator(String),
    /// Restore input held in memory (a mesh profile's own rule set, a
    /// policy's reference rules): `label` selects `expect.paths`, `what`
    /// names it in reports.
    Text { label: String, what: String, v4: Option<String>, v6: Option<String> },
}

/// One family's restore input and the file it came from (its line numbers).
#[derive(Clone, Debug)]
pub struct Part {
    pub file: PathBuf,
    pub text: String,
}

/// Which netfilter front end the rules land in, as far as the harness can
/// know: a script or generator may use any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    IptablesNft,
    IptablesLegacy,
    Nft,
    Any,
}

impl Frontend {
    /// The `--backend` that installs into this front end; None for `Any`.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Frontend::IptablesNft => Some(Backend::Nft),
            Frontend::IptablesLegacy => Some(Backend::Legacy),
            Frontend::Nft => Some(Backend::NftNative),
            Frontend::Any => None,
        }
    }
}

impl RuleSource {
    /// An IPv4 restore file alone.
    pub fn restore(path: impl Into<PathBuf>) -> RuleSource {
        RuleSource::RestoreFiles { v4: Some(path.into()), v6: None }
    }

    /// What `--rules FILE` / `--rules6 FILE` name: restore files as they
    /// are, unless one is in Istio's dry-run format, which is split per
    /// family here (IPv4 blocks first, then IPv6).
    pub fn from_rule_files(v4: Option<PathBuf>, v6: Option<PathBuf>) -> Result<RuleSource> {
        // Bounded: regular files only (a FIFO or /dev/zero is refused at once).
        let read = |p: &PathBuf| crate::base::bounded::read_text(p, crate::base::bounded::RULES_MAX);
        let dry_run = |p: &PathBuf| -> Result<Option<Vec<golden::Restore>>> {
            match golden::parse(&read(p)?, &p.display().to_string())? {
                golden::Parsed::DryRun(r) => Ok(Some(r)),
                golden::Parsed::Plain | golden::Parsed::Other => Ok(None),
            }
        };
        let whole = |p: &PathBuf| -> Result<Part> { Ok(Part { file: p.clone(), text: read(p)? }) };
        let part = |p: &PathBuf, r: &golden::Restore| Part { file: p.clone(), text: r.text.clone() };
        let (r4, r6) =
            (v4.as_ref().map(dry_run).transpose()?.flatten(), v6.as_ref().map(dry_run).transpose()?.flatten());
        if r4.is_none() && r6.is_none() {
            return Ok(RuleSource::RestoreFiles { v4, v6 });
        }
        let (mut p4, mut p6) = (None, None);
        if let (Some(p), Some(r)) = (&v4, &r4) {
            for x in r {
                match x.family {
                    Family::Ipv4 => p4 = Some(part(p, x)),
                    Family::Ipv6 => p6 = Some(part(p, x)),
                }
            }
            if let (Some(q), Some(x)) = (&v6, r.iter().find(|x| x.family == Family::Ipv6)) {
                return Err(Error::config(format!(
                    "{}:{}: this file has IPv6 blocks too (Istio's dry-run format: IPv4 blocks, then IPv6 from this line), and --rules6 {} gives IPv6 rules as well: drop --rules6, or give --rules a file with IPv4 blocks only",
                    p.display(),
                    x.line,
                    q.display()
                )));
            }
        } else if let Some(p) = &v4 {
            p4 = Some(whole(p)?);
        }
        if let (Some(p), Some(r)) = (&v6, &r6) {
            // --rules6 says the family; a file holding two restores belongs to --rules.
            if r.len() > 1 {
                return Err(Error::config(format!(
                    "{}:{}: --rules6 got a file with an IPv4 and an IPv6 restore (Istio's dry-run format): give it with --rules, which splits it per family",
                    p.display(),
                    r[1].line
                )));
            }
            p6 = Some(part(p, &r[0]));
        } else if let Some(p) = &v6 {
            p6 = Some(whole(p)?);
        }
        Ok(RuleSource::Split { v4: p4, v6: p6 })
    }

    /// What `--script FILE` names: a shell script, unless the file is restore
    /// input (iptables-restore's, or Istio's dry-run format), which no shell
    /// can run and which is then installed as `--rules` would install it.
    pub fn from_script_file(path: PathBuf) -> Result<RuleSource> {
        let text = crate::base::bounded::read_text(&path, crate::base::bounded::RULES_MAX)?;
        match golden::parse(&text, &path.display().to_string())? {
            golden::Parsed::Other => Ok(RuleSource::Script(path)),
            golden::Parsed::Plain => Ok(RuleSource::RestoreFiles { v4: Some(path), v6: None }),
            golden::Parsed::DryRun(_) => RuleSource::from_rule_files(Some(path), None),
        }
    }

    /// The families this source has rules for: restore files only for the
    /// families given; every other source for both.
    pub fn families(&self) -> Vec<Family> {
        match self {
            RuleSource::RestoreFiles { v4, v6 } => given(v4.is_some(), v6.is_some()),
            RuleSource::Split { v4, v6 } => given(v4.is_some(), v6.is_some()),
            RuleSource::Text { v4, v6, .. } => given(v4.is_some(), v6.is_some()),
            _ => Family::BOTH.to_vec(),
        }
    }

    fn files(&self) -> Vec<&PathBuf> {
        // (Text has none: its rules were read with its profile.)
        match self {
            RuleSource::RestoreFiles { v4, v6 } => v4.iter().chain(v6.iter()).collect(),
            RuleSource::Split { v4, v6 } => {
                let mut files: Vec<&PathBuf> = v4.iter().chain(v6.iter()).map(|p| &p.file).collect();
                files.dedup();
                files
            }
            RuleSource::NftFile(p) | RuleSource::Script(p) => vec![p],
            _ => vec![],
        }
    }

    /// How reports name the source.
    pub fn describe(&self) -> String {
        match self {
            RuleSource::Builtin(c) => format!(
                "built-in Istio rules ({} shape)",
                match c.shape {
                    Shape::Current => "current",
                    Shape::Classic => "classic",
                }
            ),
            RuleSource::RestoreFiles { v4, v6 } => {
                let names: Vec<String> = v4.iter().chain(v6.iter()).map(|p| p.display().to_string()).collect();
                names.join(" + ")
            }
            RuleSource::Split { .. } => {
                let names: Vec<String> = self.files().iter().map(|p| p.display().to_string()).collect();
                names.join(" + ")
            }
            RuleSource::NftFile(p) => format!("nft ruleset {}", p.display()),
            RuleSource::Script(p) => format!("script {}", p.display()),
            RuleSource::Generator(c) => format!("generator `{c}`"),
            RuleSource::Text { what, .. } => what.clone(),
        }
    }

    /// The name scenarios use for this rule set in `expect.paths`.
    pub fn label(&self) -> String {
        let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match self {
            RuleSource::Builtin(c) => match c.shape {
                Shape::Current => "istio-current".into(),
                Shape::Classic => "istio-classic".into(),
            },
            RuleSource::RestoreFiles { v4, v6 } => v4.as_ref().or(v6.as_ref()).map(|p| stem(p)).unwrap_or_default(),
            RuleSource::Split { v4, v6 } => v4.as_ref().or(v6.as_ref()).map(|p| stem(&p.file)).unwrap_or_default(),
            RuleSource::NftFile(p) | RuleSource::Script(p) => stem(p),
            RuleSource::Generator(_) => "generator".into(),
            RuleSource::Text { label, .. } => label.clone(),
        }
    }

    /// The rule texts known before anything runs, with where each came from.
    pub(crate) fn texts(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for p in self.files() {
            let text = crate::base::bounded::read_text(p, crate::base::bounded::RULES_MAX)?;
            if let RuleSource::NftFile(_) = self {
                crate::base::bounded::nft_includes_outside(p, &text)?;
            }
            out.push((p.display().to_string(), text));
        }
        if let RuleSource::Text { what, v4, v6, .. } = self {
            out.extend(v4.iter().chain(v6).map(|t| (what.clone(), t.clone())));
        }
        Ok(out)
    }
}

fn given(v4: bool, v6: bool) -> Vec<Family> {
    Family::BOTH
        .into_iter()
        .filter(|f| match f {
            Family::Ipv4 => v4,
            Family::Ipv6 => v6,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_files_are_split_and_scripts_stay_scripts() {
        let dir = std::env::temp_dir().join(format!("sidecheck-dryrun-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let both = write(
            "both.golden",
            "iptables-save\n* nat\n-A OUTPUT -d 10.0.0.1/32 -j RETURN\nCOMMIT\n* nat\n-A OUTPUT -d ::1/128 -j RETURN\nCOMMIT\n",
        );
        let plain = write("plain.rules", "*nat\n-A OUTPUT -j RETURN\nCOMMIT\n");
        let script = write("s.sh", "iptables-restore <<EOF\n*nat\n-A OUTPUT -j RETURN\nCOMMIT\nEOF\n");
        let source = RuleSource::from_rule_files(Some(both.clone()), None).unwrap();
        let RuleSource::Split { v4: Some(v4), v6: Some(v6) } = &source else { panic!("{source:?}") };
        assert!(v4.text.contains("10.0.0.1") && !v4.text.contains("::1") && !v4.text.contains("save"));
        assert!(v6.text.contains("::1/128") && !v6.text.contains("10.0.0.1"));
        assert_eq!(source.families(), Family::BOTH);
        assert_eq!(source.describe(), both.display().to_string());
        assert!(matches!(
            RuleSource::from_rule_files(Some(plain.clone()), None).unwrap(),
            RuleSource::RestoreFiles { .. }
        ));
        let e = RuleSource::from_rule_files(Some(both.clone()), Some(plain.clone())).unwrap_err().to_string();
        assert!(e.contains("both.golden:5: this file has IPv6 blocks too") && e.contains("drop --rules6"), "{e}");
        let e = RuleSource::from_rule_files(None, Some(both.clone())).unwrap_err().to_string();
        assert!(e.contains("give it with --rules"), "{e}");
        assert!(matches!(RuleSource::from_script_file(script).unwrap(), RuleSource::Script(_)));
        assert!(matches!(RuleSource::from_script_file(both).unwrap(), RuleSource::Split { .. }));
        assert!(matches!(RuleSource::from_script_file(plain).unwrap(), RuleSource::RestoreFiles { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

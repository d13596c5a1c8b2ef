//! Installing a rule source inside the pod namespace (and nowhere else):
//! which front end it lands in, what can be checked before, and the steps
//! that install it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::net::Family;
use crate::base::tool::find_tool;
use crate::netfilter::run::run_in;
use crate::netfilter::{self, RuleFormat};
use crate::rules::source::{Backend, Frontend, RuleSource};
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

impl RuleSource {
    /// Which front end this source's rules land in under `backend`.
    pub fn frontend(&self, backend: Backend) -> Frontend {
        let chosen = netfilter::for_backend(backend);
        let format = match self {
            // The built-in rules come in every format.
            RuleSource::Builtin(_) => chosen.format(),
            RuleSource::RestoreFiles { .. } | RuleSource::Split { .. } | RuleSource::Text { .. } => RuleFormat::Restore,
            RuleSource::NftFile(_) => RuleFormat::Nft,
            RuleSource::Script(_) | RuleSource::Generator(_) => return Frontend::Any,
        };
        // Another backend's input goes to the first front end that takes it
        // (`check` refuses restore files under nft-native).
        match netfilter::all().iter().find(|f| f.format() == format) {
            Some(first) if chosen.format() != format => first.frontend(),
            _ => chosen.frontend(),
        }
    }

    /// Everything that can be checked before a namespace exists: files
    /// readable and not empty, tools installed.
    pub fn check(&self, backend: Backend) -> Result<()> {
        for (origin, text) in self.texts()? {
            if text.trim().is_empty() {
                return Err(Error::config(format!("{origin} is empty: no rules to test")));
            }
            if let Some((line, what, name)) = unknown_owners(&text).into_iter().next() {
                return Err(Error::config(format!(
                    "{origin}:{line}: the rules match {what} `{name}`, which this machine does not have: owner matches resolve names when the rules are installed, so they cannot be installed here. Create it ({}add {name}) or write its number in the rules",
                    if what == "user" { "user" } else { "group" }
                )));
            }
        }
        if let RuleSource::Generator(c) = self {
            if c.trim().is_empty() {
                return Err(Error::config("--generator is empty: give the command that writes the rules"));
            }
        }
        if let RuleSource::RestoreFiles { v4: None, v6: None } = self {
            return Err(Error::config("no restore file given: pass --rules (IPv4) and/or --rules6 (IPv6)"));
        }
        if matches!(self, RuleSource::RestoreFiles { .. } | RuleSource::Split { .. } | RuleSource::Text { .. })
            && netfilter::for_backend(backend).format() != RuleFormat::Restore
        {
            return Err(Error::config("restore files are installed with iptables: use --backend nft or legacy (or give a native ruleset with --nft)"));
        }
        match netfilter::front_end(self.frontend(backend)) {
            Some(front) => {
                for f in self.families() {
                    let tool = front.installer(f, None);
                    find_tool(tool.program, tool.package)?;
                }
            }
            None => drop(find_tool("sh", "dash")?),
        }
        Ok(())
    }

    /// Install into `ns` for `families`. Failures carry the tool's own
    /// output; on success that output is returned (bounded), for errors
    /// found later (a source that installed nothing).
    pub fn install(&self, ns: &Namespace, backend: Backend, families: &[Family], timeout: Duration) -> Result<String> {
        let read = |p: &PathBuf| crate::base::bounded::read_text(p, crate::base::bounded::RULES_MAX);
        // (what it is called in messages, tool, program, args, stdin)
        let mut steps: Vec<(String, String, PathBuf, Vec<String>, String)> = Vec::new();
        let front = netfilter::front_end(self.frontend(backend));
        // A step through the source's front end (every source but a script or generator has one).
        let mut through = |origin: String, family: Family, file: Option<&Path>, stdin: String| -> Result<()> {
            let Some(front) = front else { return Ok(()) };
            let tool = front.installer(family, file);
            steps.push((origin, tool.program.into(), find_tool(tool.program, tool.package)?, tool.args, stdin));
            Ok(())
        };
        match self {
            RuleSource::Builtin(c) => match front.map(|f| (f.format(), f.name())) {
                // One ruleset for both families.
                Some((RuleFormat::Nft, name)) => {
                    through(format!("{} ({name})", self.describe()), Family::Ipv4, None, c.to_nft())?
                }
                _ => {
                    for f in families {
                        through(format!("{} ({})", self.describe(), f.name()), *f, None, c.to_restore_for(*f))?;
                    }
                }
            },
            RuleSource::RestoreFiles { v4, v6 } => {
                for (f, file) in [(Family::Ipv4, v4), (Family::Ipv6, v6)] {
                    if let (Some(p), true) = (file, families.contains(&f)) {
                        through(p.display().to_string(), f, None, read(p)?)?;
                    }
                }
            }
            RuleSource::Split { v4, v6 } => {
                for (f, part) in [(Family::Ipv4, v4), (Family::Ipv6, v6)] {
                    if let (Some(p), true) = (part, families.contains(&f)) {
                        through(format!("{} ({})", p.file.display(), f.name()), f, None, p.text.clone())?;
                    }
                }
            }
            RuleSource::Text { v4, v6, .. } => {
                for (f, text) in [(Family::Ipv4, v4), (Family::Ipv6, v6)] {
                    if let (Some(t), true) = (text, families.contains(&f)) {
                        through(format!("{} ({})", self.describe(), f.name()), f, None, t.clone())?;
                    }
                }
            }
            // nft reads the file itself so its errors name the user's file and line.
            RuleSource::NftFile(p) => through(self.describe(), Family::Ipv4, Some(p), String::new())?,
            // -e: a failing command stops the script; -x (marked by PS4,
            // set in run_in): the error can name the command that failed.
            RuleSource::Script(p) => steps.push((
                self.describe(),
                "sh -e".into(),
                find_tool("sh", "dash")?,
                vec!["-e".into(), "-x".into(), p.display().to_string()],
                String::new(),
            )),
            RuleSource::Generator(c) => steps.push((
                self.describe(),
                "sh -c".into(),
                find_tool("sh", "dash")?,
                vec!["-c".into(), c.clone()],
                String::new(),
            )),
        }
        let mut said = String::new();
        // Scripts and generators run arbitrary commands: contained, and
        // the host checked around them.
        let contained = matches!(self, RuleSource::Script(_) | RuleSource::Generator(_));
        let host_before = contained.then(crate::sandbox::contain::host_state).transpose()?;
        for (origin, tool, program, args, stdin) in steps {
            let (program, args) =
                if contained { crate::sandbox::contain::wrap(program, args)? } else { (program, args) };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ran = run_in(ns, &program, &args, &stdin, timeout).map_err(|e| match e {
                Error::Timeout { doing, seconds } => Error::RulesDidNotApply {
                    origin: origin.clone(),
                    namespace: ns.name().into(),
                    tool: tool.clone(),
                    status: format!(
                        "did not finish within {seconds} s and was killed (raise --rules-timeout if it is just slow)"
                    ),
                    output: doing,
                },
                e => e,
            });
            if let Some(before) = &host_before {
                let changed = crate::sandbox::contain::changes(before, &crate::sandbox::contain::host_state()?);
                if !changed.is_empty() {
                    return Err(crate::sandbox::contain::changed_host(&origin, &changed));
                }
            }
            let ran = ran?;
            if !ran.status.success() {
                let output = match self {
                    RuleSource::Script(p) => crate::netfilter::installed::script_failure(p, &ran.output),
                    _ => crate::base::text::shown(&ran.output),
                };
                return Err(Error::RulesDidNotApply {
                    origin,
                    namespace: ns.name().to_string(),
                    tool,
                    status: ran.status.to_string(),
                    output,
                });
            }
            said.push_str(&ran.output);
        }
        Ok(said)
    }
}

/// Owner matches naming a user or group this machine lacks, as (line,
/// "user"/"group", name): iptables' `--uid-owner`/`--gid-owner` and nft's
/// `skuid`/`skgid`. The tools resolve names at install time and fail there
/// with a bare "Bad value"; finding them first gives a message that says why.
pub fn unknown_owners(text: &str) -> Vec<(usize, &'static str, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (k, w) in words.iter().enumerate() {
            let what = match *w {
                "--uid-owner" | "skuid" => "user",
                "--gid-owner" | "skgid" => "group",
                _ => continue,
            };
            let Some(value) = words[k + 1..].iter().find(|v| !matches!(**v, "!" | "!=" | "==")) else { continue };
            // A range (1000-2000), a number or an nft set is not a name.
            let name = value.trim_matches(|c| c == '"' || c == '\'');
            if name.is_empty() || name.chars().all(|c| c.is_ascii_digit() || c == '-') || name.starts_with('{') {
                continue;
            }
            let known = match what {
                "user" => nix::unistd::User::from_name(name).ok().flatten().is_some(),
                _ => nix::unistd::Group::from_name(name).ok().flatten().is_some(),
            };
            if !known {
                out.push((i + 1, what, name.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::istio::{IstioCapture, Shape};

    #[test]
    fn owner_names_this_machine_lacks_are_found_before_install() {
        let text = "*nat\n-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\n-A ISTIO_OUTPUT -m owner ! --gid-owner nosuchgrp -m owner ! --gid-owner 202 -j RETURN\n-A X -m owner --uid-owner root -j RETURN\n";
        assert_eq!(unknown_owners(text), [(3, "group", "nosuchgrp".to_string())]);
        let nft = "add rule inet t c skuid != nosuchusr skgid 1000-2000 counter return\n";
        assert_eq!(unknown_owners(nft), [(1, "user", "nosuchusr".to_string())]);
    }

    #[test]
    fn missing_tool_names_the_package() {
        let e = find_tool("sidecheck-no-such-tool", "iptables").unwrap_err().to_string();
        assert!(e.contains("apt-get install -y iptables"), "{e}");
    }

    #[test]
    fn missing_and_empty_rule_files_are_reported_by_path() {
        let e = RuleSource::restore("/nonexistent/x.rules").check(Backend::Nft).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.rules"), "{e}");
        let file = std::env::temp_dir().join(format!("sidecheck-rules-test-{}", std::process::id()));
        std::fs::write(&file, "\n").unwrap();
        for source in
            [RuleSource::restore(file.clone()), RuleSource::NftFile(file.clone()), RuleSource::Script(file.clone())]
        {
            let e = source.check(Backend::Nft).unwrap_err().to_string();
            assert!(e.contains("is empty"), "{e}");
        }
        std::fs::remove_file(&file).unwrap();
        let e = RuleSource::Generator(" ".into()).check(Backend::Nft).unwrap_err().to_string();
        assert!(e.contains("--generator is empty"), "{e}");
    }

    #[test]
    fn labels_name_the_rule_set() {
        assert_eq!(RuleSource::Builtin(IstioCapture::default_for(Shape::Classic)).label(), "istio-classic");
        assert_eq!(RuleSource::NftFile("/x/istio.nft".into()).label(), "istio");
        assert_eq!(RuleSource::Generator("x".into()).frontend(Backend::Legacy), Frontend::Any);
    }

    #[test]
    fn the_front_end_follows_the_backend_where_the_source_allows() {
        use Frontend::*;
        let text =
            RuleSource::Text { label: "t".into(), what: "t".into(), v4: Some("*nat\nCOMMIT\n".into()), v6: None };
        let builtin = RuleSource::Builtin(IstioCapture::default_for(Shape::Current));
        let (nft, script) = (RuleSource::NftFile("/x.nft".into()), RuleSource::Script("/x.sh".into()));
        // (source, under nft, legacy, nft-native)
        for (source, want) in [
            (&builtin, [IptablesNft, IptablesLegacy, Nft]),
            (&text, [IptablesNft, IptablesLegacy, IptablesNft]),
            (&RuleSource::restore("/x.rules"), [IptablesNft, IptablesLegacy, IptablesNft]),
            (&nft, [Nft, Nft, Nft]),
            (&script, [Any, Any, Any]),
        ] {
            let got = [Backend::Nft, Backend::Legacy, Backend::NftNative].map(|b| source.frontend(b));
            assert_eq!(got, want, "{}", source.describe());
        }
        let e = text.check(Backend::NftNative).unwrap_err().to_string();
        assert!(e.contains("restore files are installed with iptables"), "{e}");
    }
}

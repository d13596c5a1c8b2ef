//! The rules under test: the built-in Istio reference generator, and
//! installing a rule set inside the pod namespace (and nowhere else).

pub mod installed;
pub mod netlink;
pub mod trace;

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::net::Family;
use crate::base::tool::find_tool;
use crate::rules::golden;
use crate::rules::istio::Shape;
use crate::rules::source::{Backend, Frontend, Part, RuleSource};
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

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

    pub fn frontend(&self, backend: Backend) -> Frontend {
        match (self, backend) {
            (RuleSource::Builtin(_), Backend::NftNative) => Frontend::Nft,
            (
                RuleSource::Builtin(_)
                | RuleSource::RestoreFiles { .. }
                | RuleSource::Split { .. }
                | RuleSource::Text { .. },
                Backend::Nft | Backend::NftNative,
            ) => Frontend::IptablesNft,
            (
                RuleSource::Builtin(_)
                | RuleSource::RestoreFiles { .. }
                | RuleSource::Split { .. }
                | RuleSource::Text { .. },
                Backend::Legacy,
            ) => Frontend::IptablesLegacy,
            (RuleSource::NftFile(_), _) => Frontend::Nft,
            (RuleSource::Script(_) | RuleSource::Generator(_), _) => Frontend::Any,
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
        if let (
            RuleSource::RestoreFiles { .. } | RuleSource::Split { .. } | RuleSource::Text { .. },
            Backend::NftNative,
        ) = (self, backend)
        {
            return Err(Error::config("restore files are installed with iptables: use --backend nft or legacy (or give a native ruleset with --nft)"));
        }
        match self.frontend(backend) {
            Frontend::IptablesNft | Frontend::IptablesLegacy => {
                for f in self.families() {
                    find_tool(backend.restore_tool_for(f), "iptables")?;
                }
            }
            Frontend::Nft => drop(find_tool("nft", "nftables")?),
            Frontend::Any => drop(find_tool("sh", "dash")?),
        }
        Ok(())
    }

    /// The rule texts known before anything runs, with where each came from.
    fn texts(&self) -> Result<Vec<(String, String)>> {
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

    /// Install into `ns` for `families`. Failures carry the tool's own
    /// output; on success that output is returned (bounded), for errors
    /// found later (a source that installed nothing).
    pub fn install(&self, ns: &Namespace, backend: Backend, families: &[Family], timeout: Duration) -> Result<String> {
        let read = |p: &PathBuf| crate::base::bounded::read_text(p, crate::base::bounded::RULES_MAX);
        // (what it is called in messages, tool, program, args, stdin)
        let mut steps: Vec<(String, String, PathBuf, Vec<String>, String)> = Vec::new();
        match self {
            RuleSource::Builtin(c) if backend == Backend::NftNative => {
                steps.push((
                    format!("{} (nftables)", self.describe()),
                    "nft".into(),
                    find_tool("nft", "nftables")?,
                    vec!["-f".into(), "-".into()],
                    c.to_nft(),
                ));
            }
            RuleSource::Builtin(c) => {
                for f in families {
                    let t = backend.restore_tool_for(*f);
                    steps.push((
                        format!("{} ({})", self.describe(), f.name()),
                        t.into(),
                        find_tool(t, "iptables")?,
                        vec![],
                        c.to_restore_for(*f),
                    ));
                }
            }
            RuleSource::RestoreFiles { v4, v6 } => {
                for (f, file) in [(Family::Ipv4, v4), (Family::Ipv6, v6)] {
                    if let (Some(p), true) = (file, families.contains(&f)) {
                        let t = backend.restore_tool_for(f);
                        steps.push((p.display().to_string(), t.into(), find_tool(t, "iptables")?, vec![], read(p)?));
                    }
                }
            }
            RuleSource::Split { v4, v6 } => {
                for (f, part) in [(Family::Ipv4, v4), (Family::Ipv6, v6)] {
                    if let (Some(p), true) = (part, families.contains(&f)) {
                        let tool = backend.restore_tool_for(f);
                        steps.push((
                            format!("{} ({})", p.file.display(), f.name()),
                            tool.into(),
                            find_tool(tool, "iptables")?,
                            vec![],
                            p.text.clone(),
                        ));
                    }
                }
            }
            RuleSource::Text { v4, v6, .. } => {
                for (f, text) in [(Family::Ipv4, v4), (Family::Ipv6, v6)] {
                    if let (Some(t), true) = (text, families.contains(&f)) {
                        let tool = backend.restore_tool_for(f);
                        steps.push((
                            format!("{} ({})", self.describe(), f.name()),
                            tool.into(),
                            find_tool(tool, "iptables")?,
                            vec![],
                            t.clone(),
                        ));
                    }
                }
            }
            // nft reads the file itself so its errors name the user's file and line.
            RuleSource::NftFile(p) => steps.push((
                self.describe(),
                "nft".into(),
                find_tool("nft", "nftables")?,
                vec!["-f".into(), p.display().to_string()],
                String::new(),
            )),
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
        let host_before = contained.then(crate::sandbox::contain::host_state);
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
                let changed = crate::sandbox::contain::changes(before, &crate::sandbox::contain::host_state());
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

fn given(v4: bool, v6: bool) -> Vec<Family> {
    Family::BOTH
        .into_iter()
        .filter(|f| match f {
            Family::Ipv4 => v4,
            Family::Ipv6 => v6,
        })
        .collect()
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

const OUTPUT_CAP: usize = 64 * 1024;

/// What the kernel holds after installation, per front end that can hold it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub iptables_nft: Option<String>,
    pub ip6tables_nft: Option<String>,
    pub iptables_legacy: Option<String>,
    pub ip6tables_legacy: Option<String>,
    /// `nft -a list ruleset` (with rule handles).
    pub nft: Option<String>,
}

/// Read back the rules in `ns` through every front end `frontend` may have used.
pub fn snapshot(ns: &Namespace, frontend: Frontend, timeout: Duration) -> Result<Snapshot> {
    let run = |tool: &str, package: &str, args: &[&str]| -> Result<String> {
        let path = find_tool(tool, package)?;
        let ran = run_in(ns, &path, args, "", timeout)?;
        if !ran.status.success() {
            return Err(Error::config(format!(
                "{tool} {} in namespace {} failed: {}",
                args.join(" "),
                ns.name(),
                ran.output.trim()
            )));
        }
        Ok(ran.output)
    };
    let any = frontend == Frontend::Any;
    let nft = any || frontend == Frontend::IptablesNft;
    let legacy = any || frontend == Frontend::IptablesLegacy;
    Ok(Snapshot {
        iptables_nft: nft.then(|| run("iptables-nft-save", "iptables", &[])).transpose()?,
        ip6tables_nft: nft.then(|| run("ip6tables-nft-save", "iptables", &[])).transpose()?,
        iptables_legacy: legacy.then(|| run("iptables-legacy-save", "iptables", &[])).transpose()?,
        ip6tables_legacy: legacy.then(|| run("ip6tables-legacy-save", "iptables", &[])).transpose()?,
        nft: Some(run("nft", "nftables", &["-a", "list", "ruleset"])?),
    })
}

/// Output of a command run inside a namespace.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub output: String,
}

/// Run `program args` inside `ns` with `stdin` fed to it, bounded by `timeout`
/// (killed after it), output (stdout+stderr) capped at 64 KiB.
pub fn run_in(ns: &Namespace, program: &Path, args: &[&str], stdin: &str, timeout: Duration) -> Result<Ran> {
    let mut cmd = ns.command(program);
    cmd.args(args)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PS4", crate::netfilter::installed::XTRACE)
        .process_group(0);
    // Dies with sidecheck, even by SIGKILL: a contained source's `unshare`
    // then takes its whole PID namespace along (--kill-child).
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let doing = format!("running {} in namespace {}", program.display(), ns.name());
    let spawned = {
        let _guard = crate::sandbox::registry::creating();
        let spawned = cmd.spawn();
        if let Ok(c) = &spawned {
            crate::sandbox::registry::track_group(c.id() as i32);
        }
        spawned
    };
    let mut child = spawned.map_err(Error::io(doing.clone()))?;
    let pgid = child.id() as i32;
    struct Untrack(i32);
    impl Drop for Untrack {
        fn drop(&mut self) {
            crate::sandbox::registry::untrack_group(self.0);
        }
    }
    let _untrack = Untrack(pgid);
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    // Keep the first 64 KiB of output and drain the rest: a child that
    // prints megabytes must never block on a full pipe.
    // Kept in shared buffers: a killed child's output is shown too, without
    // waiting for pipes a leftover grandchild may hold open.
    let collect = |r: Option<Box<dyn std::io::Read + Send>>| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = buf.clone();
        let handle = std::thread::spawn(move || {
            let mut dropped = 0u64;
            if let Some(mut r) = r {
                use std::io::Read;
                let mut chunk = [0u8; 16 * 1024];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut kept = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let room = (OUTPUT_CAP - kept.len()).min(n);
                    kept.extend_from_slice(&chunk[..room]);
                    dropped += (n - room) as u64;
                }
            }
            if dropped > 0 {
                let mut kept = shared.lock().unwrap_or_else(|e| e.into_inner());
                kept.extend_from_slice(format!("\n[... {dropped} more bytes of output not shown]\n").as_bytes());
            }
        });
        (buf, handle)
    };
    let so_far = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    let out = collect(child.stdout.take().map(|s| Box::new(s) as _));
    let err = collect(child.stderr.take().map(|s| Box::new(s) as _));
    // Wait on a thread so the deadline is a channel timeout, not a poll loop.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => status.map_err(Error::io(doing.clone()))?,
        Err(_) => {
            // The whole process group: a generator's own children too.
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            // A moment for the readers to take what was already written.
            std::thread::sleep(Duration::from_millis(50));
            let said = so_far(&out.0) + &so_far(&err.0);
            let said = if said.trim().is_empty() {
                "it printed nothing".to_string()
            } else {
                format!("its output before it was killed:\n{}", crate::base::text::shown(&said))
            };
            return Err(Error::Timeout { doing: format!("{doing} ({said})"), seconds: timeout.as_secs_f32() });
        }
    };
    let _ = writer.join();
    let _ = out.1.join();
    let _ = err.1.join();
    let output = so_far(&out.0) + &so_far(&err.0);
    Ok(Ran { status, output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::istio::IstioCapture;

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

    #[test]
    fn labels_name_the_rule_set() {
        assert_eq!(RuleSource::Builtin(IstioCapture::default_for(Shape::Classic)).label(), "istio-classic");
        assert_eq!(RuleSource::NftFile("/x/istio.nft".into()).label(), "istio");
        assert_eq!(RuleSource::Generator("x".into()).frontend(Backend::Legacy), Frontend::Any);
    }
}

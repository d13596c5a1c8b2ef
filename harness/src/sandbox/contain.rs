//! Containment of scripts and generators: each runs as the init of its own
//! PID namespace (with its own /proc), so every process it starts dies with
//! it, on exit, on the timeout, on a signal, and when sidecheck itself dies
//! (the `unshare` in between has PR_SET_PDEATHSIG and `--kill-child`); and
//! the root namespace's network state is compared before and after it ran:
//! a source that changed the host stops the run with exit 2 naming what.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// `program args` wrapped to run as PID 1 of a new PID namespace (and a
/// private mount namespace holding that namespace's /proc).
pub fn wrap(program: PathBuf, args: Vec<String>) -> Result<(PathBuf, Vec<String>)> {
    let unshare = crate::base::tool::find_tool("unshare", "util-linux")?;
    let mut all: Vec<String> =
        ["--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc", "--"].iter().map(|s| s.to_string()).collect();
    all.push(program.display().to_string());
    all.extend(args);
    Ok((unshare, all))
}

/// The root namespace's network state, each part as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState(Vec<(String, String)>);

/// What is compared: links, addresses, routes and policy rules of both
/// families, the rulesets of both iptables backends and of nft, and
/// /run/netns.
const PARTS: &[(&str, &[&str])] = &[
    ("links (ip link)", &["ip", "-o", "link", "show"]),
    ("addresses (ip addr)", &["ip", "-o", "addr", "show"]),
    ("IPv4 routes (ip route show table all)", &["ip", "-4", "route", "show", "table", "all"]),
    ("IPv6 routes (ip -6 route show table all)", &["ip", "-6", "route", "show", "table", "all"]),
    ("IPv4 policy rules (ip rule)", &["ip", "-4", "rule", "show"]),
    ("IPv6 policy rules (ip -6 rule)", &["ip", "-6", "rule", "show"]),
    ("iptables-nft rules (iptables-nft-save)", &["iptables-nft-save"]),
    ("ip6tables-nft rules (ip6tables-nft-save)", &["ip6tables-nft-save"]),
    ("iptables-legacy rules (iptables-legacy-save)", &["iptables-legacy-save"]),
    ("ip6tables-legacy rules (ip6tables-legacy-save)", &["ip6tables-legacy-save"]),
    ("nftables ruleset (nft list ruleset)", &["nft", "list", "ruleset"]),
];

/// Longest one host-state tool may take: they answer in milliseconds, and a
/// hung one (a held lock, a stuck netlink dump) must stop the run, not hang it.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of a tool's output kept: host listings are far smaller.
const TOOL_OUTPUT_MAX: u64 = 64 << 20;

/// Read the host's state (this process's own network namespace, the root
/// one). A tool that does not answer in time is an error naming it.
pub fn host_state() -> Result<HostState> {
    let mut parts = Vec::new();
    for (what, cmd) in PARTS {
        let Ok(tool) = crate::base::tool::find_tool(cmd[0], "") else { continue };
        let text = read_tool(&tool, &cmd[1..], TOOL_TIMEOUT)?;
        // Counters and comment lines vary on their own: not a change.
        parts.push((what.to_string(), crate::sandbox::listing::normalize_counters(&text)));
    }
    parts.push(("network namespaces (/run/netns)".into(), netns_names()));
    parts.push(("files in /etc (names, sizes, modification times)".into(), tree(Path::new("/etc"), ETC_MAX_ENTRIES)));
    Ok(HostState(parts))
}

/// `tool args`' standard output, or why it could not run (that the state
/// cannot be read is itself compared); an error if it is still running
/// after `timeout` (it is killed).
fn read_tool(tool: &Path, args: &[&str], timeout: Duration) -> Result<String> {
    let started = Instant::now();
    let mut cmd = Command::new(tool);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    // Forks under the creation lock: the stubs may be written meanwhile
    // (they start while the rules install), and a child forked while a
    // stub file is open for writing makes its exec fail with ETXTBSY.
    let spawned = {
        let _creating = crate::sandbox::registry::creating();
        cmd.spawn()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Ok(format!("(could not run: {e})")),
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // The output ends when the tool (and anything it left holding the pipe) exits.
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.by_ref().take(TOOL_OUTPUT_MAX).read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(timeout.saturating_sub(started.elapsed()));
    loop {
        match child.try_wait() {
            Ok(Some(_)) if out.is_ok() => break,
            Ok(None) if out.is_ok() && started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let shown: Vec<String> =
                    std::iter::once(tool.display().to_string()).chain(args.iter().map(|a| a.to_string())).collect();
                return Err(Error::config(format!(
                    "reading the host's network state around a rule source: `{}` did not finish within {} s and was killed; the host's own tool hangs (a held lock?): run it by hand to see, then run sidecheck again",
                    shown.join(" "),
                    timeout.as_secs_f32()
                )));
            }
        }
    }
    Ok(String::from_utf8_lossy(&out.unwrap_or_default()).into_owned())
}

/// /run/netns, without the namespaces sidecheck runs make (`sidecheck-*`,
/// any run's: other runs start and end meanwhile).
fn netns_names() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| !n.starts_with("sidecheck-"));
    names.sort();
    names.iter().map(|n| format!("{n}\n")).collect()
}

/// Most entries of /etc compared (a Debian host has a few thousand), and
/// how deep: bounded whatever a source leaves there.
const ETC_MAX_ENTRIES: usize = 100_000;
const ETC_MAX_DEPTH: usize = 32;

/// Every entry below `root` (not following links, reading no file's
/// contents: /etc holds secrets), one line each: path, size, modification
/// time to the nanosecond. A source writing there changes the host for
/// every later run. At most `max_entries`; a line says when there were more.
fn tree(root: &Path, max_entries: usize) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut lines = Vec::new();
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        let Ok(dir) = std::fs::read_dir(root.join(&rel)) else { continue };
        for e in dir.flatten() {
            if lines.len() >= max_entries {
                lines.sort();
                lines.push(format!("(more than {max_entries} entries: the rest not compared)"));
                return lines.iter().map(|l| format!("{l}\n")).collect();
            }
            let path = rel.join(e.file_name());
            let Ok(m) = e.path().symlink_metadata() else { continue };
            lines.push(format!("{} {} {}.{:09}", path.display(), m.len(), m.mtime(), m.mtime_nsec()));
            if m.is_dir() && depth < ETC_MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The parts that differ, with the lines added and removed (bounded).
pub fn changes(before: &HostState, after: &HostState) -> Vec<String> {
    let mut out = Vec::new();
    for ((what, a), (_, b)) in before.0.iter().zip(&after.0) {
        if a == b {
            continue;
        }
        let (old, new): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        let added: Vec<&str> = new.iter().filter(|l| !old.contains(l)).copied().take(5).collect();
        let removed: Vec<&str> = old.iter().filter(|l| !new.contains(l)).copied().take(5).collect();
        let mut s = what.clone();
        if !added.is_empty() {
            s.push_str(&format!("; added: {}", added.join(" | ")));
        }
        if !removed.is_empty() {
            s.push_str(&format!("; removed: {}", removed.join(" | ")));
        }
        out.push(crate::base::text::escape_controls(&s));
    }
    out
}

/// The error for a rule source that changed the host.
pub fn changed_host(source: &str, changes: &[String]) -> Error {
    Error::config(format!(
        "{source} changed the host's own network state (the root namespace), not only the pod's: {}\nA rule source must act inside the pod's namespace only; undo the change by hand (sidecheck does not guess how) and fix the source",
        changes.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_part_and_the_lines() {
        let a = HostState(vec![("links".into(), "1: lo\n".into()), ("nft".into(), "".into())]);
        let b = HostState(vec![("links".into(), "1: lo\n".into()), ("nft".into(), "table ip x {\n}\n".into())]);
        assert!(changes(&a, &a).is_empty());
        assert_eq!(changes(&a, &b), ["nft; added: table ip x { | }"]);
    }

    #[test]
    fn a_hung_host_tool_is_an_error_naming_it() {
        let sleep = crate::base::tool::find_tool("sleep", "coreutils").unwrap();
        let started = Instant::now();
        let e = read_tool(&sleep, &["30"], Duration::from_millis(300)).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
        assert!(e.contains("sleep 30` did not finish within 0.3 s"), "{e}");
        // One that answers is read whole.
        let echo = crate::base::tool::find_tool("echo", "coreutils").unwrap();
        assert_eq!(read_tool(&echo, &["a", "b"], Duration::from_secs(10)).unwrap(), "a b\n");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sidecheck-contain-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("x")).unwrap();
        dir
    }

    #[test]
    fn a_write_deep_in_the_tree_is_a_change() {
        let dir = scratch("deep");
        std::fs::write(dir.join("x/y"), "a").unwrap();
        let state = |d: &Path| HostState(vec![("files".into(), tree(d, 1000))]);
        let before = state(&dir);
        assert_eq!(changes(&before, &state(&dir)), Vec::<String>::new());
        // Rewriting x/y leaves x itself as it was: only a recursive walk sees it.
        std::fs::write(dir.join("x/y"), "abc").unwrap();
        let changed = changes(&before, &state(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(changed[0].contains("added: x/y 3 ") && changed[0].contains("removed: x/y 1 "), "{changed:?}");
    }

    #[test]
    fn the_walk_is_bounded() {
        let dir = scratch("bounded");
        for i in 0..5 {
            std::fs::write(dir.join(format!("x/{i}")), "").unwrap();
        }
        let listed = tree(&dir, 3);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(listed.lines().count(), 4, "{listed}");
        assert!(listed.ends_with("(more than 3 entries: the rest not compared)\n"), "{listed}");
    }

    #[test]
    fn counters_and_comments_are_not_changes() {
        let normalize = crate::sandbox::listing::normalize_counters;
        assert_eq!(normalize("# Generated by x on Tue\n:INPUT ACCEPT [12:345]\n"), ":INPUT ACCEPT [0:0]\n");
        assert_eq!(normalize("counter packets 3 bytes 180 accept\n"), normalize("counter packets 0 bytes 0 accept\n"));
    }
}

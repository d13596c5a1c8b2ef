//! Containment of scripts and generators: each runs as the init of its own
//! PID namespace (with its own /proc), so every process it starts dies with
//! it, on exit, on the timeout, on a signal, and when sidecheck itself dies
//! (the `unshare` in between has PR_SET_PDEATHSIG and `--kill-child`); and
//! the root namespace's network state is compared before and after it ran:
//! a source that changed the host stops the run with exit 2 naming what.

use std::path::PathBuf;
use std::process::Command;

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

/// Read the host's state (this process's own network namespace, the root one).
pub fn host_state() -> HostState {
    let mut parts = Vec::new();
    for (what, cmd) in PARTS {
        let Ok(tool) = crate::base::tool::find_tool(cmd[0], "") else { continue };
        // Forks under the creation lock: the stubs may be written meanwhile
        // (they start while the rules install), and a child forked while a
        // stub file is open for writing makes its exec fail with ETXTBSY.
        let ran = {
            let _creating = crate::sandbox::registry::creating();
            Command::new(tool).args(&cmd[1..]).output()
        };
        let text = match ran {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(could not run: {e})"),
        };
        // Counters and comment lines vary on their own: not a change.
        parts.push((what.to_string(), crate::sandbox::listing::normalize_counters(&text)));
    }
    parts.push(("network namespaces (/run/netns)".into(), netns_names()));
    parts.push(("files in /etc (names, sizes, modification times)".into(), etc_files()));
    HostState(parts)
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

/// The entries directly in /etc with size and mtime: a source writing
/// there changes the host for every later run.
fn etc_files() -> String {
    use std::os::unix::fs::MetadataExt;
    let mut lines: Vec<String> = std::fs::read_dir("/etc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let m = e.path().symlink_metadata().ok()?;
                    Some(format!("{} {} {}", e.file_name().to_string_lossy(), m.len(), m.mtime()))
                })
                .collect()
        })
        .unwrap_or_default();
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
    fn counters_and_comments_are_not_changes() {
        let normalize = crate::sandbox::listing::normalize_counters;
        assert_eq!(normalize("# Generated by x on Tue\n:INPUT ACCEPT [12:345]\n"), ":INPUT ACCEPT [0:0]\n");
        assert_eq!(normalize("counter packets 3 bytes 180 accept\n"), normalize("counter packets 0 bytes 0 accept\n"));
    }
}

//! What a rule source actually left in the pod, read back from the kernel:
//! a source that installed nothing for a family under test is an error (a
//! run of the built-in scenarios against no rules would just FAIL, which
//! says nothing about the generator), unless an empty rule set is what the
//! user means to test. Also the bounded view of a tool's output that every
//! error shows.

use std::time::Duration;

use crate::base::net::Family;
use crate::base::text::shown;
use crate::netfilter;
use crate::rules::source::Frontend;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

use crate::netfilter::run::XTRACE;

/// A failed script's output, explained: the command that stopped it (the
/// last one `sh -x` traced) with its line in the script when it can be
/// found, then what the commands printed (the trace left out).
pub fn script_failure(script: &std::path::Path, output: &str) -> String {
    let traced: Vec<&str> = output.lines().filter_map(|l| l.strip_prefix(XTRACE)).collect();
    let rest: Vec<&str> = output.lines().filter(|l| !l.starts_with(XTRACE)).collect();
    let mut out = String::new();
    if let Some(last) = traced.last() {
        // The k-th run of this command is its k-th occurrence in the script.
        let k = traced.iter().filter(|c| words(c) == words(last)).count();
        let text = crate::base::bounded::read_text(script, crate::base::bounded::RULES_MAX).unwrap_or_default();
        let line = text.lines().enumerate().filter(|(_, l)| words(l) == words(last)).nth(k - 1).map(|(i, _)| i + 1);
        let at = match line {
            Some(n) => format!(" ({}:{n})", script.display()),
            None => String::new(),
        };
        out.push_str(&format!(
            "the command that failed{at}: {}
",
            crate::base::text::escape_controls(last)
        ));
    }
    out.push_str(&shown(&rest.join("\n")));
    out.trim_end().to_string()
}

/// A command's words without the shell's quoting, to compare a traced
/// command with its script line.
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(|w| w.replace(['\'', '"'], "")).filter(|w| !w.is_empty()).collect()
}

fn label(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

/// Which families have rules (or a base chain policy other than accept) in
/// a snapshot's x_tables listings (`*-save` text).
pub fn families_with_rules(snap: &netfilter::Snapshot) -> Vec<Family> {
    let mut v4 = false;
    let mut v6 = false;
    for (text, is_v6) in [
        (&snap.iptables_nft, false),
        (&snap.iptables_legacy, false),
        (&snap.ip6tables_nft, true),
        (&snap.ip6tables_legacy, true),
    ] {
        let has = text.as_deref().unwrap_or("").lines().any(|l| {
            l.starts_with("-A ")
                || (l.starts_with(':') && l.split_whitespace().nth(1).is_some_and(|p| p != "ACCEPT" && p != "-"))
        });
        if has {
            if is_v6 {
                v6 = true;
            } else {
                v4 = true;
            }
        }
    }
    Family::BOTH.into_iter().filter(|f| if *f == Family::Ipv4 { v4 } else { v6 }).collect()
}

/// (IPv4, IPv6) have rules, or a base chain whose policy is not accept, in
/// nf_tables in `ns` (tables named `skip`, the tracer's, left out): what
/// the listings' text says, from one dump of each. Tables of family ip are
/// IPv4's, ip6 IPv6's; inet, and netdev/bridge ingress rules, see both.
fn nf_tables_families(ns: &Namespace, skip: &str, timeout: Duration) -> Result<(bool, bool)> {
    use crate::netfilter::netlink::{nftables, Socket, NFPROTO_IPV4, NFPROTO_IPV6};
    let sees = |family: u8| (family != NFPROTO_IPV6, family != NFPROTO_IPV4);
    let read = Socket::in_namespace(ns, timeout, |sock| -> std::io::Result<(bool, bool)> {
        let (mut v4, mut v6, mut bad) = (false, false, false);
        let mut mark = |family: u8| {
            let (a, b) = sees(family);
            v4 |= a;
            v6 |= b;
        };
        sock.transact(&nftables::dump_request(nftables::NFT_MSG_GETRULE, 1), 1, |m| match nftables::rule(m) {
            Ok(Some(r)) if r.table != skip => mark(r.family),
            Ok(_) => {}
            Err(_) => bad = true,
        })?;
        sock.transact(&nftables::dump_request(nftables::NFT_MSG_GETCHAIN, 2), 2, |m| {
            match nftables::chain_policy(m) {
                Ok(Some((table, policy))) if table != skip && policy != nftables::NF_ACCEPT => mark(m.family),
                Ok(_) => {}
                Err(_) => bad = true,
            }
        })?;
        if bad {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a malformed rule or chain message"));
        }
        Ok((v4, v6))
    })?;
    read.map_err(Error::io(format!("reading back the nf_tables rules in namespace {}", ns.name())))
}

/// After `source` ran in `pod`: every family under test must hold rules,
/// unless `allow_empty`. `output` is what the source printed.
pub fn verify(
    pod: &Namespace,
    source: &str,
    frontend: Frontend,
    families: &[Family],
    allow_empty: bool,
    output: &str,
    timeout: Duration,
) -> Result<()> {
    if allow_empty {
        return Ok(());
    }
    // Every listing a rule of this source could be in: its own front end's
    // when the harness installed it (a restore file cannot land elsewhere),
    // every front end's for a script or generator; from the tools this
    // machine has (a run without tracing needs no nft, so its absence is no
    // error here).
    let fronts = netfilter::front_ends(frontend);
    // nf_tables is asked over netlink (one dump, no `*-save` processes:
    // they were a tenth of a session's set-up); x_tables' legacy tables
    // only show through their own tool.
    let (in_nf_tables, legacy): (Vec<_>, Vec<_>) = fronts.iter().partition(|f| f.in_nf_tables());
    let skip = crate::netfilter::trace::trace_table();
    let snap = netfilter::snapshot::read_back(pod, &legacy, netfilter::snapshot::Unreadable::Skipped, timeout)?;
    let mut have = families_with_rules(&snap);
    if !in_nf_tables.is_empty() {
        let (v4, v6) = nf_tables_families(pod, skip, timeout)?;
        have.extend([(Family::Ipv4, v4), (Family::Ipv6, v6)].into_iter().filter(|(_, has)| *has).map(|(f, _)| f));
    }
    let missing: Vec<&str> = families.iter().filter(|f| !have.contains(f)).map(|f| label(*f)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let said = if output.trim().is_empty() {
        "it printed nothing".to_string()
    } else {
        format!("its output:\n{}", shown(output))
    };
    Err(Error::config(format!(
        "{source} installed no rules for {} (read back from {} in namespace {}): nothing of it would be tested; {said}\nCheck the rule source; to test an empty rule set on purpose, pass --allow-empty-rules",
        missing.join(" and "),
        fronts.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
        pod.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(v4: &str, v6: &str) -> netfilter::Snapshot {
        netfilter::Snapshot {
            iptables_nft: Some(String::new()),
            ip6tables_nft: Some(String::new()),
            iptables_legacy: Some(v4.into()),
            ip6tables_legacy: Some(v6.into()),
            nft: None,
        }
    }

    #[test]
    fn empty_tables_are_no_rules_and_each_family_counts_alone() {
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert!(families_with_rules(&snap(empty, empty)).is_empty());
        let v4 = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        assert_eq!(families_with_rules(&snap(v4, empty)), [Family::Ipv4]);
        let drop6 = "*filter\n:INPUT DROP [0:0]\nCOMMIT\n";
        assert_eq!(families_with_rules(&snap(empty, drop6)), [Family::Ipv6]);
    }

    #[test]
    fn a_failed_script_names_its_command_and_line() {
        let dir = std::env::temp_dir().join(format!("sidecheck-installed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s.sh");
        std::fs::write(&script, "set -e\niptables -t nat -N X\niptables -t nat -A X --dprt 80 -j RETURN\n").unwrap();
        let output = "+sidecheck: iptables -t nat -N X\n+sidecheck: iptables -t nat -A X --dprt 80 -j RETURN\niptables v1.8.9 (nf_tables): unknown option \"--dprt\"\n";
        let got = script_failure(&script, output);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            got.starts_with(&format!(
                "the command that failed ({}:3): iptables -t nat -A X --dprt 80",
                script.display()
            )),
            "{got}"
        );
        assert!(got.ends_with("unknown option \"--dprt\""), "{got}");
        assert!(!got.contains(XTRACE));
    }

    #[test]
    fn shown_output_keeps_the_last_lines_and_escapes_controls() {
        let long: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let s = shown(&long);
        assert!(s.starts_with("[... 60 earlier lines not shown]\nline 61\n"), "{s}");
        assert!(s.ends_with("line 100"));
        assert_eq!(shown("a\x1b[31mred\x07"), "a\\x1b[31mred\\x07");
    }
}

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
/// a snapshot; tables named `skip` (the tracer's) do not count.
pub fn families_with_rules(snap: &netfilter::Snapshot, skip: &str) -> Vec<Family> {
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
    let (n4, n6) = nft_families(snap.nft.as_deref().unwrap_or(""), skip);
    v4 |= n4;
    v6 |= n6;
    Family::BOTH.into_iter().filter(|f| if *f == Family::Ipv4 { v4 } else { v6 }).collect()
}

/// (IPv4, IPv6) have rules in an `nft list ruleset` listing.
fn nft_families(listing: &str, skip: &str) -> (bool, bool) {
    let (mut v4, mut v6) = (false, false);
    let mut table: Option<(bool, bool)> = None;
    let mut in_chain = false;
    for line in listing.lines() {
        let t = line.trim();
        if !line.starts_with(char::is_whitespace) && t.starts_with("table ") {
            let words: Vec<&str> = t.split_whitespace().collect();
            let name = words.get(2).copied().unwrap_or("");
            table = if name == skip {
                None
            } else {
                match words.get(1).copied() {
                    Some("ip") => Some((true, false)),
                    Some("ip6") => Some((false, true)),
                    // inet, and netdev/bridge ingress rules, see both families.
                    _ => Some((true, true)),
                }
            };
            continue;
        }
        if t.starts_with("chain ") {
            in_chain = true;
            continue;
        }
        if t == "}" {
            in_chain = false;
            continue;
        }
        let Some((f4, f6)) = table else { continue };
        let policy_drops = t.contains("policy drop");
        let rule = in_chain && !t.is_empty() && !t.starts_with("type ") && !t.starts_with("comment ");
        if rule || policy_drops {
            v4 |= f4;
            v6 |= f6;
        }
    }
    (v4, v6)
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
    let snap = netfilter::snapshot::read_back(pod, fronts, netfilter::snapshot::Unreadable::Skipped, timeout)?;
    let have = families_with_rules(&snap, crate::netfilter::trace::trace_table());
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

    fn snap(v4: &str, v6: &str, nft: &str) -> netfilter::Snapshot {
        netfilter::Snapshot {
            iptables_nft: Some(v4.into()),
            ip6tables_nft: Some(v6.into()),
            iptables_legacy: Some(String::new()),
            ip6tables_legacy: Some(String::new()),
            nft: Some(nft.into()),
        }
    }

    #[test]
    fn empty_tables_are_no_rules_and_each_family_counts_alone() {
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert!(families_with_rules(&snap(empty, empty, ""), "sidecheck_trace").is_empty());
        let v4 = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        assert_eq!(families_with_rules(&snap(v4, empty, ""), "sidecheck_trace"), [Family::Ipv4]);
        let drop6 = "*filter\n:INPUT DROP [0:0]\nCOMMIT\n";
        assert_eq!(families_with_rules(&snap(empty, drop6, ""), "sidecheck_trace"), [Family::Ipv6]);
    }

    #[test]
    fn nft_tables_count_for_their_family_and_the_tracer_never() {
        let ours = "table inet sidecheck_trace {\n\tchain pre {\n\t\ttype filter hook prerouting priority -500; policy accept;\n\t\tmeta nftrace set 1\n\t}\n}\n";
        assert!(families_with_rules(&snap("", "", ours), "sidecheck_trace").is_empty());
        let chain_only = "table ip6 x {\n\tchain c {\n\t\ttype nat hook output priority -100; policy accept;\n\t}\n}\n";
        assert!(families_with_rules(&snap("", "", chain_only), "sidecheck_trace").is_empty());
        let ip6 = "table ip6 x {\n\tchain c {\n\t\ttype nat hook output priority -100; policy accept;\n\t\ttcp dport 80 redirect to :15001\n\t}\n}\n";
        assert_eq!(families_with_rules(&snap("", "", ip6), "sidecheck_trace"), [Family::Ipv6]);
        let inet = ip6.replace("ip6 x", "inet x");
        assert_eq!(families_with_rules(&snap("", "", &inet), "sidecheck_trace"), Family::BOTH);
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

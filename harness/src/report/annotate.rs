//! GitHub Actions annotations: one `::error` workflow command per failing
//! trial, pointing at the line of the user's rule file where the rule that
//! decided the connection's fate is written.
//!
//! The trace names that rule by its position in the kernel's chain; the
//! position is mapped back to a line by replaying the file's appends and
//! inserts per chain (restore input, an iptables command script, or an
//! nftables ruleset).

use std::collections::HashMap;

use crate::netfilter::trace::Step;
use crate::report::Report;
use crate::verdict::{Outcome, TrialResult};

/// NFPROTO numbers, as trace events carry them.
const IPV4: u8 = 2;
const IPV6: u8 = 10;
const INET: u8 = 1;

/// Escapes a workflow command's message: GitHub reads `%`, CR and LF as
/// encoded, so a multi-line message stays one command.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a property value (`file=`, `title=`): also `:` (which ends the
/// properties) and `,` (which separates them).
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// A rule by its place in the kernel: what a trace event names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub nfproto: u8,
    pub table: String,
    pub chain: String,
    /// 1-based position in the chain.
    pub number: u32,
}

/// The rule that decided a failing trial: on its observed path, the rule
/// element where the path first leaves the expected one (or the last rule
/// before that point, the one that sent the packet the wrong way); with no
/// expected path, the last rule of the first leg (what the pod's rules did
/// to the first SYN). None when the trial was not traced or the rule's
/// position is unknown.
pub fn deciding_rule(t: &TrialResult) -> Option<RuleRef> {
    let observed = t.observed.path.as_deref()?;
    let obs: Vec<&str> = observed.split(" -> ").collect();
    let candidates: Vec<&str> = match t.expected.path.as_deref() {
        Some(e) if e != observed => {
            let exp: Vec<&str> = e.split(" -> ").collect();
            let at = exp.iter().zip(&obs).position(|(a, b)| a != b).unwrap_or(exp.len().min(obs.len()));
            // The differing element itself, then the rules before it, nearest first.
            obs.get(at).into_iter().chain(obs[..at.min(obs.len())].iter().rev()).copied().collect()
        }
        _ => t.observed.legs.first()?.elements.iter().rev().map(String::as_str).collect(),
    };
    candidates.into_iter().find_map(|element| rule_of_element(t, element))
}

/// `ISTIO_OUTPUT RULE 8`, or a one-rule chain's bare name, as a rule of the
/// trial's trace events.
fn rule_of_element(t: &TrialResult, element: &str) -> Option<RuleRef> {
    let (chain, number) = match element.rsplit_once(" RULE ") {
        Some((c, n)) => (c, Some(n.parse::<u32>().ok()?)),
        None if !element.contains(' ') => (element, None),
        None => return None,
    };
    t.observed.legs.iter().flat_map(|l| &l.events).find_map(|e| match e.step {
        Step::Rule(n) if n > 0 && e.chain == chain && number.is_none_or(|want| want == n) => {
            Some(RuleRef { nfproto: e.nfproto, table: e.table.clone(), chain: e.chain.clone(), number: n })
        }
        _ => None,
    })
}

/// What a rule file holds, which says how its lines become rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// iptables-restore input for one family (`--rules`: IPv4, `--rules6`:
    /// IPv6). A table given twice (Istio's golden files: the IPv4 blocks,
    /// then the IPv6 ones) is IPv6 the second time.
    Restore { ipv6: bool },
    /// Shell commands (`iptables -t nat -A ...`); restore-format text in a
    /// script is read as `Restore { ipv6: false }` would.
    Script,
    /// An nftables ruleset (`nft -f` input).
    Nft,
}

/// Each chain's rules in a file, as the lines they are written on, in the
/// order the kernel holds them.
pub type RuleLines = HashMap<(u8, String, String), Vec<usize>>;

/// The lines of `text`'s rules (1-based), by (nfproto, table, chain).
pub fn rule_lines(kind: FileKind, text: &str) -> RuleLines {
    let mut chains = Chains::default();
    match kind {
        FileKind::Nft => nft_lines(text, &mut chains),
        FileKind::Restore { ipv6 } => restore_lines(text, ipv6, &mut chains),
        FileKind::Script if text.lines().any(|l| l.trim_start().starts_with('*')) => {
            restore_lines(text, false, &mut chains)
        }
        FileKind::Script => script_lines(text, &mut chains),
    }
    chains.0.into_iter().map(|(k, v)| (k, v.into_iter().map(|(line, _)| line).collect())).collect()
}

/// Per chain: (line, rule text after the chain name) in kernel order.
#[derive(Default)]
struct Chains(HashMap<(u8, String, String), Vec<(usize, String)>>);

impl Chains {
    /// Applies one iptables operation (`-A CHAIN spec`, `-I CHAIN [n] spec`,
    /// `-D`, `-F`, `-N`, `-X`) written on `line`.
    fn iptables(&mut self, nfproto: u8, table: &str, words: &[&str], line: usize) {
        let Some(at) = words.iter().position(|w| w.starts_with('-') && OPS.contains(w)) else { return };
        let op = words[at];
        let chain = words.get(at + 1).copied();
        let key = |c: &str| (nfproto, table.to_string(), c.to_string());
        // The rule's text without flags that are not part of it, to find it again for `-D CHAIN spec`.
        let spec = |from: usize| {
            words[from..].iter().filter(|w| !matches!(**w, "-w" | "--wait")).copied().collect::<Vec<_>>().join(" ")
        };
        match (op, chain) {
            ("-A" | "--append", Some(c)) => self.0.entry(key(c)).or_default().push((line, spec(at + 2))),
            ("-I" | "--insert", Some(c)) => {
                let (pos, from) = match words.get(at + 2).and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => (n.max(1) - 1, at + 3),
                    None => (0, at + 2),
                };
                let rules = self.0.entry(key(c)).or_default();
                rules.insert(pos.min(rules.len()), (line, spec(from)));
            }
            ("-D" | "--delete", Some(c)) => {
                let rules = self.0.entry(key(c)).or_default();
                let i = match words.get(at + 2).and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) if words.len() == at + 3 => n.checked_sub(1),
                    _ => rules.iter().position(|(_, s)| *s == spec(at + 2)),
                };
                if let Some(i) = i.filter(|i| *i < rules.len()) {
                    rules.remove(i);
                }
            }
            ("-F" | "--flush", Some(c)) if !c.starts_with('-') => {
                self.0.insert(key(c), Vec::new());
            }
            ("-F" | "--flush", _) => self.0.retain(|(p, t, _), _| !(*p == nfproto && t == table)),
            ("-N" | "--new-chain", Some(c)) => {
                self.0.entry(key(c)).or_default();
            }
            ("-X" | "--delete-chain", Some(c)) if !c.starts_with('-') => {
                self.0.remove(&key(c));
            }
            _ => {}
        }
    }
}

const OPS: [&str; 12] = [
    "-A",
    "--append",
    "-I",
    "--insert",
    "-D",
    "--delete",
    "-F",
    "--flush",
    "-N",
    "--new-chain",
    "-X",
    "--delete-chain",
];

fn restore_lines(text: &str, ipv6: bool, chains: &mut Chains) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut nfproto, mut table) = (if ipv6 { IPV6 } else { IPV4 }, String::new());
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            let n = seen.entry(table.clone()).or_default();
            nfproto = if ipv6 || *n > 0 { IPV6 } else { IPV4 };
            *n += 1;
        } else if let Some(decl) = line.strip_prefix(':') {
            // A declared chain starts empty (restore flushes it).
            if let Some(c) = decl.split_whitespace().next() {
                chains.0.insert((nfproto, table.clone(), c.to_string()), Vec::new());
            }
        } else if line.starts_with('-') {
            let words: Vec<&str> = line.split_whitespace().collect();
            chains.iptables(nfproto, &table, &words, i + 1);
        }
    }
}

fn script_lines(text: &str, chains: &mut Chains) {
    for (i, raw) in text.lines().enumerate() {
        let words: Vec<&str> = raw.split_whitespace().collect();
        // `sudo iptables ...` and `/sbin/iptables-nft ...` alike.
        let Some(at) = words.iter().position(|w| !matches!(*w, "sudo" | "exec" | "command")) else { continue };
        let tool = words[at].rsplit('/').next().unwrap_or_default();
        let nfproto = match tool.split('-').next() {
            Some("iptables") if !tool.contains("restore") && !tool.contains("save") => IPV4,
            Some("ip6tables") if !tool.contains("restore") && !tool.contains("save") => IPV6,
            _ => continue,
        };
        let args = &words[at + 1..];
        let table = args
            .iter()
            .position(|w| matches!(*w, "-t" | "--table"))
            .and_then(|k| args.get(k + 1))
            .copied()
            .or_else(|| args.iter().find_map(|w| w.strip_prefix("--table=")))
            .unwrap_or("filter");
        chains.iptables(nfproto, table, args, i + 1);
    }
}

fn nft_family(word: &str) -> Option<u8> {
    match word {
        "ip" => Some(IPV4),
        "ip6" => Some(IPV6),
        "inet" => Some(INET),
        _ => None,
    }
}

/// Both nft syntaxes: blocks (`table ip t { chain c { rule } }`) and
/// commands (`add rule ip t c ...`, `insert rule ...`, `flush chain ...`).
fn nft_lines(text: &str, chains: &mut Chains) {
    // Where the block parser is: the table, the chain, and whether the
    // current block is something else (a set, a map) whose lines are no rules.
    let (mut table, mut chain): (Option<(u8, String)>, Option<String>) = (None, None);
    let mut other_depth = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let opens = line.ends_with('{');
        if other_depth > 0 {
            other_depth = other_depth + line.matches('{').count() - line.matches('}').count().min(other_depth);
            continue;
        }
        match words.as_slice() {
            ["flush", "ruleset", ..] => chains.0.clear(),
            ["table", rest @ ..] if opens => {
                let (family, name) = match rest {
                    [f, n, ..] if nft_family(f).is_some() => (nft_family(f).unwrap(), n),
                    [n, ..] => (IPV4, n),
                    [] => continue,
                };
                table = Some((family, name.trim_end_matches('{').to_string()));
            }
            ["chain", name, ..] if table.is_some() => {
                let name = name.trim_end_matches('{').to_string();
                let (f, t) = table.clone().unwrap();
                chains.0.entry((f, t, name.clone())).or_default();
                // `chain c { type ...; policy accept; }` on one line holds no rule.
                if opens {
                    chain = Some(name);
                }
            }
            // A closing brace ends the chain, or else the table.
            ["}", ..] | ["};", ..] if chain.take().is_none() => table = None,
            ["}", ..] | ["};", ..] => {}
            [verb @ ("add" | "insert"), "rule", f, t, c, ..] if nft_family(f).is_some() => {
                let key = (nft_family(f).unwrap(), t.to_string(), c.to_string());
                let rules = chains.0.entry(key).or_default();
                if *verb == "add" {
                    rules.push((i + 1, String::new()));
                } else {
                    rules.insert(0, (i + 1, String::new()));
                }
            }
            ["delete" | "flush", "table", f, t, ..] if nft_family(f).is_some() => {
                let family = nft_family(f).unwrap();
                chains.0.retain(|(p, name, _), _| !(*p == family && name == t));
            }
            ["flush", "chain", f, t, c, ..] if nft_family(f).is_some() => {
                chains.0.insert((nft_family(f).unwrap(), t.to_string(), c.to_string()), Vec::new());
            }
            [first, ..] if chain.is_some() => {
                // Chain properties are no rules.
                if !matches!(*first, "type" | "policy" | "comment" | "devices") {
                    let (f, t) = table.clone().unwrap();
                    chains.0.entry((f, t, chain.clone().unwrap())).or_default().push((i + 1, String::new()));
                }
                // A rule continued on the next lines (an anonymous set).
                if opens {
                    other_depth = 1;
                }
            }
            _ if opens => other_depth = 1,
            _ => {}
        }
    }
}

/// The user's rule files, read, for mapping rules to lines.
#[derive(Default)]
pub struct Locator {
    files: Vec<(String, RuleLines)>,
}

impl Locator {
    /// `name` is the path as the annotation shows it.
    pub fn add(&mut self, name: String, kind: FileKind, text: &str) {
        self.files.push((name, rule_lines(kind, text)));
    }

    /// The file and line a rule is written on, if one of the files holds it.
    pub fn locate(&self, r: &RuleRef) -> Option<(&str, usize)> {
        let key = (r.nfproto, r.table.clone(), r.chain.clone());
        self.files.iter().find_map(|(name, lines)| {
            let line = *lines.get(&key)?.get((r.number as usize).checked_sub(1)?)?;
            Some((name.as_str(), line))
        })
    }
}

/// One `::error` line per failing trial, file and line where known.
pub fn annotations(report: &Report, locator: &Locator) -> String {
    let mut out = String::new();
    for t in report.trials.iter().filter(|t| t.outcome == Outcome::Fail) {
        let rule = deciding_rule(t);
        let mut props = Vec::new();
        let mut message = format!("flow {}: {}\n{}", t.flow, t.description, t.message);
        if let Some(r) = &rule {
            if let Some((file, line)) = locator.locate(r) {
                props.push(format!("file={}", escape_property(file)));
                props.push(format!("line={line}"));
            }
            message.push_str(&format!("\ndecided by {} {} rule {}", r.table, r.chain, r.number));
        }
        props.push(format!("title={}", escape_property(&format!("sidecheck: {} failed", t.name))));
        out.push_str(&format!("::error {}::{}\n", props.join(","), escape_data(&message)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scenario::Expected;
    use crate::netfilter::trace::{LegPath, TraceEvent};
    use crate::verdict::Observed;

    #[test]
    fn escaping_follows_githubs_workflow_command_rules() {
        assert_eq!(escape_data("50% a\r\nb: c, d"), "50%25 a%0D%0Ab: c, d");
        assert_eq!(escape_property("a::b,c%\n"), "a%3A%3Ab%2Cc%25%0A");
        // `%` first, or the escapes themselves would be escaped again.
        assert_eq!(escape_property("%3A"), "%253A");
    }

    const RESTORE: &str = "# generated
*nat
:PREROUTING ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_OUTPUT -o lo -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-I ISTIO_OUTPUT 2 -d 127.0.0.6/32 -j RETURN
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

    fn key(p: u8, t: &str, c: &str) -> (u8, String, String) {
        (p, t.into(), c.into())
    }

    #[test]
    fn restore_rules_map_to_their_lines_and_a_second_table_block_is_ipv6() {
        let l = rule_lines(FileKind::Restore { ipv6: false }, RESTORE);
        assert_eq!(l[&key(2, "nat", "ISTIO_OUTPUT")], [6, 8, 7]);
        assert_eq!(l[&key(2, "nat", "PREROUTING")], [5]);
        assert_eq!(l[&key(10, "nat", "ISTIO_OUTPUT")], [12]);
        let l6 = rule_lines(FileKind::Restore { ipv6: true }, RESTORE);
        assert!(!l6.contains_key(&key(2, "nat", "ISTIO_OUTPUT")));
        // The same text as a script (Istio's dry-run prints this form).
        assert_eq!(rule_lines(FileKind::Script, RESTORE), l);
    }

    #[test]
    fn script_commands_replay_appends_inserts_deletes_and_flushes() {
        let s = "#!/bin/sh
iptables -t nat -N ISTIO_OUTPUT
iptables -w -t nat -A ISTIO_OUTPUT -o lo -j RETURN
ip6tables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT
/usr/sbin/iptables-nft -t nat -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
iptables -t nat -I ISTIO_OUTPUT -d 127.0.0.6/32 -j RETURN
iptables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT
iptables -t nat -D ISTIO_OUTPUT -o lo -j RETURN
iptables -A INPUT -j ACCEPT
iptables -t mangle -A X -j ACCEPT
iptables -t mangle -F X
iptables-restore < x
";
        let l = rule_lines(FileKind::Script, s);
        assert_eq!(l[&key(2, "nat", "ISTIO_OUTPUT")], [6, 5, 7]);
        assert_eq!(l[&key(10, "nat", "ISTIO_OUTPUT")], [4]);
        assert_eq!(l[&key(2, "filter", "INPUT")], [9]);
        assert!(l[&key(2, "mangle", "X")].is_empty());
    }

    #[test]
    fn nft_rules_map_in_both_syntaxes_skipping_chain_properties_and_sets() {
        let s = "flush ruleset
table inet istio {
  set ports {
    type inet_service
    elements = { 15001, 15006 }
  }
  chain output {
    type nat hook output priority -100; policy accept;
    # a comment
    oif lo return
    meta skuid 1337 return
    tcp dport != 15001 redirect to :15001
  }
  chain empty { type filter hook input priority 0; policy accept; }
}
add rule ip6 istio6 output meta skuid 1337 return
insert rule ip6 istio6 output oif lo return
add rule ip gone c accept
delete table ip gone
";
        let l = rule_lines(FileKind::Nft, s);
        assert_eq!(l[&key(1, "istio", "output")], [10, 11, 12]);
        assert!(l[&key(1, "istio", "empty")].is_empty());
        assert!(!l.contains_key(&key(1, "istio", "ports")));
        assert_eq!(l[&key(10, "istio6", "output")], [17, 16]);
        assert!(!l.contains_key(&key(2, "gone", "c")));
    }

    fn failing(expected: Option<&str>, observed: &str, events: Vec<(&str, &str, Step)>) -> TrialResult {
        let event = |(table, chain, step): (&str, &str, Step)| TraceEvent {
            nfproto: 2,
            table: table.into(),
            chain: chain.into(),
            step,
            verdict: None,
            src: "10.0.0.1:1".parse().unwrap(),
            dst: "10.0.0.2:2".parse().unwrap(),
            isn: 0,
        };
        let elements = observed.split(" -> ").map(String::from).collect();
        TrialResult {
            name: "istio::type2::nft::ipv4".into(),
            scenario: "istio::type2".into(),
            backend: "nft".into(),
            family: "ipv4".into(),
            flow: 2,
            description: "app, to remote".into(),
            outcome: Outcome::Fail,
            expected: Expected {
                ports: vec![15001, 9090],
                server: "remote-app".into(),
                path: expected.map(String::from),
                note: None,
            },
            observed: Observed {
                ports: vec![9090],
                end: crate::verdict::ending::Ending::Reached { server: "remote-app".into(), port: 9090 },
                server: Some("remote-app".into()),
                peer: None,
                hops: vec![],
                path: Some(observed.into()),
                legs: vec![LegPath {
                    src: "a".into(),
                    dst: "b".into(),
                    reached: "Remote Pod".into(),
                    elements,
                    events: events.into_iter().map(event).collect(),
                }],
            },
            message: "expected 15001 > 9090\nobserved 9090".into(),
            duration_ms: 1,
        }
    }

    #[test]
    fn the_deciding_rule_is_where_the_path_leaves_the_expected_one() {
        let events = vec![
            ("nat", "OUTPUT", Step::Rule(1)),
            ("nat", "ISTIO_OUTPUT", Step::Rule(2)),
            ("nat", "ISTIO_REDIRECT", Step::Rule(1)),
        ];
        let rule = |chain: &str, number| RuleRef { nfproto: 2, table: "nat".into(), chain: chain.into(), number };
        // The differing element is a rule: that rule.
        let t = failing(
            Some("OUTPUT -> ISTIO_OUTPUT RULE 3 -> ISTIO_REDIRECT -> X"),
            "OUTPUT -> ISTIO_OUTPUT RULE 2 -> ISTIO_REDIRECT -> X",
            events.clone(),
        );
        assert_eq!(deciding_rule(&t), Some(rule("ISTIO_OUTPUT", 2)));
        // The differing element is no rule: the last rule before it.
        let t = failing(
            Some("OUTPUT -> ISTIO_OUTPUT RULE 2 -> ISTIO_REDIRECT"),
            "OUTPUT -> ISTIO_OUTPUT RULE 2 -> POSTROUTING",
            events.clone(),
        );
        assert_eq!(deciding_rule(&t), Some(rule("ISTIO_OUTPUT", 2)));
        // No expected path: the first leg's last rule (a one-rule chain by its name).
        let t = failing(None, "OUTPUT -> ISTIO_OUTPUT RULE 2 -> ISTIO_REDIRECT", events.clone());
        assert_eq!(deciding_rule(&t), Some(rule("ISTIO_REDIRECT", 1)));
        // Not traced, or no rule matched: unknown.
        let mut t = failing(None, "OUTPUT -> ISTIO_OUTPUT (no rule matched)", vec![]);
        assert_eq!(deciding_rule(&t), None);
        t.observed.path = None;
        assert_eq!(deciding_rule(&t), None);
    }

    #[test]
    fn annotations_point_at_the_rule_line_when_known_and_escape_everything() {
        let events = vec![("nat", "OUTPUT", Step::Rule(1)), ("nat", "ISTIO_OUTPUT", Step::Rule(2))];
        let t = failing(Some("OUTPUT -> ISTIO_OUTPUT RULE 3"), "OUTPUT -> ISTIO_OUTPUT RULE 2", events);
        let mut pass = t.clone();
        pass.outcome = Outcome::Pass;
        let report = Report::new("r".into(), "nft".into(), vec![pass, t.clone()]);
        let mut locator = Locator::default();
        locator.add("rules/a,b.rules".into(), FileKind::Restore { ipv6: false }, RESTORE);
        let a = annotations(&report, &locator);
        assert_eq!(
            a,
            "::error file=rules/a%2Cb.rules,line=8,title=sidecheck%3A istio%3A%3Atype2%3A%3Anft%3A%3Aipv4 failed::\
             flow 2: app, to remote%0Aexpected 15001 > 9090%0Aobserved 9090%0Adecided by nat ISTIO_OUTPUT rule 2\n"
        );
        // Unknown to the files: still annotated, without file and line.
        let a = annotations(&report, &Locator::default());
        assert!(a.starts_with("::error title=sidecheck%3A istio"), "{a}");
        assert_eq!(a.lines().count(), 1);
    }
}

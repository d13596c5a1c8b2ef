//! Decisions, not positions: for each leg of a probe and each hook its SYN
//! passed, which rule decided and what it decided, in one form whatever the
//! front end (iptables-save text or nft's own listing), the chain names,
//! the rule numbers or the comments. The definition, with examples, is in
//! docs/decisions.md; each example is a unit test below.

mod iptables;
mod meaning;
mod nft;

use serde::Serialize;

use crate::netfilter::trace::{LegPath, RuleIndex, Step, TraceEvent};

pub use meaning::{meaning, Action, Meaning};

/// One rule (or chain policy) that decided a SYN's fate in one table at one hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// 1-based: 1 is the client's connection, 2 the proxy's first upstream...
    pub leg: usize,
    /// PREROUTING, INPUT, OUTPUT, POSTROUTING.
    pub hook: String,
    pub table: String,
    pub chain: String,
    /// The rule's position in its chain; 0 for a chain's policy (or a rule
    /// the dump did not show).
    pub position: u32,
    /// The rule as installed (iptables-save or nft listing).
    pub text: String,
    /// What it means, in the form decisions are compared by.
    pub meaning: String,
}

impl Decision {
    /// `nat ISTIO_OUTPUT rule 4`, `nat OUTPUT policy`.
    pub fn place(&self) -> String {
        match self.position {
            0 => format!("{} {} policy", self.table, self.chain),
            n => format!("{} {} rule {n}", self.table, self.chain),
        }
    }
}

/// The decisions of one hook traversal of one leg, in the order the tables ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookDecisions {
    pub leg: usize,
    pub hook: String,
    pub decisions: Vec<Decision>,
}

/// What the rules decided for one probe: per leg, per hook where any rule decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Decisions {
    pub legs: Vec<Vec<HookDecisions>>,
}

/// The decisions of one leg, from its trace events. Per hook and table the
/// deciding rule is the last one that matched with a verdict other than a
/// jump (a RETURN counts: it is what let the packet through); a table where
/// no rule decided and its base chain's policy accepted decided nothing
/// (an empty `*filter` table changes no fate).
pub fn leg_decisions(leg: usize, events: &[TraceEvent], index: &RuleIndex) -> Vec<HookDecisions> {
    // Per hook traversal: per (nfproto, table), the deciding rule so far.
    type Tables = Vec<((u8, String), Option<Decision>)>;
    let mut hooks: Vec<(String, Tables)> = Vec::new();
    for e in events {
        let hook = index.hook_of(e.nfproto, &e.table, &e.chain);
        if let Some(h) = hook {
            if hooks.last().is_none_or(|(last, _)| last != h) {
                hooks.push((h.to_string(), Vec::new()));
            }
        }
        if hooks.is_empty() {
            hooks.push(("?".into(), Vec::new()));
        }
        let (hook_name, tables) = hooks.last_mut().expect("pushed above");
        let key = (e.nfproto, e.table.clone());
        let slot = match tables.iter().position(|(k, _)| *k == key) {
            Some(k) => k,
            None => {
                tables.push((key, None));
                tables.len() - 1
            }
        };
        match &e.step {
            Step::Rule(n) => {
                let text = index.rule_text(e.nfproto, &e.table, &e.chain, *n).unwrap_or("").to_string();
                let (decides, meaning) = if text.is_empty() {
                    // Not in the dump: the kernel's verdict is all there is.
                    match e.verdict.as_deref() {
                        Some(v) if v.starts_with("jump ") || v.starts_with("goto ") || v == "continue" => {
                            (false, String::new())
                        }
                        v => (true, format!("unknown rule ({})", v.unwrap_or("?"))),
                    }
                } else {
                    let m = meaning(&text);
                    (matches!(m.action, Action::Decides(_)), m.canonical())
                };
                if decides {
                    tables[slot].1 = Some(Decision {
                        leg,
                        hook: hook_name.clone(),
                        table: e.table.clone(),
                        chain: e.chain.clone(),
                        position: *n,
                        text,
                        meaning,
                    });
                }
            }
            Step::Policy => {
                let v = e.verdict.clone().unwrap_or_else(|| "accept".into());
                if tables[slot].1.is_none() && v != "accept" {
                    tables[slot].1 = Some(Decision {
                        leg,
                        hook: hook_name.clone(),
                        table: e.table.clone(),
                        chain: e.chain.clone(),
                        position: 0,
                        text: format!("(policy {v})"),
                        meaning: format!("policy {v}"),
                    });
                }
            }
            Step::Return => {}
        }
    }
    hooks
        .into_iter()
        .map(|(hook, tables)| HookDecisions {
            leg,
            hook,
            decisions: tables.into_iter().filter_map(|(_, d)| d).collect(),
        })
        .filter(|h| !h.decisions.is_empty())
        .collect()
}

/// The decisions of a traced probe.
pub fn decisions(legs: &[LegPath], index: &RuleIndex) -> Decisions {
    Decisions { legs: legs.iter().enumerate().map(|(i, l)| leg_decisions(i + 1, &l.events, index)).collect() }
}

/// Where two probes' decisions first part: a leg and hook, and the rule
/// on each side (None: that side decided nothing there, or had no such leg).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub leg: usize,
    pub hook: String,
    pub a: Option<Decision>,
    pub b: Option<Decision>,
}

/// The first leg and hook where `a` and `b` decide differently.
pub fn first_divergence(a: &Decisions, b: &Decisions) -> Option<Divergence> {
    let empty: Vec<HookDecisions> = Vec::new();
    for leg in 0..a.legs.len().max(b.legs.len()) {
        let (la, lb) = (a.legs.get(leg), b.legs.get(leg));
        // A leg only one side has: the other side's connection ended earlier.
        let (ha, hb) = (la.unwrap_or(&empty), lb.unwrap_or(&empty));
        if la.is_none() || lb.is_none() {
            let hook = ha.first().or(hb.first()).map_or("(no decision)".to_string(), |h| h.hook.clone());
            let pick = |h: &[HookDecisions]| h.first().and_then(|h| h.decisions.first().cloned());
            return Some(Divergence { leg: leg + 1, hook, a: pick(ha), b: pick(hb) });
        }
        for k in 0..ha.len().max(hb.len()) {
            let (x, y) = (ha.get(k), hb.get(k));
            let same = match (x, y) {
                (Some(x), Some(y)) => {
                    x.hook == y.hook
                        && x.decisions.len() == y.decisions.len()
                        && x.decisions.iter().zip(&y.decisions).all(|(p, q)| p.meaning == q.meaning)
                }
                _ => false,
            };
            if same {
                continue;
            }
            // The earlier hook of the two names the place.
            let hook = match (x, y) {
                (Some(x), Some(y)) if x.hook != y.hook => {
                    let rank = |h: &str| ["PREROUTING", "OUTPUT", "INPUT", "POSTROUTING"].iter().position(|n| *n == h);
                    if rank(&y.hook) < rank(&x.hook) {
                        y.hook.clone()
                    } else {
                        x.hook.clone()
                    }
                }
                (Some(x), _) => x.hook.clone(),
                (None, Some(y)) => y.hook.clone(),
                (None, None) => continue,
            };
            let (p, q) = (x.filter(|h| h.hook == hook), y.filter(|h| h.hook == hook));
            let j = match (p, q) {
                (Some(p), Some(q)) => p
                    .decisions
                    .iter()
                    .zip(&q.decisions)
                    .position(|(u, v)| u.meaning != v.meaning)
                    .unwrap_or(p.decisions.len().min(q.decisions.len())),
                _ => 0,
            };
            let pick = |h: Option<&HookDecisions>| h.and_then(|h| h.decisions.get(j).cloned());
            return Some(Divergence { leg: leg + 1, hook: hook.clone(), a: pick(p), b: pick(q) });
        }
    }
    None
}
#[cfg(test)]
mod tests {
    use super::*;

    fn ev(table: &str, chain: &str, step: Step) -> TraceEvent {
        TraceEvent {
            nfproto: 2,
            table: table.into(),
            chain: chain.into(),
            step,
            verdict: None,
            src: "10.244.0.10:40000".parse().unwrap(),
            dst: "127.0.0.1:15000".parse().unwrap(),
            isn: 1,
        }
    }

    fn index(save: &str) -> RuleIndex {
        let mut i = RuleIndex::default();
        i.texts = RuleIndex::parse_save(2, save);
        i
    }

    const NAT: &str = "*nat\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\nCOMMIT\n*filter\nCOMMIT\n";

    #[test]
    fn the_return_decides_and_an_empty_filter_table_decides_nothing() {
        let i = index(NAT);
        let events = [
            ev("nat", "OUTPUT", Step::Rule(1)),
            ev("nat", "ISTIO_OUTPUT", Step::Rule(1)),
            ev("nat", "OUTPUT", Step::Policy),
            ev("filter", "OUTPUT", Step::Policy),
            ev("nat", "POSTROUTING", Step::Policy),
        ];
        let d = leg_decisions(1, &events, &i);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].hook, "OUTPUT");
        assert_eq!(d[0].decisions[0].position, 1);
        assert_eq!(d[0].decisions[0].meaning, "return if uid=1337");
        // Without the filter table's event: the same decisions.
        let without: Vec<_> = events.iter().filter(|e| e.table != "filter").cloned().collect();
        assert_eq!(leg_decisions(1, &without, &i), d);
    }

    #[test]
    fn a_different_deciding_rule_is_named_on_both_sides() {
        let i = index(NAT);
        let uid = [ev("nat", "OUTPUT", Step::Rule(1)), ev("nat", "ISTIO_OUTPUT", Step::Rule(1))];
        let gid = [ev("nat", "OUTPUT", Step::Rule(1)), ev("nat", "ISTIO_OUTPUT", Step::Rule(2))];
        let a = Decisions { legs: vec![leg_decisions(1, &uid, &i)] };
        let b = Decisions { legs: vec![leg_decisions(1, &gid, &i)] };
        assert_eq!(first_divergence(&a, &a), None);
        let d = first_divergence(&a, &b).expect("they differ");
        assert_eq!((d.leg, d.hook.as_str()), (1, "OUTPUT"));
        assert_eq!(d.a.unwrap().text, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN");
        assert_eq!(d.b.unwrap().text, "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN");
        // One side has a second leg the other lacks.
        let c = Decisions { legs: vec![leg_decisions(1, &uid, &i), leg_decisions(2, &gid, &i)] };
        let d = first_divergence(&a, &c).expect("they differ");
        assert_eq!(d.leg, 2);
        assert!(d.a.is_none() && d.b.is_some());
    }
}

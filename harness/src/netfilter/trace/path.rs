//! Path rendering: the events of each connection leg, in the article's
//! notation (`OUTPUT -> ISTIO_OUTPUT RULE 9 -> ISTIO_REDIRECT -> Envoy
//! 15001 (Outbound)`).

use std::net::SocketAddr;

use serde::Serialize;

use super::event::{Step, TraceEvent};
use super::index::RuleIndex;
use super::reader::Pending;

/// One connection leg of a probe and what the kernel did to its SYN.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LegPath {
    pub src: String,
    pub dst: String,
    /// What it reached: `Envoy 15001 (Outbound)`, `Remote Pod`, ...
    pub reached: String,
    pub elements: Vec<String>,
    pub events: Vec<TraceEvent>,
}

/// The path of a whole probe connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObservedPath {
    /// In the article's notation: `OUTPUT -> ISTIO_OUTPUT RULE 9 -> ...`.
    pub line: String,
    pub legs: Vec<LegPath>,
    /// False when the kernel dropped trace events while this probe ran
    /// (the socket overflowed), or another connection shared a leg's
    /// addresses and ports.
    pub complete: bool,
}

/// One connection leg as the probe saw it, to find its events by: the SYN
/// left `src` for `dst`; `reached` is the port it ended at (when known),
/// `label` what is there (`Envoy 15001 (Outbound)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub reached: Option<u16>,
    pub label: String,
}

/// One hook traversal of a leg: the hook, then (nfproto, table, chain, last step) per user chain.
type Segment = (String, Vec<(u8, String, String, Step)>);

/// The path of a probe from its legs, claiming their events from `p`.
/// `client_local`: the client ran in the traced (local pod) namespace.
/// `losses_before`: [`Pending::losses`] when the probe started; a loss
/// since then may have taken this probe's events.
pub fn assemble(
    p: &mut Pending,
    index: &RuleIndex,
    legs: Vec<Leg>,
    client_local: bool,
    losses_before: u64,
) -> ObservedPath {
    let mut complete = true;
    let mut out = Vec::new();
    for (i, leg) in legs.into_iter().enumerate() {
        let (events, ambiguous) = p.take_leg(leg.src, leg.dst, leg.reached.unwrap_or(0));
        complete &= !ambiguous && p.losses() == losses_before;
        // A leg that reached a listener or server sent a SYN, and every SYN
        // passes the hooks the trace table marks: none of its events claimed
        // means they went missing (seen under load), not that no rule ran.
        complete &= !(events.is_empty() && leg.reached.is_some());
        let redirected = leg.reached.is_some_and(|p| p != leg.dst.port());
        // Legs after the first are fake-envoy's, in the local pod.
        let elements = leg_elements(&events, index, redirected, i > 0 || client_local);
        out.push(LegPath { src: leg.src.to_string(), dst: leg.dst.to_string(), reached: leg.label, elements, events });
    }
    let line = out
        .iter()
        .flat_map(|l| l.elements.iter().cloned().chain(std::iter::once(l.reached.clone())))
        .collect::<Vec<_>>()
        .join(" -> ");
    ObservedPath { line, legs: out, complete }
}

/// The elements one leg contributes to a path, before the listener it
/// reached: the hook chain, then each user chain that decided with the
/// number of its deciding rule (none for a one-rule chain). After a
/// redirect the listener comes next; otherwise the later hooks the packet
/// passed (INPUT, POSTROUTING) are named too. Hooks are named from the leg's
/// direction even where the rule set has no chain (so no event) there:
/// a locally made SYN passes OUTPUT then POSTROUTING, one from another pod
/// PREROUTING then INPUT.
pub fn leg_elements(events: &[TraceEvent], index: &RuleIndex, redirected: bool, local_origin: bool) -> Vec<String> {
    // Segments: one per hook traversal, user chains in first-visit order
    // with the last step seen in each.
    let mut segments: Vec<Segment> = Vec::new();
    for e in events {
        if let Some(hook) = index.hook_of(e.nfproto, &e.table, &e.chain) {
            if segments.last().is_none_or(|(h, _)| h != hook) {
                segments.push((hook.to_string(), Vec::new()));
            }
            continue;
        }
        if segments.is_empty() {
            segments.push(("?".into(), Vec::new()));
        }
        let chains = &mut segments.last_mut().unwrap().1;
        match chains.iter_mut().find(|(_, t, c, _)| *t == e.table && *c == e.chain) {
            Some(entry) => entry.3 = e.step.clone(),
            None => chains.push((e.nfproto, e.table.clone(), e.chain.clone(), e.step.clone())),
        }
    }
    // nf_tables reports entering a chain (the jump) but not always leaving
    // one where no rule matched: a jumped-to chain with no event of its own
    // ended without a decision.
    for e in events {
        let Some(target) = e.verdict.as_deref().and_then(|v| v.strip_prefix("jump ").or(v.strip_prefix("goto ")))
        else {
            continue;
        };
        let hook = index.hook_of(e.nfproto, &e.table, &e.chain);
        let Some(seg) = segments.iter_mut().find(|(h, chains)| {
            Some(h.as_str()) == hook || chains.iter().any(|(_, t, c, _)| *t == e.table && *c == e.chain)
        }) else {
            continue;
        };
        if !seg.1.iter().any(|(_, t, c, _)| *t == e.table && c == target) {
            let at = seg.1.iter().position(|(_, t, c, _)| *t == e.table && *c == e.chain).map_or(0, |i| i + 1);
            seg.1.insert(at, (e.nfproto, e.table.clone(), target.to_string(), Step::Return));
        }
    }
    let (first, second) = if local_origin { ("OUTPUT", "POSTROUTING") } else { ("PREROUTING", "INPUT") };
    if segments.first().is_none_or(|(h, _)| h != first) {
        segments.insert(0, (first.to_string(), Vec::new()));
    }
    if !redirected && !segments.iter().any(|(h, _)| h == second) {
        segments.insert(1, (second.to_string(), Vec::new()));
    }
    let mut out = Vec::new();
    for (i, (hook, chains)) in segments.iter().enumerate() {
        if i > 0 && redirected {
            break;
        }
        out.push(hook.clone());
        for (nfproto, table, chain, step) in chains {
            out.push(match step {
                Step::Rule(_) if index.rule_count(*nfproto, table, chain) == 1 => chain.clone(),
                Step::Rule(0) => format!("{chain} RULE ?"),
                Step::Rule(n) => format!("{chain} RULE {n}"),
                Step::Return | Step::Policy => format!("{chain} (no rule matched)"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(chain: &str, step: Step) -> TraceEvent {
        TraceEvent {
            nfproto: 2,
            table: "nat".into(),
            chain: chain.into(),
            step,
            verdict: None,
            src: "10.244.0.10:40000".parse().unwrap(),
            dst: "10.244.0.20:9090".parse().unwrap(),
            isn: 1,
        }
    }

    fn index() -> RuleIndex {
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        let mut i = RuleIndex::default();
        i.texts = RuleIndex::parse_save(2, save);
        i
    }

    #[test]
    fn redirected_outbound_leg_reads_like_the_article() {
        let events = [
            ev("OUTPUT", Step::Rule(1)),
            ev("ISTIO_OUTPUT", Step::Rule(2)),
            ev("ISTIO_REDIRECT", Step::Rule(1)),
            ev("POSTROUTING", Step::Policy),
        ];
        assert_eq!(leg_elements(&events, &index(), true, true), ["OUTPUT", "ISTIO_OUTPUT RULE 2", "ISTIO_REDIRECT"]);
    }

    #[test]
    fn a_leg_that_leaves_names_postrouting() {
        let events = [
            ev("OUTPUT", Step::Rule(1)),
            ev("ISTIO_OUTPUT", Step::Rule(1)),
            ev("OUTPUT", Step::Policy),
            ev("POSTROUTING", Step::Policy),
        ];
        assert_eq!(leg_elements(&events, &index(), false, true), ["OUTPUT", "ISTIO_OUTPUT RULE 1", "POSTROUTING"]);
        // No nat POSTROUTING chain (iptables-nft creates only chains in use):
        // the hook is still on the path.
        assert_eq!(leg_elements(&events[..3], &index(), false, true), ["OUTPUT", "ISTIO_OUTPUT RULE 1", "POSTROUTING"]);
        // No event at all (no nat table): the hooks by direction.
        assert_eq!(leg_elements(&[], &index(), false, false), ["PREROUTING", "INPUT"]);
    }

    #[test]
    fn a_jumped_to_chain_without_events_ended_without_a_decision() {
        let mut jump = ev("OUTPUT", Step::Rule(1));
        jump.verdict = Some("jump ISTIO_OUTPUT".into());
        let events = [jump, ev("OUTPUT", Step::Policy), ev("POSTROUTING", Step::Policy)];
        assert_eq!(
            leg_elements(&events, &index(), false, true),
            ["OUTPUT", "ISTIO_OUTPUT (no rule matched)", "POSTROUTING"]
        );
    }

    #[test]
    fn a_chain_where_nothing_matched_says_so() {
        let events = [
            ev("OUTPUT", Step::Rule(1)),
            ev("ISTIO_OUTPUT", Step::Return),
            ev("OUTPUT", Step::Policy),
            ev("POSTROUTING", Step::Policy),
        ];
        assert_eq!(
            leg_elements(&events, &index(), false, true),
            ["OUTPUT", "ISTIO_OUTPUT (no rule matched)", "POSTROUTING"]
        );
    }

    #[test]
    fn a_loss_spoils_only_the_paths_of_probes_that_ran_meanwhile() {
        let leg = |port: u16| Leg {
            src: format!("10.244.0.10:{port}").parse().unwrap(),
            dst: "10.244.0.20:9090".parse().unwrap(),
            reached: Some(9090),
            label: "Remote Pod".into(),
        };
        let event =
            |port: u16, chain: &str, step| TraceEvent { src: leg(port).src, isn: port.into(), ..ev(chain, step) };
        let mut p = Pending::default();
        // The socket overflows while the first probe runs.
        let before = p.losses();
        p.push(event(40000, "OUTPUT", Step::Rule(1)));
        p.record_loss();
        let first = assemble(&mut p, &index(), vec![leg(40000)], true, before);
        assert!(!first.complete);
        // The next probe's events are all there: its path is whole.
        let before = p.losses();
        p.push(event(40001, "OUTPUT", Step::Rule(1)));
        p.push(event(40001, "ISTIO_OUTPUT", Step::Rule(1)));
        let second = assemble(&mut p, &index(), vec![leg(40001)], true, before);
        assert!(second.complete, "{second:?}");
        assert_eq!(second.line, "OUTPUT -> ISTIO_OUTPUT RULE 1 -> POSTROUTING -> Remote Pod");
        // Two connections with one leg's addresses: which events are whose
        // cannot be told, loss or not.
        let before = p.losses();
        p.push(TraceEvent { isn: 7, ..event(40002, "OUTPUT", Step::Rule(1)) });
        p.push(TraceEvent { isn: 8, ..event(40002, "OUTPUT", Step::Rule(1)) });
        assert!(!assemble(&mut p, &index(), vec![leg(40002)], true, before).complete);
        // A leg that reached its server with none of its events here: they
        // went missing, the path cannot be told.
        let before = p.losses();
        assert!(!assemble(&mut p, &index(), vec![leg(40003)], true, before).complete);
        // A leg that reached nothing may have sent nothing traceable.
        let none = Leg { reached: None, ..leg(40004) };
        assert!(assemble(&mut p, &index(), vec![none], true, before).complete);
    }
}

//! The connection legs of a probe, rebuilt from what it observed: the
//! client's connection, then each upstream connection fake-envoy opened,
//! each named for what it reached. The tracer finds each leg's events by
//! its addresses; it knows nothing of probes.

use std::net::SocketAddr;

use sidecheck_wire::End;

use crate::netfilter::trace::Leg;
use crate::probe::Observation;

fn capitalized(s: &str) -> String {
    let mut s = s.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    s
}

/// Where a leg ended, and the name it has in a path.
fn reached_label(proxy: &str, role: &str, port: u16) -> String {
    format!("{} {port} ({})", capitalized(proxy), capitalized(role))
}

fn server_label(proxy: &str, name: &str, port: u16) -> String {
    match name {
        "local-app" => "Local Pod".into(),
        "remote-app" => "Remote Pod".into(),
        n if n.strip_prefix(proxy).is_some_and(|rest| rest.starts_with('-')) => {
            format!("{} {port}", capitalized(proxy))
        }
        n => capitalized(n),
    }
}

/// The legs of a probe whose client connected from `client` to `target`;
/// `proxy` is the profile's name for the proxy (`envoy`). None without a
/// client address (the connection was never made).
pub fn legs(proxy: &str, client: Option<SocketAddr>, target: SocketAddr, obs: &Observation) -> Vec<Leg> {
    let mut legs: Vec<Leg> = Vec::new();
    let leg = |src, dst, reached, label| Leg { src, dst, reached, label };
    match (client, obs) {
        (Some(client), Observation::Answered(a)) => {
            let hops = &a.probe.hops;
            let end = match &a.end {
                End::Server { name, port, .. } => (Some(*port), server_label(proxy, name, *port)),
                End::Loop { role, port } => (Some(*port), format!("{} LOOP", reached_label(proxy, role, *port))),
                End::Error { .. } => (None, "(could not forward)".into()),
            };
            let reach = |k: usize| match hops.get(k) {
                Some(h) => (Some(h.port), reached_label(proxy, &h.role, h.port)),
                None => end.clone(),
            };
            let (p, l) = reach(0);
            legs.push(leg(client, target, p, l));
            for (k, hop) in hops.iter().enumerate() {
                if let Some((src, dst)) = hop.upstream {
                    let (p, l) = reach(k + 1);
                    legs.push(leg(src, dst, p, l));
                } else if let End::Error { message, .. } = &a.end {
                    let last = legs.last_mut().unwrap();
                    last.label = format!("{} -> (could not forward: {})", last.label, message.replace('_', " "));
                }
            }
        }
        (Some(client), Observation::Failed { .. }) => legs.push(leg(client, target, None, "(no answer)".into())),
        (None, _) => {}
    }
    legs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::trace::{assemble, Pending, RuleIndex, Step, TraceEvent};
    use crate::verdict::outcome::{harness_cause, Health};
    use sidecheck_wire::{Answer, Hop, Probe};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_proxied_probe_has_a_leg_per_connection() {
        let hop = Hop {
            role: "outbound".into(),
            port: 15001,
            original_dst: addr("10.244.0.20:9090"),
            upstream: Some((addr("10.244.0.10:41000"), addr("10.244.0.20:9090"))),
        };
        let obs = Observation::Answered(Answer {
            probe: Probe { id: 1, hops: vec![hop] },
            end: End::Server { name: "remote-app".into(), port: 9090, peer: addr("10.244.0.10:41000") },
        });
        let got = legs("envoy", Some(addr("10.244.0.10:40000")), addr("10.244.0.20:9090"), &obs);
        assert_eq!(
            got,
            [
                Leg {
                    src: addr("10.244.0.10:40000"),
                    dst: addr("10.244.0.20:9090"),
                    reached: Some(15001),
                    label: "Envoy 15001 (Outbound)".into()
                },
                Leg {
                    src: addr("10.244.0.10:41000"),
                    dst: addr("10.244.0.20:9090"),
                    reached: Some(9090),
                    label: "Remote Pod".into()
                },
            ]
        );
        let failed = Observation::Failed { stage: "connect".into(), detail: "no answer".into() };
        assert_eq!(legs("envoy", Some(addr("10.244.0.10:40000")), addr("10.244.0.20:9090"), &failed).len(), 1);
        assert!(legs("envoy", None, addr("10.244.0.20:9090"), &failed).is_empty());
    }

    #[test]
    fn after_a_trace_loss_a_later_failing_trial_is_a_fail_not_an_error() {
        let failed = Observation::Failed {
            stage: "connect".into(),
            detail: "no answer to the SYN for 10.244.0.20:9090 within 2000 ms".into(),
        };
        let event = |src: SocketAddr, isn| TraceEvent {
            nfproto: 2,
            table: "nat".into(),
            chain: "OUTPUT".into(),
            step: Step::Policy,
            verdict: None,
            src,
            dst: addr("10.244.0.20:9090"),
            isn,
        };
        let index = RuleIndex::default();
        let mut p = Pending::default();
        let trial = |p: &mut Pending, client: SocketAddr, lose: bool| {
            let before = p.losses();
            p.push(event(client, u32::from(client.port())));
            if lose {
                p.record_loss(); // ENOBUFS while this trial's probes ran
            }
            let legs = legs("envoy", Some(client), addr("10.244.0.20:9090"), &failed);
            let path = assemble(p, &index, legs, true, before);
            harness_cause(&failed, path.complete, &Health::default())
        };
        // The trial that ran while events were lost cannot tell: an ERROR.
        let first = trial(&mut p, addr("10.244.0.10:40000"), true);
        assert!(first.is_some_and(|c| c.contains("dropped trace events")));
        // A later trial that fails is the rules' doing: a FAIL.
        assert_eq!(trial(&mut p, addr("10.244.0.10:40001"), false), None);
    }
}

//! Comparing what a probe did with what its scenario expects. Exact: the
//! same proxy ports in the same order, and the same server at the end. Extra
//! hops, missing hops, loops and errors all fail.

pub mod decision;
pub mod ending;
pub mod legs;
pub mod outcome;

use serde::Serialize;
use sidecheck_wire::End;

use crate::model::scenario::{Expected, Scenario};
use crate::netfilter::trace::{LegPath, ObservedPath};
use crate::probe::Observation;
use crate::verdict::ending::Ending;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// The rules sent the connection somewhere else.
    Fail,
    /// The harness could not test it (see [`crate::verdict::outcome`]).
    Error,
}

/// One proxy hop as fake-envoy recorded it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopView {
    pub listener: String,
    pub port: u16,
    pub original_dst: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Observed {
    /// Proxy ports passed, then the port the probe ended at (the server's,
    /// or the listener it looped back to).
    pub ports: Vec<u16>,
    /// How it ended: in JSON and reports its words (`remote-app:9090`,
    /// `loop: the probe came back to the outbound listener 15001`, ...).
    pub end: Ending,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Source address the server saw (127.0.0.6 after Envoy's inbound passthrough).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub hops: Vec<HopView>,
    /// The rule path in the article's notation, when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Each connection leg with the kernel's trace events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<LegPath>,
}

/// The result of one trial: the JSON contract is `name`, `flow`, `outcome`,
/// `expected.ports`, `observed.ports`, `message`; other fields may be added.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialResult {
    /// `<scenario>::<backend>::<family>`: `istio::type2-local-to-remote::nft::ipv6`.
    pub name: String,
    pub scenario: String,
    pub backend: String,
    pub family: String,
    pub flow: u8,
    pub description: String,
    pub outcome: Outcome,
    pub expected: Expected,
    pub observed: Observed,
    pub message: String,
    pub duration_ms: u64,
}

fn describe(ports: &[u16], end: &str) -> String {
    let mut parts: Vec<String> = ports.iter().map(u16::to_string).collect();
    if let Some(last) = parts.last_mut() {
        *last = end.to_string();
    }
    if parts.is_empty() {
        end.to_string()
    } else {
        parts.join(" -> ")
    }
}

/// What the observation shows, in the form the report prints.
pub fn observe(obs: &Observation) -> Observed {
    match obs {
        Observation::Answered(a) => {
            let hops: Vec<HopView> = a
                .probe
                .hops
                .iter()
                .map(|h| HopView { listener: h.role.clone(), port: h.port, original_dst: h.original_dst.to_string() })
                .collect();
            let mut ports: Vec<u16> = hops.iter().map(|h| h.port).collect();
            let end = Ending::of(obs);
            let (server, peer) = match &a.end {
                End::Server { name, port, peer } => {
                    ports.push(*port);
                    (Some(name.clone()), Some(peer.to_string()))
                }
                End::Loop { port, .. } => {
                    ports.push(*port);
                    (None, None)
                }
                End::Error { .. } => (None, None),
            };
            Observed { ports, end, server, peer, hops, path: None, legs: Vec::new() }
        }
        Observation::Failed { .. } => Observed {
            ports: Vec::new(),
            end: Ending::of(obs),
            server: None,
            peer: None,
            hops: Vec::new(),
            path: None,
            legs: Vec::new(),
        },
    }
}

/// `expected` and `observed` paths, one above the other, with the first
/// differing element marked.
pub fn path_diff(expected: &str, observed: &str) -> String {
    let e: Vec<&str> = expected.split(" -> ").collect();
    let o: Vec<&str> = observed.split(" -> ").collect();
    let k = e.iter().zip(&o).position(|(a, b)| a != b).unwrap_or(e.len().min(o.len()));
    let offset = |parts: &[&str]| parts[..k].iter().map(|p| p.len() + 4).sum::<usize>();
    let (eo, oo) = (offset(&e), offset(&o));
    let what = match (e.get(k), o.get(k)) {
        (Some(a), Some(b)) => format!("expected `{a}`, observed `{b}`"),
        (Some(a), None) => format!("expected `{a}`, observed nothing more"),
        (None, Some(b)) => format!("expected nothing more, observed `{b}`"),
        (None, None) => "none".into(),
    };
    format!(
        "path expected: {expected}\n               {}^\npath observed: {observed}\n               {}^\nfirst difference at element {}: {what}",
        " ".repeat(eo),
        " ".repeat(oo),
        k + 1
    )
}

/// How a trial's path is checked.
pub struct PathCheck<'a> {
    /// The label of the rule set under test (selects `expect.paths`).
    pub label: &'a str,
    /// Whether the run asked for paths to be asserted.
    pub assert: bool,
}

/// Judge one probe against what its scenario expects (made concrete for
/// the run's profile and family by [`Scenario::case`]).
pub fn judge(
    scenario: &Scenario,
    expected: Expected,
    obs: &Observation,
    duration_ms: u64,
    traced: Option<ObservedPath>,
    check: &PathCheck<'_>,
) -> TrialResult {
    let e = &scenario.spec.expect;
    let expected_path = expected.path.clone();
    let mut observed = observe(obs);
    let complete = traced.as_ref().is_none_or(|t| t.complete);
    if let Some(t) = traced {
        observed.path = Some(t.line);
        observed.legs = t.legs;
    }
    let ports_ok = observed.ports == expected.ports && observed.server.as_deref() == Some(expected.server.as_str());
    let assert_path = check.assert || e.assert_path;
    let path_problem = match (assert_path, &expected_path, &observed.path) {
        (false, _, _) => None,
        (true, None, _) => Some(format!(
            "paths are asserted but {} states no expect.path for the rules `{}`",
            scenario.file, check.label
        )),
        (true, Some(_), None) => Some("paths are asserted but this run was not traced".to_string()),
        (true, Some(want), Some(got)) if want != got => Some(path_diff(want, got)),
        _ => None,
    };
    let pass = ports_ok && path_problem.is_none();
    let want =
        describe(&expected.ports, &format!("{}:{}", expected.server, expected.ports.last().copied().unwrap_or(0)));
    let message = if pass {
        match &expected.note {
            Some(note) => format!("{want}: as expected ({note})"),
            None => format!("{want}: as expected"),
        }
    } else if ports_ok {
        format!("ports as expected ({want}), but the rule path differs:\n{}", path_problem.unwrap_or_default())
    } else {
        let got = match observed.server {
            Some(_) => describe(&observed.ports, &observed.end.to_string()),
            None => {
                let hops: Vec<String> = observed.hops.iter().map(|h| h.port.to_string()).collect();
                if hops.is_empty() {
                    observed.end.to_string()
                } else {
                    format!("{} -> {}", hops.join(" -> "), observed.end)
                }
            }
        };
        let mut m = format!(
            "expected {want}, observed {got} (ports expected {:?}, observed {:?})",
            expected.ports, observed.ports
        );
        if let Some(path) = &observed.path {
            m.push_str(&format!("\n  rule path: {path}"));
        }
        m
    };
    let message = if pass || complete {
        message
    } else {
        format!("{message}\n  note: the kernel dropped trace events during this run (the trace socket overflowed), so this path may be incomplete")
    };
    TrialResult {
        name: scenario.name.clone(),
        scenario: scenario.name.clone(),
        backend: String::new(),
        family: String::new(),
        flow: scenario.spec.flow,
        description: scenario.spec.description.clone(),
        outcome: if pass { Outcome::Pass } else { Outcome::Fail },
        expected,
        observed,
        message,
        duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecheck_wire::{Answer, Hop, Probe};

    fn scenario(ports: &[u16], server: &str) -> Scenario {
        let text = format!(
            "flow: 2\ndescription: d\nsource: {{ host: local-pod, uid: 1000 }}\ndestination: {{ host: remote-pod, port: 9090 }}\nexpect: {{ ports: {ports:?}, server: {server} }}\n"
        );
        Scenario::parse("istio::t".into(), "t.yaml".into(), &text).unwrap()
    }

    fn answered(hops: &[u16], end: End) -> Observation {
        let hops = hops
            .iter()
            .map(|p| Hop {
                role: "outbound".into(),
                port: *p,
                original_dst: "10.244.0.20:9090".parse().unwrap(),
                upstream: None,
            })
            .collect();
        Observation::Answered(Answer { probe: Probe { id: 1, hops }, end })
    }

    const NO_PATHS: PathCheck<'static> = PathCheck { label: "istio-current", assert: false };

    /// Judge under the Istio profile, IPv4.
    fn judge(
        s: &Scenario,
        obs: &Observation,
        ms: u64,
        traced: Option<ObservedPath>,
        check: &PathCheck<'_>,
    ) -> TrialResult {
        let topo = crate::model::topology::TopologyConfig::default();
        let case = s
            .case(&crate::model::profile::Profile::istio(), &topo, crate::base::net::Family::Ipv4, check.label)
            .unwrap();
        super::judge(s, case.expected, obs, ms, traced, check)
    }

    fn server(name: &str, port: u16) -> End {
        End::Server { name: name.into(), port, peer: "10.244.0.10:1234".parse().unwrap() }
    }

    #[test]
    fn exact_match_passes() {
        let r = judge(
            &scenario(&[15001, 9090], "remote-app"),
            &answered(&[15001], server("remote-app", 9090)),
            1,
            None,
            &NO_PATHS,
        );
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.message);
        assert_eq!(r.observed.ports, vec![15001, 9090]);
    }

    #[test]
    fn missing_extra_and_reordered_hops_fail() {
        let s = scenario(&[15001, 15006, 8080], "local-app");
        for hops in [&[15001][..], &[15001, 15006, 15006], &[15006, 15001], &[]] {
            let r = judge(&s, &answered(hops, server("local-app", 8080)), 1, None, &NO_PATHS);
            assert_eq!(r.outcome, Outcome::Fail, "{hops:?} passed");
            assert!(r.message.contains("expected 15001 -> 15006 -> local-app:8080"), "{}", r.message);
        }
    }

    #[test]
    fn right_ports_wrong_server_fails() {
        let r = judge(
            &scenario(&[15001, 8080], "local-app"),
            &answered(&[15001], server("remote-app", 8080)),
            1,
            None,
            &NO_PATHS,
        );
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.message.contains("observed 15001 -> remote-app:8080"), "{}", r.message);
    }

    #[test]
    fn loops_errors_and_client_failures_fail_with_where() {
        let s = scenario(&[15001, 9090], "remote-app");
        let r = judge(&s, &answered(&[15001], End::Loop { role: "outbound".into(), port: 15001 }), 1, None, &NO_PATHS);
        assert_eq!(r.outcome, Outcome::Fail);
        assert_eq!(r.observed.ports, vec![15001, 15001]);
        assert!(r.message.contains("came back to the outbound listener 15001"), "{}", r.message);

        let e =
            End::Error { role: "outbound".into(), port: 15001, message: "10.244.0.20:9090_Connection_refused".into() };
        let r = judge(&s, &answered(&[15001], e), 1, None, &NO_PATHS);
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.message.contains("could not forward it: 10.244.0.20:9090 Connection refused"), "{}", r.message);

        let f = Observation::Failed { stage: "connect".into(), detail: "10.244.0.20:9090: Connection refused".into() };
        let r = judge(&s, &f, 1, None, &NO_PATHS);
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.observed.ports.is_empty());
        assert!(r.message.contains("connect failed"), "{}", r.message);
    }
}

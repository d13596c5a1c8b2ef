//! Named trials and probe endings for the formats' tests (in the manner of
//! cilium's named result presets): each format, and diff, is checked on the
//! same few shapes, built the way a run builds them.

use sidecheck_wire::{Answer, End, Hop, Probe};

use crate::model::scenario::Expected;
use crate::probe::Observation;
use crate::verdict::ending::Ending;
use crate::verdict::{Observed, Outcome, TrialResult};

pub fn trial(name: &str, pass: bool, message: &str) -> TrialResult {
    TrialResult {
        name: name.into(),
        scenario: name.into(),
        backend: "nft".into(),
        family: "ipv4".into(),
        flow: 2,
        description: "app <to> remote & back".into(),
        outcome: if pass { Outcome::Pass } else { Outcome::Fail },
        expected: Expected {
            ports: vec![15001, 9090],
            server: "remote-app".into(),
            path: Some("OUTPUT -> ISTIO_OUTPUT RULE 9 -> Remote Pod".into()),
            note: None,
        },
        observed: Observed {
            ports: vec![15001, 9090],
            end: Ending::Reached { server: "remote-app".into(), port: 9090 },
            server: Some("remote-app".into()),
            peer: None,
            hops: vec![],
            path: Some(
                if pass {
                    "OUTPUT -> ISTIO_OUTPUT RULE 9 -> Remote Pod"
                } else {
                    "OUTPUT -> ISTIO_OUTPUT RULE 8 -> Remote Pod"
                }
                .into(),
            ),
            legs: vec![],
        },
        message: message.into(),
        duration_ms: 12,
    }
}

/// Flow 2's probe through the outbound listener 15001, ending in `end`.
fn through_15001(end: End) -> Observation {
    let hop =
        Hop { role: "outbound".into(), port: 15001, original_dst: "10.244.0.20:9090".parse().unwrap(), upstream: None };
    Observation::Answered(Answer { probe: Probe { id: 1, hops: vec![hop] }, end })
}

/// The proxy's upstream was captured again: back at 15001.
pub fn looped() -> Observation {
    through_15001(End::Loop { role: "outbound".into(), port: 15001 })
}

/// The outbound listener's upstream connect was refused.
pub fn not_forwarded() -> Observation {
    through_15001(End::Error {
        role: "outbound".into(),
        port: 15001,
        message: "10.244.0.20:9090_Connection_refused_(os_error_111)".into(),
    })
}

/// The client's own connect was refused: no proxy on the way.
pub fn refused() -> Observation {
    Observation::Failed {
        stage: "connect".into(),
        detail: "10.244.0.20:9090: Connection refused (os error 111)".into(),
    }
}

/// A failing trial named `name` whose probe saw `obs`, as the verdict reads it.
pub fn failed_with(name: &str, obs: &Observation) -> TrialResult {
    let mut t = trial(name, false, "expected 15001 -> remote-app:9090");
    t.observed = crate::verdict::observe(obs);
    t
}

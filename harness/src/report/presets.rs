//! Named trials for the formats' tests (in the manner of cilium's named
//! result presets): each format is checked on the same few shapes.

use crate::model::scenario::Expected;
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

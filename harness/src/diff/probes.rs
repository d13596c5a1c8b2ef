//! Who connects where in each trial, and the `sidecheck trace` line that replays it.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::scenario::{Protocol, Scenario};
use crate::model::topology::Host;
use crate::SessionConfig;

/// Who connects where, per (scenario, family): for messages and the
/// `sidecheck trace` command that replays one probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeInfo {
    pub from: String,
    pub uid: u32,
    pub gid: u32,
    pub to: String,
    /// Only TCP probes are traced (a datagram's path is its answer).
    pub traced: bool,
}

pub type Probes = HashMap<(String, String), ProbeInfo>;

pub fn probes(scenarios: &[Scenario], config: &SessionConfig) -> Probes {
    let mut out = HashMap::new();
    for s in scenarios {
        for f in s.families(&config.topology.families) {
            if let Ok(c) = s.case(&config.profile, &config.topology, f, "") {
                out.insert(
                    (s.name.clone(), f.name().to_string()),
                    ProbeInfo {
                        from: s.spec.source.host.name().to_string(),
                        uid: c.uid,
                        gid: c.gid,
                        to: c.target.to_string(),
                        traced: c.protocol == Protocol::Tcp,
                    },
                );
            }
        }
    }
    out
}

/// A ready-to-paste `sidecheck trace` for one probe; `rule_args` are the
/// run's own (`--rules FILE`, `--nft FILE`, `--profile kuma` ...).
pub fn trace_command(p: &ProbeInfo, rule_args: &str) -> String {
    let host = Host::parse(&p.from).map_or(p.from.clone(), |h| h.name().to_string());
    let id = if p.gid == p.uid { p.uid.to_string() } else { format!("{}:{}", p.uid, p.gid) };
    let mut cmd = format!("sidecheck trace --from {host}:{id} --to {}", p.to);
    if !rule_args.is_empty() {
        cmd.push(' ');
        cmd.push_str(rule_args);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_commands_replay_the_probe() {
        let p = ProbeInfo { from: "local-pod".into(), uid: 1337, gid: 1337, to: "[::1]:15000".into(), traced: true };
        assert_eq!(
            trace_command(&p, "--rules x.v4"),
            "sidecheck trace --from local-pod:1337 --to [::1]:15000 --rules x.v4"
        );
    }
}

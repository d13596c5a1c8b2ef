//! Two sides' trials, connection by connection: which fates differ.

use serde::Serialize;

use crate::diff::{ProbeInfo, Probes, SideRun};
use crate::verdict::decision::{self, Decisions, Divergence};
use crate::verdict::ending::Ending;
use crate::verdict::TrialResult;

/// A connection's fate on one side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fate {
    pub ports: Vec<u16>,
    pub end: Ending,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub decisions: Decisions,
    /// What each leg reached (`Envoy 15001 (Outbound)`, `Remote Pod`).
    pub reached: Vec<String>,
}

impl Fate {
    fn of(t: &TrialResult, d: &Decisions) -> Fate {
        Fate {
            ports: t.observed.ports.clone(),
            end: t.observed.end.clone(),
            path: t.observed.path.clone(),
            decisions: d.clone(),
            reached: t.observed.legs.iter().map(|l| l.reached.clone()).collect(),
        }
    }

    /// `15001 > remote-app:9090`, `15001 > loop at 15001`.
    pub fn route(&self) -> String {
        let mut parts: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let end = match &self.end {
            Ending::Loop { port, .. } => format!("loop at {port}"),
            other => other.to_string(),
        };
        match parts.last_mut() {
            // A listener that could not forward is a hop of its own: the
            // port it was reached on stays.
            Some(last) if !matches!(self.end, Ending::NotForwarded { .. }) => *last = end,
            _ => parts.push(end),
        }
        parts.join(" > ")
    }
}

/// One connection whose fate differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    /// `<scenario>::<family>`.
    pub name: String,
    pub scenario: String,
    pub family: String,
    pub flow: u8,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeInfo>,
    /// The ports or the end differ (not only the deciding rules).
    pub ports_differ: bool,
    pub a: Fate,
    pub b: Fate,
    /// Where the decisions first part; None when only the ports say so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Divergence>,
}

/// What `sidecheck diff` found.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub backend_a: String,
    pub backend_b: String,
    pub families: Vec<String>,
    /// `paths`: decisions and ports compared; `ports`: ports and ends only.
    pub assert: String,
    /// Every connection compared, `<scenario>::<family>`.
    pub compared: Vec<String>,
    pub differences: Vec<Difference>,
}

/// Compare every connection both sides ran.
pub fn compare(a: &SideRun, b: &SideRun, probes: &Probes, paths: bool) -> DiffReport {
    let mut compared = Vec::new();
    let mut differences = Vec::new();
    for (ta, da) in a.trials.iter().zip(&a.decisions) {
        let Some((tb, db)) = b.find(&ta.scenario, &ta.family) else { continue };
        let name = format!("{}::{}", ta.scenario, ta.family);
        compared.push(name.clone());
        let ports_differ = ta.observed.ports != tb.observed.ports
            || ta.observed.server != tb.observed.server
            || (ta.observed.server.is_none() && ta.observed.end != tb.observed.end);
        let first = if paths || ports_differ { decision::first_divergence(da, db) } else { None };
        if ports_differ || (paths && first.is_some()) {
            differences.push(Difference {
                name,
                scenario: ta.scenario.clone(),
                family: ta.family.clone(),
                flow: ta.flow,
                description: ta.description.clone(),
                probe: probes.get(&(ta.scenario.clone(), ta.family.clone())).cloned(),
                ports_differ,
                a: Fate::of(ta, da),
                b: Fate::of(tb, db),
                first,
            });
        }
    }
    DiffReport {
        a: a.describe.clone(),
        b: b.describe.clone(),
        backend_a: a.backend.clone(),
        backend_b: b.backend.clone(),
        families: a.families.iter().filter(|f| b.families.contains(f)).map(|f| f.name().to_string()).collect(),
        assert: if paths { "paths" } else { "ports" }.into(),
        compared,
        differences,
    }
}

impl DiffReport {
    pub fn differs(&self) -> bool {
        !self.differences.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::presets::{failed_with, looped, not_forwarded, refused};

    #[test]
    fn a_route_ends_the_way_its_probe_did() {
        let route = |obs| Fate::of(&failed_with("istio::a::nft::ipv4", &obs), &Decisions::default()).route();
        assert_eq!(route(looped()), "15001 > loop at 15001");
        // The listener that could not forward stays on the route.
        assert_eq!(
            route(not_forwarded()),
            "15001 > the outbound listener 15001 could not forward it: 10.244.0.20:9090 Connection refused (os error 111)"
        );
        assert_eq!(route(refused()), "connect failed: 10.244.0.20:9090: Connection refused (os error 111)");
    }
}

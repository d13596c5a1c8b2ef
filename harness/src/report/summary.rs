//! `--format summary`: one screen a generator author can paste into an issue.

use std::fmt::Write as _;

use crate::base::text::escape_controls;
use crate::report::{outcome_word, Report};
use crate::verdict::Outcome;

impl Report {
    /// One screen a generator author can paste into an issue: the verdict
    /// per scenario over every family, then a one-line statement.
    pub fn to_summary(&self) -> String {
        // (scenario, flow, [(family, passed)])
        type Row<'a> = (&'a str, u8, Vec<(&'a str, Outcome)>);
        let mut scenarios: Vec<Row<'_>> = Vec::new();
        for t in &self.trials {
            let pass = t.outcome;
            match scenarios.iter_mut().find(|(s, _, _)| *s == t.scenario) {
                Some(entry) => entry.2.push((&t.family, pass)),
                None => scenarios.push((&t.scenario, t.flow, vec![(&t.family, pass)])),
            }
        }
        let ok = scenarios.iter().filter(|(_, _, f)| f.iter().all(|(_, p)| *p == Outcome::Pass)).count();
        let families = if self.families.is_empty() {
            "-".to_string()
        } else {
            self.families.join("+").replace("ipv4", "IPv4").replace("ipv6", "IPv6")
        };
        let mut out = String::new();
        let _ = writeln!(out, "sidecheck conformance: {}", self.rules);
        let _ = writeln!(out, "profile {}, backend {}, families {}\n", self.profile, self.backend, families);
        for (name, flow, fams) in &scenarios {
            let cells: Vec<String> = fams.iter().map(|(f, p)| format!("{f} {}", outcome_word(*p))).collect();
            let _ = writeln!(out, "  flow {flow}  {name:<44} {}", cells.join("  "));
        }
        let verdict = if self.errors > 0 {
            "could not test"
        } else if ok == scenarios.len() {
            "conforms to"
        } else {
            "does not conform to"
        };
        let _ = writeln!(
            out,
            "\n{verdict} the {} sidecar capture contract: {ok}/{} flows, {families}, {}",
            self.mesh.clone().unwrap_or_else(|| capitalized(&self.profile)),
            scenarios.len(),
            self.backend
        );
        escape_controls(&out)
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::presets::trial;

    #[test]
    fn summary_counts_a_scenario_as_passing_only_in_every_family() {
        let mut a4 = trial("istio::a::nft::ipv4", true, "ok");
        a4.scenario = "istio::a".into();
        let mut a6 = trial("istio::a::nft::ipv6", false, "x");
        a6.scenario = "istio::a".into();
        a6.family = "ipv6".into();
        let mut b4 = trial("istio::b::nft::ipv4", true, "ok");
        b4.scenario = "istio::b".into();
        let mut r = Report::new("gen".into(), "nft".into(), vec![a4, a6, b4]);
        r.families = vec!["ipv4".into(), "ipv6".into()];
        let s = r.to_summary();
        assert!(s.contains("istio::a") && s.contains("ipv4 pass  ipv6 FAIL"), "{s}");
        assert!(
            s.trim_end().ends_with("does not conform to the Istio sidecar capture contract: 1/2 flows, IPv4+IPv6, nft"),
            "{s}"
        );
    }

    #[test]
    fn the_summary_names_the_mesh_as_its_profile_writes_it() {
        let mut r = Report::new("gen".into(), "nft".into(), vec![trial("osm::a::nft::ipv4", true, "ok")]);
        for (profile, mesh) in [("osm", "OSM"), ("osm-podip", "OSM (PodIP mode)"), ("linkerd", "Linkerd")] {
            r.set_profile(&crate::model::profile::Profile::builtin(profile).unwrap());
            let s = r.to_summary();
            assert!(s.contains(&format!("profile {profile}, backend nft")), "{s}");
            assert!(
                s.trim_end().ends_with(&format!("conforms to the {mesh} sidecar capture contract: 1/1 flows, -, nft")),
                "{s}"
            );
        }
    }
}

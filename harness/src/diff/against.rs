//! `--assert paths` for a rule set that is not the contract's own: the
//! reference it is judged against, and the verdicts that comparison gives.

use crate::diff::{trace_command, Probes, SideRun};
use crate::rules::istio::Shape;
use crate::rules::source::{Backend, RuleSource};
use crate::verdict::decision::{self, Decision, Decisions};
use crate::verdict::{Outcome, TrialResult};
use crate::{Error, Result, SessionConfig};

/// The rules a user's rule set is compared with under `--assert paths`:
/// the policy's reference rules, else the profile's own rule set
/// ([`crate::model::profile::Profile::own_rules`]). Same topology and probes.
pub fn reference_config(config: &SessionConfig, policy_rules: Option<RuleSource>) -> Result<SessionConfig> {
    let rules = match policy_rules {
        Some(r) => r,
        None => config.profile.own_rules(Shape::Current).ok_or_else(|| {
            Error::config(format!(
                "--assert paths compares each connection's deciding rules with the profile's own rule set, but profile {} ({}) has none: give the profile its rule set (`rules: {{ ipv4: FILE, ipv6: FILE }}`) or use --assert ports",
                config.profile.name, config.profile.file
            ))
        })?,
    };
    let mut c = config.clone();
    let (mine, theirs) = (config.rules.families(), rules.families());
    c.topology.families.retain(|f| mine.contains(f) && theirs.contains(f));
    if c.topology.families.is_empty() {
        return Err(Error::config(format!(
            "{} and the reference ({}) have no IP family in common to compare",
            config.rules.describe(),
            rules.describe()
        )));
    }
    c.rules = rules;
    // Restore text installs through iptables; the front end of the
    // reference does not matter to its decisions.
    c.backend = Backend::Nft;
    c.assert_paths = false;
    Ok(c)
}

pub(super) fn side_line(label: &str, d: &Option<Decision>) -> String {
    match d {
        Some(d) => format!("{label}: {}  {}", d.place(), d.text),
        None => format!("{label}: (no rule decided here)"),
    }
}

fn describe_ports(ports: &[u16], end: &str) -> String {
    let mut parts: Vec<String> = ports.iter().map(u16::to_string).collect();
    match parts.last_mut() {
        Some(last) => *last = end.to_string(),
        None => return end.to_string(),
    }
    parts.join(" -> ")
}

/// `--assert paths` for a rule set that is not the contract's own: each
/// trial also fails when a connection leaves by a different kind of rule
/// than under the reference, and every failing trial says where the
/// decisions part and how to trace that probe.
pub fn judge_against(
    trials: &mut [TrialResult],
    mine: &[Decisions],
    reference: &SideRun,
    probes: &Probes,
    rule_args: &str,
) {
    for (t, d) in trials.iter_mut().zip(mine) {
        // The scenarios' path strings describe the built-in rules; here the
        // reference's decisions are the expectation, so reports must not
        // set the strings beside another layout's path.
        t.expected.path = None;
        let Some((_, theirs)) = reference.find(&t.scenario, &t.family) else { continue };
        let probe = probes.get(&(t.scenario.clone(), t.family.clone()));
        let Some(div) = decision::first_divergence(theirs, d) else { continue };
        let mut text = format!(
            "first different decision from the reference ({}): leg {}, {}\n    {}\n    {}",
            reference.describe,
            div.leg,
            div.hook,
            side_line("reference  ", &div.a),
            side_line("these rules", &div.b)
        );
        if let Some(p) = probe {
            text.push_str(&format!("\n  trace it: {}", trace_command(p, rule_args)));
        }
        if t.outcome == Outcome::Pass {
            let want = describe_ports(
                &t.expected.ports,
                &format!("{}:{}", t.expected.server, t.expected.ports.last().copied().unwrap_or(0)),
            );
            t.outcome = Outcome::Fail;
            t.message = format!("ports as expected ({want}), but a connection leaves by a different rule:\n  {text}");
        } else {
            t.message = format!("{}\n  {text}", t.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::Profile;

    /// Every profile's own rules come the same way: its files, or for the
    /// built-in profile the generator writes for, the generated rules; a
    /// profile file has only the rules it names, whatever its name.
    #[test]
    fn the_reference_is_the_profiles_own_rule_set_whatever_the_mesh() {
        let with = |profile: Profile| SessionConfig { profile, ..SessionConfig::default() };
        let builtin = RuleSource::Builtin(crate::rules::istio::IstioCapture::default_for(Shape::Current));
        let reference = |p: Profile| reference_config(&with(p), None).map(|c| c.rules.describe());
        assert_eq!(reference(Profile::istio()).unwrap(), builtin.describe());
        let linkerd = Profile::builtin("linkerd").unwrap();
        assert_eq!(reference(linkerd.clone()).unwrap(), linkerd.rules().unwrap().describe());
        // A copy of the Istio profile as a file, its name kept: no rule set of its own.
        let dir = std::env::temp_dir().join(format!("sidecheck-against-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("istio.yaml");
        std::fs::write(&file, include_str!("../../../scenarios/profiles/istio.yaml")).unwrap();
        let copy = Profile::load(file.to_str().unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(copy.name, "istio");
        let e = reference(copy).unwrap_err().to_string();
        assert!(e.contains("has none: give the profile its rule set"), "{e}");
    }
}

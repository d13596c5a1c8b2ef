//! The reference run behind `--assert paths` on rules the user gave: the
//! contract's own rules (the policy's reference rules, or the profile's rule
//! set) on the same probes, started beside the run and folded into its
//! trials. They keep the exact path strings.

use crate::diff::SideRun;
use crate::model::scenario::Scenario;
use crate::plan::{Doing, Plan};
use crate::verdict::decision::{self, Decisions};
use crate::verdict::TrialResult;
use crate::{Error, Result, Session};

/// The reference run, on its own thread.
pub type ReferenceRun = std::thread::JoinHandle<Result<SideRun>>;

/// The plan's reference for `--assert paths`, preflighted, then started.
pub fn start(plan: &Plan) -> Result<Option<ReferenceRun>> {
    let Some(policy_rules) = plan.reference.clone() else { return Ok(None) };
    let reference = crate::diff::reference_config(&plan.config, policy_rules)?;
    Session::preflight(&reference, &plan.scenarios)
        .doing(|| "checking the reference rules for --assert paths".to_string())?;
    let scenarios = plan.scenarios.clone();
    Ok(Some(std::thread::spawn(move || crate::diff::run_side(reference, &scenarios))))
}

/// Wait for the reference and judge `trials` (run in `session`) by it.
pub fn judge(
    reference: ReferenceRun,
    session: &Session,
    trials: &mut [TrialResult],
    scenarios: &[Scenario],
    replay: &str,
) -> Result<()> {
    let index = session.tracer().map(|t| t.index().clone()).unwrap_or_default();
    let mine: Vec<_> = trials.iter().map(|t| decision::decisions(&t.observed.legs, &index)).collect();
    let joined = reference.join().map_err(|_| ());
    let mut config = session.config().clone();
    config.topology.families = session.families().to_vec();
    let probes = crate::diff::probes(scenarios, &config);
    fold(joined, trials, &mine, &probes, replay)
}

/// The reference's verdict folded into the trials: a reference that did not
/// run, or could not test a trial, is no basis for judging paths (an error,
/// the trials untouched); otherwise each trial is judged against it.
fn fold(
    joined: std::result::Result<Result<SideRun>, ()>,
    trials: &mut [TrialResult],
    mine: &[Decisions],
    probes: &crate::diff::Probes,
    replay: &str,
) -> Result<()> {
    let reference = joined
        .map_err(|()| Error::config("the reference run for --assert paths panicked"))?
        .doing(|| "running the reference rules for --assert paths".to_string())?;
    if let Some(e) = reference.harness_error() {
        return Err(Error::config(format!(
            "the reference rules ({}) could not be tested for --assert paths: {e}",
            reference.describe
        )));
    }
    crate::diff::judge_against(trials, mine, &reference, probes, replay);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::presets::trial;
    use crate::verdict::Outcome;

    fn side(trials: Vec<TrialResult>, decisions: Vec<Decisions>) -> SideRun {
        SideRun { describe: "reference rules".into(), backend: "nft".into(), families: vec![], trials, decisions }
    }

    /// A leg the reference's SYN took that these rules' did not: a divergence.
    fn one_leg() -> Decisions {
        Decisions { legs: vec![vec![]] }
    }

    #[test]
    fn a_reference_that_could_not_test_a_trial_judges_nothing() {
        let mut broken = trial("t", false, "no server\nmore");
        broken.outcome = Outcome::Error;
        let mut trials = vec![trial("t", true, "")];
        let before = trials.clone();
        let joined = Ok(Ok(side(vec![broken], vec![one_leg()])));
        let e = fold(joined, &mut trials, &[Decisions::default()], &Default::default(), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the reference rules (reference rules) could not be tested for --assert paths: t (ERROR): no server"
        );
        assert_eq!(trials, before);
    }

    #[test]
    fn a_reference_that_did_not_run_says_so_in_the_run_s_words() {
        let mut trials = vec![trial("t", true, "")];
        let e = fold(Err(()), &mut trials, &[Decisions::default()], &Default::default(), "").unwrap_err();
        assert_eq!(e.to_string(), "the reference run for --assert paths panicked");
        let e = fold(Ok(Err(Error::config("no veth"))), &mut trials, &[Decisions::default()], &Default::default(), "")
            .unwrap_err();
        assert_eq!(e.to_string(), "running the reference rules for --assert paths: no veth");
    }

    /// A passing trial whose connection leaves by another rule than the
    /// reference's fails; one that decides as the reference does passes,
    /// and neither keeps the scenario's path string.
    #[test]
    fn each_trial_is_judged_against_the_reference_s_decisions() {
        let reference = side(vec![trial("same", true, ""), trial("other", true, "")], vec![one_leg(), one_leg()]);
        let mut trials = vec![trial("same", true, ""), trial("other", true, "")];
        fold(Ok(Ok(reference)), &mut trials, &[one_leg(), Decisions::default()], &Default::default(), "").unwrap();
        assert_eq!(trials[0].outcome, Outcome::Pass);
        assert_eq!(trials[1].outcome, Outcome::Fail);
        assert!(trials[1].message.contains("leaves by a different rule"), "{}", trials[1].message);
        assert!(trials[1].message.contains("first different decision from the reference (reference rules)"));
        assert!(trials.iter().all(|t| t.expected.path.is_none()));
    }
}

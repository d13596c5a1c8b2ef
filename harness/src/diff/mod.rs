//! Two rule sets, the same probes: which connections they treat
//! differently (`sidecheck diff`), and the reference a user's rule set is
//! judged against under `--assert paths` (the contract's own rules run
//! beside it on the same probes).

mod against;
mod compare;
mod probes;
mod render;

use crate::base::net::Family;
use crate::model::scenario::Scenario;
use crate::verdict::decision::{self, Decisions};
use crate::verdict::TrialResult;
use crate::{Error, Result, Session, SessionConfig};

pub use against::{judge_against, reference_config};
pub use compare::{compare, DiffReport, Difference, Fate};
pub use probes::{probes, trace_command, ProbeInfo, Probes};

/// One rule set run on the probes: its trials (ports judged) and, per
/// trial, what its rules decided.
#[derive(Clone, Debug)]
pub struct SideRun {
    pub describe: String,
    pub backend: String,
    pub families: Vec<Family>,
    pub trials: Vec<TrialResult>,
    pub decisions: Vec<Decisions>,
}

impl SideRun {
    /// The first trial the harness could not test, if any: a side with an
    /// ERROR is no basis for a comparison (exit 2, not a difference).
    pub fn harness_error(&self) -> Option<String> {
        self.trials
            .iter()
            .find(|t| t.outcome == crate::verdict::Outcome::Error)
            .map(|t| format!("{} (ERROR): {}", t.name, t.message.lines().next().unwrap_or_default()))
    }

    pub(crate) fn find(&self, scenario: &str, family: &str) -> Option<(&TrialResult, &Decisions)> {
        let k = self.trials.iter().position(|t| t.scenario == scenario && t.family == family)?;
        Some((&self.trials[k], &self.decisions[k]))
    }
}

/// Start a session for `config`, run every scenario (ports judged, paths
/// not), and read each traced probe's decisions before the session ends.
pub fn run_side(mut config: SessionConfig, scenarios: &[Scenario]) -> Result<SideRun> {
    config.trace = true;
    config.rule_texts = true;
    let describe = config.rules.describe();
    let session = Session::start(config)?;
    let trials = session.run_with(scenarios, false);
    let index = session.tracer().map(|t| t.index().clone()).unwrap_or_default();
    let decisions = trials.iter().map(|t| decision::decisions(&t.observed.legs, &index)).collect();
    Ok(SideRun { describe, backend: session.backend_name(), families: session.families().to_vec(), trials, decisions })
}

/// Both sides at once: separate topologies, mostly waiting on probes.
pub fn run_pair(a: SessionConfig, b: SessionConfig, scenarios: &[Scenario]) -> (Result<SideRun>, Result<SideRun>) {
    std::thread::scope(|s| {
        let ha = s.spawn(|| run_side(a, scenarios));
        let hb = s.spawn(|| run_side(b, scenarios));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<SideRun>>| {
            h.join().unwrap_or_else(|_| Err(Error::config("a rule set's run panicked")))
        };
        (join(ha), join(hb))
    })
}

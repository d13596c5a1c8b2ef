//! Executing a plan: what `sidecheck run`, `trace` and `diff` do between
//! parsing their arguments and printing. The library returns values (the
//! report, the namespaces kept, the `--each` lines); the command line prints
//! them and chooses the exit code.

pub mod diff;
pub mod each;
pub mod reference;
pub mod trace;

use crate::plan::{Doing, Plan};
use crate::report::Report;
use crate::verdict::Outcome;
use crate::{Result, Session};

pub use each::each;
pub use reference::ReferenceRun;

/// How a `run` is executed, beyond its plan.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--keep`: a failing run's namespaces stay for inspection.
    pub keep: bool,
    /// Read the installed rules back into the report (`--show-rules`, and
    /// the formats that carry them).
    pub want_ruleset: bool,
    /// The run's rule source as `sidecheck trace` arguments, for the replay
    /// line `--assert paths` gives a failing trial.
    pub replay: String,
}

/// A run done: its report, and the namespaces `--keep` left behind.
#[derive(Debug)]
pub struct Executed {
    pub report: Report,
    /// The namespaces of a failing run kept by `--keep`, by name.
    pub kept: Option<Vec<String>>,
}

/// The checks every `run` makes before anything is created, in the order
/// they always came (topology, preflight, root, the `--assert paths`
/// reference, nothing to run); the reference is started here, beside.
pub fn start(plan: &Plan) -> Result<Option<ReferenceRun>> {
    // Bad input is reported before anything is created.
    plan.check_topology()?;
    Session::preflight(&plan.config, &plan.scenarios)?;
    crate::require_root("sidecheck run")?;
    let reference = reference::start(plan)?;
    plan.check_runs()?;
    Ok(reference)
}

/// `sidecheck run`: the plan in one session (the reference beside under
/// `--assert paths`), judged, then the report.
pub fn execute(plan: Plan, options: &Options) -> Result<Executed> {
    let reference = start(&plan)?;
    let Plan { config, scenarios, cases, .. } = plan;
    let session = Session::start(config.clone()).doing(|| "setting up the test topology".to_string())?;
    let mut trials = session.run_cases(&cases, config.assert_paths);
    if let Some(reference) = reference {
        reference::judge(reference, &session, &mut trials, &scenarios, &options.replay)?;
    }
    let (backend, families) = (session.backend_name(), session.families().to_vec());
    // What was actually tested, for the reports that carry it.
    let ruleset = if options.want_ruleset {
        Some(session.installed_rules().doing(|| "reading the installed rules back".to_string())?)
    } else {
        None
    };
    let failed = trials.iter().any(|t| t.outcome != Outcome::Pass);
    let kept = (options.keep && failed).then(|| {
        session.keep();
        session.topology().namespace_names().iter().map(|s| s.to_string()).collect()
    });
    drop(session);
    let mut report = Report::new(config.rules.describe(), backend, trials);
    report.families = families.iter().map(|f| f.name().to_string()).collect();
    report.set_profile(&config.profile);
    report.ruleset = ruleset;
    Ok(Executed { report, kept })
}

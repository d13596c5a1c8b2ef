//! `sidecheck trace`: one connection in a session of its own.

use crate::netfilter::trace::{ObservedPath, RuleIndex};
use crate::plan::trace::TracePlan;
use crate::plan::Doing;
use crate::verdict::Observed;
use crate::{Result, Session};

/// The traced connection: what it observed, the rules it took, and the
/// index that names them.
pub struct Traced {
    pub observed: Observed,
    pub path: Option<ObservedPath>,
    pub index: RuleIndex,
}

pub fn execute(plan: &TracePlan) -> Result<Traced> {
    Session::preflight(&plan.config, &[])?;
    crate::require_root("sidecheck trace")?;
    let session = Session::start(plan.config.clone()).doing(|| "setting up the test topology".to_string())?;
    let done = session.probe_one(plan.from, plan.uid, plan.gid, plan.to);
    let index = session.tracer().map(|t| t.index().clone()).unwrap_or_default();
    drop(session);
    Ok(Traced { observed: crate::verdict::observe(&done.observation), path: done.path, index })
}

//! `sidecheck diff`: both sides run at once on the same probes, compared.

use crate::diff::DiffReport;
use crate::plan::diff::DiffPlan;
use crate::plan::Doing;
use crate::{Error, Result, Session};

/// Run both sides of `plan` and compare them; `a` and `b` name the sides
/// as the command line gave them; `paths`: `--assert paths`.
pub fn execute(plan: DiffPlan, a: &str, b: &str, paths: bool) -> Result<DiffReport> {
    let DiffPlan { a: ca, b: cb, base, scenarios } = plan;
    Session::preflight(&ca, &scenarios).doing(|| format!("checking A ({})", ca.rules.describe()))?;
    Session::preflight(&cb, &scenarios).doing(|| format!("checking B ({})", cb.rules.describe()))?;
    crate::require_root("sidecheck diff")?;
    let probes = crate::diff::probes(&scenarios, &base);
    let (sa, sb) = crate::diff::run_pair(ca, cb, &scenarios);
    let sa = sa.doing(|| format!("setting up A `{a}`"))?;
    let sb = sb.doing(|| format!("setting up B `{b}`"))?;
    for (side, run) in [("A", &sa), ("B", &sb)] {
        if let Some(e) = run.harness_error() {
            return Err(Error::config(format!(
                "side {side} ({}) could not be tested, so there is nothing to compare: {e}",
                run.describe
            )));
        }
    }
    Ok(crate::diff::compare(&sa, &sb, &probes, paths))
}

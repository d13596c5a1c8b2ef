//! `run --each LIST`: the rule sets LIST names, one after another in one
//! topology (started with the policy's reference rules, restricted to the
//! list's family), one JSON line each.

use std::path::Path;

use crate::base::net::Family;
use crate::plan::each::Each;
use crate::plan::{Doing, Plan};
use crate::rules::source::RuleSource;
use crate::verdict::{Outcome, TrialResult};
use crate::{Result, Session};

/// Run every rule set of `list` on the plan; the lines, each ending in a newline.
pub fn each(mut plan: Plan, list: &Path) -> Result<String> {
    // The reference only exists for rules the user gave, which `--each` excludes.
    let _reference = super::start(&plan)?;
    let each = Each::load(list)?;
    each.restrict(list, &mut plan)?;
    let (config, cases, family) = (plan.config, plan.cases, each.family);
    let mut session = Session::start(config.clone()).doing(|| "setting up the test topology".to_string())?;
    let mut out = String::new();
    for path in each.files {
        let (v4, v6) = match family {
            Family::Ipv4 => (Some(path.clone()), None),
            Family::Ipv6 => (None, Some(path.clone())),
        };
        let swapped = RuleSource::from_rule_files(v4, v6).and_then(|r| session.swap_rules(r, config.backend));
        let ran = swapped.map(|()| session.run_cases(&cases, config.assert_paths));
        out.push_str(&format!("{}\n", line(&path, ran)));
    }
    Ok(out)
}

/// One rule set's line: its exit as `run` would give it, the failed and
/// ERROR trials; or, when it could not be swapped in, the error (exit 2).
fn line(path: &Path, ran: Result<Vec<TrialResult>>) -> serde_json::Value {
    let trials = match ran {
        Err(e) => return serde_json::json!({"rules": path, "exit": 2, "failed": [], "error": format!("{e:#}")}),
        Ok(trials) => trials,
    };
    let named =
        |o: Outcome| -> Vec<&str> { trials.iter().filter(|t| t.outcome == o).map(|t| t.name.as_str()).collect() };
    let (failed, errors) = (named(Outcome::Fail), named(Outcome::Error));
    // As `run` exits: an ERROR is no verdict on the rules (2), even beside failures.
    let exit = if !errors.is_empty() {
        2
    } else if failed.is_empty() {
        0
    } else {
        1
    };
    let error = (!errors.is_empty()).then(|| {
        let first = trials.iter().find(|t| t.outcome == Outcome::Error).map(|t| t.message.as_str());
        format!("{} trial(s) could not be tested (ERROR): {}", errors.len(), first.unwrap_or_default())
    });
    serde_json::json!({"rules": path, "exit": exit, "failed": failed, "errors": errors, "error": error})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::presets::trial;

    fn shown(ran: Result<Vec<TrialResult>>) -> String {
        line(Path::new("m/1.rules"), ran).to_string()
    }

    #[test]
    fn a_rule_set_that_cannot_be_swapped_in_is_exit_2_with_the_error() {
        let e = crate::Error::config("m/1.rules:3: bad rule");
        assert_eq!(shown(Err(e)), r#"{"error":"m/1.rules:3: bad rule","exit":2,"failed":[],"rules":"m/1.rules"}"#);
    }

    #[test]
    fn the_exit_is_run_s_an_error_outranking_failures() {
        let pass = shown(Ok(vec![trial("a", true, "")]));
        assert_eq!(pass, r#"{"error":null,"errors":[],"exit":0,"failed":[],"rules":"m/1.rules"}"#);
        let fail = shown(Ok(vec![trial("a", true, ""), trial("b", false, "ports")]));
        assert_eq!(fail, r#"{"error":null,"errors":[],"exit":1,"failed":["b"],"rules":"m/1.rules"}"#);
        let mut broken = trial("c", false, "no server");
        broken.outcome = Outcome::Error;
        let both = shown(Ok(vec![trial("b", false, "ports"), broken.clone(), broken]));
        assert_eq!(
            both,
            r#"{"error":"2 trial(s) could not be tested (ERROR): no server","errors":["c","c"],"exit":2,"failed":["b"],"rules":"m/1.rules"}"#
        );
    }
}

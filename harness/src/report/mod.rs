//! Printing results: a table for people, one JSON object for programs,
//! JUnit and Markdown for CI, a summary to paste; one file per format.

pub mod annotate;
mod human;
mod json;
mod junit;
mod markdown;
pub mod outputs;
#[cfg(test)]
pub(crate) mod presets;
mod summary;

use serde::Serialize;

use crate::model::profile::Profile;
use crate::verdict::{Outcome, TrialResult};

pub use human::{trace_text, ColorChoice};

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where the rules came from.
    pub rules: String,
    /// The mesh profile the expectations came from (`istio`, `linkerd`, ...).
    pub profile: String,
    pub backend: String,
    /// The IP families tested.
    pub families: Vec<String>,
    /// The rules as installed (what was actually tested), when read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ruleset: Option<String>,
    pub trials: Vec<TrialResult>,
    pub passed: usize,
    pub failed: usize,
    /// Trials the harness could not test (exit 2).
    pub errors: usize,
    /// The mesh's display name (`OSM`), once [`Report::set_profile`] named it.
    #[serde(skip)]
    pub mesh: Option<String>,
}

impl Report {
    pub fn new(rules: String, backend: String, trials: Vec<TrialResult>) -> Report {
        let passed = trials.iter().filter(|t| t.outcome == Outcome::Pass).count();
        let failed = trials.iter().filter(|t| t.outcome == Outcome::Fail).count();
        let errors = trials.iter().filter(|t| t.outcome == Outcome::Error).count();
        Report {
            rules,
            profile: "istio".into(),
            backend,
            families: Vec::new(),
            ruleset: None,
            trials,
            passed,
            failed,
            errors,
            mesh: None,
        }
    }

    /// The profile the expectations came from: its name, and the mesh's
    /// display name for the summary.
    pub fn set_profile(&mut self, profile: &Profile) {
        self.profile = profile.name.clone();
        self.mesh = Some(profile.display_name());
    }

    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.errors == 0
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
        Outcome::Error => "ERROR",
    }
}

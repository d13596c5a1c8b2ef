//! The run plan: what a session executes, built by the library from any
//! input (the built-in scenarios, `--scenarios DIR`, `--policy FILE` or
//! `from-command`, with any rule source, profile and `--topology`), so that
//! the command line only parses its arguments and prints.

pub mod config;
pub mod diff;
pub mod each;
pub mod input;
pub mod policy;
pub mod settings;
pub mod trace;

use std::path::PathBuf;

use crate::base::net::Family;
use crate::model::scenario::{self, Scenario};
use crate::rules::source::RuleSource;
use crate::{Error, Result};

pub use config::{SessionConfig, Timeouts};
pub use input::{Families, RuleInput};

/// Where the probes come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Probes {
    /// The scenarios built into the binary.
    #[default]
    Builtin,
    /// `--scenarios DIR`.
    Dir(PathBuf),
    /// `--policy FILE` (or `from-command`): the policy's boundary matrix.
    Policy(PathBuf),
}

impl Probes {
    /// The scenarios, with `config` set up for them (a policy's profile,
    /// topology and ports; its reference rules as the rules under test when
    /// `reference`), and a policy's reference rules. `generator` is the one
    /// `from-command` reads; `profile_given`: run under `config`'s profile,
    /// not the one of the mesh the policy names.
    pub fn load(
        &self,
        config: &mut SessionConfig,
        generator: Option<&str>,
        profile_given: bool,
        reference: bool,
    ) -> Result<(Vec<Scenario>, Option<RuleSource>)> {
        Ok(match self {
            Probes::Dir(dir) => {
                (scenario::load_dir(dir).doing(|| format!("loading scenarios from {}", dir.display()))?, None)
            }
            Probes::Policy(file) => {
                let (policy, base, label) = policy::load(file, generator, profile_given, &config.profile)?;
                policy.check_groups(&label)?;
                (policy.configure(config, reference, &base), Some(policy.reference_rules()))
            }
            Probes::Builtin => (scenario::builtin().doing(|| "loading the built-in scenarios".to_string())?, None),
        })
    }
}

/// Everything a run (or `list`) is asked for.
#[derive(Clone, Debug)]
pub struct Input {
    pub rules: RuleInput,
    pub probes: Probes,
    /// Each scenario this many times (trials named `name#k`).
    pub repeat: u32,
    /// `--test` / `--skip` patterns on trial names.
    pub test: Vec<String>,
    pub skip: Vec<String>,
    /// Record rule paths (`--no-trace` turns it off).
    pub trace: bool,
    /// `--assert paths`.
    pub assert_paths: bool,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            rules: RuleInput::default(),
            probes: Probes::Builtin,
            repeat: 1,
            test: Vec::new(),
            skip: Vec::new(),
            trace: true,
            assert_paths: false,
        }
    }
}

/// What a session executes, and what the reports need to name the run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub config: SessionConfig,
    /// The scenarios that run (after `--repeat` and the selection).
    pub scenarios: Vec<Scenario>,
    /// The (scenario, family) trials, named as the session names them.
    pub cases: Vec<(Scenario, Family)>,
    /// `--assert paths` on rules the user gave: the rules run beside on the
    /// same probes as the reference (the policy's reference rules, or with
    /// `None` the profile's own rule set), each connection judged by
    /// whether it leaves by the same kind of rule (docs/decisions.md).
    pub reference: Option<Option<RuleSource>>,
    /// The `--topology` file, for [`Plan::check_topology`].
    pub topology_file: Option<settings::TopologyFile>,
}

impl Plan {
    /// Build the plan for `input`; `note` hears what the user should be
    /// told on the way (printed, not an error).
    pub fn build(input: &Input, note: &mut dyn FnMut(&str)) -> Result<Plan> {
        let rules = &input.rules;
        let (mut config, topology) = rules.config(note)?;
        let (mut scenarios, policy_rules) =
            input.probes.load(&mut config, rules.generator.as_deref(), rules.profile.is_some(), !rules.given())?;
        if input.repeat > 1 {
            scenarios = (1..=input.repeat)
                .flat_map(|k| scenarios.iter().map(move |s| Scenario { name: format!("{}#{k}", s.name), ..s.clone() }))
                .collect();
        }
        config.trace = input.trace;
        config.assert_paths = input.assert_paths;
        let cases = cases(&config, &scenarios, &input.test, &input.skip)?;
        // Only the scenarios that run are checked and probed.
        scenarios.retain(|s| cases.iter().any(|(c, _)| c.name == s.name));
        let mut reference = None;
        if input.assert_paths {
            if rules.given() {
                reference = Some(policy_rules);
                // The reference judges the paths; the user's rules keep their texts for the report.
                config.rule_texts = true;
            }
            // A policy's matrix states no paths: its reference rules, run
            // as the rules under test, decide as they decide.
            if rules.given() || matches!(input.probes, Probes::Policy(_)) {
                config.assert_paths = false;
            }
        }
        Ok(Plan { config, scenarios, cases, reference, topology_file: topology })
    }

    /// What can be said of the plan's topology before a session checks it
    /// (which `run` does first, `list` never): a `--topology` setting the
    /// run's families cannot use, at its line.
    pub fn check_topology(&self) -> Result<()> {
        match &self.topology_file {
            Some(file) => file.check(&self.config.topology),
            None => Ok(()),
        }
    }

    /// Refuse a plan with nothing to run (after the session's preflight,
    /// whose errors say more).
    pub fn check_runs(&self) -> Result<()> {
        if self.cases.is_empty() {
            return Err(Error::config(format!(
                "no scenario runs in the families tested ({:?}): check the scenarios' `family`",
                self.config.topology.families
            )));
        }
        Ok(())
    }

    /// The trials' names, as the session will give them.
    pub fn trial_names(&self) -> Vec<String> {
        let backend = self.config.backend_name();
        self.cases.iter().map(|(s, f)| scenario::case_name(&s.name, &backend, *f)).collect()
    }
}

/// The (scenario, family) cases a run of `config` has, as `--test` and
/// `--skip` filter them; named as the session will name them.
fn cases(
    config: &SessionConfig,
    scenarios: &[Scenario],
    test: &[String],
    skip: &[String],
) -> Result<Vec<(Scenario, Family)>> {
    let filter = scenario::Filter::new(test, skip)?;
    // The families the session will test: those of the run that the rules cover.
    let covered = config.rules.families();
    let families: Vec<Family> = config.topology.families.iter().copied().filter(|f| covered.contains(f)).collect();
    scenario::select(scenarios, &families, &config.backend_name(), &filter)
}

/// An error with what was being done in front (`doing: error`), as the
/// command line prints a chain of contexts.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Doing<T> for Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::config(format!("{}: {e}", what())))
    }
}

#[cfg(test)]
mod tests;

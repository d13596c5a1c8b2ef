//! Which rules to test and the topology they are tested in, as the command
//! line gives them (`run`, `list`, `trace`): the rule source, the mesh
//! profile, `--topology` settings and the families.

use std::path::PathBuf;

use crate::base::net::Family;
use crate::model::profile::Profile;
use crate::plan::settings::TopologyFile;
use crate::plan::{Doing, SessionConfig};
use crate::rules::istio::Shape;
use crate::rules::source::{Backend, RuleSource};
use crate::{Error, Result};

/// `--family`: one family, or both (which, unlike no `--family`, asks that
/// the rules cover both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Families {
    Ipv4,
    Ipv6,
    Both,
}

/// The rule source and its surroundings, as given (each field one flag).
#[derive(Clone, Debug)]
pub struct RuleInput {
    pub rules: Option<PathBuf>,
    pub rules6: Option<PathBuf>,
    pub nft: Option<PathBuf>,
    pub script: Option<PathBuf>,
    pub generator: Option<String>,
    pub family: Option<Families>,
    pub topology: Option<PathBuf>,
    /// Seconds, as given (checked here).
    pub rules_timeout: f64,
    pub shape: Shape,
    pub backend: Backend,
    pub profile: Option<String>,
    pub allow_empty_rules: bool,
}

impl Default for RuleInput {
    fn default() -> Self {
        RuleInput {
            rules: None,
            rules6: None,
            nft: None,
            script: None,
            generator: None,
            family: None,
            topology: None,
            rules_timeout: 30.0,
            shape: Shape::Current,
            backend: Backend::Nft,
            profile: None,
            allow_empty_rules: false,
        }
    }
}

impl RuleInput {
    /// Whether a rule source was given (else the default for the profile or policy).
    pub fn given(&self) -> bool {
        self.rules.is_some()
            || self.rules6.is_some()
            || self.nft.is_some()
            || self.script.is_some()
            || self.generator.is_some()
    }

    /// The rule source; `note` hears what the user should know about it.
    pub fn source(&self, profile: &Profile, note: &mut dyn FnMut(&str)) -> Result<RuleSource> {
        Ok(if self.rules.is_some() || self.rules6.is_some() {
            RuleSource::from_rule_files(self.rules.clone(), self.rules6.clone())?
        } else if let Some(p) = &self.nft {
            RuleSource::NftFile(p.clone())
        } else if let Some(p) = &self.script {
            let source = RuleSource::from_script_file(p.clone())?;
            if !matches!(source, RuleSource::Script(_)) {
                note(&format!(
                    "{} is restore input (iptables-restore or Istio's dry-run format), not a shell script: installed as --rules installs it",
                    p.display()
                ));
            }
            source
        } else if let Some(c) = &self.generator {
            RuleSource::Generator(c.clone())
        } else {
            match profile.own_rules(self.shape) {
                Some(r) => r,
                None => return Err(Error::config(format!(
                    "profile {} ({}) has no rule set of its own: give the rules to test with --rules, --nft, --script or --generator",
                    profile.name,
                    profile.file
                ))),
            }
        })
    }

    /// The session configuration these flags ask for (before any policy),
    /// and the `--topology` file it read, for [`TopologyFile::check`] once
    /// the run's families are known.
    pub fn config(&self, note: &mut dyn FnMut(&str)) -> Result<(SessionConfig, Option<TopologyFile>)> {
        rules_timeout(self.rules_timeout)?;
        let spec = self.profile.as_deref().unwrap_or("istio");
        let profile = Profile::load(spec).doing(|| format!("loading --profile {spec}"))?;
        let mut config = SessionConfig {
            rules: self.source(&profile, note)?,
            profile,
            backend: self.backend,
            rules_timeout: std::time::Duration::from_secs_f64(self.rules_timeout),
            allow_empty_rules: self.allow_empty_rules,
            ..SessionConfig::default()
        };
        let topology = match &self.topology {
            Some(file) => Some(TopologyFile::apply(file, &mut config)?),
            None => None,
        };
        match self.family {
            Some(Families::Ipv4) => config.topology.families = vec![Family::Ipv4],
            Some(Families::Ipv6) => config.topology.families = vec![Family::Ipv6],
            Some(Families::Both) | None => {}
        }
        let covered = config.rules.families();
        if let Some(missing) =
            config.topology.families.iter().find(|f| !covered.contains(f)).filter(|_| self.family.is_some())
        {
            return Err(Error::config(format!(
                "--family asks for {} but no rules were given for it: add --rules6 / --rules",
                missing.name()
            )));
        }
        Ok((config, topology))
    }
}

/// `--rules-timeout` seconds: finite, above 0, at most an hour.
pub fn rules_timeout(seconds: f64) -> Result<()> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0 {
        Ok(())
    } else {
        Err(Error::config(format!("--rules-timeout {seconds}: give seconds between 0 and 3600")))
    }
}

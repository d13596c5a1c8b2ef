//! `sidecheck diff`: two rule sets on the same probes, each side in a
//! topology of its own, configured alike but for the rules.

use std::path::PathBuf;

use crate::base::net::Family;
use crate::model::profile::Profile;
use crate::model::scenario::Scenario;
use crate::plan::settings::TopologyFile;
use crate::plan::{Doing, Families, Probes, SessionConfig};
use crate::rules::istio::{IstioCapture, Shape};
use crate::rules::source::{Backend, RuleSource};
use crate::{Error, Result};

/// What `diff` is asked for.
#[derive(Clone, Debug)]
pub struct DiffInput {
    /// The rule sources, as `diff` takes them (see [`side`]).
    pub a: String,
    pub b: String,
    pub probes: Probes,
    pub profile: Option<String>,
    pub family: Option<Families>,
    pub topology: Option<PathBuf>,
    pub backend: Backend,
    /// Seconds, as given (checked here).
    pub rules_timeout: f64,
}

/// The two sides, the configuration they share (whose probes are compared)
/// and the scenarios.
#[derive(Clone, Debug)]
pub struct DiffPlan {
    pub a: SessionConfig,
    pub b: SessionConfig,
    pub base: SessionConfig,
    pub scenarios: Vec<Scenario>,
}

impl DiffPlan {
    pub fn build(input: &DiffInput) -> Result<DiffPlan> {
        crate::plan::input::rules_timeout(input.rules_timeout)?;
        let (ra, pa) = side(&input.a).doing(|| format!("reading rule source A `{}`", input.a))?;
        let (rb, pb) = side(&input.b).doing(|| format!("reading rule source B `{}`", input.b))?;
        let profile = match (&input.profile, &pa, &pb) {
            (Some(name), _, _) => Profile::load(name).doing(|| format!("loading --profile {name}"))?,
            (None, Some(a), Some(b)) if a.name != b.name => {
                return Err(Error::config(format!(
                    "A is profile {} and B profile {}: their probes differ; say which contract to probe with --profile",
                    a.name, b.name
                )))
            }
            (None, Some(p), _) | (None, None, Some(p)) => p.clone(),
            (None, None, None) => Profile::istio(),
        };
        let mut base = SessionConfig {
            profile,
            backend: input.backend,
            rules_timeout: std::time::Duration::from_secs_f64(input.rules_timeout),
            ..SessionConfig::default()
        };
        let topology_file = match &input.topology {
            Some(file) => Some(TopologyFile::apply(file, &mut base)?),
            None => None,
        };
        // A policy as `run` reads it: the policy's mesh, or --profile's.
        let given = input.profile.is_some() || pa.is_some() || pb.is_some();
        let (scenarios, _) = input.probes.load(&mut base, None, given, false)?;
        match input.family {
            Some(Families::Ipv4) => base.topology.families.retain(|f| *f == Family::Ipv4),
            Some(Families::Ipv6) => base.topology.families.retain(|f| *f == Family::Ipv6),
            Some(Families::Both) | None => {}
        }
        // Both sides run the families both have rules for.
        let (fa, fb) = (ra.families(), rb.families());
        base.topology.families.retain(|f| fa.contains(f) && fb.contains(f));
        if base.topology.families.is_empty() {
            return Err(Error::config(format!(
                "A ({}) and B ({}) have rules for no IP family in common (that this run tests): give both families (FILE4,FILE6) or --family",
                ra.describe(),
                rb.describe()
            )));
        }
        if let Some(file) = &topology_file {
            file.check(&base.topology)?;
        }
        let a = SessionConfig { rules: ra, ..base.clone() };
        let b = SessionConfig { rules: rb, ..base.clone() };
        Ok(DiffPlan { a, b, base, scenarios })
    }
}

/// One side of `sidecheck diff`: the rule source and the profile it names.
pub fn side(spec: &str) -> Result<(RuleSource, Option<Profile>)> {
    let file = |p: &str| -> Result<PathBuf> {
        if p.is_empty() {
            return Err(Error::config(format!("`{spec}` names no file")));
        }
        Ok(PathBuf::from(p))
    };
    Ok(match spec.split_once(':') {
        Some(("nft", p)) => (RuleSource::NftFile(file(p)?), None),
        Some(("script", p)) => (RuleSource::from_script_file(file(p)?).doing(|| format!("reading `{spec}`"))?, None),
        Some(("gen", c)) => (RuleSource::Generator(c.to_string()), None),
        Some(("builtin", "classic")) => (RuleSource::Builtin(IstioCapture::default_for(Shape::Classic)), None),
        Some(("builtin", "current")) => (RuleSource::Builtin(IstioCapture::default_for(Shape::Current)), None),
        Some(("builtin", other)) => {
            return Err(Error::config(format!(
                "`{spec}`: the built-in rules come as builtin, builtin:current or builtin:classic, not `{other}`"
            )))
        }
        Some(("profile", name)) => {
            let p = Profile::load(name).doing(|| format!("loading the profile of `{spec}`"))?;
            let rules = p
                .own_rules(Shape::Current)
                .ok_or_else(|| Error::config(format!("`{spec}`: profile {} has no rule set of its own", p.name)))?;
            (rules, Some(p))
        }
        _ if spec == "builtin" => (RuleSource::Builtin(IstioCapture::default_for(Shape::Current)), None),
        // Restore input or Istio's dry-run output, read as --rules/--rules6 read it.
        _ => {
            let (v4, v6) = match spec.split_once(',') {
                Some((v4, v6)) => ((!v4.is_empty()).then(|| file(v4)).transpose()?, Some(file(v6)?)),
                None => (Some(file(spec)?), None),
            };
            (RuleSource::from_rule_files(v4, v6).doing(|| format!("reading `{spec}`"))?, None)
        }
    })
}

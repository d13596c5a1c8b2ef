//! A capture policy as a run: the probes of its matrix, and the session
//! configuration they need (profile, TPROXY routing, families, topology
//! extras, app ports, DNS).

use crate::model::profile::Profile;
use crate::model::scenario::Scenario;
use crate::plan::{Doing, SessionConfig};
use crate::policy::Policy;
use crate::{Error, Result};

impl Policy {
    /// Set `config` up to probe this policy under the mesh profile `base`
    /// (profile, TPROXY routing, families, topology extras, app ports, DNS;
    /// the reference rules when `reference` says so) and return its probes
    /// as scenarios. The one path for `run`, `list`, `diff` and the tests.
    pub fn configure(&self, config: &mut SessionConfig, reference: bool, base: &Profile) -> Vec<Scenario> {
        config.profile = self.profile_on(base);
        config.tproxy = self.tproxy();
        if reference {
            config.rules = self.reference_rules();
        }
        let families = self.families();
        config.topology.families.retain(|f| families.contains(f));
        let plan = self.run_plan(&config.topology, &config.profile);
        config.topology.remote_extra = plan.remote_extra;
        config.topology.local_extra = plan.local_extra;
        config.topology.pod_links = self.pod_links();
        config.side_app_ports = plan.side_app_ports;
        config.dns = plan.dns;
        config.local_app_ports = plan.local_app_ports;
        config.remote_app_ports = plan.remote_app_ports;
        plan.scenarios
    }
}

/// `--policy FILE|from-command` for a run: the policy, the profile of its
/// mesh it runs under (--profile when given, else the built-in profile of
/// the mesh the policy names), and what to call it in messages.
pub fn load(
    file: &std::path::Path,
    generator: Option<&str>,
    profile_given: bool,
    given: &Profile,
) -> Result<(Policy, Profile, String)> {
    let (text, label) = if file.as_os_str() == "from-command" {
        let Some(cmd) = generator else {
            return Err(Error::config("--policy from-command derives the policy from the generator's command line: give it with --generator 'CMD'"));
        };
        let derived =
            crate::policy::from::from_command(cmd).doing(|| format!("deriving the policy from --generator '{cmd}'"))?;
        (derived.yaml, format!("the policy of --generator '{cmd}'"))
    } else {
        let text = crate::base::bounded::read_text(file, crate::base::bounded::YAML_MAX)
            .doing(|| format!("loading --policy {}", file.display()))?;
        (text, file.display().to_string())
    };
    let base = match (profile_given, Policy::mesh_of(&text)) {
        (true, _) => given.clone(),
        (false, Some(mesh)) => {
            Profile::builtin(mesh.name()).doing(|| format!("loading the {} profile for {label}", mesh.name()))?
        }
        (false, None) => given.clone(),
    };
    let policy = Policy::parse_for(&label, &text, &base).doing(|| format!("loading --policy {label}"))?;
    policy.check_profile(&label, &base)?;
    Ok((policy, base, label))
}

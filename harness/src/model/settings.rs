//! `--topology FILE`: the topology's settings as YAML, every key optional
//! (the defaults are Kubernetes-like), unknown keys errors with
//! file:line:column.
//!
//! ```yaml
//! families: [ipv4, ipv6]
//! pod_cidr: 10.244.0.0/24
//! service_cidr: 10.96.0.0/12
//! addresses: { local-pod: 10.244.0.10, remote-pod: 10.244.0.20 }
//! services:
//!   - { name: local-app, vip: 10.96.0.10, vip6: "fd00:10:96::10", port: 8080, endpoint: local-pod, target_port: 8080 }
//! local_app_ports: [8080]
//! remote_app_ports: [9090]
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Deserialize;

use crate::base::cidr::Cidr;
use crate::base::net::Family;
use crate::model::topology::{Host, Service};
use crate::session::SessionConfig;
use crate::{Error, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub families: Option<Vec<Family>>,
    pub pod_cidr: Option<String>,
    pub pod_cidr6: Option<String>,
    pub service_cidr: Option<String>,
    pub service_cidr6: Option<String>,
    pub addresses: Option<BTreeMap<Host, Ipv4Addr>>,
    pub addresses6: Option<BTreeMap<Host, Ipv6Addr>>,
    pub services: Option<Vec<ServiceSetting>>,
    pub local_app_ports: Option<Vec<u16>>,
    pub remote_app_ports: Option<Vec<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSetting {
    pub name: String,
    pub vip: Ipv4Addr,
    pub vip6: Option<Ipv6Addr>,
    pub port: u16,
    pub endpoint: Host,
    pub target_port: Option<u16>,
}

/// `ADDRESS/PREFIX` of `family`, both parts given (a bare address is no
/// subnet here, though a policy reads it as one host).
fn cidr(file: &str, key: &str, text: &str, family: Family) -> Result<Cidr> {
    let bad =
        || Error::ScenarioInvalid { file: file.into(), message: format!("{key}: `{text}` is not ADDRESS/PREFIX") };
    let prefixed = text.split_once('/').is_some_and(|(_, len)| !len.is_empty());
    Cidr::parse(text).filter(|c| prefixed && c.family() == family).ok_or_else(bad)
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings> {
        let text = crate::base::bounded::read_text(path, crate::base::bounded::YAML_MAX)?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Settings> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        crate::base::bounded::yaml_budget(file, text)?;
        let s: Settings = serde_norway::from_str(text).map_err(|e| match e.location() {
            Some(loc) => Error::ScenarioSyntax {
                file: file.into(),
                line: loc.line(),
                column: loc.column(),
                message: e.to_string(),
            },
            None => Error::ScenarioInvalid { file: file.into(), message: e.to_string() },
        })?;
        for (key, ports) in [("local_app_ports", &s.local_app_ports), ("remote_app_ports", &s.remote_app_ports)] {
            if let Some(p) = ports {
                crate::model::validate::app_ports(p).map_err(|m| crate::model::validate::at(file, text, key, m))?;
            }
        }
        Ok(s)
    }

    /// Apply over `config` (whose topology is then validated by the session).
    pub fn apply(self, file: &str, config: &mut SessionConfig) -> Result<()> {
        let t = &mut config.topology;
        if let Some(f) = self.families {
            t.families = f;
        }
        if let Some(c) = self.pod_cidr {
            t.pod_cidr = cidr(file, "pod_cidr", &c, Family::Ipv4)?;
        }
        if let Some(c) = self.pod_cidr6 {
            t.pod_cidr6 = cidr(file, "pod_cidr6", &c, Family::Ipv6)?;
        }
        if let Some(c) = self.service_cidr {
            t.service_cidr = cidr(file, "service_cidr", &c, Family::Ipv4)?;
        }
        if let Some(c) = self.service_cidr6 {
            t.service_cidr6 = cidr(file, "service_cidr6", &c, Family::Ipv6)?;
        }
        if let Some(a) = self.addresses {
            t.addresses.extend(a);
        }
        if let Some(a) = self.addresses6 {
            t.addresses6.extend(a);
        }
        if let Some(services) = self.services {
            let default6 = t.services.first().map(|s| s.vip6);
            t.services = services
                .into_iter()
                .map(|s| Service {
                    vip6: s.vip6.or(default6).unwrap_or(Ipv6Addr::UNSPECIFIED),
                    target_port: s.target_port.unwrap_or(s.port),
                    name: s.name,
                    vip: s.vip,
                    port: s.port,
                    endpoint: s.endpoint,
                })
                .collect();
        }
        if let Some(p) = self.local_app_ports {
            config.local_app_ports = p;
        }
        if let Some(p) = self.remote_app_ports {
            config.remote_app_ports = p;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_apply_over_the_defaults() {
        let s = Settings::parse("t.yaml", "families: [ipv6]\nservice_cidr: 10.100.0.0/16\nservices:\n  - { name: api, vip: 10.100.0.5, port: 80, endpoint: remote-pod, target_port: 9090 }\nlocal_app_ports: [8080, 8081]\n").unwrap();
        let mut c = SessionConfig::default();
        s.apply("t.yaml", &mut c).unwrap();
        assert_eq!(c.topology.families, [Family::Ipv6]);
        assert_eq!(c.topology.service_cidr, Cidr { addr: Ipv4Addr::new(10, 100, 0, 0).into(), len: 16 });
        assert_eq!(c.topology.services[0].target_port, 9090);
        assert_eq!(c.local_app_ports, [8080, 8081]);
    }

    #[test]
    fn bad_settings_name_the_file_and_place() {
        let e = Settings::parse("t.yaml", "famlies: [ipv4]\n").unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:1:1:") && e.contains("unknown field"), "{e}");
        let s = Settings::parse("t.yaml", "pod_cidr: 10.0.0.0/99\n").unwrap();
        let e = s.apply("t.yaml", &mut SessionConfig::default()).unwrap_err().to_string();
        assert!(e.contains("pod_cidr: `10.0.0.0/99` is not ADDRESS/PREFIX"), "{e}");
    }

    /// The shared `Cidr` reads a bare address as one host; a topology's
    /// subnets need the prefix, and each key its own family.
    #[test]
    fn subnets_need_a_prefix_and_their_family() {
        for (key, text) in [
            ("pod_cidr", "10.244.0.0"),
            ("pod_cidr", "10.244.0.0/"),
            ("pod_cidr", "fd00::/64"),
            ("service_cidr6", "10.96.0.0/12"),
            ("pod_cidr6", "fd00::/129"),
        ] {
            let s = Settings::parse("t.yaml", &format!("{key}: \"{text}\"\n")).unwrap();
            let e = s.apply("t.yaml", &mut SessionConfig::default()).unwrap_err().to_string();
            assert_eq!(e, format!("t.yaml: {key}: `{text}` is not ADDRESS/PREFIX"));
        }
        let s = Settings::parse("t.yaml", "pod_cidr6: fd00:1::/56\n").unwrap();
        let mut c = SessionConfig::default();
        s.apply("t.yaml", &mut c).unwrap();
        assert_eq!(c.topology.pod_cidr6.to_string(), "fd00:1::/56");
    }
}

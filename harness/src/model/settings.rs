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
use crate::model::topology::Host;
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
pub(crate) fn cidr(file: &str, key: &str, text: &str, family: Family) -> Result<Cidr> {
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
        let s: Settings = crate::base::yaml::parse(file, text)?;
        for (key, ports) in [("local_app_ports", &s.local_app_ports), ("remote_app_ports", &s.remote_app_ports)] {
            if let Some(p) = ports {
                crate::model::validate::app_ports(p).map_err(|m| crate::model::validate::at(file, text, key, m))?;
            }
        }
        // A service is found by its name (scenarios' `destination.service`): two alike would be one.
        for (k, svc) in s.services.iter().flatten().enumerate() {
            if s.services.iter().flatten().take(k).any(|o| o.name == svc.name) {
                let from = crate::base::yaml::line_of_key(text, "services").unwrap_or(1);
                let first = crate::base::yaml::line_of_value(text, "name", &svc.name, from);
                let again = first.and_then(|n| crate::base::yaml::line_of_value(text, "name", &svc.name, n + 1));
                return Err(Error::ScenarioInvalid {
                    file: crate::base::yaml::place(file, again),
                    message: format!(
                        "services: two services are named {}{}: give each its own name",
                        svc.name,
                        first.map(|n| format!(" (the first on line {n})")).unwrap_or_default()
                    ),
                });
            }
        }
        Ok(s)
    }
}

//! `--topology FILE` over a run's configuration: the settings (read and
//! checked by model/settings.rs) replace the defaults they name.

use std::net::{IpAddr, Ipv6Addr};

use crate::base::net::Family;
use crate::base::yaml::{line_of_key, line_of_value, place};
use crate::model::settings::{cidr, Settings};
use crate::model::topology::{Service, TopologyConfig};
use crate::plan::{Doing, SessionConfig};
use crate::{Error, Result};

impl Settings {
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

/// A `--topology` file's text, kept to say on which line a setting the
/// run cannot use stands once the run's families are known.
#[derive(Clone, Debug)]
pub struct TopologyFile {
    pub file: String,
    pub text: String,
}

impl TopologyFile {
    /// Read, parse and apply `path` over `config`.
    pub fn apply(path: &std::path::Path, config: &mut SessionConfig) -> Result<TopologyFile> {
        let text = crate::base::bounded::read_text(path, crate::base::bounded::YAML_MAX)?;
        let file = path.display().to_string();
        Settings::parse(&file, &text)?.apply(&file, config).doing(|| format!("applying {file}"))?;
        Ok(TopologyFile { file, text })
    }

    /// A service VIP outside the service CIDR in a family `topo` tests,
    /// refused at the line of the service (or of the CIDR, when the file
    /// moved the CIDR away from the default services).
    pub fn check(&self, topo: &TopologyConfig) -> Result<()> {
        let services = line_of_key(&self.text, "services");
        for s in &topo.services {
            let outside = [
                (!topo.service_cidr.contains(s.vip.into()))
                    .then(|| (IpAddr::from(s.vip), topo.service_cidr.to_string(), "service_cidr")),
                (topo.has(Family::Ipv6) && !topo.service_cidr6.contains(s.vip6.into()))
                    .then(|| (IpAddr::from(s.vip6), topo.service_cidr6.to_string(), "service_cidr6")),
            ];
            let Some((vip, cidr, key)) = outside.into_iter().flatten().next() else { continue };
            let line = match services {
                Some(from) => line_of_value(&self.text, "name", &s.name, from),
                None => line_of_key(&self.text, key),
            };
            return Err(Error::ScenarioInvalid {
                file: place(&self.file, line),
                message: format!(
                    "service {}: VIP {vip} is outside the service CIDR {cidr}: pick a VIP inside it, or widen the CIDR",
                    s.name
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn settings_apply_over_the_defaults() {
        let s = Settings::parse("t.yaml", "families: [ipv6]\nservice_cidr: 10.100.0.0/16\nservices:\n  - { name: api, vip: 10.100.0.5, port: 80, endpoint: remote-pod, target_port: 9090 }\nlocal_app_ports: [8080, 8081]\n").unwrap();
        let mut c = SessionConfig::default();
        s.apply("t.yaml", &mut c).unwrap();
        assert_eq!(c.topology.families, [Family::Ipv6]);
        assert_eq!(
            c.topology.service_cidr,
            crate::base::cidr::Cidr { addr: Ipv4Addr::new(10, 100, 0, 0).into(), len: 16 }
        );
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

#[cfg(test)]
mod located {
    use super::*;

    fn checked(text: &str, families: &[Family]) -> Result<()> {
        let mut config = SessionConfig::default();
        Settings::parse("t.yaml", text)?.apply("t.yaml", &mut config)?;
        config.topology.families = families.to_vec();
        TopologyFile { file: "t.yaml".into(), text: text.into() }.check(&config.topology)
    }

    #[test]
    fn duplicate_service_names_are_refused_at_the_second() {
        let text = "families: [ipv4]\nservices:\n  - { name: api, vip: 10.96.0.5, port: 80, endpoint: remote-pod }\n  - name: web\n    vip: 10.96.0.6\n    port: 80\n    endpoint: remote-pod\n  - name: api\n    vip: 10.96.0.7\n    port: 81\n    endpoint: local-pod\n";
        let e = Settings::parse("t.yaml", text).unwrap_err().to_string();
        assert_eq!(e, "t.yaml:8: services: two services are named api (the first on line 3): give each its own name");
        Settings::parse("t.yaml", &text.replace("name: api\n", "name: apiv2\n")).unwrap();
    }

    #[test]
    fn a_vip_outside_the_service_cidr_says_its_line() {
        let flow = "# settings\nservices:\n  - { name: local-app, vip: 10.96.0.10, port: 8080, endpoint: local-pod }\n  - { name: remote-app, vip: 192.168.9.10, port: 9090, endpoint: remote-pod }\n";
        let e = checked(flow, &[Family::Ipv4]).unwrap_err().to_string();
        assert_eq!(e, "t.yaml:4: service remote-app: VIP 192.168.9.10 is outside the service CIDR 10.96.0.0/12: pick a VIP inside it, or widen the CIDR");
        let block = "services:\n  - name: api\n    vip: 10.96.0.5\n    port: 80\n    endpoint: remote-pod\n  - endpoint: remote-pod\n    port: 80\n    vip: 10.97.0.5\n    name: \"web\"\nservice_cidr: 10.96.0.0/16\n";
        let e = checked(block, &[Family::Ipv4]).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:9: service web: VIP 10.97.0.5 is outside the service CIDR 10.96.0.0/16"), "{e}");
        // The CIDR moved away from the default services: the CIDR's line.
        let moved = "families: [ipv4]\nservice_cidr: 10.100.0.0/16\n";
        let e = checked(moved, &[Family::Ipv4]).unwrap_err().to_string();
        assert!(
            e.starts_with("t.yaml:2: service local-app: VIP 10.96.0.10 is outside the service CIDR 10.100.0.0/16"),
            "{e}"
        );
        // An IPv6 VIP counts only when IPv6 is tested.
        let six = "services:\n  - { name: api, vip: 10.96.0.5, vip6: \"fd00:1::5\", port: 80, endpoint: remote-pod }\n";
        checked(six, &[Family::Ipv4]).unwrap();
        let e = checked(six, &Family::BOTH).unwrap_err().to_string();
        assert!(
            e.starts_with("t.yaml:2: service api: VIP fd00:1::5 is outside the service CIDR fd00:10:96::/112"),
            "{e}"
        );
        checked(flow.replace("192.168.9.10", "10.96.0.20").as_str(), &Family::BOTH).unwrap();
    }
}

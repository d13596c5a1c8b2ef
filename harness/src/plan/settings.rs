//! `--topology FILE` over a run's configuration: the settings (read and
//! checked by model/settings.rs) replace the defaults they name.

use std::net::Ipv6Addr;

use crate::model::settings::{cidr, Settings};
use crate::model::topology::Service;
use crate::plan::SessionConfig;
use crate::Result;

impl Settings {
    /// Apply over `config` (whose topology is then validated by the session).
    pub fn apply(self, file: &str, config: &mut SessionConfig) -> Result<()> {
        let t = &mut config.topology;
        if let Some(f) = self.families {
            t.families = f;
        }
        if let Some(c) = self.pod_cidr {
            t.pod_cidr = cidr(file, "pod_cidr", &c, 32)?;
        }
        if let Some(c) = self.pod_cidr6 {
            t.pod_cidr6 = cidr(file, "pod_cidr6", &c, 128)?;
        }
        if let Some(c) = self.service_cidr {
            t.service_cidr = cidr(file, "service_cidr", &c, 32)?;
        }
        if let Some(c) = self.service_cidr6 {
            t.service_cidr6 = cidr(file, "service_cidr6", &c, 128)?;
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
    use std::net::Ipv4Addr;

    use super::*;
    use crate::base::net::Family;

    #[test]
    fn settings_apply_over_the_defaults() {
        let s = Settings::parse("t.yaml", "families: [ipv6]\nservice_cidr: 10.100.0.0/16\nservices:\n  - { name: api, vip: 10.100.0.5, port: 80, endpoint: remote-pod, target_port: 9090 }\nlocal_app_ports: [8080, 8081]\n").unwrap();
        let mut c = SessionConfig::default();
        s.apply("t.yaml", &mut c).unwrap();
        assert_eq!(c.topology.families, [Family::Ipv6]);
        assert_eq!(c.topology.service_cidr, (Ipv4Addr::new(10, 100, 0, 0), 16));
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
}

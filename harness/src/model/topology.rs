//! The topology as configured: its hosts, addresses, services and
//! extra links, before anything is built (sandbox::topology builds it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::base::cidr::Cidr;
use crate::base::net::Family;
use crate::{Error, Result};

/// The hosts of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Host {
    Node,
    LocalPod,
    RemotePod,
    Prometheus,
    Istiod,
    /// A host behind the local pod's extra interface number N (1..=4): a VM
    /// of a KubeVirt pod, or a network the pod reaches off eth0.
    Side(u8),
}

impl Host {
    pub const ALL: [Host; 5] = [Host::Node, Host::LocalPod, Host::RemotePod, Host::Prometheus, Host::Istiod];
    pub const PODS: [Host; 4] = [Host::LocalPod, Host::RemotePod, Host::Prometheus, Host::Istiod];

    pub fn name(self) -> &'static str {
        match self {
            Host::Node => "node",
            Host::LocalPod => "local-pod",
            Host::RemotePod => "remote-pod",
            Host::Prometheus => "prometheus",
            Host::Istiod => "istiod",
            Host::Side(k) => {
                ["side-1", "side-2", "side-3", "side-4"].get(usize::from(k).wrapping_sub(1)).copied().unwrap_or("side")
            }
        }
    }

    /// The node-side end of the pod's veth (names live inside `node`, so they
    /// cannot collide with another run's).
    pub fn veth(self) -> &'static str {
        match self {
            Host::LocalPod => "veth-local",
            Host::RemotePod => "veth-remote",
            Host::Prometheus => "veth-prom",
            Host::Istiod => "veth-istiod",
            Host::Node => "br0",
            Host::Side(_) => "",
        }
    }

    pub fn parse(s: &str) -> Option<Host> {
        Host::ALL.into_iter().find(|h| h.name() == s)
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A ClusterIP-style service: connections to `vip:port` are meant for
/// `endpoint:target_port`. Envoy's outbound listener resolves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    /// The service's IPv6 cluster IP, on a dual-stack topology.
    pub vip6: Ipv6Addr,
    pub port: u16,
    pub endpoint: Host,
    pub target_port: u16,
}

impl Service {
    pub fn vip_of(&self, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => self.vip.into(),
            Family::Ipv6 => self.vip6.into(),
        }
    }
}

/// Addresses and services, with Kubernetes-like defaults.
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    /// Which families the pods get addresses in (dual-stack by default).
    pub families: Vec<Family>,
    pub pod_cidr: Cidr,
    pub addresses: BTreeMap<Host, Ipv4Addr>,
    pub pod_cidr6: Cidr,
    pub addresses6: BTreeMap<Host, Ipv6Addr>,
    pub service_cidr: Cidr,
    pub service_cidr6: Cidr,
    pub services: Vec<Service>,
    /// Added to the local pod's `lo`: Envoy's IPv6 inbound passthrough
    /// source (pilot-agent adds it in a real pod).
    pub passthrough6: Ipv6Addr,
    /// More addresses of the remote pod, outside the pod subnet (on its
    /// `lo`, routed by the node): destinations on either side of a
    /// policy's address ranges.
    pub remote_extra: Vec<IpAddr>,
    /// More addresses on the local pod's `lo` (a nameserver of the pod itself).
    pub local_extra: Vec<IpAddr>,
    /// Extra interfaces of the local pod, by name; behind interface N
    /// (counted from 1) sits host `Side(N)`, on 172.31.N.0/24 and
    /// fd00:31:N::/64 (the pod .1/::1, the host .2/::2).
    pub pod_links: Vec<String>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        let addresses = [
            (Host::Node, [10, 244, 0, 1]),
            (Host::LocalPod, [10, 244, 0, 10]),
            (Host::RemotePod, [10, 244, 0, 20]),
            (Host::Prometheus, [10, 244, 0, 30]),
            (Host::Istiod, [10, 244, 0, 40]),
        ]
        .into_iter()
        .map(|(h, a)| (h, Ipv4Addr::from(a)))
        .collect();
        let v6 = |last: u16| Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, last);
        let addresses6 = [
            (Host::Node, 1),
            (Host::LocalPod, 0x10),
            (Host::RemotePod, 0x20),
            (Host::Prometheus, 0x30),
            (Host::Istiod, 0x40),
        ]
        .into_iter()
        .map(|(h, a)| (h, v6(a)))
        .collect();
        TopologyConfig {
            families: Family::BOTH.to_vec(),
            pod_cidr: Cidr { addr: Ipv4Addr::new(10, 244, 0, 0).into(), len: 24 },
            addresses,
            pod_cidr6: Cidr { addr: v6(0).into(), len: 64 },
            addresses6,
            service_cidr: Cidr { addr: Ipv4Addr::new(10, 96, 0, 0).into(), len: 12 },
            service_cidr6: Cidr { addr: Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0).into(), len: 112 },
            services: vec![Service {
                name: "local-app".into(),
                vip: Ipv4Addr::new(10, 96, 0, 10),
                vip6: Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10),
                port: 8080,
                endpoint: Host::LocalPod,
                target_port: 8080,
            }],
            passthrough6: Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6),
            remote_extra: Vec::new(),
            local_extra: Vec::new(),
            pod_links: Vec::new(),
        }
    }
}

impl TopologyConfig {
    pub fn address(&self, host: Host) -> Ipv4Addr {
        self.addresses[&host]
    }

    pub fn address_of(&self, host: Host, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => self.addresses[&host].into(),
            Family::Ipv6 => self.addresses6[&host].into(),
        }
    }

    /// Every host this topology builds: the fixed ones, then a side host
    /// per extra pod interface.
    pub fn hosts(&self) -> Vec<Host> {
        Host::ALL.into_iter().chain((1..=self.pod_links.len()).map(|k| Host::Side(k as u8))).collect()
    }

    /// (the pod's address on interface `k`, the side host's) in `family`.
    pub fn link_addresses(k: u8, family: Family) -> (IpAddr, IpAddr) {
        match family {
            Family::Ipv4 => (Ipv4Addr::new(172, 31, k, 1).into(), Ipv4Addr::new(172, 31, k, 2).into()),
            Family::Ipv6 => (
                Ipv6Addr::new(0xfd00, 0x31, u16::from(k), 0, 0, 0, 0, 1).into(),
                Ipv6Addr::new(0xfd00, 0x31, u16::from(k), 0, 0, 0, 0, 2).into(),
            ),
        }
    }

    pub fn has(&self, family: Family) -> bool {
        self.families.contains(&family)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Catch settings that would build a topology where probes cannot mean
    /// what they claim.
    pub fn validate(&self) -> Result<()> {
        let (plen, slen) = (self.pod_cidr.len, self.service_cidr.len);
        if !(8..=30).contains(&plen) || !(8..=30).contains(&slen) {
            return Err(Error::config("pod and service CIDR prefix lengths must be between 8 and 30"));
        }
        let mut seen = BTreeMap::new();
        for host in Host::ALL {
            let addr =
                *self.addresses.get(&host).ok_or_else(|| Error::config(format!("no address for host {host}")))?;
            if !self.pod_cidr.contains(addr.into()) {
                return Err(Error::config(format!(
                    "address {addr} of {host} is outside the pod CIDR {}",
                    self.pod_cidr
                )));
            }
            if let Some(other) = seen.insert(addr, host) {
                return Err(Error::config(format!("{other} and {host} both have address {addr}")));
            }
        }
        if self.pod_cidr.contains(self.service_cidr.addr) || self.service_cidr.contains(self.pod_cidr.addr) {
            return Err(Error::config("the pod CIDR and the service CIDR overlap"));
        }
        if self.families.is_empty() {
            return Err(Error::config("the topology has no IP family: use ipv4, ipv6 or both"));
        }
        if self.pod_links.len() > 4 {
            return Err(Error::config(format!(
                "{} extra pod interfaces ({}): sidecheck builds at most 4",
                self.pod_links.len(),
                self.pod_links.join(", ")
            )));
        }
        for name in &self.pod_links {
            if name.is_empty()
                || name.len() > 15
                || name == "eth0"
                || name == "lo"
                || name.contains(['/', ' '])
                || self.pod_links.iter().filter(|n| *n == name).count() > 1
            {
                return Err(Error::config(format!("`{name}` cannot be an extra pod interface: give a unique name of 1 to 15 characters, not eth0 or lo")));
            }
        }
        if self.has(Family::Ipv6) {
            let mut seen6 = BTreeMap::new();
            for host in Host::ALL {
                let addr = *self
                    .addresses6
                    .get(&host)
                    .ok_or_else(|| Error::config(format!("no IPv6 address for host {host}")))?;
                if !self.pod_cidr6.contains(addr.into()) {
                    return Err(Error::config(format!(
                        "IPv6 address {addr} of {host} is outside the pod CIDR {}",
                        self.pod_cidr6
                    )));
                }
                if let Some(other) = seen6.insert(addr, host) {
                    return Err(Error::config(format!("{other} and {host} both have address {addr}")));
                }
            }
            for s in &self.services {
                if !self.service_cidr6.contains(s.vip6.into()) {
                    return Err(Error::config(format!(
                        "service {}: VIP {} is outside the service CIDR {}: pick a VIP inside it, or widen the CIDR",
                        s.name, s.vip6, self.service_cidr6
                    )));
                }
            }
        }
        for s in &self.services {
            if !self.service_cidr.contains(s.vip.into()) {
                return Err(Error::config(format!(
                    "service {}: VIP {} is outside the service CIDR {}: pick a VIP inside it, or widen the CIDR",
                    s.name, s.vip, self.service_cidr
                )));
            }
            if s.endpoint == Host::Node {
                return Err(Error::config(format!("service {}: its endpoint must be a pod, not the node", s.name)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_is_valid() {
        TopologyConfig::default().validate().unwrap();
    }

    #[test]
    fn vip_outside_service_cidr_is_rejected_with_a_fix() {
        let mut c = TopologyConfig::default();
        c.services[0].vip = Ipv4Addr::new(192, 168, 1, 1);
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("VIP 192.168.1.1 is outside the service CIDR 10.96.0.0/12"), "{msg}");
    }

    #[test]
    fn ipv6_addresses_outside_their_cidrs_name_the_range() {
        let mut c = TopologyConfig::default();
        c.services[0].vip6 = "fd00:10:97::10".parse().unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("VIP fd00:10:97::10 is outside the service CIDR fd00:10:96::/112"), "{msg}");
        let mut c = TopologyConfig::default();
        c.addresses6.insert(Host::Istiod, "fd00:10:245::40".parse().unwrap());
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("IPv6 address fd00:10:245::40 of istiod is outside the pod CIDR fd00:10:244::/64"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_and_stray_addresses_are_rejected() {
        let mut c = TopologyConfig::default();
        c.addresses.insert(Host::Istiod, Ipv4Addr::new(10, 244, 0, 10));
        assert!(c.validate().unwrap_err().to_string().contains("both have address 10.244.0.10"));
        let mut c = TopologyConfig::default();
        c.addresses.insert(Host::Istiod, Ipv4Addr::new(10, 245, 0, 10));
        assert!(c.validate().unwrap_err().to_string().contains("outside the pod CIDR"));
    }

    #[test]
    fn cidr_membership() {
        let services = TopologyConfig::default().service_cidr;
        assert!(services.contains(Ipv4Addr::new(10, 111, 2, 3).into()));
        assert!(!services.contains(Ipv4Addr::new(10, 112, 0, 0).into()));
    }
}

/// DNS capture: pilot-agent's DNS proxy (in fake-envoy, on 127.0.0.1 and
/// ::1) and the nameservers it forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    pub agent_port: u16,
    /// The nameserver the agent asks, per family.
    pub upstreams: Vec<(Family, std::net::IpAddr)>,
    /// Nameserver stubs (UDP and TCP port 53) and the host each runs on.
    pub servers: Vec<(std::net::IpAddr, Host)>,
}

/// TPROXY's policy routing: packets with `mark` are delivered locally
/// through route table `table` (`ip rule add fwmark MARK lookup TABLE`,
/// `ip route add local default dev lo table TABLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tproxy {
    pub mark: u32,
    pub table: u32,
}

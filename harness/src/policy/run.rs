//! A policy's run: its matrix as scenarios, with the profile, routing,
//! topology extras and app servers they need.

use std::net::IpAddr;

use crate::base::net::Family;
use crate::model::topology::Host;
use crate::policy::matrix::MatrixTopology;
use crate::policy::oracle::{invalid_fate, Dest};
use crate::policy::schema::{Mode, Policy};
use crate::policy::{dns_server_is_local, kube_dns, DNS_AGENT_PORT, DNS_SERVER_NAME, SIDE_APP_NAME};

/// A policy's matrix as scenarios, with what the topology and the app
/// servers need for them.
pub struct PolicyRun {
    pub scenarios: Vec<crate::model::scenario::Scenario>,
    pub local_app_ports: Vec<u16>,
    pub remote_app_ports: Vec<u16>,
    pub remote_extra: Vec<IpAddr>,
    /// Addresses for the local pod's lo (a local nameserver's IPv6 form).
    pub local_extra: Vec<IpAddr>,
    /// The DNS agent and nameservers, when the policy captures DNS.
    pub dns: Option<crate::model::topology::Dns>,
    /// Ports the hosts behind the pod's extra interfaces serve (as `side-app`).
    pub side_app_ports: Vec<u16>,
}

impl Policy {
    /// The profile the stubs run under: Istio's, with this policy's ports and identity.
    pub fn profile(&self) -> crate::model::profile::Profile {
        self.profile_on(&crate::model::profile::Profile::istio())
    }

    /// The profile the stubs run under: `base` (the mesh's), with this
    /// policy's ports and proxy identity.
    pub fn profile_on(&self, base: &crate::model::profile::Profile) -> crate::model::profile::Profile {
        let mut p = base.clone();
        p.proxy.outbound = self.outbound_port;
        p.proxy.inbound = self.inbound_port;
        p.proxy.inbound_ipv6 = self.inbound_port_ipv6;
        p.proxy.uid = self.proxy_uids.first().copied().unwrap_or(p.proxy.uid);
        p.proxy.gid = self.proxy_gids.first().copied().unwrap_or(p.proxy.gid);
        if self.mode == Mode::Tproxy {
            // Istio's injector under TPROXY: runAsUser 0 (IP_TRANSPARENT
            // needs CAP_NET_ADMIN), runAsGroup the proxy gid; the transparent
            // upstream keeps the client's address (no passthrough source).
            p.proxy.uid = 0;
            p.proxy.passthrough = None;
        }
        p
    }

    /// The routing a TPROXY policy needs beside its rules.
    pub fn tproxy(&self) -> Option<crate::model::topology::Tproxy> {
        (self.mode == Mode::Tproxy)
            .then_some(crate::model::topology::Tproxy { mark: self.tproxy_mark, table: self.tproxy_table })
    }

    /// Build the matrix for `topo` (app uid 1000) as scenarios named
    /// `policy::<label>`.
    pub fn run_plan(
        &self,
        topo: &crate::model::topology::TopologyConfig,
        profile: &crate::model::profile::Profile,
    ) -> PolicyRun {
        use crate::model::profile::{PortRef, UidRef};
        use crate::model::scenario::{Destination, Expect, Scenario, Source, Spec};
        let (c4, c6) = (topo.pod_cidr, topo.pod_cidr6);
        let mt = MatrixTopology {
            hosts: Family::BOTH
                .iter()
                .map(|f| (*f, topo.address_of(Host::LocalPod, *f), topo.address_of(Host::RemotePod, *f)))
                .collect(),
            usable: Box::new(move |ip: IpAddr| match ip {
                IpAddr::V4(a) => {
                    !a.is_loopback()
                        && !a.is_unspecified()
                        && !a.is_multicast()
                        && !a.is_broadcast()
                        && !c4.contains(ip)
                }
                IpAddr::V6(a) => !a.is_loopback() && !a.is_unspecified() && !a.is_multicast() && !c6.contains(ip),
            }),
        };
        let probes = self.matrix(&mt, 1000);
        let served: Vec<(String, u16)> = profile.served().into_iter().map(|(n, p, _)| (n, p)).collect();
        let mut run = PolicyRun {
            scenarios: Vec::new(),
            local_app_ports: Vec::new(),
            remote_app_ports: Vec::new(),
            remote_extra: Vec::new(),
            local_extra: Vec::new(),
            dns: None,
            side_app_ports: Vec::new(),
        };
        if self.dns_capture {
            let mut dns =
                crate::model::topology::Dns { agent_port: DNS_AGENT_PORT, upstreams: Vec::new(), servers: Vec::new() };
            for f in topo.families.iter().copied().filter(|f| self.families().contains(f)) {
                dns.upstreams.push((f, self.dns_upstream(f)));
                let listed = self.dns_servers.iter().copied().filter(|ip| Family::of(*ip) == f);
                for ip in listed.chain(self.dns_servers_for(f)).chain([kube_dns(f)]) {
                    let host = if dns_server_is_local(ip) { Host::LocalPod } else { Host::RemotePod };
                    if !dns.servers.contains(&(ip, host)) {
                        dns.servers.push((ip, host));
                    }
                    let extra = match host {
                        Host::LocalPod if !ip.is_loopback() && ip.is_ipv6() => &mut run.local_extra,
                        Host::RemotePod => &mut run.remote_extra,
                        _ => continue,
                    };
                    if !extra.contains(&ip) {
                        extra.push(ip);
                    }
                }
            }
            run.dns = Some(dns);
        }
        for pr in probes {
            let pod = topo.address_of(Host::LocalPod, pr.family);
            let local = pr.from != Host::LocalPod
                || matches!(pr.dest, Dest::OwnPod(_) | Dest::Loopback | Dest::LoopbackAlias(_));
            let (address, host) = match pr.dest {
                Dest::OwnPod(ip) => (Some(ip), None),
                Dest::Loopback => (None, Some("localhost".to_string())),
                Dest::LoopbackAlias(ip) => (Some(ip), None),
                Dest::Remote(ip) | Dest::Through(ip) => (Some(ip), None),
            };
            let to_side = pr.link != 0 && pr.from == Host::LocalPod;
            if let Dest::Remote(ip) | Dest::Through(ip) = pr.dest {
                if !to_side
                    && ip != pod
                    && ip != topo.address_of(Host::RemotePod, pr.family)
                    && !run.remote_extra.contains(&ip)
                {
                    run.remote_extra.push(ip);
                }
            }
            let server = match served.iter().find(|(_, p)| local && *p == pr.port) {
                _ if pr.protocol == crate::model::scenario::Protocol::TcpInvalid => invalid_fate(self).to_string(),
                _ if self.dns_capture && pr.port == 53 => DNS_SERVER_NAME.to_string(),
                _ if to_side => SIDE_APP_NAME.to_string(),
                _ if matches!(pr.dest, Dest::Through(_)) => "remote-app".to_string(),
                Some((name, _)) => name.clone(),
                None if local => "local-app".into(),
                None => "remote-app".into(),
            };
            if server == "local-app" && !run.local_app_ports.contains(&pr.port) {
                run.local_app_ports.push(pr.port);
            }
            if server == "remote-app" && !run.remote_app_ports.contains(&pr.port) {
                run.remote_app_ports.push(pr.port);
            }
            if server == SIDE_APP_NAME && !run.side_app_ports.contains(&pr.port) {
                run.side_app_ports.push(pr.port);
            }
            let flow = match (pr.from, pr.dest) {
                (Host::LocalPod, Dest::OwnPod(_)) => 4,
                (Host::LocalPod, Dest::Loopback | Dest::LoopbackAlias(_)) => 5,
                (Host::LocalPod, _) => 2,
                _ => 1,
            };
            let spec = Spec {
                flow,
                description: format!(
                    "policy probe {}: uid {} gid {} from {} to port {}",
                    pr.label,
                    pr.uid,
                    pr.gid,
                    pr.from.name(),
                    pr.port
                ),
                family: Some(pr.family),
                source: Source {
                    host: pr.from,
                    uid: UidRef::Number(pr.uid),
                    gid: Some(UidRef::Number(pr.gid)),
                    role: None,
                },
                destination: Destination {
                    host,
                    service: None,
                    address,
                    port: PortRef::Number(pr.port),
                    protocol: pr.protocol,
                },
                expect: Expect {
                    ports: pr.expected.iter().map(|p| PortRef::Number(*p)).collect(),
                    server,
                    path: None,
                    paths: Default::default(),
                    assert_path: false,
                    profiles: Default::default(),
                },
            };
            run.scenarios.push(Scenario {
                name: format!("policy::{}", pr.label),
                file: "(policy matrix)".into(),
                spec,
            });
        }
        run
    }
}

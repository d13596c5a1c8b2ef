//! The probe matrix: the six flows' kinds of connection plus a probe on
//! each side of every boundary a policy draws, each with its expected hops.

use std::net::IpAddr;

use crate::base::cidr::Cidr;
use crate::base::net::Family;
use crate::model::topology::Host;
use crate::policy::oracle::{oracle, Dest, Query};
use crate::policy::schema::{GroupRef, Policy, PortRange, Select};
use crate::policy::{dns_server_is_local, kube_dns};

/// One probe of a policy's matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixProbe {
    /// What it checks, for the trial name: `outbound-port-excluded-5555`.
    pub label: String,
    pub from: Host,
    pub uid: u32,
    pub gid: u32,
    pub family: Family,
    pub dest: Dest,
    pub port: u16,
    pub protocol: crate::model::scenario::Protocol,
    /// The pod interface it crosses (see [`Query::link`]).
    pub link: u8,
    pub expected: Vec<u16>,
}

/// Addresses of the topology the matrix probes from and to.
pub struct MatrixTopology {
    /// (family, the local pod's address, the remote pod's) per family.
    pub hosts: Vec<(Family, IpAddr, IpAddr)>,
    /// Whether an address can be given to the remote pod as an extra
    /// destination (not on a pod subnet, not loopback).
    pub usable: Box<dyn Fn(IpAddr) -> bool>,
}

/// A probe before the oracle has judged it: who connects, from where, to what.
struct Probe {
    label: String,
    from: Host,
    uid: u32,
    gid: u32,
    dest: Dest,
    port: u16,
    udp: bool,
    link: u8,
}

impl Probe {
    /// A TCP connection from the local pod as `uid`/`gid`, leaving by eth0 (or lo).
    fn local(label: impl Into<String>, uid: u32, gid: u32, dest: Dest, port: u16) -> Probe {
        Probe { label: label.into(), from: Host::LocalPod, uid, gid, dest, port, udp: false, link: 0 }
    }

    /// A TCP connection from another host (as nobody), arriving on pod interface `link`.
    fn from(label: impl Into<String>, from: Host, dest: Dest, port: u16, link: u8) -> Probe {
        Probe { label: label.into(), from, uid: 65534, gid: 65534, dest, port, udp: false, link }
    }

    /// One UDP datagram instead of a TCP connection.
    fn udp(self, udp: bool) -> Probe {
        Probe { udp, ..self }
    }

    /// Leaving by pod interface `link` instead of eth0.
    fn by(self, link: u8) -> Probe {
        Probe { link, ..self }
    }
}

/// The matrix of one family as it is built: each probe added is judged by
/// the oracle, except one to a port the proxy itself listens on.
struct Probes<'a> {
    policy: &'a Policy,
    family: Family,
    /// The remote pod's address: the client of an inbound probe.
    remote: IpAddr,
    out: &'a mut Vec<MatrixProbe>,
}

impl Probes<'_> {
    fn add(&mut self, p: Probe) {
        let policy = self.policy;
        if [Some(policy.outbound_port), Some(policy.inbound_port), policy.inbound_port_ipv6].contains(&Some(p.port)) {
            return;
        }
        // The client's address: the remote pod's, or the host's behind an extra interface.
        let source = match p.from {
            Host::LocalPod => None,
            Host::Side(k) => Some(crate::model::topology::TopologyConfig::link_addresses(k, self.family).1),
            _ => Some(self.remote),
        };
        let Probe { label, from, uid, gid, dest, port, udp, link } = p;
        let q = Query { inbound: from != Host::LocalPod, udp, invalid: false, uid, gid, dest, port, link, source };
        let expected = oracle(policy, q);
        let protocol = if udp { crate::model::scenario::Protocol::Udp } else { crate::model::scenario::Protocol::Tcp };
        self.out.push(MatrixProbe { label, from, uid, gid, family: self.family, dest, port, protocol, link, expected });
    }
}

impl Policy {
    /// The six flows' kinds of connection plus a probe on each side of every
    /// boundary the policy draws.
    pub fn matrix(&self, topo: &MatrixTopology, app_uid: u32) -> Vec<MatrixProbe> {
        let mut out = Vec::new();
        let (puid, pgid) =
            (self.proxy_uids.first().copied().unwrap_or(app_uid), self.proxy_gids.first().copied().unwrap_or(app_uid));
        // The app runs in the first included owner group, if any, so its
        // traffic is the kind the policy captures.
        let app_gid = self.owner_groups_include.iter().find_map(GroupRef::gid).unwrap_or(app_uid);
        for family in self.families() {
            let Some((_, pod, remote)) = topo.hosts.iter().find(|(f, _, _)| *f == family).copied() else { continue };
            let mut m = Probes { policy: self, family, remote, out: &mut out };
            let app = |label: String, dest: Dest, port: u16| Probe::local(label, app_uid, app_gid, dest, port);
            // Inbound: a plain port, the tunnel port, each listed port and its neighbour.
            let mut inbound: Vec<(String, u16)> = vec![("inbound-8080".into(), 8080)];
            if let Some(t) = self.tunnel_port {
                inbound.push((format!("inbound-tunnel-{t}"), t));
            }
            let listed: Vec<PortRange> = match &self.inbound_ports {
                Select::All => self.inbound_exclude.clone(),
                Select::Only(l) => l.iter().copied().map(PortRange::one).collect(),
            };
            inbound.extend(range_edges("inbound", &listed));
            for (label, port) in dedup(inbound) {
                m.add(Probe::from(label, Host::RemotePod, Dest::Remote(pod), port, 0));
            }
            // The app calling its own pod on a captured inbound port: lo
            // traffic is not inbound traffic (under TPROXY, istio#31095).
            if let Select::Only(l) = &self.inbound_ports {
                for p in l {
                    m.add(Probe::local(format!("app-to-own-pod-inbound-{p}"), app_uid, app_uid, Dest::OwnPod(pod), *p));
                }
            }
            // Where an app connection is captured, if anywhere: the probes
            // of rules that exempt something (a port, a proxy identity) go
            // there, or an exemption that is missing would go unseen.
            let ranges: Vec<Cidr> = match &self.outbound_ranges_include {
                Select::All => self.outbound_ranges_exclude.clone(),
                Select::Only(l) => self.outbound_ranges_exclude.iter().chain(l).copied().collect(),
            };
            let ranges: Vec<Cidr> = ranges.into_iter().filter(|c| c.family() == family).collect();
            let mut candidates: Vec<(IpAddr, u16)> = vec![(remote, 9090)];
            candidates.extend(self.outbound_ports_include.iter().map(|p| (remote, *p)));
            candidates.extend(
                ranges
                    .iter()
                    .filter_map(|c| Cidr::step(c.bounds().0, 1))
                    .filter(|ip| (topo.usable)(*ip))
                    .map(|ip| (ip, 9090)),
            );
            let app_query = |ip: IpAddr, port: u16| Query {
                inbound: false,
                udp: false,
                invalid: false,
                uid: app_uid,
                gid: app_gid,
                dest: Dest::Remote(ip),
                port,
                link: 0,
                source: None,
            };
            let (target, target_port) = candidates
                .iter()
                .copied()
                .find(|(ip, port)| oracle(self, app_query(*ip, *port)).len() > 1)
                .unwrap_or((remote, 9090));
            let out_as =
                |label: String, uid: u32, gid: u32| Probe::local(label, uid, gid, Dest::Remote(target), target_port);
            // Outbound from the app, by port: excluded ports where the rest is
            // captured, included ports where the address is not.
            m.add(app("outbound-9090".into(), Dest::Remote(remote), 9090));
            for (label, port) in range_edges("outbound", &self.outbound_ports_exclude) {
                m.add(app(label, Dest::Remote(target), port));
            }
            for p in &self.outbound_ports_exclude {
                let label = format!("proxy-to-own-pod-excluded-{}", p.first);
                m.add(Probe::local(label, puid, app_gid, Dest::OwnPod(pod), p.first));
            }
            // Uids excluded as if they were the proxy's, out where the app is captured.
            for u in &self.outbound_uids_exclude {
                m.add(out_as(format!("excluded-uid-{u}-out"), *u, app_gid));
            }
            for (label, port) in with_neighbours("outbound", &self.outbound_ports_include) {
                m.add(app(label, Dest::Remote(remote), port));
            }
            for p in &self.outbound_ports_include {
                m.add(app(format!("app-to-own-pod-included-{p}"), Dest::OwnPod(pod), *p));
            }
            // Outbound by address: each range's edges, inside and out.
            let lo = |c: &Cidr| Cidr::parse("127.0.0.0/8").is_some_and(|l| l.contains(c.addr));
            for c in ranges.iter().filter(|c| lo(c)) {
                // A loopback range: over lo, on its edges (a /32's address and the next).
                let (first, last) = c.bounds();
                // (Not a wide range's network or broadcast address: lo refuses those.)
                let edges = if c.len >= 31 {
                    [Some(first), Some(last), Cidr::step(last, 1)]
                } else {
                    [Cidr::step(first, 1), Cidr::step(last, -1), None]
                };
                for ip in edges.into_iter().flatten().filter(|ip| ip.is_loopback()) {
                    m.add(app(format!("lo-range-{c}-{ip}"), Dest::LoopbackAlias(ip), 9090));
                }
            }
            for c in &ranges {
                let (first, last) = c.bounds();
                let edges = [
                    ("first", Cidr::step(first, 1)),
                    ("last", Cidr::step(last, -1)),
                    ("below", Cidr::step(first, -1)),
                    ("above", Cidr::step(last, 1)),
                ];
                for (edge, ip) in edges {
                    if let Some(ip) = ip.filter(|ip| (topo.usable)(*ip)) {
                        m.add(app(format!("range-{c}-{edge}-{ip}"), Dest::Remote(ip), 9090));
                    }
                }
            }
            // Identities: each proxy uid and gid alone (with the app's gid or
            // uid), so a missing uid rule is not hidden by the gid rule after
            // it; out where the app would be captured, and to the pod itself.
            for u in &self.proxy_uids {
                m.add(out_as(format!("proxy-uid-{u}-out"), *u, app_gid));
                m.add(Probe::local(format!("proxy-uid-{u}-to-own-pod"), *u, app_gid, Dest::OwnPod(pod), 8080));
                if let Some(t) = self.tunnel_port {
                    let label = format!("proxy-uid-{u}-to-own-pod-tunnel-{t}");
                    m.add(Probe::local(label, *u, app_gid, Dest::OwnPod(pod), t));
                }
            }
            // Where lo is judged by the ranges, the proxy's lo call that is
            // not redirected inbound (the tunnel port) is returned as the proxy's.
            let lo_target = ranges.iter().filter(|c| lo(c)).find_map(|c| {
                if c.len >= 31 {
                    Some(c.bounds().0)
                } else {
                    Cidr::step(c.bounds().0, 2)
                }
            });
            if let (Some(ip), Some(tunnel)) = (lo_target.filter(|_| self.judges_lo(family)), self.tunnel_port) {
                for u in &self.proxy_uids {
                    let label = format!("proxy-uid-{u}-to-lo-{ip}-tunnel");
                    m.add(Probe::local(label, *u, app_gid, Dest::LoopbackAlias(ip), tunnel));
                }
                for g in &self.proxy_gids {
                    let label = format!("proxy-gid-{g}-to-lo-{ip}-tunnel");
                    m.add(Probe::local(label, app_uid, *g, Dest::LoopbackAlias(ip), tunnel));
                }
            }
            for g in &self.proxy_gids {
                m.add(out_as(format!("proxy-gid-{g}-out"), app_uid, *g));
                m.add(Probe::local(format!("proxy-gid-{g}-to-own-pod"), app_uid, *g, Dest::OwnPod(pod), 8080));
                if let Some(t) = self.tunnel_port {
                    let label = format!("proxy-gid-{g}-to-own-pod-tunnel-{t}");
                    m.add(Probe::local(label, app_uid, *g, Dest::OwnPod(pod), t));
                }
            }
            // Owner groups: each listed group, and a group outside the list.
            for g in self.owner_groups_include.iter().chain(&self.owner_groups_exclude).filter_map(GroupRef::gid) {
                m.add(out_as(format!("owner-group-{g}-out"), app_uid, g));
            }
            if !self.owner_groups_include.is_empty() || !self.owner_groups_exclude.is_empty() {
                let outside = (app_uid..)
                    .find(|g| {
                        !Policy::in_groups(&self.owner_groups_include, *g)
                            && !Policy::in_groups(&self.owner_groups_exclude, *g)
                            && !self.proxy_gids.contains(g)
                    })
                    .unwrap_or(app_uid);
                m.add(out_as(format!("owner-group-{outside}-unlisted-out"), app_uid, outside));
            }
            // DNS: each server the app's queries are captured for, over UDP
            // and TCP, from the app and from each proxy identity; with a
            // list of servers, one outside it.
            if self.dns_capture {
                for server in self.dns_servers_for(family) {
                    let dest =
                        if dns_server_is_local(server) { Dest::LoopbackAlias(server) } else { Dest::Remote(server) };
                    for (proto, udp) in [("udp", true), ("tcp", false)] {
                        m.add(app(format!("dns-{server}-{proto}"), dest, 53).udp(udp));
                        for u in &self.proxy_uids {
                            let label = format!("proxy-uid-{u}-dns-{server}-{proto}");
                            m.add(Probe::local(label, *u, app_gid, dest, 53).udp(udp));
                        }
                        for g in &self.proxy_gids {
                            let label = format!("proxy-gid-{g}-dns-{server}-{proto}");
                            m.add(Probe::local(label, app_uid, *g, dest, 53).udp(udp));
                        }
                    }
                }
                let unlisted = kube_dns(family);
                if !self.dns_capture_all && !self.dns_servers.contains(&unlisted) {
                    m.add(app(format!("dns-unlisted-{unlisted}-udp"), Dest::Remote(unlisted), 53).udp(true));
                }
            }
            // Each extra interface: from the host behind it to the pod, and
            // through the pod to the remote pod; from the app out by it.
            for (i, name) in self.pod_links().iter().enumerate() {
                let k = (i + 1) as u8;
                let (at_pod, at_side) = crate::model::topology::TopologyConfig::link_addresses(k, family);
                m.add(Probe::from(format!("iface-{name}-inbound-8080"), Host::Side(k), Dest::Remote(at_pod), 8080, k));
                let label = format!("iface-{name}-through-to-remote-9090");
                m.add(Probe::from(label, Host::Side(k), Dest::Through(remote), 9090, k));
                if self.kube_virt_interfaces.contains(name) {
                    for ip in self
                        .includes(family)
                        .iter()
                        .filter_map(|c| Cidr::step(c.bounds().0, 1))
                        .filter(|ip| (topo.usable)(*ip))
                    {
                        let label = format!("iface-{name}-through-to-{ip}-9090");
                        m.add(Probe::from(label, Host::Side(k), Dest::Through(ip), 9090, k));
                    }
                }
                m.add(app(format!("iface-{name}-outbound-9090"), Dest::Remote(at_side), 9090).by(k));
            }
            m.add(app("app-to-own-pod".into(), Dest::OwnPod(pod), 8080));
            m.add(app("app-to-localhost".into(), Dest::Loopback, 8080));
            m.add(Probe::local("proxy-to-localhost", puid, pgid, Dest::Loopback, 8080));
            // Another lo address, on the edge of the host loopback range.
            if family == Family::Ipv4 {
                let alias = Cidr::step(self.host_loopback_cidr.bounds().1, 1)
                    .filter(|ip| matches!(ip, IpAddr::V4(a) if a.is_loopback()))
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
                m.add(Probe::local(format!("proxy-to-lo-{alias}"), puid, app_gid, Dest::LoopbackAlias(alias), 8080));
                m.add(app(format!("app-to-lo-{alias}"), Dest::LoopbackAlias(alias), 8080));
            }
            // A TCP segment conntrack marks INVALID, to an app port.
            if family == Family::Ipv4 && self.drop_invalid {
                let q = Query {
                    inbound: true,
                    udp: false,
                    invalid: true,
                    uid: 65534,
                    gid: 65534,
                    dest: Dest::Remote(pod),
                    port: 8080,
                    link: 0,
                    source: Some(remote),
                };
                m.out.push(MatrixProbe {
                    label: "invalid-segment-to-8080".into(),
                    from: Host::RemotePod,
                    uid: 0,
                    gid: 0,
                    family,
                    dest: Dest::Remote(pod),
                    port: 8080,
                    protocol: crate::model::scenario::Protocol::TcpInvalid,
                    link: 0,
                    expected: oracle(self, q),
                });
            }
        }
        out
    }
}

/// Each port and the one after it, a range's ends and the ports just outside
/// it (`outbound-6000`, `outbound-8000`, `outbound-5999-below-6000-8000`,
/// `outbound-8001-above-6000-8000`), once each.
fn range_edges(prefix: &str, ranges: &[PortRange]) -> Vec<(String, u16)> {
    let mut v = Vec::new();
    for r in ranges {
        if r.first == r.last {
            v.extend(with_neighbours(prefix, &[r.first]));
            continue;
        }
        v.push((format!("{prefix}-{}", r.first), r.first));
        v.push((format!("{prefix}-{}", r.last), r.last));
        if let Some(below) = r.first.checked_sub(1).filter(|p| *p > 0) {
            v.push((format!("{prefix}-{below}-below-{r}"), below));
        }
        if let Some(above) = r.last.checked_add(1) {
            v.push((format!("{prefix}-{above}-above-{r}"), above));
        }
    }
    dedup(v)
}

/// Each port and the one after it (`outbound-5555`, `outbound-5556-beside-5555`; for 65535 the one
/// before), once each.
fn with_neighbours(prefix: &str, ports: &[u16]) -> Vec<(String, u16)> {
    let mut v = Vec::new();
    for p in ports {
        v.push((format!("{prefix}-{p}"), *p));
        // 65535 has no port after it (wrapping gave a probe to port 0, which
        // no connection can use): its neighbour is the one before.
        let beside = p.checked_add(1).unwrap_or(p - 1);
        v.push((format!("{prefix}-{beside}-beside-{p}"), beside));
    }
    dedup(v)
}

fn dedup(v: Vec<(String, u16)>) -> Vec<(String, u16)> {
    let mut seen = Vec::new();
    v.into_iter()
        .filter(|(_, p)| {
            if seen.contains(p) {
                false
            } else {
                seen.push(*p);
                true
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::oracle::tests::{app, inbound, REMOTE};
    use crate::policy::parse::tests::{policy, under};

    #[test]
    fn the_matrix_probes_both_sides_of_each_boundary() {
        let p = policy("inbound_ports: [32000]\noutbound_ports_exclude: [5555]\noutbound_ranges_include: [10.0.0.0/8]");
        let topo = MatrixTopology {
            hosts: vec![(Family::Ipv4, "10.244.0.10".parse().unwrap(), "10.244.0.20".parse().unwrap())],
            usable: Box::new(|ip: IpAddr| !Cidr::parse("10.244.0.0/24").unwrap().contains(ip)),
        };
        let m = p.matrix(&topo, 1000);
        let find = |l: &str| {
            m.iter()
                .find(|x| x.label == l && x.family == Family::Ipv4)
                .unwrap_or_else(|| panic!("no {l} in {:?}", m.iter().map(|x| &x.label).collect::<Vec<_>>()))
        };
        assert_eq!(find("inbound-32000").expected, [15006, 32000]);
        assert_eq!(find("inbound-32001-beside-32000").expected, [32001]);
        assert_eq!(find("outbound-5555").expected, [5555]);
        assert_eq!(find("outbound-5556-beside-5555").expected, [15001, 5556]);
        assert_eq!(find("range-10.0.0.0/8-first-10.0.0.1").expected, [15001, 9090]);
        assert_eq!(find("range-10.0.0.0/8-below-9.255.255.255").expected, [9090]);
        assert!(m.iter().all(|x| x.family == Family::Ipv4), "no IPv6 probes without ipv6: true");
        // 65535 has no port after it: no probe to port 0, one to 65534.
        let top = policy("inbound_ports: [65535]").matrix(&topo, 1000);
        assert!(top.iter().all(|x| x.port != 0), "{:?}", top.iter().map(|x| &x.label).collect::<Vec<_>>());
        assert!(top.iter().any(|x| x.label == "inbound-65534-beside-65535"));
    }

    #[test]
    fn sources_uids_ranges_and_the_ipv6_port() {
        let p = policy("inbound_ports: '*'\ninbound_exclude: [6000-8000]\ninbound_sources_exclude: [10.244.0.20/32]\noutbound_ranges_include: '*'\noutbound_ports_exclude: ['5555:5557']\noutbound_uids_exclude: [456]\ninbound_port_ipv6: 15010\nipv6: true");
        let from = |src: &str, port: u16| Query { source: Some(src.parse().unwrap()), ..inbound(port) };
        assert_eq!(oracle(&p, from("10.244.0.20", 9000)), [9000], "an excluded source");
        assert_eq!(oracle(&p, from("10.244.0.21", 9000)), [15006, 9000], "the next address");
        assert_eq!(oracle(&p, inbound(8000)), [8000], "a range's last port");
        assert_eq!(oracle(&p, inbound(8001)), [15006, 8001]);
        assert_eq!(oracle(&p, app(REMOTE, 5557)), [5557]);
        assert_eq!(oracle(&p, app(REMOTE, 5558)), [15001, 5558]);
        assert_eq!(oracle(&p, Query { uid: 456, ..app(REMOTE, 80) }), [80], "an excluded uid");
        let six = Dest::Remote("fd00:10:244::10".parse().unwrap());
        assert_eq!(oracle(&p, Query { dest: six, ..inbound(80) }), [15010, 80], "IPv6 inbound to its own port");
        let r4 = p.to_restore_for(Family::Ipv4);
        for want in [
            "--dport 6000:8000 -j RETURN",
            "-s 10.244.0.20/32 -j RETURN",
            "--dport 5555:5557 -j RETURN",
            "--uid-owner 456 -j RETURN",
            "--to-ports 15006",
        ] {
            assert!(r4.contains(want), "`{want}` missing from\n{r4}");
        }
        let r6 = p.to_restore_for(Family::Ipv6);
        assert!(r6.contains("--to-ports 15010") && !r6.contains("10.244.0.20"), "{r6}");
        let topo = MatrixTopology {
            hosts: vec![(Family::Ipv4, "10.244.0.10".parse().unwrap(), "10.244.0.20".parse().unwrap())],
            usable: Box::new(|_| true),
        };
        let m = p.matrix(&topo, 1000);
        let find = |l: &str| m.iter().find(|x| x.label == l).unwrap_or_else(|| panic!("no {l}")).expected.clone();
        assert_eq!(find("inbound-8080"), [8080], "the remote pod's source is excluded");
        assert_eq!(find("inbound-5999-below-6000-8000"), [5999]);
        assert_eq!(find("outbound-5558-above-5555-5557"), [15001, 5558]);
        assert_eq!(find("excluded-uid-456-out"), [9090]);
        let l = under("linkerd", "inbound_ports: '*'");
        assert!(l.matrix(&topo, 1000).iter().all(|x| !x.label.contains("tunnel")), "no tunnel port, no tunnel probe");
    }
}

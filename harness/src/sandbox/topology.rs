//! The sandbox: one network namespace per host, pods wired to a bridge in the
//! `node` namespace by veth pairs. Veths are created inside `node` with their
//! peer born directly in the pod namespace, so nothing is ever created in, or
//! added to, the root namespace. Netlink sockets are opened on a short-lived
//! thread that entered the namespace (setns is per thread; a socket stays in
//! the namespace it was created in), so no async worker thread ever changes
//! namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::base::net::Family;
use crate::model::topology::{Host, TopologyConfig};
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// An address request; IPv6 ones with IFA_F_NODAD. accept_dad=0 alone is not
/// enough: the kernel still marks a new address tentative until its DAD work
/// item runs, and on a loaded machine that can be late enough for a stub's
/// bind to fail (EADDRNOTAVAIL) or a probe's SYN to be dropped. NODAD
/// addresses are never tentative.
fn address_add(h: &rtnetlink::Handle, index: u32, ip: IpAddr, len: u8) -> rtnetlink::AddressAddRequest {
    let mut req = h.address().add(index, ip, len);
    if ip.is_ipv6() {
        let m = req.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req
}

/// Add `ip/len` to interface `index`, any family.
async fn add_address(
    h: &rtnetlink::Handle,
    ns: &Namespace,
    index: u32,
    ip: IpAddr,
    len: u8,
    doing: impl Into<String>,
) -> Result<()> {
    address_add(h, index, ip, len).execute().await.map_err(netlink_err(doing, ns))
}

/// Set link `index` up.
async fn set_up(h: &rtnetlink::Handle, ns: &Namespace, index: u32, doing: &str) -> Result<()> {
    h.link().change(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(netlink_err(doing, ns))
}

/// Add a route to `to` (None: the default route) via `gateway`, in the
/// gateway's family.
async fn add_route(
    h: &rtnetlink::Handle,
    ns: &Namespace,
    to: Option<(IpAddr, u8)>,
    gateway: IpAddr,
    doing: impl Into<String>,
) -> Result<()> {
    let doing = doing.into();
    // (rtnetlink does not export the builder's error type: only its text is kept.)
    let invalid = |e: &dyn std::fmt::Display| Error::Netlink {
        doing: doing.clone(),
        namespace: ns.name().to_string(),
        detail: e.to_string(),
    };
    let mut route = RouteMessageBuilder::<IpAddr>::new();
    route = match to {
        Some((net, len)) => route.destination_prefix(net, len).map_err(|e| invalid(&e))?,
        // A default route names no destination: the family is the gateway's.
        None => {
            route.get_mut().header.address_family = match Family::of(gateway) {
                Family::Ipv4 => AddressFamily::Inet,
                Family::Ipv6 => AddressFamily::Inet6,
            };
            route
        }
    };
    let route = route.gateway(gateway).map_err(|e| invalid(&e))?.build();
    h.route().add(route).execute().await.map_err(netlink_err(doing, ns))
}

/// A `local` route for `addr`: the namespace takes it as its own without
/// an interface holding it (so a SYN to it with no listener is answered
/// with a reset at once).
async fn add_local(h: &rtnetlink::Handle, ns: &Namespace, addr: IpAddr, doing: String) -> Result<()> {
    let (net, len) = (addr, host_bits(addr));
    // (As `ip route add local NET dev lo` sends it: IPv4's in scope host.)
    let scope = match Family::of(net) {
        Family::Ipv4 => RouteScope::Host,
        Family::Ipv6 => RouteScope::Universe,
    };
    let route = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net, len)
        .map_err(|e| Error::Netlink { doing: doing.clone(), namespace: ns.name().to_string(), detail: e.to_string() })?
        .kind(RouteType::Local)
        .scope(scope)
        .table_id(255) // RT_TABLE_LOCAL, where the kernel keeps local routes
        .output_interface(LO_INDEX)
        .build();
    h.route().add(route).execute().await.map_err(netlink_err(doing, ns))
}

/// A host route's prefix length: 32 or 128.
fn host_bits(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with all but its first `len` bits cleared.
fn network(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)).into(),
        IpAddr::V6(a) => {
            Ipv6Addr::from(u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)).into()
        }
    }
}

/// "IPv6 " in messages about IPv6 (IPv4's say nothing).
fn v6(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "",
        Family::Ipv6 => "IPv6 ",
    }
}

/// The built topology. Dropping it removes every namespace.
pub struct Topology {
    pub config: TopologyConfig,
    namespaces: BTreeMap<Host, Namespace>,
}

fn netlink_err(doing: impl Into<String>, ns: &Namespace) -> impl FnOnce(rtnetlink::Error) -> Error {
    let doing = doing.into();
    let namespace = ns.name().to_string();
    move |e| Error::Netlink { doing, namespace, detail: e.to_string() }
}

/// The index a veth peer gets in its fresh pod namespace: lo is always 1.
const POD_ETH0_INDEX: u32 = 2;
const LO_INDEX: u32 = 1;

impl Topology {
    /// Build the namespaces and links. Must run inside a tokio runtime (the
    /// netlink connections are tasks on it).
    pub async fn build(prefix: &str, config: TopologyConfig) -> Result<Topology> {
        let topo = Topology::create(prefix, config)?;
        topo.link().await?;
        Ok(topo)
    }

    /// The namespaces alone, empty: what [`Topology::link`] wires. Rules
    /// that name no interface by index can be installed meanwhile.
    pub fn create(prefix: &str, config: TopologyConfig) -> Result<Topology> {
        config.validate()?;
        let mut namespaces = BTreeMap::new();
        let started = std::time::Instant::now();
        for host in config.hosts() {
            namespaces.insert(host, Namespace::create(&format!("{prefix}-{}", host.name()))?);
        }
        crate::base::phases::record("namespaces", started.elapsed());
        Ok(Topology { config, namespaces })
    }

    /// Links, addresses and routes in the namespaces [`Topology::create`]
    /// made. Must run inside a tokio runtime.
    pub async fn link(&self) -> Result<()> {
        let topo = self;
        topo.wire().await?;
        if !topo.config.remote_extra.is_empty() {
            topo.wire_extra().await?;
        }
        if !topo.config.pod_links.is_empty() {
            topo.wire_links().await?;
        }
        if !topo.config.local_extra.is_empty() {
            let (pod, pod_ns) = (topo.netlink(Host::LocalPod).await?, topo.ns(Host::LocalPod));
            for ip in topo.config.local_extra.iter().filter(|ip| topo.config.families.contains(&Family::of(**ip))) {
                add_address(&pod, pod_ns, LO_INDEX, *ip, host_bits(*ip), format!("adding {ip} to lo")).await?;
            }
        }
        Ok(())
    }

    /// A netlink connection whose socket lives in `host`'s namespace. The
    /// socket is made on a thread inside the namespace; the connection is
    /// registered with the runtime here, outside it.
    async fn netlink(&self, host: Host) -> Result<rtnetlink::Handle> {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        let ns = self.ns(host);
        let fd = ns
            .run(|| {
                // SAFETY: plain socket(2); the fd is owned right away.
                let fd = unsafe {
                    libc::socket(libc::PF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
                };
                if fd < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    // SAFETY: socket(2) just returned this fd; nothing else owns it.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })?
            .map_err(Error::io(format!("opening a netlink socket in namespace {}", ns.name())))?;
        // SAFETY: the fd is a netlink socket we own and hand over.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(handle)
    }

    /// The pod subnet's prefix length in `f`.
    fn pod_prefix(&self, f: Family) -> u8 {
        match f {
            Family::Ipv4 => self.config.pod_cidr.len,
            Family::Ipv6 => self.config.pod_cidr6.len,
        }
    }

    /// The families this topology builds, IPv4 first: the order addresses
    /// and routes are added in, whatever the order the run names them.
    fn built_families(&self) -> Vec<Family> {
        Family::BOTH.into_iter().filter(|f| self.config.has(*f)).collect()
    }

    async fn wire(&self) -> Result<()> {
        if self.config.has(Family::Ipv6) {
            // Addresses usable at once: no duplicate address detection in a
            // sandbox whose addresses are all ours. Set before any link exists.
            for host in self.config.hosts() {
                let ns = self.ns(host);
                ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
                ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            }
        }
        // The proxy runs unprivileged as its uid; a policy may give it a
        // listener below 1024, which Istio allows the same way (the pod's
        // net.ipv4.ip_unprivileged_port_start=0, both families).
        self.ns(Host::LocalPod).sysctl("net.ipv4.ip_unprivileged_port_start", "0")?;
        // A leg is told from another by its addresses and ports. The default
        // (2) lets a loopback connect reuse a TIME_WAIT tuple a second after
        // it closed, which long runs then hit: two of the run's connections
        // with one tuple, whose trace events cannot be told apart. Nothing
        // under test reads this: the rules see the same packets.
        self.ns(Host::LocalPod).sysctl("net.ipv4.tcp_tw_reuse", "0")?;
        let node_ns = self.ns(Host::Node);
        let node = self.netlink(Host::Node).await?;
        set_up(&node, node_ns, LO_INDEX, "setting lo up").await?;
        node.link()
            // No MLD snooping: IPv6 neighbour discovery is multicast, and a
            // bridge that has not yet learned a group must not hold it back.
            .add(LinkBridge::new("br0").mcast_snooping(false).up().build())
            .execute()
            .await
            .map_err(netlink_err("creating bridge br0", node_ns))?;
        let br0 = link_index(&node, "br0").await.map_err(netlink_err("looking up br0", node_ns))?;
        for f in self.built_families() {
            let at = self.config.address_of(Host::Node, f);
            let doing = format!("adding the node {}address to br0", v6(f));
            add_address(&node, node_ns, br0, at, self.pod_prefix(f), doing).await?;
        }
        // There is no kube-proxy: a service VIP means something only to the
        // proxy. A connection to one that no rule captured reaches the node,
        // which holds the VIPs as its own addresses and listens on none: the
        // SYN is answered with a reset at once (ECONNREFUSED), as a call to
        // a port nothing serves, instead of being dropped unseen, which cost
        // every such probe its whole connect deadline (2 s). Addresses the
        // topology puts elsewhere (a nameserver in the service range) stay
        // where they are.
        // (Each address once: services may share a VIP, one per port, and
        // those given no IPv6 VIP share the default one.)
        let placed: Vec<IpAddr> = self.config.remote_extra.iter().chain(&self.config.local_extra).copied().collect();
        let mut vips: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for s in &self.config.services {
            for vip in [IpAddr::from(s.vip), IpAddr::from(s.vip6)] {
                if self.config.has(Family::of(vip)) && !placed.contains(&vip) {
                    vips.entry(vip).or_insert(&s.name);
                }
            }
        }
        for (vip, name) in vips {
            add_local(&node, node_ns, vip, format!("taking {name}'s VIP {vip} as the node's own")).await?;
        }

        for pod in Host::PODS {
            let pod_ns = self.ns(pod);
            let peer = LinkUnspec::new_with_name("eth0").index(POD_ETH0_INDEX).setns_by_fd(pod_ns.raw_fd()).build();
            let veth = LinkVeth::new(pod.veth(), "eth0")
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .controller(br0)
                .up()
                .build();
            node.link().add(veth).execute().await.map_err(netlink_err(
                format!("creating veth {} with peer eth0 in {}", pod.veth(), pod_ns.name()),
                node_ns,
            ))?;

            let h = self.netlink(pod).await?;
            set_up(&h, pod_ns, LO_INDEX, "setting lo up").await?;
            // Not at creation: the kernel refuses IFF_UP on a peer born in
            // another namespace (ENOTCONN).
            set_up(&h, pod_ns, POD_ETH0_INDEX, "setting eth0 up").await?;
            for f in self.built_families() {
                let at = self.config.address_of(pod, f);
                let doing = format!("adding the pod {}address to eth0", v6(f));
                add_address(&h, pod_ns, POD_ETH0_INDEX, at, self.pod_prefix(f), doing).await?;
                let via = self.config.address_of(Host::Node, f);
                let doing = format!("adding the {}default route via the node", v6(f));
                add_route(&h, pod_ns, None, via, doing).await?;
            }
            if pod == Host::LocalPod && self.config.has(Family::Ipv6) {
                let at = self.config.passthrough6.into();
                let doing = "adding the IPv6 inbound passthrough address to lo";
                add_address(&h, pod_ns, LO_INDEX, at, 128, doing).await?;
            }
        }
        Ok(())
    }

    /// The local pod's extra interfaces, each a veth to its side host; the
    /// pod forwards between them and eth0, the node routes each side's
    /// subnet to the pod.
    async fn wire_links(&self) -> Result<()> {
        let (pod_ns, node_ns) = (self.ns(Host::LocalPod), self.ns(Host::Node));
        let (pod, node) = (self.netlink(Host::LocalPod).await?, self.netlink(Host::Node).await?);
        for ns in [pod_ns, node_ns] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            if self.config.has(Family::Ipv6) {
                ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
        }
        for (i, name) in self.config.pod_links.iter().enumerate() {
            let k = (i + 1) as u8;
            let side = Host::Side(k);
            let side_ns = self.ns(side);
            let peer = LinkUnspec::new_with_name("eth0").index(POD_ETH0_INDEX).setns_by_fd(side_ns.raw_fd()).build();
            let veth = LinkVeth::new(name, "eth0").set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).up().build();
            pod.link().add(veth).execute().await.map_err(netlink_err(
                format!("creating interface {name} with its peer in {}", side_ns.name()),
                pod_ns,
            ))?;
            let index = link_index(&pod, name).await.map_err(netlink_err(format!("looking up {name}"), pod_ns))?;
            let h = self.netlink(side).await?;
            for idx in [LO_INDEX, POD_ETH0_INDEX] {
                set_up(&h, side_ns, idx, "setting links up").await?;
            }
            for f in self.config.families.iter().copied() {
                let (at_pod, at_side) = TopologyConfig::link_addresses(k, f);
                let len = match f {
                    Family::Ipv4 => 24,
                    Family::Ipv6 => 64,
                };
                add_address(&pod, pod_ns, index, at_pod, len, format!("adding {at_pod} to {name}")).await?;
                add_address(&h, side_ns, POD_ETH0_INDEX, at_side, len, format!("adding {at_side} to eth0")).await?;
                let doing = format!("routing {side}'s traffic through the pod");
                add_route(&h, side_ns, None, at_pod, doing.clone()).await?;
                let via_pod = self.config.address_of(Host::LocalPod, f);
                add_route(&node, node_ns, Some((network(at_side, len), len)), via_pod, doing).await?;
            }
        }
        Ok(())
    }

    /// The remote pod's extra addresses, routed to it by the node.
    async fn wire_extra(&self) -> Result<()> {
        let (node_ns, remote_ns) = (self.ns(Host::Node), self.ns(Host::RemotePod));
        let (node, remote) = (self.netlink(Host::Node).await?, self.netlink(Host::RemotePod).await?);
        node_ns.sysctl("net.ipv4.ip_forward", "1")?;
        node_ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // (An address of a family this run does not test has nowhere to go.)
        for ip in self.config.remote_extra.iter().filter(|ip| self.config.families.contains(&Family::of(**ip))) {
            let (f, len) = (Family::of(*ip), host_bits(*ip));
            add_address(&remote, remote_ns, LO_INDEX, *ip, len, format!("adding {ip} to lo")).await?;
            let via = self.config.address_of(Host::RemotePod, f);
            add_route(&node, node_ns, Some((*ip, len)), via, format!("routing {ip} to the remote pod")).await?;
        }
        Ok(())
    }

    pub fn ns(&self, host: Host) -> &Namespace {
        &self.namespaces[&host]
    }

    pub fn address(&self, host: Host) -> Ipv4Addr {
        self.config.address(host)
    }

    /// Namespace names, for `ip netns exec` hints.
    pub fn namespace_names(&self) -> Vec<&str> {
        self.namespaces.values().map(|n| n.name()).collect()
    }

    /// Leave the namespaces in place when dropped (for inspection).
    pub fn keep(&self) {
        for ns in self.namespaces.values() {
            ns.keep.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> std::result::Result<u32, rtnetlink::Error> {
    use futures_util::TryStreamExt;
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await? {
        Some(msg) => Ok(msg.header.index),
        None => Err(rtnetlink::Error::RequestFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_host_routes_of_both_families() {
        assert_eq!(network("172.31.2.2".parse().unwrap(), 24), "172.31.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(network("fd00:31:2::2".parse().unwrap(), 64), "fd00:31:2::".parse::<IpAddr>().unwrap());
        assert_eq!(network("10.1.2.3".parse().unwrap(), 0), "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(network("10.1.2.3".parse().unwrap(), 32), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((host_bits("10.9.9.9".parse().unwrap()), host_bits("fd00:9::9".parse().unwrap())), (32, 128));
    }
}

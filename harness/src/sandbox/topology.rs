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
        config.validate()?;
        let mut namespaces = BTreeMap::new();
        let started = std::time::Instant::now();
        for host in config.hosts() {
            namespaces.insert(host, Namespace::create(&format!("{prefix}-{}", host.name()))?);
        }
        crate::base::phases::record("namespaces", started.elapsed());
        let topo = Topology { config, namespaces };
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
                let len = if ip.is_ipv4() { 32 } else { 128 };
                address_add(&pod, LO_INDEX, *ip, len)
                    .execute()
                    .await
                    .map_err(netlink_err(format!("adding {ip} to lo"), pod_ns))?;
            }
        }
        Ok(topo)
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

    async fn wire(&self) -> Result<()> {
        let v4 = self.config.has(Family::Ipv4);
        let v6 = self.config.has(Family::Ipv6);
        if v6 {
            // Addresses usable at once: no duplicate address detection in a
            // sandbox whose addresses are all ours. Set before any link exists.
            for host in self.config.hosts() {
                let ns = self.ns(host);
                ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
                ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            }
        }
        let node_ns = self.ns(Host::Node);
        let node = self.netlink(Host::Node).await?;
        let plen = self.config.pod_cidr.len;
        node.link()
            .change(LinkUnspec::new_with_index(LO_INDEX).up().build())
            .execute()
            .await
            .map_err(netlink_err("setting lo up", node_ns))?;
        node.link()
            // No MLD snooping: IPv6 neighbour discovery is multicast, and a
            // bridge that has not yet learned a group must not hold it back.
            .add(LinkBridge::new("br0").mcast_snooping(false).up().build())
            .execute()
            .await
            .map_err(netlink_err("creating bridge br0", node_ns))?;
        let br0 = link_index(&node, "br0").await.map_err(netlink_err("looking up br0", node_ns))?;
        if v4 {
            address_add(&node, br0, self.config.address(Host::Node).into(), plen)
                .execute()
                .await
                .map_err(netlink_err("adding the node address to br0", node_ns))?;
        }
        if v6 {
            address_add(&node, br0, self.config.addresses6[&Host::Node].into(), self.config.pod_cidr6.len)
                .execute()
                .await
                .map_err(netlink_err("adding the node IPv6 address to br0", node_ns))?;
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
            h.link()
                .change(LinkUnspec::new_with_index(LO_INDEX).up().build())
                .execute()
                .await
                .map_err(netlink_err("setting lo up", pod_ns))?;
            // Not at creation: the kernel refuses IFF_UP on a peer born in
            // another namespace (ENOTCONN).
            h.link()
                .change(LinkUnspec::new_with_index(POD_ETH0_INDEX).up().build())
                .execute()
                .await
                .map_err(netlink_err("setting eth0 up", pod_ns))?;
            if v4 {
                address_add(&h, POD_ETH0_INDEX, self.config.address(pod).into(), plen)
                    .execute()
                    .await
                    .map_err(netlink_err("adding the pod address to eth0", pod_ns))?;
                let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(self.config.address(Host::Node)).build();
                h.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(netlink_err("adding the default route via the node", pod_ns))?;
            }
            if v6 {
                address_add(&h, POD_ETH0_INDEX, self.config.addresses6[&pod].into(), self.config.pod_cidr6.len)
                    .execute()
                    .await
                    .map_err(netlink_err("adding the pod IPv6 address to eth0", pod_ns))?;
                let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(self.config.addresses6[&Host::Node]).build();
                h.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(netlink_err("adding the IPv6 default route via the node", pod_ns))?;
                if pod == Host::LocalPod {
                    address_add(&h, LO_INDEX, self.config.passthrough6.into(), 128)
                        .execute()
                        .await
                        .map_err(netlink_err("adding the IPv6 inbound passthrough address to lo", pod_ns))?;
                }
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
                h.link()
                    .change(LinkUnspec::new_with_index(idx).up().build())
                    .execute()
                    .await
                    .map_err(netlink_err("setting links up", side_ns))?;
            }
            for f in self.config.families.iter().copied() {
                let (at_pod, at_side) = TopologyConfig::link_addresses(k, f);
                let len = if f == Family::Ipv4 { 24 } else { 64 };
                address_add(&pod, index, at_pod, len)
                    .execute()
                    .await
                    .map_err(netlink_err(format!("adding {at_pod} to {name}"), pod_ns))?;
                address_add(&h, POD_ETH0_INDEX, at_side, len)
                    .execute()
                    .await
                    .map_err(netlink_err(format!("adding {at_side} to eth0"), side_ns))?;
                let doing = format!("routing {side}'s traffic through the pod");
                let via_pod = self.config.address_of(Host::LocalPod, f);
                match (at_pod, at_side) {
                    (IpAddr::V4(gw), IpAddr::V4(a)) => {
                        h.route()
                            .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build())
                            .execute()
                            .await
                            .map_err(netlink_err(doing.clone(), side_ns))?;
                        let IpAddr::V4(via) = via_pod else { unreachable!() };
                        let net = Ipv4Addr::from(u32::from(a) & 0xffff_ff00);
                        node.route()
                            .add(
                                RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(net, 24).gateway(via).build(),
                            )
                            .execute()
                            .await
                            .map_err(netlink_err(doing, node_ns))?;
                    }
                    (IpAddr::V6(gw), IpAddr::V6(a)) => {
                        h.route()
                            .add(RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).build())
                            .execute()
                            .await
                            .map_err(netlink_err(doing.clone(), side_ns))?;
                        let IpAddr::V6(via) = via_pod else { unreachable!() };
                        let net = Ipv6Addr::from(u128::from(a) & !0xffff_ffff_ffff_ffffu128);
                        node.route()
                            .add(
                                RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(net, 64).gateway(via).build(),
                            )
                            .execute()
                            .await
                            .map_err(netlink_err(doing, node_ns))?;
                    }
                    _ => unreachable!("both addresses of one family"),
                }
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
            let doing = format!("adding {ip} to lo");
            match ip {
                IpAddr::V4(a) => {
                    address_add(&remote, LO_INDEX, (*a).into(), 32)
                        .execute()
                        .await
                        .map_err(netlink_err(doing, remote_ns))?;
                    let r = RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(*a, 32)
                        .gateway(self.config.address(Host::RemotePod))
                        .build();
                    node.route()
                        .add(r)
                        .execute()
                        .await
                        .map_err(netlink_err(format!("routing {ip} to the remote pod"), node_ns))?;
                }
                IpAddr::V6(a) => {
                    address_add(&remote, LO_INDEX, (*a).into(), 128)
                        .execute()
                        .await
                        .map_err(netlink_err(doing, remote_ns))?;
                    let r = RouteMessageBuilder::<Ipv6Addr>::new()
                        .destination_prefix(*a, 128)
                        .gateway(self.config.addresses6[&Host::RemotePod])
                        .build();
                    node.route()
                        .add(r)
                        .execute()
                        .await
                        .map_err(netlink_err(format!("routing {ip} to the remote pod"), node_ns))?;
                }
            }
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

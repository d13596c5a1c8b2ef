//! The sandbox: one network namespace per host, pods wired to a bridge in the
//! `node` namespace by veth pairs. Veths are created inside `node` with their
//! peer born directly in the pod namespace, so nothing is ever created in, or
//! added to, the root namespace. Netlink sockets are opened on a short-lived
//! thread that entered the namespace (setns is per thread; a socket stays in
//! the namespace it was created in), so no async worker thread ever changes
//! namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use netns_rs::NetNs;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::sandbox::registry::remove_netns;
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
    fn veth(self) -> &'static str {
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

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    pub fn localhost(self) -> IpAddr {
        match self {
            Family::Ipv4 => Ipv4Addr::LOCALHOST.into(),
            Family::Ipv6 => Ipv6Addr::LOCALHOST.into(),
        }
    }

    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
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
    pub pod_cidr: (Ipv4Addr, u8),
    pub addresses: BTreeMap<Host, Ipv4Addr>,
    pub pod_cidr6: (Ipv6Addr, u8),
    pub addresses6: BTreeMap<Host, Ipv6Addr>,
    pub service_cidr: (Ipv4Addr, u8),
    pub service_cidr6: (Ipv6Addr, u8),
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
            pod_cidr: (Ipv4Addr::new(10, 244, 0, 0), 24),
            addresses,
            pod_cidr6: (v6(0), 64),
            addresses6,
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            service_cidr6: (Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0), 112),
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

pub fn in_cidr(addr: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    u32::from(addr) & mask == u32::from(net) & mask
}

pub fn in_cidr6(addr: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
    u128::from(addr) & mask == u128::from(net) & mask
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
        let (_, plen) = self.pod_cidr;
        let (_, slen) = self.service_cidr;
        if !(8..=30).contains(&plen) || !(8..=30).contains(&slen) {
            return Err(Error::config("pod and service CIDR prefix lengths must be between 8 and 30"));
        }
        let mut seen = BTreeMap::new();
        for host in Host::ALL {
            let addr =
                *self.addresses.get(&host).ok_or_else(|| Error::config(format!("no address for host {host}")))?;
            if !in_cidr(addr, self.pod_cidr) {
                return Err(Error::config(format!(
                    "address {addr} of {host} is outside the pod CIDR {}/{plen}",
                    self.pod_cidr.0
                )));
            }
            if let Some(other) = seen.insert(addr, host) {
                return Err(Error::config(format!("{other} and {host} both have address {addr}")));
            }
        }
        if in_cidr(self.service_cidr.0, self.pod_cidr) || in_cidr(self.pod_cidr.0, self.service_cidr) {
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
                if !in_cidr6(addr, self.pod_cidr6) {
                    return Err(Error::config(format!(
                        "IPv6 address {addr} of {host} is outside the pod CIDR {}/{}",
                        self.pod_cidr6.0, self.pod_cidr6.1
                    )));
                }
                if let Some(other) = seen6.insert(addr, host) {
                    return Err(Error::config(format!("{other} and {host} both have address {addr}")));
                }
            }
            for s in &self.services {
                if !in_cidr6(s.vip6, self.service_cidr6) {
                    return Err(Error::config(format!(
                        "service {}: VIP {} is outside the service CIDR {}/{}: pick a VIP inside it, or widen the CIDR",
                        s.name, s.vip6, self.service_cidr6.0, self.service_cidr6.1
                    )));
                }
            }
        }
        for s in &self.services {
            if !in_cidr(s.vip, self.service_cidr) {
                return Err(Error::config(format!(
                    "service {}: VIP {} is outside the service CIDR {}/{slen}: pick a VIP inside it, or widen the CIDR",
                    s.name, s.vip, self.service_cidr.0
                )));
            }
            if s.endpoint == Host::Node {
                return Err(Error::config(format!("service {}: its endpoint must be a pod, not the node", s.name)));
            }
        }
        Ok(())
    }
}

/// One named network namespace, bind-mounted under /run/netns like
/// `ip netns add` does (so a person can `ip netns exec` into a kept one).
/// Dropping it unmounts and deletes it.
pub struct Namespace {
    name: String,
    ns: Option<NetNs>,
    keep: std::sync::atomic::AtomicBool,
}

impl Namespace {
    pub fn create(name: &str) -> Result<Namespace> {
        // Under the creation lock: a signal's cleanup never lists the
        // namespaces while one is being made.
        let _creating = crate::sandbox::registry::creating();
        let ns = NetNs::new(name).map_err(|e| Error::Netlink {
            doing: "creating the namespace".into(),
            namespace: name.into(),
            detail: format!("{e}; is /run/netns writable and are you root?"),
        })?;
        Ok(Namespace { name: name.to_string(), ns: Some(ns), keep: std::sync::atomic::AtomicBool::new(false) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns.as_ref().expect("namespace used after removal").file().as_fd()
    }

    /// Run `f` on a fresh thread inside this namespace. Sockets it creates
    /// belong to the namespace for good, whichever thread uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Io { doing: format!("entering namespace {}", self.name), err: e.into() })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::config(format!("a thread working in namespace {} panicked", self.name))))
        })
    }

    /// For `pre_exec`: move a forked child into this namespace.
    pub fn raw_fd(&self) -> i32 {
        self.fd().as_raw_fd()
    }

    /// A command whose process runs in this namespace (entered between
    /// fork and exec, so nothing in this process changes namespace), with
    /// the signal mask the harness blocked for itself cleared again and
    /// its three standard streams piped.
    pub fn command(&self, program: &std::path::Path) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let fd = self.raw_fd();
        let mut cmd = std::process::Command::new(program);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: sigprocmask and setns are async-signal-safe; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                crate::sandbox::registry::unblock_signals_in_child();
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Write a namespaced sysctl (`/proc/sys/net/...` resolves against the
    /// namespace of the thread that opens it).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let started = std::time::Instant::now();
        let written = self.run(|| std::fs::write(&path, value));
        crate::base::phases::record("sysctls", started.elapsed());
        written?.map_err(Error::io(format!("setting {key}={value} in namespace {}", self.name)))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Close our handle first, then unmount: the kernel frees the
        // namespace (and its veth ends) once nothing refers to it.
        drop(self.ns.take());
        if !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = remove_netns(&self.name);
        }
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
        let (_, plen) = self.config.pod_cidr;
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
            address_add(&node, br0, self.config.addresses6[&Host::Node].into(), self.config.pod_cidr6.1)
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
                address_add(&h, POD_ETH0_INDEX, self.config.addresses6[&pod].into(), self.config.pod_cidr6.1)
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
        assert!(in_cidr(Ipv4Addr::new(10, 111, 2, 3), (Ipv4Addr::new(10, 96, 0, 0), 12)));
        assert!(!in_cidr(Ipv4Addr::new(10, 112, 0, 0), (Ipv4Addr::new(10, 96, 0, 0), 12)));
    }
}

//! The policy schema: what a generator was asked to do, field by field,
//! and the questions about it that the reference rules, the oracle and the
//! matrix share.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use crate::base::cidr::Cidr;
use crate::base::net::Family;
use crate::policy::kube_dns;

/// `*` (everything) or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select<T> {
    All,
    Only(Vec<T>),
}

impl<T> Default for Select<T> {
    fn default() -> Self {
        Select::Only(Vec::new())
    }
}

impl<T: PartialEq> Select<T> {
    pub fn is_none(&self) -> bool {
        matches!(self, Select::Only(v) if v.is_empty())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Select<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Select<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`*` or a list")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Select<T>, E> {
                match v {
                    "*" => Ok(Select::All),
                    _ => Err(E::custom(format!("`{v}`: give `*` or a list"))),
                }
            }
            // Element by element, so a bad element's own error is kept.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Select<T>, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Select::Only(v))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A group as the generator was given it: a number, or a name the kernel
/// rules resolve when they are installed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Id(u32),
    Name(String),
}

impl GroupRef {
    /// The gid, if this machine knows the name.
    pub fn gid(&self) -> Option<u32> {
        match self {
            GroupRef::Id(n) => Some(*n),
            GroupRef::Name(s) => {
                s.parse().ok().or_else(|| nix::unistd::Group::from_name(s).ok().flatten().map(|g| g.gid.as_raw()))
            }
        }
    }
}

impl std::fmt::Display for GroupRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupRef::Id(n) => write!(f, "{n}"),
            GroupRef::Name(s) => f.write_str(s),
        }
    }
}

/// A port or an inclusive range of ports: `15090` or `"6000-8000"` (Linkerd's
/// and Consul's generators take ranges; `6000:8000` is read the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn one(p: u16) -> PortRange {
        PortRange { first: p, last: p }
    }

    pub fn parse(s: &str) -> Option<PortRange> {
        let s = s.trim();
        let (a, b) = s.split_once(['-', ':']).unwrap_or((s, s));
        let (first, last): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (first > 0 && first <= last).then_some(PortRange { first, last })
    }

    pub fn contains(&self, p: u16) -> bool {
        self.first <= p && p <= self.last
    }

    /// As iptables' `--dport` takes it.
    pub fn to_iptables(self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port (1-65535) or a range `FIRST-LAST`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<PortRange, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p > 0)
                    .map(PortRange::one)
                    .ok_or_else(|| E::custom(format!("port {v} is out of range: use 1-65535")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<PortRange, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom(format!("port {v} is negative")))?)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<PortRange, E> {
                PortRange::parse(v).ok_or_else(|| {
                    E::custom(format!("`{v}` is not a port or a range of ports (like 15090 or 6000-8000)"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Whose generator the policy configures: the same field can mean other
/// traffic under another mesh's rules, and the oracle follows each mesh's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mesh {
    #[default]
    Istio,
    Linkerd,
    Kuma,
    Consul,
    /// Open Service Mesh: no generator command line (the injector writes the
    /// init container's script), so its policies are written by hand.
    Osm,
}

impl Mesh {
    pub const ALL: [Mesh; 5] = [Mesh::Istio, Mesh::Linkerd, Mesh::Kuma, Mesh::Consul, Mesh::Osm];

    pub fn name(self) -> &'static str {
        match self {
            Mesh::Istio => "istio",
            Mesh::Linkerd => "linkerd",
            Mesh::Kuma => "kuma",
            Mesh::Consul => "consul",
            Mesh::Osm => "osm",
        }
    }

    pub fn parse(s: &str) -> Option<Mesh> {
        Mesh::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether the proxy's own TCP connections over lo (to the pod's address,
    /// or any lo address outside the host loopback range) are sent to the
    /// inbound listener. Istio: istio-iptables' `-o lo ! -d 127.0.0.1/32
    /// -m owner --uid-owner` -> ISTIO_IN_REDIRECT; Kuma the same (kumahq/kuma
    /// pkg/transparentproxy/iptables/builder/builder_table_nat.go, the
    /// goldens' KUMA_MESH_OUTBOUND rule 2). Linkerd (linkerd2-proxy-init
    /// pkg/iptables/iptables.go addOutgoingTrafficRules: the proxy uid RETURNs
    /// first) and Consul (sdk/iptables/iptables.go: proxy uid RETURN first)
    /// never capture the proxy's own traffic. OSM does, with uid only
    /// (openservicemesh/osm pkg/injector/iptables.go @7bec5b6b2f77: `-A
    /// OSM_PROXY_OUTBOUND -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j
    /// OSM_PROXY_IN_REDIRECT`, ../shared/third-party/osm/default.sh).
    pub fn proxy_lo_to_inbound(self) -> bool {
        matches!(self, Mesh::Istio | Mesh::Kuma | Mesh::Osm)
    }

    /// Whether excluded outbound ports are returned before the proxy's own lo
    /// redirect (istio-iptables writes `-o` ports first in ISTIO_OUTPUT). OSM
    /// appends its port exclusions (and IP exclusions, and its inclusion
    /// list) after the lo and uid rules (pkg/injector/iptables.go
    /// @7bec5b6b2f77 GenerateIptablesCommands; iptables_test.go 'with
    /// exclusions and inclusions' = ../shared/third-party/osm/
    /// exclusions-inclusions.sh), so the proxy calling its own pod on an
    /// excluded port still goes to the inbound listener.
    pub fn ports_exclude_first(self) -> bool {
        self != Mesh::Osm
    }

    /// Whether the app's traffic leaving on lo is never captured. Istio
    /// (`-o lo -j RETURN`), Kuma (`-o lo -m owner ! --uid-owner -j RETURN`)
    /// and Linkerd (`-o lo -j RETURN`, proxy-init/ignore-loopback) return it;
    /// Consul's rules have no lo rule, only `-d 127.0.0.1/32 -j RETURN`
    /// (sdk/iptables/iptables.go; sdk/nftables also `ip6 daddr ::1/128`), so
    /// the app calling its own pod address goes to the outbound listener.
    pub fn app_lo_returned(self) -> bool {
        !matches!(self, Mesh::Consul)
    }

    /// Whether excluded outbound ranges are returned before the proxy's own
    /// lo redirect, so they also keep the proxy's connections to them from
    /// the inbound listener: Kuma writes `-A OUTPUT -d CIDR -j RETURN` first
    /// in nat OUTPUT (its with-multiple-flags goldens), Istio writes `-x`
    /// ranges after the lo rules.
    pub fn ranges_exclude_first(self) -> bool {
        self == Mesh::Kuma
    }

    /// Whether the mesh has Istio's HBONE tunnel port, never captured inbound.
    pub fn has_tunnel(self) -> bool {
        self == Mesh::Istio
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    #[default]
    Redirect,
    Tproxy,
}

fn d_uids() -> Vec<u32> {
    vec![1337]
}
fn d_tproxy_mark() -> u32 {
    1337
}
fn d_tproxy_table() -> u32 {
    133
}
fn d_host_loopback() -> Cidr {
    Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), len: 32 }
}
fn d_outbound() -> u16 {
    15001
}
fn d_inbound() -> u16 {
    15006
}
fn d_tunnel() -> Option<u16> {
    Some(15008)
}

/// What the generator was asked to do. The fields began as `istio-iptables`
/// flags (docs/policy.md maps them, and every other generator's flags);
/// defaults are Istio's flags' defaults, or under another `mesh` that
/// mesh's profile's ports and proxy uid ([`Policy::parse_for`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Whose generator was asked: which mesh's rules give the fields their meaning.
    #[serde(default)]
    pub mesh: Mesh,
    /// `-u`: uids whose traffic is the proxy's.
    #[serde(default = "d_uids")]
    pub proxy_uids: Vec<u32>,
    /// `-g`: gids whose traffic is the proxy's.
    #[serde(default = "d_uids")]
    pub proxy_gids: Vec<u32>,
    /// `-p`
    #[serde(default = "d_outbound")]
    pub outbound_port: u16,
    /// `-z`
    #[serde(default = "d_inbound")]
    pub inbound_port: u16,
    /// A separate IPv6 inbound port (Kuma < 2.7's 15010); absent: `inbound_port`.
    #[serde(default)]
    pub inbound_port_ipv6: Option<u16>,
    /// `--inbound-tunnel-port` (HBONE): never captured inbound. Istio only (null elsewhere).
    #[serde(default = "d_tunnel")]
    pub tunnel_port: Option<u16>,
    /// `-m`
    #[serde(default)]
    pub mode: Mode,
    /// `-t` (`--inbound-tproxy-mark`): the mark TPROXY gives captured packets.
    #[serde(default = "d_tproxy_mark")]
    pub tproxy_mark: u32,
    /// `-r` (`--inbound-tproxy-route-table`): the table marked packets are routed by.
    #[serde(default = "d_tproxy_table")]
    pub tproxy_table: u32,
    /// `-b`: inbound ports to capture.
    #[serde(default)]
    pub inbound_ports: Select<u16>,
    /// `-d`: with `inbound_ports: "*"`, ports (or ranges) not captured.
    #[serde(default)]
    pub inbound_exclude: Vec<PortRange>,
    /// Inbound connections from these source ranges are not captured
    /// (Linkerd `--subnets-to-ignore`, Kuma `--exclude-inbound-ips`).
    #[serde(default)]
    pub inbound_sources_exclude: Vec<Cidr>,
    /// `-q`: outbound ports captured whatever the address.
    #[serde(default)]
    pub outbound_ports_include: Vec<u16>,
    /// `-o`: outbound ports (or ranges) never captured.
    #[serde(default)]
    pub outbound_ports_exclude: Vec<PortRange>,
    /// Uids whose outbound traffic is never captured, though they are not
    /// the proxy (Consul `-exclude-uid`).
    #[serde(default)]
    pub outbound_uids_exclude: Vec<u32>,
    /// `-i`: outbound address ranges captured.
    #[serde(default)]
    pub outbound_ranges_include: Select<Cidr>,
    /// `-x`: outbound address ranges never captured.
    #[serde(default)]
    pub outbound_ranges_exclude: Vec<Cidr>,
    /// `-c`
    #[serde(default)]
    pub exclude_interfaces: Vec<String>,
    /// `-k`
    #[serde(default)]
    pub kube_virt_interfaces: Vec<String>,
    /// `--include-outbound-owner-groups`: only these groups' outbound
    /// traffic is captured (numbers or names).
    #[serde(default)]
    pub owner_groups_include: Vec<GroupRef>,
    /// `--exclude-outbound-owner-groups`: these groups' outbound traffic is not.
    #[serde(default)]
    pub owner_groups_exclude: Vec<GroupRef>,
    /// `--redirect-dns`
    #[serde(default)]
    pub dns_capture: bool,
    /// `--capture-all-dns`: every query to port 53 is captured, whatever the server.
    #[serde(default)]
    pub dns_capture_all: bool,
    /// The pod's nameservers (resolv.conf): without `dns_capture_all`, the
    /// servers whose queries are captured; the agent asks the first.
    #[serde(default)]
    pub dns_servers: Vec<IpAddr>,
    /// `--drop-invalid`
    #[serde(default)]
    pub drop_invalid: bool,
    /// `--host-loopback-cidr` (IPv4): lo destinations the proxy's own
    /// connections are never captured to.
    #[serde(default = "d_host_loopback")]
    pub host_loopback_cidr: Cidr,
    /// `--ipv6`: also write ip6tables rules.
    #[serde(default)]
    pub ipv6: bool,
    /// Where it came from and why, free text.
    #[serde(default)]
    pub note: String,
}

impl Default for Policy {
    fn default() -> Self {
        serde_norway::from_str("{}").expect("an empty policy takes every default")
    }
}

impl Policy {
    /// The inbound listener for `family`.
    pub fn inbound_for(&self, family: Family) -> u16 {
        match family {
            Family::Ipv6 => self.inbound_port_ipv6.unwrap_or(self.inbound_port),
            Family::Ipv4 => self.inbound_port,
        }
    }

    pub(super) fn in_ranges(list: &[PortRange], port: u16) -> bool {
        list.iter().any(|r| r.contains(port))
    }

    /// The pod's interfaces besides eth0 that the policy names, in order:
    /// the topology gives the pod these, each with a host behind it.
    pub fn pod_links(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for i in self.exclude_interfaces.iter().chain(&self.kube_virt_interfaces) {
            if i != "eth0" && !v.contains(i) {
                v.push(i.clone());
            }
        }
        v
    }

    pub(super) fn in_groups(list: &[GroupRef], gid: u32) -> bool {
        list.iter().any(|g| g.gid() == Some(gid))
    }

    /// The nameservers of `family` whose queries are captured: the listed
    /// ones, or with `dns_capture_all` the agent's upstream (standing for any).
    pub fn dns_servers_for(&self, family: Family) -> Vec<IpAddr> {
        if self.dns_capture_all {
            // Any server: the agent's upstream, and one on the pod (over lo).
            let mut v = vec![self.dns_upstream(family)];
            let local = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 53));
            if family == Family::Ipv4 && !v.contains(&local) {
                v.push(local);
            }
            v
        } else {
            self.dns_servers.iter().copied().filter(|ip| Family::of(*ip) == family).collect()
        }
    }

    /// The nameserver the agent asks: the first listed, else kube-dns.
    pub fn dns_upstream(&self, family: Family) -> IpAddr {
        self.dns_servers.iter().copied().find(|ip| Family::of(*ip) == family).unwrap_or(kube_dns(family))
    }

    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            Family::BOTH.to_vec()
        } else {
            vec![Family::Ipv4]
        }
    }

    /// Whether some app connection leaving the pod in `family` is captured:
    /// without that, the rules after the lo redirects could change nothing.
    pub fn captures_outbound(&self, family: Family) -> bool {
        !self.outbound_ports_include.is_empty()
            || !self.live_includes(family).is_empty()
            || self.outbound_ranges_include == Select::All
    }

    /// The included ranges of `family` not wholly inside an excluded one
    /// (ipv6-ipnets includes and excludes the same range: nothing is left).
    pub(super) fn live_includes(&self, family: Family) -> Vec<Cidr> {
        self.includes(family)
            .into_iter()
            .filter(|i| !self.outbound_ranges_exclude.iter().any(|x| x.len <= i.len && x.contains(i.addr)))
            .collect()
    }

    /// Whether any connection can arrive as inbound traffic: not when eth0
    /// is itself excluded or a KubeVirt interface (the extra interfaces
    /// always are one or the other).
    pub(super) fn inbound_reachable(&self) -> bool {
        !self.exclude_interfaces.iter().chain(&self.kube_virt_interfaces).any(|i| i == "eth0")
    }

    pub(super) fn includes(&self, family: Family) -> Vec<Cidr> {
        match &self.outbound_ranges_include {
            Select::All => Vec::new(),
            Select::Only(l) => l.iter().filter(|c| c.family() == family).copied().collect(),
        }
    }

    /// Whether the app's lo traffic is judged by the address ranges: when a
    /// range to capture is a loopback one, as istio-iptables does (it then
    /// writes no lo RETURN). Otherwise lo is never captured for the app.
    pub fn judges_lo(&self, family: Family) -> bool {
        if !self.mesh.app_lo_returned() {
            return true;
        }
        let loopback =
            Cidr::parse(if family == Family::Ipv4 { "127.0.0.0/8" } else { "::1/128" }).expect("a literal range");
        self.includes(family).iter().any(|c| loopback.contains(c.addr))
    }
}

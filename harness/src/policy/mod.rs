//! Capture policies: what a rule generator was asked to do, with fields that
//! mirror `istio-iptables`' flags. From a policy the harness derives three
//! things: the reference rules ([`Policy::to_restore_for`]), the expected
//! hops of any connection ([`oracle`], the specification), and a matrix of
//! probes on every boundary the policy draws ([`Policy::matrix`]).

pub mod from;

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::base::net::Family;
use crate::model::topology::Host;
use crate::{Error, Result};

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

/// An address range, `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() { max } else { l.parse().ok()? };
        (len <= max).then_some(Cidr { addr, len })
    }

    fn bits(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Cidr::bits(self.addr);
        let host = width - u32::from(self.len);
        let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
        if host >= 128 {
            0
        } else {
            all & !((1u128 << host).wrapping_sub(1))
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let m = self.mask();
        Cidr::bits(ip).0 & m == Cidr::bits(self.addr).0 & m
    }

    fn from_bits(v4: bool, b: u128) -> IpAddr {
        if v4 {
            IpAddr::V4((b as u32).into())
        } else {
            IpAddr::V6(b.into())
        }
    }

    /// First and last address of the range.
    pub fn bounds(&self) -> (IpAddr, IpAddr) {
        let (b, width) = Cidr::bits(self.addr);
        let m = self.mask();
        let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
        let v4 = self.addr.is_ipv4();
        (Cidr::from_bits(v4, b & m), Cidr::from_bits(v4, (b & m) | (all & !m)))
    }

    /// The address `delta` after `ip`, if it does not wrap.
    pub fn step(ip: IpAddr, delta: i8) -> Option<IpAddr> {
        let (b, width) = Cidr::bits(ip);
        let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
        let n = if delta >= 0 { b.checked_add(delta as u128)? } else { b.checked_sub(delta.unsigned_abs() as u128)? };
        (n <= all).then(|| Cidr::from_bits(ip.is_ipv4(), n))
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("`{s}` is not an address range (like 10.0.0.0/8 or 2001:db8::/32)"))
        })
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
    /// Parse a policy for Istio's profile.
    pub fn parse(file: &str, text: &str) -> Result<Policy> {
        Policy::parse_for(file, text, &crate::model::profile::Profile::istio())
    }

    /// The `mesh:` a policy names, if it names one (to choose its profile).
    pub fn mesh_of(text: &str) -> Option<Mesh> {
        let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
        v.get("mesh").and_then(|m| m.as_str()).and_then(Mesh::parse)
    }

    /// Parse a policy to be run under `profile`. Its mesh is the policy's
    /// `mesh:`, else the profile's name; fields left out take that profile's
    /// numbers (ports, the proxy uid; the proxy gid and the tunnel port only
    /// under Istio, whose generator alone matches them by default), so a
    /// policy says only what differs from the mesh's defaults.
    pub fn parse_for(file: &str, text: &str, profile: &crate::model::profile::Profile) -> Result<Policy> {
        let mut p = Policy::parse_text(file, text)?;
        let invalid = |message: String| Error::ScenarioInvalid { file: file.into(), message };
        let named = Policy::mesh_of(text);
        let mesh = match (named, Mesh::parse(&profile.name)) {
            (Some(m), Some(of_profile)) if m != of_profile => {
                return Err(invalid(format!(
                    "mesh: {} but the profile is {} ({}): run it with --profile {} or a profile of that mesh",
                    m.name(),
                    profile.name,
                    profile.file,
                    m.name()
                )))
            }
            (Some(m), _) | (None, Some(m)) => m,
            (None, None) => {
                return Err(invalid(format!(
                    "profile {} is none of the meshes whose rules the oracle knows ({}): say which one's generator the policy configures with `mesh:`",
                    profile.name,
                    Mesh::ALL.map(Mesh::name).join(", ")
                )))
            }
        };
        let is_istio_default = profile.name == "istio" && mesh == Mesh::Istio;
        if !is_istio_default {
            let mut v: serde_norway::Value = serde_norway::from_str(text).unwrap_or(serde_norway::Value::Null);
            if v.is_null() {
                v = serde_norway::Value::Mapping(Default::default());
            }
            let map = v.as_mapping_mut().ok_or_else(|| invalid("a policy is a mapping of fields".into()))?;
            let x = &profile.proxy;
            let mut put = |key: &str, value: serde_norway::Value| {
                if !map.contains_key(key) {
                    map.insert(key.into(), value);
                }
            };
            put("mesh", mesh.name().into());
            put("outbound_port", x.outbound.into());
            put("inbound_port", x.inbound.into());
            if let Some(v6) = x.inbound_ipv6 {
                put("inbound_port_ipv6", v6.into());
            }
            put("proxy_uids", vec![x.uid].into());
            put("proxy_gids", if mesh == Mesh::Istio { vec![x.gid] } else { Vec::new() }.into());
            if !mesh.has_tunnel() {
                put("tunnel_port", serde_norway::Value::Null);
            }
            p = serde_norway::from_value(v).map_err(|e| invalid(e.to_string()))?;
        }
        if p.mode == Mode::Tproxy && p.mesh != Mesh::Istio {
            return Err(invalid(format!(
                "mode: TPROXY under mesh {}: only Istio's generators write TPROXY rules the oracle knows",
                p.mesh.name()
            )));
        }
        Ok(p)
    }

    /// Whether the stand-in proxy can run this policy under `profile`: it
    /// serves the profile's admin, stats and health ports beside the
    /// policy's capture listeners, and one port cannot be both.
    pub fn check_profile(&self, file: &str, profile: &crate::model::profile::Profile) -> Result<()> {
        let x = &profile.proxy;
        for (role, served) in [("admin", x.admin), ("stats", x.stats), ("health", x.health)] {
            for (field, port) in [
                ("outbound_port", Some(self.outbound_port)),
                ("inbound_port", Some(self.inbound_port)),
                ("inbound_port_ipv6", self.inbound_port_ipv6),
            ] {
                if port == Some(served) {
                    return Err(Error::ScenarioInvalid {
                        file: file.into(),
                        message: format!(
                            "{field} {served} is also the {} profile's {role} port ({}): the stand-in proxy cannot listen there for both; run it with a profile file (--profile FILE) that moves the {role} port",
                            profile.name, profile.file
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn parse_text(file: &str, text: &str) -> Result<Policy> {
        let p: Policy = crate::base::yaml::parse(file, text)?;
        let invalid = |message: String| Error::ScenarioInvalid { file: file.into(), message };
        if p.proxy_uids.is_empty() && p.proxy_gids.is_empty() {
            return Err(invalid(
                "proxy_uids and proxy_gids are both empty: the proxy's own traffic would be captured again".into(),
            ));
        }
        if p.mode == Mode::Tproxy && p.proxy_gids.is_empty() {
            return Err(invalid("mode: TPROXY with no proxy_gids: under TPROXY the proxy runs as root with the proxy gid (Istio's injector: runAsUser 0, runAsGroup 1337), so only a gid tells its traffic apart".into()));
        }
        if p.outbound_port == p.inbound_port || Some(p.outbound_port) == p.inbound_port_ipv6 {
            return Err(invalid(format!("outbound_port and inbound_port are both {}", p.outbound_port)));
        }
        crate::model::validate::policy(&p, file, text)?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Policy> {
        let text = crate::base::bounded::read_text(path, crate::base::bounded::YAML_MAX)?;
        Policy::parse(&path.display().to_string(), &text)
    }

    /// The inbound listener for `family`.
    pub fn inbound_for(&self, family: Family) -> u16 {
        match family {
            Family::Ipv6 => self.inbound_port_ipv6.unwrap_or(self.inbound_port),
            Family::Ipv4 => self.inbound_port,
        }
    }

    fn in_ranges(list: &[PortRange], port: u16) -> bool {
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

    /// Groups named in the policy that this machine lacks: rules naming
    /// them cannot be installed, and the oracle could not place a probe.
    pub fn check_groups(&self, file: &str) -> Result<()> {
        for g in self.owner_groups_include.iter().chain(&self.owner_groups_exclude) {
            if g.gid().is_none() {
                return Err(Error::ScenarioInvalid {
                    file: file.into(),
                    message: format!("owner group `{g}` does not exist on this machine: owner matches resolve names when the rules are installed, so no rules for this policy can be installed here. Create it (groupadd {g}) or give its gid"),
                });
            }
        }
        Ok(())
    }

    fn in_groups(list: &[GroupRef], gid: u32) -> bool {
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
    fn live_includes(&self, family: Family) -> Vec<Cidr> {
        self.includes(family)
            .into_iter()
            .filter(|i| !self.outbound_ranges_exclude.iter().any(|x| x.len <= i.len && x.contains(i.addr)))
            .collect()
    }

    /// Whether any connection can arrive as inbound traffic: not when eth0
    /// is itself excluded or a KubeVirt interface (the extra interfaces
    /// always are one or the other).
    fn inbound_reachable(&self) -> bool {
        !self.exclude_interfaces.iter().chain(&self.kube_virt_interfaces).any(|i| i == "eth0")
    }

    fn includes(&self, family: Family) -> Vec<Cidr> {
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

    /// The reference rules for this policy (iptables-restore input), in
    /// Istio's chains. They implement what [`oracle`] specifies and hold no
    /// rule that cannot change a packet's fate (so a mutation run can tell
    /// whether the probes would catch any wrong rule).
    pub fn to_restore_for(&self, family: Family) -> String {
        use std::fmt::Write as _;
        let (passthrough, loopback) = match family {
            Family::Ipv4 => ("127.0.0.6/32", self.host_loopback_cidr.to_string()),
            Family::Ipv6 => ("::6/128", "::1/128".to_string()),
        };
        let capture_out = self.captures_outbound(family);
        let mut r = crate::rules::istio::istio_nat_preamble();
        let _ = writeln!(r, "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.inbound_for(family));
        // What arrives on a KubeVirt interface is the VM's outbound traffic:
        // to the outbound listener where the ranges capture it.
        let mut virt = Vec::new();
        for x in &self.kube_virt_interfaces {
            match &self.outbound_ranges_include {
                Select::All => virt.push(format!("-A PREROUTING -i {x} -j ISTIO_REDIRECT")),
                Select::Only(_) => virt.extend(
                    self.includes(family).iter().map(|c| format!("-A PREROUTING -i {x} -d {c} -j ISTIO_REDIRECT")),
                ),
            }
        }
        if capture_out || !virt.is_empty() {
            let _ = writeln!(r, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port);
        }
        for line in &virt {
            let _ = writeln!(r, "{line}");
        }
        // Nothing arriving on an excluded or KubeVirt interface is inbound
        // traffic (under TPROXY, in mangle below).
        let not_inbound: Vec<String> = self
            .exclude_interfaces
            .iter()
            .chain(&self.kube_virt_interfaces)
            .map(|x| format!("-A PREROUTING -i {x} -j RETURN\n"))
            .collect();
        let capture_in = !self.inbound_ports.is_none() && self.inbound_reachable();
        if capture_in && self.mode == Mode::Redirect {
            r.push_str(&not_inbound.concat());
        }
        if capture_out {
            for x in &self.exclude_interfaces {
                let _ = writeln!(r, "-A OUTPUT -o {x} -j RETURN");
            }
        }
        // The inbound capture: nat REDIRECT, or under TPROXY the mangle
        // table (written first, as the table order of a restore file).
        let mut inbound = String::new();
        let jump = if self.mode == Mode::Tproxy { "ISTIO_TPROXY" } else { "ISTIO_IN_REDIRECT" };
        if capture_in {
            inbound.push_str("-A PREROUTING -p tcp -j ISTIO_INBOUND\n");
            if self.mode == Mode::Tproxy {
                // lo traffic is never TPROXY'd: the proxy's own transparent
                // upstream and the app calling its own pod (istio#31095)
                // arrive there; the proxy calling its pod is nat-redirected.
                inbound.push_str("-A ISTIO_INBOUND -p tcp -i lo -j RETURN\n");
                // TPROXY drops a packet whose socket is not transparent: the
                // replies to the pod's own outbound connections must pass
                // (with a list of ports they never reach a TPROXY rule).
                if self.inbound_ports == Select::All {
                    inbound.push_str("-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n");
                }
            }
            // Sources never captured (only where something would be).
            let sources: Vec<&Cidr> = self.inbound_sources_exclude.iter().filter(|c| c.family() == family).collect();
            match &self.inbound_ports {
                Select::All => {
                    if let Some(t) = self.tunnel_port {
                        let _ = writeln!(inbound, "-A ISTIO_INBOUND -p tcp -m tcp --dport {t} -j RETURN");
                    }
                    let tunnel = self.tunnel_port.map(PortRange::one);
                    for p in self.inbound_exclude.iter().filter(|p| Some(**p) != tunnel) {
                        let _ =
                            writeln!(inbound, "-A ISTIO_INBOUND -p tcp -m tcp --dport {} -j RETURN", p.to_iptables());
                    }
                    for c in &sources {
                        let _ = writeln!(inbound, "-A ISTIO_INBOUND -s {c} -j RETURN");
                    }
                    let _ = writeln!(inbound, "-A ISTIO_INBOUND -p tcp -j {jump}");
                }
                Select::Only(ports) => {
                    if !ports.is_empty() {
                        for c in &sources {
                            let _ = writeln!(inbound, "-A ISTIO_INBOUND -s {c} -j RETURN");
                        }
                    }
                    for p in ports.iter().filter(|p| Some(**p) != self.tunnel_port) {
                        let _ = writeln!(inbound, "-A ISTIO_INBOUND -p tcp -m tcp --dport {p} -j {jump}");
                    }
                }
            }
        }
        // A packet conntrack cannot place skips NAT and would reach the app
        // port directly (and be reset): dropped first, when asked.
        let drop_invalid =
            if self.drop_invalid { "-A PREROUTING -m conntrack --ctstate INVALID -j DROP\n" } else { "" }.to_string();
        if self.mode == Mode::Tproxy && capture_in {
            let m = self.tproxy_mark;
            let mut mangle = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_TPROXY - [0:0]\n");
            mangle.push_str(&drop_invalid);
            let _ = writeln!(
                mangle,
                "-A ISTIO_TPROXY -p tcp -j TPROXY --on-port {} --tproxy-mark {m}/0xffffffff",
                self.inbound_port
            );
            mangle.push_str(&not_inbound.concat());
            mangle.push_str(&inbound);
            // The proxy's transparent upstream to the app is marked; its
            // connection keeps the mark so the app's replies, addressed to
            // the client, are routed back to the proxy (table `tproxy_table`).
            let _ = writeln!(mangle, "-A PREROUTING -p tcp -m mark --mark {m} -j CONNMARK --save-mark");
            let _ = writeln!(mangle, "-A OUTPUT -p tcp -m connmark --mark {m} -j CONNMARK --restore-mark");
            mangle.push_str("COMMIT\n");
            r = mangle + &r;
        } else {
            r.push_str(&inbound);
            if !drop_invalid.is_empty() {
                r = format!("*mangle\n:PREROUTING ACCEPT [0:0]\n{drop_invalid}COMMIT\n") + &r;
            }
        }
        r.push_str("-A OUTPUT -j ISTIO_OUTPUT\n");
        let dns_servers = if self.dns_capture { self.dns_servers_for(family) } else { Vec::new() };
        let dns = !dns_servers.is_empty();
        let ports_exclude = |r: &mut String| {
            for p in &self.outbound_ports_exclude {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -p tcp -m tcp --dport {} -j RETURN", p.to_iptables());
                if dns && p.contains(53) {
                    let _ = writeln!(r, "-A ISTIO_OUTPUT -p udp -m udp --dport {} -j RETURN", p.to_iptables());
                }
            }
        };
        if self.mesh.ports_exclude_first() {
            ports_exclude(&mut r);
        }
        // Under a mesh that never redirects the proxy's lo traffic, the
        // passthrough source needs no rule: the proxy identity returns it.
        let lo_to_inbound = self.mesh.proxy_lo_to_inbound();
        if self.mesh.ranges_exclude_first() {
            for c in self.outbound_ranges_exclude.iter().filter(|c| c.family() == family) {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -d {c} -j RETURN");
            }
        }
        match (lo_to_inbound, self.mode) {
            (false, _) => {}
            // The transparent upstream comes from the proxy gid over lo.
            (true, Mode::Tproxy) => {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -m mark --mark {} -j RETURN", self.tproxy_mark);
            }
            (true, Mode::Redirect) => {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -s {passthrough} -o lo -j RETURN");
            }
        }
        // Every proxy identity's lo redirect before any lo RETURN, so a
        // second uid, or a gid alone, is treated as the proxy too.
        // (With DNS capture the proxy's own TCP queries over lo are not redirected.)
        let lo_redirect = match (dns, self.tunnel_port) {
            (true, Some(t)) => format!("! -d {loopback} -o lo -p tcp -m multiport ! --dports 53,{t}"),
            (true, None) => format!("! -d {loopback} -o lo -p tcp -m tcp ! --dport 53"),
            (false, Some(t)) => format!("! -d {loopback} -o lo -p tcp -m tcp ! --dport {t}"),
            (false, None) => format!("! -d {loopback} -o lo -p tcp"),
        };
        if lo_to_inbound {
            for u in &self.proxy_uids {
                let _ = writeln!(r, "-A ISTIO_OUTPUT {lo_redirect} -m owner --uid-owner {u} -j ISTIO_IN_REDIRECT");
            }
            for g in &self.proxy_gids {
                let _ = writeln!(r, "-A ISTIO_OUTPUT {lo_redirect} -m owner --gid-owner {g} -j ISTIO_IN_REDIRECT");
            }
        }
        // OSM: after the proxy's lo redirect ([`Mesh::ports_exclude_first`]).
        if !self.mesh.ports_exclude_first() {
            ports_exclude(&mut r);
        }
        if capture_out || dns {
            for u in &self.proxy_uids {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -m owner --uid-owner {u} -j RETURN");
            }
            for u in &self.outbound_uids_exclude {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -m owner --uid-owner {u} -j RETURN");
            }
            // A proxy gid outside the included owner groups is returned by
            // the group rule anyway (but its DNS would be captured first).
            for g in self.proxy_gids.iter().filter(|g| {
                dns || self.owner_groups_include.is_empty() || Policy::in_groups(&self.owner_groups_include, **g)
            }) {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -m owner --gid-owner {g} -j RETURN");
            }
            // The app's queries to the nameservers go to the agent, over lo
            // (127.0.0.53) too: before lo is returned.
            for server in &dns_servers {
                let d = if self.dns_capture_all { String::new() } else { format!(" -d {server}") };
                for proto in ["udp", "tcp"] {
                    let _ = writeln!(
                        r,
                        "-A ISTIO_OUTPUT -p {proto} -m {proto} --dport 53{d} -j REDIRECT --to-ports {DNS_AGENT_PORT}"
                    );
                }
                if d.is_empty() {
                    break;
                }
            }
            if capture_out && !self.judges_lo(family) {
                r.push_str("-A ISTIO_OUTPUT -o lo -j RETURN\n");
            }
        }
        if capture_out {
            if !self.owner_groups_include.is_empty() {
                let not_in: Vec<String> =
                    self.owner_groups_include.iter().map(|g| format!("-m owner ! --gid-owner {g}")).collect();
                let _ = writeln!(r, "-A ISTIO_OUTPUT {} -j RETURN", not_in.join(" "));
            }
            for g in &self.owner_groups_exclude {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -m owner --gid-owner {g} -j RETURN");
            }
            // The host loopback range: reached only where lo is not returned
            // before, and needed only where something after would capture it.
            let loopback_cidr = Cidr::parse(&loopback).expect("a literal range");
            let captures_loopback = self.outbound_ranges_include == Select::All
                || !self.outbound_ports_include.is_empty()
                || self
                    .includes(family)
                    .iter()
                    .any(|c| c.contains(loopback_cidr.addr) || loopback_cidr.contains(c.addr));
            if self.judges_lo(family) && captures_loopback {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -d {loopback} -j RETURN");
            }
            // An excluded range matters only where something would capture it.
            let includes = self.includes(family);
            let overlaps = |c: &Cidr| {
                self.outbound_ranges_include == Select::All
                    || includes.iter().any(|i| i.contains(c.addr) || c.contains(i.addr))
            };
            let written = self.mesh.ranges_exclude_first();
            for c in self.outbound_ranges_exclude.iter().filter(|c| !written && c.family() == family && overlaps(c)) {
                let _ = writeln!(r, "-A ISTIO_OUTPUT -d {c} -j RETURN");
            }
            if self.outbound_ranges_include == Select::All {
                r.push_str("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n");
            } else {
                for c in self.live_includes(family) {
                    let _ = writeln!(r, "-A ISTIO_OUTPUT -d {c} -j ISTIO_REDIRECT");
                }
                for p in &self.outbound_ports_include {
                    let _ = writeln!(r, "-A ISTIO_OUTPUT -p tcp -m tcp --dport {p} -j ISTIO_REDIRECT");
                }
            }
        }
        r.push_str("COMMIT\n");
        if dns {
            r.push_str(&self.dns_zones(&dns_servers));
        }
        r
    }

    /// Conntrack zones for DNS, after istio-iptables: the agent's queries in
    /// zone 1, the app's queries and the agent's answers in zone 2, so that
    /// a query of the agent and one of the app with the same addresses and
    /// ports are never one connection (istio/istio#46935). Istio also puts
    /// the nameservers' answers in zone 1 (raw PREROUTING); nothing NATs
    /// them, so no packet's fate depends on that, and it is left out.
    fn dns_zones(&self, servers: &[IpAddr]) -> String {
        use std::fmt::Write as _;
        let mut r = String::from("*raw\n:OUTPUT ACCEPT [0:0]\n");
        // The agent's identity (the proxy's first gid, else its first uid:
        // under TPROXY it runs as root with the gid).
        let agent = match (self.proxy_gids.first(), self.proxy_uids.first()) {
            (Some(g), _) => format!("--gid-owner {g}"),
            (None, Some(u)) => format!("--uid-owner {u}"),
            (None, None) => unreachable!("a policy has a proxy uid or gid"),
        };
        let _ = writeln!(r, "-A OUTPUT -p udp -m udp --sport {DNS_AGENT_PORT} -m owner {agent} -j CT --zone 2");
        let _ = writeln!(r, "-A OUTPUT -p udp -m udp --dport 53 -m owner {agent} -j CT --zone 1");
        for server in servers {
            let d = if self.dns_capture_all { String::new() } else { format!(" -d {server}") };
            let _ = writeln!(r, "-A OUTPUT -p udp -m udp --dport 53{d} -j CT --zone 2");
            if d.is_empty() {
                break;
            }
        }
        r.push_str("COMMIT\n");
        r
    }
}

/// Where pilot-agent's DNS proxy listens (on 127.0.0.1 and ::1).
pub const DNS_AGENT_PORT: u16 = 15053;
/// How the servers on the hosts behind the pod's extra interfaces answer.
pub const SIDE_APP_NAME: &str = "side-app";
/// How the nameserver stubs answer.
pub const DNS_SERVER_NAME: &str = "dns-server";

/// The nameserver a pod has when the policy lists none (kube-dns's VIP in a
/// default cluster), on the remote pod.
pub fn kube_dns(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)),
        Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa)),
    }
}

/// A DNS server on the pod itself: a 127/8 address (systemd-resolved's
/// 127.0.0.53), or one written as an IPv4-compatible IPv6 address
/// (`::127.0.0.53`, as Istio's own tests give it).
pub fn dns_server_is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.segments()[..6] == [0; 6] && a.octets()[12] == 127,
    }
}

/// Where a probe connects to, as the oracle sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// The pod's own address, from inside the pod (leaves on lo).
    OwnPod(IpAddr),
    /// 127.0.0.1 / ::1.
    Loopback,
    /// Another loopback address (127.0.0.2): over lo, inside or outside
    /// the host loopback range as the policy draws it.
    LoopbackAlias(IpAddr),
    /// An address outside the pod.
    Remote(IpAddr),
    /// An address beyond the pod, from a host behind one of its extra
    /// interfaces: the pod forwards it (a KubeVirt VM's traffic).
    Through(IpAddr),
}

/// One TCP connection for the oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// From another pod to this pod's address (arrives on eth0).
    pub inbound: bool,
    /// One UDP datagram (a DNS query) instead of a TCP connection.
    pub udp: bool,
    /// One TCP segment conntrack marks INVALID (SYN+FIN+ACK): it skips NAT.
    pub invalid: bool,
    /// The pod interface it arrives on (inbound) or leaves by (outbound): 0
    /// for eth0 (or lo), N for the policy's Nth extra interface
    /// ([`Policy::pod_links`]).
    pub link: u8,
    pub uid: u32,
    pub gid: u32,
    pub dest: Dest,
    pub port: u16,
    /// The client's address, for an inbound connection (source exclusions).
    pub source: Option<IpAddr>,
}

/// The specification: the proxy listener ports a TCP connection passes
/// under `policy`, in order, then the port that answers. A proxy hop's own
/// upstream connection is judged again (outbound upstreams come from the
/// proxy identity; inbound ones from the passthrough source, never captured).
pub fn oracle(p: &Policy, q: Query) -> Vec<u16> {
    // An INVALID segment is never NATed: it reaches its port (and is reset
    // there) or is dropped ([`invalid_fate`]).
    if q.invalid {
        return vec![q.port];
    }
    let links = p.pod_links();
    // The app's or proxy's connections to the pod itself leave by lo, never
    // by eth0: an excluded eth0 (`-o eth0 -j RETURN`, OSM's
    // exclusions-inclusions.sh, istio-iptables' `-c`) does not return them.
    let over_lo = matches!(q.dest, Dest::OwnPod(_) | Dest::Loopback | Dest::LoopbackAlias(_));
    let iface = match q.link {
        0 if !q.inbound && over_lo => "lo",
        0 => "eth0",
        n => links.get(usize::from(n) - 1).map(String::as_str).unwrap_or("?"),
    };
    let on = |list: &[String]| list.iter().any(|i| i == iface);
    if q.inbound && on(&p.exclude_interfaces) {
        return vec![q.port];
    }
    // Arriving on a KubeVirt interface: the VM's traffic is the pod's
    // outbound traffic, captured by the ranges, else left alone.
    if q.inbound && on(&p.kube_virt_interfaces) {
        let (ip, local) = match q.dest {
            Dest::Through(ip) => (ip, false),
            Dest::Remote(ip) | Dest::OwnPod(ip) | Dest::LoopbackAlias(ip) => (ip, true),
            Dest::Loopback => return vec![q.port],
        };
        let captured = match &p.outbound_ranges_include {
            Select::All => true,
            Select::Only(list) => list.iter().any(|c| c.contains(ip)),
        };
        if !captured {
            return vec![q.port];
        }
        return through_outbound(
            p,
            Query { inbound: false, dest: if local { Dest::OwnPod(ip) } else { Dest::Remote(ip) }, link: 0, ..q },
        );
    }
    if matches!(q.dest, Dest::Through(_)) {
        return vec![q.port];
    }
    // Leaving by an excluded interface: never captured.
    if !q.inbound && on(&p.exclude_interfaces) {
        return vec![q.port];
    }
    let family = match q.dest {
        Dest::OwnPod(ip) | Dest::LoopbackAlias(ip) | Dest::Remote(ip) | Dest::Through(ip) => Family::of(ip),
        Dest::Loopback => q.source.map(Family::of).unwrap_or(Family::Ipv4),
    };
    if q.inbound {
        let from_excluded = q.source.is_some_and(|ip| p.inbound_sources_exclude.iter().any(|c| c.contains(ip)));
        let captured = Some(q.port) != p.tunnel_port
            && !from_excluded
            && match &p.inbound_ports {
                Select::All => !Policy::in_ranges(&p.inbound_exclude, q.port),
                Select::Only(list) => list.contains(&q.port),
            };
        return if captured { vec![p.inbound_for(family), q.port] } else { vec![q.port] };
    }
    let proxy = p.proxy_uids.contains(&q.uid) || p.proxy_gids.contains(&q.gid);
    let port_excluded = Policy::in_ranges(&p.outbound_ports_exclude, q.port);
    if port_excluded && p.mesh.ports_exclude_first() {
        return vec![q.port];
    }
    let (ip, over_lo) = match q.dest {
        // (The family does not matter: 127.0.0.1 and ::1 are both host loopback.)
        Dest::Loopback => (IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), true),
        Dest::OwnPod(ip) | Dest::LoopbackAlias(ip) => (ip, true),
        Dest::Remote(ip) | Dest::Through(ip) => (ip, false),
    };
    let host_lo = matches!(q.dest, Dest::Loopback)
        || p.host_loopback_cidr.contains(ip)
        || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let dns = p.dns_capture && q.port == 53;
    // Over lo: the proxy's TCP connections to the pod's own address (or any
    // lo address outside the host loopback range) are captured, to the
    // inbound listener (a service call to itself); its DNS is not.
    if p.mesh.ranges_exclude_first() && p.outbound_ranges_exclude.iter().any(|c| c.contains(ip)) {
        return vec![q.port];
    }
    if over_lo && proxy && !q.udp && !host_lo && Some(q.port) != p.tunnel_port && !dns && p.mesh.proxy_lo_to_inbound() {
        return vec![p.inbound_for(family), q.port];
    }
    if proxy || port_excluded || p.outbound_uids_exclude.contains(&q.uid) {
        return vec![q.port];
    }
    // DNS capture: the app's queries to the listed servers (to any server
    // with `dns_capture_all`), UDP or TCP, go to the agent, which asks the
    // server as the proxy.
    if dns && (p.dns_capture_all || p.dns_servers.contains(&ip)) {
        return vec![DNS_AGENT_PORT, q.port];
    }
    if host_lo || q.udp {
        return vec![q.port];
    }
    // The app's lo traffic is not captured, unless an included range is a
    // loopback one: then lo traffic is judged by the ranges like any other.
    if over_lo && !p.judges_lo(Family::of(ip)) {
        return vec![q.port];
    }
    let grouped = p.owner_groups_include.is_empty() || Policy::in_groups(&p.owner_groups_include, q.gid);
    if !grouped
        || Policy::in_groups(&p.owner_groups_exclude, q.gid)
        || p.outbound_ranges_exclude.iter().any(|c| c.contains(ip))
    {
        return vec![q.port];
    }
    let captured = match &p.outbound_ranges_include {
        Select::All => true,
        Select::Only(list) => list.iter().any(|c| c.contains(ip)) || p.outbound_ports_include.contains(&q.port),
    };
    if !captured {
        return vec![q.port];
    }
    through_outbound(p, q)
}

/// Captured to the outbound listener: the proxy then dials `q`'s
/// destination as itself, and that connection is judged again.
fn through_outbound(p: &Policy, q: Query) -> Vec<u16> {
    let upstream = Query {
        uid: p.proxy_uids.first().copied().unwrap_or(q.uid),
        gid: p.proxy_gids.first().copied().unwrap_or(q.gid),
        ..q
    };
    let mut hops = vec![p.outbound_port];
    hops.extend(oracle(p, upstream));
    hops
}

/// What becomes of an INVALID segment: reset by the pod's kernel, or
/// dropped by the `drop_invalid` rule.
pub fn invalid_fate(p: &Policy) -> &'static str {
    if p.drop_invalid {
        crate::model::scenario::DROPPED
    } else {
        crate::model::scenario::RESET
    }
}

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
        let served = |port: u16| {
            [Some(self.outbound_port), Some(self.inbound_port), self.inbound_port_ipv6].contains(&Some(port))
        };
        for family in self.families() {
            let Some((_, pod, remote)) = topo.hosts.iter().find(|(f, _, _)| *f == family).copied() else { continue };
            let mut push = |label: String,
                            from: Host,
                            uid: u32,
                            gid: u32,
                            dest: Dest,
                            port: u16,
                            udp: bool,
                            link: u8| {
                if served(port) {
                    return;
                }
                // The client's address: the remote pod's, or the host's behind an extra interface.
                let source = match from {
                    Host::LocalPod => None,
                    Host::Side(k) => Some(crate::model::topology::TopologyConfig::link_addresses(k, family).1),
                    _ => Some(remote),
                };
                let q =
                    Query { inbound: from != Host::LocalPod, udp, invalid: false, uid, gid, dest, port, link, source };
                let expected = oracle(self, q);
                let protocol =
                    if udp { crate::model::scenario::Protocol::Udp } else { crate::model::scenario::Protocol::Tcp };
                out.push(MatrixProbe { label, from, uid, gid, family, dest, port, protocol, link, expected });
            };
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
                push(label, Host::RemotePod, 65534, 65534, Dest::Remote(pod), port, false, 0);
            }
            // The app calling its own pod on a captured inbound port: lo
            // traffic is not inbound traffic (under TPROXY, istio#31095).
            if let Select::Only(l) = &self.inbound_ports {
                for p in l {
                    push(
                        format!("app-to-own-pod-inbound-{p}"),
                        Host::LocalPod,
                        app_uid,
                        app_uid,
                        Dest::OwnPod(pod),
                        *p,
                        false,
                        0,
                    );
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
            let app = |ip: IpAddr, port: u16| Query {
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
                .find(|(ip, port)| oracle(self, app(*ip, *port)).len() > 1)
                .unwrap_or((remote, 9090));
            // Outbound from the app, by port: excluded ports where the rest is
            // captured, included ports where the address is not.
            push("outbound-9090".into(), Host::LocalPod, app_uid, app_gid, Dest::Remote(remote), 9090, false, 0);
            for (label, port) in range_edges("outbound", &self.outbound_ports_exclude) {
                push(label, Host::LocalPod, app_uid, app_gid, Dest::Remote(target), port, false, 0);
            }
            for p in &self.outbound_ports_exclude {
                push(
                    format!("proxy-to-own-pod-excluded-{}", p.first),
                    Host::LocalPod,
                    puid,
                    app_gid,
                    Dest::OwnPod(pod),
                    p.first,
                    false,
                    0,
                );
            }
            // Uids excluded as if they were the proxy's, out where the app is captured.
            for u in &self.outbound_uids_exclude {
                push(
                    format!("excluded-uid-{u}-out"),
                    Host::LocalPod,
                    *u,
                    app_gid,
                    Dest::Remote(target),
                    target_port,
                    false,
                    0,
                );
            }
            for (label, port) in with_neighbours("outbound", &self.outbound_ports_include) {
                push(label, Host::LocalPod, app_uid, app_gid, Dest::Remote(remote), port, false, 0);
            }
            for p in &self.outbound_ports_include {
                push(
                    format!("app-to-own-pod-included-{p}"),
                    Host::LocalPod,
                    app_uid,
                    app_gid,
                    Dest::OwnPod(pod),
                    *p,
                    false,
                    0,
                );
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
                    push(
                        format!("lo-range-{c}-{ip}"),
                        Host::LocalPod,
                        app_uid,
                        app_gid,
                        Dest::LoopbackAlias(ip),
                        9090,
                        false,
                        0,
                    );
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
                        push(
                            format!("range-{c}-{edge}-{ip}"),
                            Host::LocalPod,
                            app_uid,
                            app_gid,
                            Dest::Remote(ip),
                            9090,
                            false,
                            0,
                        );
                    }
                }
            }
            // Identities: each proxy uid and gid alone (with the app's gid or
            // uid), so a missing uid rule is not hidden by the gid rule after
            // it; out where the app would be captured, and to the pod itself.
            for u in &self.proxy_uids {
                push(
                    format!("proxy-uid-{u}-out"),
                    Host::LocalPod,
                    *u,
                    app_gid,
                    Dest::Remote(target),
                    target_port,
                    false,
                    0,
                );
                push(
                    format!("proxy-uid-{u}-to-own-pod"),
                    Host::LocalPod,
                    *u,
                    app_gid,
                    Dest::OwnPod(pod),
                    8080,
                    false,
                    0,
                );
                if let Some(t) = self.tunnel_port {
                    push(
                        format!("proxy-uid-{u}-to-own-pod-tunnel-{t}"),
                        Host::LocalPod,
                        *u,
                        app_gid,
                        Dest::OwnPod(pod),
                        t,
                        false,
                        0,
                    );
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
                    push(
                        format!("proxy-uid-{u}-to-lo-{ip}-tunnel"),
                        Host::LocalPod,
                        *u,
                        app_gid,
                        Dest::LoopbackAlias(ip),
                        tunnel,
                        false,
                        0,
                    );
                }
                for g in &self.proxy_gids {
                    push(
                        format!("proxy-gid-{g}-to-lo-{ip}-tunnel"),
                        Host::LocalPod,
                        app_uid,
                        *g,
                        Dest::LoopbackAlias(ip),
                        tunnel,
                        false,
                        0,
                    );
                }
            }
            for g in &self.proxy_gids {
                push(
                    format!("proxy-gid-{g}-out"),
                    Host::LocalPod,
                    app_uid,
                    *g,
                    Dest::Remote(target),
                    target_port,
                    false,
                    0,
                );
                push(
                    format!("proxy-gid-{g}-to-own-pod"),
                    Host::LocalPod,
                    app_uid,
                    *g,
                    Dest::OwnPod(pod),
                    8080,
                    false,
                    0,
                );
                if let Some(t) = self.tunnel_port {
                    push(
                        format!("proxy-gid-{g}-to-own-pod-tunnel-{t}"),
                        Host::LocalPod,
                        app_uid,
                        *g,
                        Dest::OwnPod(pod),
                        t,
                        false,
                        0,
                    );
                }
            }
            // Owner groups: each listed group, and a group outside the list.
            for g in self.owner_groups_include.iter().chain(&self.owner_groups_exclude).filter_map(GroupRef::gid) {
                push(
                    format!("owner-group-{g}-out"),
                    Host::LocalPod,
                    app_uid,
                    g,
                    Dest::Remote(target),
                    target_port,
                    false,
                    0,
                );
            }
            if !self.owner_groups_include.is_empty() || !self.owner_groups_exclude.is_empty() {
                let outside = (app_uid..)
                    .find(|g| {
                        !Policy::in_groups(&self.owner_groups_include, *g)
                            && !Policy::in_groups(&self.owner_groups_exclude, *g)
                            && !self.proxy_gids.contains(g)
                    })
                    .unwrap_or(app_uid);
                push(
                    format!("owner-group-{outside}-unlisted-out"),
                    Host::LocalPod,
                    app_uid,
                    outside,
                    Dest::Remote(target),
                    target_port,
                    false,
                    0,
                );
            }
            // DNS: each server the app's queries are captured for, over UDP
            // and TCP, from the app and from each proxy identity; with a
            // list of servers, one outside it.
            if self.dns_capture {
                for server in self.dns_servers_for(family) {
                    let dest =
                        if dns_server_is_local(server) { Dest::LoopbackAlias(server) } else { Dest::Remote(server) };
                    for (proto, udp) in [("udp", true), ("tcp", false)] {
                        push(format!("dns-{server}-{proto}"), Host::LocalPod, app_uid, app_gid, dest, 53, udp, 0);
                        for u in &self.proxy_uids {
                            push(
                                format!("proxy-uid-{u}-dns-{server}-{proto}"),
                                Host::LocalPod,
                                *u,
                                app_gid,
                                dest,
                                53,
                                udp,
                                0,
                            );
                        }
                        for g in &self.proxy_gids {
                            push(
                                format!("proxy-gid-{g}-dns-{server}-{proto}"),
                                Host::LocalPod,
                                app_uid,
                                *g,
                                dest,
                                53,
                                udp,
                                0,
                            );
                        }
                    }
                }
                let unlisted = kube_dns(family);
                if !self.dns_capture_all && !self.dns_servers.contains(&unlisted) {
                    push(
                        format!("dns-unlisted-{unlisted}-udp"),
                        Host::LocalPod,
                        app_uid,
                        app_gid,
                        Dest::Remote(unlisted),
                        53,
                        true,
                        0,
                    );
                }
            }
            // Each extra interface: from the host behind it to the pod, and
            // through the pod to the remote pod; from the app out by it.
            for (i, name) in self.pod_links().iter().enumerate() {
                let k = (i + 1) as u8;
                let (at_pod, at_side) = crate::model::topology::TopologyConfig::link_addresses(k, family);
                push(
                    format!("iface-{name}-inbound-8080"),
                    Host::Side(k),
                    65534,
                    65534,
                    Dest::Remote(at_pod),
                    8080,
                    false,
                    k,
                );
                push(
                    format!("iface-{name}-through-to-remote-9090"),
                    Host::Side(k),
                    65534,
                    65534,
                    Dest::Through(remote),
                    9090,
                    false,
                    k,
                );
                if self.kube_virt_interfaces.contains(name) {
                    for ip in self
                        .includes(family)
                        .iter()
                        .filter_map(|c| Cidr::step(c.bounds().0, 1))
                        .filter(|ip| (topo.usable)(*ip))
                    {
                        push(
                            format!("iface-{name}-through-to-{ip}-9090"),
                            Host::Side(k),
                            65534,
                            65534,
                            Dest::Through(ip),
                            9090,
                            false,
                            k,
                        );
                    }
                }
                push(
                    format!("iface-{name}-outbound-9090"),
                    Host::LocalPod,
                    app_uid,
                    app_gid,
                    Dest::Remote(at_side),
                    9090,
                    false,
                    k,
                );
            }
            push("app-to-own-pod".into(), Host::LocalPod, app_uid, app_gid, Dest::OwnPod(pod), 8080, false, 0);
            push("app-to-localhost".into(), Host::LocalPod, app_uid, app_gid, Dest::Loopback, 8080, false, 0);
            push("proxy-to-localhost".into(), Host::LocalPod, puid, pgid, Dest::Loopback, 8080, false, 0);
            // Another lo address, on the edge of the host loopback range.
            if family == Family::Ipv4 {
                let alias = Cidr::step(self.host_loopback_cidr.bounds().1, 1)
                    .filter(|ip| matches!(ip, IpAddr::V4(a) if a.is_loopback()))
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
                push(
                    format!("proxy-to-lo-{alias}"),
                    Host::LocalPod,
                    puid,
                    app_gid,
                    Dest::LoopbackAlias(alias),
                    8080,
                    false,
                    0,
                );
                push(
                    format!("app-to-lo-{alias}"),
                    Host::LocalPod,
                    app_uid,
                    app_gid,
                    Dest::LoopbackAlias(alias),
                    8080,
                    false,
                    0,
                );
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
                out.push(MatrixProbe {
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

    /// The reference rules as a rule source.
    pub fn reference_rules(&self) -> crate::rules::source::RuleSource {
        crate::rules::source::RuleSource::Text {
            label: "reference".into(),
            what: "the reference rules for the policy".into(),
            v4: Some(self.to_restore_for(Family::Ipv4)),
            v6: self.ipv6.then(|| self.to_restore_for(Family::Ipv6)),
        }
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
                        && !crate::model::topology::in_cidr(a, c4)
                }
                IpAddr::V6(a) => {
                    !a.is_loopback()
                        && !a.is_unspecified()
                        && !a.is_multicast()
                        && !crate::model::topology::in_cidr6(a, c6)
                }
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

/// Each port and the one after it (`outbound-5555`, `outbound-5556-beside-5555`), once each.
fn with_neighbours(prefix: &str, ports: &[u16]) -> Vec<(String, u16)> {
    let mut v = Vec::new();
    for p in ports {
        v.push((format!("{prefix}-{p}"), *p));
        v.push((format!("{prefix}-{}-beside-{p}", p.wrapping_add(1)), p.wrapping_add(1)));
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

    fn policy(yaml: &str) -> Policy {
        Policy::parse("p.yaml", yaml).unwrap()
    }

    const REMOTE: Dest = Dest::Remote(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 20)));
    const OWN: Dest = Dest::OwnPod(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 10)));

    fn inbound(port: u16) -> Query {
        Query {
            inbound: true,
            udp: false,
            invalid: false,
            uid: 65534,
            gid: 65534,
            dest: OWN,
            port,
            link: 0,
            source: None,
        }
    }

    fn app(dest: Dest, port: u16) -> Query {
        Query { inbound: false, udp: false, invalid: false, uid: 1000, gid: 1000, dest, port, link: 0, source: None }
    }

    fn ip(s: &str) -> Dest {
        Dest::Remote(s.parse().unwrap())
    }

    /// The sidecar injector's policy (istio-cni's base): the six flows.
    #[test]
    fn the_injector_policy_gives_the_six_flows() {
        let p = policy("inbound_ports: '*'\ninbound_exclude: [15090, 15021, 15020]\noutbound_ranges_include: '*'\noutbound_ports_exclude: [15020]");
        let rows: &[(&str, Query, &[u16])] = &[
            ("1 remote -> pod:8080", inbound(8080), &[15006, 8080]),
            ("2 app -> remote:9090", app(REMOTE, 9090), &[15001, 9090]),
            ("3 scrape :15090", inbound(15090), &[15090]),
            ("4 proxy -> own pod (service to self)", Query { uid: 1337, gid: 1337, ..app(OWN, 8080) }, &[15006, 8080]),
            ("5 proxy -> localhost:15000", Query { uid: 1337, gid: 1337, ..app(Dest::Loopback, 15000) }, &[15000]),
            ("6 agent as 1337 -> istiod", Query { uid: 1337, gid: 1337, ..app(REMOTE, 15012) }, &[15012]),
            ("6 agent as 1000 -> istiod", app(REMOTE, 15012), &[15001, 15012]),
            ("tunnel port never captured inbound", inbound(15008), &[15008]),
            ("app -> own pod is not captured", app(OWN, 8080), &[8080]),
            ("excluded outbound port", app(REMOTE, 15020), &[15020]),
        ];
        for (what, q, want) in rows {
            assert_eq!(oracle(&p, *q), *want, "{what}");
        }
    }

    #[test]
    fn ranges_ports_and_identities_draw_the_boundaries() {
        let p = policy("outbound_ranges_include: [10.0.0.0/8]\noutbound_ranges_exclude: [10.1.0.0/16]\noutbound_ports_include: [31000]\nproxy_uids: [3, 4]\nproxy_gids: [1]");
        let rows: &[(&str, Query, &[u16])] = &[
            ("inside the include", app(ip("10.0.0.1"), 80), &[15001, 80]),
            ("just below it", app(ip("9.255.255.255"), 80), &[80]),
            ("inside the exclude, inside the include", app(ip("10.1.2.3"), 80), &[80]),
            ("outside every range, included port", app(ip("1.1.1.1"), 31000), &[15001, 31000]),
            ("outside every range, port beside it", app(ip("1.1.1.1"), 31001), &[31001]),
            ("second proxy uid is the proxy", Query { uid: 4, ..app(ip("10.0.0.1"), 80) }, &[80]),
            ("second proxy uid to its own pod", Query { uid: 4, ..app(OWN, 8080) }, &[15006, 8080]),
            ("proxy gid alone to its own pod", Query { gid: 1, ..app(OWN, 8080) }, &[15006, 8080]),
            ("no inbound ports: nothing inbound", inbound(8080), &[8080]),
        ];
        for (what, q, want) in rows {
            assert_eq!(oracle(&p, *q), *want, "{what}");
        }
        let lo = policy("outbound_ranges_include: [127.0.0.0/8]\noutbound_ranges_exclude: [10.0.0.0/8]");
        let alias = Dest::LoopbackAlias("127.0.0.2".parse().unwrap());
        assert_eq!(
            oracle(&lo, app(alias, 8080)),
            [15001, 15006, 8080],
            "a loopback range to capture: out, then the proxy's own lo call comes back in"
        );
        assert_eq!(oracle(&lo, app(Dest::Loopback, 8080)), [8080], "127.0.0.1 is still returned");
        assert_eq!(oracle(&lo, app(OWN, 8080)), [8080], "the pod's address is in the excluded range");
        assert_eq!(
            oracle(&p, app(alias, 8080)),
            [8080],
            "without a loopback range, the app's lo traffic is never captured"
        );
        let wide = policy("host_loopback_cidr: 127.0.0.1/8");
        assert_eq!(
            oracle(&wide, Query { uid: 1337, gid: 1337, ..app(alias, 8080) }),
            [8080],
            "inside the host loopback range"
        );
        assert_eq!(
            oracle(&Policy::default(), Query { uid: 1337, gid: 1337, ..app(alias, 8080) }),
            [15006, 8080],
            "outside 127.0.0.1/32"
        );
        let listed = policy("inbound_ports: [32000]\ninbound_exclude: [32000]");
        assert_eq!(
            oracle(&listed, inbound(32000)),
            [15006, 32000],
            "a list ignores inbound_exclude, as istio-iptables does"
        );
        assert_eq!(oracle(&listed, inbound(32001)), [32001]);
    }

    #[test]
    fn owner_groups_choose_whose_traffic_is_captured() {
        let inc = policy("outbound_ranges_include: '*'\nowner_groups_include: [202, 203]");
        let exc = policy("outbound_ranges_include: '*'\nowner_groups_exclude: [888]");
        let rows: &[(&str, &Policy, Query, &[u16])] = &[
            ("an included group is captured", &inc, Query { gid: 203, ..app(REMOTE, 80) }, &[15001, 80]),
            ("a group outside the list is not", &inc, app(REMOTE, 80), &[80]),
            ("groups do not touch lo", &inc, Query { uid: 1337, ..app(OWN, 8080) }, &[15006, 8080]),
            ("an excluded group is not captured", &exc, Query { gid: 888, ..app(REMOTE, 80) }, &[80]),
            ("any other group is", &exc, app(REMOTE, 80), &[15001, 80]),
        ];
        for (what, p, q, want) in rows {
            assert_eq!(oracle(p, *q), *want, "{what}");
        }
        let named = policy("owner_groups_include: [no-such-group-here, 202]");
        let e = named.check_groups("p.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("p.yaml: owner group `no-such-group-here` does not exist") && e.contains("groupadd"),
            "{e}"
        );
        assert!(policy("owner_groups_exclude: [root, 5]").check_groups("p.yaml").is_ok(), "root is on every machine");
        let r = inc.to_restore_for(Family::Ipv4);
        assert!(r.contains("-A ISTIO_OUTPUT -m owner ! --gid-owner 202 -m owner ! --gid-owner 203 -j RETURN"), "{r}");
    }

    #[test]
    fn cidrs_know_their_edges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert_eq!(c.bounds(), ("10.0.0.0".parse().unwrap(), "10.255.255.255".parse().unwrap()));
        assert!(c.contains("10.9.9.9".parse().unwrap()) && !c.contains("11.0.0.0".parse().unwrap()));
        assert!(!c.contains("::a00:1".parse().unwrap()));
        let six = Cidr::parse("2001:db8::/32").unwrap();
        assert_eq!(six.bounds().1, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap());
        assert_eq!(Cidr::step("10.0.0.0".parse().unwrap(), -1), Some("9.255.255.255".parse().unwrap()));
        assert_eq!(Cidr::step("255.255.255.255".parse().unwrap(), 1), None);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().bounds().1, "255.255.255.255".parse::<IpAddr>().unwrap());
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("nope/8").is_none());
    }

    #[test]
    fn bad_policies_say_where() {
        let e = Policy::parse("p.yaml", "inbound_ports: '*'\ninbound_exclud: [1]").unwrap_err().to_string();
        assert!(e.starts_with("p.yaml:2:1") && e.contains("inbound_exclud"), "{e}");
        let e = Policy::parse("p.yaml", "outbound_ranges_include: [10.0.0.0/99]").unwrap_err().to_string();
        assert!(e.contains("not an address range"), "{e}");
        let e = Policy::parse("p.yaml", "inbound_ports: all").unwrap_err().to_string();
        assert!(e.contains("p.yaml:"), "{e}");
        let e = Policy::parse("p.yaml", "proxy_uids: []\nproxy_gids: []").unwrap_err().to_string();
        assert!(e.contains("captured again"), "{e}");
        let e = Policy::parse("p.yaml", "owner_groups_include: [[1]]").unwrap_err().to_string();
        assert!(e.contains("p.yaml:"), "{e}");
    }

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
    }

    /// The reference rules follow the policy's flags: the lines a generator
    /// author would look for are there, in order.
    #[test]
    fn reference_rules_carry_each_flag() {
        let p = policy("inbound_ports: '*'\ninbound_exclude: [15090]\noutbound_ports_exclude: [5555]\noutbound_ranges_exclude: [10.1.0.0/16, '2001:db8::/32']\noutbound_ranges_include: '*'\nproxy_uids: [3, 4]");
        let r = p.to_restore_for(Family::Ipv4);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("`{s}` missing from\n{r}"));
        assert!(pos("--dport 15008 -j RETURN") < pos("--dport 15090 -j RETURN"));
        assert!(pos("--dport 5555 -j RETURN") < pos("-s 127.0.0.6/32"));
        assert!(pos("--uid-owner 4 -j ISTIO_IN_REDIRECT") < pos("-A ISTIO_OUTPUT -o lo -j RETURN"));
        assert!(pos("-d 10.1.0.0/16 -j RETURN") < pos("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert!(!r.contains("2001:db8"), "IPv6 ranges stay out of the IPv4 rules");
    }

    #[test]
    fn dns_capture_sends_the_apps_queries_to_the_agent() {
        let listed = policy("dns_capture: true\ndns_servers: [127.0.0.53]\nproxy_uids: [3]\nproxy_gids: [1]");
        let all = policy("dns_capture: true\ndns_capture_all: true");
        let none = policy("dns_capture: true");
        let local = Dest::LoopbackAlias("127.0.0.53".parse().unwrap());
        let udp = |q: Query| Query { udp: true, ..q };
        let rows: &[(&str, &Policy, Query, &[u16])] = &[
            ("the app's UDP query to a listed server", &listed, udp(app(local, 53)), &[15053, 53]),
            ("the app's TCP query to it, over lo", &listed, app(local, 53), &[15053, 53]),
            ("the proxy uid's query is its own", &listed, udp(Query { uid: 3, ..app(local, 53) }), &[53]),
            (
                "the proxy gid's TCP query over lo is not redirected inbound",
                &listed,
                Query { gid: 1, ..app(local, 53) },
                &[53],
            ),
            ("a server not listed", &listed, udp(app(REMOTE, 53)), &[53]),
            ("another UDP port", &listed, udp(app(local, 54)), &[54]),
            ("capture all: any server", &all, udp(app(REMOTE, 53)), &[15053, 53]),
            ("no server, not all: nothing", &none, udp(app(REMOTE, 53)), &[53]),
        ];
        for (what, p, q, want) in rows {
            assert_eq!(oracle(p, *q), *want, "{what}");
        }
        let r = listed.to_restore_for(Family::Ipv4);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("`{s}` missing from\n{r}"));
        assert!(
            pos("--uid-owner 3 -j RETURN") < pos("-p udp -m udp --dport 53 -d 127.0.0.53 -j REDIRECT --to-ports 15053"),
            "the proxy's own queries return first"
        );
        assert!(pos("multiport ! --dports 53,15008 -m owner --gid-owner 1") > 0);
        assert!(
            pos("*raw") > pos("*nat")
                && pos("--sport 15053 -m owner --gid-owner 1 -j CT --zone 2")
                    < pos("--dport 53 -m owner --gid-owner 1 -j CT --zone 1")
        );
        assert!(
            pos("--dport 53 -m owner --gid-owner 1 -j CT --zone 1")
                < pos("-A OUTPUT -p udp -m udp --dport 53 -d 127.0.0.53 -j CT --zone 2"),
            "the agent's queries take zone 1 before the app's rule"
        );
        assert!(!listed.to_restore_for(Family::Ipv6).contains("53"), "no IPv6 server listed: no IPv6 DNS rules");
        assert!(all
            .to_restore_for(Family::Ipv4)
            .contains("-A ISTIO_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"));
        assert!(
            dns_server_is_local("::127.0.0.53".parse().unwrap()) && !dns_server_is_local("10.96.0.10".parse().unwrap())
        );
    }

    #[test]
    fn tproxy_captures_inbound_in_mangle_and_needs_a_proxy_gid() {
        let p = policy("mode: TPROXY\ninbound_ports: '*'\ntproxy_mark: 7\ntproxy_table: 70");
        let r = p.to_restore_for(Family::Ipv4);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("`{s}` missing from\n{r}"));
        assert!(
            pos("*mangle") < pos("-A ISTIO_TPROXY -p tcp -j TPROXY --on-port 15006 --tproxy-mark 7/0xffffffff")
                && pos("-A ISTIO_TPROXY") < pos("*nat")
        );
        assert!(
            pos("-A ISTIO_INBOUND -p tcp -i lo -j RETURN") < pos("-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY"),
            "lo is never TPROXY'd (istio#31095)"
        );
        assert!(
            pos("--ctstate RELATED,ESTABLISHED -j RETURN") < pos("-j ISTIO_TPROXY\n"),
            "replies to the pod's own connections pass before TPROXY"
        );
        assert!(!r.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"), "no nat inbound capture");
        assert!(
            pos("-A ISTIO_OUTPUT -m mark --mark 7 -j RETURN") < pos("--gid-owner 1337 -j ISTIO_IN_REDIRECT"),
            "the transparent upstream is not redirected back"
        );
        assert_eq!(p.tproxy(), Some(crate::model::topology::Tproxy { mark: 7, table: 70 }));
        assert_eq!((p.profile().proxy.uid, p.profile().proxy.gid), (0, 1337), "the injector's TPROXY identity");
        let e = Policy::parse("p.yaml", "mode: TPROXY\nproxy_gids: []").unwrap_err().to_string();
        assert!(e.contains("only a gid tells its traffic apart"), "{e}");
        assert_eq!(oracle(&p, inbound(8080)), [15006, 8080]);
        assert_eq!(oracle(&p, inbound(15008)), [15008], "the tunnel port is never captured, whatever the mode");
    }

    #[test]
    fn interfaces_decide_before_ports_and_ranges() {
        let p = policy("inbound_ports: '*'\noutbound_ranges_include: [10.0.0.0/8]\nexclude_interfaces: [nic9]\nkube_virt_interfaces: [eth1]");
        assert_eq!(p.pod_links(), ["nic9", "eth1"], "excluded first, then KubeVirt, eth0 never");
        let on = |link: u8, q: Query| Query { link, ..q };
        let side_pod = Dest::Remote("172.31.2.1".parse().unwrap());
        let rows: &[(&str, Query, &[u16])] = &[
            ("inbound on eth0 is captured", inbound(8080), &[15006, 8080]),
            (
                "inbound on an excluded interface is not",
                on(1, Query { dest: Dest::Remote("172.31.1.1".parse().unwrap()), ..inbound(8080) }),
                &[8080],
            ),
            ("the app out by an excluded interface is not", on(1, app(ip("10.0.0.9"), 80)), &[80]),
            (
                "a VM's connection through the pod to an included range",
                on(2, Query { dest: Dest::Through("10.244.0.20".parse().unwrap()), ..inbound(9090) }),
                &[15001, 9090],
            ),
            (
                "a VM's connection through the pod elsewhere",
                on(2, Query { dest: Dest::Through("192.0.2.1".parse().unwrap()), ..inbound(9090) }),
                &[9090],
            ),
            (
                "a VM's connection to the pod, outside the ranges",
                on(2, Query { dest: side_pod, ..inbound(8080) }),
                &[8080],
            ),
        ];
        for (what, q, want) in rows {
            assert_eq!(oracle(&p, *q), *want, "{what}");
        }
        let all = policy("outbound_ranges_include: '*'\nkube_virt_interfaces: [eth1]");
        assert_eq!(
            oracle(&all, on(1, Query { dest: Dest::Remote("172.31.1.1".parse().unwrap()), ..inbound(8080) })),
            [15001, 15006, 8080],
            "to the pod itself: out, then the proxy's own call back in"
        );
        let virt0 = policy("inbound_ports: [4000]\nkube_virt_interfaces: [eth0]");
        assert_eq!(oracle(&virt0, inbound(4000)), [4000], "eth0 as a KubeVirt interface: nothing inbound is captured");
        assert!(
            !virt0.to_restore_for(Family::Ipv4).contains("ISTIO_INBOUND -p tcp -m tcp --dport 4000"),
            "so no inbound rule is written"
        );
        let r = p.to_restore_for(Family::Ipv4);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("`{s}` missing from\n{r}"));
        assert!(pos("-A PREROUTING -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT") < pos("-A PREROUTING -i eth1 -j RETURN"));
        assert!(pos("-A PREROUTING -i nic9 -j RETURN") < pos("-A PREROUTING -p tcp -j ISTIO_INBOUND"));
        assert!(pos("-A OUTPUT -o nic9 -j RETURN") < pos("-A OUTPUT -j ISTIO_OUTPUT"));
    }

    #[test]
    fn invalid_segments_are_reset_unless_dropped() {
        let drop = policy("drop_invalid: true");
        assert_eq!(invalid_fate(&drop), crate::model::scenario::DROPPED);
        assert_eq!(invalid_fate(&Policy::default()), crate::model::scenario::RESET);
        assert_eq!(
            oracle(&drop, Query { invalid: true, ..inbound(8080) }),
            [8080],
            "never NATed to the inbound listener"
        );
        let r = drop.to_restore_for(Family::Ipv4);
        assert!(
            r.starts_with("*mangle\n") && r.contains("-A PREROUTING -m conntrack --ctstate INVALID -j DROP"),
            "{r}"
        );
        let t = policy("drop_invalid: true\nmode: TPROXY\ninbound_ports: '*'").to_restore_for(Family::Ipv4);
        assert_eq!(t.matches("*mangle").count(), 1, "one mangle table under TPROXY:\n{t}");
    }

    /// A rule no packet can reach would be a mutant no probe can catch; the
    /// reference rules write none.
    #[test]
    fn reference_rules_hold_no_dead_rule() {
        let none = policy("inbound_ports: [32000]").to_restore_for(Family::Ipv4);
        assert!(!none.contains("ISTIO_REDIRECT -p tcp"), "nothing jumps to ISTIO_REDIRECT:\n{none}");
        assert!(!none.contains("-A ISTIO_OUTPUT -o lo -j RETURN"), "nothing after lo captures:\n{none}");
        assert!(!none.contains("--dport 15008 -j RETURN"), "a list never captures the tunnel port anyway:\n{none}");
        let lo = policy("outbound_ranges_include: [127.0.0.0/8]");
        let r = lo.to_restore_for(Family::Ipv4);
        assert!(
            lo.judges_lo(Family::Ipv4)
                && !r.contains("-A ISTIO_OUTPUT -o lo -j RETURN")
                && r.contains("-d 127.0.0.0/8 -j ISTIO_REDIRECT"),
            "a loopback range to capture needs lo judged:\n{r}"
        );
        let some = policy("outbound_ports_include: [31000]").to_restore_for(Family::Ipv4);
        assert!(
            some.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001")
                && some.contains("-A ISTIO_OUTPUT -o lo -j RETURN"),
            "{some}"
        );
    }

    fn under(mesh: &str, yaml: &str) -> Policy {
        Policy::parse_for("p.yaml", yaml, &crate::model::profile::Profile::builtin(mesh).unwrap()).unwrap()
    }

    #[test]
    fn fields_left_out_take_the_meshs_profile() {
        let l = under("linkerd", "inbound_ports: '*'");
        assert_eq!(l.mesh, Mesh::Linkerd);
        assert_eq!((l.outbound_port, l.inbound_port, l.tunnel_port), (4140, 4143, None));
        assert_eq!(
            (l.proxy_uids.clone(), l.proxy_gids.clone()),
            (vec![2102], vec![]),
            "a gid only where the mesh matches one"
        );
        let i = under("istio", "");
        assert_eq!((i.proxy_gids, i.tunnel_port), (vec![1337], Some(15008)));
        let named = under("kuma", "mesh: kuma\noutbound_port: 12345");
        assert_eq!((named.outbound_port, named.inbound_port), (12345, 15006));
        let e = Policy::parse_for("p.yaml", "mesh: kuma", &crate::model::profile::Profile::builtin("linkerd").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("mesh: kuma but the profile is linkerd"), "{e}");
        let e = Policy::parse_for(
            "p.yaml",
            "mesh: consul\nmode: TPROXY",
            &crate::model::profile::Profile::builtin("consul").unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only Istio's generators write TPROXY"), "{e}");
        let consul = crate::model::profile::Profile::builtin("consul").unwrap();
        let clash = under("consul", "outbound_port: 21000");
        let e = clash.check_profile("p.yaml", &consul).unwrap_err().to_string();
        assert!(e.contains("outbound_port 21000 is also the consul profile's health port"), "{e}");
        assert!(under("consul", "").check_profile("p.yaml", &consul).is_ok());
        let e = Policy::parse("p.yaml", "inbound_exclude: [ssh]").unwrap_err().to_string();
        assert!(e.contains("`ssh` is not a port or a range"), "{e}");
    }

    /// The same configuration means other traffic under each mesh's rules.
    #[test]
    fn each_mesh_treats_the_proxy_and_lo_its_own_way() {
        let proxy_to_own = Query { uid: 1337, gid: 1337, ..app(OWN, 8080) };
        let all = "inbound_ports: '*'\noutbound_ranges_include: '*'\nproxy_uids: [1337]";
        let rows: &[(&str, &[u16], &[u16])] = &[
            // mesh, the proxy calling its own pod, the app calling its own pod
            ("istio", &[15006, 8080], &[8080]),
            ("kuma", &[15006, 8080], &[8080]),
            ("linkerd", &[8080], &[8080]),
            ("consul", &[8080], &[15001, 8080]),
        ];
        for (mesh, proxy, app_own) in rows {
            let p = under(mesh, &format!("{all}\ninbound_port: 15006\noutbound_port: 15001"));
            assert_eq!(oracle(&p, proxy_to_own), *proxy, "{mesh}: the proxy to its own pod");
            assert_eq!(oracle(&p, app(OWN, 8080)), *app_own, "{mesh}: the app to its own pod");
            assert_eq!(oracle(&p, app(Dest::Loopback, 8080)), [8080], "{mesh}: 127.0.0.1 is never captured");
            let r = p.to_restore_for(Family::Ipv4);
            assert_eq!(
                r.contains("-j ISTIO_IN_REDIRECT\n") && r.contains("-o lo -p tcp"),
                proxy.len() > 1,
                "{mesh}:\n{r}"
            );
            assert_eq!(r.contains("-A ISTIO_OUTPUT -o lo -j RETURN"), app_own.len() == 1, "{mesh}:\n{r}");
        }
        // Kuma returns excluded ranges before the proxy's lo redirect; Istio after.
        let x = "inbound_ports: '*'\noutbound_ranges_include: '*'\noutbound_ranges_exclude: [10.244.0.0/24]\nproxy_uids: [1337]";
        assert_eq!(oracle(&under("kuma", x), proxy_to_own), [8080]);
        assert_eq!(oracle(&under("istio", x), proxy_to_own), [15006, 8080]);
        let r = under("kuma", x).to_restore_for(Family::Ipv4);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("`{s}` missing from\n{r}"));
        assert!(pos("-A ISTIO_OUTPUT -d 10.244.0.0/24 -j RETURN") < pos("--uid-owner 1337 -j ISTIO_IN_REDIRECT"));
        assert_eq!(r.matches("-d 10.244.0.0/24").count(), 1, "{r}");
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
    #[test]
    fn osm_excludes_ports_after_the_proxys_lo_redirect() {
        // exclusions-inclusions.sh: `-o lo ! -d 127.0.0.1/32 --uid-owner 1500
        // -j OSM_PROXY_IN_REDIRECT` comes before `--dports 10,20 -j RETURN`.
        let yaml = "inbound_ports: '*'\noutbound_ranges_include: '*'\noutbound_ports_exclude: [10]\nexclude_interfaces: [eth0]";
        let o = under("osm", yaml);
        assert_eq!((o.mesh, o.outbound_port, o.inbound_port, o.tunnel_port), (Mesh::Osm, 15001, 15003, None));
        let proxy_to_own = |p: &Policy, port| oracle(p, Query { uid: p.proxy_uids[0], ..app(OWN, port) });
        assert_eq!(proxy_to_own(&o, 10), [15003, 10], "OSM: the lo redirect wins over the port exclusion");
        assert_eq!(oracle(&o, app(REMOTE, 10)), [10], "the app's call to an excluded port is not captured");
        let i = under("istio", yaml);
        assert_eq!(proxy_to_own(&i, 10), [10], "Istio: the port exclusion comes first");
        // An excluded eth0 returns what leaves by eth0, never lo traffic.
        assert_eq!(proxy_to_own(&o, 8080), [15003, 8080], "over lo, not eth0");
        assert_eq!(oracle(&o, app(REMOTE, 9090)), [9090], "leaves by the excluded eth0");
        let r = o.to_restore_for(Family::Ipv4);
        let (lo, port) = (r.find("--uid-owner 1500 -j ISTIO_IN_REDIRECT"), r.find("--dport 10 -j RETURN"));
        assert!(lo.is_some() && port.is_some() && lo < port, "the reference follows OSM's order:\n{r}");
    }
}

//! Mesh profiles: where a mesh's sidecar listens, who it runs as, and where
//! its control plane is. Scenarios name ports by role ("the outbound capture
//! port", "the stats port"); a profile gives each role its number, so one
//! scenario set checks Istio, Linkerd, Kuma and Consul alike.
//!
//! Built-in profiles live in `scenarios/profiles/` (embedded at build time),
//! each with the rule set its mesh's generator writes for the default
//! configuration; `--profile FILE` loads another.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::base::net::Family;
use crate::rules::istio::{IstioCapture, Shape};
use crate::rules::source::RuleSource;
use crate::{Error, Result};

/// Built-in profiles whose rule set the harness generates instead of
/// reading files: the built-in generator writes Istio's (`sidecheck rules`).
/// Only the built-in list says so: a profile file has the rules it names.
const GENERATED_RULES: &[&str] = &["istio"];

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_profiles.rs"));
}

/// A port a scenario can name by what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The proxy's outbound capture listener (Istio 15001).
    Outbound,
    /// The proxy's inbound capture listener (Istio 15006).
    Inbound,
    /// The proxy's admin listener (Istio 15000).
    Admin,
    /// Where Prometheus scrapes the proxy (Istio 15090).
    Stats,
    /// The proxy's health/readiness listener (Istio 15021).
    Health,
    /// The control plane's port the proxy dials for config (Istiod 15012).
    ControlPlane,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Outbound, Role::Inbound, Role::Admin, Role::Stats, Role::Health, Role::ControlPlane];

    pub fn name(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::Inbound => "inbound",
            Role::Admin => "admin",
            Role::Stats => "stats",
            Role::Health => "health",
            Role::ControlPlane => "control-plane",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// A port as a scenario writes it: a number, or a role the profile resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Role(Role),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Role(r) => f.write_str(r.name()),
        }
    }
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a port number (1-65535) or a role: {}", Role::ALL.map(Role::name).join(", "))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<PortRef, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRef::Number(p)),
                    _ => Err(E::custom(format!(
                        "port {v} is out of range: use 1-65535 or a role ({})",
                        Role::ALL.map(Role::name).join(", ")
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<PortRef, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom(format!("port {v} is negative")))?)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<PortRef, E> {
                Role::parse(v).map(PortRef::Role).ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a port role: use a number or one of {}",
                        Role::ALL.map(Role::name).join(", ")
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A uid as a scenario writes it: a number, or `proxy` (the profile's proxy uid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UidRef {
    Number(u32),
    Proxy,
}

impl<'de> Deserialize<'de> for UidRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = UidRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a uid number or `proxy`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<UidRef, E> {
                crate::model::validate::uid(v).map(UidRef::Number).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<UidRef, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom(format!("uid {v} is negative")))?)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<UidRef, E> {
                match v {
                    "proxy" => Ok(UidRef::Proxy),
                    _ => {
                        Err(E::custom(format!("`{v}` is not a uid: use a number or `proxy` (the profile's proxy uid)")))
                    }
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Which address a listener binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bind {
    /// 127.0.0.1 / ::1 only.
    #[default]
    Loopback,
    /// Every address (0.0.0.0 / ::).
    Any,
}

/// Where the proxy's inbound listener sends a captured connection on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboundUpstream {
    /// The address the client dialled, the pod's own (Istio, Kuma, Linkerd >= 2.11).
    #[default]
    OriginalDestination,
    /// 127.0.0.1 / ::1 with the original port (OSM, Consul's local_service_address).
    Loopback,
}

/// Where the app in the local pod listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppBind {
    /// Every address (0.0.0.0 / ::): reachable on the pod address and on loopback.
    #[default]
    Any,
    /// The pod address only, as the apps OSM's PodIP mode is for: a proxy
    /// dialling 127.0.0.1 reaches it only if the rules DNAT that to the pod.
    PodAddress,
}

/// The source address the proxy's inbound upstream connections use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Passthrough {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// What the proxy is called in rule paths and server names (`envoy`).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub outbound: u16,
    pub inbound: u16,
    /// A separate IPv6 inbound port, when the mesh has one.
    #[serde(default)]
    pub inbound_ipv6: Option<u16>,
    pub admin: u16,
    #[serde(default)]
    pub admin_bind: Bind,
    pub stats: u16,
    pub health: u16,
    /// Where inbound connections go on to: the original destination or loopback.
    #[serde(default)]
    pub inbound_upstream: InboundUpstream,
    /// The source those inbound upstream connections bind (Istio 127.0.0.6 /
    /// ::6). Absent: the proxy connects without choosing its source.
    #[serde(default)]
    pub passthrough: Option<Passthrough>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// The server name probes that reach it report (`istiod`).
    pub name: String,
    /// Every port it listens on.
    pub ports: Vec<u16>,
    /// The one the proxy (or its agent) dials for configuration.
    pub xds: u16,
}

/// The mesh's own rule set for its default configuration, by file name
/// beside the profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFiles {
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
}

/// Where a fact in the profile comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    pub fact: String,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// The mesh's name as reports write it (`OSM`, `Linkerd`); default: the
    /// name, capitalized.
    #[serde(default)]
    pub display: Option<String>,
    pub description: String,
    pub proxy: Proxy,
    pub control_plane: ControlPlane,
    /// Where the local app listens (default: every address).
    #[serde(default)]
    pub app_bind: AppBind,
    #[serde(default)]
    pub rules: Option<RuleFiles>,
    /// Scenarios' `expect.path` describes this profile's rules (Istio's: the
    /// built-in reference rules); under any other profile only
    /// `expect.paths.<label>` names a path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expect_path: bool,
    pub facts: Vec<Fact>,
    /// Where it was loaded from, for messages.
    #[serde(skip)]
    pub file: String,
    /// The rule set's text, read when the profile was loaded.
    #[serde(skip)]
    pub rule_texts: (Option<String>, Option<String>),
    /// Its rule set is the built-in generator's (see [`GENERATED_RULES`]).
    #[serde(skip)]
    pub generated_rules: bool,
}

impl Profile {
    /// Parse a profile; `read` fetches a rule file named in it.
    fn parse(file: String, text: &str, read: impl Fn(&str) -> Result<String>) -> Result<Profile> {
        let mut p: Profile = crate::base::yaml::parse(&file, text)?;
        let invalid = |message: String| Error::ScenarioInvalid { file: file.clone(), message };
        if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid(format!(
                "name `{}`: use letters, digits and `-` (it names rule paths in scenarios)",
                p.name
            )));
        }
        if p.control_plane.ports.is_empty() || !p.control_plane.ports.contains(&p.control_plane.xds) {
            return Err(invalid(format!(
                "control_plane.xds {} must be one of control_plane.ports {:?}",
                p.control_plane.xds, p.control_plane.ports
            )));
        }
        let x = &p.proxy;
        let capture = [Some(x.outbound), Some(x.inbound), x.inbound_ipv6];
        for served in [x.admin, x.stats, x.health] {
            if capture.contains(&Some(served)) {
                return Err(invalid(format!(
                    "proxy port {served} is both a capture listener and a served one: give each its own port"
                )));
            }
        }
        if x.outbound == x.inbound || Some(x.outbound) == x.inbound_ipv6 {
            return Err(invalid(format!("proxy.outbound and proxy.inbound are both {}: they must differ", x.outbound)));
        }
        if p.facts.is_empty() {
            return Err(invalid("facts is empty: say where each number comes from".into()));
        }
        if let Some(r) = &p.rules {
            if r.ipv4.is_none() && r.ipv6.is_none() {
                return Err(invalid("rules names no file: give rules.ipv4 and/or rules.ipv6".into()));
            }
            p.rule_texts = (r.ipv4.as_deref().map(&read).transpose()?, r.ipv6.as_deref().map(&read).transpose()?);
        }
        p.file = file;
        Ok(p)
    }

    /// The built-in profile `name`.
    pub fn builtin(name: &str) -> Result<Profile> {
        let file = format!("{name}.yaml");
        let Some((_, text)) = builtin::FILES.iter().find(|(n, _)| *n == file) else {
            return Err(Error::config(format!(
                "no built-in profile `{name}`: use one of {}, or give a profile file (*.yaml)",
                Profile::builtin_names().join(", ")
            )));
        };
        let mut p = Profile::parse(format!("scenarios/profiles/{file}"), text, |rel| {
            builtin::FILES.iter().find(|(n, _)| *n == rel).map(|(_, t)| t.to_string()).ok_or_else(|| {
                Error::config(format!(
                    "built-in profile {name} names rules file {rel}, which is not in scenarios/profiles/"
                ))
            })
        })?;
        p.generated_rules = p.rules.is_none() && GENERATED_RULES.contains(&name);
        Ok(p)
    }

    pub fn builtin_names() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = builtin::FILES.iter().filter_map(|(n, _)| n.strip_suffix(".yaml")).collect();
        // By name, not file name: `kuma` before `kuma-legacy`.
        names.sort_unstable();
        names
    }

    /// The default: Istio's sidecar.
    pub fn istio() -> Profile {
        Profile::builtin("istio").expect("the built-in istio profile is checked by unit tests")
    }

    /// A built-in name, or a path to a profile file.
    pub fn load(spec: &str) -> Result<Profile> {
        let path = Path::new(spec);
        // (A directory of that name in the working directory is not a profile.)
        if !spec.ends_with(".yaml") && !spec.ends_with(".yml") && !path.is_file() {
            return Profile::builtin(spec);
        }
        let text = crate::base::bounded::read_text(path, crate::base::bounded::YAML_MAX)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Profile::parse(path.display().to_string(), &text, |rel| {
            let p: PathBuf = dir.join(rel);
            crate::base::bounded::read_text(&p, crate::base::bounded::YAML_MAX)
        })
    }

    /// The number a role stands for, in `family`.
    pub fn port(&self, role: Role, family: Family) -> u16 {
        let x = &self.proxy;
        match role {
            Role::Outbound => x.outbound,
            Role::Inbound => match family {
                Family::Ipv6 => x.inbound_ipv6.unwrap_or(x.inbound),
                Family::Ipv4 => x.inbound,
            },
            Role::Admin => x.admin,
            Role::Stats => x.stats,
            Role::Health => x.health,
            Role::ControlPlane => self.control_plane.xds,
        }
    }

    pub fn resolve(&self, p: PortRef, family: Family) -> u16 {
        match p {
            PortRef::Number(n) => n,
            PortRef::Role(r) => self.port(r, family),
        }
    }

    pub fn uid(&self, u: UidRef) -> u32 {
        match u {
            UidRef::Number(n) => n,
            UidRef::Proxy => self.proxy.uid,
        }
    }

    /// The proxy's served (terminal) listeners: (server name, port, bind),
    /// one per distinct port; roles sharing a port share the first role's
    /// listener (Linkerd serves admin, metrics and health on 4191).
    pub fn served(&self) -> Vec<(String, u16, Bind)> {
        let x = &self.proxy;
        let mut out: Vec<(String, u16, Bind)> = Vec::new();
        for (role, port, bind) in
            [("admin", x.admin, x.admin_bind), ("stats", x.stats, Bind::Any), ("health", x.health, Bind::Any)]
        {
            match out.iter_mut().find(|(_, p, _)| *p == port) {
                Some(existing) => {
                    if bind == Bind::Any {
                        existing.2 = Bind::Any;
                    }
                }
                None => out.push((format!("{}-{role}", x.name), port, bind)),
            }
        }
        out
    }

    /// The server name a scenario's `server:` stands for: a role (`admin`,
    /// `stats`, `health`, `control-plane`) or a literal name.
    pub fn server_name(&self, server: &str) -> String {
        match Role::parse(server) {
            Some(Role::ControlPlane) => self.control_plane.name.clone(),
            Some(role @ (Role::Admin | Role::Stats | Role::Health)) => {
                let port = self.port(role, Family::Ipv4);
                self.served().into_iter().find(|(_, p, _)| *p == port).map(|(n, _, _)| n).unwrap_or_default()
            }
            _ => server.to_string(),
        }
    }

    /// The mesh's name for reports.
    pub fn display_name(&self) -> String {
        self.display.clone().unwrap_or_else(|| {
            let mut c = self.name.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        })
    }

    /// The profile's own rule set, the same way for every mesh: the rule
    /// files it names, or the generated rules of a built-in profile (in
    /// `shape`, which only the built-in generator has).
    pub fn own_rules(&self, shape: Shape) -> Option<RuleSource> {
        match self.rules() {
            Some(r) => Some(r),
            None if self.generated_rules => Some(RuleSource::Builtin(IstioCapture::default_for(shape))),
            None => None,
        }
    }

    /// The rule set the profile's files hold, when it names any.
    pub fn rules(&self) -> Option<RuleSource> {
        let (v4, v6) = self.rule_texts.clone();
        (v4.is_some() || v6.is_some()).then(|| RuleSource::Text {
            label: self.name.clone(),
            what: format!("the {} profile's rules", self.name),
            v4,
            v6,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_loads_with_rules_and_sources() {
        let names = Profile::builtin_names();
        // Every profile file in scenarios/profiles/ is built in.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".yaml").map(str::to_string))
            .collect();
        on_disk.sort_unstable();
        assert!(on_disk.contains(&"istio".to_string()), "{on_disk:?}");
        assert_eq!(names, on_disk, "built-in profiles vs {}", dir.display());
        // One profile is the one `expect.path` describes: the default.
        assert_eq!(names.iter().filter(|n| Profile::builtin(n).unwrap().expect_path).count(), 1, "{names:?}");
        for n in names {
            let p = Profile::builtin(n).unwrap();
            assert_eq!(p.name, n);
            // The default's rule set is the built-in reference generator.
            assert_eq!(p.rules().is_some(), !p.expect_path, "{n}: rule set");
            assert!(p.facts.iter().all(|f| !f.source.trim().is_empty()), "{n}: a fact without a source");
        }
    }

    #[test]
    fn roles_resolve_per_profile_and_family() {
        let istio = Profile::istio();
        assert_eq!(istio.port(Role::Outbound, Family::Ipv4), 15001);
        assert_eq!(istio.port(Role::Stats, Family::Ipv6), 15090);
        assert_eq!(istio.server_name("stats"), "envoy-stats");
        assert_eq!(istio.server_name("control-plane"), "istiod");
        assert_eq!(istio.server_name("local-app"), "local-app");
        // Kuma >= 2.7 sends IPv6 inbound to the IPv4 port; before, to 15010.
        let kuma = Profile::builtin("kuma").unwrap();
        assert_eq!(kuma.port(Role::Inbound, Family::Ipv4), 15006);
        assert_eq!(kuma.port(Role::Inbound, Family::Ipv6), 15006);
        let legacy = Profile::builtin("kuma-legacy").unwrap();
        assert_eq!(legacy.port(Role::Inbound, Family::Ipv6), 15010);
        assert!(kuma.rule_texts.1.as_deref().is_some_and(|t| t.contains("--to-ports 15006") && !t.contains("15010")));
        // OSM hands inbound connections to loopback with no source of its own.
        let osm = Profile::builtin("osm").unwrap();
        assert_eq!((osm.proxy.inbound_upstream, osm.proxy.passthrough.clone()), (InboundUpstream::Loopback, None));
        assert_eq!(osm.port(Role::Inbound, Family::Ipv4), 15003);
        assert_eq!(osm.app_bind, AppBind::Any);
        assert!(osm.rule_texts.1.is_none(), "OSM writes no IPv6 rules");
        assert_eq!(Profile::builtin("osm-podip").unwrap().app_bind, AppBind::PodAddress);
        assert_eq!(istio.proxy.inbound_upstream, InboundUpstream::OriginalDestination);
        let linkerd = Profile::builtin("linkerd").unwrap();
        // One listener serves admin, metrics and health: all three name it.
        assert_eq!(linkerd.served().len(), 1);
        assert_eq!(linkerd.server_name("stats"), linkerd.server_name("admin"));
        assert_eq!(linkerd.proxy.uid, 2102);
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let base = Profile::builtin("istio").unwrap();
        let text = serde_norway::to_string(&base).unwrap();
        let no_rules = |_: &str| -> Result<String> { Ok(String::new()) };
        let clash = text.replace("admin: 15000", "admin: 15001");
        let e = Profile::parse("p.yaml".into(), &clash, no_rules).unwrap_err().to_string();
        assert!(e.contains("15001 is both a capture listener and a served one"), "{e}");
        let typo = text.replace("outbound: 15001", "outbound: 15001\n  outbund: 1");
        let e = Profile::parse("p.yaml".into(), &typo, no_rules).unwrap_err().to_string();
        assert!(e.contains("p.yaml:") && e.contains("outbund"), "{e}");
        let bad_upstream = text.replace("inbound_upstream: original-destination", "inbound_upstream: pod");
        let e = Profile::parse("p.yaml".into(), &bad_upstream, no_rules).unwrap_err().to_string();
        assert!(e.contains("p.yaml:") && e.contains("original-destination") && e.contains("loopback"), "{e}");
        let e = Profile::builtin("nope").unwrap_err().to_string();
        assert!(e.contains("no built-in profile `nope`") && e.contains("linkerd"), "{e}");
    }

    #[test]
    fn port_refs_parse_numbers_and_roles_and_reject_the_rest() {
        let ok: Vec<PortRef> = serde_norway::from_str("[15001, outbound, control-plane]").unwrap();
        assert_eq!(ok, [PortRef::Number(15001), PortRef::Role(Role::Outbound), PortRef::Role(Role::ControlPlane)]);
        let e = serde_norway::from_str::<Vec<PortRef>>("[outbund]").unwrap_err().to_string();
        assert!(e.contains("`outbund` is not a port role"), "{e}");
        let e = serde_norway::from_str::<Vec<PortRef>>("[70000]").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        let u: Vec<UidRef> = serde_norway::from_str("[1000, proxy]").unwrap();
        assert_eq!(u, [UidRef::Number(1000), UidRef::Proxy]);
        assert!(serde_norway::from_str::<UidRef>("envoy").is_err());
    }
}

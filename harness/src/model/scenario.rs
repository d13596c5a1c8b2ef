//! Scenarios: one traffic flow per YAML file, schema-checked (unknown keys
//! are errors, reported with file:line:column).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

use crate::base::net::Family;
use crate::model::profile::{PortRef, Profile, UidRef};
use crate::model::topology::{Host, TopologyConfig};
use crate::{Error, Result};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_scenarios.rs"));
}
mod expected;
mod filter;

pub use expected::{Expected, DROPPED, RESET};
pub use filter::{case_name, select, Filter};

/// A scenario file as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Which flow this checks: DESIGN.md's table numbers the first six; a
    /// new kind of connection takes the next number.
    pub flow: u8,
    pub description: String,
    /// `ipv4` or `ipv6`; absent: the scenario runs in every family the
    /// topology has.
    #[serde(default)]
    pub family: Option<Family>,
    pub source: Source,
    pub destination: Destination,
    pub expect: Expect,
}

/// Who opens the connection.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub host: Host,
    /// The uid the connecting socket is created with (owner match sees
    /// it): a number, or `proxy` for the profile's proxy uid.
    pub uid: UidRef,
    /// Defaults to `uid`.
    #[serde(default)]
    pub gid: Option<UidRef>,
    /// Who this stands for (app, envoy, pilot-agent, prometheus): documentation.
    #[serde(default)]
    pub role: Option<String>,
}

/// Where it connects: exactly one of `host`, `service`, `address`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A host of the topology, or `localhost` (127.0.0.1 in the source's namespace).
    #[serde(default)]
    pub host: Option<String>,
    /// A service by name: its VIP.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// A number, or a role the profile resolves (`stats`, `control-plane`, ...).
    pub port: PortRef,
    /// `tcp` (the default) or `udp` (one datagram and its answer: DNS).
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    /// One TCP segment conntrack marks INVALID (SYN+FIN+ACK, IPv4), sent
    /// raw: the pod's kernel answers it with a reset unless a rule drops it.
    #[serde(rename = "tcp-invalid")]
    TcpInvalid,
}

/// What must happen.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Proxy listener ports passed, in order, then the port of the server
    /// that answered: numbers or roles (`outbound`, `inbound`, `admin`,
    /// `stats`, `health`, `control-plane`).
    pub ports: Vec<PortRef>,
    /// The server that must answer: `local-app`, `remote-app`, a role
    /// (`admin`, `stats`, `health`, `control-plane`: the profile names its
    /// listener), or a literal server name.
    pub server: String,
    /// The rule path in the article's notation, for the built-in default
    /// rules and any rule set `paths` does not name.
    #[serde(default)]
    pub path: Option<String>,
    /// Paths for other rule sets, by label (`istio-classic`, or a rules
    /// file's name without its extension), optionally for one family
    /// (`istio-current-nft-native@ipv6`).
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
    /// Assert the path even when the run was not asked to (`--assert paths`).
    #[serde(default)]
    pub assert_path: bool,
    /// Where a mesh's capture differs by design, by profile name.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileExpect>,
}

/// What a flow does under one mesh profile, where it differs from `expect`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileExpect {
    pub ports: Vec<PortRef>,
    #[serde(default)]
    pub server: Option<String>,
    /// Why the mesh does it differently: shown in reports.
    pub why: String,
}

/// A scenario made concrete for one profile and family.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub uid: u32,
    pub gid: u32,
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub expected: Expected,
}

/// A loaded scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Trial name: `istio::type1-remote-to-local`.
    pub name: String,
    /// Where it came from, for messages.
    pub file: String,
    pub spec: Spec,
}

impl Scenario {
    pub fn parse(name: String, file: String, text: &str) -> Result<Scenario> {
        if text.trim().is_empty() {
            return Err(Error::ScenarioInvalid {
                file,
                message: "the file is empty: a scenario needs flow, description, source, destination and expect".into(),
            });
        }
        let spec: Spec = crate::base::yaml::parse(&file, text)?;
        let invalid = |message: String| Error::ScenarioInvalid { file: file.clone(), message };
        if spec.expect.ports.is_empty() {
            return Err(invalid("expect.ports is empty: list the proxy ports passed, then the server's port".into()));
        }
        if let Some((name, _)) = spec.expect.profiles.iter().find(|(_, p)| p.ports.is_empty()) {
            return Err(invalid(format!(
                "expect.profiles.{name}.ports is empty: list the proxy ports passed, then the server's port"
            )));
        }
        let d = &spec.destination;
        let given = [d.host.is_some(), d.service.is_some(), d.address.is_some()].iter().filter(|x| **x).count();
        if given != 1 {
            return Err(invalid(format!("destination: give exactly one of host, service, address (found {given})")));
        }
        if let Some(h) = &d.host {
            if h != "localhost" && Host::parse(h).is_none() {
                return Err(invalid(format!(
                    "destination.host `{h}` is not a host: use one of localhost, {}",
                    Host::ALL.map(Host::name).join(", ")
                )));
            }
        }
        if let Some(ip) = d.address {
            crate::model::validate::destination(ip)
                .map_err(|m| crate::model::validate::at(&file, text, "address", m))?;
        }
        if spec.source.host == Host::Node {
            return Err(invalid("source.host: the node only bridges pods; connect from a pod".into()));
        }
        // Which flows exist is the scenario set's business: any number but 0.
        if spec.flow == 0 {
            return Err(invalid(
                "flow 0: flows are numbered from 1 (DESIGN.md's table; a new flow takes the next number)".into(),
            ));
        }
        Ok(Scenario { name, file, spec })
    }

    /// The path expected under the rule set labelled `label`, in `family`:
    /// `paths["label@ipv6"]`, else `paths["label"]`, else (under a profile
    /// whose rules `path` describes: `expect_path: true`, Istio's) `path`.
    pub fn expected_path(&self, label: &str, family: Family, profile: &Profile) -> Option<&str> {
        let p = &self.spec.expect.paths;
        let fallback = profile.expect_path.then_some(self.spec.expect.path.as_ref()).flatten();
        p.get(&format!("{label}@{}", family.name())).or(p.get(label)).or(fallback).map(String::as_str)
    }

    /// This scenario made concrete: who connects where, and what must happen,
    /// under `profile` in `family`. `label` names the rule set (for paths).
    pub fn case(&self, profile: &Profile, topo: &TopologyConfig, family: Family, label: &str) -> Result<Case> {
        let src = &self.spec.source;
        let uid = profile.uid(src.uid);
        let gid = profile.uid(src.gid.unwrap_or(src.uid));
        let target = self.target(profile, topo, family)?;
        let e = &self.spec.expect;
        let over = e.profiles.get(&profile.name);
        let (ports, server) = match over {
            Some(o) => (&o.ports, o.server.as_ref().unwrap_or(&e.server)),
            None => (&e.ports, &e.server),
        };
        let expected = Expected {
            ports: ports.iter().map(|p| profile.resolve(*p, family)).collect(),
            server: profile.server_name(server),
            path: self.expected_path(label, family, profile).map(str::to_string),
            note: over.map(|o| format!("{}: {}", profile.name, o.why)),
        };
        Ok(Case { uid, gid, target, protocol: self.spec.destination.protocol, expected })
    }

    /// The families this scenario runs in, among `available`.
    pub fn families(&self, available: &[Family]) -> Vec<Family> {
        let wanted = self.spec.family.or(self.spec.destination.address.map(Family::of));
        available.iter().copied().filter(|f| wanted.is_none_or(|w| w == *f)).collect()
    }

    /// The address the probe connects to, in this topology and family.
    pub fn target(&self, profile: &Profile, topo: &TopologyConfig, family: Family) -> Result<SocketAddr> {
        let d = &self.spec.destination;
        let ip = if let Some(h) = &d.host {
            match Host::parse(h) {
                Some(host) => topo.address_of(host, family),
                None => family.localhost(),
            }
        } else if let Some(s) = &d.service {
            topo.service(s)
                .ok_or_else(|| Error::ScenarioInvalid {
                    file: self.file.clone(),
                    message: format!(
                        "destination.service `{s}` is not a service of the topology (known: {})",
                        topo.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                })?
                .vip_of(family)
        } else {
            d.address.expect("validated: one destination kind")
        };
        Ok(SocketAddr::new(ip, profile.resolve(d.port, family)))
    }
}

/// `a/b/c.yaml` under root `r` -> `a::b::c`; a file directly in the root takes
/// the root's own name as its first part, so `scenarios/istio` and
/// `scenarios` name the same file alike.
fn trial_name(root_name: &str, rel: &Path) -> String {
    let mut parts: Vec<String> = rel.with_extension("").iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if parts.len() == 1 {
        parts.insert(0, root_name.to_string());
    }
    parts.join("::")
}

fn check_unique(list: &[Scenario]) -> Result<()> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for s in list {
        if let Some(other) = seen.insert(&s.name, &s.file) {
            return Err(Error::config(format!(
                "two scenarios are both named {}: {} and {}; rename one of them",
                s.name, other, s.file
            )));
        }
    }
    Ok(())
}

/// The scenarios built into the binary (the repository's `scenarios/`).
pub fn builtin() -> Result<Vec<Scenario>> {
    let list = builtin::BUILTIN
        .iter()
        .map(|(rel, text)| Scenario::parse(trial_name("scenarios", Path::new(rel)), format!("scenarios/{rel}"), text))
        .collect::<Result<Vec<_>>>()?;
    check_unique(&list)?;
    Ok(list)
}

/// Every `*.yaml` / `*.yml` below `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
    let meta = std::fs::metadata(dir).map_err(|err| Error::Read { path: dir.to_path_buf(), err })?;
    if !meta.is_dir() {
        return Err(Error::config(format!("--scenarios {}: not a directory of scenario files", dir.display())));
    }
    let files = crate::base::walk::yaml_files(dir).map_err(|(path, err)| Error::Read { path, err })?;
    if files.is_empty() {
        return Err(Error::config(format!(
            "no scenario files (*.yaml) in {}: point --scenarios at a directory holding some",
            dir.display()
        )));
    }
    let root_name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "scenarios".into());
    let mut list = Vec::new();
    for path in files {
        let text = crate::base::bounded::read_text(&path, crate::base::bounded::YAML_MAX)?;
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        list.push(Scenario::parse(trial_name(&root_name, rel), path.display().to_string(), &text)?);
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    check_unique(&list)?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "flow: 2
description: app to remote
source: { host: local-pod, uid: 1000 }
destination: { host: remote-pod, port: 9090 }
expect:
  ports: [15001, 9090]
  server: remote-app
";

    fn parse(text: &str) -> Result<Scenario> {
        Scenario::parse("t::x".into(), "x.yaml".into(), text)
    }

    #[test]
    fn builtin_set_has_the_six_flows_and_both_flow6_variants() {
        let list = builtin().unwrap();
        let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
        assert!(names.len() >= 7, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("istio::")), "{names:?}");
        // DESIGN.md's six flows at least, numbered without a gap.
        let last = list.iter().map(|s| s.spec.flow).max().unwrap();
        assert!(last >= 6, "{names:?}");
        for flow in 1..=last {
            assert!(list.iter().any(|s| s.spec.flow == flow), "flow {flow} missing");
        }
        assert_eq!(list.iter().filter(|s| s.spec.flow == 6).count(), 2);
        assert!(list.iter().all(|s| s.spec.expect.path.is_some()), "every built-in scenario states its path");
        let topo = TopologyConfig::default();
        for name in Profile::builtin_names() {
            let profile = Profile::builtin(name).unwrap();
            for s in &list {
                assert_eq!(s.families(&topo.families), Family::BOTH, "{}", s.name);
                for f in Family::BOTH {
                    s.case(&profile, &topo, f, name).unwrap();
                }
            }
        }
    }

    #[test]
    fn roles_resolve_through_the_profile_and_overrides_apply() {
        let text = "flow: 3
description: scrape
source: { host: prometheus, uid: 65534 }
destination: { host: local-pod, port: stats }
expect:
  ports: [stats]
  server: stats
  path: PREROUTING -> X
  profiles:
    kuma: { ports: [inbound, stats], why: no inbound port is excluded }
";
        let s = parse(text).unwrap();
        let topo = TopologyConfig::default();
        let istio = s.case(&Profile::istio(), &topo, Family::Ipv4, "istio-current").unwrap();
        assert_eq!(istio.target, "10.244.0.10:15090".parse().unwrap());
        assert_eq!((istio.expected.ports.clone(), istio.expected.server.as_str()), (vec![15090], "envoy-stats"));
        assert_eq!(istio.expected.path.as_deref(), Some("PREROUTING -> X"));
        let kuma = s.case(&Profile::builtin("kuma").unwrap(), &topo, Family::Ipv6, "kuma").unwrap();
        assert_eq!(kuma.target.port(), 5670);
        assert_eq!(kuma.expected.ports, vec![15006, 5670]);
        // Istio's path says nothing about another mesh's rules.
        assert_eq!(kuma.expected.path, None);
        // Which profile `path` is for is the profile's say, not its name's.
        let renamed = Profile { name: "other".into(), ..Profile::istio() };
        assert_eq!(
            s.case(&renamed, &topo, Family::Ipv4, "x").unwrap().expected.path.as_deref(),
            Some("PREROUTING -> X")
        );
        let not_default = Profile { expect_path: false, ..Profile::istio() };
        assert_eq!(s.case(&not_default, &topo, Family::Ipv4, "x").unwrap().expected.path, None);
        let e = parse(&text.replace("port: stats", "port: stat")).unwrap_err().to_string();
        assert!(e.contains("`stat` is not a port role"), "{e}");
        let proxy = parse(&text.replace("uid: 65534", "uid: proxy")).unwrap();
        assert_eq!(proxy.case(&Profile::builtin("linkerd").unwrap(), &topo, Family::Ipv4, "l").unwrap().uid, 2102);
    }

    #[test]
    fn a_good_file_parses_and_resolves() {
        let s = parse(GOOD).unwrap();
        let (istio, topo) = (Profile::istio(), TopologyConfig::default());
        assert_eq!(s.case(&istio, &topo, Family::Ipv4, "x").unwrap().gid, 1000);
        assert_eq!(s.target(&istio, &topo, Family::Ipv4).unwrap(), "10.244.0.20:9090".parse().unwrap());
        assert_eq!(s.target(&istio, &topo, Family::Ipv6).unwrap(), "[fd00:10:244::20]:9090".parse().unwrap());
        let v6only = parse(&GOOD.replace("flow: 2", "flow: 2\nfamily: ipv6")).unwrap();
        assert_eq!(v6only.families(&Family::BOTH), [Family::Ipv6]);
        let by_address =
            parse(&GOOD.replace("{ host: remote-pod, port: 9090 }", "{ address: 10.0.0.1, port: 9090 }")).unwrap();
        assert_eq!(by_address.families(&Family::BOTH), [Family::Ipv4]);
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let text = GOOD.replace("  server: remote-app", "  server: remote-app\n  sever: typo");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:8:3: "), "{e}");
        assert!(e.contains("unknown field `sever`"), "{e}");
    }

    #[test]
    fn wrong_type_and_malformed_yaml_have_locations() {
        let e = parse(&GOOD.replace("uid: 1000", "uid: alice")).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:3:"), "{e}");
        let e = parse("flow: [1\n").unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:"), "{e}");
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn any_flow_number_but_0_is_a_flow() {
        assert_eq!(parse(&GOOD.replace("flow: 2", "flow: 7")).unwrap().spec.flow, 7);
        let e = parse(&GOOD.replace("flow: 2", "flow: 0")).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml: ") && e.contains("flow 0: flows are numbered from 1"), "{e}");
    }

    #[test]
    fn destination_needs_exactly_one_kind() {
        let e = parse(
            &GOOD.replace("{ host: remote-pod, port: 9090 }", "{ host: remote-pod, service: local-app, port: 9090 }"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exactly one of host, service, address (found 2)"), "{e}");
        let e = parse(&GOOD.replace("host: remote-pod", "host: mars")).unwrap_err().to_string();
        assert!(e.contains("`mars` is not a host"), "{e}");
        let s = parse(&GOOD.replace("{ host: remote-pod, port: 9090 }", "{ service: nope, port: 80 }")).unwrap();
        let e = s.target(&Profile::istio(), &TopologyConfig::default(), Family::Ipv4).unwrap_err().to_string();
        assert!(e.contains("not a service of the topology (known: local-app)"), "{e}");
    }

    #[test]
    fn names_follow_directories() {
        assert_eq!(trial_name("istio", Path::new("a.yaml")), "istio::a");
        assert_eq!(trial_name("scenarios", Path::new("istio/a.yaml")), "istio::a");
        assert_eq!(trial_name("x", Path::new("p/q/a.yml")), "p::q::a");
    }

    #[test]
    fn directory_errors_are_explicit() {
        let base = std::env::temp_dir().join(format!("sidecheck-scen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("a")).unwrap();
        let e = load_dir(&base).unwrap_err().to_string();
        assert!(e.contains("no scenario files"), "{e}");
        std::fs::write(base.join("a/x.yaml"), GOOD).unwrap();
        std::fs::create_dir_all(base.join("b/a")).unwrap();
        std::fs::write(base.join("b/a/x.yaml"), GOOD).unwrap();
        // a/x.yaml and b/a/x.yaml are a::x and b::a::x: distinct.
        assert_eq!(load_dir(&base).unwrap().len(), 2);
        std::fs::write(base.join("x.yaml"), GOOD).unwrap();
        std::fs::create_dir_all(base.join(base.file_name().unwrap())).unwrap();
        std::fs::write(base.join(base.file_name().unwrap()).join("x.yaml"), GOOD).unwrap();
        let e = load_dir(&base).unwrap_err().to_string();
        assert!(e.contains("both named"), "{e}");
        let e = load_dir(&base.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}

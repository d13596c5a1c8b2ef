//! Reading a policy: YAML with located errors, the mesh profile's defaults
//! for fields left out, and the values that parse but cannot be tested.

use std::path::Path;

use crate::base::cidr::Cidr;
use crate::model::validate::{at, line_of};
use crate::policy::schema::{GroupRef, Mesh, Mode, Policy, Select};
use crate::{Error, Result};

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
            let m = format!(
                "mode: TPROXY under mesh {}: only Istio's generators write TPROXY rules the oracle knows",
                p.mesh.name()
            );
            return Err(located(file, text, &["mode"], m));
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
                    return Err(located(file, "", &[field], format!(
                            "{field} {served} is also the {} profile's {role} port ({}): the stand-in proxy cannot listen there for both; run it with a profile file (--profile FILE) that moves the {role} port",
                            profile.name, profile.file
                        )));
                }
            }
        }
        Ok(())
    }

    fn parse_text(file: &str, text: &str) -> Result<Policy> {
        let p: Policy = crate::base::yaml::parse(file, text)?;
        if p.proxy_uids.is_empty() && p.proxy_gids.is_empty() {
            return Err(located(
                file,
                text,
                &["proxy_uids", "proxy_gids"],
                "proxy_uids and proxy_gids are both empty: the proxy's own traffic would be captured again",
            ));
        }
        if p.mode == Mode::Tproxy && p.proxy_gids.is_empty() {
            return Err(located(file, text, &["proxy_gids", "mode"], "mode: TPROXY with no proxy_gids: under TPROXY the proxy runs as root with the proxy gid (Istio's injector: runAsUser 0, runAsGroup 1337), so only a gid tells its traffic apart"));
        }
        if p.outbound_port == p.inbound_port {
            let m = format!("outbound_port and inbound_port are both {}", p.outbound_port);
            return Err(located(file, text, &["outbound_port", "inbound_port"], m));
        }
        if Some(p.outbound_port) == p.inbound_port_ipv6 {
            let m = format!("outbound_port and inbound_port_ipv6 are both {}", p.outbound_port);
            return Err(located(file, text, &["outbound_port", "inbound_port_ipv6"], m));
        }
        check_values(&p, file, text)?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Policy> {
        let text = crate::base::bounded::read_text(path, crate::base::bounded::YAML_MAX)?;
        Policy::parse(&path.display().to_string(), &text)
    }

    /// Groups named in the policy that this machine lacks: rules naming
    /// them cannot be installed, and the oracle could not place a probe.
    pub fn check_groups(&self, file: &str) -> Result<()> {
        let include = self.owner_groups_include.iter().map(|g| ("owner_groups_include", g));
        for (field, g) in include.chain(self.owner_groups_exclude.iter().map(|g| ("owner_groups_exclude", g))) {
            if g.gid().is_none() {
                return Err(Error::ScenarioInvalid {
                    file: file.into(),
                    message: format!("{field}: owner group `{g}` does not exist on this machine: owner matches resolve names when the rules are installed, so no rules for this policy can be installed here. Create it (groupadd {g}) or give its gid"),
                });
            }
        }
        Ok(())
    }
}

/// An error at the last line of `keys` found in `text` (the field that made
/// the combination wrong), the message as given: it names the fields.
fn located(file: &str, text: &str, keys: &[&str], message: impl std::fmt::Display) -> Error {
    let line = keys.iter().filter_map(|k| line_of(text, k)).max();
    let file = match line {
        Some(n) => format!("{file}:{n}"),
        None => file.to_string(),
    };
    Error::ScenarioInvalid { file, message: message.to_string() }
}

/// Policy values the reference rules and the oracle cannot agree on, so
/// that a run would FAIL its own reference: refused with the reason.
fn check_values(p: &Policy, file: &str, text: &str) -> Result<()> {
    let listeners = [
        ("outbound_port", Some(p.outbound_port)),
        ("inbound_port", Some(p.inbound_port)),
        ("inbound_port_ipv6", p.inbound_port_ipv6),
    ];
    for (key, port) in listeners.iter().copied().chain([("tunnel_port", p.tunnel_port)]) {
        if port == Some(0) {
            return Err(at(
                file,
                text,
                key,
                "port 0: no listener can be there and no REDIRECT can send to it; give 1-65535",
            ));
        }
    }
    // The tunnel port is the proxy's own HBONE listener, never captured:
    // on a capture listener's port, connections to the tunnel would reach
    // that listener and pass for tunnelled ones.
    if let Some(t) = p.tunnel_port {
        if let Some((key, _)) = listeners.iter().find(|(_, port)| *port == Some(t)) {
            return Err(located(file, text, &[key, "tunnel_port"], format!("tunnel_port and {key} are both {t}: the tunnel port is never captured, so it cannot be a capture listener's port")));
        }
    }
    let ids = [
        ("proxy_uids", "uid", &p.proxy_uids[..]),
        ("outbound_uids_exclude", "uid", &p.outbound_uids_exclude[..]),
        ("proxy_gids", "gid", &p.proxy_gids[..]),
    ];
    let groups = |l: &[GroupRef]| {
        l.iter().filter_map(|g| if let GroupRef::Id(n) = g { Some(*n) } else { None }).collect::<Vec<u32>>()
    };
    let (inc, exc) = (groups(&p.owner_groups_include), groups(&p.owner_groups_exclude));
    for (key, kind, list) in
        ids.into_iter().chain([("owner_groups_include", "gid", &inc[..]), ("owner_groups_exclude", "gid", &exc[..])])
    {
        if list.contains(&u32::MAX) {
            return Err(at(file, text, key, format!("{kind} {} is ({kind}_t)-1, which the kernel reads as \"leave unchanged\" and iptables refuses: use one below it", u32::MAX)));
        }
    }
    if p.mode == Mode::Tproxy {
        if p.tproxy_mark == 0 {
            return Err(at(file, text, "tproxy_mark", "0 is the mark of every unmarked packet: the TPROXY routing rule (`fwmark 0`) would route all of them to the TPROXY table; give 1-4294967295"));
        }
        if [0, 253, 254, 255].contains(&p.tproxy_table) {
            return Err(at(file, text, "tproxy_table", format!("{} is a table the kernel reserves (0 unspec, 253 default, 254 main, 255 local): the TPROXY `local default` route cannot go there; give another", p.tproxy_table)));
        }
    }
    for (key, list) in
        [("exclude_interfaces", &p.exclude_interfaces), ("kube_virt_interfaces", &p.kube_virt_interfaces)]
    {
        if let Some(bad) = list
            .iter()
            .find(|i| i.as_str() == "lo" || i.is_empty() || i.len() > 15 || i.contains(['/', ' ', '\t', '\n']))
        {
            return Err(at(file, text, key, format!("`{bad}`: the topology gives the pod this interface with a host behind it, so it must be a Linux name of 1 to 15 characters without `/` or spaces, and not lo")));
        }
    }
    let mut ranges: Vec<(&str, &Cidr)> = Vec::new();
    ranges.extend(p.inbound_sources_exclude.iter().map(|c| ("inbound_sources_exclude", c)));
    if let Select::Only(l) = &p.outbound_ranges_include {
        ranges.extend(l.iter().map(|c| ("outbound_ranges_include", c)));
    }
    ranges.extend(p.outbound_ranges_exclude.iter().map(|c| ("outbound_ranges_exclude", c)));
    for (key, c) in ranges {
        if let std::net::IpAddr::V6(a) = c.addr {
            if a.to_ipv4_mapped().is_some() && c.len >= 96 {
                return Err(at(file, text, key, format!("{}/{} is an IPv4 range written as IPv4-mapped IPv6: no IPv6 packet carries such an address (an IPv6 socket connecting there sends IPv4); write the IPv4 range", a, c.len)));
            }
        }
    }
    let h = p.host_loopback_cidr;
    if !(h.addr.is_ipv4() && h.len >= 8 && Cidr::parse("127.0.0.0/8").is_some_and(|l| l.contains(h.addr))) {
        return Err(at(file, text, "host_loopback_cidr", format!("{}/{} is not inside 127.0.0.0/8: it is the IPv4 host loopback range (istio-iptables checks the same); give 127.0.0.0/8 or a part of it", h.addr, h.len)));
    }
    for ip in &p.dns_servers {
        if let Err(e) = crate::model::validate::destination(*ip) {
            return Err(at(file, text, "dns_servers", e));
        }
    }
    let listed: &[u16] = match &p.inbound_ports {
        Select::Only(l) => l,
        Select::All => &[],
    };
    // (Port ranges, `inbound_exclude` and `outbound_ports_exclude`, refuse 0 as they are parsed.)
    for (key, ports) in [("inbound_ports", listed), ("outbound_ports_include", &p.outbound_ports_include[..])] {
        if ports.contains(&0) {
            return Err(at(file, text, key, "port 0 is not a port a connection can use (iptables takes `--dport 0` literally, nothing ever matches it); give 1-65535"));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn policy(yaml: &str) -> Policy {
        Policy::parse("p.yaml", yaml).unwrap()
    }

    pub(crate) fn under(mesh: &str, yaml: &str) -> Policy {
        Policy::parse_for("p.yaml", yaml, &crate::model::profile::Profile::builtin(mesh).unwrap()).unwrap()
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

    #[test]
    fn policies_whose_reference_rules_fail_their_oracle_are_refused() {
        for (text, says) in [
            ("inbound_ports: [0, 8080]\n", "p.yaml:1: inbound_ports: port 0"),
            ("outbound_port: 0\n", "p.yaml:1: outbound_port: port 0"),
            ("outbound_ports_exclude: [0]\n", "p.yaml:1:26: outbound_ports_exclude[0]: port 0 is out of range"),
            ("inbound_exclude: [0-10]\n", "p.yaml:1:19: inbound_exclude[0]: `0-10` is not a port"),
        ] {
            let e = Policy::parse("p.yaml", text).unwrap_err().to_string();
            assert!(e.starts_with(says), "{text}: {e}");
        }
        Policy::parse("p.yaml", "exclude_interfaces: [eth1]\ninbound_ports: [8080]\n").unwrap();
        // eth0 excluded (OSM's exclusions-inclusions configuration): the oracle
        // sends the pod's calls to itself by lo, as the kernel does, so its
        // reference rules agree with it (tests/trust.rs runs them).
        Policy::parse("p.yaml", "exclude_interfaces: [eth0]\n").unwrap();
    }
}

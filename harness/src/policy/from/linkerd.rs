//! Linkerd's `proxy-init`. Flags from linkerd/linkerd2-proxy-init
//! proxy-init/cmd/root.go (NewRootCmd; `--proxy-gid`/`-g` as the generator at
//! 183e791d takes it, `-p 1234 -o 2345 -u 33 -g 33` in root_test.go), their
//! effect from pkg/iptables/iptables.go: inbound, PROXY_INIT_REDIRECT
//! RETURNs the ignored ports and subnets (`-s CIDR`: `--subnets-to-ignore`
//! is a source exclusion of inbound traffic), then REDIRECTs every TCP port
//! or, with `-r`, the listed ones; outbound, PROXY_INIT_OUTPUT RETURNs the
//! proxy uid and gid, lo, the ignored ports, then REDIRECTs all TCP.

use super::{flag, parse_flags, port_ranges, val, Derived, Flag, Yaml};
use crate::policy::Mesh;
use crate::{Error, Result};

const SOURCE: &str = "linkerd/linkerd2-proxy-init proxy-init/cmd/root.go";

const FLAGS: &[Flag] = &[
    val("incoming-proxy-port", Some('p')),
    val("outgoing-proxy-port", Some('o')),
    val("proxy-uid", Some('u')),
    val("proxy-gid", Some('g')),
    val("ports-to-redirect", Some('r')),
    val("inbound-ports-to-ignore", None),
    val("outbound-ports-to-ignore", None),
    val("subnets-to-ignore", None),
    flag("ipv6", None),
    // How the rules are applied, not which.
    flag("simulate", None),
    val("netns", None),
    flag("use-wait-flag", Some('w')),
    val("timeout-close-wait-secs", None),
    val("log-format", None),
    val("log-level", None),
    val("iptables-mode", None),
    val("firewall-bin-path", None),
    val("firewall-save-bin-path", None),
];

pub(super) fn derive(args: &[String]) -> Result<Derived> {
    let g = parse_flags("proxy-init", SOURCE, FLAGS, args, false)?;
    // Both ports are required (BuildFirewallConfiguration).
    let need = |name: &str| -> Result<u16> {
        g.port(name)?.ok_or_else(|| {
            Error::config(format!(
                "proxy-init: --{name} must be a valid TCP port number (proxy-init refuses to run without it)"
            ))
        })
    };
    let (inbound, outbound) = (need("incoming-proxy-port")?, need("outgoing-proxy-port")?);
    let mut y = Yaml::new(Mesh::Linkerd, format!("from: proxy-init {}", super::shell_join(args)));
    y.set("outbound_port", outbound);
    y.set("inbound_port", inbound);
    y.set("tunnel_port", "null");
    // A uid or gid of -1 (the default) writes no owner rule.
    let id = |name: &str| -> Result<Vec<u32>> {
        match g.last(name) {
            None | Some("-1") => Ok(Vec::new()),
            Some(v) => Ok(vec![v.parse::<u32>().map_err(|_| g.bad(name, v, "a uid/gid number"))?]),
        }
    };
    y.list("proxy_uids", &id("proxy-uid")?);
    y.list("proxy_gids", &id("proxy-gid")?);
    let ignored = port_ranges(&g, "inbound-ports-to-ignore")?;
    let listed: Vec<u16> = g
        .list("ports-to-redirect")
        .iter()
        .map(|s| s.parse::<u16>().map_err(|_| g.bad("ports-to-redirect", s, "ports as numbers")))
        .collect::<Result<_>>()?;
    if listed.is_empty() {
        y.set("inbound_ports", "\"*\"");
        y.list("inbound_exclude", &ignored);
    } else {
        // Ignored ports RETURN before the listed ones are redirected ("higher
        // precedence than any other parameters"): a port in both is not captured.
        let captured: Vec<u16> = listed.into_iter().filter(|p| !ignored.iter().any(|r| r.contains(*p))).collect();
        y.list("inbound_ports", &captured);
    }
    y.list("inbound_sources_exclude", &super::cidrs(&g, "subnets-to-ignore")?);
    y.set("outbound_ranges_include", "\"*\"");
    y.list("outbound_ports_exclude", &port_ranges(&g, "outbound-ports-to-ignore")?);
    // IPv6 defaults on at this version (newRootOptions: IPv6 true).
    y.set("ipv6", g.bool("ipv6", true)?);
    Ok(y.done(Mesh::Linkerd, "proxy-init"))
}

#[cfg(test)]
mod tests {
    use super::super::from_command;
    use crate::model::profile::Profile;
    use crate::policy::{Cidr, Mesh, PortRange, Select};

    fn linkerd() -> Profile {
        Profile::builtin("linkerd").unwrap()
    }

    #[test]
    fn the_injectors_defaults() {
        // linkerd/PROVENANCE.md: the proxy injector's default arguments.
        let d = from_command("proxy-init --incoming-proxy-port 4143 --outgoing-proxy-port 4140 --proxy-uid 2102 --inbound-ports-to-ignore 4190,4191,4567,4568 --outbound-ports-to-ignore 4567,4568 --iptables-mode nft --simulate").unwrap();
        let p = d.policy(&linkerd()).unwrap();
        assert_eq!(p.mesh, Mesh::Linkerd);
        assert_eq!((p.inbound_port, p.outbound_port, p.tunnel_port), (4143, 4140, None));
        assert_eq!((p.proxy_uids, p.proxy_gids), (vec![2102], vec![]), "no -g: no gid rule");
        assert_eq!(p.inbound_ports, Select::All);
        assert_eq!(p.inbound_exclude, [4190, 4191, 4567, 4568].map(PortRange::one));
        assert_eq!(p.outbound_ports_exclude, [4567, 4568].map(PortRange::one));
        assert_eq!(p.outbound_ranges_include, Select::All);
        assert!(p.ipv6, "IPv6 rules by default");
    }

    #[test]
    fn root_test_and_the_lab_configurations() {
        let p = from_command("proxy-init -p 1234 -o 2345 -u 33 -g 33 --iptables-mode nft --simulate")
            .unwrap()
            .policy(&linkerd())
            .unwrap();
        assert_eq!((p.inbound_port, p.outbound_port, p.proxy_uids, p.proxy_gids), (1234, 2345, vec![33], vec![33]));
        let p = from_command("proxy-init --incoming-proxy-port 4143 --outgoing-proxy-port 4140 --proxy-uid 2102 --inbound-ports-to-ignore 6000-8000 --iptables-mode nft --simulate").unwrap().policy(&linkerd()).unwrap();
        assert_eq!(p.inbound_exclude, [PortRange { first: 6000, last: 8000 }]);
        let p = from_command("proxy-init --incoming-proxy-port 4143 --outgoing-proxy-port 4140 --proxy-uid 2102 -r 9090 -r 9099 --iptables-mode nft --simulate").unwrap().policy(&linkerd()).unwrap();
        assert_eq!(p.inbound_ports, Select::Only(vec![9090, 9099]));
        let p = from_command("proxy-init --incoming-proxy-port 4143 --outgoing-proxy-port 4140 --proxy-uid 2102 --inbound-ports-to-ignore 4190,4191,4567,4568 --outbound-ports-to-ignore 4567,4568 --subnets-to-ignore 0.0.0.0/0 --ipv6=false --iptables-mode nft --simulate").unwrap().policy(&linkerd()).unwrap();
        assert_eq!(p.inbound_sources_exclude, [Cidr::parse("0.0.0.0/0").unwrap()], "an inbound source exclusion");
        assert!(p.outbound_ranges_exclude.is_empty(), "not an outbound one");
        assert!(!p.ipv6);
        let p = from_command("proxy-init -p 1 -o 2 -u 5 -r 9090,9091 --inbound-ports-to-ignore 9091")
            .unwrap()
            .policy(&linkerd())
            .unwrap();
        assert_eq!(p.inbound_ports, Select::Only(vec![9090]), "ignoring wins over redirecting");
        let e = from_command("proxy-init -p 1 -o 2").unwrap().policy(&linkerd()).unwrap_err().to_string();
        assert!(e.contains("captured again"), "no -u and no -g: the proxy's own traffic loops: {e}");
    }

    #[test]
    fn bad_command_lines() {
        let e = from_command("proxy-init -o 4140").unwrap_err().to_string();
        assert!(e.contains("--incoming-proxy-port must be a valid TCP port number"), "{e}");
        let e = from_command("proxy-init -p 1 -o 2 --proxy-user 5").unwrap_err().to_string();
        assert!(e.contains("proxy-init: unknown flag `--proxy-user`") && e.contains("root.go"), "{e}");
        let e = from_command("proxy-init -p 1 -o 2 --subnets-to-ignore 10.0.0.0/99").unwrap_err().to_string();
        assert!(e.contains("--subnets-to-ignore 10.0.0.0/99"), "{e}");
        let e = from_command("proxy-init -p 1 -o 2 --inbound-ports-to-ignore 9-3").unwrap_err().to_string();
        assert!(e.contains("--inbound-ports-to-ignore 9-3"), "{e}");
    }
}

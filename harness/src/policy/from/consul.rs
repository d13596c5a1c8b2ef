//! `consul connect redirect-traffic`. Flags from hashicorp/consul
//! command/connect/redirecttraffic/redirect_traffic.go (cmd.init, Go's `flag`
//! package: `-name value` or `-name=value`), the rules from sdk/nftables (the
//! command calls nftables.Setup; sdk/iptables writes the same chains):
//! CONSUL_PROXY_INBOUND RETURNs the excluded inbound ports, then REDIRECTs
//! all TCP to the inbound port; CONSUL_PROXY_OUTPUT RETURNs the excluded
//! ports, CIDRs and uids (inserted at the top), the proxy uid, 127.0.0.1/32
//! and ::1, then REDIRECTs all TCP to the outbound port. No lo rule: the app
//! calling its own pod address is captured (see [`Mesh::app_lo_returned`]).

use super::{parse_flags, port_ranges, val, Derived, Flag, Yaml};
use crate::policy::Mesh;
use crate::{Error, Result};

const SOURCE: &str = "hashicorp/consul command/connect/redirecttraffic/redirect_traffic.go";

const FLAGS: &[Flag] = &[
    val("proxy-uid", None),
    val("proxy-id", None),
    val("node-name", None),
    val("proxy-inbound-port", None),
    val("proxy-outbound-port", None),
    val("exclude-inbound-port", None),
    val("exclude-outbound-port", None),
    val("exclude-outbound-cidr", None),
    val("exclude-uid", None),
    val("consul-dns-ip", None),
    val("consul-dns-port", None),
    // Where the rules go, and the HTTP client's flags (command/flags: ClientFlags, MultiTenancyFlags).
    val("netns", None),
    val("http-addr", None),
    val("ca-file", None),
    val("ca-path", None),
    val("client-cert", None),
    val("client-key", None),
    val("tls-server-name", None),
    val("token", None),
    val("token-file", None),
    val("datacenter", None),
    val("stale", None),
    val("namespace", None),
    val("partition", None),
];

pub(super) fn derive(args: &[String]) -> Result<Derived> {
    let g = parse_flags("consul connect redirect-traffic", SOURCE, FLAGS, args, true)?;
    g.refuse("proxy-id", "the ports and exclusions come from the proxy's registration in Consul: give -proxy-inbound-port (and -proxy-outbound-port) instead")?;
    g.refuse("node-name", "it only names where the -proxy-id registration is")?;
    g.refuse(
        "consul-dns-ip",
        "Consul's DNS redirect DNATs queries to Consul's DNS address, which no policy field says",
    )?;
    g.refuse(
        "consul-dns-port",
        "Consul's DNS redirect DNATs queries to Consul's DNS address, which no policy field says",
    )?;
    let uid =
        g.last("proxy-uid").ok_or_else(|| Error::config("consul connect redirect-traffic: -proxy-uid is required"))?;
    let uid: u32 = uid.parse().map_err(|_| g.bad("proxy-uid", uid, "a uid number"))?;
    let inbound = g.port("proxy-inbound-port")?.ok_or_else(|| {
        Error::config("consul connect redirect-traffic: either -proxy-id or -proxy-inbound-port are required")
    })?;
    let mut y = Yaml::new(Mesh::Consul, format!("from: consul connect redirect-traffic {}", super::shell_join(args)));
    y.set("outbound_port", g.port("proxy-outbound-port")?.unwrap_or(15001));
    y.set("inbound_port", inbound);
    y.set("tunnel_port", "null");
    y.list("proxy_uids", &[uid]);
    y.list("proxy_gids", &Vec::<u32>::new());
    y.set("inbound_ports", "\"*\"");
    // Ranges are written 8080:9000 (a service name such as `ssh` is refused).
    y.list("inbound_exclude", &port_ranges(&g, "exclude-inbound-port")?);
    y.set("outbound_ranges_include", "\"*\"");
    y.list("outbound_ranges_exclude", &super::cidrs(&g, "exclude-outbound-cidr")?);
    y.list("outbound_ports_exclude", &port_ranges(&g, "exclude-outbound-port")?);
    let uids: Vec<u32> = g
        .list("exclude-uid")
        .iter()
        .map(|s| s.parse::<u32>().map_err(|_| g.bad("exclude-uid", s, "a uid number")))
        .collect::<Result<_>>()?;
    y.list("outbound_uids_exclude", &uids);
    // sdk/nftables writes one inet table: both families.
    y.set("ipv6", true);
    Ok(y.done(Mesh::Consul, "consul connect redirect-traffic"))
}

#[cfg(test)]
mod tests {
    use super::super::from_command;
    use crate::model::profile::Profile;
    use crate::policy::{Cidr, PortRange};

    fn consul(cmd: &str) -> crate::policy::Policy {
        from_command(cmd).unwrap().policy(&Profile::builtin("consul").unwrap()).unwrap()
    }

    #[test]
    fn the_sdk_tests_configurations() {
        // consul/PROVENANCE.md: "no proxy outbound port provided" (ProxyUserID 123, ProxyInboundPort 20000).
        let p = consul("consul connect redirect-traffic -proxy-uid 123 -proxy-inbound-port 20000");
        assert_eq!((p.outbound_port, p.inbound_port, p.proxy_uids, p.tunnel_port), (15001, 20000, vec![123], None));
        assert!(p.proxy_gids.is_empty() && p.ipv6);
        // "exclude inbound ports is set" (outbound 21000, 22000 and 22500 excluded).
        let p = consul("consul connect redirect-traffic -proxy-uid=123 -proxy-inbound-port=20000 -proxy-outbound-port 21000 -exclude-inbound-port 22000 -exclude-inbound-port 22500");
        assert_eq!(p.outbound_port, 21000);
        assert_eq!(p.inbound_exclude, [22000, 22500].map(PortRange::one));
        // "exclude UIDs is set".
        let p = consul("consul connect redirect-traffic -proxy-uid 123 -proxy-inbound-port 20000 -exclude-uid 456 -exclude-uid 789 -exclude-outbound-cidr 10.0.0.0/8 -exclude-outbound-port 8080:9000");
        assert_eq!(p.outbound_uids_exclude, [456, 789]);
        assert_eq!(p.outbound_ranges_exclude, [Cidr::parse("10.0.0.0/8").unwrap()]);
        assert_eq!(p.outbound_ports_exclude, [PortRange { first: 8080, last: 9000 }]);
    }

    #[test]
    fn what_it_needs_and_what_a_policy_cannot_say() {
        let e = |cmd: &str| from_command(cmd).unwrap_err().to_string();
        assert!(e("consul connect redirect-traffic -proxy-inbound-port 1").contains("-proxy-uid is required"));
        assert!(e("consul connect redirect-traffic -proxy-uid 1").contains("-proxy-inbound-port are required"));
        assert!(e("consul connect redirect-traffic -proxy-uid 1 -proxy-id web").contains("registration in Consul"));
        assert!(e("consul connect redirect-traffic -proxy-uid 1 -proxy-inbound-port 2 -consul-dns-ip 10.0.0.2")
            .contains("-consul-dns-ip cannot be expressed"));
        let u = e("consul connect redirect-traffic -proxy-uid 1 -proxy-inbound-port 2 -exclude-inbound-ports 3");
        assert!(
            u.contains("consul connect redirect-traffic: unknown flag `-exclude-inbound-ports`")
                && u.contains("redirect_traffic.go"),
            "{u}"
        );
        let s = e("consul connect redirect-traffic -proxy-uid 1 -proxy-inbound-port 2 -exclude-inbound-port ssh");
        assert!(s.contains("service name"), "{s}");
    }
}

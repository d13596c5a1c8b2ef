//! `kumactl install transparent-proxy`. Flags from kumahq/kuma
//! app/kumactl/cmd/install/install_transparent_proxy.go (newInstallTransparentProxy),
//! defaults from pkg/transparentproxy/config/config.go (outbound 15001,
//! inbound 15006 for both families since 2.7, DNS port 15053, owner uid
//! 5678 / user `kuma-dp`). What each does, read from the rules it writes
//! (the goldens in ../shared/third-party/kuma): excluded inbound ports and
//! `--exclude-inbound-ips` are RETURNs in KUMA_MESH_INBOUND, the latter by
//! *source* (`-s`); `--exclude-outbound-ips` are `-d` RETURNs at the top of
//! nat OUTPUT, before the proxy's own lo redirect (so, unlike Istio's `-x`,
//! they also keep the proxy's connections to them from the inbound listener);
//! the owner is matched by uid only.

use super::{flag, numbers, parse_flags, port_ranges, val, Derived, Flag, Yaml};
use crate::policy::Mesh;
use crate::{Error, Result};

const SOURCE: &str = "kumahq/kuma app/kumactl/cmd/install/install_transparent_proxy.go";

/// Kuma's default owner (pkg/transparentproxy/consts: OwnerDefaultUID,
/// OwnerDefaultUsername): the uid kumactl falls back to when the user
/// `kuma-dp` is not on the machine reading the command line.
const DEFAULT_UID: u32 = 5678;

const FLAGS: &[Flag] = &[
    val("redirect-outbound-port", None),
    val("redirect-inbound", None),
    val("redirect-inbound-port", None),
    val("redirect-inbound-port-v6", None),
    flag("ipv6-disabled", None),
    val("ip-family-mode", None),
    val("exclude-inbound-ports", None),
    val("exclude-outbound-ports", None),
    val("kuma-dp-user", None),
    val("kuma-dp-uid", None),
    flag("redirect-dns", None),
    flag("redirect-all-dns-traffic", None),
    val("redirect-dns-port", None),
    val("exclude-inbound-ips", None),
    val("exclude-outbound-ips", None),
    val("exclude-outbound-ports-for-uids", None),
    val("exclude-outbound-tcp-ports-for-uids", None),
    val("exclude-outbound-udp-ports-for-uids", None),
    val("vnet", None),
    flag("drop-invalid-packets", None),
    val("config", None),
    val("config-file", None),
    flag("ebpf-enabled", None),
    val("ebpf-programs-source-path", None),
    val("ebpf-instance-ip", None),
    val("ebpf-bpffs-path", None),
    val("ebpf-cgroup-path", None),
    val("ebpf-tc-attach-iface", None),
    // How the rules are applied, not which.
    flag("dry-run", None),
    flag("verbose", None),
    val("redirect-dns-upstream-target-chain", None),
    flag("store-firewalld", None),
    flag("skip-dns-conntrack-zone-split", None),
    val("wait", None),
    val("wait-interval", None),
    val("max-retries", None),
    val("sleep-between-retries", None),
    flag("iptables-logs", None),
    flag("disable-comments", None),
    flag("redirect-inbound-insert-instead-of-append", None),
    flag("redirect-outbound-insert-instead-of-append", None),
    val("iptables-executables", None),
    flag("help", Some('h')),
];

pub(super) fn derive(args: &[String]) -> Result<Derived> {
    let g = parse_flags("kumactl install transparent-proxy", SOURCE, FLAGS, args, false)?;
    g.refuse(
        "vnet",
        "it captures what arrives on the named interfaces except their own range, which no policy field says",
    )?;
    g.refuse("ebpf-enabled", "eBPF programs, not netfilter rules, do the capture")?;
    g.refuse("config", "configuration files are not read: give the settings as flags")?;
    g.refuse("config-file", "configuration files are not read: give the settings as flags")?;
    g.refuse("exclude-outbound-tcp-ports-for-uids", "per-uid port exclusions: only all ports (`*`) for a uid can be")?;
    g.refuse("exclude-outbound-udp-ports-for-uids", "per-uid port exclusions: only all ports (`*`) for a uid can be")?;
    if g.has("redirect-dns") && g.has("redirect-all-dns-traffic") {
        return Err(Error::config(
            "kumactl install transparent-proxy: one of --redirect-dns or --redirect-all-dns-traffic should be specified (kumactl refuses both)",
        ));
    }
    let mut y = Yaml::new(Mesh::Kuma, format!("from: kumactl install transparent-proxy {}", super::shell_join(args)));
    let inbound = g.port("redirect-inbound-port")?.unwrap_or(15006);
    y.set("outbound_port", g.port("redirect-outbound-port")?.unwrap_or(15001));
    y.set("inbound_port", inbound);
    // The same port for both families unless the (deprecated) v6 flag differs.
    match g.port("redirect-inbound-port-v6")?.filter(|p| *p != inbound) {
        Some(v6) => y.set("inbound_port_ipv6", v6),
        None => y.set("inbound_port_ipv6", "null"),
    }
    y.set("tunnel_port", "null");
    let user = g.last("kuma-dp-user").or(g.last("kuma-dp-uid"));
    let uid = match user {
        None => DEFAULT_UID,
        Some(u) => match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match nix::unistd::User::from_name(u).ok().flatten() {
                Some(found) => found.uid.as_raw(),
                None if u == "kuma-dp" => DEFAULT_UID,
                None => {
                    return Err(Error::config(format!(
                        "kumactl install transparent-proxy: --kuma-dp-user {u}: no such user on this machine: give the uid the proxy runs as"
                    )))
                }
            },
        },
    };
    y.list("proxy_uids", &[uid]);
    y.list("proxy_gids", &Vec::<u32>::new());
    if g.bool("redirect-inbound", true)? {
        y.set("inbound_ports", "\"*\"");
    } else {
        y.list("inbound_ports", &Vec::<u16>::new());
    }
    y.list("inbound_exclude", &port_ranges(&g, "exclude-inbound-ports")?);
    y.list("inbound_sources_exclude", &super::cidrs(&g, "exclude-inbound-ips")?);
    y.set("outbound_ranges_include", "\"*\"");
    y.list("outbound_ranges_exclude", &super::cidrs(&g, "exclude-outbound-ips")?);
    y.list("outbound_ports_exclude", &port_ranges(&g, "exclude-outbound-ports")?);
    // `[protocol:]ports:uids`; only every port (`*`) is a plain uid exclusion.
    let mut uids = Vec::new();
    for spec in g.flags.iter().filter(|(n, _)| *n == "exclude-outbound-ports-for-uids").map(|(_, v)| v) {
        let parts: Vec<&str> = spec.split(':').collect();
        let (ports, ids) = match parts.as_slice() {
            [ids] => ("*", *ids),
            [ports, ids] | [_, ports, ids] => (*ports, *ids),
            _ => return Err(g.bad("exclude-outbound-ports-for-uids", spec, "[protocol:]ports:uids")),
        };
        if ports != "*" {
            return Err(Error::config(format!(
                "kumactl install transparent-proxy: --exclude-outbound-ports-for-uids {spec} cannot be expressed in a policy: per-uid port exclusions (only `*:UIDS`, every port, can be)"
            )));
        }
        let items: Vec<String> = ids.split(',').map(|s| s.trim().to_string()).collect();
        uids.extend(numbers(&g, "exclude-outbound-ports-for-uids", &items)?);
    }
    y.list("outbound_uids_exclude", &uids);
    let all = g.bool("redirect-all-dns-traffic", false)?;
    let dns = all || g.bool("redirect-dns", false)?;
    y.set("dns_capture", dns);
    y.set("dns_capture_all", all);
    if dns && !all {
        y.comment("dns_servers: kumactl reads them from /etc/resolv.conf; list them here");
    }
    if let Some(p) = g.port("redirect-dns-port")?.filter(|p| *p != crate::policy::DNS_AGENT_PORT) {
        return Err(Error::config(format!(
            "kumactl install transparent-proxy: --redirect-dns-port {p} cannot be expressed in a policy: the DNS agent listens on {}",
            crate::policy::DNS_AGENT_PORT
        )));
    }
    y.set("drop_invalid", g.bool("drop-invalid-packets", false)?);
    let ipv6 = match g.last("ip-family-mode") {
        None | Some("dualstack") => true,
        Some("ipv4") => false,
        Some(other) => return Err(g.bad("ip-family-mode", other, "dualstack or ipv4")),
    };
    y.set("ipv6", ipv6 && !g.bool("ipv6-disabled", false)?);
    Ok(y.done(Mesh::Kuma, "kumactl install transparent-proxy"))
}

#[cfg(test)]
mod tests {
    use super::super::from_command;
    use crate::model::profile::Profile;
    use crate::policy::{Cidr, PortRange, Select};

    fn kuma(cmd: &str) -> crate::policy::Policy {
        from_command(cmd).unwrap().policy(&Profile::builtin("kuma").unwrap()).unwrap()
    }

    #[test]
    fn the_distro_tests_and_the_dry_run_tests() {
        // kuma/PROVENANCE.md: the distro containers' default run.
        let p = kuma("kumactl install transparent-proxy --kuma-dp-user kuma-dp");
        assert_eq!((p.outbound_port, p.inbound_port, p.inbound_port_ipv6), (15001, 15006, None));
        assert_eq!((p.proxy_uids, p.proxy_gids, p.tunnel_port), (vec![5678], vec![], None));
        assert_eq!((p.inbound_ports, p.outbound_ranges_include), (Select::All, Select::All));
        assert!(p.ipv6 && !p.dns_capture);
        // The dry-run test's overrides.
        let p = kuma("kumactl install transparent-proxy --dry-run --ip-family-mode ipv4 --kuma-dp-user root --redirect-outbound-port 12345 --redirect-inbound-port 12346 --exclude-outbound-ports 2000,2001 --exclude-inbound-ports 1000,1001");
        assert_eq!((p.outbound_port, p.inbound_port, p.proxy_uids), (12345, 12346, vec![0]));
        assert_eq!(p.inbound_exclude, [1000, 1001].map(PortRange::one));
        assert_eq!(p.outbound_ports_exclude, [2000, 2001].map(PortRange::one));
        assert!(!p.ipv6);
    }

    #[test]
    fn addresses_dns_and_uids() {
        let p = kuma("kumactl install transparent-proxy --redirect-all-dns-traffic --exclude-outbound-ips 10.0.0.1,192.168.0.0/24 --exclude-inbound-ips 192.168.0.1 --exclude-outbound-ports-for-uids '*:106-108' --redirect-inbound-port-v6 15010");
        assert!(p.dns_capture && p.dns_capture_all);
        assert_eq!(
            p.outbound_ranges_exclude,
            [Cidr::parse("10.0.0.1/32").unwrap(), Cidr::parse("192.168.0.0/24").unwrap()]
        );
        assert_eq!(p.inbound_sources_exclude, [Cidr::parse("192.168.0.1/32").unwrap()], "a source exclusion");
        assert_eq!(p.outbound_uids_exclude, [106, 107, 108]);
        assert_eq!(p.inbound_port_ipv6, Some(15010));
        let p = kuma("kumactl install transparent-proxy --redirect-inbound=false --kuma-dp-uid 7");
        assert_eq!((p.inbound_ports, p.proxy_uids), (Select::Only(vec![]), vec![7]));
    }

    #[test]
    fn what_a_policy_cannot_say_is_refused() {
        let refused = |cmd: &str, want: &str| {
            let e = from_command(cmd).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd}: {e}");
        };
        refused("kumactl install transparent-proxy --vnet docker0:172.17.0.0/16", "--vnet cannot be expressed");
        refused(
            "kumactl install transparent-proxy --exclude-outbound-ports-for-uids 53,3000-5000:106-108",
            "per-uid port exclusions",
        );
        refused("kumactl install transparent-proxy --config-file /1.yaml", "configuration files are not read");
        refused("kumactl install transparent-proxy --redirect-dns --redirect-all-dns-traffic", "one of --redirect-dns");
        refused("kumactl install transparent-proxy --kuma-dp-user no-such-user-here", "no such user");
        refused("kumactl install transparent-proxy --exclude-ports 1", "unknown flag `--exclude-ports`");
        refused("kumactl install transparent-proxy --ip-family-mode ipv6", "give dualstack or ipv4");
    }
}

//! `istio-iptables` (and `pilot-agent istio-iptables`). Flags and defaults
//! from istio/istio tools/istio-iptables/pkg/cmd/root.go (bindCmdlineFlags,
//! bindFlags) and the names in tools/istio-iptables/pkg/constants/constants.go;
//! the policy's fields were named after these flags, so the mapping is one
//! to one. Owner groups and the host loopback range are environment-only
//! there ("deliberately have no equivalent command-line flags"), so they keep
//! their defaults here.

use super::{flag, parse_flags, port_ranges, val, Derived, Flag, Yaml};
use crate::policy::Mesh;
use crate::{Error, Result};

const SOURCE: &str = "istio/istio tools/istio-iptables/pkg/cmd/root.go";

const FLAGS: &[Flag] = &[
    val("envoy-port", Some('p')),
    val("inbound-capture-port", Some('z')),
    val("inbound-tunnel-port", Some('e')),
    val("proxy-uid", Some('u')),
    val("proxy-gid", Some('g')),
    val("istio-inbound-interception-mode", Some('m')),
    val("istio-inbound-ports", Some('b')),
    val("istio-local-exclude-ports", Some('d')),
    val("istio-exclude-interfaces", Some('c')),
    val("istio-service-cidr", Some('i')),
    val("istio-service-exclude-cidr", Some('x')),
    val("istio-outbound-ports", Some('q')),
    val("istio-local-outbound-ports-exclude", Some('o')),
    val("kube-virt-interfaces", Some('k')),
    val("istio-inbound-tproxy-mark", Some('t')),
    val("istio-inbound-tproxy-route-table", Some('r')),
    flag("redirect-dns", None),
    flag("capture-all-dns", None),
    flag("drop-invalid", None),
    flag("dual-stack", None),
    // These change how or whether rules are applied, not which.
    flag("dry-run", Some('n')),
    flag("iptables-trace-logging", None),
    flag("restore-format", Some('f')),
    val("iptables-probe-port", None),
    val("probe-timeout", None),
    flag("skip-rule-apply", None),
    flag("run-validation", None),
    val("network-namespace", None),
    flag("cni-mode", None),
    flag("host-nsenter-exec", None),
    flag("reconcile", None),
    flag("cleanup-only", None),
    flag("force-apply", None),
    flag("native-nftables", None),
    flag("force-legacy-iptables", None),
    // istio.io/pkg/log's flags, which pilot-agent and istio-iptables carry.
    val("log_output_level", None),
    val("log_stacktrace_level", None),
    val("log_target", None),
    flag("log_as_json", None),
    val("log_caller", None),
    val("log_rotate", None),
    val("log_rotate_max_age", None),
    val("log_rotate_max_backups", None),
    val("log_rotate_max_size", None),
];

pub(super) fn derive(args: &[String]) -> Result<Derived> {
    let g = parse_flags("istio-iptables", SOURCE, FLAGS, args, false)?;
    if g.bool("cleanup-only", false)? {
        return Err(Error::config(
            "istio-iptables: --cleanup-only removes rules and installs none: no policy to derive",
        ));
    }
    let mut y = Yaml::new(Mesh::Istio, format!("from: istio-iptables {}", super::shell_join(args)));
    let port = |name: &str, default: u16| -> Result<u16> { Ok(g.port(name)?.unwrap_or(default)) };
    y.set("outbound_port", port("envoy-port", 15001)?);
    y.set("inbound_port", port("inbound-capture-port", 15006)?);
    y.set("tunnel_port", port("inbound-tunnel-port", 15008)?);
    // -g defaults to -u, -u to ENVOY_USER's uid, else 1337.
    let ids = |name: &str| -> Result<Vec<u32>> {
        g.list(name).iter().map(|s| s.parse::<u32>().map_err(|_| g.bad(name, s, "uids/gids as numbers"))).collect()
    };
    let uids = if g.has("proxy-uid") { ids("proxy-uid")? } else { vec![1337] };
    let gids = if g.has("proxy-gid") { ids("proxy-gid")? } else { uids.clone() };
    y.list("proxy_uids", &uids);
    y.list("proxy_gids", &gids);
    match g.last("istio-inbound-interception-mode").unwrap_or("") {
        "" | "REDIRECT" => y.set("mode", "REDIRECT"),
        "TPROXY" => y.set("mode", "TPROXY"),
        other => return Err(g.bad("istio-inbound-interception-mode", other, "REDIRECT or TPROXY")),
    }
    if let Some(m) = g.last("istio-inbound-tproxy-mark") {
        y.set("tproxy_mark", m.parse::<u32>().map_err(|_| g.bad("istio-inbound-tproxy-mark", m, "a number"))?);
    }
    if let Some(t) = g.last("istio-inbound-tproxy-route-table") {
        y.set("tproxy_table", t.parse::<u32>().map_err(|_| g.bad("istio-inbound-tproxy-route-table", t, "a number"))?);
    }
    // `*` or a list; an empty list disables (root.go's help for -b and -i).
    let star_or = |y: &mut Yaml, key: &str, name: &str| {
        let items = g.list(name);
        if items.iter().any(|s| s == "*") {
            y.set(key, "\"*\"");
        } else {
            y.list(key, &items);
        }
    };
    star_or(&mut y, "inbound_ports", "istio-inbound-ports");
    y.list("inbound_exclude", &port_ranges(&g, "istio-local-exclude-ports")?);
    star_or(&mut y, "outbound_ranges_include", "istio-service-cidr");
    y.list("outbound_ranges_exclude", &super::cidrs(&g, "istio-service-exclude-cidr")?);
    let ports = |name: &str| -> Result<Vec<u16>> {
        g.list(name).iter().map(|s| s.parse::<u16>().map_err(|_| g.bad(name, s, "ports as numbers"))).collect()
    };
    y.list("outbound_ports_include", &ports("istio-outbound-ports")?);
    y.list("outbound_ports_exclude", &port_ranges(&g, "istio-local-outbound-ports-exclude")?);
    y.list("exclude_interfaces", &g.list("istio-exclude-interfaces"));
    y.list("kube_virt_interfaces", &g.list("kube-virt-interfaces"));
    let dns = g.bool("redirect-dns", false)?;
    y.set("dns_capture", dns);
    y.set("dns_capture_all", g.bool("capture-all-dns", false)?);
    if dns && !g.bool("capture-all-dns", false)? {
        y.comment("dns_servers: istio-iptables reads them from the pod's /etc/resolv.conf; list them here");
    }
    y.set("drop_invalid", g.bool("drop-invalid", false)?);
    // IPv6 rules follow the pod's addresses (root.go getLocalIP); --dual-stack
    // asks for both families.
    y.set("ipv6", g.bool("dual-stack", false)?);
    Ok(y.done(Mesh::Istio, "istio-iptables"))
}

#[cfg(test)]
mod tests {
    use super::super::{from_args, from_command, tests::words};
    use crate::model::profile::Profile;
    use crate::policy::{Cidr, Mode, PortRange, Select};

    #[test]
    fn the_injectors_command_line_is_the_cni_basic_policy() {
        // The sidecar injector's istio-init arguments (VARIANTS.md: what the
        // injector sets, the cni-basic configuration).
        let d = from_command("pilot-agent istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020 -o 15020 --log_output_level=default:info").unwrap();
        let p = d.policy(&Profile::istio()).unwrap();
        let golden = crate::policy::Policy::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policies/cni-basic.yaml"),
        )
        .unwrap();
        assert_eq!(crate::policy::Policy { note: golden.note.clone(), ..p }, golden, "{}", d.yaml);
    }

    #[test]
    fn each_flag_lands_in_its_field() {
        let d = from_args(&words("istio-iptables -p 1 -z 2 -e 3 -u 3,4 -g 1,2 -m TPROXY -t 7 -r 70 -b 4000,5000 -d 6000 -i 10.0.0.0/8 -x 10.1.0.0/16 -q 31000 -o 5555:5557 -c nic9 -k eth1 --redirect-dns --capture-all-dns --drop-invalid --dual-stack -n")).unwrap();
        let p = d.policy(&Profile::istio()).unwrap();
        assert_eq!((p.outbound_port, p.inbound_port, p.tunnel_port), (1, 2, Some(3)));
        assert_eq!((p.proxy_uids, p.proxy_gids), (vec![3, 4], vec![1, 2]));
        assert_eq!((p.mode, p.tproxy_mark, p.tproxy_table), (Mode::Tproxy, 7, 70));
        assert_eq!(p.inbound_ports, Select::Only(vec![4000, 5000]));
        assert_eq!(p.inbound_exclude, [PortRange::one(6000)]);
        assert_eq!(p.outbound_ranges_include, Select::Only(vec![Cidr::parse("10.0.0.0/8").unwrap()]));
        assert_eq!(p.outbound_ranges_exclude, [Cidr::parse("10.1.0.0/16").unwrap()]);
        assert_eq!(p.outbound_ports_include, [31000]);
        assert_eq!(p.outbound_ports_exclude, [PortRange { first: 5555, last: 5557 }]);
        assert_eq!((p.exclude_interfaces, p.kube_virt_interfaces), (vec!["nic9".into()], vec!["eth1".into()]));
        assert!(p.dns_capture && p.dns_capture_all && p.drop_invalid && p.ipv6);
        let base = from_command("istio-iptables").unwrap().policy(&Profile::istio()).unwrap();
        assert_eq!(
            crate::policy::Policy { note: String::new(), ..base },
            crate::policy::Policy::default(),
            "no flags: the flags' defaults, which are the policy's"
        );
        let g = from_command("istio-iptables -u 5").unwrap().policy(&Profile::istio()).unwrap();
        assert_eq!(g.proxy_gids, [5], "-g defaults to -u");
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_generator() {
        let e = from_command("istio-iptables --envoy-prot 1").unwrap_err().to_string();
        assert!(e.contains("istio-iptables: unknown flag `--envoy-prot`") && e.contains("root.go"), "{e}");
        let e = from_command("istio-iptables -m DIVERT").unwrap_err().to_string();
        assert!(e.contains("--istio-inbound-interception-mode DIVERT: give REDIRECT or TPROXY"), "{e}");
        let e = from_command("istio-iptables -p 0").unwrap_err().to_string();
        assert!(e.contains("--envoy-port 0"), "{e}");
        let e = from_command("istio-iptables -d ssh").unwrap_err().to_string();
        assert!(e.contains("--istio-local-exclude-ports ssh"), "{e}");
        let e = from_command("istio-iptables --cleanup-only").unwrap_err().to_string();
        assert!(e.contains("no policy"), "{e}");
    }
}

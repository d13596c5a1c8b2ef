//! The oracle, the specification: the proxy listener ports a connection
//! passes under a policy, each mesh's rules followed as they are written.

use std::net::IpAddr;

use crate::base::net::Family;
use crate::policy::schema::{Policy, Select};
use crate::policy::DNS_AGENT_PORT;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::dns_server_is_local;
    use crate::policy::parse::tests::{policy, under};
    use crate::policy::schema::Mesh;

    pub(crate) const REMOTE: Dest = Dest::Remote(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 20)));
    pub(crate) const OWN: Dest = Dest::OwnPod(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 10)));

    pub(crate) fn inbound(port: u16) -> Query {
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

    pub(crate) fn app(dest: Dest, port: u16) -> Query {
        Query { inbound: false, udp: false, invalid: false, uid: 1000, gid: 1000, dest, port, link: 0, source: None }
    }

    pub(crate) fn ip(s: &str) -> Dest {
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
            e.starts_with("p.yaml: owner_groups_include: owner group `no-such-group-here` does not exist")
                && e.contains("groupadd"),
            "{e}"
        );
        assert!(policy("owner_groups_exclude: [root, 5]").check_groups("p.yaml").is_ok(), "root is on every machine");
        let r = inc.to_restore_for(Family::Ipv4);
        assert!(r.contains("-A ISTIO_OUTPUT -m owner ! --gid-owner 202 -m owner ! --gid-owner 203 -j RETURN"), "{r}");
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

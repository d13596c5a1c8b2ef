//! The reference rules: iptables-restore input, in Istio's chains, that
//! implement what the oracle specifies for a policy.

use std::net::IpAddr;

use crate::base::cidr::Cidr;
use crate::base::net::Family;
use crate::policy::schema::{Mode, Policy, PortRange, Select};
use crate::policy::DNS_AGENT_PORT;
use crate::rules::istio::{LoGuard, Owner, Restore};

impl Policy {
    /// The reference rules for this policy (iptables-restore input), in
    /// Istio's chains. They implement what [`oracle`](super::oracle()) specifies and hold no
    /// rule that cannot change a packet's fate (so a mutation run can tell
    /// whether the probes would catch any wrong rule).
    pub fn to_restore_for(&self, family: Family) -> String {
        let (passthrough, loopback) = match family {
            Family::Ipv4 => ("127.0.0.6/32", self.host_loopback_cidr.to_string()),
            Family::Ipv6 => ("::6/128", "::1/128".to_string()),
        };
        let capture_out = self.captures_outbound(family);
        let mut r = Restore::nat();
        r.in_redirect(self.inbound_for(family));
        // What arrives on a KubeVirt interface is the VM's outbound traffic:
        // to the outbound listener where the ranges capture it.
        let mut virt = Restore::default();
        for x in &self.kube_virt_interfaces {
            match &self.outbound_ranges_include {
                Select::All => virt.interface_captured(x, None),
                Select::Only(_) => {
                    for c in self.includes(family) {
                        virt.interface_captured(x, Some(&c));
                    }
                }
            }
        }
        if capture_out || !virt.is_empty() {
            r.redirect(self.outbound_port);
        }
        r.extend(&virt);
        // Nothing arriving on an excluded or KubeVirt interface is inbound
        // traffic (under TPROXY, in mangle below).
        let mut not_inbound = Restore::default();
        for x in self.exclude_interfaces.iter().chain(&self.kube_virt_interfaces) {
            not_inbound.interface_in_return(x);
        }
        let capture_in = !self.inbound_ports.is_none() && self.inbound_reachable();
        if capture_in && self.mode == Mode::Redirect {
            r.extend(&not_inbound);
        }
        if capture_out {
            for x in &self.exclude_interfaces {
                r.interface_out_return(x);
            }
        }
        // The inbound capture: nat REDIRECT, or under TPROXY the mangle
        // table (written first, as the table order of a restore file).
        let mut inbound = Restore::default();
        let jump = if self.mode == Mode::Tproxy { "ISTIO_TPROXY" } else { "ISTIO_IN_REDIRECT" };
        if capture_in {
            inbound.jump_inbound();
            if self.mode == Mode::Tproxy {
                // lo traffic is never TPROXY'd: the proxy's own transparent
                // upstream and the app calling its own pod (istio#31095)
                // arrive there; the proxy calling its pod is nat-redirected.
                inbound.inbound_lo_return();
                // TPROXY drops a packet whose socket is not transparent: the
                // replies to the pod's own outbound connections must pass
                // (with a list of ports they never reach a TPROXY rule).
                if self.inbound_ports == Select::All {
                    inbound.inbound_established_return();
                }
            }
            // Sources never captured (only where something would be).
            let sources: Vec<&Cidr> = self.inbound_sources_exclude.iter().filter(|c| c.family() == family).collect();
            match &self.inbound_ports {
                Select::All => {
                    if let Some(t) = self.tunnel_port {
                        inbound.inbound_port(t, "RETURN");
                    }
                    let tunnel = self.tunnel_port.map(PortRange::one);
                    for p in self.inbound_exclude.iter().filter(|p| Some(**p) != tunnel) {
                        inbound.inbound_port(p.to_iptables(), "RETURN");
                    }
                    for c in &sources {
                        inbound.inbound_source_return(c);
                    }
                    inbound.inbound_rest(jump);
                }
                Select::Only(ports) => {
                    if !ports.is_empty() {
                        for c in &sources {
                            inbound.inbound_source_return(c);
                        }
                    }
                    for p in ports.iter().filter(|p| Some(**p) != self.tunnel_port) {
                        inbound.inbound_port(p, jump);
                    }
                }
            }
        }
        // A packet conntrack cannot place skips NAT and would reach the app
        // port directly (and be reset): dropped first, when asked.
        let mut drop_invalid = Restore::default();
        if self.drop_invalid {
            drop_invalid.drop_invalid();
        }
        // Tables before nat (mangle), as a restore file orders them.
        let mut head = String::new();
        if self.mode == Mode::Tproxy && capture_in {
            let m = self.tproxy_mark;
            let mut mangle = Restore::table("mangle", &["PREROUTING", "OUTPUT"], &["ISTIO_INBOUND", "ISTIO_TPROXY"]);
            mangle.extend(&drop_invalid);
            mangle.tproxy(self.inbound_port, m);
            mangle.extend(&not_inbound);
            mangle.extend(&inbound);
            // The proxy's transparent upstream to the app is marked; its
            // connection keeps the mark so the app's replies, addressed to
            // the client, are routed back to the proxy (table `tproxy_table`).
            mangle.save_mark(m);
            mangle.restore_mark(m);
            head = mangle.commit();
        } else {
            r.extend(&inbound);
            if !drop_invalid.is_empty() {
                let mut mangle = Restore::table("mangle", &["PREROUTING"], &[]);
                mangle.extend(&drop_invalid);
                head = mangle.commit();
            }
        }
        r.jump_output(false);
        let dns_servers = if self.dns_capture { self.dns_servers_for(family) } else { Vec::new() };
        let dns = !dns_servers.is_empty();
        let ports_exclude = |r: &mut Restore| {
            for p in &self.outbound_ports_exclude {
                r.output_port_return("tcp", p.to_iptables());
                if dns && p.contains(53) {
                    r.output_port_return("udp", p.to_iptables());
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
                r.dest_return(c);
            }
        }
        match (lo_to_inbound, self.mode) {
            (false, _) => {}
            // The transparent upstream comes from the proxy gid over lo.
            (true, Mode::Tproxy) => r.mark_return(self.tproxy_mark),
            (true, Mode::Redirect) => r.passthrough_return(passthrough),
        }
        // Every proxy identity's lo redirect before any lo RETURN, so a
        // second uid, or a gid alone, is treated as the proxy too.
        // (With DNS capture the proxy's own TCP queries over lo are not redirected.)
        let guard = match (dns, self.tunnel_port) {
            (true, Some(t)) => LoGuard::TcpExcept(vec![53, t]),
            (true, None) => LoGuard::TcpExcept(vec![53]),
            (false, Some(t)) => LoGuard::TcpExcept(vec![t]),
            (false, None) => LoGuard::Tcp,
        };
        if lo_to_inbound {
            for u in &self.proxy_uids {
                r.lo_to_inbound(&loopback, &guard, Owner::Uid, *u);
            }
            for g in &self.proxy_gids {
                r.lo_to_inbound(&loopback, &guard, Owner::Gid, *g);
            }
        }
        // OSM: after the proxy's lo redirect ([`Mesh::ports_exclude_first`]).
        if !self.mesh.ports_exclude_first() {
            ports_exclude(&mut r);
        }
        if capture_out || dns {
            for u in &self.proxy_uids {
                r.owner_return(Owner::Uid, u);
            }
            for u in &self.outbound_uids_exclude {
                r.owner_return(Owner::Uid, u);
            }
            // A proxy gid outside the included owner groups is returned by
            // the group rule anyway (but its DNS would be captured first).
            for g in self.proxy_gids.iter().filter(|g| {
                dns || self.owner_groups_include.is_empty() || Policy::in_groups(&self.owner_groups_include, **g)
            }) {
                r.owner_return(Owner::Gid, g);
            }
            // The app's queries to the nameservers go to the agent, over lo
            // (127.0.0.53) too: before lo is returned.
            for server in &dns_servers {
                let to = (!self.dns_capture_all).then_some(*server);
                for proto in ["udp", "tcp"] {
                    r.dns_redirect(proto, to, DNS_AGENT_PORT);
                }
                if to.is_none() {
                    break;
                }
            }
            if capture_out && !self.judges_lo(family) {
                r.lo_return();
            }
        }
        if capture_out {
            if !self.owner_groups_include.is_empty() {
                r.groups_outside_return(&self.owner_groups_include);
            }
            for g in &self.owner_groups_exclude {
                r.owner_return(Owner::Gid, g);
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
                r.dest_return(&loopback);
            }
            // An excluded range matters only where something would capture it.
            let includes = self.includes(family);
            let overlaps = |c: &Cidr| {
                self.outbound_ranges_include == Select::All
                    || includes.iter().any(|i| i.contains(c.addr) || c.contains(i.addr))
            };
            let written = self.mesh.ranges_exclude_first();
            for c in self.outbound_ranges_exclude.iter().filter(|c| !written && c.family() == family && overlaps(c)) {
                r.dest_return(c);
            }
            if self.outbound_ranges_include == Select::All {
                r.rest_captured();
            } else {
                for c in self.live_includes(family) {
                    r.dest_captured(c);
                }
                for p in &self.outbound_ports_include {
                    r.port_captured(*p);
                }
            }
        }
        let mut out = head + &r.commit();
        if dns {
            out.push_str(&self.dns_zones(&dns_servers));
        }
        out
    }

    /// Conntrack zones for DNS, after istio-iptables: the agent's queries in
    /// zone 1, the app's queries and the agent's answers in zone 2, so that
    /// a query of the agent and one of the app with the same addresses and
    /// ports are never one connection (istio/istio#46935). Istio also puts
    /// the nameservers' answers in zone 1 (raw PREROUTING); nothing NATs
    /// them, so no packet's fate depends on that, and it is left out.
    fn dns_zones(&self, servers: &[IpAddr]) -> String {
        let mut r = Restore::table("raw", &["OUTPUT"], &[]);
        // The agent's identity (the proxy's first gid, else its first uid:
        // under TPROXY it runs as root with the gid).
        let agent = match (self.proxy_gids.first(), self.proxy_uids.first()) {
            (Some(g), _) => (Owner::Gid, *g),
            (None, Some(u)) => (Owner::Uid, *u),
            (None, None) => unreachable!("a policy has a proxy uid or gid"),
        };
        r.zone_agent_answers(DNS_AGENT_PORT, agent.0, agent.1);
        r.zone_agent_queries(agent.0, agent.1);
        for server in servers {
            let to = (!self.dns_capture_all).then_some(*server);
            r.zone_app_queries(to);
            if to.is_none() {
                break;
            }
        }
        r.commit()
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::oracle::tests::inbound;
    use crate::policy::oracle::{invalid_fate, oracle, Query};
    use crate::policy::parse::tests::policy;

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

    /// One generator: the injector's policy and the built-in current shape
    /// (the same istio-iptables flags) spell every rule they share alike.
    /// The reference leaves out the rules no packet of that policy reaches
    /// (the lo owner RETURNs, 127.0.0.1) and returns lo for the app instead.
    #[test]
    fn the_injector_policy_and_the_current_shape_write_the_same_rules() {
        let p = policy("inbound_ports: '*'\ninbound_exclude: [15090, 15021, 15020]\noutbound_ranges_include: '*'");
        let builtin = crate::rules::istio::IstioCapture::default_for(crate::rules::istio::Shape::Current);
        for family in Family::BOTH {
            let shape = builtin.to_restore_for(family);
            let reference = p.to_restore_for(family);
            let only: Vec<&str> = reference
                .lines()
                .filter(|l| !shape.lines().any(|s| s == *l) && !l.contains("-o lo -j RETURN"))
                .collect();
            assert!(only.is_empty(), "{family:?}: rules only the reference spells: {only:?}\n{reference}");
            assert_eq!(reference.lines().filter(|l| l.starts_with("-A ")).count(), 16, "{reference}");
        }
    }
}

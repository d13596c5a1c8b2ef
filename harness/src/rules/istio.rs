//! The built-in Istio sidecar rule generator: restore input for the shapes
//! Istio writes, from options that mirror istio-iptables' flags.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::base::net::Family;

/// The two shapes of Istio's sidecar rules the built-in generator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// What the sidecar injector runs today: `! --dport 15008` on the lo
    /// redirect rules, all protocols jump to ISTIO_OUTPUT, no port-22 exclusion.
    Current,
    /// The nine-rule shape of the era the well-known flow article describes:
    /// TCP-only OUTPUT jump, port 22 excluded inbound, no tunnel-port guard.
    Classic,
}

/// What the reference generator is asked to do; the fields mirror
/// `istio-iptables` flags (`-p`, `-z`, `-u`, `-g`, `-i '*'`, `-d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioCapture {
    pub shape: Shape,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub tunnel_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Inbound ports not captured (`-d`), in the order given.
    pub inbound_exclude: Vec<u16>,
    /// Passthrough source Envoy uses for inbound upstream connections.
    pub inbound_passthrough: std::net::Ipv4Addr,
    pub inbound_passthrough6: std::net::Ipv6Addr,
}

impl IstioCapture {
    /// `istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`
    pub fn default_for(shape: Shape) -> IstioCapture {
        IstioCapture {
            shape,
            outbound_port: 15001,
            inbound_port: 15006,
            tunnel_port: 15008,
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_exclude: vec![15090, 15021, 15020],
            inbound_passthrough: std::net::Ipv4Addr::new(127, 0, 0, 6),
            inbound_passthrough6: std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6),
        }
    }

    /// The same rules as `iptables -t nat ...` commands, the form
    /// `istio-iptables --dry-run` prints (a script for `--script`).
    /// `iptables` names the IPv4 command (`iptables`, `iptables-nft`, ...);
    /// the IPv6 commands use the same name with `ip6tables`.
    pub fn to_script(&self, iptables: &str) -> String {
        let mut out = String::from("#!/bin/sh\nset -e\n");
        for (family, cmd) in
            [(Family::Ipv4, iptables.to_string()), (Family::Ipv6, iptables.replacen("iptables", "ip6tables", 1))]
        {
            for line in self.to_restore_for(family).lines() {
                if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) {
                    if chain.starts_with("ISTIO_") {
                        out.push_str(&format!("{cmd} -t nat -N {chain}\n"));
                    }
                } else if line.starts_with("-A ") {
                    out.push_str(&format!("{cmd} -t nat {line}\n"));
                }
            }
        }
        out
    }

    /// The same policy as a native nftables ruleset (`nft -f`), shaped like
    /// istio-nftables' `inet istio-proxy-nat` table.
    pub fn to_nft(&self) -> String {
        let classic = self.shape == Shape::Classic;
        let (uid, gid) = (self.proxy_uid, self.proxy_gid);
        let t = "inet istio-proxy-nat";
        let lo_guard =
            if classic { String::new() } else { format!(" meta l4proto tcp tcp dport != {}", self.tunnel_port) };
        let mut r = format!("table {t}\ndelete table {t}\ntable {t} {{\n}}\n");
        r.push_str(&format!("add chain {t} prerouting {{ type nat hook prerouting priority dstnat; }}\n"));
        r.push_str(&format!("add chain {t} output {{ type nat hook output priority -100; }}\n"));
        for c in ["istio-inbound", "istio-in-redirect", "istio-output", "istio-redirect"] {
            r.push_str(&format!("add chain {t} {c}\n"));
        }
        let rule = |r: &mut String, chain: &str, body: &str| r.push_str(&format!("add rule {t} {chain} {body}\n"));
        rule(&mut r, "prerouting", "meta l4proto tcp jump istio-inbound");
        rule(&mut r, "output", if classic { "meta l4proto tcp jump istio-output" } else { "jump istio-output" });
        let mut skip = vec![self.tunnel_port];
        if classic {
            skip.push(22);
        }
        skip.extend(self.inbound_exclude.iter().copied().filter(|p| *p != self.tunnel_port));
        for port in skip {
            rule(&mut r, "istio-inbound", &format!("meta l4proto tcp tcp dport {port} return"));
        }
        rule(&mut r, "istio-inbound", "meta l4proto tcp jump istio-in-redirect");
        rule(&mut r, "istio-in-redirect", &format!("meta l4proto tcp redirect to :{}", self.inbound_port));
        // One inet table for both families: each address-specific rule comes
        // in an IPv4 and an IPv6 form, in that order, as istio-nftables writes them.
        let p6 = self.inbound_passthrough6;
        rule(&mut r, "istio-output", &format!("oifname \"lo\" ip saddr {}/32 return", self.inbound_passthrough));
        rule(&mut r, "istio-output", &format!("oifname \"lo\" ip6 saddr {p6}/128 return"));
        rule(
            &mut r,
            "istio-output",
            &format!("oifname \"lo\" ip daddr != 127.0.0.1/32{lo_guard} meta skuid {uid} jump istio-in-redirect"),
        );
        rule(
            &mut r,
            "istio-output",
            &format!("oifname \"lo\" ip6 daddr != ::1/128{lo_guard} meta skuid {uid} jump istio-in-redirect"),
        );
        rule(&mut r, "istio-output", &format!("oifname \"lo\" meta skuid != {uid} return"));
        rule(&mut r, "istio-output", &format!("meta skuid {uid} return"));
        rule(
            &mut r,
            "istio-output",
            &format!("oifname \"lo\" ip daddr != 127.0.0.1/32{lo_guard} meta skgid {gid} jump istio-in-redirect"),
        );
        rule(
            &mut r,
            "istio-output",
            &format!("oifname \"lo\" ip6 daddr != ::1/128{lo_guard} meta skgid {gid} jump istio-in-redirect"),
        );
        rule(&mut r, "istio-output", &format!("oifname \"lo\" meta skgid != {gid} return"));
        rule(&mut r, "istio-output", &format!("meta skgid {gid} return"));
        rule(&mut r, "istio-output", "ip daddr 127.0.0.1/32 return");
        rule(&mut r, "istio-output", "ip6 daddr ::1/128 return");
        rule(&mut r, "istio-output", "jump istio-redirect");
        rule(&mut r, "istio-redirect", &format!("meta l4proto tcp redirect to :{}", self.outbound_port));
        r
    }

    /// iptables-restore input for the nat table (IPv4).
    pub fn to_restore(&self) -> String {
        self.to_restore_for(Family::Ipv4)
    }

    /// iptables-restore (IPv4) or ip6tables-restore (IPv6) input: the same
    /// rules, with the family's passthrough source and loopback address.
    pub fn to_restore_for(&self, family: Family) -> String {
        let (passthrough, loopback) = match family {
            Family::Ipv4 => (format!("{}/32", self.inbound_passthrough), "127.0.0.1/32"),
            Family::Ipv6 => (format!("{}/128", self.inbound_passthrough6), "::1/128"),
        };
        let classic = self.shape == Shape::Classic;
        let (uid, gid) = (self.proxy_uid, self.proxy_gid);
        // The lo redirect rules skip the HBONE tunnel port in the current shape.
        let guard = if classic { LoGuard::None } else { LoGuard::TcpExcept(vec![self.tunnel_port]) };
        let mut r = Restore::nat();
        r.jump_inbound();
        r.jump_output(classic);
        // Inbound: the tunnel port, (ssh in the classic shape), the excluded
        // ports, then everything else to the inbound listener.
        let mut skip = vec![self.tunnel_port];
        if classic {
            skip.push(22);
        }
        skip.extend(self.inbound_exclude.iter().copied().filter(|p| *p != self.tunnel_port));
        for port in skip {
            r.inbound_port(port, "RETURN");
        }
        r.inbound_rest("ISTIO_IN_REDIRECT");
        r.in_redirect(self.inbound_port);
        // Outbound, the nine rules in Istio's order.
        r.passthrough_return(&passthrough);
        r.lo_to_inbound(loopback, &guard, Owner::Uid, uid);
        r.lo_others_return(Owner::Uid, uid);
        r.owner_return(Owner::Uid, uid);
        r.lo_to_inbound(loopback, &guard, Owner::Gid, gid);
        r.lo_others_return(Owner::Gid, gid);
        r.owner_return(Owner::Gid, gid);
        r.dest_return(loopback);
        r.rest_captured();
        r.redirect(self.outbound_port);
        r.commit()
    }
}

/// Whose socket an owner match names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Uid,
    Gid,
}

impl Owner {
    fn flag(self) -> &'static str {
        match self {
            Owner::Uid => "--uid-owner",
            Owner::Gid => "--gid-owner",
        }
    }
}

/// Which of the proxy's own lo connections its lo redirect leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoGuard {
    /// None: every protocol (the classic shape).
    None,
    /// TCP only, every port.
    Tcp,
    /// TCP except these ports (the HBONE tunnel port, DNS over TCP).
    TcpExcept(Vec<u16>),
}

impl std::fmt::Display for LoGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoGuard::None => Ok(()),
            LoGuard::Tcp => f.write_str(" -p tcp"),
            LoGuard::TcpExcept(ports) if ports.len() == 1 => write!(f, " -p tcp -m tcp ! --dport {}", ports[0]),
            LoGuard::TcpExcept(ports) => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                write!(f, " -p tcp -m multiport ! --dports {}", list.join(","))
            }
        }
    }
}

/// Restore input as it is written, rule by rule. Istio's generator in one
/// place: each kind of rule Istio writes is spelled here once, and both the
/// built-in shapes ([`IstioCapture`]) and a policy's reference rules are
/// written through it, so a change to how Istio writes a rule is made once.
/// A fragment (rules without a table line) is a `Restore::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restore(String);

impl Restore {
    /// `*TABLE`, its built-in chains (policy ACCEPT) and Istio's chains in it.
    pub fn table(name: &str, builtin: &[&str], chains: &[&str]) -> Restore {
        let mut r = Restore(format!("*{name}\n"));
        for c in builtin {
            let _ = writeln!(r.0, ":{c} ACCEPT [0:0]");
        }
        for c in chains {
            let _ = writeln!(r.0, ":{c} - [0:0]");
        }
        r
    }

    /// The head of Istio's nat table: the built-in chains and Istio's four.
    pub fn nat() -> Restore {
        Restore::table(
            "nat",
            &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            &["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"],
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rules of `other` after these.
    pub fn extend(&mut self, other: &Restore) {
        self.0.push_str(&other.0);
    }

    /// The table ends: its text, with COMMIT.
    pub fn commit(mut self) -> String {
        self.0.push_str("COMMIT\n");
        self.0
    }

    fn add(&mut self, chain: &str, spec: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.0, "-A {chain} {spec}");
    }

    // nat PREROUTING and OUTPUT, mangle PREROUTING.

    /// Inbound TCP enters ISTIO_INBOUND.
    pub fn jump_inbound(&mut self) {
        self.add("PREROUTING", format_args!("-p tcp -j ISTIO_INBOUND"));
    }

    /// Outbound traffic enters ISTIO_OUTPUT (TCP only in the classic shape).
    pub fn jump_output(&mut self, tcp_only: bool) {
        self.add("OUTPUT", format_args!("{}-j ISTIO_OUTPUT", if tcp_only { "-p tcp " } else { "" }));
    }

    /// What arrives on interface `x` (to `dest`, if given) goes to the outbound listener.
    pub fn interface_captured(&mut self, x: &str, dest: Option<&dyn std::fmt::Display>) {
        match dest {
            Some(d) => self.add("PREROUTING", format_args!("-i {x} -d {d} -j ISTIO_REDIRECT")),
            None => self.add("PREROUTING", format_args!("-i {x} -j ISTIO_REDIRECT")),
        }
    }

    /// Nothing arriving on interface `x` is inbound traffic.
    pub fn interface_in_return(&mut self, x: &str) {
        self.add("PREROUTING", format_args!("-i {x} -j RETURN"));
    }

    /// Nothing leaving by interface `x` is captured.
    pub fn interface_out_return(&mut self, x: &str) {
        self.add("OUTPUT", format_args!("-o {x} -j RETURN"));
    }

    /// `--drop-invalid`: a packet conntrack cannot place is dropped.
    pub fn drop_invalid(&mut self) {
        self.add("PREROUTING", format_args!("-m conntrack --ctstate INVALID -j DROP"));
    }

    /// TPROXY's marked connections keep their mark (mangle PREROUTING)...
    pub fn save_mark(&mut self, mark: u32) {
        self.add("PREROUTING", format_args!("-p tcp -m mark --mark {mark} -j CONNMARK --save-mark"));
    }

    /// ...and their replies get it back (mangle OUTPUT).
    pub fn restore_mark(&mut self, mark: u32) {
        self.add("OUTPUT", format_args!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark"));
    }

    // ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_TPROXY, ISTIO_REDIRECT.

    /// Inbound TCP to `port` (a port or `FIRST:LAST`) jumps to `target` (RETURN: not captured).
    pub fn inbound_port(&mut self, port: impl std::fmt::Display, target: &str) {
        self.add("ISTIO_INBOUND", format_args!("-p tcp -m tcp --dport {port} -j {target}"));
    }

    /// Inbound traffic from `source` is not captured.
    pub fn inbound_source_return(&mut self, source: impl std::fmt::Display) {
        self.add("ISTIO_INBOUND", format_args!("-s {source} -j RETURN"));
    }

    /// lo traffic is never TPROXY'd.
    pub fn inbound_lo_return(&mut self) {
        self.add("ISTIO_INBOUND", format_args!("-p tcp -i lo -j RETURN"));
    }

    /// Replies to the pod's own connections pass before TPROXY.
    pub fn inbound_established_return(&mut self) {
        self.add("ISTIO_INBOUND", format_args!("-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"));
    }

    /// Every other inbound TCP connection jumps to `target`.
    pub fn inbound_rest(&mut self, target: &str) {
        self.add("ISTIO_INBOUND", format_args!("-p tcp -j {target}"));
    }

    /// The inbound listener.
    pub fn in_redirect(&mut self, port: u16) {
        self.add("ISTIO_IN_REDIRECT", format_args!("-p tcp -j REDIRECT --to-ports {port}"));
    }

    /// The inbound listener under TPROXY.
    pub fn tproxy(&mut self, port: u16, mark: u32) {
        self.add("ISTIO_TPROXY", format_args!("-p tcp -j TPROXY --on-port {port} --tproxy-mark {mark}/0xffffffff"));
    }

    /// The outbound listener.
    pub fn redirect(&mut self, port: u16) {
        self.add("ISTIO_REDIRECT", format_args!("-p tcp -j REDIRECT --to-ports {port}"));
    }

    // ISTIO_OUTPUT.

    /// Envoy's inbound passthrough connections (from `source` over lo) are not captured.
    pub fn passthrough_return(&mut self, source: impl std::fmt::Display) {
        self.add("ISTIO_OUTPUT", format_args!("-s {source} -o lo -j RETURN"));
    }

    /// The transparent upstream under TPROXY (marked) is not captured.
    pub fn mark_return(&mut self, mark: u32) {
        self.add("ISTIO_OUTPUT", format_args!("-m mark --mark {mark} -j RETURN"));
    }

    /// The proxy's own lo connections off the host loopback range go to the inbound listener.
    pub fn lo_to_inbound(&mut self, loopback: impl std::fmt::Display, guard: &LoGuard, who: Owner, id: u32) {
        let flag = who.flag();
        self.add(
            "ISTIO_OUTPUT",
            format_args!("! -d {loopback} -o lo{guard} -m owner {flag} {id} -j ISTIO_IN_REDIRECT"),
        );
    }

    /// lo traffic of anyone but `id` is not captured.
    pub fn lo_others_return(&mut self, who: Owner, id: u32) {
        self.add("ISTIO_OUTPUT", format_args!("-o lo -m owner ! {} {id} -j RETURN", who.flag()));
    }

    /// lo traffic is not captured.
    pub fn lo_return(&mut self) {
        self.add("ISTIO_OUTPUT", format_args!("-o lo -j RETURN"));
    }

    /// `id`'s traffic (the proxy's, an excluded uid or group's) is not captured.
    pub fn owner_return(&mut self, who: Owner, id: impl std::fmt::Display) {
        self.add("ISTIO_OUTPUT", format_args!("-m owner {} {id} -j RETURN", who.flag()));
    }

    /// The traffic of every group but these is not captured.
    pub fn groups_outside_return(&mut self, groups: &[impl std::fmt::Display]) {
        let not_in: Vec<String> = groups.iter().map(|g| format!("-m owner ! --gid-owner {g}")).collect();
        self.add("ISTIO_OUTPUT", format_args!("{} -j RETURN", not_in.join(" ")));
    }

    /// `proto` traffic to `port` (a port or `FIRST:LAST`) is not captured.
    pub fn output_port_return(&mut self, proto: &str, port: impl std::fmt::Display) {
        self.add("ISTIO_OUTPUT", format_args!("-p {proto} -m {proto} --dport {port} -j RETURN"));
    }

    /// Traffic to `dest` is not captured.
    pub fn dest_return(&mut self, dest: impl std::fmt::Display) {
        self.add("ISTIO_OUTPUT", format_args!("-d {dest} -j RETURN"));
    }

    /// DNS queries (to `server`, else to any) go to the DNS agent on `agent_port`.
    pub fn dns_redirect(&mut self, proto: &str, server: Option<IpAddr>, agent_port: u16) {
        let d = server.map(|s| format!(" -d {s}")).unwrap_or_default();
        self.add(
            "ISTIO_OUTPUT",
            format_args!("-p {proto} -m {proto} --dport 53{d} -j REDIRECT --to-ports {agent_port}"),
        );
    }

    /// Traffic to `dest` goes to the outbound listener.
    pub fn dest_captured(&mut self, dest: impl std::fmt::Display) {
        self.add("ISTIO_OUTPUT", format_args!("-d {dest} -j ISTIO_REDIRECT"));
    }

    /// TCP to `port` goes to the outbound listener, whatever the address.
    pub fn port_captured(&mut self, port: u16) {
        self.add("ISTIO_OUTPUT", format_args!("-p tcp -m tcp --dport {port} -j ISTIO_REDIRECT"));
    }

    /// Everything else goes to the outbound listener.
    pub fn rest_captured(&mut self) {
        self.add("ISTIO_OUTPUT", format_args!("-j ISTIO_REDIRECT"));
    }

    // raw OUTPUT: conntrack zones for DNS (istio/istio#46935).

    /// The DNS agent's answers (from `agent_port`, as `id`) in zone 2.
    pub fn zone_agent_answers(&mut self, agent_port: u16, who: Owner, id: u32) {
        self.add(
            "OUTPUT",
            format_args!("-p udp -m udp --sport {agent_port} -m owner {} {id} -j CT --zone 2", who.flag()),
        );
    }

    /// The DNS agent's own queries (as `id`) in zone 1.
    pub fn zone_agent_queries(&mut self, who: Owner, id: u32) {
        self.add("OUTPUT", format_args!("-p udp -m udp --dport 53 -m owner {} {id} -j CT --zone 1", who.flag()));
    }

    /// The app's queries (to `server`, else to any) in zone 2.
    pub fn zone_app_queries(&mut self, server: Option<IpAddr>) {
        let d = server.map(|s| format!(" -d {s}")).unwrap_or_default();
        self.add("OUTPUT", format_args!("-p udp -m udp --dport 53{d} -j CT --zone 2"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(text: &str, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        text.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
    }

    #[test]
    fn classic_shape_is_the_nine_rule_set_of_the_baseline() {
        let text = IstioCapture::default_for(Shape::Classic).to_restore();
        let out = rules_of(&text, "ISTIO_OUTPUT");
        assert_eq!(out.len(), 9);
        assert_eq!(out[0], "-s 127.0.0.6/32 -o lo -j RETURN");
        assert_eq!(out[1], "! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT");
        assert_eq!(out[3], "-m owner --uid-owner 1337 -j RETURN");
        assert_eq!(out[8], "-j ISTIO_REDIRECT");
        let inbound = rules_of(&text, "ISTIO_INBOUND");
        // 15008, 22, 15090, 15021, 15020, catch-all: the catch-all is rule 6, 15090 rule 3.
        assert_eq!(inbound.len(), 6);
        assert_eq!(inbound[2], "-p tcp -m tcp --dport 15090 -j RETURN");
        assert_eq!(inbound[5], "-p tcp -j ISTIO_IN_REDIRECT");
        assert!(text.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n"));
    }

    #[test]
    fn current_shape_guards_the_tunnel_port_and_drops_ssh() {
        let text = IstioCapture::default_for(Shape::Current).to_restore();
        let out = rules_of(&text, "ISTIO_OUTPUT");
        assert_eq!(out.len(), 9);
        assert_eq!(
            out[1],
            "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
        );
        let inbound = rules_of(&text, "ISTIO_INBOUND");
        assert_eq!(inbound.len(), 5);
        assert_eq!(inbound[1], "-p tcp -m tcp --dport 15090 -j RETURN");
        assert_eq!(inbound[4], "-p tcp -j ISTIO_IN_REDIRECT");
        assert!(!text.contains("--dport 22 "));
        assert!(text.contains("-A OUTPUT -j ISTIO_OUTPUT\n"));
    }

    #[test]
    fn settings_reach_the_rules() {
        let mut c = IstioCapture::default_for(Shape::Current);
        c.outbound_port = 16001;
        c.inbound_port = 16006;
        c.proxy_uid = 3;
        c.proxy_gid = 4;
        let text = c.to_restore();
        assert!(text.contains("REDIRECT --to-ports 16001"));
        assert!(text.contains("REDIRECT --to-ports 16006"));
        assert!(text.contains("--uid-owner 3 -j RETURN"));
        assert!(text.contains("--gid-owner 4 -j RETURN"));
        assert!(!text.contains("1337"));
    }

    #[test]
    fn script_and_nft_forms_carry_the_same_rules_in_the_same_order() {
        let c = IstioCapture::default_for(Shape::Current);
        let script = c.to_script("iptables-nft");
        assert_eq!(script.lines().filter(|l| l.contains(" -N ISTIO_")).count(), 8);
        let restore = c.to_restore();
        let restore_rules: Vec<&str> = restore.lines().filter(|l| l.starts_with("-A ")).collect();
        let script_rules: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix("iptables-nft -t nat "))
            .filter(|l| l.starts_with("-A "))
            .collect();
        assert!(script.contains("ip6tables-nft -t nat -A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"), "{script}");
        assert_eq!(restore_rules, script_rules);
        let nft = c.to_nft();
        let out: Vec<&str> =
            nft.lines().filter_map(|l| l.strip_prefix("add rule inet istio-proxy-nat istio-output ")).collect();
        assert_eq!(out.len(), 13, "{nft}");
        assert_eq!(out[5], "meta skuid 1337 return");
        assert_eq!(out[12], "jump istio-redirect");
        let inbound = nft.lines().filter(|l| l.contains(" istio-inbound meta")).count();
        assert_eq!(inbound, 5, "{nft}");
    }

    /// The guard on the proxy's lo redirect, as each generator form needs it.
    #[test]
    fn lo_guards_spell_each_exception() {
        let mut r = Restore::default();
        for guard in [LoGuard::None, LoGuard::Tcp, LoGuard::TcpExcept(vec![15008]), LoGuard::TcpExcept(vec![53, 15008])]
        {
            r.lo_to_inbound("127.0.0.1/32", &guard, Owner::Gid, 7);
        }
        assert_eq!(
            r.commit(),
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 7 -j ISTIO_IN_REDIRECT\n\
             -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 7 -j ISTIO_IN_REDIRECT\n\
             -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 7 -j ISTIO_IN_REDIRECT\n\
             -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --gid-owner 7 -j ISTIO_IN_REDIRECT\n\
             COMMIT\n"
        );
        assert_eq!(
            Restore::table("mangle", &["PREROUTING"], &["ISTIO_TPROXY"]).commit(),
            "*mangle\n:PREROUTING ACCEPT [0:0]\n:ISTIO_TPROXY - [0:0]\nCOMMIT\n"
        );
    }
}

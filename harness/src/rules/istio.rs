//! The built-in Istio sidecar rule generator: restore input for the shapes
//! Istio writes, from options that mirror istio-iptables' flags.

use std::fmt::Write as _;

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
        let lo_guard = if classic { String::new() } else { format!(" -p tcp -m tcp ! --dport {}", self.tunnel_port) };
        let mut r = istio_nat_preamble();
        r.push_str("-A PREROUTING -p tcp -j ISTIO_INBOUND\n");
        r.push_str(if classic { "-A OUTPUT -p tcp -j ISTIO_OUTPUT\n" } else { "-A OUTPUT -j ISTIO_OUTPUT\n" });
        // Inbound: the tunnel port, (ssh in the classic shape), the excluded
        // ports, then everything else to the inbound listener.
        let mut skip = vec![self.tunnel_port];
        if classic {
            skip.push(22);
        }
        skip.extend(self.inbound_exclude.iter().copied().filter(|p| *p != self.tunnel_port));
        for port in skip {
            let _ = writeln!(r, "-A ISTIO_INBOUND -p tcp -m tcp --dport {port} -j RETURN");
        }
        r.push_str("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n");
        let _ = writeln!(r, "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.inbound_port);
        // Outbound, the nine rules in Istio's order.
        let _ = writeln!(r, "-A ISTIO_OUTPUT -s {passthrough} -o lo -j RETURN");
        let _ = writeln!(
            r,
            "-A ISTIO_OUTPUT ! -d {loopback} -o lo{lo_guard} -m owner --uid-owner {uid} -j ISTIO_IN_REDIRECT"
        );
        let _ = writeln!(r, "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN");
        let _ = writeln!(r, "-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN");
        let _ = writeln!(
            r,
            "-A ISTIO_OUTPUT ! -d {loopback} -o lo{lo_guard} -m owner --gid-owner {gid} -j ISTIO_IN_REDIRECT"
        );
        let _ = writeln!(r, "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {gid} -j RETURN");
        let _ = writeln!(r, "-A ISTIO_OUTPUT -m owner --gid-owner {gid} -j RETURN");
        let _ = writeln!(r, "-A ISTIO_OUTPUT -d {loopback} -j RETURN");
        r.push_str("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n");
        let _ = writeln!(r, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port);
        r.push_str("COMMIT\n");
        r
    }
}

/// The head of Istio's nat table as restore input: the built-in chains and
/// Istio's four, declared.
pub(crate) fn istio_nat_preamble() -> String {
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    for chain in ["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"] {
        let _ = writeln!(r, ":{chain} - [0:0]");
    }
    r
}

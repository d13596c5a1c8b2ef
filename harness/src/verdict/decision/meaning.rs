//! What a rule means, whatever its front end: the atoms its matches come
//! to and its action, from iptables-save text ([`super::iptables`]) or
//! nft's own listing ([`super::nft`]), with the values normalized so two
//! spellings of one rule compare equal.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::iptables::from_iptables;
use super::nft::from_nft;

/// What a rule does once its matches hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A verdict that settles the packet's fate in this table: `return`,
    /// `accept`, `drop`, `redirect to :15001`, `tproxy to :15006 mark 1337`...
    Decides(String),
    /// Go on in another chain: the rules there decide.
    Jump(String),
    /// Changes the packet or its connection and goes on (`mark set 1338`,
    /// `ct zone set 1`, a log): nf_tables' trace does not report these, so
    /// they are never a decision (their effect shows in later matches).
    Continues(String),
}

/// A rule reduced to what it means: its matches as a set of atoms
/// (`oif=lo`, `!daddr=127.0.0.1`, `uid=1337`, `proto=tcp`, `dport=15008`)
/// and its action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meaning {
    pub matches: BTreeSet<String>,
    pub action: Action,
}

impl Meaning {
    /// The one-line form two rule sets are compared by:
    /// `return if oif=lo saddr=127.0.0.6`.
    pub fn canonical(&self) -> String {
        let action = match &self.action {
            Action::Decides(a) | Action::Continues(a) => a.clone(),
            Action::Jump(c) => format!("jump {c}"),
        };
        if self.matches.is_empty() {
            action
        } else {
            format!("{action} if {}", self.matches.iter().cloned().collect::<Vec<_>>().join(" "))
        }
    }
}

/// Read a rule in either form: iptables-save (`-A CHAIN ...`) or nft's
/// listing (`oifname "lo" meta skuid 1337 return`).
pub fn meaning(text: &str) -> Meaning {
    let t = text.trim();
    if t.starts_with("-A ") || t.starts_with("-I ") {
        from_iptables(t)
    } else {
        from_nft(t)
    }
}

/// Words of a rule; double-quoted strings and `{ a, b }` sets stay one word.
pub(super) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut braces) = (false, 0);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '{' if !quoted => {
                braces += 1;
                cur.push(c);
            }
            '}' if !quoted => {
                braces -= 1;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted && braces == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

/// One address or network: host prefixes (/32, /128) dropped, IPv6 in its
/// canonical spelling.
pub(super) fn address(s: &str) -> String {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(ip) = a.parse::<IpAddr>() else { return s.to_string() };
    match (ip, len) {
        (IpAddr::V4(_), Some("32")) | (IpAddr::V6(_), Some("128")) | (_, None) => ip.to_string(),
        (_, Some(l)) => format!("{ip}/{l}"),
    }
}

/// A list of values (`53,15008`, `{ 53, 15008 }`, `1000:2000`), each
/// normalized by `each`, sorted.
pub(super) fn values(s: &str, each: impl Fn(&str) -> String) -> String {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut v: Vec<String> =
        inner.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| each(&x.replace(':', "-"))).collect();
    v.sort_by_key(|x| (x.split('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(u64::MAX), x.clone()));
    v.dedup();
    v.join(",")
}

pub(super) fn ports(s: &str) -> String {
    values(s, |x| x.to_string())
}

pub(super) fn addresses(s: &str) -> String {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut v: Vec<String> = inner.split(',').map(str::trim).filter(|x| !x.is_empty()).map(address).collect();
    v.sort();
    v.join(",")
}

/// A mark value: `1337`, `0x539` and `1337/0xffffffff` are the same.
pub(super) fn mark(s: &str) -> String {
    let (v, mask) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let num = |x: &str| {
        let x = x.trim();
        match x.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => x.parse().ok(),
        }
    };
    let v = num(v).map_or(v.to_string(), |n| n.to_string());
    match mask.map(num) {
        None | Some(Some(0xffff_ffff)) => v,
        Some(Some(m)) => format!("{v}/{m:#x}"),
        Some(None) => format!("{v}/{}", mask.unwrap_or_default()),
    }
}

pub(super) fn states(s: &str) -> String {
    let mut v: Vec<String> = s.split(',').map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect();
    v.sort();
    v.join(",")
}

pub(super) fn proto(s: &str) -> String {
    match s.to_ascii_lowercase().as_str() {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        p => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) {
        assert_eq!(meaning(a).canonical(), meaning(b).canonical(), "\n{a}\n{b}");
    }

    fn differ(a: &str, b: &str) {
        assert_ne!(meaning(a).canonical(), meaning(b).canonical(), "\n{a}\n{b}");
    }

    // Each example of docs/decisions.md, in its order.

    #[test]
    fn same_rule_in_iptables_and_nft() {
        same("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN", "meta skuid 1337 return");
        same("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN", "skuid 1337 counter return");
        same("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN", "oifname \"lo\" ip saddr 127.0.0.6 return");
        same("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006", "meta l4proto tcp redirect to :15006");
        same("-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN", "tcp dport 15090 return");
        same(
            "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
            "meta l4proto tcp tcp dport 15090 counter packets 3 bytes 180 return",
        );
        same("-A ISTIO_OUTPUT -d ::1/128 -j RETURN", "ip6 daddr ::1 return");
        same("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "meta nfproto ipv4 ip daddr 127.0.0.1 return");
    }

    #[test]
    fn same_whatever_the_chain_comment_or_spelling() {
        same(
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A MY_OUT -m comment --comment \"proxy\" -m owner --uid-owner 1337 -j RETURN",
        );
        same(
            "-A ISTIO_OUTPUT -o lo -p tcp -m multiport ! --dports 53,15008 -j RETURN",
            "oifname lo meta l4proto tcp tcp dport != { 15008, 53 } return",
        );
        same(
            "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006",
            "meta l4proto tcp ip daddr != 127.0.0.1/32 tproxy ip to :15006 meta mark set 1337 counter accept",
        );
        same(
            "-A X -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "meta l4proto tcp ct state established,related accept",
        );
        same("-A X -p tcp -m mark --mark 0x539 -j RETURN", "meta l4proto tcp mark 1337 return");
        // As iptables-save and nft list print a TPROXY rule back.
        same(
            "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
            "meta l4proto tcp ip daddr != 127.0.0.1 tproxy ip to :15006 meta mark set 0x00000539 counter accept",
        );
    }

    #[test]
    fn not_same() {
        // The uid RETURN and the gid RETURN let the same packets through
        // only when the proxy's uid and gid coincide: different rules.
        differ(
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        );
        differ(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15002",
        );
        // All protocols vs TCP only.
        differ("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "-A ISTIO_OUTPUT -p tcp -d 127.0.0.1/32 -j RETURN");
        differ("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -j RETURN");
        differ("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "ip daddr 127.0.0.0/8 return");
        differ(
            "-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -j RETURN",
            "oifname lo meta l4proto tcp tcp dport != { 53, 15008 } return",
        );
        differ("tproxy ip to :15006 meta mark set 1337 accept", "tproxy ip to :15006 meta mark set 1338 accept");
    }

    #[test]
    fn jumps_and_marks_are_not_decisions() {
        assert_eq!(meaning("-A OUTPUT -j ISTIO_OUTPUT").action, Action::Jump("ISTIO_OUTPUT".into()));
        assert_eq!(meaning("jump istio-output").action, Action::Jump("istio-output".into()));
        assert!(matches!(meaning("-A OUTPUT -o lo -j MARK --set-mark 1338").action, Action::Continues(_)));
        assert!(matches!(meaning("oifname lo meta mark set 1338").action, Action::Continues(_)));
        assert!(matches!(meaning("-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 1").action, Action::Continues(_)));
        assert!(matches!(meaning("udp dport 53 meta skuid 1337 counter ct zone set 1").action, Action::Continues(_)));
    }
}

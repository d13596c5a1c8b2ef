//! Reading a rule in nft's listing form (`oifname "lo" meta skuid 1337 return`).

use std::collections::BTreeSet;

use super::meaning::{address, addresses, mark, ports, proto, states, unquote, words, Action, Meaning};

pub(super) fn from_nft(text: &str) -> Meaning {
    let w = words(text);
    let mut m = BTreeSet::new();
    let mut action: Option<Action> = None;
    let mut tproxy: Option<String> = None;
    let mut mark_set: Option<String> = None;
    let mut continues: Vec<String> = Vec::new();
    let mut i = 0;
    // `KEY [op] VALUE`: the value after an optional operator.
    let value = |i: usize| -> (bool, String, usize) {
        match w.get(i).map(String::as_str) {
            Some("!=") => (true, w.get(i + 1).cloned().unwrap_or_default(), 2),
            Some("==") | Some("eq") => (false, w.get(i + 1).cloned().unwrap_or_default(), 2),
            _ => (false, w.get(i).cloned().unwrap_or_default(), 1),
        }
    };
    let atom = |neg: bool, k: &str, v: String| format!("{}{k}={v}", if neg { "!" } else { "" });
    while i < w.len() {
        let tok = w[i].as_str();
        match tok {
            "counter" => {
                i += 1;
                if w.get(i).map(String::as_str) == Some("packets") {
                    i += 4;
                }
            }
            "comment" => i += 2,
            "meta" => i += 1, // `meta skuid` and `skuid` are one thing
            "ip" | "ip6" if matches!(w.get(i + 1).map(String::as_str), Some("saddr" | "daddr")) => {
                let key = w[i + 1].clone();
                let (neg, v, n) = value(i + 2);
                m.insert(atom(neg, &key, addresses(&v)));
                i += 2 + n;
            }
            "ip" | "ip6" if matches!(w.get(i + 1).map(String::as_str), Some("protocol" | "nexthdr")) => {
                let (neg, v, n) = value(i + 2);
                m.insert(atom(neg, "proto", proto(&v)));
                i += 2 + n;
            }
            "tcp" | "udp" if matches!(w.get(i + 1).map(String::as_str), Some("dport" | "sport")) => {
                m.insert(format!("proto={tok}"));
                let key = w[i + 1].clone();
                let (neg, v, n) = value(i + 2);
                m.insert(atom(neg, &key, ports(&v)));
                i += 2 + n;
            }
            // An inet table's family guard: iptables says it by its table's family.
            "nfproto" => i += value(i + 1).2 + 1,
            "l4proto" => {
                let (neg, v, n) = value(i + 1);
                m.insert(atom(neg, "proto", proto(&v)));
                i += 1 + n;
            }
            "iifname" | "oifname" | "iif" | "oif" => {
                let key = if tok.starts_with('i') { "iif" } else { "oif" };
                let (neg, v, n) = value(i + 1);
                m.insert(atom(neg, key, unquote(&v)));
                i += 1 + n;
            }
            "skuid" | "skgid" => {
                let key = if tok == "skuid" { "uid" } else { "gid" };
                let (neg, v, n) = value(i + 1);
                m.insert(atom(neg, key, unquote(&v)));
                i += 1 + n;
            }
            "mark" if w.get(i + 1).map(String::as_str) == Some("set") => {
                let v = w.get(i + 2).cloned().unwrap_or_default();
                // `meta mark set ct mark`
                if v == "ct" {
                    continues.push("mark set ct mark".into());
                    i += 4;
                } else {
                    mark_set = Some(mark(&v));
                    i += 3;
                }
            }
            "mark" => {
                let (neg, v, n) = value(i + 1);
                m.insert(atom(neg, "mark", mark(&v)));
                i += 1 + n;
            }
            "ct" => {
                let what = w.get(i + 1).cloned().unwrap_or_default();
                if w.get(i + 2).map(String::as_str) == Some("set") {
                    let v = w.get(i + 3).cloned().unwrap_or_default();
                    continues
                        .push(format!("ct {what} set {}", if what == "mark" && v == "mark" { v } else { mark(&v) }));
                    i += 4;
                } else {
                    let (neg, v, n) = value(i + 2);
                    let key = match what.as_str() {
                        "state" => "ctstate",
                        "mark" => "ctmark",
                        other => other,
                    };
                    let v = if key == "ctstate" { states(&v) } else { mark(&v) };
                    m.insert(atom(neg, key, v));
                    i += 2 + n;
                }
            }
            "fib" if w.get(i + 2).map(String::as_str) == Some("type") => {
                let key = format!("{}-type", w.get(i + 1).cloned().unwrap_or_default());
                let (neg, v, n) = value(i + 3);
                m.insert(atom(neg, &key, v.to_ascii_lowercase()));
                i += 3 + n;
            }
            "return" | "accept" | "drop" | "reject" | "masquerade" => {
                action = Some(Action::Decides(tok.to_string()));
                i += 1;
                if tok == "reject" && w.get(i).map(String::as_str) == Some("with") {
                    i += 3;
                }
            }
            "jump" | "goto" => {
                action = Some(Action::Jump(w.get(i + 1).cloned().unwrap_or_default()));
                i += 2;
            }
            "redirect" => {
                if w.get(i + 1).map(String::as_str) == Some("to") {
                    let p = w.get(i + 2).cloned().unwrap_or_default();
                    action = Some(Action::Decides(format!("redirect to :{}", ports(p.trim_start_matches(':')))));
                    i += 3;
                } else {
                    action = Some(Action::Decides("redirect".into()));
                    i += 1;
                }
            }
            "dnat" | "snat" => {
                let mut k = i + 1;
                if matches!(w.get(k).map(String::as_str), Some("ip" | "ip6")) {
                    k += 1;
                }
                let to = w.get(k + 1).cloned().unwrap_or_default();
                action = Some(Action::Decides(format!("{tok} to {to}")));
                i = k + 2;
            }
            "tproxy" => {
                let mut k = i + 1;
                if matches!(w.get(k).map(String::as_str), Some("ip" | "ip6")) {
                    k += 1;
                }
                let to = w.get(k + 1).cloned().unwrap_or_default();
                let (at, port) = to.rsplit_once(':').unwrap_or(("", &to));
                tproxy = Some(format!(
                    "tproxy to {}:{port}",
                    if at.is_empty() { String::new() } else { address(at.trim_matches(|c| c == '[' || c == ']')) }
                ));
                i = k + 2;
            }
            "log" => {
                continues.push("log".into());
                i += 1;
                while w.get(i).is_some_and(|x| matches!(x.as_str(), "prefix" | "level" | "group" | "flags")) {
                    i += 2;
                }
            }
            other => {
                m.insert(other.to_string());
                i += 1;
            }
        }
    }
    // TPROXY carries its mark (iptables' --tproxy-mark; nft's `meta mark set`
    // in the same rule) and accepts.
    let action = match (tproxy, action) {
        (Some(t), _) => Action::Decides(match mark_set.take() {
            Some(mk) => format!("{t} mark {mk}"),
            None => t,
        }),
        (None, Some(a)) => a,
        (None, None) => match mark_set {
            Some(mk) => Action::Continues(format!("mark set {mk}")),
            None => Action::Continues(continues.first().cloned().unwrap_or_else(|| "continue".into())),
        },
    };
    Meaning { matches: m, action }
}

//! Reading a rule in iptables-save form (`-A CHAIN -m owner --uid-owner 1337 -j RETURN`).

use std::collections::BTreeSet;

use super::meaning::{address, addresses, mark, ports, proto, states, words, Action, Meaning};

pub(super) fn from_iptables(text: &str) -> Meaning {
    let w = words(text);
    let mut m = BTreeSet::new();
    let mut action = Action::Decides("continue".into());
    let mut i = 2; // past `-A CHAIN`
    if w.first().map(String::as_str) == Some("-I") && w.get(2).is_some_and(|n| n.parse::<u32>().is_ok()) {
        i = 3;
    }
    let mut neg = false;
    let mut last_match = String::new();
    let atom = |neg: bool, k: &str, v: String| format!("{}{k}={v}", if neg { "!" } else { "" });
    while i < w.len() {
        let tok = w[i].as_str();
        let val = w.get(i + 1).cloned().unwrap_or_default();
        let mut used = 2;
        match tok {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-s" | "--source" | "--src" => {
                m.insert(atom(neg, "saddr", addresses(&val)));
            }
            "-d" | "--destination" | "--dst" => {
                m.insert(atom(neg, "daddr", addresses(&val)));
            }
            "-i" | "--in-interface" => {
                m.insert(atom(neg, "iif", val));
            }
            "-o" | "--out-interface" => {
                m.insert(atom(neg, "oif", val));
            }
            "-p" | "--protocol" => {
                m.insert(atom(neg, "proto", proto(&val)));
            }
            "-m" | "--match" => {
                last_match = val.clone();
                match val.as_str() {
                    "tcp" | "udp" | "multiport" | "owner" | "mark" | "connmark" | "conntrack" | "state" | "comment"
                    | "addrtype" => {}
                    other => {
                        m.insert(format!("match {other}"));
                    }
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                m.insert(atom(neg, "dport", ports(&val)));
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                m.insert(atom(neg, "sport", ports(&val)));
            }
            "--uid-owner" => {
                m.insert(atom(neg, "uid", val));
            }
            "--gid-owner" => {
                m.insert(atom(neg, "gid", val));
            }
            "--mark" if last_match == "connmark" => {
                m.insert(atom(neg, "ctmark", mark(&val)));
            }
            "--mark" => {
                m.insert(atom(neg, "mark", mark(&val)));
            }
            "--ctstate" | "--state" => {
                m.insert(atom(neg, "ctstate", states(&val)));
            }
            "--dst-type" => {
                m.insert(atom(neg, "daddr-type", val.to_ascii_lowercase()));
            }
            "--src-type" => {
                m.insert(atom(neg, "saddr-type", val.to_ascii_lowercase()));
            }
            "--comment" => {}
            "-j" | "--jump" | "-g" | "--goto" => {
                let opts = &w[i + 2..];
                let opt = |names: &[&str]| {
                    opts.iter().position(|o| names.contains(&o.as_str())).and_then(|k| opts.get(k + 1)).cloned()
                };
                let has = |name: &str| opts.iter().any(|o| o == name);
                action = match val.as_str() {
                    "RETURN" => Action::Decides("return".into()),
                    "ACCEPT" => Action::Decides("accept".into()),
                    "DROP" => Action::Decides("drop".into()),
                    "REJECT" => Action::Decides("reject".into()),
                    "MASQUERADE" => Action::Decides("masquerade".into()),
                    "REDIRECT" => match opt(&["--to-ports", "--to-port"]) {
                        Some(p) => Action::Decides(format!("redirect to :{}", ports(&p))),
                        None => Action::Decides("redirect".into()),
                    },
                    "DNAT" => Action::Decides(format!("dnat to {}", opt(&["--to-destination"]).unwrap_or_default())),
                    "SNAT" => Action::Decides(format!("snat to {}", opt(&["--to-source"]).unwrap_or_default())),
                    "TPROXY" => {
                        let port = opt(&["--on-port"]).unwrap_or_default();
                        // iptables-save writes the unspecified address nft leaves out.
                        let at = opt(&["--on-ip"])
                            .map(|a| address(&a))
                            .filter(|a| a != "0.0.0.0" && a != "::")
                            .unwrap_or_default();
                        let mut a = format!("tproxy to {at}:{port}");
                        if let Some(mk) = opt(&["--tproxy-mark"]) {
                            a.push_str(&format!(" mark {}", mark(&mk)));
                        }
                        Action::Decides(a)
                    }
                    "MARK" => Action::Continues(format!(
                        "mark set {}",
                        mark(&opt(&["--set-mark", "--set-xmark"]).unwrap_or_default())
                    )),
                    "CONNMARK" if has("--save-mark") => Action::Continues("ct mark set mark".into()),
                    "CONNMARK" if has("--restore-mark") => Action::Continues("mark set ct mark".into()),
                    "CONNMARK" => {
                        Action::Continues(format!("ct mark set {}", mark(&opt(&["--set-mark"]).unwrap_or_default())))
                    }
                    "CT" => Action::Continues(format!("ct zone set {}", opt(&["--zone"]).unwrap_or_default())),
                    "LOG" | "NFLOG" | "TRACE" => Action::Continues(val.to_ascii_lowercase()),
                    chain => Action::Jump(chain.to_string()),
                };
                break;
            }
            other => {
                m.insert(format!("{}{other}", if neg { "!" } else { "" }));
                used = 1;
            }
        }
        neg = false;
        i += used;
    }
    Meaning { matches: m, action }
}

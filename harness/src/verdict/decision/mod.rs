//! Decisions, not positions: for each leg of a probe and each hook its SYN
//! passed, which rule decided and what it decided, in one form whatever the
//! front end (iptables-save text or nft's own listing), the chain names,
//! the rule numbers or the comments. The definition, with examples, is in
//! docs/decisions.md; each example is a unit test below.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::netfilter::trace::{LegPath, RuleIndex, Step, TraceEvent};

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
fn words(text: &str) -> Vec<String> {
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

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

/// One address or network: host prefixes (/32, /128) dropped, IPv6 in its
/// canonical spelling.
fn address(s: &str) -> String {
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
fn values(s: &str, each: impl Fn(&str) -> String) -> String {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut v: Vec<String> =
        inner.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| each(&x.replace(':', "-"))).collect();
    v.sort_by_key(|x| (x.split('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(u64::MAX), x.clone()));
    v.dedup();
    v.join(",")
}

fn ports(s: &str) -> String {
    values(s, |x| x.to_string())
}

fn addresses(s: &str) -> String {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut v: Vec<String> = inner.split(',').map(str::trim).filter(|x| !x.is_empty()).map(address).collect();
    v.sort();
    v.join(",")
}

/// A mark value: `1337`, `0x539` and `1337/0xffffffff` are the same.
fn mark(s: &str) -> String {
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

fn states(s: &str) -> String {
    let mut v: Vec<String> = s.split(',').map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect();
    v.sort();
    v.join(",")
}

fn proto(s: &str) -> String {
    match s.to_ascii_lowercase().as_str() {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        p => p.to_string(),
    }
}

fn from_iptables(text: &str) -> Meaning {
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

fn from_nft(text: &str) -> Meaning {
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

/// One rule (or chain policy) that decided a SYN's fate in one table at one hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// 1-based: 1 is the client's connection, 2 the proxy's first upstream...
    pub leg: usize,
    /// PREROUTING, INPUT, OUTPUT, POSTROUTING.
    pub hook: String,
    pub table: String,
    pub chain: String,
    /// The rule's position in its chain; 0 for a chain's policy (or a rule
    /// the dump did not show).
    pub position: u32,
    /// The rule as installed (iptables-save or nft listing).
    pub text: String,
    /// What it means, in the form decisions are compared by.
    pub meaning: String,
}

impl Decision {
    /// `nat ISTIO_OUTPUT rule 4`, `nat OUTPUT policy`.
    pub fn place(&self) -> String {
        match self.position {
            0 => format!("{} {} policy", self.table, self.chain),
            n => format!("{} {} rule {n}", self.table, self.chain),
        }
    }
}

/// The decisions of one hook traversal of one leg, in the order the tables ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookDecisions {
    pub leg: usize,
    pub hook: String,
    pub decisions: Vec<Decision>,
}

/// What the rules decided for one probe: per leg, per hook where any rule decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Decisions {
    pub legs: Vec<Vec<HookDecisions>>,
}

/// The decisions of one leg, from its trace events. Per hook and table the
/// deciding rule is the last one that matched with a verdict other than a
/// jump (a RETURN counts: it is what let the packet through); a table where
/// no rule decided and its base chain's policy accepted decided nothing
/// (an empty `*filter` table changes no fate).
pub fn leg_decisions(leg: usize, events: &[TraceEvent], index: &RuleIndex) -> Vec<HookDecisions> {
    // Per hook traversal: per (nfproto, table), the deciding rule so far.
    type Tables = Vec<((u8, String), Option<Decision>)>;
    let mut hooks: Vec<(String, Tables)> = Vec::new();
    for e in events {
        let hook = index.hook_of(e.nfproto, &e.table, &e.chain);
        if let Some(h) = hook {
            if hooks.last().is_none_or(|(last, _)| last != h) {
                hooks.push((h.to_string(), Vec::new()));
            }
        }
        if hooks.is_empty() {
            hooks.push(("?".into(), Vec::new()));
        }
        let (hook_name, tables) = hooks.last_mut().expect("pushed above");
        let key = (e.nfproto, e.table.clone());
        let slot = match tables.iter().position(|(k, _)| *k == key) {
            Some(k) => k,
            None => {
                tables.push((key, None));
                tables.len() - 1
            }
        };
        match &e.step {
            Step::Rule(n) => {
                let text = index.rule_text(e.nfproto, &e.table, &e.chain, *n).unwrap_or("").to_string();
                let (decides, meaning) = if text.is_empty() {
                    // Not in the dump: the kernel's verdict is all there is.
                    match e.verdict.as_deref() {
                        Some(v) if v.starts_with("jump ") || v.starts_with("goto ") || v == "continue" => {
                            (false, String::new())
                        }
                        v => (true, format!("unknown rule ({})", v.unwrap_or("?"))),
                    }
                } else {
                    let m = meaning(&text);
                    (matches!(m.action, Action::Decides(_)), m.canonical())
                };
                if decides {
                    tables[slot].1 = Some(Decision {
                        leg,
                        hook: hook_name.clone(),
                        table: e.table.clone(),
                        chain: e.chain.clone(),
                        position: *n,
                        text,
                        meaning,
                    });
                }
            }
            Step::Policy => {
                let v = e.verdict.clone().unwrap_or_else(|| "accept".into());
                if tables[slot].1.is_none() && v != "accept" {
                    tables[slot].1 = Some(Decision {
                        leg,
                        hook: hook_name.clone(),
                        table: e.table.clone(),
                        chain: e.chain.clone(),
                        position: 0,
                        text: format!("(policy {v})"),
                        meaning: format!("policy {v}"),
                    });
                }
            }
            Step::Return => {}
        }
    }
    hooks
        .into_iter()
        .map(|(hook, tables)| HookDecisions {
            leg,
            hook,
            decisions: tables.into_iter().filter_map(|(_, d)| d).collect(),
        })
        .filter(|h| !h.decisions.is_empty())
        .collect()
}

/// The decisions of a traced probe.
pub fn decisions(legs: &[LegPath], index: &RuleIndex) -> Decisions {
    Decisions { legs: legs.iter().enumerate().map(|(i, l)| leg_decisions(i + 1, &l.events, index)).collect() }
}

/// Where two probes' decisions first part: a leg and hook, and the rule
/// on each side (None: that side decided nothing there, or had no such leg).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub leg: usize,
    pub hook: String,
    pub a: Option<Decision>,
    pub b: Option<Decision>,
}

/// The first leg and hook where `a` and `b` decide differently.
pub fn first_divergence(a: &Decisions, b: &Decisions) -> Option<Divergence> {
    let empty: Vec<HookDecisions> = Vec::new();
    for leg in 0..a.legs.len().max(b.legs.len()) {
        let (la, lb) = (a.legs.get(leg), b.legs.get(leg));
        // A leg only one side has: the other side's connection ended earlier.
        let (ha, hb) = (la.unwrap_or(&empty), lb.unwrap_or(&empty));
        if la.is_none() || lb.is_none() {
            let hook = ha.first().or(hb.first()).map_or("(no decision)".to_string(), |h| h.hook.clone());
            let pick = |h: &[HookDecisions]| h.first().and_then(|h| h.decisions.first().cloned());
            return Some(Divergence { leg: leg + 1, hook, a: pick(ha), b: pick(hb) });
        }
        for k in 0..ha.len().max(hb.len()) {
            let (x, y) = (ha.get(k), hb.get(k));
            let same = match (x, y) {
                (Some(x), Some(y)) => {
                    x.hook == y.hook
                        && x.decisions.len() == y.decisions.len()
                        && x.decisions.iter().zip(&y.decisions).all(|(p, q)| p.meaning == q.meaning)
                }
                _ => false,
            };
            if same {
                continue;
            }
            // The earlier hook of the two names the place.
            let hook = match (x, y) {
                (Some(x), Some(y)) if x.hook != y.hook => {
                    let rank = |h: &str| ["PREROUTING", "OUTPUT", "INPUT", "POSTROUTING"].iter().position(|n| *n == h);
                    if rank(&y.hook) < rank(&x.hook) {
                        y.hook.clone()
                    } else {
                        x.hook.clone()
                    }
                }
                (Some(x), _) => x.hook.clone(),
                (None, Some(y)) => y.hook.clone(),
                (None, None) => continue,
            };
            let (p, q) = (x.filter(|h| h.hook == hook), y.filter(|h| h.hook == hook));
            let j = match (p, q) {
                (Some(p), Some(q)) => p
                    .decisions
                    .iter()
                    .zip(&q.decisions)
                    .position(|(u, v)| u.meaning != v.meaning)
                    .unwrap_or(p.decisions.len().min(q.decisions.len())),
                _ => 0,
            };
            let pick = |h: Option<&HookDecisions>| h.and_then(|h| h.decisions.get(j).cloned());
            return Some(Divergence { leg: leg + 1, hook: hook.clone(), a: pick(p), b: pick(q) });
        }
    }
    None
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

    fn ev(table: &str, chain: &str, step: Step) -> TraceEvent {
        TraceEvent {
            nfproto: 2,
            table: table.into(),
            chain: chain.into(),
            step,
            verdict: None,
            src: "10.244.0.10:40000".parse().unwrap(),
            dst: "127.0.0.1:15000".parse().unwrap(),
            isn: 1,
        }
    }

    fn index(save: &str) -> RuleIndex {
        let mut i = RuleIndex::default();
        i.texts = RuleIndex::parse_save(2, save);
        i
    }

    const NAT: &str = "*nat\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\nCOMMIT\n*filter\nCOMMIT\n";

    #[test]
    fn the_return_decides_and_an_empty_filter_table_decides_nothing() {
        let i = index(NAT);
        let events = [
            ev("nat", "OUTPUT", Step::Rule(1)),
            ev("nat", "ISTIO_OUTPUT", Step::Rule(1)),
            ev("nat", "OUTPUT", Step::Policy),
            ev("filter", "OUTPUT", Step::Policy),
            ev("nat", "POSTROUTING", Step::Policy),
        ];
        let d = leg_decisions(1, &events, &i);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].hook, "OUTPUT");
        assert_eq!(d[0].decisions[0].position, 1);
        assert_eq!(d[0].decisions[0].meaning, "return if uid=1337");
        // Without the filter table's event: the same decisions.
        let without: Vec<_> = events.iter().filter(|e| e.table != "filter").cloned().collect();
        assert_eq!(leg_decisions(1, &without, &i), d);
    }

    #[test]
    fn a_different_deciding_rule_is_named_on_both_sides() {
        let i = index(NAT);
        let uid = [ev("nat", "OUTPUT", Step::Rule(1)), ev("nat", "ISTIO_OUTPUT", Step::Rule(1))];
        let gid = [ev("nat", "OUTPUT", Step::Rule(1)), ev("nat", "ISTIO_OUTPUT", Step::Rule(2))];
        let a = Decisions { legs: vec![leg_decisions(1, &uid, &i)] };
        let b = Decisions { legs: vec![leg_decisions(1, &gid, &i)] };
        assert_eq!(first_divergence(&a, &a), None);
        let d = first_divergence(&a, &b).expect("they differ");
        assert_eq!((d.leg, d.hook.as_str()), (1, "OUTPUT"));
        assert_eq!(d.a.unwrap().text, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN");
        assert_eq!(d.b.unwrap().text, "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN");
        // One side has a second leg the other lacks.
        let c = Decisions { legs: vec![leg_decisions(1, &uid, &i), leg_decisions(2, &gid, &i)] };
        let d = first_divergence(&a, &c).expect("they differ");
        assert_eq!(d.leg, 2);
        assert!(d.a.is_none() && d.b.is_some());
    }
}

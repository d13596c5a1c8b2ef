//! Rule-level tracing: which chains and rules each probe's SYNs took, read
//! from the kernel itself.
//!
//! A harness-owned table (`inet sidecheck_trace_<random>`, priority -400, ahead of
//! every table under test) sets `meta nftrace` on TCP SYNs. The tables under
//! test are never edited, so their rule numbers and counters stay theirs.
//! Rules in nf_tables (iptables-nft, native nft) then report on the
//! NFNLGRP_NFTRACE netlink group (rule handles, mapped to positions with a
//! rule dump); rules in iptables-legacy report through nfnetlink_log as
//! `TRACE: nat:ISTIO_OUTPUT:rule:9` lines once the namespace's nf_log logger
//! for the family is nfnetlink_log.
//!
//! Each event carries the packet's addresses, so it is attributed to exactly
//! one connection leg (the client's connection, then each upstream
//! connection fake-envoy opened), also when probes run in parallel.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::netfilter;
use crate::netfilter::netlink::{self as nl, Socket};
use crate::rules::source::Frontend;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// The harness's own table (family inet); events from it are not part of
/// any path. Its name is unique to this process (`sidecheck_trace_` and 32
/// random bits): a user's table of any name, `sidecheck_trace` too, can
/// neither merge into it nor be hidden from "rules as installed".
pub fn trace_table() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // SAFETY: writes at most 4 bytes into `bytes`.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 4, 0) };
        let n = if got == 4 {
            u32::from_ne_bytes(bytes)
        } else {
            std::process::id() ^ std::time::SystemTime::now().elapsed().map(|d| d.subsec_nanos()).unwrap_or(0)
        };
        format!("sidecheck_trace_{n:08x}")
    })
}

fn trace_ruleset() -> String {
    format!(
        "table inet {} {{
  chain prerouting {{ type filter hook prerouting priority -400; policy accept; tcp flags & (syn | ack) == syn meta nftrace set 1; }}
  chain output {{ type filter hook output priority -400; policy accept; tcp flags & (syn | ack) == syn meta nftrace set 1; }}
}}
",
        trace_table()
    )
}

/// How an event ended its rule or chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "number")]
pub enum Step {
    /// A rule matched: its 1-based position in the chain (0: not found in
    /// the rule dump, shown as `?`).
    Rule(u32),
    /// The end of a user chain was reached: implicit return.
    Return,
    /// The end of a base chain: its policy applied.
    Policy,
}

/// One rule or chain decision for one packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// NFPROTO of the table: 2 ip, 10 ip6, 1 inet.
    #[serde(skip)]
    pub nfproto: u8,
    pub table: String,
    pub chain: String,
    pub step: Step,
    /// `jump ISTIO_OUTPUT`, `accept`, `return`... (nf_tables only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip)]
    pub src: SocketAddr,
    #[serde(skip)]
    pub dst: SocketAddr,
    /// TCP sequence number of the SYN: identifies the connection across NAT.
    #[serde(skip)]
    pub isn: u32,
}

/// Read `TRACE: nat:ISTIO_OUTPUT:rule:9 ` (iptables-legacy's NFLOG prefix).
pub fn parse_legacy_prefix(prefix: &str) -> Option<(String, String, Step)> {
    let body = prefix.trim().strip_prefix("TRACE:")?.trim();
    let mut parts = body.split(':');
    let (table, chain, kind, num) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let step = match kind {
        "rule" => Step::Rule(num.trim().parse().ok()?),
        "return" => Step::Return,
        "policy" => Step::Policy,
        _ => return None,
    };
    Some((table.to_string(), chain.to_string(), step))
}

/// The rules under test as the kernel holds them: positions of nf_tables
/// rule handles, and the text of every rule by chain (from iptables-save)
/// for detailed views.
#[derive(Clone, Debug, Default)]
pub struct RuleIndex {
    /// (family, table, chain, handle) -> position
    positions: HashMap<(u8, String, String, u64), u32>,
    /// (nfproto, table, chain) -> number of rules, from the nf_tables dump
    counts: HashMap<(u8, String, String), usize>,
    /// (nfproto, table, chain) -> hook, for nf_tables base chains (any name)
    hooks: HashMap<(u8, String, String), &'static str>,
    /// (nfproto, table, chain) -> rule texts in order
    pub texts: BTreeMap<(u8, String, String), Vec<String>>,
    /// What the kernel held after installation.
    pub snapshot: netfilter::Snapshot,
}

impl RuleIndex {
    /// Parse iptables-save output (of family `nfproto`) into rule texts by chain.
    pub fn parse_save(nfproto: u8, text: &str) -> BTreeMap<(u8, String, String), Vec<String>> {
        let mut out: BTreeMap<(u8, String, String), Vec<String>> = BTreeMap::new();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap_or_default().to_string();
                out.entry((nfproto, table.clone(), chain)).or_default().push(line.to_string());
            }
        }
        out
    }

    pub fn rule_count(&self, nfproto: u8, table: &str, chain: &str) -> usize {
        let key = (nfproto, table.to_string(), chain.to_string());
        match self.counts.get(&key) {
            Some(n) => *n,
            None => self.texts.get(&key).map_or(0, Vec::len),
        }
    }

    /// The hook a chain is attached to, in the article's spelling
    /// (`OUTPUT`), or None for a user chain. nf_tables says so itself;
    /// x_tables' base chains are named after their hooks.
    pub fn hook_of(&self, nfproto: u8, table: &str, chain: &str) -> Option<&'static str> {
        if let Some(h) = self.hooks.get(&(nfproto, table.to_string(), chain.to_string())) {
            return Some(h);
        }
        ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].into_iter().find(|h| *h == chain)
    }

    /// Rule texts of native nftables tables from `nft -a list ruleset`,
    /// placed by the positions of their handles.
    fn add_nft_texts(&mut self, listing: &str) {
        let family_number = |f: &str| match f {
            "ip" => 2u8,
            "ip6" => 10,
            "inet" => 1,
            "arp" => 3,
            "bridge" => 7,
            "netdev" => 5,
            _ => 0,
        };
        let (mut family, mut table, mut chain) = (0u8, String::new(), String::new());
        for line in listing.lines() {
            let t = line.trim();
            let words: Vec<&str> = t.split_whitespace().collect();
            match words.as_slice() {
                ["table", f, name, ..] => {
                    family = family_number(f);
                    table = name.to_string();
                }
                ["chain", name, ..] => chain = name.to_string(),
                _ => {
                    let Some((text, handle)) = t.rsplit_once(" # handle ") else { continue };
                    let Ok(handle) = handle.trim().parse::<u64>() else { continue };
                    let Some(pos) = self.position(family, &table, &chain, handle) else { continue };
                    let rules = self.texts.entry((family, table.clone(), chain.clone())).or_default();
                    let i = pos as usize - 1;
                    if rules.len() <= i {
                        rules.resize(i + 1, String::new());
                    }
                    if rules[i].is_empty() {
                        // Counter values are from when the listing was taken: noise.
                        let mut words: Vec<&str> = text.split(' ').collect();
                        if let Some(k) = words.iter().position(|w| *w == "packets") {
                            if words.len() > k + 3 && words[k + 2] == "bytes" {
                                words.drain(k..k + 4);
                            }
                        }
                        rules[i] = words.join(" ");
                    }
                }
            }
        }
    }

    pub fn rule_text(&self, nfproto: u8, table: &str, chain: &str, n: u32) -> Option<&str> {
        let i = (n as usize).checked_sub(1)?;
        self.texts.get(&(nfproto, table.to_string(), chain.to_string()))?.get(i).map(String::as_str)
    }

    fn position(&self, family: u8, table: &str, chain: &str, handle: u64) -> Option<u32> {
        self.positions.get(&(family, table.to_string(), chain.to_string(), handle)).copied()
    }
}

type Positions = HashMap<(u8, String, String, u64), u32>;
/// Sees each dumped object: (family, attributes).
type AttrVisitor<'a> = dyn FnMut(u8, &[(u16, &[u8])]) + 'a;
/// One hook traversal of a leg: the hook, then (nfproto, table, chain, last step) per user chain.
type Segment = (String, Vec<(u8, String, String, Step)>);
type Hooks = HashMap<(u8, String, String), &'static str>;

/// Dump nf_tables rules and chains (all families) in `ns`: rule handle ->
/// position, and the hook of every base chain.
fn dump_nft(ns: &Namespace) -> Result<(Positions, Hooks)> {
    let doing = format!("listing nf_tables rules in namespace {}", ns.name());
    ns.run(|| -> std::io::Result<_> {
        let sock = Socket::open(false)?;
        sock.set_receive_timeout(Duration::from_secs(5))?;
        let mut bad = false;
        // Dump every object of one kind; `f` gets (family, attributes).
        let mut dump = |get: u16, new: u16, seq: u32, f: &mut AttrVisitor<'_>| {
            let req = nl::request(nl::NFNL_SUBSYS_NFTABLES, get, nl::NLM_F_REQUEST | nl::NLM_F_DUMP, seq, 0, 0, &[]);
            sock.transact(&req, seq, |m| {
                if m.ty != (nl::NFNL_SUBSYS_NFTABLES << 8) | new {
                    return;
                }
                match nl::attrs(m.attrs) {
                    Ok(attrs) => f(m.family, &attrs),
                    Err(_) => bad = true,
                }
            })
        };
        let mut counters: HashMap<(u8, String, String), u32> = HashMap::new();
        let mut positions = HashMap::new();
        dump(nl::NFT_MSG_GETRULE, nl::NFT_MSG_NEWRULE, 1, &mut |family, attrs| {
            let (mut table, mut chain, mut handle) = (None, None, None);
            for (ty, p) in attrs {
                match ty {
                    1 => table = Some(nl::attr_str(p)),
                    2 => chain = Some(nl::attr_str(p)),
                    3 => handle = nl::attr_be64(p),
                    _ => {}
                }
            }
            if let (Some(t), Some(c), Some(h)) = (table, chain, handle) {
                let n = counters.entry((family, t.clone(), c.clone())).or_insert(0);
                *n += 1;
                positions.insert((family, t, c, h), *n);
            }
        })?;
        let mut hooks = HashMap::new();
        dump(nl::NFT_MSG_GETCHAIN, nl::NFT_MSG_NEWCHAIN, 2, &mut |family, attrs| {
            let (mut table, mut chain, mut hook) = (None, None, None);
            for (ty, p) in attrs {
                match ty {
                    1 => table = Some(nl::attr_str(p)),
                    3 => chain = Some(nl::attr_str(p)),
                    4 => {
                        hook = nl::attrs(p)
                            .ok()
                            .and_then(|h| h.iter().find(|(t, _)| *t == 1).and_then(|(_, v)| nl::attr_be32(v)))
                    }
                    _ => {}
                }
            }
            let name = match hook {
                Some(0) => "PREROUTING",
                Some(1) => "INPUT",
                Some(2) => "FORWARD",
                Some(3) => "OUTPUT",
                Some(4) => "POSTROUTING",
                _ => return,
            };
            if let (Some(t), Some(c)) = (table, chain) {
                hooks.insert((family, t, c), name);
            }
        })?;
        if bad {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "malformed attributes in an nf_tables dump",
            ));
        }
        Ok((positions, hooks))
    })?
    .map_err(Error::io(doing))
}

/// Receives and keeps trace events of one namespace until their probes
/// claim them. A thread reads the sockets as events arrive, so the kernel's
/// socket buffer never has to hold a whole run's events.
pub struct Tracer {
    shared: std::sync::Arc<TraceStore>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Written to on drop: wakes the reader to stop.
    stop: Option<std::os::fd::OwnedFd>,
    /// The proxy's name in the profile (`envoy`): its listeners are
    /// `<name>-admin`, ... and paths call it `Envoy 15001 (Outbound)`.
    proxy: String,
    /// The trace table as listed right after it was installed.
    listed: String,
}

pub struct TraceStore {
    frontend: Frontend,
    nft: Socket,
    nflog: Option<Socket>,
    index: RuleIndex,
    pending: Mutex<Pending>,
}

impl std::ops::Deref for Tracer {
    type Target = TraceStore;
    fn deref(&self) -> &TraceStore {
        &self.shared
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        drop(self.stop.take()); // closes the write end: the reader's poll wakes
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Events as they arrive; moved into `by_isn` when legs are taken.
    events: Vec<TraceEvent>,
    /// Unclaimed events by the SYN's sequence number, each with its arrival
    /// number (a leg's events are returned in arrival order), and the
    /// sequence numbers each (source, destination) pair was seen with: a
    /// leg is found without scanning every event of the run (10,000 probes
    /// leave some 100,000 events).
    by_isn: HashMap<u32, Vec<(u64, TraceEvent)>>,
    by_pair: HashMap<(SocketAddr, SocketAddr), Vec<u32>>,
    arrived: u64,
    kept: usize,
    /// nf_tables trace id -> packet tuple and sequence number (only the
    /// first event of a packet in a chain call carries the headers).
    ids: HashMap<u32, Packet>,
    lost: bool,
}

impl Tracer {
    /// Install the trace table in `ns`, open the event sockets there, and
    /// index the rules under test. Call after the rules are installed.
    /// `rule_texts`: also read the rules back as text (for views that print
    /// each rule beside its number). x_tables rule counts come from that
    /// text too, so under iptables-legacy it is read regardless.
    pub fn start(ns: &Namespace, frontend: Frontend, timeout: Duration, rule_texts: bool) -> Result<Tracer> {
        let nft_tool = crate::base::tool::find_tool("nft", "nftables")?;
        let legacy = netfilter::traced_by(frontend, netfilter::TraceSource::Nflog);
        let doing = format!("opening trace sockets in namespace {}", ns.name());
        let (nft, nflog) = ns
            .run(|| -> std::io::Result<(Socket, Option<Socket>)> {
                let nft = Socket::open(true)?;
                nft.set_receive_buffer(16 << 20)?;
                nft.join_group(nl::NFNLGRP_NFTRACE)?;
                let nflog = if legacy { Some(open_nflog()?) } else { None };
                Ok((nft, nflog))
            })?
            .map_err(Error::io(doing))?;
        if legacy {
            // x_tables' TRACE reaches userspace through the family's logger.
            ns.sysctl("net.netfilter.nf_log.2", "nfnetlink_log")?;
            ns.sysctl("net.netfilter.nf_log.10", "nfnetlink_log")?;
        }
        let ran = netfilter::run_in(ns, &nft_tool, &["-f", "-"], &trace_ruleset(), timeout)?;
        if !ran.status.success() {
            return Err(Error::config(format!(
                "installing the trace table in namespace {} failed: {}",
                ns.name(),
                ran.output.trim()
            )));
        }
        let snapshot = if rule_texts || legacy {
            netfilter::snapshot(ns, frontend, timeout)?
        } else {
            netfilter::Snapshot::default()
        };
        let (positions, hooks) = if netfilter::traced_by(frontend, netfilter::TraceSource::NfTrace) {
            dump_nft(ns)?
        } else {
            (HashMap::new(), HashMap::new())
        };
        let mut counts = HashMap::new();
        for (family, table, chain, _) in positions.keys() {
            *counts.entry((*family, table.clone(), chain.clone())).or_insert(0) += 1;
        }
        let mut texts = BTreeMap::new();
        let saves = [
            (2, &snapshot.iptables_nft),
            (10, &snapshot.ip6tables_nft),
            (2, &snapshot.iptables_legacy),
            (10, &snapshot.ip6tables_legacy),
        ];
        for (nfproto, save) in saves {
            for (k, v) in RuleIndex::parse_save(nfproto, save.as_deref().unwrap_or("")) {
                texts.entry(k).or_insert(v);
            }
        }
        let mut index = RuleIndex { positions, counts, hooks, texts, snapshot };
        if let Some(listing) = index.snapshot.nft.clone() {
            index.add_nft_texts(&listing);
        }
        let shared =
            std::sync::Arc::new(TraceStore { frontend, nft, nflog, index, pending: Mutex::new(Pending::default()) });
        let (wake, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Io { doing: "creating the trace reader's pipe".into(), err: e.into() })?;
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("trace-reader".into())
            .spawn(move || reader_shared.read_until_closed(wake))
            .map_err(Error::io("starting the trace reader"))?;
        let listed = list_trace_table(ns, timeout)?.unwrap_or_default();
        Ok(Tracer { shared, reader: Some(reader), stop: Some(stop), proxy: "envoy".into(), listed })
    }

    /// Whether the trace table is still as installed; else what happened
    /// to it (the rules under test, or something they left running, removed
    /// or changed it: every path from then on would be wrong).
    pub fn check(&self, ns: &Namespace, timeout: Duration) -> Option<String> {
        let table = trace_table();
        match list_trace_table(ns, timeout) {
            Err(e) => Some(format!("the trace table inet {table} could not be read back: {e}")),
            Ok(None) => Some(format!(
                "the harness's trace table inet {table} was removed from namespace {} after it was installed: the rules under test (a `flush ruleset`, a `delete table`, or a process they left running) took it away, so no rule path can be read",
                ns.name()
            )),
            Ok(Some(now)) if now != self.listed => Some(format!(
                "the harness's trace table inet {table} in namespace {} was changed after it was installed (by the rules under test or a process they left running), so the rule paths cannot be trusted; as installed:\n{}\nnow:\n{}",
                ns.name(),
                self.listed.trim_end(),
                crate::base::text::shown(&now)
            )),
            Ok(Some(_)) => None,
        }
    }

    /// The rules under test as indexed at the start.
    pub fn index(&self) -> &RuleIndex {
        &self.shared.index
    }
}

impl TraceStore {
    /// Drain the sockets whenever they have data, until `wake` is closed.
    fn read_until_closed(&self, wake: std::os::fd::OwnedFd) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        loop {
            let mut fds =
                vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN), PollFd::new(self.nft.fd(), PollFlags::POLLIN)];
            if let Some(s) = &self.nflog {
                fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            }
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            drop(fds);
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            self.drain(&mut p);
        }
    }

    /// Read every queued event. Events are queued by the kernel while the
    /// SYN traverses the hooks, before the connection can complete, so after
    /// a probe's answer arrived its events are all here.
    fn drain(&self, p: &mut Pending) {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match self.nft.recv(&mut buf) {
                Ok(n) => self.parse_nft(&buf[..n], p),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // ENOBUFS: the kernel dropped events; paths may be incomplete.
                    p.lost = true;
                    break;
                }
            }
        }
        if let Some(sock) = &self.nflog {
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => parse_nflog(&buf[..n], p),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        p.lost = true;
                        break;
                    }
                }
            }
        }
    }

    fn parse_nft(&self, buf: &[u8], p: &mut Pending) {
        for msg in nl::messages(buf).into_iter().flatten() {
            if msg.ty != (nl::NFNL_SUBSYS_NFTABLES << 8) | nl::NFT_MSG_TRACE {
                continue;
            }
            let Some(ev) = parse_nft_trace(&msg, &mut p.ids, |table, chain, handle| {
                self.index.position(msg.family, table, chain, handle)
            }) else {
                continue;
            };
            // Our own table's events are kept: they see every traced SYN
            // before any NAT, which is how a leg finds its sequence number.
            // Under iptables-legacy nothing else in nf_tables is under test.
            if ev.table == trace_table() || netfilter::traced_by(self.frontend, netfilter::TraceSource::NfTrace) {
                p.events.push(ev);
            }
        }
    }

    /// Take the events of one connection leg: the SYN that left `src` for
    /// `dst` is found before NAT; its sequence number then claims the events
    /// after NAT too (where the destination, or even the source port, was
    /// rewritten). Legs whose SYN was not seen fall back to matching the
    /// source and the destination, or the port reached.
    pub fn take_leg(&self, src: SocketAddr, dst: SocketAddr, reached: u16) -> (Vec<TraceEvent>, bool) {
        let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.drain(&mut guard);
        let p = &mut *guard;
        for e in std::mem::take(&mut p.events) {
            p.arrived += 1;
            p.kept += 1;
            let isns = p.by_pair.entry((e.src, e.dst)).or_default();
            if !isns.contains(&e.isn) {
                isns.push(e.isn);
            }
            p.by_isn.entry(e.isn).or_default().push((p.arrived, e));
        }
        let isns: Vec<u32> = p.by_pair.get(&(src, dst)).cloned().unwrap_or_default();
        // Two connections with this leg's addresses and ports: which events
        // are its own cannot be told, so the path is not complete.
        let ambiguous = isns.len() > 1;
        let mut mine: Vec<(u64, TraceEvent)> = Vec::new();
        let mut claim = |bucket: &mut Vec<(u64, TraceEvent)>, ours: &dyn Fn(&TraceEvent) -> bool| {
            let (taken, left): (Vec<_>, Vec<_>) = std::mem::take(bucket).into_iter().partition(|(_, e)| ours(e));
            *bucket = left;
            mine.extend(taken);
        };
        if isns.is_empty() {
            // (Rare: a leg whose SYN was not seen; every event is looked at.)
            for bucket in p.by_isn.values_mut() {
                claim(bucket, &|e| e.src == src && (e.dst == dst || e.dst.port() == reached));
            }
        } else {
            for isn in &isns {
                if let Some(bucket) = p.by_isn.get_mut(isn) {
                    claim(bucket, &|e| e.src.ip() == src.ip());
                }
            }
        }
        p.kept -= mine.len();
        let touched: std::collections::HashSet<u32> = mine.iter().map(|(_, e)| e.isn).collect();
        let pairs: std::collections::HashSet<(SocketAddr, SocketAddr)> =
            mine.iter().map(|(_, e)| (e.src, e.dst)).collect();
        for isn in &touched {
            if p.by_isn.get(isn).is_some_and(Vec::is_empty) {
                p.by_isn.remove(isn);
            }
        }
        for pair in pairs {
            if let Some(v) = p.by_pair.get_mut(&pair) {
                v.retain(|i| p.by_isn.contains_key(i));
                if v.is_empty() {
                    p.by_pair.remove(&pair);
                }
            }
        }
        mine.sort_by_key(|(n, _)| *n);
        let mine: Vec<TraceEvent> = mine.into_iter().map(|(_, e)| e).filter(|e| e.table != trace_table()).collect();
        // Events nobody claims (probes that failed before their legs were
        // known) must not pile up over a long session: the oldest go.
        if p.kept > 100_000 {
            let mut all: Vec<(u64, TraceEvent)> = p.by_isn.drain().flat_map(|(_, b)| b).collect();
            all.sort_by_key(|(n, _)| *n);
            all.drain(..all.len() - 100_000);
            p.by_pair.clear();
            p.kept = all.len();
            for (n, e) in all {
                let isns = p.by_pair.entry((e.src, e.dst)).or_default();
                if !isns.contains(&e.isn) {
                    isns.push(e.isn);
                }
                p.by_isn.entry(e.isn).or_default().push((n, e));
            }
        }
        // Trace ids only join events of one chain call: old ones are dead.
        if p.ids.len() > 100_000 {
            p.ids.clear();
        }
        (mine, p.lost || ambiguous)
    }
}

/// `nft list table inet <trace table>`, or None when it does not exist.
fn list_trace_table(ns: &Namespace, timeout: Duration) -> Result<Option<String>> {
    let nft = crate::base::tool::find_tool("nft", "nftables")?;
    let ran = netfilter::run_in(ns, &nft, &["list", "table", "inet", trace_table()], "", timeout)?;
    Ok(ran.status.success().then_some(ran.output))
}

fn open_nflog() -> std::io::Result<Socket> {
    let sock = Socket::open(false)?;
    sock.set_receive_buffer(16 << 20)?;
    sock.set_receive_timeout(Duration::from_secs(5))?;
    let af_inet = libc::AF_INET as u8;
    let mut mode = 256u32.to_be_bytes().to_vec(); // copy the first 256 bytes of each packet
    mode.extend_from_slice(&[2 /* NFULNL_COPY_PACKET */, 0]);
    // Rebind both families to nfnetlink_log (PF_UNBIND, PF_BIND), bind group 0,
    // set the copy mode: NFULA_CFG_CMD = 1, NFULA_CFG_MODE = 2.
    let af_inet6 = libc::AF_INET6 as u8;
    let steps: [(u8, u16, &[u8]); 6] =
        [(af_inet, 1, &[4]), (af_inet, 1, &[3]), (af_inet6, 1, &[4]), (af_inet6, 1, &[3]), (0, 1, &[1]), (0, 2, &mode)];
    for (seq, (family, attr, value)) in steps.into_iter().enumerate() {
        let seq = seq as u32 + 1;
        let req = nl::request(
            nl::NFNL_SUBSYS_ULOG,
            nl::NFULNL_MSG_CONFIG,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            family,
            0,
            &[(attr, value)],
        );
        sock.transact(&req, seq, |_| {})?;
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Addresses and SYN sequence number of a traced packet.
pub type Packet = (SocketAddr, SocketAddr, u32);

/// One nf_tables trace message -> event. `position` maps a rule handle to
/// its number in the chain.
pub fn parse_nft_trace(
    msg: &nl::Msg<'_>,
    ids: &mut HashMap<u32, Packet>,
    position: impl Fn(&str, &str, u64) -> Option<u32>,
) -> Option<TraceEvent> {
    let attrs = nl::attrs(msg.attrs).ok()?;
    let (mut table, mut chain, mut handle, mut ty, mut id) = (None, None, None, None, None);
    let (mut network, mut transport, mut verdict) = (None, None, None);
    for (t, p) in attrs {
        match t {
            1 => table = Some(nl::attr_str(p)),
            2 => chain = Some(nl::attr_str(p)),
            3 => handle = nl::attr_be64(p),
            4 => ty = nl::attr_be32(p),
            5 => verdict = parse_verdict(p),
            6 => id = nl::attr_be32(p),
            8 => network = Some(p),
            9 => transport = Some(p),
            _ => {}
        }
    }
    let (table, chain) = (table?, chain?);
    let packet = match network.and_then(|n| Some((nl::packet_tuple(n, transport)?, nl::tcp_seq(n, transport)?))) {
        Some(((src, dst), isn)) => {
            if let Some(id) = id {
                ids.insert(id, (src, dst, isn));
            }
            (src, dst, isn)
        }
        None => *ids.get(&id?)?,
    };
    let step = match ty? {
        1 => Step::Policy,
        2 => Step::Return,
        // A rule whose verdict is `continue` decided nothing; the kernel also
        // reports one (handle 0) when a chain resumes after a return.
        3 if verdict.as_deref() == Some("continue") => return None,
        3 => Step::Rule(handle.and_then(|h| position(&table, &chain, h)).unwrap_or(0)),
        _ => return None,
    };
    Some(TraceEvent { nfproto: msg.family, table, chain, step, verdict, src: packet.0, dst: packet.1, isn: packet.2 })
}

fn parse_verdict(nested: &[u8]) -> Option<String> {
    let attrs = nl::attrs(nested).ok()?;
    let code = attrs.iter().find(|(t, _)| *t == 1).and_then(|(_, p)| nl::attr_be32(p))? as i32;
    let target = attrs.iter().find(|(t, _)| *t == 2).map(|(_, p)| nl::attr_str(p));
    Some(match (code, target) {
        (0, _) => "drop".into(),
        (1, _) => "accept".into(),
        (-1, _) => "continue".into(),
        (-2, _) => "break".into(),
        (-3, Some(c)) => format!("jump {c}"),
        (-4, Some(c)) => format!("goto {c}"),
        (-5, _) => "return".into(),
        (c, _) => format!("verdict {c}"),
    })
}

/// Trace events in one NFLOG datagram (iptables-legacy `TRACE:` lines).
pub fn parse_nflog_datagram(buf: &[u8]) -> Vec<TraceEvent> {
    let mut p = Pending::default();
    parse_nflog(buf, &mut p);
    p.events
}

fn parse_nflog(buf: &[u8], p: &mut Pending) {
    for msg in nl::messages(buf).into_iter().flatten() {
        if msg.ty != (nl::NFNL_SUBSYS_ULOG << 8) | nl::NFULNL_MSG_PACKET {
            continue;
        }
        let Ok(attrs) = nl::attrs(msg.attrs) else { continue };
        let prefix = attrs.iter().find(|(t, _)| *t == 10).map(|(_, v)| nl::attr_str(v));
        let payload = attrs.iter().find(|(t, _)| *t == 9).map(|(_, v)| *v);
        let (Some(prefix), Some(payload)) = (prefix, payload) else { continue };
        let Some((table, chain, step)) = parse_legacy_prefix(&prefix) else { continue };
        let (Some((src, dst)), Some(isn)) = (nl::packet_tuple(payload, None), nl::tcp_seq(payload, None)) else {
            continue;
        };
        let nfproto = if src.is_ipv4() { 2 } else { 10 };
        p.events.push(TraceEvent { nfproto, table, chain, step, verdict: None, src, dst, isn });
    }
}

/// The elements one leg contributes to a path, before the listener it
/// reached: the hook chain, then each user chain that decided with the
/// number of its deciding rule (none for a one-rule chain). After a
/// redirect the listener comes next; otherwise the later hooks the packet
/// passed (INPUT, POSTROUTING) are named too. Hooks are named from the leg's
/// direction even where the rule set has no chain (so no event) there:
/// a locally made SYN passes OUTPUT then POSTROUTING, one from another pod
/// PREROUTING then INPUT.
pub fn leg_elements(events: &[TraceEvent], index: &RuleIndex, redirected: bool, local_origin: bool) -> Vec<String> {
    // Segments: one per hook traversal, user chains in first-visit order
    // with the last step seen in each.
    let mut segments: Vec<Segment> = Vec::new();
    for e in events {
        if let Some(hook) = index.hook_of(e.nfproto, &e.table, &e.chain) {
            if segments.last().is_none_or(|(h, _)| h != hook) {
                segments.push((hook.to_string(), Vec::new()));
            }
            continue;
        }
        if segments.is_empty() {
            segments.push(("?".into(), Vec::new()));
        }
        let chains = &mut segments.last_mut().unwrap().1;
        match chains.iter_mut().find(|(_, t, c, _)| *t == e.table && *c == e.chain) {
            Some(entry) => entry.3 = e.step.clone(),
            None => chains.push((e.nfproto, e.table.clone(), e.chain.clone(), e.step.clone())),
        }
    }
    // nf_tables reports entering a chain (the jump) but not always leaving
    // one where no rule matched: a jumped-to chain with no event of its own
    // ended without a decision.
    for e in events {
        let Some(target) = e.verdict.as_deref().and_then(|v| v.strip_prefix("jump ").or(v.strip_prefix("goto ")))
        else {
            continue;
        };
        let hook = index.hook_of(e.nfproto, &e.table, &e.chain);
        let Some(seg) = segments.iter_mut().find(|(h, chains)| {
            Some(h.as_str()) == hook || chains.iter().any(|(_, t, c, _)| *t == e.table && *c == e.chain)
        }) else {
            continue;
        };
        if !seg.1.iter().any(|(_, t, c, _)| *t == e.table && c == target) {
            let at = seg.1.iter().position(|(_, t, c, _)| *t == e.table && *c == e.chain).map_or(0, |i| i + 1);
            seg.1.insert(at, (e.nfproto, e.table.clone(), target.to_string(), Step::Return));
        }
    }
    let (first, second) = if local_origin { ("OUTPUT", "POSTROUTING") } else { ("PREROUTING", "INPUT") };
    if segments.first().is_none_or(|(h, _)| h != first) {
        segments.insert(0, (first.to_string(), Vec::new()));
    }
    if !redirected && !segments.iter().any(|(h, _)| h == second) {
        segments.insert(1, (second.to_string(), Vec::new()));
    }
    let mut out = Vec::new();
    for (i, (hook, chains)) in segments.iter().enumerate() {
        if i > 0 && redirected {
            break;
        }
        out.push(hook.clone());
        for (nfproto, table, chain, step) in chains {
            out.push(match step {
                Step::Rule(_) if index.rule_count(*nfproto, table, chain) == 1 => chain.clone(),
                Step::Rule(0) => format!("{chain} RULE ?"),
                Step::Rule(n) => format!("{chain} RULE {n}"),
                Step::Return | Step::Policy => format!("{chain} (no rule matched)"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(chain: &str, step: Step) -> TraceEvent {
        TraceEvent {
            nfproto: 2,
            table: "nat".into(),
            chain: chain.into(),
            step,
            verdict: None,
            src: "10.244.0.10:40000".parse().unwrap(),
            dst: "10.244.0.20:9090".parse().unwrap(),
            isn: 1,
        }
    }

    fn index() -> RuleIndex {
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        RuleIndex { texts: RuleIndex::parse_save(2, save), ..RuleIndex::default() }
    }

    #[test]
    fn legacy_prefixes() {
        assert_eq!(
            parse_legacy_prefix("TRACE: nat:ISTIO_OUTPUT:rule:9 "),
            Some(("nat".into(), "ISTIO_OUTPUT".into(), Step::Rule(9)))
        );
        assert_eq!(
            parse_legacy_prefix("TRACE: nat:POSTROUTING:policy:1 "),
            Some(("nat".into(), "POSTROUTING".into(), Step::Policy))
        );
        assert_eq!(
            parse_legacy_prefix("TRACE: nat:ISTIO_INBOUND:return:6 "),
            Some(("nat".into(), "ISTIO_INBOUND".into(), Step::Return))
        );
        assert_eq!(parse_legacy_prefix("TRACE: nat:X:rule:nine"), None);
        assert_eq!(parse_legacy_prefix("something else"), None);
    }

    #[test]
    fn redirected_outbound_leg_reads_like_the_article() {
        let events = [
            ev("OUTPUT", Step::Rule(1)),
            ev("ISTIO_OUTPUT", Step::Rule(2)),
            ev("ISTIO_REDIRECT", Step::Rule(1)),
            ev("POSTROUTING", Step::Policy),
        ];
        assert_eq!(leg_elements(&events, &index(), true, true), ["OUTPUT", "ISTIO_OUTPUT RULE 2", "ISTIO_REDIRECT"]);
    }

    #[test]
    fn a_leg_that_leaves_names_postrouting() {
        let events = [
            ev("OUTPUT", Step::Rule(1)),
            ev("ISTIO_OUTPUT", Step::Rule(1)),
            ev("OUTPUT", Step::Policy),
            ev("POSTROUTING", Step::Policy),
        ];
        assert_eq!(leg_elements(&events, &index(), false, true), ["OUTPUT", "ISTIO_OUTPUT RULE 1", "POSTROUTING"]);
        // No nat POSTROUTING chain (iptables-nft creates only chains in use):
        // the hook is still on the path.
        assert_eq!(leg_elements(&events[..3], &index(), false, true), ["OUTPUT", "ISTIO_OUTPUT RULE 1", "POSTROUTING"]);
        // No event at all (no nat table): the hooks by direction.
        assert_eq!(leg_elements(&[], &index(), false, false), ["PREROUTING", "INPUT"]);
    }

    #[test]
    fn a_jumped_to_chain_without_events_ended_without_a_decision() {
        let mut jump = ev("OUTPUT", Step::Rule(1));
        jump.verdict = Some("jump ISTIO_OUTPUT".into());
        let events = [jump, ev("OUTPUT", Step::Policy), ev("POSTROUTING", Step::Policy)];
        assert_eq!(
            leg_elements(&events, &index(), false, true),
            ["OUTPUT", "ISTIO_OUTPUT (no rule matched)", "POSTROUTING"]
        );
    }

    #[test]
    fn a_chain_where_nothing_matched_says_so() {
        let events = [
            ev("OUTPUT", Step::Rule(1)),
            ev("ISTIO_OUTPUT", Step::Return),
            ev("OUTPUT", Step::Policy),
            ev("POSTROUTING", Step::Policy),
        ];
        assert_eq!(
            leg_elements(&events, &index(), false, true),
            ["OUTPUT", "ISTIO_OUTPUT (no rule matched)", "POSTROUTING"]
        );
    }

    #[test]
    fn save_output_is_indexed_by_chain() {
        let i = index();
        assert_eq!(i.rule_count(2, "nat", "ISTIO_OUTPUT"), 2);
        assert_eq!(i.rule_text(2, "nat", "ISTIO_OUTPUT", 2), Some("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert_eq!(i.rule_count(2, "nat", "NOPE"), 0);
        assert_eq!(i.rule_count(10, "nat", "ISTIO_OUTPUT"), 0);
    }
}

/// One connection leg of a probe and what the kernel did to its SYN.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LegPath {
    pub src: String,
    pub dst: String,
    /// What it reached: `Envoy 15001 (Outbound)`, `Remote Pod`, ...
    pub reached: String,
    pub elements: Vec<String>,
    pub events: Vec<TraceEvent>,
}

/// The path of a whole probe connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObservedPath {
    /// In the article's notation: `OUTPUT -> ISTIO_OUTPUT RULE 9 -> ...`.
    pub line: String,
    pub legs: Vec<LegPath>,
    /// False when the kernel dropped trace events (the socket overflowed).
    pub complete: bool,
}

fn capitalized(s: &str) -> String {
    let mut s = s.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    s
}

/// Where a leg ended, and the name it has in a path.
fn reached_label(proxy: &str, role: &str, port: u16) -> String {
    format!("{} {port} ({})", capitalized(proxy), capitalized(role))
}

fn server_label(proxy: &str, name: &str, port: u16) -> String {
    match name {
        "local-app" => "Local Pod".into(),
        "remote-app" => "Remote Pod".into(),
        n if n.strip_prefix(proxy).is_some_and(|rest| rest.starts_with('-')) => {
            format!("{} {port}", capitalized(proxy))
        }
        n => capitalized(n),
    }
}

impl Tracer {
    /// Name the proxy as the profile does (its listeners are `<proxy>-admin`, ...).
    pub fn set_proxy_name(&mut self, proxy: &str) {
        self.proxy = proxy.to_string();
    }

    /// The path of a probe whose client connected from `client` to `target`.
    /// `client_local`: the client runs in the traced (local pod) namespace.
    pub fn path(
        &self,
        client: Option<SocketAddr>,
        client_local: bool,
        target: SocketAddr,
        obs: &crate::probe::Observation,
    ) -> ObservedPath {
        use crate::probe::Observation;
        use sidecheck_wire::End;
        // (src, dst, reached port, reached label) per leg.
        let mut legs: Vec<(SocketAddr, SocketAddr, Option<u16>, String)> = Vec::new();
        match (client, obs) {
            (Some(client), Observation::Answered(a)) => {
                let hops = &a.probe.hops;
                let end = match &a.end {
                    End::Server { name, port, .. } => (Some(*port), server_label(&self.proxy, name, *port)),
                    End::Loop { role, port } => {
                        (Some(*port), format!("{} LOOP", reached_label(&self.proxy, role, *port)))
                    }
                    End::Error { .. } => (None, "(could not forward)".into()),
                };
                let reach = |k: usize| match hops.get(k) {
                    Some(h) => (Some(h.port), reached_label(&self.proxy, &h.role, h.port)),
                    None => end.clone(),
                };
                let (p, l) = reach(0);
                legs.push((client, target, p, l));
                for (k, hop) in hops.iter().enumerate() {
                    if let Some((src, dst)) = hop.upstream {
                        let (p, l) = reach(k + 1);
                        legs.push((src, dst, p, l));
                    } else if let End::Error { message, .. } = &a.end {
                        legs.last_mut().unwrap().3 =
                            format!("{} -> (could not forward: {})", legs.last().unwrap().3, message.replace('_', " "));
                    }
                }
            }
            (Some(client), Observation::Failed { .. }) => legs.push((client, target, None, "(no answer)".into())),
            (None, _) => {}
        }
        let mut complete = true;
        let mut out = Vec::new();
        for (i, (src, dst, reached, label)) in legs.into_iter().enumerate() {
            let (events, lost) = self.take_leg(src, dst, reached.unwrap_or(0));
            complete &= !lost;
            let redirected = reached.is_some_and(|p| p != dst.port());
            // Legs after the first are fake-envoy's, in the local pod.
            let elements = leg_elements(&events, &self.index, redirected, i > 0 || client_local);
            out.push(LegPath { src: src.to_string(), dst: dst.to_string(), reached: label, elements, events });
        }
        let line = out
            .iter()
            .flat_map(|l| l.elements.iter().cloned().chain(std::iter::once(l.reached.clone())))
            .collect::<Vec<_>>()
            .join(" -> ");
        ObservedPath { line, legs: out, complete }
    }
}

/// Parsers against bytes the kernel (6.18) sent for a real probe: flow 2's
/// first leg, 10.244.0.10 -> 10.244.0.20:9090, redirected to 15001.
#[cfg(test)]
mod captured {
    use super::*;

    fn datagrams(hex: &str) -> Vec<Vec<u8>> {
        hex.lines()
            .map(|l| (0..l.len()).step_by(2).map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap()).collect())
            .collect()
    }

    #[test]
    fn nf_tables_trace_events() {
        let mut ids = HashMap::new();
        let mut events = Vec::new();
        for d in datagrams(include_str!("../../testdata/nft-trace-leg1.hex")) {
            for msg in nl::messages(&d) {
                let msg = msg.unwrap();
                assert_eq!(msg.ty, (nl::NFNL_SUBSYS_NFTABLES << 8) | nl::NFT_MSG_TRACE);
                // Positions by handle, as a rule dump would give them.
                if let Some(e) = parse_nft_trace(&msg, &mut ids, |_, _, h| Some(h as u32 + 100)) {
                    events.push(e);
                }
            }
        }
        let steps: Vec<(String, String, Option<String>)> = events
            .iter()
            // (The tracer's table had this name when the bytes were captured.)
            .filter(|e| e.table != "sidecheck_trace")
            .map(|e| (e.chain.clone(), format!("{:?}", e.step), e.verdict.clone()))
            .collect();
        let first = &steps[..3];
        assert_eq!(first[0].0, "OUTPUT");
        assert_eq!(first[0].2.as_deref(), Some("jump ISTIO_OUTPUT"));
        assert_eq!(first[1].0, "ISTIO_OUTPUT");
        assert_eq!(first[1].2.as_deref(), Some("jump ISTIO_REDIRECT"));
        assert_eq!(first[2].0, "ISTIO_REDIRECT");
        assert_eq!(first[2].2.as_deref(), Some("accept"));
        // Events without headers took the tuple of their trace id.
        let leg: Vec<_> = events.iter().filter(|e| e.dst == "10.244.0.20:9090".parse().unwrap()).collect();
        assert!(leg.len() >= 4, "{events:?}");
        assert!(leg.iter().all(|e| e.src.ip() == "10.244.0.10".parse::<std::net::IpAddr>().unwrap()));
        // Truncating any datagram never panics.
        for d in datagrams(include_str!("../../testdata/nft-trace-leg1.hex")) {
            for cut in 0..d.len() {
                for msg in nl::messages(&d[..cut]).into_iter().flatten() {
                    let _ = parse_nft_trace(&msg, &mut HashMap::new(), |_, _, _| None);
                }
            }
        }
    }

    #[test]
    fn legacy_nflog_trace_lines() {
        let mut p = Pending::default();
        for d in datagrams(include_str!("../../testdata/nflog-trace-leg1.hex")) {
            parse_nflog(&d, &mut p);
        }
        let got: Vec<(String, Step)> = p.events.iter().map(|e| (e.chain.clone(), e.step.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("OUTPUT".to_string(), Step::Rule(1)),
                ("ISTIO_OUTPUT".to_string(), Step::Rule(9)),
                ("ISTIO_REDIRECT".to_string(), Step::Rule(1)),
                ("POSTROUTING".to_string(), Step::Policy),
            ]
        );
        assert!(p.events.iter().all(|e| e.table == "nat" && e.dst.port() == 9090 || e.dst.port() == 15001));
        for d in datagrams(include_str!("../../testdata/nflog-trace-leg1.hex")) {
            for cut in 0..d.len() {
                parse_nflog(&d[..cut], &mut Pending::default());
            }
        }
    }
}

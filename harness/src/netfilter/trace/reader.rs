//! The reader: a thread drains the trace sockets as events arrive, and
//! each probe's legs claim their events by the SYN's addresses and
//! sequence number.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::event::{parse_nflog, parse_nft_trace, Packet, TraceEvent};
use super::index::RuleIndex;
use super::table::trace_table;
use crate::netfilter::netlink::{self as nl, nflog, nftables, Socket};
use crate::rules::source::Frontend;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// The sockets, the rules they are read against, and the events not yet
/// claimed.
pub struct TraceStore {
    frontend: Frontend,
    nft: Socket,
    nflog: Option<Socket>,
    pub(super) index: RuleIndex,
    pending: Mutex<Pending>,
}

/// Trace events received and not yet claimed by a probe's legs, and how
/// often the kernel dropped some.
#[derive(Default)]
pub struct Pending {
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
    /// Times a socket overflowed (ENOBUFS: the kernel dropped events). A
    /// trial compares it before and after: only trials that ran while
    /// events were lost have paths that may be incomplete.
    losses: u64,
}

/// The trace sockets of a namespace: nf_tables' trace group, and under
/// iptables-legacy (or `any`) the NFLOG group x_tables' TRACE logs to.
pub(super) fn open_sockets(ns: &Namespace, legacy: bool) -> Result<(Socket, Option<Socket>)> {
    let doing = format!("opening trace sockets in namespace {}", ns.name());
    ns.run(|| -> std::io::Result<(Socket, Option<Socket>)> {
        let nft = Socket::open(true)?;
        nft.set_receive_buffer(16 << 20)?;
        nft.join_group(nl::NFNLGRP_NFTRACE)?;
        let nflog = if legacy { Some(open_nflog()?) } else { None };
        Ok((nft, nflog))
    })?
    .map_err(Error::io(doing))
}

/// The reader thread and what it fills; stops the thread when dropped.
pub(super) struct Reader {
    pub(super) shared: Arc<TraceStore>,
    thread: Option<JoinHandle<()>>,
    /// Written to on drop: wakes the reader to stop.
    stop: Option<OwnedFd>,
}

impl Reader {
    pub(super) fn spawn(frontend: Frontend, nft: Socket, nflog: Option<Socket>, index: RuleIndex) -> Result<Reader> {
        let shared = Arc::new(TraceStore { frontend, nft, nflog, index, pending: Mutex::new(Pending::default()) });
        let (wake, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Io { doing: "creating the trace reader's pipe".into(), err: e.into() })?;
        let reader_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("trace-reader".into())
            .spawn(move || reader_shared.read_until_closed(wake))
            .map_err(Error::io("starting the trace reader"))?;
        Ok(Reader { shared, thread: Some(thread), stop: Some(stop) })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        drop(self.stop.take()); // closes the write end: the reader's poll wakes
        if let Some(r) = self.thread.take() {
            let _ = r.join();
        }
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
    pub(super) fn drain(&self, p: &mut Pending) {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match self.nft.recv(&mut buf) {
                Ok(n) => self.parse_nft(&buf[..n], p),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // ENOBUFS: the kernel dropped events; paths may be incomplete.
                    p.record_loss();
                    break;
                }
            }
        }
        if let Some(sock) = &self.nflog {
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => parse_nflog(&buf[..n], &mut p.events),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        p.record_loss();
                        break;
                    }
                }
            }
        }
    }

    fn parse_nft(&self, buf: &[u8], p: &mut Pending) {
        for msg in nl::messages(buf).into_iter().flatten() {
            if !nftables::is_trace(&msg) {
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
            if ev.table == trace_table()
                || crate::netfilter::traced_by(self.frontend, crate::netfilter::TraceSource::NfTrace)
            {
                p.events.push(ev);
            }
        }
    }

    /// Lock the unclaimed events, after reading what is queued.
    pub(super) fn drained(&self) -> std::sync::MutexGuard<'_, Pending> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.drain(&mut p);
        p
    }
}

impl Pending {
    /// A received event, not yet claimed.
    pub fn push(&mut self, e: TraceEvent) {
        self.events.push(e);
    }

    /// The kernel dropped events (a socket overflowed).
    pub fn record_loss(&mut self) {
        self.losses += 1;
    }

    /// How many times events were dropped so far.
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// Take the events of one connection leg: the SYN that left `src` for
    /// `dst` is found before NAT; its sequence number then claims the events
    /// after NAT too (where the destination, or even the source port, was
    /// rewritten). Legs whose SYN was not seen fall back to matching the
    /// source and the destination, or the port reached. Also says whether
    /// two connections had this leg's addresses and ports (which events are
    /// its own cannot be told).
    pub fn take_leg(&mut self, src: SocketAddr, dst: SocketAddr, reached: u16) -> (Vec<TraceEvent>, bool) {
        let p = self;
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
        (mine, ambiguous)
    }
}

fn open_nflog() -> std::io::Result<Socket> {
    let sock = Socket::open(false)?;
    sock.set_receive_buffer(16 << 20)?;
    sock.set_receive_timeout(Duration::from_secs(5))?;
    // Copy the first 256 bytes of each packet: the IP and TCP headers.
    nflog::bind(&sock, 256)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

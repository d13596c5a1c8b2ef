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
//! connection fake-envoy opened), also when probes run in parallel. Which
//! legs a probe made is the caller's to say ([`Leg`]): the tracer knows
//! addresses, not probes.
//!
//! Files: `event` (messages -> events), `index` (the rules under test),
//! `reader` (the reader thread, claiming a leg's events), `path`
//! (rendering), `table` (the harness's own table); the netlink wire format
//! is `netfilter::netlink`'s.

mod event;
mod index;
mod path;
mod reader;
mod table;

use std::time::Duration;

pub use event::{parse_legacy_prefix, parse_nflog_datagram, parse_nft_trace, Packet, Step, TraceEvent};
pub use index::RuleIndex;
pub use path::{assemble, leg_elements, Leg, LegPath, ObservedPath};
pub use reader::{Pending, TraceStore};
pub use table::trace_table;

use crate::netfilter;
use crate::rules::source::Frontend;
use crate::sandbox::ns::Namespace;
use crate::Result;

/// Receives and keeps trace events of one namespace until their probes
/// claim them. A thread reads the sockets as events arrive, so the kernel's
/// socket buffer never has to hold a whole run's events.
pub struct Tracer {
    reader: reader::Reader,
    /// The proxy's name in the profile (`envoy`): its listeners are
    /// `<name>-admin`, ... and paths call it `Envoy 15001 (Outbound)`.
    proxy: String,
    /// The trace table as the kernel held it right after it was installed.
    held: Vec<u8>,
}

impl std::ops::Deref for Tracer {
    type Target = TraceStore;
    fn deref(&self) -> &TraceStore {
        &self.reader.shared
    }
}

impl Tracer {
    /// Install the trace table in `ns`, open the event sockets there, and
    /// index the rules under test. Call after the rules are installed.
    /// `rule_texts`: also read the rules back as text (for views that print
    /// each rule beside its number). x_tables rule counts come from that
    /// text too, so under iptables-legacy it is read regardless.
    pub fn start(ns: &Namespace, frontend: Frontend, timeout: Duration, rule_texts: bool) -> Result<Tracer> {
        let legacy = netfilter::traced_by(frontend, netfilter::TraceSource::Nflog);
        let (nft, nflog) = reader::open_sockets(ns, legacy)?;
        if legacy {
            // x_tables' TRACE reaches userspace through the family's logger.
            ns.sysctl("net.netfilter.nf_log.2", "nfnetlink_log")?;
            ns.sysctl("net.netfilter.nf_log.10", "nfnetlink_log")?;
        }
        table::install(ns, timeout)?;
        let index = RuleIndex::read(ns, frontend, timeout, rule_texts)?;
        let reader = reader::Reader::spawn(frontend, nft, nflog, index)?;
        let held = table::read(ns, timeout)?.unwrap_or_default();
        Ok(Tracer { reader, proxy: "envoy".into(), held })
    }

    /// Whether the trace table is still as installed; else what happened
    /// to it (the rules under test, or something they left running, removed
    /// or changed it: every path from then on would be wrong).
    pub fn check(&self, ns: &Namespace, timeout: Duration) -> Option<String> {
        table::check(ns, timeout, &self.held)
    }

    /// The rules under test as indexed at the start.
    pub fn index(&self) -> &RuleIndex {
        &self.index
    }

    /// Name the proxy as the profile does (its listeners are `<proxy>-admin`, ...).
    pub fn set_proxy_name(&mut self, proxy: &str) {
        self.proxy = proxy.to_string();
    }

    /// The proxy's name, for naming what each leg reached.
    pub fn proxy(&self) -> &str {
        &self.proxy
    }

    /// How many times the kernel has dropped trace events so far: taken
    /// before a probe runs, it tells [`Tracer::path`] whether a loss since
    /// may have taken that probe's events.
    pub fn losses(&self) -> u64 {
        self.drained().losses()
    }

    /// The path of a probe from its legs (see [`assemble`]).
    pub fn path(&self, legs: Vec<Leg>, client_local: bool, losses_before: u64) -> ObservedPath {
        assemble(&mut self.drained(), &self.index, legs, client_local, losses_before)
    }
}

//! The rules under test in the kernel: installing a rule set inside the
//! pod namespace (and nowhere else), reading it back, tracing it.
//!
//! Each netfilter front end (iptables-nft, iptables-legacy, native
//! nftables) is one [`FrontEnd`] in a file of its own; [`for_backend`] and
//! [`front_ends`] are the one place that lists them. A new front end is a
//! new file and a line here (and its `--backend` value in
//! [`crate::rules::source::Backend`], which sits below this layer).

mod iptables_legacy;
mod iptables_nft;
mod nft;

pub mod install;
pub mod installed;
pub mod netlink;
pub mod run;
pub mod snapshot;
pub mod trace;

use std::path::Path;

use crate::base::net::Family;
use crate::rules::source::{Backend, Frontend};
use crate::Result;

pub use run::{run_in, Ran};
pub use snapshot::{snapshot, Snapshot};

/// What a front end installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleFormat {
    /// iptables-restore input, one per family.
    Restore,
    /// An nft ruleset, both families at once.
    Nft,
}

/// Where the tracer hears which rules a packet met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceSource {
    /// nf_tables trace events (NFNLGRP_NFTRACE), rules named by handle.
    NfTrace,
    /// x_tables' TRACE target, logged through nfnetlink_log.
    Nflog,
}

/// A program that installs rules: reads them from stdin unless `args` name a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    /// The Debian package it comes in (for the message when it is missing).
    pub package: &'static str,
    pub args: Vec<String>,
}

/// Lists one table set in a namespace: (tool, its package, args) -> the
/// listing, or None where the caller skips what cannot be read.
pub type Lister<'a> = dyn FnMut(&'static str, &'static str, &[&str]) -> Result<Option<String>> + 'a;

/// One netfilter front end: how rules are installed through it, read
/// back from it, and traced.
pub trait FrontEnd: Sync {
    /// How messages name it.
    fn name(&self) -> &'static str;
    /// The `--backend` value that selects it.
    fn backend(&self) -> Backend;
    /// Where rules installed through it land, as the rule layer names it.
    fn frontend(&self) -> Frontend;
    /// What it installs.
    fn format(&self) -> RuleFormat;
    /// The program that installs `family`'s rules: from `file` (the tool's
    /// errors then name the file's lines), else from stdin.
    fn installer(&self, family: Family, file: Option<&Path>) -> Tool;
    /// Its rules live in nf_tables, where `nft flush ruleset` removes them.
    fn in_nf_tables(&self) -> bool;
    /// Read its listings with `list` into their places in `snap`.
    fn read_back(&self, list: &mut Lister<'_>, snap: &mut Snapshot) -> Result<()>;
    /// How the tracer sees its rules.
    fn trace_source(&self) -> TraceSource;
}

static IPTABLES_NFT: &dyn FrontEnd = &iptables_nft::IptablesNft;
static IPTABLES_LEGACY: &dyn FrontEnd = &iptables_legacy::IptablesLegacy;
static NFT: &dyn FrontEnd = &nft::Nft;
/// Every front end, in the order listings are read.
static ALL: [&dyn FrontEnd; 3] = [IPTABLES_NFT, IPTABLES_LEGACY, NFT];

/// Every front end.
pub fn all() -> &'static [&'static dyn FrontEnd] {
    &ALL
}

/// The front end `--backend` selects.
pub fn for_backend(backend: Backend) -> &'static dyn FrontEnd {
    match backend {
        Backend::Nft => IPTABLES_NFT,
        Backend::Legacy => IPTABLES_LEGACY,
        Backend::NftNative => NFT,
    }
}

/// The front ends rules may be in once installed: one, or (a script's, a
/// generator's) any.
pub fn front_ends(frontend: Frontend) -> &'static [&'static dyn FrontEnd] {
    match ALL.iter().position(|f| f.frontend() == frontend) {
        Some(i) => &ALL[i..=i],
        None => &ALL,
    }
}

/// The one front end rules are in, when the harness knows it.
pub fn front_end(frontend: Frontend) -> Option<&'static dyn FrontEnd> {
    ALL.iter().copied().find(|f| f.frontend() == frontend)
}

/// Whether rules installed as `frontend` says report through `source`.
pub fn traced_by(frontend: Frontend, source: TraceSource) -> bool {
    front_ends(frontend).iter().any(|f| f.trace_source() == source)
}

#[cfg(test)]
mod factory_tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_backend_has_its_own_front_end() {
        let mut names = Vec::new();
        for b in Backend::value_variants() {
            let front = for_backend(*b);
            assert_eq!(front.backend(), *b, "{}", front.name());
            assert_eq!(front_end(front.frontend()).map(|f| f.name()), Some(front.name()));
            assert_eq!(front_ends(front.frontend()).len(), 1);
            names.push(front.name());
        }
        assert_eq!(names, all().iter().map(|f| f.name()).collect::<Vec<_>>());
        assert!(front_end(Frontend::Any).is_none());
        assert_eq!(front_ends(Frontend::Any).len(), all().len());
    }

    #[test]
    fn each_front_end_installs_and_lists_with_its_own_tools() {
        let install = |b, f, file: Option<&str>| {
            let t = for_backend(b).installer(f, file.map(Path::new));
            format!("{} {}", t.program, t.args.join(" ")).trim_end().to_string()
        };
        assert_eq!(install(Backend::Nft, Family::Ipv6, None), "ip6tables-nft-restore");
        assert_eq!(install(Backend::Legacy, Family::Ipv4, None), "iptables-legacy-restore");
        assert_eq!(install(Backend::Legacy, Family::Ipv6, Some("/r")), "ip6tables-legacy-restore /r");
        assert_eq!(install(Backend::NftNative, Family::Ipv6, None), "nft -f -");
        assert_eq!(install(Backend::NftNative, Family::Ipv4, Some("/r.nft")), "nft -f /r.nft");
        // Each listing lands in its own place: a legacy listing read as
        // iptables-nft's would index the wrong rules.
        let mut snap = Snapshot::default();
        let mut list = |tool: &'static str, _: &'static str, args: &[&str]| -> Result<Option<String>> {
            Ok(Some(format!("{tool} {}", args.join(" ")).trim_end().to_string()))
        };
        for f in all() {
            f.read_back(&mut list, &mut snap).unwrap();
        }
        assert_eq!(snap.iptables_nft.as_deref(), Some("iptables-nft-save"));
        assert_eq!(snap.ip6tables_nft.as_deref(), Some("ip6tables-nft-save"));
        assert_eq!(snap.iptables_legacy.as_deref(), Some("iptables-legacy-save"));
        assert_eq!(snap.ip6tables_legacy.as_deref(), Some("ip6tables-legacy-save"));
        assert_eq!(snap.nft.as_deref(), Some("nft -a list ruleset"));
    }

    #[test]
    fn only_legacy_rules_are_traced_through_nflog() {
        assert!(traced_by(Frontend::IptablesLegacy, TraceSource::Nflog));
        assert!(!traced_by(Frontend::IptablesLegacy, TraceSource::NfTrace));
        for f in [Frontend::IptablesNft, Frontend::Nft] {
            assert!(traced_by(f, TraceSource::NfTrace) && !traced_by(f, TraceSource::Nflog), "{f:?}");
        }
        // A script may use any front end: both sources are read.
        assert!(traced_by(Frontend::Any, TraceSource::Nflog) && traced_by(Frontend::Any, TraceSource::NfTrace));
        let flushed: Vec<&str> = all().iter().filter(|f| f.in_nf_tables()).map(|f| f.name()).collect();
        assert_eq!(flushed, ["iptables-nft", "nftables"]);
    }
}

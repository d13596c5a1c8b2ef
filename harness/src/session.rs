//! A session: one topology with one rule set installed and the stubs
//! running, reused by every probe against that rule set.

mod probes;
mod start;
mod swap;
mod teardown;

pub use probes::ProbeDone;

use tokio::runtime::Runtime;

use crate::base::net::Family;
use crate::base::phases::Phases;
use crate::model::topology::Host;
use crate::netfilter;
use crate::netfilter::trace::Tracer;
use crate::probe::{self, AppServer};
use crate::rules::source::{Backend, RuleSource};
use crate::sandbox::listing::normalize_counters;
use crate::sandbox::registry::RunGuard;
use crate::sandbox::stubs::StubProcess;
use crate::sandbox::topology::Topology;
use crate::Result;

// The configuration is the plan's (an earlier layer); named here too.
pub use crate::plan::SessionConfig;

pub struct Session {
    // Field order is drop order: servers and stubs, then the runtime (its
    // tasks hold sockets in the namespaces), then the namespaces, then the
    // run's lock.
    _apps: Vec<AppServer>,
    _udp: Vec<probe::UdpServer>,
    _stubs: Vec<StubProcess>,
    rt: Runtime,
    tracer: Option<Tracer>,
    topology: Topology,
    config: SessionConfig,
    /// This session's budget: at most this many probes of the whole process
    /// in flight at once ([`crate::sandbox::admission`]).
    in_flight: usize,
    run: RunGuard,
    // Last: its drop ends the teardown phase and reports (SIDECHECK_PHASES).
    phases: std::sync::Mutex<Phases>,
}

impl Session {
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether [`Session::swap_rules`] can put `rules` (with `backend`) in
    /// place of this session's: both everything-in-nftables (iptables-nft
    /// or native nft; `nft flush ruleset` removes all of it, x_tables
    /// legacy tables it would not), neither a script or generator (they set
    /// up routing of their own), and for exactly this session's families.
    pub fn can_swap_to(&self, rules: &RuleSource, backend: Backend) -> bool {
        let in_nft = |r: &RuleSource, b: Backend| {
            !matches!(r, RuleSource::Script(_) | RuleSource::Generator(_))
                && netfilter::front_end(r.frontend(b)).is_some_and(|f| f.in_nf_tables())
        };
        let mut families = rules.families();
        families.retain(|f| self.config.topology.families.contains(f));
        in_nft(&self.config.rules, self.config.backend)
            && in_nft(rules, backend)
            && families.len() == self.config.topology.families.len()
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The run's name prefix (every namespace name starts with it).
    pub fn prefix(&self) -> &str {
        self.run.prefix()
    }

    /// The tracer, when this session traces.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.tracer.as_ref()
    }

    /// The families this session tests.
    pub fn families(&self) -> &[Family] {
        &self.config.topology.families
    }

    /// How trial names and reports call this session's backend.
    pub fn backend_name(&self) -> String {
        self.config.backend_name()
    }

    /// The rules as installed, for reports: every front end's listing
    /// (iptables-save / ip6tables-save of the backends in use, `nft list
    /// ruleset` where nftables itself is used), the harness's own trace table
    /// left out.
    pub fn installed_rules(&self) -> Result<String> {
        self.listing(false)
    }

    /// The rules under test as the kernel holds them now, counters zeroed:
    /// every listing, `nft list ruleset` included whatever the backend (a
    /// rule added to any table shows).
    pub fn ruleset_snapshot(&self) -> Result<String> {
        Ok(normalize_counters(&self.listing(true)?))
    }

    fn listing(&self, every_nft_table: bool) -> Result<String> {
        let ns = self.topology.ns(Host::LocalPod);
        let frontend = self.config.rules.frontend(self.config.backend);
        let snap = netfilter::snapshot(ns, frontend, self.config.rules_timeout)?;
        let mut out = String::new();
        let saves = [
            ("iptables-nft-save", &snap.iptables_nft),
            ("ip6tables-nft-save", &snap.ip6tables_nft),
            ("iptables-legacy-save", &snap.iptables_legacy),
            ("ip6tables-legacy-save", &snap.ip6tables_legacy),
        ];
        for (tool, text) in saves {
            if let Some(t) = text.as_deref().filter(|t| t.lines().any(|l| l.starts_with("-A ") || l.starts_with(':'))) {
                out.push_str(&format!(
                    "# {tool}\n{}",
                    t.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect::<String>()
                ));
            }
        }
        let native = netfilter::front_ends(frontend).iter().any(|f| f.format() == netfilter::RuleFormat::Nft);
        if let Some(nft) = snap.nft.as_ref().filter(|_| every_nft_table || native) {
            let listing: String =
                nft.lines().map(|l| format!("{}\n", l.split(" # handle ").next().unwrap_or(l))).collect();
            let listing = strip_table(&listing, crate::netfilter::trace::trace_table());
            if !listing.trim().is_empty() {
                out.push_str(&format!("# nft list ruleset\n{listing}"));
            }
        }
        Ok(out)
    }
}

/// `nft list ruleset` without the block of table `name`.
fn strip_table(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        // Only the tracer's own (family inet): a user's table of the same
        // name in another family is part of the rules.
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"table") && words.get(1) == Some(&"inet") && words.get(2) == Some(&name) {
            skipping = true;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
        if skipping && line == "}" {
            skipping = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_zeroed_and_the_trace_table_dropped() {
        let text = "# Generated 12:00\n:OUTPUT ACCEPT [12:720]\n-A OUTPUT -j X\ntable inet sidecheck_trace {\n\tchain a {\n\t}\n}\ntable ip sidecheck_trace {\n}\ntable ip nat {\n\tcounter packets 3 bytes 180 jump X\n}\n";
        let got = strip_table(&normalize_counters(text), "sidecheck_trace");
        // A user's `ip sidecheck_trace` stays: only the tracer's inet table goes.
        assert_eq!(
            got,
            ":OUTPUT ACCEPT [0:0]\n-A OUTPUT -j X\ntable ip sidecheck_trace {\n}\ntable ip nat {\n\tcounter packets 0 bytes 0 jump X\n}\n"
        );
    }
}

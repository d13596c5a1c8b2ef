//! Rule swaps: other rules in the same topology, for many rule sets in a row.

use std::time::Duration;

use super::Session;
use crate::base::phases::Phases;
use crate::model::topology::Host;
use crate::netfilter;
use crate::netfilter::trace::Tracer;
use crate::rules::source::{Backend, RuleSource};
use crate::{Error, Result};

impl Session {
    /// Test other rules in this topology: flush every rule in the pod
    /// (nftables and conntrack: no connection of the old rules keeps its
    /// NAT), install `rules`, and start the tracer afresh (trace table
    /// reinstalled, rules indexed again). The stubs and app servers stay:
    /// they depend on the profile and topology, not on the rules. Refused
    /// (a configuration error) where [`Session::can_swap_to`] says no.
    pub fn swap_rules(&mut self, rules: RuleSource, backend: Backend) -> Result<()> {
        if !self.can_swap_to(&rules, backend) {
            return Err(Error::config(format!(
                "{} cannot replace {} in the same topology: start a new session",
                rules.describe(),
                self.config.rules.describe()
            )));
        }
        let pod = self.topology.ns(Host::LocalPod);
        let timeout = self.config.rules_timeout;
        let mut phases = Phases::silent();
        // Closes the old trace sockets before the table they follow goes.
        self.tracer = None;
        phases.time("rules", || -> Result<()> {
            let nft = crate::base::tool::find_tool("nft", "nftables")?;
            let ran = netfilter::run_in(pod, &nft, &["flush", "ruleset"], "", timeout)?;
            if !ran.status.success() {
                return Err(Error::config(format!(
                    "flushing the rules in namespace {} failed: {}",
                    pod.name(),
                    ran.output.trim()
                )));
            }
            flush_conntrack(pod)?;
            let said = rules.install(pod, backend, &self.config.topology.families, timeout)?;
            crate::netfilter::installed::verify(
                pod,
                &rules.describe(),
                rules.frontend(backend),
                &self.config.topology.families,
                self.config.allow_empty_rules,
                &said,
                timeout,
            )
        })?;
        self.config.rules = rules;
        self.config.backend = backend;
        let frontend = self.config.rules.frontend(backend);
        if self.config.trace {
            let mut t = phases.time("tracer", || Tracer::start(pod, frontend, timeout, self.config.rule_texts))?;
            t.set_proxy_name(&self.config.profile.proxy.name);
            if let Some(trouble) = t.check(pod, timeout) {
                return Err(Error::config(trouble));
            }
            self.tracer = Some(t);
        }
        self.phases.lock().unwrap_or_else(|e| e.into_inner()).absorb(&phases);
        Ok(())
    }
}

/// Delete every conntrack entry in `ns` (ctnetlink IPCTNL_MSG_CT_DELETE
/// without a tuple, both families): after a rule swap a new probe that
/// happens to reuse an old source port must meet the new rules, not an old
/// connection's NAT binding.
fn flush_conntrack(ns: &crate::sandbox::ns::Namespace) -> Result<()> {
    use crate::netfilter::netlink as nl;
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    let doing = format!("flushing conntrack in namespace {}", ns.name());
    let acked = nl::Socket::in_namespace(ns, Duration::from_secs(5), |sock| -> std::io::Result<()> {
        let msg =
            nl::request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, nl::NLM_F_REQUEST | nl::NLM_F_ACK, 1, 0, 0, &[]);
        sock.send(&msg)?;
        let mut buf = vec![0u8; 8192];
        let n = sock.recv(&mut buf)?;
        for m in nl::messages(&buf[..n]).into_iter().flatten() {
            match m.error {
                // ENOENT: the table was empty already.
                Some(0) | Some(libc::ENOENT) => return Ok(()),
                Some(e) => return Err(std::io::Error::from_raw_os_error(e.abs())),
                None => {}
            }
        }
        Err(std::io::Error::other("no acknowledgement"))
    })?;
    acked.map_err(Error::io(doing))
}

//! Reading back what the kernel holds after installation: one listing per
//! table set, read through each front end the rules may be in.

use std::time::Duration;

use crate::base::bounded::{LISTING_MAX, RULES_MAX};
use crate::base::tool::find_tool;
use crate::netfilter::run::{run_capped, Ran};
use crate::netfilter::FrontEnd;
use crate::rules::source::Frontend;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// What the kernel holds after installation, per front end that can hold it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub iptables_nft: Option<String>,
    pub ip6tables_nft: Option<String>,
    pub iptables_legacy: Option<String>,
    pub ip6tables_legacy: Option<String>,
    /// `nft -a list ruleset` (with rule handles).
    pub nft: Option<String>,
}

/// What a listing that cannot be read means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// An error: the caller needs every listing it asked for.
    Fails,
    /// Left out (None): a tool this machine lacks cannot have installed
    /// anything either.
    Skipped,
}

/// Read back the rules in `ns` through `fronts`.
pub fn read_back(
    ns: &Namespace,
    fronts: &[&dyn FrontEnd],
    unreadable: Unreadable,
    timeout: Duration,
) -> Result<Snapshot> {
    let mut list = |tool: &'static str, package: &'static str, args: &[&str]| -> Result<Option<String>> {
        let path = match find_tool(tool, package) {
            Ok(p) => p,
            Err(_) if unreadable == Unreadable::Skipped => return Ok(None),
            Err(e) => return Err(e),
        };
        let ran = run_capped(ns, &path, args, "", timeout, LISTING_MAX as usize)?;
        listed(&format!("{tool} {}", args.join(" ")), ns.name(), ran, unreadable)
    };
    let mut snap = Snapshot::default();
    for f in fronts {
        f.read_back(&mut list, &mut snap)?;
    }
    Ok(snap)
}

/// What `command` printed in namespace `ns`, as a listing: its failure, or
/// a listing cut at the cap (a part would index some of the rules as if
/// they were all), is an error unless `unreadable` skips it.
fn listed(command: &str, ns: &str, ran: Ran, unreadable: Unreadable) -> Result<Option<String>> {
    let skip = unreadable == Unreadable::Skipped;
    if !ran.status.success() {
        if skip {
            return Ok(None);
        }
        return Err(Error::config(format!("{command} in namespace {ns} failed: {}", ran.output.trim())));
    }
    if ran.dropped > 0 && !skip {
        return Err(Error::config(format!(
            "{} in namespace {ns} listed more than {} MiB of rules, the most sidecheck reads back (rule files are at most {} MiB; a comma list of addresses, or a script or generator, can install more rules than its file holds): its rules cannot all be indexed; test a smaller rule set",
            command.trim_end(),
            LISTING_MAX >> 20,
            RULES_MAX >> 20
        )));
    }
    Ok(Some(ran.output))
}

/// Read back the rules in `ns` through every front end `frontend` may have
/// used, and nftables' whole ruleset whatever it is: every nf_tables table
/// shows there (the tracer's, any a rule set adds beside its own).
pub fn snapshot(ns: &Namespace, frontend: Frontend, timeout: Duration) -> Result<Snapshot> {
    let mut fronts = crate::netfilter::front_ends(frontend).to_vec();
    if !fronts.iter().any(|f| f.frontend() == Frontend::Nft) {
        fronts.extend(crate::netfilter::front_end(Frontend::Nft));
    }
    read_back(ns, &fronts, Unreadable::Fails, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn ran(code: i32, output: &str, dropped: u64) -> Ran {
        Ran { status: std::process::ExitStatus::from_raw(code << 8), output: output.into(), dropped }
    }

    #[test]
    fn a_listing_cut_at_the_cap_or_failed_is_no_listing() {
        let whole = listed("iptables-nft-save ", "pod", ran(0, "*nat\n", 0), Unreadable::Fails).unwrap();
        assert_eq!(whole.as_deref(), Some("*nat\n"));
        let e = listed("iptables-nft-save ", "pod", ran(0, "*nat\n", 1), Unreadable::Fails).unwrap_err().to_string();
        assert!(e.starts_with("iptables-nft-save in namespace pod listed more than 32 MiB"), "{e}");
        let e = listed("nft -a list ruleset", "pod", ran(1, " oops\n", 0), Unreadable::Fails).unwrap_err().to_string();
        assert_eq!(e, "nft -a list ruleset in namespace pod failed: oops");
        // Whether any rules are there at all, a part answers too.
        assert!(listed("x", "pod", ran(0, "-A X\n", 1), Unreadable::Skipped).unwrap().is_some());
        assert!(listed("x", "pod", ran(1, "", 0), Unreadable::Skipped).unwrap().is_none());
    }
}

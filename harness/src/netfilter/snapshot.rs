//! Reading back what the kernel holds after installation: one listing per
//! table set, read through each front end the rules may be in.

use std::time::Duration;

use crate::base::tool::find_tool;
use crate::netfilter::run::run_in;
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
    let skip = unreadable == Unreadable::Skipped;
    let mut list = |tool: &'static str, package: &'static str, args: &[&str]| -> Result<Option<String>> {
        let path = match find_tool(tool, package) {
            Ok(p) => p,
            Err(_) if skip => return Ok(None),
            Err(e) => return Err(e),
        };
        let ran = run_in(ns, &path, args, "", timeout)?;
        if ran.status.success() {
            Ok(Some(ran.output))
        } else if skip {
            Ok(None)
        } else {
            Err(Error::config(format!(
                "{tool} {} in namespace {} failed: {}",
                args.join(" "),
                ns.name(),
                ran.output.trim()
            )))
        }
    };
    let mut snap = Snapshot::default();
    for f in fronts {
        f.read_back(&mut list, &mut snap)?;
    }
    Ok(snap)
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

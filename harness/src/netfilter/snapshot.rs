//! Reading back what the kernel holds after installation.

use std::time::Duration;

use crate::base::tool::find_tool;
use crate::netfilter::run::run_in;
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

/// Read back the rules in `ns` through every front end `frontend` may have used.
pub fn snapshot(ns: &Namespace, frontend: Frontend, timeout: Duration) -> Result<Snapshot> {
    let run = |tool: &str, package: &str, args: &[&str]| -> Result<String> {
        let path = find_tool(tool, package)?;
        let ran = run_in(ns, &path, args, "", timeout)?;
        if !ran.status.success() {
            return Err(Error::config(format!(
                "{tool} {} in namespace {} failed: {}",
                args.join(" "),
                ns.name(),
                ran.output.trim()
            )));
        }
        Ok(ran.output)
    };
    let any = frontend == Frontend::Any;
    let nft = any || frontend == Frontend::IptablesNft;
    let legacy = any || frontend == Frontend::IptablesLegacy;
    Ok(Snapshot {
        iptables_nft: nft.then(|| run("iptables-nft-save", "iptables", &[])).transpose()?,
        ip6tables_nft: nft.then(|| run("ip6tables-nft-save", "iptables", &[])).transpose()?,
        iptables_legacy: legacy.then(|| run("iptables-legacy-save", "iptables", &[])).transpose()?,
        ip6tables_legacy: legacy.then(|| run("ip6tables-legacy-save", "iptables", &[])).transpose()?,
        nft: Some(run("nft", "nftables", &["-a", "list", "ruleset"])?),
    })
}

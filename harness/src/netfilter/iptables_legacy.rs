//! iptables-legacy: restore input per family, landing in the x_tables of
//! the old kernel interface, which nf_tables' tracing never sees: their
//! TRACE target logs through nfnetlink_log.

use std::path::Path;

use crate::base::net::Family;
use crate::netfilter::snapshot::Snapshot;
use crate::netfilter::{FrontEnd, Lister, RuleFormat, Tool, TraceSource};
use crate::rules::source::{Backend, Frontend};
use crate::Result;

pub struct IptablesLegacy;

impl FrontEnd for IptablesLegacy {
    fn name(&self) -> &'static str {
        "iptables-legacy"
    }

    fn backend(&self) -> Backend {
        Backend::Legacy
    }

    fn frontend(&self) -> Frontend {
        Frontend::IptablesLegacy
    }

    fn format(&self) -> RuleFormat {
        RuleFormat::Restore
    }

    fn installer(&self, family: Family, file: Option<&Path>) -> Tool {
        let program = match family {
            Family::Ipv4 => "iptables-legacy-restore",
            Family::Ipv6 => "ip6tables-legacy-restore",
        };
        Tool { program, package: "iptables", args: file.map(|f| f.display().to_string()).into_iter().collect() }
    }

    fn in_nf_tables(&self) -> bool {
        false
    }

    fn read_back(&self, list: &mut Lister<'_>, snap: &mut Snapshot) -> Result<()> {
        snap.iptables_legacy = list("iptables-legacy-save", "iptables", &[])?;
        snap.ip6tables_legacy = list("ip6tables-legacy-save", "iptables", &[])?;
        Ok(())
    }

    fn trace_source(&self) -> TraceSource {
        TraceSource::Nflog
    }
}

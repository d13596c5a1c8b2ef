//! iptables-nft: restore input per family, landing in nf_tables tables
//! (`ip nat`, `ip6 nat`, ...), traced by nf_tables' own trace events.

use std::path::Path;

use crate::base::net::Family;
use crate::netfilter::snapshot::Snapshot;
use crate::netfilter::{FrontEnd, Lister, RuleFormat, Tool, TraceSource};
use crate::rules::source::{Backend, Frontend};
use crate::Result;

pub struct IptablesNft;

impl FrontEnd for IptablesNft {
    fn name(&self) -> &'static str {
        "iptables-nft"
    }

    fn backend(&self) -> Backend {
        Backend::Nft
    }

    fn frontend(&self) -> Frontend {
        Frontend::IptablesNft
    }

    fn format(&self) -> RuleFormat {
        RuleFormat::Restore
    }

    fn installer(&self, family: Family, file: Option<&Path>) -> Tool {
        let program = match family {
            Family::Ipv4 => "iptables-nft-restore",
            Family::Ipv6 => "ip6tables-nft-restore",
        };
        Tool { program, package: "iptables", args: file.map(|f| f.display().to_string()).into_iter().collect() }
    }

    fn in_nf_tables(&self) -> bool {
        true
    }

    fn read_back(&self, list: &mut Lister<'_>, snap: &mut Snapshot) -> Result<()> {
        snap.iptables_nft = list("iptables-nft-save", "iptables", &[])?;
        snap.ip6tables_nft = list("ip6tables-nft-save", "iptables", &[])?;
        Ok(())
    }

    fn trace_source(&self) -> TraceSource {
        TraceSource::NfTrace
    }
}

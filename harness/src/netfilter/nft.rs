//! Native nftables: one ruleset for both families (`nft -f`), read back
//! with rule handles (`nft -a list ruleset`), traced by nf_tables' own
//! trace events.

use std::path::Path;

use crate::base::net::Family;
use crate::netfilter::snapshot::Snapshot;
use crate::netfilter::{FrontEnd, Lister, RuleFormat, Tool, TraceSource};
use crate::rules::source::{Backend, Frontend};
use crate::Result;

pub struct Nft;

impl FrontEnd for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn backend(&self) -> Backend {
        Backend::NftNative
    }

    fn frontend(&self) -> Frontend {
        Frontend::Nft
    }

    fn format(&self) -> RuleFormat {
        RuleFormat::Nft
    }

    /// One ruleset holds both families: `family` does not change the command.
    fn installer(&self, _family: Family, file: Option<&Path>) -> Tool {
        let from = file.map_or("-".to_string(), |f| f.display().to_string());
        Tool { program: "nft", package: "nftables", args: vec!["-f".into(), from] }
    }

    fn in_nf_tables(&self) -> bool {
        true
    }

    fn read_back(&self, list: &mut Lister<'_>, snap: &mut Snapshot) -> Result<()> {
        snap.nft = list("nft", "nftables", &["-a", "list", "ruleset"])?;
        Ok(())
    }

    fn trace_source(&self) -> TraceSource {
        TraceSource::NfTrace
    }
}

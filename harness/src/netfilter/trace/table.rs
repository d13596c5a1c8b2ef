//! The harness's own trace table: its name, its rules, and reading it back.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use crate::netfilter;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// The harness's own table (family inet); events from it are not part of
/// any path. Its name is unique to this process (`sidecheck_trace_` and 32
/// random bits): a user's table of any name, `sidecheck_trace` too, can
/// neither merge into it nor be hidden from "rules as installed".
pub fn trace_table() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        // std seeds each RandomState from the OS's random source.
        let n = RandomState::new().hash_one(std::process::id()) as u32;
        format!("sidecheck_trace_{n:08x}")
    })
}

pub(super) fn trace_ruleset() -> String {
    format!(
        "table inet {} {{
  chain prerouting {{ type filter hook prerouting priority -400; policy accept; tcp flags & (syn | ack) == syn meta nftrace set 1; }}
  chain output {{ type filter hook output priority -400; policy accept; tcp flags & (syn | ack) == syn meta nftrace set 1; }}
}}
",
        trace_table()
    )
}

/// `nft list table inet <trace table>`, or None when it does not exist.
pub(super) fn list_trace_table(ns: &Namespace, timeout: Duration) -> Result<Option<String>> {
    let nft = crate::base::tool::find_tool("nft", "nftables")?;
    let ran = netfilter::run_in(ns, &nft, &["list", "table", "inet", trace_table()], "", timeout)?;
    Ok(ran.status.success().then_some(ran.output))
}

/// Install the trace table in `ns`.
pub(super) fn install(ns: &Namespace, nft_tool: &std::path::Path, timeout: Duration) -> Result<()> {
    let ran = netfilter::run_in(ns, nft_tool, &["-f", "-"], &trace_ruleset(), timeout)?;
    if !ran.status.success() {
        return Err(Error::config(format!(
            "installing the trace table in namespace {} failed: {}",
            ns.name(),
            ran.output.trim()
        )));
    }
    Ok(())
}

/// Whether the trace table is still as `listed` right after it was
/// installed; else what happened to it (the rules under test, or something
/// they left running, removed or changed it: every path from then on would
/// be wrong).
pub(super) fn check(ns: &Namespace, timeout: Duration, listed: &str) -> Option<String> {
    let table = trace_table();
    match list_trace_table(ns, timeout) {
        Err(e) => Some(format!("the trace table inet {table} could not be read back: {e}")),
        Ok(None) => Some(format!(
            "the harness's trace table inet {table} was removed from namespace {} after it was installed: the rules under test (a `flush ruleset`, a `delete table`, or a process they left running) took it away, so no rule path can be read",
            ns.name()
        )),
        Ok(Some(now)) if now != listed => Some(format!(
            "the harness's trace table inet {table} in namespace {} was changed after it was installed (by the rules under test or a process they left running), so the rule paths cannot be trusted; as installed:\n{}\nnow:\n{}",
            ns.name(),
            listed.trim_end(),
            crate::base::text::shown(&now)
        )),
        Ok(Some(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_table_has_a_name_of_its_own() {
        let name = trace_table();
        let random = name.strip_prefix("sidecheck_trace_").unwrap();
        assert!(random.len() == 8 && random.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert_eq!(trace_table(), name, "one name for the whole process");
        assert!(trace_ruleset().starts_with(&format!("table inet {name} {{")));
    }
}

//! The harness's own trace table: its name, its rules, and reading it back.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use crate::netfilter;
use crate::netfilter::netlink::batch::Batch;
use crate::netfilter::netlink::{
    attr_str, attrs, find, nftables, request, Msg, Socket, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLM_F_ACK, NLM_F_REQUEST,
};
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

/// The trace table in nft's syntax: what [`batch`] writes, for messages.
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

/// The same table as one nf_tables transaction: written over netlink, it
/// costs no process (`nft -f` took 6-11 ms of every session's set-up).
fn batch(table: &str) -> Batch {
    use crate::netfilter::netlink::batch::*;
    // `tcp flags & (syn | ack) == syn meta nftrace set 1`, expression for
    // expression as nft 1.0.6 compiles it.
    let rule = [
        Expr::Meta { key: NFT_META_L4PROTO, dreg: NFT_REG_1 },
        Expr::Cmp { sreg: NFT_REG_1, op: NFT_CMP_EQ, data: vec![libc::IPPROTO_TCP as u8] },
        Expr::Payload { dreg: NFT_REG_1, base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 13, len: 1 },
        Expr::Bitwise { sreg: NFT_REG_1, dreg: NFT_REG_1, mask: vec![TCP_SYN | TCP_ACK], xor: vec![0] },
        Expr::Cmp { sreg: NFT_REG_1, op: NFT_CMP_EQ, data: vec![TCP_SYN] },
        Expr::Immediate { dreg: NFT_REG_1, data: vec![1] },
        Expr::MetaSet { key: NFT_META_NFTRACE, sreg: NFT_REG_1 },
    ];
    let chains = [("prerouting", nftables::NF_INET_PRE_ROUTING), ("output", nftables::NF_INET_LOCAL_OUT)];
    let mut b = Batch::new(NFPROTO_INET).table(table);
    for (name, hook) in chains {
        b = b.base_chain(table, &BaseChain { name, kind: "filter", hook, priority: -400, policy: nftables::NF_ACCEPT });
    }
    for (name, _) in chains {
        b = b.rule(table, name, &rule);
    }
    b
}

/// TCP header flag bits (byte 13).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Install the trace table in `ns`.
pub(super) fn install(ns: &Namespace, timeout: Duration) -> Result<()> {
    Socket::in_namespace(ns, timeout, |sock| batch(trace_table()).commit(sock))?
        .map_err(|e| Error::config(format!("installing the trace table in namespace {} failed: {e}", ns.name())))
}

/// The trace table as the kernel holds it (its table, chain and rule
/// messages' attributes, in the kernel's order), or None when it does not
/// exist. Handles and all are included: any change shows.
pub(super) fn read(ns: &Namespace, timeout: Duration) -> Result<Option<Vec<u8>>> {
    let table = trace_table();
    let read = Socket::in_namespace(ns, timeout, |sock| -> std::io::Result<Option<Vec<u8>>> {
        let mut held = Vec::new();
        let name = [(nftables::NFTA_TABLE_NAME, format!("{table}\0").into_bytes())];
        let name: Vec<(u16, &[u8])> = name.iter().map(|(t, v)| (*t, &v[..])).collect();
        let get = request(
            NFNL_SUBSYS_NFTABLES,
            nftables::NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            NFPROTO_INET,
            0,
            &name,
        );
        match sock.transact(&get, 1, |m| held.extend_from_slice(m.attrs)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            r => r?,
        }
        let ours = |m: &Msg<'_>, attr: u16| {
            attrs(m.attrs).ok().and_then(|a| find(&a, attr).map(attr_str)).is_some_and(|t| t == table)
        };
        // Every chain, then every rule, of family inet: ours are kept.
        for (seq, get, table_attr) in [
            (2, nftables::NFT_MSG_GETCHAIN, nftables::NFTA_CHAIN_TABLE),
            (3, nftables::NFT_MSG_GETRULE, nftables::NFTA_RULE_TABLE),
        ] {
            // (A dump sent again starts this part over.)
            let part = std::cell::RefCell::new(Vec::new());
            let mut keep = |m: &Msg<'_>| {
                if ours(m, table_attr) {
                    part.borrow_mut().extend_from_slice(m.attrs)
                }
            };
            let req = nftables::dump_request_of(get, seq, NFPROTO_INET);
            sock.transact_again(&req, seq, &mut keep, || part.borrow_mut().clear())?;
            held.extend(part.into_inner());
        }
        Ok(Some(held))
    })?;
    read.map_err(|e| {
        Error::config(format!("reading back the trace table inet {table} in namespace {}: {e}", ns.name()))
    })
}

/// `nft list table inet <trace table>` for a message: what is there now.
fn listing(ns: &Namespace, timeout: Duration) -> String {
    let listed = crate::base::tool::find_tool("nft", "nftables")
        .and_then(|nft| netfilter::run_in(ns, &nft, &["list", "table", "inet", trace_table()], "", timeout));
    match listed {
        Ok(ran) => ran.output,
        Err(e) => format!("(nft could not list it: {e})"),
    }
}

/// Whether the trace table is still as `held` right after it was
/// installed; else what happened to it (the rules under test, or something
/// they left running, removed or changed it: every path from then on would
/// be wrong).
pub(super) fn check(ns: &Namespace, timeout: Duration, held: &[u8]) -> Option<String> {
    let table = trace_table();
    match read(ns, timeout) {
        Err(e) => Some(format!("the trace table inet {table} could not be read back: {e}")),
        Ok(None) => Some(format!(
            "the harness's trace table inet {table} was removed from namespace {} after it was installed: the rules under test (a `flush ruleset`, a `delete table`, or a process they left running) took it away, so no rule path can be read",
            ns.name()
        )),
        Ok(Some(now)) if now != held => Some(format!(
            "the harness's trace table inet {table} in namespace {} was changed after it was installed (by the rules under test or a process they left running), so the rule paths cannot be trusted; as installed:\n{}\nnow:\n{}",
            ns.name(),
            trace_ruleset().trim_end(),
            crate::base::text::shown(&listing(ns, timeout))
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

    /// What nft 1.0.6 sent for `trace_ruleset()` (strace -e write=3 of
    /// `nft -f`, table `sidecheck_trace_00000000`): one batch.
    const NFT_SENT: &str = include_str!("../../../testdata/nft-trace-table.hex");

    #[test]
    fn the_trace_table_is_written_as_nft_writes_it() {
        let nft: Vec<u8> = (0..NFT_SENT.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&NFT_SENT[i..i + 2], 16).unwrap())
            .collect();
        let nft: Vec<_> = crate::netfilter::netlink::messages(&nft).into_iter().map(|m| m.unwrap()).collect();
        let (ours, _) = batch("sidecheck_trace_00000000").into_bytes();
        let ours: Vec<_> = crate::netfilter::netlink::messages(&ours).into_iter().map(|m| m.unwrap()).collect();
        assert_eq!(ours.len(), nft.len(), "begin, table, two chains, two rules, end");
        for (i, (a, b)) in ours.iter().zip(&nft).enumerate() {
            // The same requests; ours also ask for an answer each (NLM_F_ACK).
            assert_eq!(
                (a.ty, a.flags & !NLM_F_ACK, a.seq, a.family, a.res_id),
                (b.ty, b.flags, b.seq, b.family, b.res_id),
                "message {i}"
            );
            assert_eq!(a.attrs, b.attrs, "message {i}'s attributes differ from nft's");
        }
    }
}

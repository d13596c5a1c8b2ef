//! nf_tables messages: trace events, and the rule and chain dumps that say
//! which position a traced rule handle has and which hook a chain is on.
//! Numbers from the kernel's uapi headers (linux/netfilter/nf_tables.h,
//! linux/netfilter.h).

use super::{attr_be32, attr_be64, attr_str, attrs, find, msg_type, request, Malformed, Msg};
use super::{NFNL_SUBSYS_NFTABLES, NFPROTO_UNSPEC, NLM_F_DUMP, NLM_F_REQUEST};

// enum nf_tables_msg_types
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_TRACE: u16 = 17;

// enum nft_table_attributes
pub const NFTA_TABLE_NAME: u16 = 1;

// enum nft_rule_attributes
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_HANDLE: u16 = 3;

// enum nft_chain_attributes, enum nft_hook_attributes
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;

// enum nft_trace_attributes
pub const NFTA_TRACE_TABLE: u16 = 1;
pub const NFTA_TRACE_CHAIN: u16 = 2;
pub const NFTA_TRACE_RULE_HANDLE: u16 = 3;
pub const NFTA_TRACE_TYPE: u16 = 4;
pub const NFTA_TRACE_VERDICT: u16 = 5;
pub const NFTA_TRACE_ID: u16 = 6;
pub const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
pub const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;

// enum nft_trace_types
pub const NFT_TRACETYPE_POLICY: u32 = 1;
pub const NFT_TRACETYPE_RETURN: u32 = 2;
pub const NFT_TRACETYPE_RULE: u32 = 3;

// enum nft_verdict_attributes
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;

// Verdict codes: netfilter's own (NF_DROP, NF_ACCEPT) and enum nft_verdicts,
// which share one number space.
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_BREAK: i32 = -2;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

// enum nf_inet_hooks
pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_LOCAL_IN: u32 = 1;
pub const NF_INET_FORWARD: u32 = 2;
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_INET_POST_ROUTING: u32 = 4;

/// A hook by the name x_tables gives its base chain (`OUTPUT`).
pub fn hook_name(hooknum: u32) -> Option<&'static str> {
    match hooknum {
        NF_INET_PRE_ROUTING => Some("PREROUTING"),
        NF_INET_LOCAL_IN => Some("INPUT"),
        NF_INET_FORWARD => Some("FORWARD"),
        NF_INET_LOCAL_OUT => Some("OUTPUT"),
        NF_INET_POST_ROUTING => Some("POSTROUTING"),
        _ => None,
    }
}

/// A request to dump every object of one kind (`NFT_MSG_GETRULE`, ...) of
/// every family.
pub fn dump_request(get: u16, seq: u32) -> Vec<u8> {
    dump_request_of(get, seq, NFPROTO_UNSPEC)
}

/// The same, of one family's tables only (NFPROTO_*).
pub fn dump_request_of(get: u16, seq: u32, family: u8) -> Vec<u8> {
    request(NFTABLES, get, NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0, &[])
}

const NFTABLES: u16 = NFNL_SUBSYS_NFTABLES;

/// One rule of a rule dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
}

/// The rule in a dump's message: None for another message, or a rule
/// without its table, chain or handle; an error for malformed attributes.
pub fn rule(msg: &Msg<'_>) -> Result<Option<Rule>, Malformed> {
    if msg.ty != msg_type(NFTABLES, NFT_MSG_NEWRULE) {
        return Ok(None);
    }
    let (mut table, mut chain, mut handle) = (None, None, None);
    for (ty, p) in attrs(msg.attrs)? {
        match ty {
            NFTA_RULE_TABLE => table = Some(attr_str(p)),
            NFTA_RULE_CHAIN => chain = Some(attr_str(p)),
            NFTA_RULE_HANDLE => handle = attr_be64(p),
            _ => {}
        }
    }
    Ok(match (table, chain, handle) {
        (Some(table), Some(chain), Some(handle)) => Some(Rule { family: msg.family, table, chain, handle }),
        _ => None,
    })
}

/// One base chain of a chain dump, with its hook's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub hook: &'static str,
}

/// The base chain in a dump's message: None for another message, a user
/// chain (no hook) or a hook other than the five inet ones; an error for
/// malformed attributes.
pub fn base_chain(msg: &Msg<'_>) -> Result<Option<BaseChain>, Malformed> {
    if msg.ty != msg_type(NFTABLES, NFT_MSG_NEWCHAIN) {
        return Ok(None);
    }
    let (mut table, mut chain, mut hook) = (None, None, None);
    for (ty, p) in attrs(msg.attrs)? {
        match ty {
            NFTA_CHAIN_TABLE => table = Some(attr_str(p)),
            NFTA_CHAIN_NAME => chain = Some(attr_str(p)),
            NFTA_CHAIN_HOOK => hook = attrs(p).ok().and_then(|h| find(&h, NFTA_HOOK_HOOKNUM).and_then(attr_be32)),
            _ => {}
        }
    }
    let Some(hook) = hook.and_then(hook_name) else { return Ok(None) };
    Ok(match (table, chain) {
        (Some(table), Some(chain)) => Some(BaseChain { family: msg.family, table, chain, hook }),
        _ => None,
    })
}

/// A chain's table and policy (NF_ACCEPT, NF_DROP; base chains only
/// have one): None for another message or a chain without a policy; an
/// error for malformed attributes.
pub fn chain_policy(msg: &Msg<'_>) -> Result<Option<(String, i32)>, Malformed> {
    if msg.ty != msg_type(NFTABLES, NFT_MSG_NEWCHAIN) {
        return Ok(None);
    }
    let a = attrs(msg.attrs)?;
    let table = find(&a, NFTA_CHAIN_TABLE).map(attr_str);
    let policy = find(&a, NFTA_CHAIN_POLICY).and_then(attr_be32);
    Ok(table.zip(policy.map(|p| p as i32)))
}

/// Whether a message is an nf_tables trace event.
pub fn is_trace(msg: &Msg<'_>) -> bool {
    msg.ty == msg_type(NFTABLES, NFT_MSG_TRACE)
}

/// The attributes of one trace event, decoded. Only the first event of a
/// packet in a chain call carries its headers; the others share its `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace<'a> {
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    /// NFT_TRACETYPE_*.
    pub kind: Option<u32>,
    /// `jump X`, `accept`, ... (see [`verdict`]).
    pub verdict: Option<String>,
    pub id: Option<u32>,
    pub network: Option<&'a [u8]>,
    pub transport: Option<&'a [u8]>,
}

/// Decode a trace event's attributes (the message type is the caller's to
/// check): None when they are malformed or name no table or chain.
pub fn trace<'a>(msg: &Msg<'a>) -> Option<Trace<'a>> {
    let (mut table, mut chain, mut handle, mut kind, mut id) = (None, None, None, None, None);
    let (mut network, mut transport, mut verdict_) = (None, None, None);
    for (t, p) in attrs(msg.attrs).ok()? {
        match t {
            NFTA_TRACE_TABLE => table = Some(attr_str(p)),
            NFTA_TRACE_CHAIN => chain = Some(attr_str(p)),
            NFTA_TRACE_RULE_HANDLE => handle = attr_be64(p),
            NFTA_TRACE_TYPE => kind = attr_be32(p),
            NFTA_TRACE_VERDICT => verdict_ = verdict(p),
            NFTA_TRACE_ID => id = attr_be32(p),
            NFTA_TRACE_NETWORK_HEADER => network = Some(p),
            NFTA_TRACE_TRANSPORT_HEADER => transport = Some(p),
            _ => {}
        }
    }
    Some(Trace { table: table?, chain: chain?, handle, kind, verdict: verdict_, id, network, transport })
}

/// A nested verdict (NFTA_TRACE_VERDICT) in nft's words.
pub fn verdict(nested: &[u8]) -> Option<String> {
    let attrs = attrs(nested).ok()?;
    let code = find(&attrs, NFTA_VERDICT_CODE).and_then(attr_be32)? as i32;
    let target = find(&attrs, NFTA_VERDICT_CHAIN).map(attr_str);
    Some(match (code, target) {
        (NF_DROP, _) => "drop".into(),
        (NF_ACCEPT, _) => "accept".into(),
        (NFT_CONTINUE, _) => "continue".into(),
        (NFT_BREAK, _) => "break".into(),
        (NFT_JUMP, Some(c)) => format!("jump {c}"),
        (NFT_GOTO, Some(c)) => format!("goto {c}"),
        (NFT_RETURN, _) => "return".into(),
        (c, _) => format!("verdict {c}"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{messages, NFPROTO_INET, NFPROTO_IPV4};
    use super::*;

    fn one(req: &[u8]) -> Msg<'_> {
        messages(req).remove(0).unwrap()
    }

    #[test]
    fn a_dumped_rule_is_read_by_its_attribute_names() {
        let handle = 42u64.to_be_bytes();
        // Attribute numbers as the kernel sends them (nf_tables.h), not
        // through the constants under test.
        let attrs: [(u16, &[u8]); 3] = [(1, b"nat\0"), (2, b"ISTIO_OUTPUT\0"), (3, &handle)];
        let req = request(NFTABLES, NFT_MSG_NEWRULE, 0, 1, NFPROTO_IPV4, 0, &attrs);
        let want = Rule { family: NFPROTO_IPV4, table: "nat".into(), chain: "ISTIO_OUTPUT".into(), handle: 42 };
        assert_eq!(rule(&one(&req)), Ok(Some(want)));
        // Another message, or a rule without a handle: nothing.
        let chain = request(NFTABLES, NFT_MSG_NEWCHAIN, 0, 1, NFPROTO_IPV4, 0, &attrs);
        assert_eq!(rule(&one(&chain)), Ok(None));
        let partial = request(NFTABLES, NFT_MSG_NEWRULE, 0, 1, NFPROTO_IPV4, 0, &attrs[..2]);
        assert_eq!(rule(&one(&partial)), Ok(None));
        let mut bad = req.clone();
        bad[20] = 200; // the first attribute's length runs past the end
        assert!(rule(&one(&bad)).is_err());
    }

    #[test]
    fn a_base_chain_is_named_for_its_hook() {
        let hook = request(0, 0, 0, 0, 0, 0, &[(1, &3u32.to_be_bytes())]); // NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT
                                                                           // The nested attributes: what `request` put after its two headers.
        let nested = &hook[20..];
        // (1 NFTA_CHAIN_TABLE, 3 NFTA_CHAIN_NAME, 4 NFTA_CHAIN_HOOK; 2 is the handle.)
        let attrs: [(u16, &[u8]); 4] = [(1, b"t\0"), (2, &[0; 8]), (3, b"out\0"), (4, nested)];
        let req = request(NFTABLES, NFT_MSG_NEWCHAIN, 0, 1, NFPROTO_INET, 0, &attrs);
        let want = BaseChain { family: NFPROTO_INET, table: "t".into(), chain: "out".into(), hook: "OUTPUT" };
        assert_eq!(base_chain(&one(&req)), Ok(Some(want)));
        let user = request(NFTABLES, NFT_MSG_NEWCHAIN, 0, 1, NFPROTO_INET, 0, &attrs[..3]);
        assert_eq!(base_chain(&one(&user)), Ok(None));
        // 5 NFTA_CHAIN_POLICY: a base chain's, NF_DROP (0) here.
        assert_eq!(chain_policy(&one(&user)), Ok(None), "a user chain has no policy");
        let drop: [(u16, &[u8]); 2] = [(1, b"t\0"), (5, &0u32.to_be_bytes())];
        let dropping = request(NFTABLES, NFT_MSG_NEWCHAIN, 0, 1, NFPROTO_INET, 0, &drop);
        assert_eq!(chain_policy(&one(&dropping)), Ok(Some(("t".into(), NF_DROP))));
        assert_eq!(
            (0..=5).map(hook_name).collect::<Vec<_>>(),
            [Some("PREROUTING"), Some("INPUT"), Some("FORWARD"), Some("OUTPUT"), Some("POSTROUTING"), None]
        );
    }

    #[test]
    fn verdicts_in_nft_words() {
        let nested = |code: i32, chain: Option<&[u8]>| {
            let code = code.to_be_bytes();
            // 1 NFTA_VERDICT_CODE, 2 NFTA_VERDICT_CHAIN.
            let mut attrs: Vec<(u16, &[u8])> = vec![(1, &code)];
            attrs.extend(chain.map(|c| (2, c)));
            request(0, 0, 0, 0, 0, 0, &attrs)[20..].to_vec()
        };
        assert_eq!(verdict(&nested(NFT_JUMP, Some(b"ISTIO_OUTPUT\0"))).as_deref(), Some("jump ISTIO_OUTPUT"));
        assert_eq!(verdict(&nested(NFT_GOTO, Some(b"X\0"))).as_deref(), Some("goto X"));
        assert_eq!(verdict(&nested(NF_ACCEPT, None)).as_deref(), Some("accept"));
        assert_eq!(verdict(&nested(NF_DROP, None)).as_deref(), Some("drop"));
        assert_eq!(verdict(&nested(NFT_RETURN, None)).as_deref(), Some("return"));
        assert_eq!(verdict(&nested(NFT_CONTINUE, None)).as_deref(), Some("continue"));
        assert_eq!(verdict(&nested(NFT_JUMP, None)).as_deref(), Some("verdict -3"));
        assert_eq!(verdict(&[1, 0]), None);
    }
}

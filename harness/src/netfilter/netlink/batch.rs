//! Writing to nf_tables without a process: nested attributes, one small
//! typed request per object (a table, a base chain, a rule of
//! expressions), and the batch the kernel commits as one transaction.
//! Only what the harness's own trace table needs; the rules under test are
//! always installed by their own tools.

use std::io;

use super::{message, nftables, Socket, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_REQUEST};

// nf_tables.h / nfnetlink.h numbers, as the kernel's uapi headers give them.
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// nft's registers: NFT_REG_1 (the 16-byte register nft itself uses for
/// values up to 16 bytes).
pub const NFT_REG_1: u32 = 1;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub const NFT_META_NFTRACE: u32 = 12;
pub const NFT_META_L4PROTO: u32 = 16;

/// Attributes, appended in order; nested ones carry NLA_F_NESTED.
#[derive(Default)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn new() -> Attrs {
        Attrs::default()
    }

    pub fn bytes(mut self, ty: u16, payload: &[u8]) -> Attrs {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize((self.0.len() + 3) & !3, 0);
        self
    }

    /// A NUL-terminated string.
    pub fn str(self, ty: u16, s: &str) -> Attrs {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.bytes(ty, &b)
    }

    pub fn be32(self, ty: u16, v: u32) -> Attrs {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn nested(self, ty: u16, inner: Attrs) -> Attrs {
        self.bytes(ty | NLA_F_NESTED, &inner.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One nf_tables expression, as `nft --debug=netlink` prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg DREG`
    Meta { key: u32, dreg: u32 },
    /// `meta set KEY with reg SREG`
    MetaSet { key: u32, sreg: u32 },
    /// `cmp OP reg SREG DATA`
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// `payload load LEN b @ BASE + OFFSET => reg DREG`
    Payload { dreg: u32, base: u32, offset: u32, len: u32 },
    /// `bitwise reg DREG = (reg SREG & MASK) ^ XOR`
    Bitwise { sreg: u32, dreg: u32, mask: Vec<u8>, xor: Vec<u8> },
    /// `immediate reg DREG DATA`
    Immediate { dreg: u32, data: Vec<u8> },
}

impl Expr {
    fn encode(&self) -> Attrs {
        let data = |v: &[u8]| Attrs::new().bytes(NFTA_DATA_VALUE, v);
        // Attribute numbers of each expression's enum in nf_tables.h.
        let (name, body) = match self {
            Expr::Meta { key, dreg } => ("meta", Attrs::new().be32(2, *key).be32(1, *dreg)),
            Expr::MetaSet { key, sreg } => ("meta", Attrs::new().be32(2, *key).be32(3, *sreg)),
            Expr::Cmp { sreg, op, data: d } => ("cmp", Attrs::new().be32(1, *sreg).be32(2, *op).nested(3, data(d))),
            Expr::Payload { dreg, base, offset, len } => {
                ("payload", Attrs::new().be32(1, *dreg).be32(2, *base).be32(3, *offset).be32(4, *len))
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => (
                "bitwise",
                // 6 NFTA_BITWISE_OP: NFT_BITWISE_BOOL (mask and xor), 0.
                Attrs::new()
                    .be32(1, *sreg)
                    .be32(2, *dreg)
                    .be32(6, 0)
                    .be32(3, mask.len() as u32)
                    .nested(4, data(mask))
                    .nested(5, data(xor)),
            ),
            Expr::Immediate { dreg, data: d } => {
                // 2 NFTA_IMMEDIATE_DATA holds an nft_data: a value.
                ("immediate", Attrs::new().be32(1, *dreg).nested(2, data(d)))
            }
        };
        Attrs::new().str(NFTA_EXPR_NAME, name).nested(NFTA_EXPR_DATA, body)
    }
}

/// A base chain: its hook (NF_INET_*), priority and policy (NF_ACCEPT, ...).
pub struct BaseChain<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub hook: u32,
    pub priority: i32,
    pub policy: i32,
}

/// The requests of one transaction, numbered from 1.
pub struct Batch {
    family: u8,
    messages: Vec<u8>,
    seq: u32,
}

impl Batch {
    /// A transaction on tables of `family` (NFPROTO_*).
    pub fn new(family: u8) -> Batch {
        let mut b = Batch { family, messages: Vec::new(), seq: 0 };
        // The batch's own messages name the subsystem in res_id.
        b.messages.extend(message(0, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, 0, NFNL_SUBSYS_NFTABLES, &[]));
        b
    }

    fn push(&mut self, msg: u16, flags: u16, attrs: Attrs) {
        self.seq += 1;
        let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        self.messages.extend(message(NFNL_SUBSYS_NFTABLES, msg, flags, self.seq, self.family, 0, attrs.as_bytes()));
    }

    /// `add table` (no error when it exists, as nft -f).
    pub fn table(mut self, name: &str) -> Batch {
        self.push(
            nftables::NFT_MSG_NEWTABLE,
            0,
            Attrs::new().str(nftables::NFTA_TABLE_NAME, name).be32(NFTA_TABLE_FLAGS, 0),
        );
        self
    }

    pub fn base_chain(mut self, table: &str, c: &BaseChain<'_>) -> Batch {
        let hook = Attrs::new().be32(nftables::NFTA_HOOK_HOOKNUM, c.hook).be32(NFTA_HOOK_PRIORITY, c.priority as u32);
        let attrs = Attrs::new()
            .str(nftables::NFTA_CHAIN_TABLE, table)
            .str(nftables::NFTA_CHAIN_NAME, c.name)
            .str(NFTA_CHAIN_TYPE, c.kind)
            .be32(NFTA_CHAIN_POLICY, c.policy as u32)
            .nested(nftables::NFTA_CHAIN_HOOK, hook);
        self.push(nftables::NFT_MSG_NEWCHAIN, NLM_F_CREATE, attrs);
        self
    }

    /// A rule appended to `chain`.
    pub fn rule(mut self, table: &str, chain: &str, exprs: &[Expr]) -> Batch {
        let list = exprs.iter().fold(Attrs::new(), |l, e| l.nested(NFTA_LIST_ELEM, e.encode()));
        let attrs = Attrs::new()
            .str(nftables::NFTA_RULE_TABLE, table)
            .str(nftables::NFTA_RULE_CHAIN, chain)
            .nested(NFTA_RULE_EXPRESSIONS, list);
        self.push(nftables::NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, attrs);
        self
    }

    /// The whole batch as sent: BEGIN, the requests, END.
    pub fn into_bytes(mut self) -> (Vec<u8>, u32) {
        let end = message(0, NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.seq + 1, 0, NFNL_SUBSYS_NFTABLES, &[]);
        self.messages.extend(end);
        (self.messages, self.seq)
    }

    /// Send the batch on `sock` and wait for every request's answer: the
    /// kernel commits all of it or none, and says which request failed.
    pub fn commit(self, sock: &Socket) -> io::Result<()> {
        let (bytes, last) = self.into_bytes();
        sock.send(&bytes)?;
        let mut answered = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while answered < last {
            let n = sock.recv(&mut buf)?;
            for msg in super::messages(&buf[..n]) {
                let msg = msg.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                match msg.error {
                    Some(0) if (1..=last).contains(&msg.seq) => answered += 1,
                    Some(errno) if errno != 0 => {
                        return Err(io::Error::new(
                            io::Error::from_raw_os_error(errno).kind(),
                            format!("request {} of {last} refused: {}", msg.seq, io::Error::from_raw_os_error(errno)),
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{attrs, messages, NFPROTO_INET};
    use super::*;

    #[test]
    fn a_batch_is_framed_and_numbered_as_nfnetlink_reads_it() {
        let chain = BaseChain { name: "output", kind: "filter", hook: 3, priority: -400, policy: 1 };
        let rule = [Expr::Immediate { dreg: NFT_REG_1, data: vec![1] }];
        let (bytes, last) =
            Batch::new(NFPROTO_INET).table("t").base_chain("t", &chain).rule("t", "output", &rule).into_bytes();
        assert_eq!(last, 3);
        let msgs: Vec<_> = messages(&bytes).into_iter().map(Result::unwrap).collect();
        // Numbers as nfnetlink.h and nf_tables.h give them, not the
        // constants under test: BATCH_BEGIN 0x10 and BATCH_END 0x11 naming
        // subsystem 10 in res_id; NEWTABLE 0xa00, NEWCHAIN 0xa03, NEWRULE
        // 0xa06; REQUEST 1, ACK 4, CREATE 0x400, APPEND 0x800.
        let seen: Vec<_> = msgs.iter().map(|m| (m.ty, m.flags, m.seq, m.family, m.res_id)).collect();
        assert_eq!(
            seen,
            [
                (0x10, 1, 0, 0, 10),
                (0xa00, 5, 1, 1, 0),
                (0xa03, 0x405, 2, 1, 0),
                (0xa06, 0xc05, 3, 1, 0),
                (0x11, 1, 4, 0, 10)
            ]
        );
        let a = attrs(msgs[2].attrs).unwrap();
        // 1 table, 3 name, 7 type, 5 policy (NF_ACCEPT), 4 hook {1 hooknum, 2 priority}.
        assert_eq!(a.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 3, 7, 5, 4]);
        assert_eq!((a[0].1, a[2].1, a[3].1), (&b"t\0"[..], &b"filter\0"[..], &1u32.to_be_bytes()[..]));
        let hook = attrs(a[4].1).unwrap();
        assert_eq!(hook, vec![(1, &3u32.to_be_bytes()[..]), (2, &(-400i32).to_be_bytes()[..])]);
        // Nested attributes carry NLA_F_NESTED (0x8000) on the wire.
        let raw = msgs[2].attrs;
        let hook_at = raw.len() - 20;
        assert_eq!(u16::from_ne_bytes([raw[hook_at + 2], raw[hook_at + 3]]), 0x8004);
    }
}

//! nfnetlink_log (NFLOG): how iptables-legacy's `TRACE` target reaches
//! userspace. Numbers from the kernel's uapi header
//! linux/netfilter/nfnetlink_log.h.

use super::{attr_str, attrs, find, messages, msg_type, request, Socket};
use super::{NFNL_SUBSYS_ULOG, NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_UNSPEC, NLM_F_ACK, NLM_F_REQUEST};

// enum nfulnl_msg_types
pub const NFULNL_MSG_PACKET: u16 = 0;
pub const NFULNL_MSG_CONFIG: u16 = 1;

// enum nfulnl_attr_type
pub const NFULA_PAYLOAD: u16 = 9;
pub const NFULA_PREFIX: u16 = 10;

// enum nfulnl_attr_config, enum nfulnl_msg_config_cmds
pub const NFULA_CFG_CMD: u16 = 1;
pub const NFULA_CFG_MODE: u16 = 2;
pub const NFULNL_CFG_CMD_BIND: u8 = 1;
pub const NFULNL_CFG_CMD_PF_BIND: u8 = 3;
pub const NFULNL_CFG_CMD_PF_UNBIND: u8 = 4;
pub const NFULNL_COPY_PACKET: u8 = 2;

/// The log group the tracer binds: x_tables' TRACE logs to group 0.
const GROUP: u16 = 0;

/// The prefix (`TRACE: nat:OUTPUT:rule:1 `) and payload (the packet from
/// its IP header) of each logged packet in one datagram; other messages,
/// malformed ones and packets without both attributes are skipped.
pub fn packets(buf: &[u8]) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    for msg in messages(buf).into_iter().flatten() {
        if msg.ty != msg_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET) {
            continue;
        }
        let Ok(attrs) = attrs(msg.attrs) else { continue };
        let prefix = find(&attrs, NFULA_PREFIX).map(attr_str);
        let payload = find(&attrs, NFULA_PAYLOAD);
        if let (Some(prefix), Some(payload)) = (prefix, payload) {
            out.push((prefix, payload));
        }
    }
    out
}

/// The configuration requests, in order, that make a socket the logger of
/// group 0 for IPv4 and IPv6, copying the first `copy_range` bytes of each
/// packet: rebind both families to nfnetlink_log (PF_UNBIND, PF_BIND),
/// bind the group, set the copy mode. Sequence numbers are 1, 2, ...
pub fn bind_requests(copy_range: u32) -> Vec<Vec<u8>> {
    // struct nfulnl_msg_config_mode: __be32 copy_range, __u8 copy_mode, __u8 pad.
    let mut mode = copy_range.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    let steps: [(u8, u16, &[u8]); 6] = [
        (NFPROTO_IPV4, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_PF_UNBIND]),
        (NFPROTO_IPV4, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_PF_BIND]),
        (NFPROTO_IPV6, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_PF_UNBIND]),
        (NFPROTO_IPV6, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_PF_BIND]),
        (NFPROTO_UNSPEC, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]),
        (NFPROTO_UNSPEC, NFULA_CFG_MODE, &mode),
    ];
    steps
        .into_iter()
        .enumerate()
        .map(|(seq, (family, attr, value))| {
            let flags = NLM_F_REQUEST | NLM_F_ACK;
            request(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, flags, seq as u32 + 1, family, GROUP, &[(attr, value)])
        })
        .collect()
}

/// Send [`bind_requests`] on `sock`, each waiting for its ack.
pub fn bind(sock: &Socket, copy_range: u32) -> std::io::Result<()> {
    for (seq, req) in bind_requests(copy_range).iter().enumerate() {
        sock.transact(req, seq as u32 + 1, |_| {})?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bind_requests_are_what_the_kernel_expects() {
        let reqs = bind_requests(256);
        assert_eq!(reqs.len(), 6);
        // (sequence number, family, attributes) of each.
        type Request = (u32, u8, Vec<(u16, Vec<u8>)>);
        let got: Vec<Request> = reqs
            .iter()
            .map(|r| {
                let m = messages(r).remove(0).unwrap();
                assert_eq!(m.ty, msg_type(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG));
                assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
                let a = attrs(m.attrs).unwrap().into_iter().map(|(t, p)| (t, p.to_vec())).collect();
                (m.seq, m.family, a)
            })
            .collect();
        // (The numbers the tracer sent before they had names.)
        assert_eq!(
            got,
            vec![
                (1, 2, vec![(1, vec![4])]),
                (2, 2, vec![(1, vec![3])]),
                (3, 10, vec![(1, vec![4])]),
                (4, 10, vec![(1, vec![3])]),
                (5, 0, vec![(1, vec![1])]),
                (6, 0, vec![(2, vec![0, 0, 1, 0, 2, 0])]),
            ]
        );
    }

    #[test]
    fn packets_need_a_prefix_and_a_payload() {
        let prefix = b"TRACE: nat:OUTPUT:rule:1 \0";
        let both = request(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET, 0, 0, 2, 0, &[(10, prefix), (9, &[0x45, 0])]);
        assert_eq!(packets(&both), vec![("TRACE: nat:OUTPUT:rule:1 ".to_string(), &[0x45u8, 0][..])]);
        let no_payload = request(NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET, 0, 0, 2, 0, &[(10, prefix)]);
        assert!(packets(&no_payload).is_empty());
        let config = request(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, 0, 0, 2, 0, &[(10, prefix), (9, &[0x45])]);
        assert!(packets(&config).is_empty());
        for cut in 0..both.len() {
            let _ = packets(&both[..cut]);
        }
    }
}

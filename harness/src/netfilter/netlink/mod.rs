//! Just enough of netfilter's netlink protocol for what the tracer needs:
//! nf_tables trace events (NFNLGRP_NFTRACE), nf_tables rule dumps (handle ->
//! position), NFLOG packets (iptables-legacy's `TRACE:` lines), and the
//! batch that writes the tracer's own table. Parsing is pure and bounded: a
//! malformed message is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub mod batch;
pub mod nflog;
pub mod nftables;
mod socket;

pub use socket::Socket;

// Values from the kernel's uapi headers: linux/netlink.h,
// linux/netfilter/nfnetlink.h, linux/netfilter.h.

/// Multicast group of nf_tables trace events (enum nfnetlink_groups).
pub const NFNLGRP_NFTRACE: u32 = 9;

const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// Types below this are netlink's own control messages (NLMSG_MIN_TYPE).
const NLMSG_MIN_TYPE: u16 = 16;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
/// NLM_F_ROOT | NLM_F_MATCH.
pub const NLM_F_DUMP: u16 = 0x300;

/// nfnetlink subsystems: the high byte of a message type.
pub const NFNL_SUBSYS_ULOG: u16 = 4;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;

/// Netfilter protocol families (nfgenmsg.nfgen_family).
pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_ARP: u8 = 3;
pub const NFPROTO_NETDEV: u8 = 5;
pub const NFPROTO_BRIDGE: u8 = 7;
pub const NFPROTO_IPV6: u8 = 10;

/// Bytes of struct nlmsghdr, of struct nlattr's header, of struct nfgenmsg.
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NFGENMSG_LEN: usize = 4;

const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message with its nfgenmsg header split off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// nfgenmsg: the address family (the table's, for nf_tables).
    pub family: u8,
    pub res_id: u16,
    /// The attributes after the nfgenmsg header.
    pub attrs: &'a [u8],
    /// For NLMSG_ERROR: the errno (0 = ack).
    pub error: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed netlink message: {}", self.0)
    }
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Split a datagram into messages.
pub fn messages(buf: &[u8]) -> Vec<Result<Msg<'_>, Malformed>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_ne(&rest[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            out.push(Err(Malformed(format!("length {len} with {} bytes left", rest.len()))));
            break;
        }
        let ty = u16_ne(&rest[4..6]);
        let flags = u16_ne(&rest[6..8]);
        let seq = u32_ne(&rest[8..12]);
        let body = &rest[NLMSG_HDRLEN..len];
        let msg = if ty == NLMSG_ERROR {
            if body.len() < 4 {
                Err(Malformed("short error message".into()))
            } else {
                // The kernel sends -errno; a hostile or garbled i32::MIN must
                // not overflow (found by fuzzing).
                let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]).wrapping_neg();
                Ok(Msg { ty, flags, seq, family: 0, res_id: 0, attrs: &[], error: Some(errno) })
            }
        } else if ty == NLMSG_DONE || ty < NLMSG_MIN_TYPE {
            Ok(Msg { ty, flags, seq, family: 0, res_id: 0, attrs: &[], error: None })
        } else if body.len() < NFGENMSG_LEN {
            Err(Malformed(format!("message type {ty:#x} has no nfgenmsg header")))
        } else {
            let res_id = u16::from_be_bytes([body[2], body[3]]);
            Ok(Msg { ty, flags, seq, family: body[0], res_id, attrs: &body[NFGENMSG_LEN..], error: None })
        };
        out.push(msg);
        rest = &rest[align4(len).min(rest.len())..];
    }
    out
}

/// Iterate `(type, payload)` of the attributes in `buf` (type without the
/// nested/byte-order flag bits).
pub fn attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, Malformed> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLA_HDRLEN {
        let len = u16_ne(&rest[0..2]) as usize;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(Malformed(format!("attribute length {len} with {} bytes left", rest.len())));
        }
        out.push((u16_ne(&rest[2..4]) & NLA_TYPE_MASK, &rest[NLA_HDRLEN..len]));
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(out)
}

pub fn attr_str(payload: &[u8]) -> String {
    let end = payload.iter().position(|b| *b == 0).unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

pub fn attr_be32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

pub fn attr_be64(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// The nlmsghdr type of message `msg` of nfnetlink subsystem `subsys`.
pub fn msg_type(subsys: u16, msg: u16) -> u16 {
    (subsys << 8) | msg
}

/// The payload of the first attribute of type `ty`.
pub fn find<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
}

/// Build one request: nlmsghdr + nfgenmsg + attributes.
pub fn request(
    subsys: u16,
    msg: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attributes: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (ty, payload) in attributes {
        let len = NLA_HDRLEN + payload.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&ty.to_ne_bytes());
        body.extend_from_slice(payload);
        body.resize(align4(body.len()), 0);
    }
    message(subsys, msg, flags, seq, family, res_id, &body)
}

/// One message: nlmsghdr + nfgenmsg + `attrs` (already encoded, aligned).
pub fn message(subsys: u16, msg: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&msg_type(subsys, msg).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, NFNETLINK_V0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out
}

/// Source and destination (address and port) of an IPv4/IPv6 packet whose
/// transport header is TCP or UDP: from one buffer starting at the IP header
/// (NFLOG payloads), or from separate network and transport headers
/// (nf_tables trace attributes).
pub fn packet_tuple(network: &[u8], transport: Option<&[u8]>) -> Option<(SocketAddr, SocketAddr)> {
    let version = network.first()? >> 4;
    let (src, dst, header_len): (IpAddr, IpAddr, usize) = match version {
        4 => {
            let ihl = usize::from(network[0] & 0x0f) * 4;
            let s: [u8; 4] = network.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = network.get(16..20)?.try_into().ok()?;
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into(), ihl)
        }
        6 => {
            let s: [u8; 16] = network.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = network.get(24..40)?.try_into().ok()?;
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into(), 40)
        }
        _ => return None,
    };
    let l4 = match transport {
        Some(t) => t,
        None => network.get(header_len..)?,
    };
    let sport = u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?);
    let dport = u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?);
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

/// The TCP sequence number of a packet (same layout rules as [`packet_tuple`]):
/// for a SYN, the connection's random initial sequence number, which NAT
/// leaves alone.
pub fn tcp_seq(network: &[u8], transport: Option<&[u8]>) -> Option<u32> {
    let l4 = match transport {
        Some(t) => t,
        None => {
            let len = match network.first()? >> 4 {
                4 => usize::from(network[0] & 0x0f) * 4,
                6 => 40,
                _ => return None,
            };
            network.get(len..)?
        }
    };
    Some(u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_parser() {
        let req =
            request(NFNL_SUBSYS_ULOG, nflog::NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 7, 2, 0, &[(1, &[3u8][..])]);
        assert_eq!(req.len(), 16 + 4 + 8);
        let msgs = messages(&req);
        assert_eq!(msgs.len(), 1);
        let m = msgs[0].clone().unwrap();
        assert_eq!(m.ty, (NFNL_SUBSYS_ULOG << 8) | nflog::NFULNL_MSG_CONFIG);
        assert_eq!((m.seq, m.family, m.res_id), (7, 2, 0));
        assert_eq!(attrs(m.attrs).unwrap(), vec![(1, &[3u8][..])]);
    }

    #[test]
    fn truncated_and_lying_lengths_are_errors_not_panics() {
        let req = request(NFNL_SUBSYS_NFTABLES, nftables::NFT_MSG_GETRULE, NLM_F_REQUEST, 1, 0, 0, &[(1, b"nat\0")]);
        for cut in 0..req.len() {
            let _ = messages(&req[..cut]);
        }
        let mut lying = req.clone();
        lying[0] = 200;
        assert!(messages(&lying)[0].is_err());
        assert!(attrs(&[8, 0, 1, 0, 1]).is_err());
        assert!(attrs(&[2, 0, 1, 0]).is_err());
        assert_eq!(attrs(&[]).unwrap(), vec![]);
    }

    #[test]
    fn an_error_message_with_errno_i32_min_does_not_overflow() {
        // fuzz/artifacts crash-1e8a46d4: an NLMSG_ERROR whose errno is i32::MIN.
        let crash = [
            0x16, 0, 0, 0, 0x02, 0, 0, 0xb0, 0, 0x04, 0, 0x15, 0x7e, 0, 0xf5, 0x27, 0, 0, 0, 0x80, 0x11, 0, 0x11, 0x4f,
        ];
        let msgs = messages(&crash);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].as_ref().unwrap().error, Some(i32::MIN));
    }

    #[test]
    fn tuples_from_ipv4_and_ipv6_headers() {
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 244, 0, 10, 10, 244, 0, 20];
        v4.extend_from_slice(&[0x9c, 0x40, 0x23, 0x82]);
        let (s, d) = packet_tuple(&v4, None).unwrap();
        assert_eq!(s, "10.244.0.10:40000".parse().unwrap());
        assert_eq!(d, "10.244.0.20:9090".parse().unwrap());
        let (s2, d2) = packet_tuple(&v4[..20], Some(&v4[20..])).unwrap();
        assert_eq!((s2, d2), (s, d));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        v6.extend_from_slice(&"fd00::10".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80, 0x3a, 0x99]);
        let (s, d) = packet_tuple(&v6, None).unwrap();
        assert_eq!(s, "[fd00::10]:80".parse().unwrap());
        assert_eq!(d, "[::1]:15001".parse().unwrap());
        assert!(packet_tuple(&v4[..15], None).is_none());
        assert!(packet_tuple(&[0x15; 30], None).is_none());
    }
}

//! Trace events: what nf_tables (NFNLGRP_NFTRACE) and nfnetlink_log
//! (iptables-legacy's `TRACE:` lines) report for each traced packet, decoded
//! from the netlink module's messages into one event type.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::netfilter::netlink::{self as nl, nflog, nftables};

/// How an event ended its rule or chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "number")]
pub enum Step {
    /// A rule matched: its 1-based position in the chain (0: not found in
    /// the rule dump, shown as `?`).
    Rule(u32),
    /// The end of a user chain was reached: implicit return.
    Return,
    /// The end of a base chain: its policy applied.
    Policy,
}

/// One rule or chain decision for one packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// NFPROTO of the table: 2 ip, 10 ip6, 1 inet.
    #[serde(skip)]
    pub nfproto: u8,
    pub table: String,
    pub chain: String,
    pub step: Step,
    /// `jump ISTIO_OUTPUT`, `accept`, `return`... (nf_tables only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip)]
    pub src: SocketAddr,
    #[serde(skip)]
    pub dst: SocketAddr,
    /// TCP sequence number of the SYN: identifies the connection across NAT.
    #[serde(skip)]
    pub isn: u32,
}

/// Read `TRACE: nat:ISTIO_OUTPUT:rule:9 ` (iptables-legacy's NFLOG prefix).
pub fn parse_legacy_prefix(prefix: &str) -> Option<(String, String, Step)> {
    let body = prefix.trim().strip_prefix("TRACE:")?.trim();
    let mut parts = body.split(':');
    let (table, chain, kind, num) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let step = match kind {
        "rule" => Step::Rule(num.trim().parse().ok()?),
        "return" => Step::Return,
        "policy" => Step::Policy,
        _ => return None,
    };
    Some((table.to_string(), chain.to_string(), step))
}

/// Addresses and SYN sequence number of a traced packet.
pub type Packet = (SocketAddr, SocketAddr, u32);

/// One nf_tables trace message -> event. `position` maps a rule handle to
/// its number in the chain.
pub fn parse_nft_trace(
    msg: &nl::Msg<'_>,
    ids: &mut HashMap<u32, Packet>,
    position: impl Fn(&str, &str, u64) -> Option<u32>,
) -> Option<TraceEvent> {
    let t = nftables::trace(msg)?;
    let (network, transport, id) = (t.network, t.transport, t.id);
    let packet = match network.and_then(|n| Some((nl::packet_tuple(n, transport)?, nl::tcp_seq(n, transport)?))) {
        Some(((src, dst), isn)) => {
            if let Some(id) = id {
                ids.insert(id, (src, dst, isn));
            }
            (src, dst, isn)
        }
        None => *ids.get(&id?)?,
    };
    let (table, chain, verdict) = (t.table, t.chain, t.verdict);
    let step = match t.kind? {
        nftables::NFT_TRACETYPE_POLICY => Step::Policy,
        nftables::NFT_TRACETYPE_RETURN => Step::Return,
        // A rule whose verdict is `continue` decided nothing; the kernel also
        // reports one (handle 0) when a chain resumes after a return.
        nftables::NFT_TRACETYPE_RULE if verdict.as_deref() == Some("continue") => return None,
        nftables::NFT_TRACETYPE_RULE => Step::Rule(t.handle.and_then(|h| position(&table, &chain, h)).unwrap_or(0)),
        _ => return None,
    };
    Some(TraceEvent { nfproto: msg.family, table, chain, step, verdict, src: packet.0, dst: packet.1, isn: packet.2 })
}

/// Trace events in one NFLOG datagram (iptables-legacy `TRACE:` lines).
pub fn parse_nflog_datagram(buf: &[u8]) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    parse_nflog(buf, &mut events);
    events
}

/// Append the trace events of one NFLOG datagram to `out`.
pub(super) fn parse_nflog(buf: &[u8], out: &mut Vec<TraceEvent>) {
    for (prefix, payload) in nflog::packets(buf) {
        let Some((table, chain, step)) = parse_legacy_prefix(&prefix) else { continue };
        let (Some((src, dst)), Some(isn)) = (nl::packet_tuple(payload, None), nl::tcp_seq(payload, None)) else {
            continue;
        };
        let nfproto = if src.is_ipv4() { nl::NFPROTO_IPV4 } else { nl::NFPROTO_IPV6 };
        out.push(TraceEvent { nfproto, table, chain, step, verdict: None, src, dst, isn });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_prefixes() {
        assert_eq!(
            parse_legacy_prefix("TRACE: nat:ISTIO_OUTPUT:rule:9 "),
            Some(("nat".into(), "ISTIO_OUTPUT".into(), Step::Rule(9)))
        );
        assert_eq!(
            parse_legacy_prefix("TRACE: nat:POSTROUTING:policy:1 "),
            Some(("nat".into(), "POSTROUTING".into(), Step::Policy))
        );
        assert_eq!(
            parse_legacy_prefix("TRACE: nat:ISTIO_INBOUND:return:6 "),
            Some(("nat".into(), "ISTIO_INBOUND".into(), Step::Return))
        );
        assert_eq!(parse_legacy_prefix("TRACE: nat:X:rule:nine"), None);
        assert_eq!(parse_legacy_prefix("something else"), None);
    }
}

/// Parsers against bytes the kernel (6.18) sent for a real probe: flow 2's
/// first leg, 10.244.0.10 -> 10.244.0.20:9090, redirected to 15001.
#[cfg(test)]
mod captured {
    use super::*;

    fn datagrams(hex: &str) -> Vec<Vec<u8>> {
        hex.lines()
            .map(|l| (0..l.len()).step_by(2).map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap()).collect())
            .collect()
    }

    #[test]
    fn nf_tables_trace_events() {
        let mut ids = HashMap::new();
        let mut events = Vec::new();
        for d in datagrams(include_str!("../../../testdata/nft-trace-leg1.hex")) {
            for msg in nl::messages(&d) {
                let msg = msg.unwrap();
                assert_eq!(msg.ty, (nl::NFNL_SUBSYS_NFTABLES << 8) | nftables::NFT_MSG_TRACE);
                // Positions by handle, as a rule dump would give them.
                if let Some(e) = parse_nft_trace(&msg, &mut ids, |_, _, h| Some(h as u32 + 100)) {
                    events.push(e);
                }
            }
        }
        let steps: Vec<(String, String, Option<String>)> = events
            .iter()
            // (The tracer's table had this name when the bytes were captured.)
            .filter(|e| e.table != "sidecheck_trace")
            .map(|e| (e.chain.clone(), format!("{:?}", e.step), e.verdict.clone()))
            .collect();
        let first = &steps[..3];
        assert_eq!(first[0].0, "OUTPUT");
        assert_eq!(first[0].2.as_deref(), Some("jump ISTIO_OUTPUT"));
        assert_eq!(first[1].0, "ISTIO_OUTPUT");
        assert_eq!(first[1].2.as_deref(), Some("jump ISTIO_REDIRECT"));
        assert_eq!(first[2].0, "ISTIO_REDIRECT");
        assert_eq!(first[2].2.as_deref(), Some("accept"));
        // Events without headers took the tuple of their trace id.
        let leg: Vec<_> = events.iter().filter(|e| e.dst == "10.244.0.20:9090".parse().unwrap()).collect();
        assert!(leg.len() >= 4, "{events:?}");
        assert!(leg.iter().all(|e| e.src.ip() == "10.244.0.10".parse::<std::net::IpAddr>().unwrap()));
        // Truncating any datagram never panics.
        for d in datagrams(include_str!("../../../testdata/nft-trace-leg1.hex")) {
            for cut in 0..d.len() {
                for msg in nl::messages(&d[..cut]).into_iter().flatten() {
                    let _ = parse_nft_trace(&msg, &mut HashMap::new(), |_, _, _| None);
                }
            }
        }
    }

    #[test]
    fn legacy_nflog_trace_lines() {
        let mut events = Vec::new();
        for d in datagrams(include_str!("../../../testdata/nflog-trace-leg1.hex")) {
            parse_nflog(&d, &mut events);
        }
        let got: Vec<(String, Step)> = events.iter().map(|e| (e.chain.clone(), e.step.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("OUTPUT".to_string(), Step::Rule(1)),
                ("ISTIO_OUTPUT".to_string(), Step::Rule(9)),
                ("ISTIO_REDIRECT".to_string(), Step::Rule(1)),
                ("POSTROUTING".to_string(), Step::Policy),
            ]
        );
        assert!(events.iter().all(|e| e.table == "nat" && e.dst.port() == 9090 || e.dst.port() == 15001));
        for d in datagrams(include_str!("../../../testdata/nflog-trace-leg1.hex")) {
            for cut in 0..d.len() {
                parse_nflog(&d[..cut], &mut Vec::new());
            }
        }
    }
}

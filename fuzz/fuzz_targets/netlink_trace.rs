//! Netlink from the kernel: nf_tables trace events, NFLOG `TRACE:` lines,
//! rule dumps. Malformed input is skipped or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use harness::netfilter::{netlink as nl, trace};

fuzz_target!(|data: &[u8]| {
    let mut ids = std::collections::HashMap::new();
    for msg in nl::messages(data).into_iter().flatten() {
        let _ = nl::attrs(msg.attrs);
        let _ = trace::parse_nft_trace(&msg, &mut ids, |_, _, h| Some(h as u32));
    }
    let _ = trace::parse_nflog_datagram(data);
    let _ = nl::packet_tuple(data, None);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = trace::parse_legacy_prefix(text);
    }
});

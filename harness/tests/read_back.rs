//! Rules as read back are whole: a rule set much larger than a tool's
//! error output (64 KiB) is indexed to its last rule, so the tracer can
//! name every rule a packet meets. Needs root.

use harness::base::net::Family;
use harness::model::topology::TopologyConfig;
use harness::rules::source::{Backend, RuleSource};
use harness::{Session, SessionConfig};

/// A filter chain of `n` rules, one per address and port; its
/// iptables-save listing is about 70 bytes a rule.
fn big_chain(n: usize) -> (String, String) {
    let rule = |i: usize| {
        format!("-A SIDECHECK_BIG -s 10.0.{}.{}/32 -p tcp -m tcp --dport {} -j RETURN", i / 256, i % 256, 1000 + i)
    };
    let mut text = "*filter\n:SIDECHECK_BIG - [0:0]\n".to_string();
    for i in 0..n {
        text.push_str(&rule(i));
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    (text, rule(n - 1))
}

#[test]
fn a_rule_set_over_64_kib_is_read_back_whole() {
    assert!(nix::unistd::geteuid().is_root(), "run as root: sudo cargo test");
    let n = 2000;
    let (text, last) = big_chain(n);
    assert!(text.len() > 2 * 64 * 1024, "{} bytes: too small to test the cap", text.len());
    for backend in [Backend::Nft, Backend::Legacy] {
        let topology = TopologyConfig { families: vec![Family::Ipv4], ..TopologyConfig::default() };
        let session = Session::start(SessionConfig {
            rules: RuleSource::Text {
                label: "big".into(),
                what: "a generated rule set".into(),
                v4: Some(text.clone()),
                v6: None,
            },
            backend,
            topology,
            rule_texts: true,
            ..SessionConfig::default()
        })
        .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        let index = session.tracer().expect("a traced session").index();
        assert_eq!(index.rule_count(2, "filter", "SIDECHECK_BIG"), n, "{backend:?}");
        assert_eq!(index.rule_text(2, "filter", "SIDECHECK_BIG", n as u32), Some(last.as_str()), "{backend:?}");
        if backend == Backend::Nft {
            // nft's own listing (the tracer's view of nf_tables) is whole too.
            let nft = index.snapshot.nft.as_deref().unwrap_or("");
            assert!(nft.contains(&format!("ip saddr 10.0.{}.{} ", (n - 1) / 256, (n - 1) % 256)), "{backend:?}");
        }
    }
}

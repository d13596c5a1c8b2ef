//! Scenario YAML: any input is either a scenario or an error with a
//! location; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = harness::scenario::Scenario::parse("fuzz::x".into(), "x.yaml".into(), text) {
            let _ = s.target(&harness::topology::TopologyConfig::default());
            let _ = s.expected_path("istio-classic");
        }
    }
});

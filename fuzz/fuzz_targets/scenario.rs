//! Scenario YAML: any input is either a scenario or an error with a
//! location; never a panic, under every built-in profile.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = harness::model::scenario::Scenario::parse("fuzz::x".into(), "x.yaml".into(), text) {
            let topo = harness::model::topology::TopologyConfig::default();
            for name in harness::model::profile::Profile::builtin_names() {
                let profile = harness::model::profile::Profile::builtin(name).expect("built-in profiles load");
                for family in harness::base::net::Family::BOTH {
                    let _ = s.case(&profile, &topo, family, "istio-classic");
                }
            }
        }
    }
});

//! The probe protocol: parsing never panics, and whatever parses prints
//! back to a line that parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sidecheck_wire::{read_line, Answer, Probe};

fuzz_target!(|data: &[u8]| {
    let _ = read_line(&mut &data[..]);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = Probe::parse(text) {
        assert_eq!(Probe::parse(&p.to_line()).unwrap(), p);
    }
    if let Ok(a) = Answer::parse(text) {
        let again = Answer::parse(&a.to_line()).unwrap();
        assert_eq!(again.probe, a.probe);
    }
});

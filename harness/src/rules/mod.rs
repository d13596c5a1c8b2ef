//! Rule text and its sources: the built-in Istio generator, the formats the
//! harness reads (Istio's dry-run/golden files), and where the rules come from.

pub mod golden;
pub mod istio;
pub mod source;

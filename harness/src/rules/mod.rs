//! Rule text: formats the harness reads (Istio's dry-run/golden files).

pub mod golden;

//! Foundations every layer may use: bounded reads, timings.

pub mod bounded;
pub mod phases;

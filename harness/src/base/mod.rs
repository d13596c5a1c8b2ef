//! Foundations every layer may use: bounded reads, timings.

pub mod bounded;
pub mod cidr;
pub mod net;
pub mod phases;
pub mod text;
pub mod tool;

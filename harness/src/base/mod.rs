//! Foundations every layer may use: bounded reads, YAML, the directory walk, timings.

pub mod bounded;
pub mod cidr;
pub mod net;
pub mod phases;
pub mod text;
pub mod tool;
pub mod walk;
pub mod yaml;

//! A scenario's expectation made concrete for one profile and family, and
//! the outcome names of the probes that observe no server.

use serde::Serialize;

/// What a trial must observe: the ports passed and the server that answers,
/// resolved through the run's profile ([`super::Scenario::case`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expected {
    pub ports: Vec<u16>,
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Why the run's mesh profile expects something other than the
    /// scenario's default (`expect.profiles.<name>.why`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Outcome names of an INVALID-segment probe (`Protocol::TcpInvalid`).
pub const RESET: &str = "reset";

pub const DROPPED: &str = "dropped";

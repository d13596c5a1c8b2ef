//! How a probe ended, as a value: what the verdict, the reports and diff
//! decide by. Its text (Display, and the JSON string of `observed.end`) is
//! the one reports print; the kind is read once, here, from the probe's
//! observation, so no caller matches on the words.

use std::fmt;

use serde::{Serialize, Serializer};
use sidecheck_wire::End;

use crate::probe::{stage, Observation};

/// Where a probe ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A server answered: `remote-app:9090`.
    Reached { server: String, port: u16 },
    /// The probe came back to a proxy listener it had passed: a loop.
    Loop { role: String, port: u16 },
    /// A stub had no thread or descriptor for the connection and dropped it.
    Overloaded { port: u16, message: String },
    /// A proxy listener took the connection but could not connect onwards.
    NotForwarded { role: String, port: u16, message: String, cause: Cause },
    /// The client's own side failed at `stage` (see [`crate::probe::stage`]).
    ClientFailed { stage: String, detail: String, cause: Cause },
}

/// Why a connection did not get through, as far as its error says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Nothing listened where it was sent (ECONNREFUSED, or a reset).
    Refused,
    /// A clock ran out: a rule dropped it, or a loop flooded a listener.
    TimedOut,
    /// The machine, not the rules, refused: the errno's text.
    Resources(&'static str),
    /// The probe never left: no socket, or its task died.
    NotSent,
    /// The answer came back for another probe: the harness mixed up its
    /// own connections.
    MixedUp,
    Other,
}

/// errno values that mean the machine, not the rules, refused: as the
/// kernel's text and as Rust's `(os error N)` suffix.
const RESOURCE_ERRORS: &[(&str, &str)] = &[
    ("Too many open files", "(os error 24)"),
    ("Too many open files in system", "(os error 23)"),
    ("Resource temporarily unavailable", "(os error 11)"),
    ("Cannot allocate memory", "(os error 12)"),
    ("No buffer space available", "(os error 105)"),
    ("Cannot assign requested address", "(os error 99)"),
];

/// The resource error named in `text`, if any.
pub fn resource_error(text: &str) -> Option<&'static str> {
    RESOURCE_ERRORS.iter().find(|(name, code)| text.contains(name) || text.contains(code)).map(|(name, _)| *name)
}

/// Failures that are only a clock running out: the probe client's own
/// deadlines, fake-envoy's, and the kernel's ETIMEDOUT ("Connection timed
/// out", os error 110) for an upstream whose SYN got no answer.
fn is_timeout(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["no answer to the syn", "no answer within", "timed out", "closed without an answer", "no answer datagram"]
        .iter()
        .any(|t| lower.contains(t))
        || text.contains("(os error 110)")
}

impl Cause {
    /// The cause an error text names (stub answers already have `_` turned into spaces).
    pub fn of(text: &str) -> Cause {
        if let Some(name) = resource_error(&text.replace('_', " ")) {
            Cause::Resources(name)
        } else if is_timeout(text) {
            Cause::TimedOut
        } else if text.contains("Connection refused") || text.contains("(os error 111)") {
            Cause::Refused
        } else {
            Cause::Other
        }
    }
}

impl Ending {
    /// The client failed at `stage` with `detail`.
    pub fn client_failed(stage: &str, detail: &str) -> Ending {
        let cause = match stage {
            stage::SETUP | stage::PROBE => Cause::NotSent,
            stage::IDENTIFY => Cause::MixedUp,
            _ => Cause::of(detail),
        };
        Ending::ClientFailed { stage: stage.to_string(), detail: detail.to_string(), cause }
    }

    /// How `obs` ended.
    pub fn of(obs: &Observation) -> Ending {
        match obs {
            Observation::Failed { stage, detail } => Ending::client_failed(stage, detail),
            Observation::Answered(a) => match &a.end {
                End::Server { name, port, .. } => Ending::Reached { server: name.clone(), port: *port },
                End::Loop { role, port } => Ending::Loop { role: role.clone(), port: *port },
                // Stubs write their message with `_` for spaces.
                End::Error { role, port, message } if role == sidecheck_wire::stub::OVERLOADED => {
                    Ending::Overloaded { port: *port, message: message.replace('_', " ") }
                }
                End::Error { role, port, message } => {
                    let message = message.replace('_', " ");
                    Ending::NotForwarded { role: role.clone(), port: *port, cause: Cause::of(&message), message }
                }
            },
        }
    }

    /// Why it did not get through (None: it reached a server or looped).
    pub fn cause(&self) -> Option<Cause> {
        match self {
            Ending::Reached { .. } | Ending::Loop { .. } => None,
            Ending::Overloaded { .. } => Some(Cause::Resources("the stub's thread budget")),
            Ending::NotForwarded { cause, .. } | Ending::ClientFailed { cause, .. } => Some(*cause),
        }
    }

    /// The error text of a connection that failed (a listener's or the client's).
    pub fn error_text(&self) -> Option<&str> {
        match self {
            Ending::NotForwarded { message, .. } => Some(message),
            Ending::ClientFailed { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Reached { server, port } => write!(f, "{server}:{port}"),
            Ending::Loop { role, port } => write!(f, "loop: the probe came back to the {role} listener {port}"),
            Ending::Overloaded { port, message } => {
                write!(f, "the stub on port {port} ran out of resources and dropped it: {message}")
            }
            Ending::NotForwarded { role, port, message, .. } => {
                write!(f, "the {role} listener {port} could not forward it: {message}")
            }
            Ending::ClientFailed { stage, detail, .. } => write!(f, "{stage} failed: {detail}"),
        }
    }
}

/// The JSON contract keeps `observed.end` a string: the text above.
impl Serialize for Ending {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecheck_wire::{Answer, Probe};

    fn error_end(role: &str, message: &str) -> Observation {
        Observation::Answered(Answer {
            probe: Probe::new(1),
            end: End::Error { role: role.into(), port: 15001, message: message.into() },
        })
    }

    #[test]
    fn the_kind_is_read_from_the_observation_and_the_text_is_the_reports() {
        let cases = [
            (
                error_end("outbound", "10.244.0.20:9090_Connection_refused_(os_error_111)"),
                Some(Cause::Refused),
                "the outbound listener 15001 could not forward it: 10.244.0.20:9090 Connection refused (os error 111)",
            ),
            (
                error_end(sidecheck_wire::stub::OVERLOADED, "could_not_start_a_thread"),
                Some(Cause::Resources("the stub's thread budget")),
                "the stub on port 15001 ran out of resources and dropped it: could not start a thread",
            ),
            (
                Observation::Failed {
                    stage: "connect".into(),
                    detail: "no answer to the SYN for x within 2000 ms".into(),
                },
                Some(Cause::TimedOut),
                "connect failed: no answer to the SYN for x within 2000 ms",
            ),
            (
                Observation::Failed { stage: "setup".into(), detail: "Too many open files (os error 24)".into() },
                Some(Cause::NotSent),
                "setup failed: Too many open files (os error 24)",
            ),
        ];
        for (obs, cause, text) in cases {
            let e = Ending::of(&obs);
            assert_eq!(e.cause(), cause, "{obs:?}");
            assert_eq!(e.to_string(), text);
            assert_eq!(serde_json::to_string(&e).unwrap(), serde_json::to_string(text).unwrap());
        }
    }

    #[test]
    fn etimedout_is_a_timeout_in_either_spelling() {
        // The kernel's text for ETIMEDOUT, from a client and from fake-envoy.
        for text in ["10.244.0.20:9090: Connection timed out (os error 110)", "10.244.0.20:9090 connection timed out"] {
            assert_eq!(Cause::of(text), Cause::TimedOut, "{text}");
        }
        let e = Ending::of(&error_end("outbound", "10.244.0.20:9090_Connection_timed_out_(os_error_110)"));
        assert_eq!(e.cause(), Some(Cause::TimedOut));
        assert_eq!(Cause::of("10.244.0.20:9090: Connection refused (os error 111)"), Cause::Refused);
    }
}

//! sidecheck: proves with real packets in Linux network namespaces what a
//! service mesh's traffic-capture rules do to every kind of connection.
//!
//! The pieces, in the order a run uses them: [`registry`] owns the run (lock,
//! stale sweep, signal cleanup); [`topology`] builds the namespaces;
//! [`rules`] generates and installs the rules under test; [`stubs`] starts
//! fake-envoy and fake-istiod; [`probe`] runs app servers and probe clients;
//! [`scenario`] reads what to expect; [`verdict`] compares; [`report`] prints.
//! [`session`] ties them together.

pub mod admission;
pub mod annotate;
pub mod bounded;
pub mod contain;
pub mod decision;
pub mod diff;
pub mod error;
pub mod golden;
pub mod installed;
pub mod nfnetlink;
pub mod outcome;
pub mod outputs;
pub mod phases;
pub mod policy;
pub mod policy_from;
pub mod probe;
pub mod profile;
pub mod registry;
pub mod report;
pub mod rules;
pub mod scenario;
pub mod session;
pub mod settings;
pub mod stubs;
pub mod topology;
pub mod trace;
pub mod validate;
pub mod verdict;

pub use error::{Error, Result};
pub use session::{Session, SessionConfig};

/// Fails with the message every root-needing entry point gives.
pub fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot { what: what.to_string() })
    }
}

/// Let this process hold as many descriptors as the hard limit allows: a
/// thousand concurrent probes need a few thousand sockets.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

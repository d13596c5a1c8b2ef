//! sidecheck: proves with real packets in Linux network namespaces what a
//! service mesh's traffic-capture rules do to every kind of connection.
//!
//! The layers, in the order data flows through a run (docs/architecture.md
//! has the map; a module imports only from layers listed before its own):
//! [`base`], [`rules`], [`model`], [`policy`], [`plan`], [`sandbox`], [`netfilter`],
//! [`probe`], [`verdict`], [`report`], [`session`], [`diff`], [`run`].

pub mod base;
pub mod diff;
pub mod error;
pub mod model;
pub mod netfilter;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod report;
pub mod rules;
pub mod run;
pub mod sandbox;
pub mod session;
pub mod verdict;

pub use error::{Error, Result};
pub use plan::SessionConfig;
pub use session::Session;

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

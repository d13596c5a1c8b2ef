//! The one error type of the harness library. Every message says what was
//! being done, where (namespace, file, line), and what to do next.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} creates network namespaces, which needs root.\n  \
         From the source tree: as root, or as a user with sudo, `cargo test` (cargo's runner, ci/as-root, uses sudo for the binaries that need it).\n  \
         Installed: `cargo install --locked --path harness`, then `sudo \"$(command -v sidecheck)\" run` \
         (or install to /usr/local/bin: `sudo install ~/.cargo/bin/sidecheck /usr/local/bin/`, then `sudo sidecheck run`).\n  \
         Not `sudo cargo test`: sudo's secure_path lacks ~/.cargo/bin, so sudo cannot find cargo; type `cargo test` instead."
    )]
    NotRoot { what: String },

    #[error("`{tool}` is not installed or not on PATH: install the Debian/Ubuntu package `{package}` (apt-get install -y {package}, or run ci/setup)")]
    ToolMissing { tool: String, package: String },

    #[error("{file}:{line}:{column}: {message}")]
    ScenarioSyntax { file: String, line: usize, column: usize, message: String },

    #[error("{file}: {message}")]
    ScenarioInvalid { file: String, message: String },

    #[error("{message}")]
    Config { message: String },

    #[error("rules from {origin} did not apply in namespace {namespace}: {tool} {status}:\n{output}\nFix the rules (line numbers above are the tool's, counted in {origin}) and run again.")]
    RulesDidNotApply { origin: String, namespace: String, tool: String, status: String, output: String },

    #[error("{doing}: still running after {seconds} s, killed; raise the timeout if it is just slow")]
    Timeout { doing: String, seconds: f32 },

    #[error("{doing} in namespace {namespace}: {detail}")]
    Netlink { doing: String, namespace: String, detail: String },

    #[error("{stub} did not start in namespace {namespace}: {detail}")]
    StubFailed { stub: String, namespace: String, detail: String },

    // `err`, not `source`: the message already carries the cause, and anyhow
    // would print it a second time.
    #[error("{doing}: {err}")]
    Io { doing: String, err: std::io::Error },

    #[error("cannot read {path}: {err}; check the path")]
    Read { path: PathBuf, err: std::io::Error },
}

impl Error {
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let doing = doing.into();
        move |err| Error::Io { doing, err }
    }

    pub fn config(message: impl Into<String>) -> Error {
        Error::Config { message: message.into() }
    }
}

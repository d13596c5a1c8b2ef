//! Where the rules under test come from, and which front end installs them:
//! the user's choice, before anything is installed (netfilter installs).

use std::path::PathBuf;

use crate::base::net::Family;
use crate::rules::istio::IstioCapture;

/// Which iptables front end installs a restore file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// iptables-nft-restore: the rules land in nf_tables (Debian's default).
    Nft,
    /// iptables-legacy-restore: the rules land in the legacy x_tables.
    Legacy,
    /// Native nftables (`nft -f`): for the built-in rules, their `inet`
    /// ruleset; `--nft` files are always installed this way.
    NftNative,
}

impl Backend {
    pub fn restore_tool(self) -> &'static str {
        match self {
            Backend::Nft | Backend::NftNative => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }

    pub fn restore_tool_for(self, family: Family) -> &'static str {
        match (self, family) {
            (_, Family::Ipv4) => self.restore_tool(),
            (Backend::Nft | Backend::NftNative, Family::Ipv6) => "ip6tables-nft-restore",
            (Backend::Legacy, Family::Ipv6) => "ip6tables-legacy-restore",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::NftNative => "nft-native",
        }
    }
}

/// Where the rules under test come from.
#[derive(Clone, Debug)]
pub enum RuleSource {
    /// The built-in reference generator.
    Builtin(IstioCapture),
    /// iptables-restore input for IPv4 and/or ip6tables-restore input for
    /// IPv6, installed with the run's backend.
    RestoreFiles { v4: Option<PathBuf>, v6: Option<PathBuf> },
    /// Restore input cut out of files as they were read: Istio's dry-run /
    /// golden format holds both families' blocks in one file
    /// ([`crate::rules::golden`]). Built by [`RuleSource::from_rule_files`].
    Split { v4: Option<Part>, v6: Option<Part> },
    /// A native nftables ruleset, installed with `nft -f`.
    NftFile(PathBuf),
    /// A shell script of iptables/nft/ip commands (the form
    /// `istio-iptables --dry-run` prints), run with `sh` in the pod.
    Script(PathBuf),
    /// A generator command line, run with `sh -c` in the pod after the
    /// topology is up (as an init container would be).
    Generator(String),
    /// Restore input held in memory (a mesh profile's own rule set, a
    /// policy's reference rules): `label` selects `expect.paths`, `what`
    /// names it in reports.
    Text { label: String, what: String, v4: Option<String>, v6: Option<String> },
}

/// One family's restore input and the file it came from (its line numbers).
#[derive(Clone, Debug)]
pub struct Part {
    pub file: PathBuf,
    pub text: String,
}

/// Which netfilter front end the rules land in, as far as the harness can
/// know: a script or generator may use any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    IptablesNft,
    IptablesLegacy,
    Nft,
    Any,
}

//! The command line's arguments (clap), and the plan input they give.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use harness::plan::diff::DiffInput;
use harness::plan::{Families, Input, Probes, RuleInput};
use harness::rules::istio::Shape;
use harness::rules::source::Backend;

#[derive(Parser)]
#[command(
    name = "sidecheck",
    version,
    about = "Proves with real packets in network namespaces what sidecar capture rules do to each traffic flow"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build the topology, install the rules, run every scenario's probe, report.
    Run(RunArgs),
    /// One connection, traced: its path in the article's notation, then each
    /// rule it hit beside its text.
    Trace(TraceArgs),
    /// Print the built-in rules (as iptables-restore input, an iptables
    /// command script, or a native nftables ruleset).
    Rules(RulesPrintArgs),
    /// Remove what runs killed before they could clean up (namespaces, run files).
    Clean,
    /// The trials a run would have (names as `run` gives them, for --test and
    /// --skip), the scenarios they come from, and the profiles that exist.
    List(ListArgs),
    /// Two rule sets on the same probes: the connections whose fate differs,
    /// and the first hook where their deciding rules part.
    Diff(DiffArgs),
    /// Print the capture policy (YAML, for --policy) that a rule generator's
    /// command line asks for.
    Policy(PolicyArgs),
}

#[derive(Parser)]
pub struct PolicyArgs {
    /// Read the generator command line after `--`: istio-iptables (or
    /// pilot-agent istio-iptables), proxy-init (Linkerd), kumactl install
    /// transparent-proxy, consul connect redirect-traffic.
    #[arg(long, required = true)]
    pub from: bool,
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Parser)]
pub struct RulesPrintArgs {
    #[arg(long, value_enum, default_value = "current")]
    pub shape: Shape,
    #[arg(long, value_enum, default_value = "restore")]
    pub form: RulesForm,
    /// The iptables command the script form calls.
    #[arg(long, default_value = "iptables")]
    pub iptables: String,
    /// Print the reference rules of this capture policy instead (restore and
    /// restore6 forms).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RulesForm {
    /// iptables-restore input (IPv4)
    Restore,
    /// ip6tables-restore input (IPv6)
    Restore6,
    Script,
    Nft,
}

#[derive(Parser)]
pub struct TraceArgs {
    /// Where the connection starts: a pod (local-pod, remote-pod, prometheus,
    /// istiod), optionally with the uid it runs as (default 1000) and its
    /// gid (default: the uid).
    #[arg(long, value_name = "HOST[:UID[:GID]]")]
    pub from: String,
    /// Where it goes: a host of the topology, a service name (its VIP),
    /// `localhost` or an IPv4 address, then the port.
    #[arg(long, value_name = "TARGET:PORT")]
    pub to: String,
    #[command(flatten)]
    pub rules: RulesArgs,
    #[arg(long, value_enum, default_value = "human")]
    pub format: TraceFormat,
}

/// Which rules to test, shared by `run` and `trace`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").multiple(false)))]
pub struct RulesArgs {
    /// An iptables-restore file (IPv4) to test instead of the built-in Istio
    /// rules, or Istio's dry-run/golden output (both families, split here).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// An ip6tables-restore file (IPv6), alone or beside --rules.
    #[arg(long, value_name = "FILE")]
    pub rules6: Option<PathBuf>,
    /// A native nftables ruleset (`nft -f` input).
    #[arg(long, value_name = "FILE", group = "source", conflicts_with_all = ["rules", "rules6"])]
    pub nft: Option<PathBuf>,
    /// A shell script of iptables/ip6tables/nft/ip commands, run with sh in
    /// the pod (restore input or Istio's dry-run output is installed as --rules).
    #[arg(long, value_name = "FILE", group = "source", conflicts_with_all = ["rules", "rules6"])]
    pub script: Option<PathBuf>,
    /// A generator command line, run with `sh -c` inside the pod once the
    /// topology is up, as an init container would be.
    #[arg(long, value_name = "COMMAND", group = "source", conflicts_with_all = ["rules", "rules6"])]
    pub generator: Option<String>,
    /// Which IP families to test (default: both, or those --rules/--rules6 cover).
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    /// Topology settings (YAML): addresses, CIDRs, services, app ports.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Seconds the rules (a generator, a script, a restore) may take to install.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub rules_timeout: f64,
    /// Shape of the built-in rules (ignored with --rules).
    #[arg(long, value_enum, default_value = "current")]
    pub shape: Shape,
    /// Which iptables installs the rules.
    #[arg(long, value_enum, default_value = "nft")]
    pub backend: Backend,
    /// The mesh whose capture contract the rules are checked against: a
    /// built-in profile (`sidecheck list` names them) or a profile file
    /// (default istio, or with --policy the mesh the policy names).
    /// Without a rule source, the profile's own rule set is tested.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    /// Test the rules even if the rule source installed none for a family
    /// under test (else that stops the run: exit 2).
    #[arg(long)]
    pub allow_empty_rules: bool,
}

impl RulesArgs {
    pub fn input(&self) -> RuleInput {
        RuleInput {
            rules: self.rules.clone(),
            rules6: self.rules6.clone(),
            nft: self.nft.clone(),
            script: self.script.clone(),
            generator: self.generator.clone(),
            family: self.family.map(FamilyArg::families),
            topology: self.topology.clone(),
            rules_timeout: self.rules_timeout,
            shape: self.shape,
            backend: self.backend,
            profile: self.profile.clone(),
            allow_empty_rules: self.allow_empty_rules,
        }
    }
}

impl FamilyArg {
    pub fn families(self) -> Families {
        match self {
            FamilyArg::Ipv4 => Families::Ipv4,
            FamilyArg::Ipv6 => Families::Ipv6,
            FamilyArg::Both => Families::Both,
        }
    }
}

#[derive(Parser)]
pub struct RunArgs {
    #[command(flatten)]
    pub rules: RulesArgs,
    /// A directory of scenario YAML files, replacing the built-in set.
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<PathBuf>,
    /// A capture policy (YAML, see docs/policy.md): probe every boundary it
    /// draws and compare each connection with what the policy says, under
    /// --profile's mesh (default: the mesh the policy names). Without a rule
    /// source, the reference rules for it are tested. `from-command`: the
    /// policy --generator's command line asks for.
    #[arg(long, value_name = "FILE|from-command", conflicts_with = "scenarios")]
    pub policy: Option<PathBuf>,
    /// What to print: `github` is the human table, then one `::error`
    /// annotation per failing trial (in GitHub Actions, GITHUB_ACTIONS=true,
    /// the annotations also come with any other format, on stderr).
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Also write the report to a file, as FORMAT=FILE (human, json, junit,
    /// markdown, summary); repeatable, e.g. --output junit=results.xml.
    #[arg(long, value_name = "FORMAT=FILE", value_parser = parse_output)]
    pub output: Vec<(Format, PathBuf)>,
    /// Print the rules as installed before the results (JSON and Markdown
    /// reports always carry them).
    #[arg(long)]
    pub show_rules: bool,
    /// What must match for a trial to pass; `paths` adds the rule path
    /// (chains and rule numbers) to the ports.
    #[arg(long, value_enum, default_value = "ports")]
    pub assert: Assert,
    /// Do not trace rule paths (ports are still checked).
    #[arg(long, conflicts_with = "assert")]
    pub no_trace: bool,
    /// If a trial fails, keep the run's namespaces (with the rules as
    /// installed) and print how to look inside; `sidecheck clean` removes them.
    #[arg(long)]
    pub keep: bool,
    /// Run every scenario N times, all at once (trials named `name#k`):
    /// load, and a hunt for flakes.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub repeat: u32,
    /// Test many rule sets in one topology (for ci/mutate): FILE lists one
    /// per line, `rules PATH` (IPv4 restore) or `rules6 PATH` (IPv6), all
    /// of one family; each is swapped in for the last (flushed, conntrack
    /// cleared, tracer restarted). Prints one JSON line per rule set:
    /// {"rules", "exit" (0 passed, 1 failed, 2 refused), "failed", "error"}.
    #[arg(long, value_name = "FILE", requires = "policy", conflicts_with_all = ["rules", "rules6", "nft", "script", "generator", "keep", "output"])]
    pub each: Option<PathBuf>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Colour the verdicts: auto (on a terminal, unless NO_COLOR is set or
    /// CLICOLOR_FORCE forces it), always, never. Files from --output never are.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub color: ColorArg,
}

/// Which trials run, by name (as `sidecheck list` prints them).
#[derive(clap::Args)]
pub struct SelectArgs {
    /// Run only the trials whose name matches this regular expression
    /// (unanchored); repeatable: a trial matching any runs.
    #[arg(long = "test", value_name = "REGEX")]
    pub test: Vec<String>,
    /// Leave out the trials whose name matches this regular expression;
    /// repeatable, and it wins over --test.
    #[arg(long, value_name = "REGEX")]
    pub skip: Vec<String>,
}

#[derive(Parser)]
pub struct ListArgs {
    /// The rules decide the backend part of each trial name: give the same
    /// options as to `run`.
    #[command(flatten)]
    pub rules: RulesArgs,
    /// A directory of scenario YAML files, replacing the built-in set.
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<PathBuf>,
    /// List the probes of this capture policy instead (under --profile's
    /// mesh, as `run` would probe it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["scenarios"])]
    pub policy: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub repeat: u32,
    #[command(flatten)]
    pub select: SelectArgs,
    #[arg(long, value_enum, default_value = "human")]
    pub format: ListFormat,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum ListFormat {
    Human,
    Json,
}

/// What `trace` prints: the rules it hit beside their text, or JSON.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum TraceFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Assert {
    Ports,
    Paths,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Junit,
    Markdown,
    /// One screen for an issue or a README: verdict per flow and family.
    Summary,
    /// The human table, then GitHub Actions `::error` annotations.
    Github,
}

pub fn parse_output(arg: &str) -> Result<(Format, PathBuf), String> {
    let (format, file) =
        arg.split_once('=').ok_or_else(|| format!("`{arg}` is not FORMAT=FILE (e.g. junit=results.xml)"))?;
    let format = Format::from_str(format, true)
        .ok()
        .filter(|f| *f != Format::Github)
        .ok_or_else(|| format!("`{format}` is not a format of --output: human, json, junit, markdown or summary"))?;
    if file.is_empty() {
        return Err(format!("`{arg}` names no file"));
    }
    Ok((format, PathBuf::from(file)))
}

/// `--scenarios` / `--policy`, as a plan's probes.
fn probes(scenarios: &Option<PathBuf>, policy: &Option<PathBuf>) -> Probes {
    match (scenarios, policy) {
        (Some(dir), _) => Probes::Dir(dir.clone()),
        (None, Some(file)) => Probes::Policy(file.clone()),
        (None, None) => Probes::Builtin,
    }
}

impl RunArgs {
    pub fn input(&self) -> Input {
        Input {
            rules: self.rules.input(),
            probes: probes(&self.scenarios, &self.policy),
            repeat: self.repeat,
            test: self.select.test.clone(),
            skip: self.select.skip.clone(),
            trace: !self.no_trace,
            assert_paths: self.assert == Assert::Paths,
        }
    }
}

impl ListArgs {
    pub fn input(&self) -> Input {
        Input {
            rules: self.rules.input(),
            probes: probes(&self.scenarios, &self.policy),
            repeat: self.repeat,
            test: self.select.test.clone(),
            skip: self.select.skip.clone(),
            ..Input::default()
        }
    }
}

#[derive(Parser)]
pub struct DiffArgs {
    /// The first rule source: FILE (restore input, IPv4), FILE4,FILE6 (both
    /// families; ,FILE6 for IPv6 alone), nft:FILE, script:FILE, gen:COMMAND,
    /// builtin, builtin:classic, profile:NAME.
    #[arg(value_name = "A")]
    pub a: String,
    /// The second rule source, in the same forms.
    #[arg(value_name = "B")]
    pub b: String,
    /// A directory of scenario YAML files instead of the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<PathBuf>,
    /// Probe a capture policy's boundary matrix instead.
    #[arg(long, value_name = "FILE", conflicts_with = "scenarios")]
    pub policy: Option<PathBuf>,
    /// The contract the probes' roles resolve in (default istio, or the
    /// profile a `profile:NAME` side names).
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Which iptables installs restore input (both sides).
    #[arg(long, value_enum, default_value = "nft")]
    pub backend: Backend,
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub rules_timeout: f64,
    /// `paths`: a connection differs when its ports or any deciding rule
    /// differ; `ports`: only when its ports or end differ.
    #[arg(long, value_enum, default_value = "paths")]
    pub assert: Assert,
    /// human, json, markdown or junit.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Also write the report to a file, as FORMAT=FILE; repeatable.
    #[arg(long, value_name = "FORMAT=FILE", value_parser = parse_output)]
    pub output: Vec<(Format, PathBuf)>,
}

impl DiffArgs {
    pub fn input(&self) -> DiffInput {
        DiffInput {
            a: self.a.clone(),
            b: self.b.clone(),
            probes: probes(&self.scenarios, &self.policy),
            profile: self.profile.clone(),
            family: self.family.map(FamilyArg::families),
            topology: self.topology.clone(),
            backend: self.backend,
            rules_timeout: self.rules_timeout,
        }
    }
}

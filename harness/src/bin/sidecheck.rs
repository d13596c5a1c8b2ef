//! sidecheck: the command line. Thin: parsing, then the harness library.
//! Exit 0 when every trial passed, 1 when any failed, 2 when it could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use harness::base::net::Family;
use harness::model::profile::Profile;
use harness::model::topology::{Host, TopologyConfig};
use harness::policy::Policy;
use harness::rules::istio::{IstioCapture, Shape};
use harness::rules::source::{Backend, RuleSource};
use harness::{model::scenario, report::Report, sandbox::registry, Session, SessionConfig};
use std::net::{IpAddr, SocketAddr};

#[derive(Parser)]
#[command(
    name = "sidecheck",
    version,
    about = "Proves with real packets in network namespaces what sidecar capture rules do to each traffic flow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct PolicyArgs {
    /// Read the generator command line after `--`: istio-iptables (or
    /// pilot-agent istio-iptables), proxy-init (Linkerd), kumactl install
    /// transparent-proxy, consul connect redirect-traffic.
    #[arg(long, required = true)]
    from: bool,
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Parser)]
struct RulesPrintArgs {
    #[arg(long, value_enum, default_value = "current")]
    shape: Shape,
    #[arg(long, value_enum, default_value = "restore")]
    form: RulesForm,
    /// The iptables command the script form calls.
    #[arg(long, default_value = "iptables")]
    iptables: String,
    /// Print the reference rules of this capture policy instead (restore and
    /// restore6 forms).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum RulesForm {
    /// iptables-restore input (IPv4)
    Restore,
    /// ip6tables-restore input (IPv6)
    Restore6,
    Script,
    Nft,
}

#[derive(Parser)]
struct TraceArgs {
    /// Where the connection starts: a pod (local-pod, remote-pod, prometheus,
    /// istiod), optionally with the uid it runs as (default 1000) and its
    /// gid (default: the uid).
    #[arg(long, value_name = "HOST[:UID[:GID]]")]
    from: String,
    /// Where it goes: a host of the topology, a service name (its VIP),
    /// `localhost` or an IPv4 address, then the port.
    #[arg(long, value_name = "TARGET:PORT")]
    to: String,
    #[command(flatten)]
    rules: RulesArgs,
    #[arg(long, value_enum, default_value = "human")]
    format: TraceFormat,
}

/// Which rules to test, shared by `run` and `trace`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").multiple(false)))]
struct RulesArgs {
    /// An iptables-restore file (IPv4) to test instead of the built-in Istio
    /// rules, or Istio's dry-run/golden output (both families, split here).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// An ip6tables-restore file (IPv6), alone or beside --rules.
    #[arg(long, value_name = "FILE")]
    rules6: Option<PathBuf>,
    /// A native nftables ruleset (`nft -f` input).
    #[arg(long, value_name = "FILE", group = "source", conflicts_with_all = ["rules", "rules6"])]
    nft: Option<PathBuf>,
    /// A shell script of iptables/ip6tables/nft/ip commands, run with sh in
    /// the pod (restore input or Istio's dry-run output is installed as --rules).
    #[arg(long, value_name = "FILE", group = "source", conflicts_with_all = ["rules", "rules6"])]
    script: Option<PathBuf>,
    /// A generator command line, run with `sh -c` inside the pod once the
    /// topology is up, as an init container would be.
    #[arg(long, value_name = "COMMAND", group = "source", conflicts_with_all = ["rules", "rules6"])]
    generator: Option<String>,
    /// Which IP families to test (default: both, or those --rules/--rules6 cover).
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// Topology settings (YAML): addresses, CIDRs, services, app ports.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Seconds the rules (a generator, a script, a restore) may take to install.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    rules_timeout: f64,
    /// Shape of the built-in rules (ignored with --rules).
    #[arg(long, value_enum, default_value = "current")]
    shape: Shape,
    /// Which iptables installs the rules.
    #[arg(long, value_enum, default_value = "nft")]
    backend: Backend,
    /// The mesh whose capture contract the rules are checked against: a
    /// built-in profile (`sidecheck list` names them) or a profile file
    /// (default istio, or with --policy the mesh the policy names).
    /// Without a rule source, the profile's own rule set is tested.
    #[arg(long, value_name = "NAME|FILE")]
    profile: Option<String>,
    /// Test the rules even if the rule source installed none for a family
    /// under test (else that stops the run: exit 2).
    #[arg(long)]
    allow_empty_rules: bool,
}

impl RulesArgs {
    /// Whether a rule source was given (else the default for the profile or policy).
    fn given(&self) -> bool {
        self.rules.is_some()
            || self.rules6.is_some()
            || self.nft.is_some()
            || self.script.is_some()
            || self.generator.is_some()
    }

    fn source(&self, profile: &Profile) -> anyhow::Result<RuleSource> {
        Ok(if self.rules.is_some() || self.rules6.is_some() {
            RuleSource::from_rule_files(self.rules.clone(), self.rules6.clone())?
        } else if let Some(p) = &self.nft {
            RuleSource::NftFile(p.clone())
        } else if let Some(p) = &self.script {
            let source = RuleSource::from_script_file(p.clone())?;
            if !matches!(source, RuleSource::Script(_)) {
                eprintln!(
                    "sidecheck: {} is restore input (iptables-restore or Istio's dry-run format), not a shell script: installed as --rules installs it",
                    p.display()
                );
            }
            source
        } else if let Some(c) = &self.generator {
            RuleSource::Generator(c.clone())
        } else {
            match profile.own_rules(self.shape) {
                Some(r) => r,
                None => anyhow::bail!(
                    "profile {} ({}) has no rule set of its own: give the rules to test with --rules, --nft, --script or --generator",
                    profile.name,
                    profile.file
                ),
            }
        })
    }

    fn config(&self) -> anyhow::Result<SessionConfig> {
        anyhow::ensure!(
            self.rules_timeout.is_finite() && self.rules_timeout > 0.0 && self.rules_timeout <= 3600.0,
            "--rules-timeout {}: give seconds between 0 and 3600",
            self.rules_timeout
        );
        let spec = self.profile.as_deref().unwrap_or("istio");
        let profile = Profile::load(spec).with_context(|| format!("loading --profile {spec}"))?;
        let mut config = SessionConfig {
            rules: self.source(&profile)?,
            profile,
            backend: self.backend,
            rules_timeout: std::time::Duration::from_secs_f64(self.rules_timeout),
            allow_empty_rules: self.allow_empty_rules,
            ..SessionConfig::default()
        };
        if let Some(file) = &self.topology {
            let name = file.display().to_string();
            harness::model::settings::Settings::load(file)?
                .apply(&name, &mut config)
                .with_context(|| format!("applying {name}"))?;
        }
        match self.family {
            Some(FamilyArg::Ipv4) => config.topology.families = vec![Family::Ipv4],
            Some(FamilyArg::Ipv6) => config.topology.families = vec![Family::Ipv6],
            Some(FamilyArg::Both) | None => {}
        }
        let covered = config.rules.families();
        if let Some(missing) =
            config.topology.families.iter().find(|f| !covered.contains(f)).filter(|_| self.family.is_some())
        {
            anyhow::bail!(
                "--family asks for {} but no rules were given for it: add --rules6 / --rules",
                missing.name()
            );
        }
        Ok(config)
    }
}

#[derive(Parser)]
struct RunArgs {
    #[command(flatten)]
    rules: RulesArgs,
    /// A directory of scenario YAML files, replacing the built-in set.
    #[arg(long, value_name = "DIR")]
    scenarios: Option<PathBuf>,
    /// A capture policy (YAML, see docs/policy.md): probe every boundary it
    /// draws and compare each connection with what the policy says, under
    /// --profile's mesh (default: the mesh the policy names). Without a rule
    /// source, the reference rules for it are tested. `from-command`: the
    /// policy --generator's command line asks for.
    #[arg(long, value_name = "FILE|from-command", conflicts_with = "scenarios")]
    policy: Option<PathBuf>,
    /// What to print: `github` is the human table, then one `::error`
    /// annotation per failing trial (in GitHub Actions, GITHUB_ACTIONS=true,
    /// the annotations also come with any other format, on stderr).
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Also write the report to a file, as FORMAT=FILE (human, json, junit,
    /// markdown, summary); repeatable, e.g. --output junit=results.xml.
    #[arg(long, value_name = "FORMAT=FILE", value_parser = parse_output)]
    output: Vec<(Format, PathBuf)>,
    /// Print the rules as installed before the results (JSON and Markdown
    /// reports always carry them).
    #[arg(long)]
    show_rules: bool,
    /// What must match for a trial to pass; `paths` adds the rule path
    /// (chains and rule numbers) to the ports.
    #[arg(long, value_enum, default_value = "ports")]
    assert: Assert,
    /// Do not trace rule paths (ports are still checked).
    #[arg(long, conflicts_with = "assert")]
    no_trace: bool,
    /// If a trial fails, keep the run's namespaces (with the rules as
    /// installed) and print how to look inside; `sidecheck clean` removes them.
    #[arg(long)]
    keep: bool,
    /// Run every scenario N times, all at once (trials named `name#k`):
    /// load, and a hunt for flakes.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    repeat: u32,
    /// Test many rule sets in one topology (for ci/mutate): FILE lists one
    /// per line, `rules PATH` (IPv4 restore) or `rules6 PATH` (IPv6), all
    /// of one family; each is swapped in for the last (flushed, conntrack
    /// cleared, tracer restarted). Prints one JSON line per rule set:
    /// {"rules", "exit" (0 passed, 1 failed, 2 refused), "failed", "error"}.
    #[arg(long, value_name = "FILE", requires = "policy", conflicts_with_all = ["rules", "rules6", "nft", "script", "generator", "keep", "output"])]
    each: Option<PathBuf>,
    #[command(flatten)]
    select: SelectArgs,
    /// Colour the verdicts: auto (on a terminal, unless NO_COLOR is set or
    /// CLICOLOR_FORCE forces it), always, never. Files from --output never are.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    color: ColorArg,
}

/// Which trials run, by name (as `sidecheck list` prints them).
#[derive(clap::Args)]
struct SelectArgs {
    /// Run only the trials whose name matches this regular expression
    /// (unanchored); repeatable: a trial matching any runs.
    #[arg(long = "test", value_name = "REGEX")]
    test: Vec<String>,
    /// Leave out the trials whose name matches this regular expression;
    /// repeatable, and it wins over --test.
    #[arg(long, value_name = "REGEX")]
    skip: Vec<String>,
}

#[derive(Parser)]
struct ListArgs {
    /// The rules decide the backend part of each trial name: give the same
    /// options as to `run`.
    #[command(flatten)]
    rules: RulesArgs,
    /// A directory of scenario YAML files, replacing the built-in set.
    #[arg(long, value_name = "DIR")]
    scenarios: Option<PathBuf>,
    /// List the probes of this capture policy instead (under --profile's
    /// mesh, as `run` would probe it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["scenarios"])]
    policy: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    repeat: u32,
    #[command(flatten)]
    select: SelectArgs,
    #[arg(long, value_enum, default_value = "human")]
    format: ListFormat,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ListFormat {
    Human,
    Json,
}

/// What `trace` prints: the rules it hit beside their text, or JSON.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum TraceFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Assert {
    Ports,
    Paths,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Format {
    Human,
    Json,
    Junit,
    Markdown,
    /// One screen for an issue or a README: verdict per flow and family.
    Summary,
    /// The human table, then GitHub Actions `::error` annotations.
    Github,
}

fn parse_output(arg: &str) -> Result<(Format, PathBuf), String> {
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

fn render(report: &Report, format: Format, colour: bool) -> String {
    match format {
        Format::Human | Format::Github => report.to_human_coloured(colour),
        Format::Json => report.to_json() + "\n",
        Format::Junit => report.to_junit(),
        Format::Markdown => report.to_markdown(),
        Format::Summary => report.to_summary(),
    }
}

/// `--policy FILE|from-command` for a run: the policy, the profile of its
/// mesh it runs under (--profile when given, else the built-in profile of
/// the mesh the policy names), and what to call it in messages.
fn policy_for_run(
    file: &std::path::Path,
    generator: Option<&str>,
    profile_given: bool,
    given: &Profile,
) -> anyhow::Result<(Policy, Profile, String)> {
    let (text, label) = if file.as_os_str() == "from-command" {
        let Some(cmd) = generator else {
            anyhow::bail!("--policy from-command derives the policy from the generator's command line: give it with --generator 'CMD'");
        };
        let derived = harness::policy::from::from_command(cmd)
            .with_context(|| format!("deriving the policy from --generator '{cmd}'"))?;
        (derived.yaml, format!("the policy of --generator '{cmd}'"))
    } else {
        let text = harness::base::bounded::read_text(file, harness::base::bounded::YAML_MAX)
            .with_context(|| format!("loading --policy {}", file.display()))?;
        (text, file.display().to_string())
    };
    let base = match (profile_given, Policy::mesh_of(&text)) {
        (true, _) => given.clone(),
        (false, Some(mesh)) => {
            Profile::builtin(mesh.name()).with_context(|| format!("loading the {} profile for {label}", mesh.name()))?
        }
        (false, None) => given.clone(),
    };
    let policy = Policy::parse_for(&label, &text, &base).with_context(|| format!("loading --policy {label}"))?;
    policy.check_profile(&label, &base)?;
    Ok((policy, base, label))
}

/// `sidecheck policy --from -- CMD`: print the policy, once it loads.
fn print_policy_from(args: &PolicyArgs) -> anyhow::Result<bool> {
    debug_assert!(args.from);
    // One quoted word is a whole command line; several are its words.
    let derived = match args.command.as_slice() {
        [] => anyhow::bail!("policy --from: give the generator command line after `--`, e.g. sidecheck policy --from -- istio-iptables -p 15001 -b '*'"),
        [one] => harness::policy::from::from_command(one)?,
        words => harness::policy::from::from_args(words)?,
    };
    let profile = Profile::builtin(derived.mesh.name())?;
    derived
        .policy(&profile)
        .context("the derived policy does not load (a bug: please report it with the command line)")?;
    print!("{}", derived.yaml);
    Ok(true)
}

fn print_policy_rules(args: &RulesPrintArgs) -> anyhow::Result<bool> {
    let file = args.policy.as_deref().expect("guarded by the caller");
    let text = harness::base::bounded::read_text(file, harness::base::bounded::YAML_MAX)
        .with_context(|| format!("loading --policy {}", file.display()))?;
    let profile = Profile::builtin(Policy::mesh_of(&text).unwrap_or_default().name())?;
    let policy = Policy::parse_for(&file.display().to_string(), &text, &profile)
        .with_context(|| format!("loading --policy {}", file.display()))?;
    let family = match args.form {
        RulesForm::Restore => Family::Ipv4,
        RulesForm::Restore6 if policy.ipv6 => Family::Ipv6,
        RulesForm::Restore6 => {
            anyhow::bail!("{} has no `ipv6: true`, so it has no IPv6 reference rules", file.display())
        }
        RulesForm::Script | RulesForm::Nft => {
            anyhow::bail!("a policy's reference rules come as restore input: use --form restore or --form restore6")
        }
    };
    emit(&policy.to_restore_for(family))?;
    Ok(true)
}

fn main() -> ExitCode {
    if let Err(e) = registry::install_signal_cleanup() {
        eprintln!("sidecheck: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Trace(args) => trace(args),
        Command::Rules(args) if args.policy.is_some() => print_policy_rules(&args),
        Command::Rules(args) => {
            let c = IstioCapture::default_for(args.shape);
            emit(&match args.form {
                RulesForm::Restore => c.to_restore(),
                RulesForm::Restore6 => c.to_restore_for(Family::Ipv6),
                RulesForm::Script => c.to_script(&args.iptables),
                RulesForm::Nft => c.to_nft(),
            })
            .map(|()| true)
        }
        Command::Clean => clean(),
        Command::List(args) => list(args),
        Command::Diff(args) => diff(args),
        Command::Policy(args) => print_policy_from(&args),
    };
    registry::wait_if_interrupted();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sidecheck: {}", harness::base::text::escape_controls(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// What a run tests: the configuration and the scenarios (a policy's
/// probes, a directory's, or the built-in ones), repeated.
fn plan(
    rules: &RulesArgs,
    scenarios: Option<&std::path::Path>,
    policy: Option<&std::path::Path>,
    repeat: u32,
) -> anyhow::Result<(SessionConfig, Vec<scenario::Scenario>)> {
    let mut config = rules.config()?;
    let mut scenarios = match (scenarios, policy) {
        (Some(dir), _) => {
            scenario::load_dir(dir).with_context(|| format!("loading scenarios from {}", dir.display()))?
        }
        (None, Some(file)) => {
            let (policy, base, label) =
                policy_for_run(file, rules.generator.as_deref(), rules.profile.is_some(), &config.profile)?;
            policy.check_groups(&label)?;
            policy.configure(&mut config, !rules.given(), &base)
        }
        (None, None) => scenario::builtin().context("loading the built-in scenarios")?,
    };
    if repeat > 1 {
        scenarios = (1..=repeat)
            .flat_map(|k| {
                scenarios.iter().map(move |s| scenario::Scenario { name: format!("{}#{k}", s.name), ..s.clone() })
            })
            .collect();
    }
    Ok((config, scenarios))
}

/// The (scenario, family) cases a run of `config` has, as `select` filters
/// them; named as the session will name them.
fn cases(
    config: &SessionConfig,
    scenarios: &[scenario::Scenario],
    select: &SelectArgs,
) -> anyhow::Result<Vec<(scenario::Scenario, Family)>> {
    let filter = scenario::Filter::new(&select.test, &select.skip)?;
    // The families the session will test: those of the run that the rules cover.
    let covered = config.rules.families();
    let families: Vec<Family> = config.topology.families.iter().copied().filter(|f| covered.contains(f)).collect();
    Ok(scenario::select(scenarios, &families, &config.backend_name(), &filter)?)
}

fn list(args: ListArgs) -> anyhow::Result<bool> {
    let (config, scenarios) = plan(&args.rules, args.scenarios.as_deref(), args.policy.as_deref(), args.repeat)?;
    let cases = cases(&config, &scenarios, &args.select)?;
    let backend = config.backend_name();
    let names: Vec<String> = cases.iter().map(|(s, f)| scenario::case_name(&s.name, &backend, *f)).collect();
    let profiles = Profile::builtin_names();
    let what = match &args.policy {
        Some(p) => format!("probes of {}", p.display()),
        None => "scenarios".to_string(),
    };
    match args.format {
        ListFormat::Json => {
            let scenarios: Vec<_> = scenarios
                .iter()
                .filter(|s| cases.iter().any(|(c, _)| c.name == s.name))
                .map(|s| {
                    serde_json::json!({
                        "name": s.name, "flow": s.spec.flow, "description": s.spec.description, "file": s.file,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "rules": config.rules.describe(),
                "backend": backend,
                "profile": config.profile.name,
                "policy": args.policy.as_ref().map(|p| p.display().to_string()),
                "trials": names,
                "scenarios": scenarios,
                "profiles": profiles,
            });
            emit(&(serde_json::to_string_pretty(&v)? + "\n"))?;
        }
        ListFormat::Human => {
            let mut out = format!(
                "trials ({} from {what}; rules: {}, backend {backend}):\n",
                names.len(),
                config.rules.describe()
            );
            for n in &names {
                out.push_str(&format!("  {n}\n"));
            }
            out.push_str(&format!("\nprofiles (--profile): {}\n", profiles.join(", ")));
            emit(&out)?;
        }
    }
    Ok(true)
}

fn run(args: RunArgs) -> anyhow::Result<bool> {
    // Where the reports go is checked before anything is built.
    for (format, file) in &args.output {
        harness::report::outputs::check_writable(file)
            .with_context(|| format!("--output {format:?}={}", file.display()))?;
    }
    let (config, scenarios) = plan(&args.rules, args.scenarios.as_deref(), args.policy.as_deref(), args.repeat)?;
    let mut config = SessionConfig { trace: !args.no_trace, assert_paths: args.assert == Assert::Paths, ..config };
    let cases = cases(&config, &scenarios, &args.select)?;
    // Only the scenarios that run are checked and probed.
    let scenarios: Vec<scenario::Scenario> =
        scenarios.into_iter().filter(|s| cases.iter().any(|(c, _)| c.name == s.name)).collect();
    // Bad input is reported before anything is created.
    Session::preflight(&config, &scenarios)?;
    harness::require_root("sidecheck run")?;
    let reference = paths_reference(&args, &mut config, &scenarios)?;
    if cases.is_empty() {
        anyhow::bail!(
            "no scenario runs in the families tested ({:?}): check the scenarios' `family`",
            config.topology.families
        );
    }
    if let Some(list) = &args.each {
        return run_each(config, &cases, list);
    }
    let session = Session::start(config.clone()).context("setting up the test topology")?;
    let mut trials = session.run_cases(&cases, config.assert_paths);
    if let Some(reference) = reference {
        judge_paths_by_reference(reference, &session, &mut trials, &scenarios, &args.rules)?;
    }
    let (backend, families) = (session.backend_name(), session.families().to_vec());
    // What was actually tested, for the reports that carry it.
    let machine = matches!(args.format, Format::Json | Format::Markdown)
        || args.output.iter().any(|(f, _)| matches!(f, Format::Json | Format::Markdown));
    let ruleset = if machine || args.show_rules {
        Some(session.installed_rules().context("reading the installed rules back")?)
    } else {
        None
    };
    let failed = trials.iter().any(|t| t.outcome != harness::verdict::Outcome::Pass);
    if args.keep && failed {
        session.keep();
        let names: Vec<String> = session.topology().namespace_names().iter().map(|s| s.to_string()).collect();
        let pod = names.iter().find(|n| n.ends_with("-local-pod")).cloned().unwrap_or_default();
        eprintln!("sidecheck: kept the namespaces of this failing run: {}", names.join(" "));
        eprintln!(
            "  ip netns exec {pod} iptables-save        # the rules as installed (ip6tables-save, nft list ruleset)"
        );
        eprintln!("  ip netns exec {pod} ip addr               # addresses, routes: ip route, ip -6 route");
        eprintln!("  sidecheck clean                           # remove them when done");
    }
    drop(session);
    let mut report = Report::new(config.rules.describe(), backend, trials);
    report.families = families.iter().map(|f| f.name().to_string()).collect();
    report.set_profile(&config.profile);
    if args.show_rules {
        if let Some(r) = &ruleset {
            emit(&format!("rules as installed:\n{r}\n"))?;
        }
    }
    report.ruleset = ruleset;
    // stdout first: a file that cannot be written later must not cost it.
    emit(&render(&report, args.format, colour(args.color)))?;
    print_annotations(&report, &args.rules, args.format)?;
    for (format, file) in &args.output {
        std::fs::write(file, render(&report, *format, false))
            .with_context(|| format!("writing the {format:?} report to {}", file.display()))?;
    }
    // The report is out; the exit status says the run itself is not a verdict.
    if let Some(e) = report.trials.iter().find(|t| t.outcome == harness::verdict::Outcome::Error) {
        anyhow::bail!(
            "{} of {} trials could not be tested (ERROR), so this run is no verdict on the rules; the first, {}: {}",
            report.errors,
            report.trials.len(),
            e.name,
            e.message.lines().next().unwrap_or_default()
        );
    }
    Ok(report.all_passed())
}

/// `run --each LIST`: the rule sets LIST names, one after another in one
/// topology (started with the policy's reference rules, restricted to the
/// list's family), one JSON line each.
fn run_each(
    mut config: SessionConfig,
    cases: &[(scenario::Scenario, Family)],
    list: &std::path::Path,
) -> anyhow::Result<bool> {
    let text = harness::base::bounded::read_text(list, harness::base::bounded::RULES_MAX)
        .with_context(|| format!("reading --each {}", list.display()))?;
    let mut sets = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let where_ = format!("{}:{}", list.display(), n + 1);
        let (flag, path) =
            line.split_once(' ').with_context(|| format!("{where_}: `{line}` is not `rules PATH` or `rules6 PATH`"))?;
        let family = match flag {
            "rules" => Family::Ipv4,
            "rules6" => Family::Ipv6,
            _ => anyhow::bail!("{where_}: `{flag}`: write `rules PATH` or `rules6 PATH`"),
        };
        sets.push((family, PathBuf::from(path)));
    }
    let Some(&(family, _)) = sets.first() else { anyhow::bail!("--each {}: lists no rule set", list.display()) };
    if let Some((_, p)) = sets.iter().find(|(f, _)| *f != family) {
        anyhow::bail!(
            "--each {}: {} is for another family than the first: one family per list",
            list.display(),
            p.display()
        );
    }
    anyhow::ensure!(
        config.topology.families.contains(&family),
        "--each {}: the policy does not test {}",
        list.display(),
        family.name()
    );
    config.topology.families = vec![family];
    let cases: Vec<_> = cases.iter().filter(|(_, f)| *f == family).cloned().collect();
    let mut session = Session::start(config.clone()).context("setting up the test topology")?;
    let mut out = String::new();
    for (_, path) in sets {
        let (v4, v6) = match family {
            Family::Ipv4 => (Some(path.clone()), None),
            Family::Ipv6 => (None, Some(path.clone())),
        };
        let swapped = RuleSource::from_rule_files(v4, v6).and_then(|r| session.swap_rules(r, config.backend));
        let line = match swapped {
            Err(e) => serde_json::json!({"rules": path, "exit": 2, "failed": [], "error": format!("{e:#}")}),
            Ok(()) => {
                use harness::verdict::Outcome;
                let trials = session.run_cases(&cases, config.assert_paths);
                let named = |o: Outcome| -> Vec<&str> {
                    trials.iter().filter(|t| t.outcome == o).map(|t| t.name.as_str()).collect()
                };
                let (failed, errors) = (named(Outcome::Fail), named(Outcome::Error));
                // As `run` exits: an ERROR is no verdict on the rules (2), even beside failures.
                let exit = if !errors.is_empty() {
                    2
                } else if failed.is_empty() {
                    0
                } else {
                    1
                };
                let error = (!errors.is_empty()).then(|| {
                    let first = trials.iter().find(|t| t.outcome == Outcome::Error).map(|t| t.message.as_str());
                    format!("{} trial(s) could not be tested (ERROR): {}", errors.len(), first.unwrap_or_default())
                });
                serde_json::json!({"rules": path, "exit": exit, "failed": failed, "errors": errors, "error": error})
            }
        };
        out.push_str(&format!("{line}\n"));
    }
    emit(&out)?;
    Ok(true)
}

/// `--color` against the terminal and NO_COLOR / CLICOLOR_FORCE.
fn colour(arg: ColorArg) -> bool {
    use harness::report::ColorChoice;
    use std::io::IsTerminal;
    let choice = match arg {
        ColorArg::Auto => ColorChoice::Auto,
        ColorArg::Always => ColorChoice::Always,
        ColorArg::Never => ColorChoice::Never,
    };
    let var = |name| std::env::var(name).ok();
    choice.enabled(std::io::stdout().is_terminal(), var("NO_COLOR").as_deref(), var("CLICOLOR_FORCE").as_deref())
}

/// GitHub annotations: on stdout after the table with `--format github`;
/// in GitHub Actions with any other format, on stderr, which the runner
/// reads commands from too, so that stdout stays the report alone (a JSON
/// or JUnit report piped to a file stays valid).
fn print_annotations(report: &Report, rules: &RulesArgs, format: Format) -> anyhow::Result<()> {
    let in_actions = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    if format != Format::Github && !in_actions {
        return Ok(());
    }
    use harness::report::annotate::{annotations, FileKind, Locator};
    let mut locator = Locator::default();
    let workspace = std::env::var_os("GITHUB_WORKSPACE").map(PathBuf::from);
    let files = [
        (&rules.rules, FileKind::Restore { ipv6: false }),
        (&rules.rules6, FileKind::Restore { ipv6: true }),
        (&rules.nft, FileKind::Nft),
        (&rules.script, FileKind::Script),
    ];
    for (path, kind) in files {
        let Some(path) = path else { continue };
        // Unreadable now (it was read to install it): annotate without lines.
        let Ok(text) = harness::base::bounded::read_text(path, harness::base::bounded::RULES_MAX) else { continue };
        // GitHub wants the path from the repository root.
        let shown = workspace.as_deref().and_then(|w| path.strip_prefix(w).ok()).unwrap_or(path);
        locator.add(shown.display().to_string(), kind, &text);
    }
    let text = annotations(report, &locator);
    if format == Format::Github {
        emit(&text)
    } else {
        eprint!("{text}");
        Ok(())
    }
}

/// Writes to stdout. A reader that stopped early (`sidecheck list | head`)
/// is no error; any other failure is one to report, not a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn parse_from(from: &str) -> anyhow::Result<(Host, u32, u32)> {
    let (from, gid) = match from.splitn(3, ':').nth(2) {
        Some(g) => (
            &from[..from.len() - g.len() - 1],
            Some(g.parse::<u32>().with_context(|| format!("--from {from}: `{g}` is not a gid"))?),
        ),
        None => (from, None),
    };
    let (host, uid) = match from.split_once(':') {
        Some((h, u)) => {
            let n: u64 = u.parse().with_context(|| format!("--from {from}: `{u}` is not a uid"))?;
            (h, harness::model::validate::uid(n).map_err(|e| anyhow::anyhow!("--from {from}: {e}"))?)
        }
        None => (from, 1000),
    };
    let host = Host::parse(host).filter(|h| *h != Host::Node).with_context(|| {
        format!("--from {from}: `{host}` is not a pod; use local-pod, remote-pod, prometheus or istiod")
    })?;
    Ok((host, uid, gid.unwrap_or(uid)))
}

fn parse_to(to: &str, topo: &TopologyConfig) -> anyhow::Result<SocketAddr> {
    let (target, port) = to
        .rsplit_once(':')
        .with_context(|| format!("--to {to}: give TARGET:PORT, e.g. remote-pod:9090 or [fd00:10:244::20]:9090"))?;
    let port = harness::model::validate::target_port(to, target, port).map_err(|e| anyhow::anyhow!("--to {e}"))?;
    if let Ok(addr) = to.parse::<SocketAddr>() {
        harness::model::validate::destination(addr.ip()).map_err(|e| anyhow::anyhow!("--to {to}: {e}"))?;
        return Ok(addr);
    }
    let family = *topo.families.first().unwrap_or(&Family::Ipv4);
    let ip: IpAddr = if target == "localhost" {
        family.localhost()
    } else if let Some(h) = Host::parse(target) {
        topo.address_of(h, family)
    } else if let Some(s) = topo.service(target) {
        s.vip_of(family)
    } else {
        let ip: IpAddr = target.parse().with_context(|| {
            format!("--to {to}: `{target}` is not a host (local-pod, remote-pod, prometheus, istiod, node, localhost), a service ({}) or an address",
                topo.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "))
        })?;
        harness::model::validate::destination(ip).map_err(|e| anyhow::anyhow!("--to {to}: {e}"))?;
        ip
    };
    Ok(SocketAddr::new(ip, port))
}

fn trace(args: TraceArgs) -> anyhow::Result<bool> {
    let mut config = SessionConfig { rule_texts: true, ..args.rules.config()? };
    let (from, uid, gid) = parse_from(&args.from)?;
    let to = parse_to(&args.to, &config.topology)?;
    // Host names resolve in the first family tested; an address picks its own.
    let family = if to.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 };
    if !config.topology.families.contains(&family) {
        anyhow::bail!(
            "--to {}: an {} address, but this run tests only {:?}",
            args.to,
            family.name(),
            config.topology.families
        );
    }
    config.topology.families.retain(|f| *f == family || config.rules.families().len() > 1);
    Session::preflight(&config, &[])?;
    harness::require_root("sidecheck trace")?;
    let session = Session::start(config.clone()).context("setting up the test topology")?;
    let done = session.probe_one(from, uid, gid, to);
    let index = session.tracer().map(|t| t.index().clone()).unwrap_or_default();
    drop(session);
    let observed = harness::verdict::observe(&done.observation);
    let reached = observed.server.is_some();
    match args.format {
        TraceFormat::Json => {
            let v = serde_json::json!({
                "from": { "host": from.name(), "uid": uid, "gid": gid },
                "to": to.to_string(),
                "rules": config.rules.describe(),
                "backend": config.backend.name(),
                "observed": observed,
                "path": done.path,
            });
            emit(&(serde_json::to_string_pretty(&v)? + "\n"))?;
        }
        TraceFormat::Human => emit(&harness::report::trace_text(
            from.name(),
            uid,
            to,
            &config.rules.describe(),
            &observed,
            done.path.as_ref(),
            &index,
        ))?,
    }
    Ok(reached)
}

fn clean() -> anyhow::Result<bool> {
    harness::require_root("sidecheck clean")?;
    let swept = registry::sweep_stale();
    let kept = registry::sweep_kept();
    emit(&format!(
        "removed {} stale run(s) and {} kept run(s), {} namespace(s)\n",
        swept.runs,
        kept.runs,
        swept.namespaces + kept.namespaces
    ))?;
    Ok(true)
}

/// The reference run behind `--assert paths` on rules the user gave.
type ReferenceRun = std::thread::JoinHandle<harness::Result<harness::diff::SideRun>>;

/// `--assert paths` on rules the user gave: the contract's own rules (the
/// policy's reference rules, or the profile's rule set) run beside on the
/// same probes, and each connection must leave by the same kind of rule
/// (docs/decisions.md). The contract's own rules keep the exact path strings.
fn paths_reference(
    args: &RunArgs,
    config: &mut SessionConfig,
    scenarios: &[scenario::Scenario],
) -> anyhow::Result<Option<ReferenceRun>> {
    if args.assert != Assert::Paths {
        return Ok(None);
    }
    if !args.rules.given() {
        // A policy's matrix states no paths: its reference rules are the
        // reference, and decide as they decide.
        if args.policy.is_some() {
            config.assert_paths = false;
        }
        return Ok(None);
    }
    // The policy read as `plan` read it (its mesh, --profile, from-command).
    let policy_rules = match &args.policy {
        Some(file) => {
            let given = args.rules.config()?.profile;
            let (policy, _, _) =
                policy_for_run(file, args.rules.generator.as_deref(), args.rules.profile.is_some(), &given)?;
            Some(policy.reference_rules())
        }
        None => None,
    };
    let reference = harness::diff::reference_config(config, policy_rules)?;
    Session::preflight(&reference, scenarios).context("checking the reference rules for --assert paths")?;
    config.assert_paths = false;
    config.rule_texts = true;
    let scenarios = scenarios.to_vec();
    Ok(Some(std::thread::spawn(move || harness::diff::run_side(reference, &scenarios))))
}

fn judge_paths_by_reference(
    reference: ReferenceRun,
    session: &Session,
    trials: &mut [harness::verdict::TrialResult],
    scenarios: &[scenario::Scenario],
    rules: &RulesArgs,
) -> anyhow::Result<()> {
    let index = session.tracer().map(|t| t.index().clone()).unwrap_or_default();
    let mine: Vec<_> = trials.iter().map(|t| harness::verdict::decision::decisions(&t.observed.legs, &index)).collect();
    let reference = reference
        .join()
        .map_err(|_| anyhow::anyhow!("the reference run for --assert paths panicked"))?
        .context("running the reference rules for --assert paths")?;
    if let Some(e) = reference.harness_error() {
        anyhow::bail!("the reference rules ({}) could not be tested for --assert paths: {e}", reference.describe);
    }
    let mut config = session.config().clone();
    config.topology.families = session.families().to_vec();
    let probes = harness::diff::probes(scenarios, &config);
    harness::diff::judge_against(trials, &mine, &reference, &probes, &trace_rule_args(rules));
    Ok(())
}

/// Quote for a POSIX shell when needed.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-,:=+@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The run's rule source as `sidecheck trace` arguments.
fn trace_rule_args(r: &RulesArgs) -> String {
    let mut v: Vec<String> = Vec::new();
    let path = |p: &std::path::Path| sh_quote(&p.display().to_string());
    for (flag, p) in [("--rules", &r.rules), ("--rules6", &r.rules6), ("--nft", &r.nft), ("--script", &r.script)] {
        if let Some(p) = p {
            v.push(format!("{flag} {}", path(p)));
        }
    }
    if let Some(g) = &r.generator {
        v.push(format!("--generator {}", sh_quote(g)));
    }
    if let Some(profile) = r.profile.as_deref().filter(|p| *p != "istio") {
        v.push(format!("--profile {}", sh_quote(profile)));
    }
    if r.backend != Backend::Nft {
        v.push(format!("--backend {}", r.backend.name()));
    }
    if let Some(t) = &r.topology {
        v.push(format!("--topology {}", path(t)));
    }
    v.join(" ")
}

#[derive(Parser)]
struct DiffArgs {
    /// The first rule source: FILE (restore input, IPv4), FILE4,FILE6 (both
    /// families; ,FILE6 for IPv6 alone), nft:FILE, script:FILE, gen:COMMAND,
    /// builtin, builtin:classic, profile:NAME.
    #[arg(value_name = "A")]
    a: String,
    /// The second rule source, in the same forms.
    #[arg(value_name = "B")]
    b: String,
    /// A directory of scenario YAML files instead of the built-in ones.
    #[arg(long, value_name = "DIR")]
    scenarios: Option<PathBuf>,
    /// Probe a capture policy's boundary matrix instead.
    #[arg(long, value_name = "FILE", conflicts_with = "scenarios")]
    policy: Option<PathBuf>,
    /// The contract the probes' roles resolve in (default istio, or the
    /// profile a `profile:NAME` side names).
    #[arg(long, value_name = "NAME|FILE")]
    profile: Option<String>,
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Which iptables installs restore input (both sides).
    #[arg(long, value_enum, default_value = "nft")]
    backend: Backend,
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    rules_timeout: f64,
    /// `paths`: a connection differs when its ports or any deciding rule
    /// differ; `ports`: only when its ports or end differ.
    #[arg(long, value_enum, default_value = "paths")]
    assert: Assert,
    /// human, json, markdown or junit.
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Also write the report to a file, as FORMAT=FILE; repeatable.
    #[arg(long, value_name = "FORMAT=FILE", value_parser = parse_output)]
    output: Vec<(Format, PathBuf)>,
}

/// One side of `sidecheck diff`: the rule source and the profile it names.
fn diff_source(spec: &str) -> anyhow::Result<(RuleSource, Option<Profile>)> {
    let file = |p: &str| -> anyhow::Result<PathBuf> {
        anyhow::ensure!(!p.is_empty(), "`{spec}` names no file");
        Ok(PathBuf::from(p))
    };
    Ok(match spec.split_once(':') {
        Some(("nft", p)) => (RuleSource::NftFile(file(p)?), None),
        Some(("script", p)) => {
            (RuleSource::from_script_file(file(p)?).with_context(|| format!("reading `{spec}`"))?, None)
        }
        Some(("gen", c)) => (RuleSource::Generator(c.to_string()), None),
        Some(("builtin", "classic")) => (RuleSource::Builtin(IstioCapture::default_for(Shape::Classic)), None),
        Some(("builtin", "current")) => (RuleSource::Builtin(IstioCapture::default_for(Shape::Current)), None),
        Some(("builtin", other)) => anyhow::bail!(
            "`{spec}`: the built-in rules come as builtin, builtin:current or builtin:classic, not `{other}`"
        ),
        Some(("profile", name)) => {
            let p = Profile::load(name).with_context(|| format!("loading the profile of `{spec}`"))?;
            let rules = p
                .own_rules(Shape::Current)
                .with_context(|| format!("`{spec}`: profile {} has no rule set of its own", p.name))?;
            (rules, Some(p))
        }
        _ if spec == "builtin" => (RuleSource::Builtin(IstioCapture::default_for(Shape::Current)), None),
        // Restore input or Istio's dry-run output, read as --rules/--rules6 read it.
        _ => {
            let (v4, v6) = match spec.split_once(',') {
                Some((v4, v6)) => ((!v4.is_empty()).then(|| file(v4)).transpose()?, Some(file(v6)?)),
                None => (Some(file(spec)?), None),
            };
            (RuleSource::from_rule_files(v4, v6).with_context(|| format!("reading `{spec}`"))?, None)
        }
    })
}

fn diff(args: DiffArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        !args.output.iter().any(|(f, _)| matches!(f, Format::Summary | Format::Github))
            && !matches!(args.format, Format::Summary | Format::Github),
        "`summary` and `github` are formats of `run`; diff writes human, json, markdown or junit"
    );
    anyhow::ensure!(
        args.rules_timeout.is_finite() && args.rules_timeout > 0.0 && args.rules_timeout <= 3600.0,
        "--rules-timeout {}: give seconds between 0 and 3600",
        args.rules_timeout
    );
    let (ra, pa) = diff_source(&args.a).with_context(|| format!("reading rule source A `{}`", args.a))?;
    let (rb, pb) = diff_source(&args.b).with_context(|| format!("reading rule source B `{}`", args.b))?;
    let profile = match (&args.profile, &pa, &pb) {
        (Some(name), _, _) => Profile::load(name).with_context(|| format!("loading --profile {name}"))?,
        (None, Some(a), Some(b)) if a.name != b.name => anyhow::bail!(
            "A is profile {} and B profile {}: their probes differ; say which contract to probe with --profile",
            a.name,
            b.name
        ),
        (None, Some(p), _) | (None, None, Some(p)) => p.clone(),
        (None, None, None) => Profile::istio(),
    };
    let mut base = SessionConfig {
        profile,
        backend: args.backend,
        rules_timeout: std::time::Duration::from_secs_f64(args.rules_timeout),
        ..SessionConfig::default()
    };
    if let Some(file) = &args.topology {
        let name = file.display().to_string();
        harness::model::settings::Settings::load(file)?
            .apply(&name, &mut base)
            .with_context(|| format!("applying {name}"))?;
    }
    let scenarios = match (&args.scenarios, &args.policy) {
        (Some(dir), _) => {
            scenario::load_dir(dir).with_context(|| format!("loading scenarios from {}", dir.display()))?
        }
        (None, Some(file)) => {
            // As `run` reads it: the policy's mesh, or --profile's.
            let given = args.profile.is_some() || pa.is_some() || pb.is_some();
            let (policy, profile, label) = policy_for_run(file, None, given, &base.profile)?;
            policy.check_groups(&label)?;
            policy.configure(&mut base, false, &profile)
        }
        (None, None) => scenario::builtin().context("loading the built-in scenarios")?,
    };
    match args.family {
        Some(FamilyArg::Ipv4) => base.topology.families.retain(|f| *f == Family::Ipv4),
        Some(FamilyArg::Ipv6) => base.topology.families.retain(|f| *f == Family::Ipv6),
        Some(FamilyArg::Both) | None => {}
    }
    // Both sides run the families both have rules for.
    let (fa, fb) = (ra.families(), rb.families());
    base.topology.families.retain(|f| fa.contains(f) && fb.contains(f));
    if base.topology.families.is_empty() {
        anyhow::bail!(
            "A ({}) and B ({}) have rules for no IP family in common (that this run tests): give both families (FILE4,FILE6) or --family",
            ra.describe(),
            rb.describe()
        );
    }
    let a = SessionConfig { rules: ra, ..base.clone() };
    let b = SessionConfig { rules: rb, ..base.clone() };
    Session::preflight(&a, &scenarios).with_context(|| format!("checking A ({})", a.rules.describe()))?;
    Session::preflight(&b, &scenarios).with_context(|| format!("checking B ({})", b.rules.describe()))?;
    harness::require_root("sidecheck diff")?;
    let probes = harness::diff::probes(&scenarios, &base);
    let (sa, sb) = harness::diff::run_pair(a, b, &scenarios);
    let sa = sa.with_context(|| format!("setting up A `{}`", args.a))?;
    let sb = sb.with_context(|| format!("setting up B `{}`", args.b))?;
    for (side, run) in [("A", &sa), ("B", &sb)] {
        if let Some(e) = run.harness_error() {
            anyhow::bail!("side {side} ({}) could not be tested, so there is nothing to compare: {e}", run.describe);
        }
    }
    let report = harness::diff::compare(&sa, &sb, &probes, args.assert == Assert::Paths);
    let render = |f: Format| match f {
        Format::Json => report.to_json() + "\n",
        Format::Junit => report.to_junit(),
        Format::Markdown => report.to_markdown(),
        Format::Human | Format::Summary => report.to_human(),
        Format::Github => unreachable!("refused before the run"),
    };
    for (format, file) in &args.output {
        std::fs::write(file, render(*format))
            .with_context(|| format!("writing the {format:?} diff to {}", file.display()))?;
    }
    emit(&render(args.format))?;
    Ok(!report.differs())
}

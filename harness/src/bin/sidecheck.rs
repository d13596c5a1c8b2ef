//! sidecheck: the command line. Thin: parsing, then the harness library.
//! Exit 0 when every trial passed, 1 when any failed, 2 when it could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use harness::rules::{Backend, IstioCapture, RuleSource, Shape};
use harness::{registry, report::Report, scenario, Session, SessionConfig};

#[derive(Parser)]
#[command(name = "sidecheck", version, about = "Proves with real packets in network namespaces what sidecar capture rules do to each traffic flow")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the topology, install the rules, run every scenario's probe, report.
    Run(RunArgs),
    /// Remove what runs killed before they could clean up (namespaces, run files).
    Clean,
}

#[derive(Parser)]
struct RunArgs {
    /// An iptables-restore file to test instead of the built-in Istio rules.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Shape of the built-in rules (ignored with --rules).
    #[arg(long, value_enum, default_value = "current")]
    shape: Shape,
    /// Which iptables installs the rules.
    #[arg(long, value_enum, default_value = "nft")]
    backend: Backend,
    /// A directory of scenario YAML files, replacing the built-in set.
    #[arg(long, value_name = "DIR")]
    scenarios: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// What must match for a trial to pass; `paths` adds the rule path
    /// (chains and rule numbers) to the ports.
    #[arg(long, value_enum, default_value = "ports")]
    assert: Assert,
    /// Do not trace rule paths (ports are still checked).
    #[arg(long, conflicts_with = "assert")]
    no_trace: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Assert {
    Ports,
    Paths,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    if let Err(e) = registry::install_signal_cleanup() {
        eprintln!("sidecheck: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Clean => clean(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sidecheck: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<bool> {
    let scenarios = match &args.scenarios {
        Some(dir) => scenario::load_dir(dir).with_context(|| format!("loading scenarios from {}", dir.display()))?,
        None => scenario::builtin().context("loading the built-in scenarios")?,
    };
    let rules = match args.rules {
        Some(path) => RuleSource::RestoreFile(path),
        None => RuleSource::Builtin(IstioCapture::default_for(args.shape)),
    };
    let config = SessionConfig {
        rules,
        backend: args.backend,
        trace: !args.no_trace,
        assert_paths: args.assert == Assert::Paths,
        ..SessionConfig::default()
    };
    // Bad input is reported before anything is created.
    Session::preflight(&config, &scenarios)?;
    harness::require_root("sidecheck run")?;
    let session = Session::start(config.clone()).context("setting up the test topology")?;
    let trials = session.run(&scenarios);
    drop(session);
    let report = Report::new(config.rules.describe(), config.backend.name().into(), trials);
    match args.format {
        Format::Human => print!("{}", report.to_human()),
        Format::Json => println!("{}", report.to_json()),
    }
    Ok(report.all_passed())
}

fn clean() -> anyhow::Result<bool> {
    harness::require_root("sidecheck clean")?;
    let swept = registry::sweep_stale();
    println!("removed {} stale run(s), {} namespace(s)", swept.runs, swept.namespaces);
    Ok(true)
}

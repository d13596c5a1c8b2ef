//! sidecheck: the command line. Thin: parsing, then the harness library.
//! Exit 0 when every trial passed, 1 when any failed, 2 when it could not run.

mod args;
mod commands;
mod run;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use harness::base::net::Family;
use harness::rules::istio::IstioCapture;
use harness::sandbox::registry;

use args::{Cli, Command, RulesForm};

fn main() -> ExitCode {
    if let Err(e) = registry::install_signal_cleanup() {
        eprintln!("sidecheck: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Trace(args) => commands::trace(args),
        Command::Rules(args) if args.policy.is_some() => commands::print_policy_rules(&args),
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
        Command::Clean => commands::clean(),
        Command::List(args) => commands::list(args),
        Command::Diff(args) => commands::diff(args),
        Command::Policy(args) => commands::print_policy_from(&args),
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

/// What the library says on the way (not an error), as the CLI says things.
fn note(text: &str) {
    eprintln!("sidecheck: {text}");
}

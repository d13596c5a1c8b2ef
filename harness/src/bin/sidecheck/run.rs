//! `sidecheck run`: the library's plan, executed by the library's `run`
//! layer (with the reference run beside under `--assert paths`, or rule set
//! after rule set with `--each`), then the reports printed.

use std::path::PathBuf;

use anyhow::Context;
use harness::plan::Plan;
use harness::report::Report;
use harness::rules::source::Backend;
use harness::run::{Executed, Options};

use crate::args::{ColorArg, Format, RulesArgs, RunArgs};
use crate::emit;

pub fn render(report: &Report, format: Format, colour: bool) -> String {
    match format {
        Format::Human | Format::Github => report.to_human_coloured(colour),
        Format::Json => report.to_json() + "\n",
        Format::Junit => report.to_junit(),
        Format::Markdown => report.to_markdown(),
        Format::Summary => report.to_summary(),
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<bool> {
    // Where the reports go is checked before anything is built.
    for (format, file) in &args.output {
        harness::report::outputs::check_writable(file)
            .with_context(|| format!("--output {format:?}={}", file.display()))?;
    }
    let plan = Plan::build(&args.input(), &mut crate::note)?;
    if let Some(list) = &args.each {
        emit(&harness::run::each(plan, list)?)?;
        return Ok(true);
    }
    // What was actually tested, for the reports that carry it.
    let machine = matches!(args.format, Format::Json | Format::Markdown)
        || args.output.iter().any(|(f, _)| matches!(f, Format::Json | Format::Markdown));
    let options =
        Options { keep: args.keep, want_ruleset: machine || args.show_rules, replay: trace_rule_args(&args.rules) };
    let Executed { report, kept } = harness::run::execute(plan, &options)?;
    if let Some(names) = kept {
        let pod = names.iter().find(|n| n.ends_with("-local-pod")).cloned().unwrap_or_default();
        eprintln!("sidecheck: kept the namespaces of this failing run: {}", names.join(" "));
        eprintln!(
            "  ip netns exec {pod} iptables-save        # the rules as installed (ip6tables-save, nft list ruleset)"
        );
        eprintln!("  ip netns exec {pod} ip addr               # addresses, routes: ip route, ip -6 route");
        eprintln!("  sidecheck clean                           # remove them when done");
    }
    if args.show_rules {
        if let Some(r) = &report.ruleset {
            emit(&format!("rules as installed:\n{r}\n"))?;
        }
    }
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

//! `sidecheck run`: the library's plan, executed by a session (with the
//! reference run beside under `--assert paths`, or rule set after rule set
//! with `--each`), then the reports.

use std::path::PathBuf;

use anyhow::Context;
use harness::base::net::Family;
use harness::plan::each::Each;
use harness::plan::Plan;
use harness::rules::source::{Backend, RuleSource};
use harness::{model::scenario, report::Report, Session};

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
    // Bad input is reported before anything is created.
    plan.check_topology()?;
    Session::preflight(&plan.config, &plan.scenarios)?;
    harness::require_root("sidecheck run")?;
    let reference = paths_reference(&plan)?;
    plan.check_runs()?;
    if let Some(list) = &args.each {
        return run_each(plan, list);
    }
    let Plan { config, scenarios, cases, .. } = plan;
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
fn run_each(mut plan: Plan, list: &std::path::Path) -> anyhow::Result<bool> {
    let each = Each::load(list)?;
    each.restrict(list, &mut plan)?;
    let (config, cases, family) = (plan.config, plan.cases, each.family);
    let mut session = Session::start(config.clone()).context("setting up the test topology")?;
    let mut out = String::new();
    for path in each.files {
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

/// The reference run behind `--assert paths` on rules the user gave.
type ReferenceRun = std::thread::JoinHandle<harness::Result<harness::diff::SideRun>>;

/// The plan's reference for `--assert paths`, started beside: the
/// contract's own rules (the policy's reference rules, or the profile's
/// rule set) on the same probes. They keep the exact path strings.
fn paths_reference(plan: &Plan) -> anyhow::Result<Option<ReferenceRun>> {
    let Some(policy_rules) = plan.reference.clone() else { return Ok(None) };
    let reference = harness::diff::reference_config(&plan.config, policy_rules)?;
    Session::preflight(&reference, &plan.scenarios).context("checking the reference rules for --assert paths")?;
    let scenarios = plan.scenarios.clone();
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

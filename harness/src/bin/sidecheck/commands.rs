//! The commands other than `run`: list, trace, clean, diff, policy, rules.

use anyhow::Context;
use harness::base::net::Family;
use harness::model::profile::Profile;
use harness::plan::diff::DiffPlan;
use harness::plan::trace::TracePlan;
use harness::plan::Plan;
use harness::policy::Policy;
use harness::run::trace::Traced;
use harness::sandbox::registry;

use crate::args::{
    Assert, DiffArgs, Format, ListArgs, ListFormat, PolicyArgs, RulesForm, RulesPrintArgs, TraceArgs, TraceFormat,
};
use crate::emit;

/// `sidecheck policy --from -- CMD`: print the policy, once it loads.
pub fn print_policy_from(args: &PolicyArgs) -> anyhow::Result<bool> {
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

pub fn print_policy_rules(args: &RulesPrintArgs) -> anyhow::Result<bool> {
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

pub fn list(args: ListArgs) -> anyhow::Result<bool> {
    let plan = Plan::build(&args.input(), &mut crate::note)?;
    let (config, scenarios, cases) = (&plan.config, &plan.scenarios, &plan.cases);
    let backend = config.backend_name();
    let names = plan.trial_names();
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

pub fn trace(args: TraceArgs) -> anyhow::Result<bool> {
    let plan = TracePlan::build(&args.rules.input(), &args.from, &args.to, &mut crate::note)?;
    let Traced { observed, path, index } = harness::run::trace::execute(&plan)?;
    let TracePlan { config, from, uid, gid, to } = plan;
    let reached = observed.server.is_some();
    match args.format {
        TraceFormat::Json => {
            let v = serde_json::json!({
                "from": { "host": from.name(), "uid": uid, "gid": gid },
                "to": to.to_string(),
                "rules": config.rules.describe(),
                "backend": config.backend.name(),
                "observed": observed,
                "path": path,
            });
            emit(&(serde_json::to_string_pretty(&v)? + "\n"))?;
        }
        TraceFormat::Human => emit(&harness::report::trace_text(
            from.name(),
            uid,
            to,
            &config.rules.describe(),
            &observed,
            path.as_ref(),
            &index,
        ))?,
    }
    Ok(reached)
}

pub fn clean() -> anyhow::Result<bool> {
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

pub fn diff(args: DiffArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        !args.output.iter().any(|(f, _)| matches!(f, Format::Summary | Format::Github))
            && !matches!(args.format, Format::Summary | Format::Github),
        "`summary` and `github` are formats of `run`; diff writes human, json, markdown or junit"
    );
    let plan = DiffPlan::build(&args.input())?;
    let report = harness::run::diff::execute(plan, &args.a, &args.b, args.assert == Assert::Paths)?;
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

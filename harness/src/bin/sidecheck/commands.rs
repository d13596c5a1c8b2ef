//! The commands other than `run`: list, trace, clean, diff, policy, rules.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use harness::base::net::Family;
use harness::model::profile::Profile;
use harness::model::topology::{Host, TopologyConfig};
use harness::plan::settings::TopologyFile;
use harness::plan::Plan;
use harness::policy::Policy;
use harness::rules::istio::{IstioCapture, Shape};
use harness::rules::source::RuleSource;
use harness::{sandbox::registry, Session, SessionConfig};

use crate::args::{
    Assert, DiffArgs, FamilyArg, Format, ListArgs, ListFormat, PolicyArgs, RulesForm, RulesPrintArgs, TraceArgs,
    TraceFormat,
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

pub fn trace(args: TraceArgs) -> anyhow::Result<bool> {
    let (config, topology_file) = args.rules.input().config(&mut crate::note)?;
    let mut config = SessionConfig { rule_texts: true, ..config };
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
    if let Some(file) = &topology_file {
        file.check(&config.topology)?;
    }
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
            let rules = match p.name.as_str() {
                "istio" => RuleSource::Builtin(IstioCapture::default_for(Shape::Current)),
                _ => p.rules().with_context(|| format!("`{spec}`: profile {} has no rule set of its own", p.name))?,
            };
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

pub fn diff(args: DiffArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        !args.output.iter().any(|(f, _)| matches!(f, Format::Summary | Format::Github))
            && !matches!(args.format, Format::Summary | Format::Github),
        "`summary` and `github` are formats of `run`; diff writes human, json, markdown or junit"
    );
    harness::plan::input::rules_timeout(args.rules_timeout)?;
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
    let topology_file = match &args.topology {
        Some(file) => Some(TopologyFile::apply(file, &mut base)?),
        None => None,
    };
    // A policy as `run` reads it: the policy's mesh, or --profile's.
    let given = args.profile.is_some() || pa.is_some() || pb.is_some();
    let (scenarios, _) = crate::args::probes(&args.scenarios, &args.policy).load(&mut base, None, given, false)?;
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
    if let Some(file) = &topology_file {
        file.check(&base.topology)?;
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

//! Plan building, without root: what each input gives the session.

use std::path::{Path, PathBuf};

use super::*;
use crate::model::profile::Profile;
use crate::model::topology::TopologyConfig;
use crate::policy::Policy;

/// A scratch directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sidecheck-plan-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn build(input: &Input) -> Result<Plan> {
    Plan::build(input, &mut |n| panic!("unexpected note: {n}"))
}

fn policy_input(file: PathBuf) -> Input {
    Input { probes: Probes::Policy(file), ..Input::default() }
}

const RESTORE4: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

#[test]
fn a_policy_file_plans_its_matrix_under_its_mesh() {
    let dir = scratch("policy");
    let text = "inbound_ports: [4000, 5000]\n";
    let file = write(&dir, "p.yaml", text);
    let plan = build(&policy_input(file.clone())).unwrap();
    // The matrix as the policy module draws it for the default topology.
    let profile = Profile::istio();
    let policy = Policy::parse_for("p.yaml", text, &profile).unwrap();
    let mut topo = TopologyConfig::default();
    topo.families.retain(|f| policy.families().contains(f));
    let matrix = policy.run_plan(&topo, &policy.profile_on(&profile));
    assert!(!matrix.scenarios.is_empty());
    assert_eq!(plan.scenarios.len(), matrix.scenarios.len());
    assert!(plan.scenarios.iter().all(|s| s.name.starts_with("policy::")), "{:?}", plan.scenarios[0].name);
    // No `ipv6: true`: IPv4 only, and every case in it.
    assert_eq!(plan.config.topology.families, [Family::Ipv4]);
    assert_eq!(plan.cases.len(), plan.scenarios.len());
    assert!(plan.cases.iter().all(|(_, f)| *f == Family::Ipv4));
    // The app serves the inbound ports the matrix probes.
    for port in [4000, 5000] {
        assert!(plan.config.local_app_ports.contains(&port), "{:?}", plan.config.local_app_ports);
    }
    assert_eq!(plan.config.local_app_ports, matrix.local_app_ports);
    // No rule source given: the policy's reference rules are tested.
    assert!(matches!(&plan.config.rules, RuleSource::Text { label, .. } if label == "reference"));
    assert!(plan.reference.is_none());

    let six = write(&dir, "p6.yaml", "ipv6: true\ninbound_ports: [4000]\n");
    let plan = build(&policy_input(six)).unwrap();
    assert_eq!(plan.config.topology.families, Family::BOTH);
    assert!(plan.cases.iter().any(|(_, f)| *f == Family::Ipv6));

    // A rule source given: it is tested, against the policy's matrix.
    let rules = write(&dir, "r.rules", RESTORE4);
    let mut input = policy_input(file);
    input.rules.rules = Some(rules.clone());
    let plan = build(&input).unwrap();
    assert!(matches!(&plan.config.rules, RuleSource::RestoreFiles { v4: Some(p), v6: None } if *p == rules));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn topology_settings_land_in_the_plan() {
    let dir = scratch("topology");
    let settings = "families: [ipv6]\nservice_cidr: 10.100.0.0/16\nservices:\n  - { name: api, vip: 10.100.0.5, port: 80, endpoint: remote-pod, target_port: 9090 }\nlocal_app_ports: [8080, 8081]\nremote_app_ports: [9090, 9091]\n";
    let file = write(&dir, "t.yaml", settings);
    let mut input = Input::default();
    input.rules.topology = Some(file);
    let plan = build(&input).unwrap();
    let t = &plan.config.topology;
    assert_eq!(t.families, [Family::Ipv6]);
    assert_eq!(t.service_cidr.to_string(), "10.100.0.0/16");
    assert_eq!(t.services.len(), 1);
    assert_eq!((t.services[0].name.as_str(), t.services[0].target_port), ("api", 9090));
    assert_eq!(plan.config.local_app_ports, [8080, 8081]);
    assert_eq!(plan.config.remote_app_ports, [9090, 9091]);
    // The built-in scenarios, in the one family the settings leave.
    assert!(!plan.cases.is_empty());
    assert!(plan.cases.iter().all(|(_, f)| *f == Family::Ipv6));
    // `--family` after the settings: ipv4 replaces their ipv6.
    input.rules.family = Some(Families::Ipv4);
    let plan = build(&input).unwrap();
    assert_eq!(plan.config.topology.families, [Family::Ipv4]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_combinations_are_refused_as_the_command_line_refused_them() {
    let dir = scratch("bad");
    let rules = write(&dir, "r.rules", RESTORE4);
    let err = |input: &Input| build(input).unwrap_err().to_string();

    let mut input = Input::default();
    input.rules.rules = Some(rules.clone());
    input.rules.family = Some(Families::Ipv6);
    assert_eq!(err(&input), "--family asks for ipv6 but no rules were given for it: add --rules6 / --rules");
    // `both` asks for both: the IPv4 file alone does not cover them.
    input.rules.family = Some(Families::Both);
    assert_eq!(err(&input), "--family asks for ipv6 but no rules were given for it: add --rules6 / --rules");
    // No --family: the families the rules cover, no error.
    input.rules.family = None;
    build(&input).unwrap();

    let input = policy_input("from-command".into());
    assert!(err(&input).starts_with("--policy from-command derives the policy from the generator's command line: give it with --generator 'CMD'"), "{}", err(&input));

    for bad in [0.0, -1.0, f64::NAN, 3600.5] {
        let mut input = Input::default();
        input.rules.rules_timeout = bad;
        assert_eq!(err(&input), format!("--rules-timeout {bad}: give seconds between 0 and 3600"));
    }

    let mut input = Input::default();
    input.rules.profile = Some("no-such-mesh".into());
    assert!(err(&input).starts_with("loading --profile no-such-mesh: "), "{}", err(&input));

    let missing = dir.join("nothing-here");
    let input = Input { probes: Probes::Dir(missing.clone()), ..Input::default() };
    assert!(err(&input).starts_with(&format!("loading scenarios from {}: ", missing.display())), "{}", err(&input));

    let topo = write(&dir, "t.yaml", "pod_cidr: 10.0.0.0/99\n");
    let mut input = Input::default();
    input.rules.topology = Some(topo.clone());
    let name = topo.display();
    assert_eq!(err(&input), format!("applying {name}: {name}: pod_cidr: `10.0.0.0/99` is not ADDRESS/PREFIX"));

    let input = Input { test: vec!["no-such-trial".into()], ..Input::default() };
    assert!(err(&input).starts_with("no trial matches"), "{}", err(&input));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn repeats_and_the_selection_are_named_as_the_session_names_them() {
    let input = Input { repeat: 2, test: vec!["type1".into()], ..Input::default() };
    let plan = build(&input).unwrap();
    let names = plan.trial_names();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| n.contains("type1")), "{names:?}");
    for suffix in ["#1::nft::ipv4", "#2::nft::ipv4", "#1::nft::ipv6", "#2::nft::ipv6"] {
        assert!(names.iter().any(|n| n.ends_with(suffix)), "{suffix} in {names:?}");
    }
    // Only the selected scenarios are planned (and so checked and probed).
    assert_eq!(plan.scenarios.len() * 2, plan.cases.len());
    assert!(plan.scenarios.iter().all(|s| s.name.contains("type1")));
    plan.check_runs().unwrap();
}

#[test]
fn assert_paths_plans_a_reference_only_beside_rules_the_user_gave() {
    let dir = scratch("reference");
    let rules = write(&dir, "r.rules", RESTORE4);
    let policy = write(&dir, "p.yaml", "inbound_ports: [4000]\n");
    let paths = |probes: Probes, rules: Option<PathBuf>| {
        let mut input = Input { probes, assert_paths: true, ..Input::default() };
        input.rules.rules = rules;
        build(&input).unwrap()
    };
    // The built-in rules on the built-in scenarios: their paths are asserted.
    let plan = paths(Probes::Builtin, None);
    assert!(plan.config.assert_paths && plan.reference.is_none());
    // A policy's reference rules: its matrix states no paths.
    let plan = paths(Probes::Policy(policy.clone()), None);
    assert!(!plan.config.assert_paths && plan.reference.is_none());
    // Given rules on the built-in scenarios: the profile's rules are the reference.
    let plan = paths(Probes::Builtin, Some(rules.clone()));
    assert!(!plan.config.assert_paths && plan.config.rule_texts);
    assert!(matches!(plan.reference, Some(None)));
    // Given rules on a policy: its reference rules are.
    let plan = paths(Probes::Policy(policy), Some(rules));
    assert!(matches!(&plan.reference, Some(Some(RuleSource::Text { label, .. })) if label == "reference"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restore_file_given_as_a_script_is_noted() {
    let dir = scratch("note");
    let script = write(&dir, "s.sh", RESTORE4);
    let mut input = Input::default();
    input.rules.script = Some(script.clone());
    let mut notes = Vec::new();
    let plan = Plan::build(&input, &mut |n| notes.push(n.to_string())).unwrap();
    assert!(matches!(plan.config.rules, RuleSource::RestoreFiles { .. }));
    assert_eq!(notes.len(), 1);
    assert!(notes[0].starts_with(&format!("{} is restore input", script.display())), "{notes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_lists_rule_sets_of_one_family() {
    let list = Path::new("l.txt");
    let each = each::Each::parse(list, "rules a.rules\n\nrules b.rules\n").unwrap();
    assert_eq!(each, each::Each { family: Family::Ipv4, files: vec!["a.rules".into(), "b.rules".into()] });
    for (text, says) in [
        ("rules a\nrules6 b\n", "--each l.txt: b is for another family than the first: one family per list"),
        ("\n\n", "--each l.txt: lists no rule set"),
        ("rules a\nrulez b\n", "l.txt:2: `rulez`: write `rules PATH` or `rules6 PATH`"),
        ("rules\n", "l.txt:1: `rules` is not `rules PATH` or `rules6 PATH`"),
    ] {
        assert_eq!(each::Each::parse(list, text).unwrap_err().to_string(), says, "{text:?}");
    }
    // Restricted to IPv6, a plan of both families keeps its IPv6 cases only.
    let mut plan = build(&Input::default()).unwrap();
    let six = plan.cases.iter().filter(|(_, f)| *f == Family::Ipv6).count();
    let each6 = each::Each { family: Family::Ipv6, files: vec![] };
    each6.restrict(list, &mut plan).unwrap();
    assert_eq!(plan.config.topology.families, [Family::Ipv6]);
    assert_eq!(plan.cases.len(), six);
    let mut plan4 =
        build(&Input { rules: RuleInput { family: Some(Families::Ipv4), ..RuleInput::default() }, ..Input::default() })
            .unwrap();
    assert_eq!(
        each6.restrict(list, &mut plan4).unwrap_err().to_string(),
        "--each l.txt: the policy does not test ipv6"
    );
}

#[test]
fn a_topology_setting_the_run_cannot_use_is_refused_at_its_line() {
    let dir = scratch("located");
    let file = write(
        &dir,
        "t.yaml",
        "families: [ipv4]\nservices:\n  - { name: local-app, vip: 192.168.9.10, port: 8080, endpoint: local-pod }\n",
    );
    let mut input = Input::default();
    input.rules.topology = Some(file.clone());
    // `list` does not check the topology (the session does, and runs this first).
    let plan = build(&input).unwrap();
    let e = plan.check_topology().unwrap_err().to_string();
    assert_eq!(e, format!("{}:3: service local-app: VIP 192.168.9.10 is outside the service CIDR 10.96.0.0/12: pick a VIP inside it, or widen the CIDR", file.display()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trace_resolves_its_ends_in_the_topology() {
    use crate::model::topology::Host;
    use trace::TracePlan;
    let plan = |from: &str, to: &str, rules: &RuleInput| TracePlan::build(rules, from, to, &mut |_| {});
    let topo = TopologyConfig::default();
    let t = plan("prometheus:65534:7", "remote-pod:9090", &RuleInput::default()).unwrap();
    assert_eq!((t.from, t.uid, t.gid), (Host::Prometheus, 65534, 7));
    assert_eq!(t.to, std::net::SocketAddr::new(topo.address_of(Host::RemotePod, Family::Ipv4), 9090));
    assert!(t.config.rule_texts);
    let svc = &topo.services[0];
    let t = plan("local-pod", &format!("{}:80", svc.name), &RuleInput::default()).unwrap();
    assert_eq!((t.uid, t.gid, t.to.ip()), (1000, 1000, svc.vip_of(Family::Ipv4)));
    // The built-in rules cover both families, so both stay; a run of IPv4 alone cannot reach IPv6.
    let t = plan("local-pod", "[fd00:10:244::20]:9090", &RuleInput::default()).unwrap();
    assert_eq!(t.config.topology.families, Family::BOTH);
    let dir = scratch("trace");
    let v4 = RuleInput {
        rules: Some(write(&dir, "r.rules", RESTORE4)),
        family: Some(Families::Ipv4),
        ..RuleInput::default()
    };
    let e = plan("local-pod", "[fd00:10:244::20]:9090", &v4).unwrap_err().to_string();
    assert_eq!(e, "--to [fd00:10:244::20]:9090: an ipv6 address, but this run tests only [Ipv4]");
    for (from, to, says) in [
        ("local-pod:x", "remote-pod:9090", "--from local-pod:x: `x` is not a uid: invalid digit found in string"),
        (
            "node",
            "remote-pod:9090",
            "--from node: `node` is not a pod; use local-pod, remote-pod, prometheus or istiod",
        ),
        (
            "local-pod",
            "remote-pod",
            "--to remote-pod: give TARGET:PORT, e.g. remote-pod:9090 or [fd00:10:244::20]:9090",
        ),
        ("local-pod", "nowhere:80", "--to nowhere:80: `nowhere` is not a host"),
    ] {
        let e = plan(from, to, &RuleInput::default()).unwrap_err().to_string();
        assert!(e.starts_with(says), "{from} {to}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diff_plans_two_sides_alike_but_for_their_rules() {
    use crate::rules::istio::Shape;
    use diff::{DiffInput, DiffPlan};
    let input = |a: &str, b: &str| DiffInput {
        a: a.into(),
        b: b.into(),
        probes: Probes::Builtin,
        profile: None,
        family: None,
        topology: None,
        backend: crate::rules::source::Backend::Nft,
        rules_timeout: 30.0,
    };
    let p = DiffPlan::build(&input("builtin", "builtin:classic")).unwrap();
    assert!(matches!(&p.a.rules, RuleSource::Builtin(c) if c.shape == Shape::Current));
    assert!(matches!(&p.b.rules, RuleSource::Builtin(c) if c.shape == Shape::Classic));
    assert_eq!(p.a.topology.families, p.b.topology.families);
    assert_eq!(p.base.profile.name, "istio");
    assert!(!p.scenarios.is_empty());
    // A profile side names the contract; two different ones need --profile.
    let p = DiffPlan::build(&input("profile:kuma", "builtin")).unwrap();
    assert_eq!((p.a.profile.name.as_str(), p.b.profile.name.as_str()), ("kuma", "kuma"));
    let e = DiffPlan::build(&input("profile:kuma", "profile:linkerd")).unwrap_err().to_string();
    assert!(e.starts_with("A is profile kuma and B profile linkerd: their probes differ"), "{e}");
    let e = DiffPlan::build(&input("builtin:newest", "builtin")).unwrap_err().to_string();
    assert!(
        e.starts_with("reading rule source A `builtin:newest`: `builtin:newest`: the built-in rules come as"),
        "{e}"
    );
    // An IPv4 file and an IPv6 file share no family.
    let dir = scratch("diff");
    let (v4, v6) = (write(&dir, "a.rules", RESTORE4), write(&dir, "b.rules", RESTORE4));
    let e = DiffPlan::build(&input(v4.to_str().unwrap(), &format!(",{}", v6.display()))).unwrap_err().to_string();
    assert!(e.contains("have rules for no IP family in common"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

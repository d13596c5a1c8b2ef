//! The conformance suite: real packets through real rules.
//!
//! - `istio::<scenario>`: every built-in scenario against the built-in Istio
//!   rules (current shape, iptables-nft); `istio-classic::` the classic
//!   nine-rule shape; `istio-legacy::` the current shape through
//!   iptables-legacy. One topology per rule set, shared by its trials.
//! - `<profile>::<scenario>`: every other built-in profile's own rule set
//!   under that profile; a trial testdata/findings.yaml lists must FAIL.
//! - `broken::<name>`: a deliberately broken rule set (testdata/breakages/);
//!   the trial passes only if exactly the flows that breakage affects fail.
//!   A harness that passes broken rules is the worst bug it can have.
//! - `hermetic::<name>`: a run leaves the host as it found it.
//!
//! The flows and meshes are whatever scenarios/ holds (tests/common/expect.rs).
//! Needs root ("run as root: sudo cargo test" otherwise); `cargo test` runs it
//! through ci/as-root, which uses sudo when needed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use harness::model::scenario::{self, Scenario};
use harness::rules::istio::{IstioCapture, Shape};
use harness::rules::source::{Backend, RuleSource};
use harness::verdict::Outcome;
use harness::{sandbox::registry, Session, SessionConfig};
use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::expect::{self, full, profile, short, Breakage};

/// A session started by the first trial that needs it, and closed after all
/// trials ran (so its namespaces are gone before the process exits).
struct Shared {
    config: SessionConfig,
    session: Mutex<Option<Result<Arc<Session>, String>>>,
}

impl Shared {
    fn new(config: SessionConfig) -> Arc<Shared> {
        Arc::new(Shared { config, session: Mutex::new(None) })
    }

    fn get(&self) -> Result<Arc<Session>, Failed> {
        let mut slot = self.session.lock().unwrap();
        let entry =
            slot.get_or_insert_with(|| Session::start(self.config.clone()).map(Arc::new).map_err(|e| e.to_string()));
        entry.clone().map_err(Failed::from)
    }

    fn close(&self) {
        self.session.lock().unwrap().take();
    }
}

/// The built-in rules: ports and rule paths both asserted.
fn builtin(shape: Shape, backend: Backend) -> SessionConfig {
    SessionConfig {
        rules: RuleSource::Builtin(IstioCapture::default_for(shape)),
        backend,
        assert_paths: true,
        ..SessionConfig::default()
    }
}

/// One trial per scenario and family: `<prefix>::<scenario>::<backend>::<family>`.
/// A trial in `findings` (`<scenario>::<family>` -> why) passes only when
/// its flow FAILs: the rules' own design (findings.yaml).
fn scenario_trials(
    prefix: &str,
    shared: &Arc<Shared>,
    scenarios: &[Scenario],
    findings: &BTreeMap<String, String>,
) -> Vec<Trial> {
    let backend = shared.config.backend.name();
    scenarios
        .iter()
        .flat_map(|s| s.families(&shared.config.topology.families).into_iter().map(move |f| (s.clone(), f)))
        .map(|(s, family)| {
            let name =
                format!("{}::{backend}::{}", s.name.replacen("istio::", &format!("{prefix}::"), 1), family.name());
            let finding = findings.get(&short(&name)).cloned();
            let shared = shared.clone();
            Trial::test(name, move || {
                let session = shared.get()?;
                let assert = session.config().assert_paths;
                let result = session.run_cases(&[(s, family)], assert).remove(0);
                match (result.outcome, finding) {
                    (Outcome::Pass, None) => Ok(()),
                    // By design means the connection goes elsewhere, not
                    // that only its path (or a missing expect.path) differs.
                    (Outcome::Fail, Some(why)) if result.message.starts_with("ports as expected") => Err(format!(
                        "findings.yaml says these rules fail it ({why}), but only its path differs: {}",
                        result.message
                    )
                    .into()),
                    (Outcome::Fail, Some(_)) => Ok(()),
                    (Outcome::Fail, None) => Err(result.message.into()),
                    (Outcome::Pass, Some(why)) => {
                        Err(format!("passed, but findings.yaml says these rules fail it: {why}").into())
                    }
                    (Outcome::Error, _) => {
                        Err(format!("ERROR (the harness, not the rules): {}", result.message).into())
                    }
                }
            })
        })
        .collect()
}

/// `broken::<name>`: each breakage (testdata/breakages/) fails exactly the
/// trials it lists. A harness that passes broken rules is the worst bug it
/// can have.
fn broken_trials(scenarios: &[Scenario], breakages: &[Breakage]) -> Vec<Trial> {
    breakages
        .iter()
        .map(|b| {
            let (scenarios, b) = (scenarios.to_vec(), b.clone());
            Trial::test(b.trial("broken"), move || {
                let (v4, v6) = b.rule_set();
                let session = if profile(&b.profile).rules().is_none() {
                    // The built-in rules through files: the --rules path end to end.
                    let path = |f: &str| {
                        std::env::temp_dir().join(format!("sidecheck-broken-{}-{}.{f}", std::process::id(), b.name))
                    };
                    let (f4, f6) = (path("rules"), path("rules6"));
                    let write = |file: &std::path::Path, text: Option<String>| -> Result<_, Failed> {
                        let Some(text) = text else { return Ok(None) };
                        std::fs::write(file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
                        Ok(Some(file.to_path_buf()))
                    };
                    let rules = RuleSource::RestoreFiles { v4: write(&f4, v4)?, v6: write(&f6, v6)? };
                    let session = Session::start(SessionConfig { rules, ..SessionConfig::default() });
                    let _ = (std::fs::remove_file(&f4), std::fs::remove_file(&f6));
                    session
                } else {
                    let rules = RuleSource::Text {
                        label: format!("{}-broken", b.profile),
                        what: format!("the {} profile's rules, broken: {}", b.profile, b.name),
                        v4,
                        v6,
                    };
                    Session::start(SessionConfig { rules, profile: profile(&b.profile), ..SessionConfig::default() })
                };
                let results = session.map_err(|e| e.to_string())?.run(&scenarios);
                // Every flow in every family the broken rules are for ran.
                let want_trials = scenarios.iter().map(|s| s.families(&b.families()).len()).sum::<usize>();
                if results.len() != want_trials {
                    return Err(format!(
                        "expected {want_trials} trials ({} scenarios in {:?}), got {}",
                        scenarios.len(),
                        b.families(),
                        results.len()
                    )
                    .into());
                }
                // An ERROR is no verdict: it must not count as failing, nor pass unseen.
                if let Some(e) = results.iter().find(|r| r.outcome == Outcome::Error) {
                    return Err(format!("{} could not be tested (ERROR): {}", e.name, e.message).into());
                }
                let failed: BTreeSet<String> =
                    results.iter().filter(|r| r.outcome == Outcome::Fail).map(|r| short(&r.name)).collect();
                if failed == b.fails {
                    return Ok(());
                }
                let details: Vec<String> =
                    results.iter().map(|r| format!("  {:?} {}: {}", r.outcome, r.name, r.message)).collect();
                Err(format!(
                    "{} ({}, {}): expected exactly {:?} to fail, but {failed:?} failed\n{}",
                    b.name,
                    b.why,
                    b.file.display(),
                    b.fails,
                    details.join("\n")
                )
                .into())
            })
        })
        .collect()
}

/// Trials about rule paths rather than ports.
fn path_trials(scenarios: &[Scenario], path_breakages: &[Breakage], no_proxy_return: Breakage) -> Vec<Trial> {
    let for_gid = scenarios.to_vec();
    let for_snapshot = scenarios.to_vec();
    let for_swap = scenarios.to_vec();
    // A rule set every port survives but the path does not: without
    // --assert paths every trial passes; with it exactly the listed ones
    // fail, each saying the ports were right and what differs.
    let mut trials: Vec<Trial> = path_breakages
        .iter()
        .map(|b| {
            let (for_gid, b) = (for_gid.clone(), b.clone());
            Trial::test(b.trial("paths"), move || {
                let file = std::env::temp_dir().join(format!("sidecheck-paths-{}.rules", std::process::id()));
                std::fs::write(&file, b.broken_rules()).map_err(|e| e.to_string())?;
                let session = Session::start(SessionConfig {
                    rules: RuleSource::restore(file.clone()),
                    ..SessionConfig::default()
                });
                let _ = std::fs::remove_file(&file);
                let session = session?;
                let loose = session.run_with(&for_gid, false);
                if let Some(r) = loose.iter().find(|r| r.outcome == Outcome::Fail) {
                    return Err(
                        format!("without --assert paths every trial must pass, but {}: {}", r.name, r.message).into()
                    );
                }
                let strict = session.run_with(&for_gid, true);
                let backend = session.config().backend.name();
                let want: Vec<(String, &str)> =
                    b.path_fails.iter().map(|(t, says)| (full(t, backend), says.as_str())).collect();
                let failed: Vec<&str> =
                    strict.iter().filter(|r| r.outcome == Outcome::Fail).map(|r| r.name.as_str()).collect();
                let want_names: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
                if failed != want_names {
                    return Err(
                        format!("with --assert paths expected exactly {want_names:?} to fail, got {failed:?}").into()
                    );
                }
                for (name, says) in want {
                    let r = strict.iter().find(|r| r.name == name).unwrap();
                    if !r.message.contains("ports as expected") || !r.message.contains(says) {
                        return Err(format!(
                            "{name}: the message should say the ports were right and `{says}`:\n{}",
                            r.message
                        )
                        .into());
                    }
                }
                Ok(())
            })
        })
        .collect();
    trials.extend([
        // Tracing must not add rules to, or renumber, the tables under test.
        Trial::test("paths::tracing-leaves-the-rules-untouched", move || {
            for backend in harness::netfilter::all().iter().map(|f| f.backend()) {
                let plain = Session::start(SessionConfig { trace: false, backend, ..SessionConfig::default() })?;
                let before = plain.ruleset_snapshot()?;
                drop(plain);
                let traced = Session::start(SessionConfig { backend, ..SessionConfig::default() })?;
                let results = traced.run(&for_snapshot);
                if results.iter().any(|r| r.observed.path.is_none()) {
                    return Err("a traced run produced no path".into());
                }
                let after = traced.ruleset_snapshot()?;
                if before != after {
                    return Err(format!("{backend:?}: the rules under test differ once traced:\n--- untraced\n{before}\n--- traced, after probes\n{after}").into());
                }
            }
            Ok(())
        }),
        // One topology, rule sets swapped in turn: each judged as if it had
        // its own session, and nothing of the previous one left behind.
        Trial::test("paths::rules-swapped-in-one-topology", move || {
            let text = |label: &str, v4: String| RuleSource::Text {
                label: label.into(),
                what: format!("{label} rules"),
                v4: Some(v4),
                v6: None,
            };
            let good = IstioCapture::default_for(Shape::Current).to_restore();
            let broken = &no_proxy_return;
            let config = SessionConfig { rules: text("good", good.clone()), ..SessionConfig::default() };
            let mut session = Session::start(config)?;
            let fails = |results: &[harness::verdict::TrialResult]| -> BTreeSet<String> {
                results.iter().filter(|r| r.outcome != Outcome::Pass).map(|r| short(&r.name)).collect()
            };
            let first = session.ruleset_snapshot()?;
            if !fails(&session.run(&for_swap)).is_empty() {
                return Err("the built-in rules fail before any swap".into());
            }
            session.swap_rules(text("broken", broken.broken_rules()), Backend::Nft)?;
            let want = broken.fails.clone();
            let got = fails(&session.run(&for_swap));
            if got != want {
                return Err(
                    format!("swapped to {}: expected exactly {want:?} to fail, got {got:?}", broken.name).into()
                );
            }
            session.swap_rules(text("good", good), Backend::Nft)?;
            let results = session.run(&for_swap);
            // The tracer was started again for the new rules.
            if let Some(r) = results.iter().find(|r| r.observed.path.is_none()) {
                return Err(format!("swapped back, {} has no rule path", r.name).into());
            }
            let got = fails(&results);
            if !got.is_empty() {
                return Err(format!("swapped back to the built-in rules, {got:?} fail: the broken rules stayed").into());
            }
            let again = session.ruleset_snapshot()?;
            if again != first {
                return Err(format!("swapped back, the rules differ from the first install:\n--- first\n{first}\n--- after two swaps\n{again}").into());
            }
            // Native nftables in place of iptables-nft: the iptables-nft
            // tables gone, not left beside it (restore flushes only the
            // tables it writes). Dual-stack rules in an IPv4 session are
            // tested in IPv4, as `--family ipv4` would.
            session.swap_rules(RuleSource::Builtin(IstioCapture::default_for(Shape::Current)), Backend::NftNative)?;
            let listing = session.ruleset_snapshot()?;
            if listing.contains("-A ISTIO_OUTPUT")
                || listing.contains("table ip nat")
                || !listing.contains("istio-proxy-nat")
            {
                return Err(format!("swapped to native nftables, the kernel holds:\n{listing}").into());
            }
            let results = session.run(&for_swap);
            if let Some(r) =
                results.iter().find(|r| r.outcome != Outcome::Pass || !r.name.ends_with("::nft-native::ipv4"))
            {
                return Err(format!(
                    "native rules swapped into an IPv4 session: {} {:?}: {}",
                    r.name, r.outcome, r.message
                )
                .into());
            }
            // x_tables (legacy) rules are not flushed by `nft flush ruleset`.
            let legacy = IstioCapture::default_for(Shape::Current).to_restore();
            if session.can_swap_to(&text("legacy", legacy.clone()), Backend::Legacy)
                || session.swap_rules(text("legacy", legacy), Backend::Legacy).is_ok()
            {
                return Err("a legacy rule set was swapped into an nftables session".into());
            }
            // IPv4 rules alone would leave a dual-stack topology's IPv6 side
            // without rules: `sidecheck run` would test IPv4 only.
            drop(session);
            let dual = Session::start(SessionConfig::default())?;
            if dual.can_swap_to(&text("v4-only", IstioCapture::default_for(Shape::Current).to_restore()), Backend::Nft)
            {
                return Err("IPv4-only rules were accepted by a dual-stack session".into());
            }
            Ok(())
        }),
    ]);
    trials
}

/// The run prefix named in an error ("... in namespace sidecheck-1-2-local-pod ...").
fn prefix_in(message: &str) -> Option<String> {
    let start = message.find("sidecheck-")?;
    let name: String = message[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let host =
        ["-local-pod", "-remote-pod", "-prometheus", "-istiod", "-node"].into_iter().find(|h| name.ends_with(h))?;
    Some(name.trim_end_matches(host).to_string())
}

const INTENDED_PANIC: &str = "intentional panic: a trial panicking while its session is alive";

thread_local! {
    /// Set on the thread of the trial that panics on purpose, while it does.
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Print every panic as before except the one trial's intended panic, so a
/// passing run shows no panic text and a failing one still shows its own.
fn quiet_intended_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let intended = info.payload().downcast_ref::<&str>() == Some(&INTENDED_PANIC);
        if !(intended && EXPECTING_PANIC.get()) {
            default(info);
        }
    }));
}

/// Setup failures: a clear error naming what to fix, and nothing left behind.
fn fault_trials() -> Vec<Trial> {
    let setup_fails = |name: &'static str, config: SessionConfig, says: &'static [&'static str]| {
        Trial::test(format!("faults::{name}"), move || {
            let err = match Session::start(config) {
                Ok(_) => return Err("the session started; it must not".into()),
                Err(e) => e.to_string(),
            };
            for s in says {
                if !err.contains(s) {
                    return Err(format!("wanted `{s}` in: {err}").into());
                }
            }
            if let Some(prefix) = prefix_in(&err) {
                let left = registry::namespaces_of(&prefix);
                if !left.is_empty() {
                    return Err(format!("left behind after the failure: {left:?}").into());
                }
            }
            Ok(())
        })
    };
    let mut vip_outside = SessionConfig::default();
    vip_outside.topology.services[0].vip = std::net::Ipv4Addr::new(192, 168, 7, 10);
    let mut proxy_clash = SessionConfig::default();
    proxy_clash.profile.proxy.admin = 15001;
    vec![
        setup_fails(
            "app-port-taken-by-the-proxy",
            SessionConfig { local_app_ports: vec![15001], ..SessionConfig::default() },
            &["0.0.0.0:15001", "for local-app", "Address already in use", "give the app a port the proxy does not use"],
        ),
        setup_fails(
            "proxy-ports-clash",
            proxy_clash,
            &[
                "fake-envoy did not start",
                "cannot listen on 127.0.0.1:15001",
                "already listens on a port the stubs need",
            ],
        ),
        setup_fails(
            "vip-outside-the-service-cidr",
            vip_outside,
            &["VIP 192.168.7.10 is outside the service CIDR 10.96.0.0/12"],
        ),
        Trial::test("faults::a-panicking-trial-cleans-up-its-topology", || {
            let prefix = std::sync::Mutex::new(String::new());
            EXPECTING_PANIC.set(true);
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let session = Session::start(SessionConfig::default()).expect("session");
                *prefix.lock().unwrap() = session.prefix().to_string();
                std::panic::panic_any(INTENDED_PANIC);
            }));
            EXPECTING_PANIC.set(false);
            match unwound {
                Ok(()) => return Err("the closure did not panic".into()),
                Err(p) if p.downcast_ref::<&str>() == Some(&INTENDED_PANIC) => {}
                Err(p) => {
                    let what = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
                    return Err(format!("panicked before the intended panic: {}", what.unwrap_or_default()).into());
                }
            }
            let prefix = prefix.into_inner().unwrap();
            let left = registry::namespaces_of(&prefix);
            if prefix.is_empty() || !left.is_empty() {
                return Err(format!("after the panic, namespaces of {prefix:?} are left: {left:?}").into());
            }
            Ok(())
        }),
    ]
}

/// The root namespace as the invariant sees it.
fn host_snapshot() -> Result<String, Failed> {
    let mut snap = String::new();
    for (tool, args) in [("iptables-nft-save", &[][..]), ("iptables-legacy-save", &[]), ("nft", &["list", "ruleset"])] {
        let path = harness::base::tool::find_tool(tool, "iptables")?;
        let out = std::process::Command::new(path).args(args).output().map_err(|e| format!("{tool}: {e}"))?;
        // Comment lines carry timestamps.
        let text: String = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        snap.push_str(&format!("== {tool}\n{text}"));
    }
    let mut links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    snap.push_str(&format!("== links\n{}\n", links.join(" ")));
    Ok(snap)
}

fn hermetic_trials(scenarios: &[Scenario]) -> Vec<Trial> {
    let scenarios = scenarios.to_vec();
    vec![Trial::test("hermetic::session-leaves-nothing", move || {
        harness::require_root("this trial")?;
        let before = host_snapshot()?;
        let session = Session::start(SessionConfig::default())?;
        let prefix = session.prefix().to_string();
        let names = registry::namespaces_of(&prefix);
        if names.len() != 5 {
            return Err(format!("expected 5 namespaces named {prefix}-*, found {names:?}").into());
        }
        let results = session.run(&scenarios);
        drop(session);
        if results.iter().any(|r| r.outcome == Outcome::Fail) {
            return Err("a flow failed under the default rules".into());
        }
        let left = registry::namespaces_of(&prefix);
        if !left.is_empty() {
            return Err(format!("namespaces left after the session was dropped: {left:?}").into());
        }
        if std::path::Path::new(registry::RUN_DIR).join(&prefix).exists() {
            return Err(format!("{}/{prefix} left behind", registry::RUN_DIR).into());
        }
        let after = host_snapshot()?;
        if before != after {
            return Err(format!("the root namespace changed:\n--- before\n{before}\n--- after\n{after}").into());
        }
        Ok(())
    })]
}

fn main() {
    if let Err(e) = registry::install_signal_cleanup() {
        eprintln!("conformance: {e}");
        std::process::exit(2);
    }
    let args = Arguments::from_args();
    quiet_intended_panic();
    let scenarios = match scenario::builtin() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conformance: the built-in scenarios do not load: {e}");
            std::process::exit(2);
        }
    };
    // What must fail, from the data beside the tests.
    let ((breakages, path_breakages), findings) = match expect::breakages().and_then(|b| Ok((b, expect::findings()?))) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("conformance: the expectations do not load: {e}");
            std::process::exit(2);
        }
    };
    let current = Shared::new(builtin(Shape::Current, Backend::Nft));
    let classic = Shared::new(builtin(Shape::Classic, Backend::Nft));
    let legacy = Shared::new(builtin(Shape::Current, Backend::Legacy));
    let classic_legacy = Shared::new(builtin(Shape::Classic, Backend::Legacy));
    let native = Shared::new(builtin(Shape::Current, Backend::NftNative));
    // Each other mesh's own rule set under its profile, paths asserted:
    // every built-in profile that has one.
    let meshes: Vec<(String, Arc<Shared>)> = expect::meshes()
        .into_iter()
        .map(|p| {
            let rules = p.rules().expect("meshes() have rule sets");
            // Trials in the families the rule set is for (OSM's is IPv4 only).
            let mut topology = harness::model::topology::TopologyConfig::default();
            topology.families.retain(|f| rules.families().contains(f));
            let name = p.name.clone();
            let config = SessionConfig { rules, profile: p, topology, assert_paths: true, ..SessionConfig::default() };
            (name, Shared::new(config))
        })
        .collect();
    let none = BTreeMap::new();
    let mut trials = scenario_trials("istio", &current, &scenarios, &none);
    trials.extend(scenario_trials("istio-classic", &classic, &scenarios, &none));
    trials.extend(scenario_trials("istio-legacy", &legacy, &scenarios, &none));
    trials.extend(scenario_trials("istio-classic-legacy", &classic_legacy, &scenarios, &none));
    trials.extend(scenario_trials("istio", &native, &scenarios, &none));
    for (name, shared) in &meshes {
        trials.extend(scenario_trials(name, shared, &scenarios, findings.get(name).unwrap_or(&none)));
    }
    let Some(no_proxy_return) =
        breakages.iter().find(|b| profile(&b.profile).expect_path && b.name == "no-proxy-return")
    else {
        eprintln!("conformance: testdata/breakages/istio.yaml has no no-proxy-return (the rule-swap trial uses it)");
        std::process::exit(2);
    };
    let no_proxy_return = no_proxy_return.clone();
    trials.extend(broken_trials(&scenarios, &breakages));
    trials.extend(path_trials(&scenarios, &path_breakages, no_proxy_return));
    trials.extend(hermetic_trials(&scenarios));
    trials.extend(fault_trials());
    let many = scenarios.clone();
    let shared = current.clone();
    // Concurrency: every probe's legs and trace events stay its own.
    trials.push(Trial::test("load::210-concurrent-probes-exact-paths", move || {
        let copies: Vec<Scenario> = (1..=15)
            .flat_map(|k| many.iter().map(move |s| Scenario { name: format!("{}#{k}", s.name), ..s.clone() }))
            .collect();
        let results = shared.get()?.run(&copies);
        let failed: Vec<String> = results
            .iter()
            .filter(|r| r.outcome == Outcome::Fail)
            .map(|r| format!("{}: {}", r.name, r.message))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("{} of {} failed:\n{}", failed.len(), results.len(), failed.join("\n")).into())
        }
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    for s in [&current, &classic, &legacy, &classic_legacy, &native].into_iter().chain(meshes.iter().map(|(_, s)| s)) {
        s.close();
    }
    registry::wait_if_interrupted();
    conclusion.exit();
}

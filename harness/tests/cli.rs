//! The `sidecheck` command as a user runs it: exit codes (0 all passed, 1 some
//! failed, 2 could not run), the JSON contract, messages for bad input, and
//! that nothing is left behind either way. Needs root, like the suite.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::expect::{self, trial_count};
use common::{
    assert_nothing_left, code, namespaces_of_pid, need_root, run_checked_pid as run_checked, run_files_of_pid, stderr,
    stubs_of_pid, TempDir, BIN,
};
use harness::base::net::Family;

/// Every test that starts a run holds this shared; the tests about stale
/// runs hold it alone, because any run that starts meanwhile sweeps stale
/// runs itself (as it should) and would take the evidence away. Under
/// nextest, `.config/nextest.toml` makes those tests exclusive instead.
static RUNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_runs() -> std::sync::RwLockReadGuard<'static, ()> {
    RUNS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_runs() -> std::sync::RwLockWriteGuard<'static, ()> {
    RUNS.write().unwrap_or_else(|e| e.into_inner())
}

fn sidecheck(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running sidecheck")
}

/// The run name of the (one) run of process `pid`, from its lock file or
/// keep marker.
fn prefix_of_pid(pid: u32) -> String {
    run_files_of_pid(pid)
        .iter()
        .find_map(|n| {
            n.strip_suffix(".lock").or(n.strip_suffix(".kept")).filter(|p| !p.starts_with('.')).map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no lock file or keep marker of process {pid} in /run/sidecheck"))
}

/// Poll (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A scenario whose probe stalls for its whole connect timeout: the SYN goes
/// to a pod address nobody has (uid 1337, so it is not captured).
fn stalling_scenarios(dir: &TempDir) -> PathBuf {
    dir.write(
        "stall/istio/blackhole.yaml",
        "flow: 2\ndescription: stalls\nsource: { host: local-pod, uid: 1337 }\ndestination: { address: 10.244.0.99, port: 80 }\nexpect: { ports: [80], server: nobody }\n",
    );
    dir.0.join("stall")
}

/// Start `sidecheck run` on the stalling scenarios.
fn spawn_stalling(scen: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--scenarios", scen.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // The signals' default actions, whatever this test inherited: a shell
    // starts a background job with SIGINT ignored, and an ignored SIGINT
    // that arrives before sidecheck blocks it is lost (the run then
    // completes, exit 1), which says nothing about sidecheck.
    // SAFETY: signal(2) is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// Start a run that stalls mid-probe; return it once its stubs are up.
fn start_stalled_run(dir: &TempDir) -> std::process::Child {
    let child = spawn_stalling(&stalling_scenarios(dir));
    let pid = child.id();
    wait_for("the run's namespaces and stubs", || namespaces_of_pid(pid).len() == 5 && stubs_of_pid(pid).len() == 2);
    child
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn sigint_and_sigterm_mid_probe_clean_up_and_exit_130_143() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("signals");
    for (sig, want) in [(nix::sys::signal::Signal::SIGINT, 130), (nix::sys::signal::Signal::SIGTERM, 143)] {
        let child = start_stalled_run(&dir);
        let pid = child.id();
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), want, "{sig}: {}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        assert_nothing_left(pid, &format!("a run stopped by {sig}"));
    }
}

#[test]
fn a_signal_in_any_phase_cleans_up() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("phases");
    let scen = stalling_scenarios(&dir);
    // From right after exec (namespaces being made) through rule install,
    // stub start and probing: every point must exit 130 and leave nothing.
    for delay_us in [0u64, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000] {
        let child = spawn_stalling(&scen);
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_micros(delay_us));
        signal(&child, nix::sys::signal::Signal::SIGINT);
        let out = child.wait_with_output().unwrap();
        // Before the handler is installed the default action kills it (no
        // cleanup needed yet: nothing exists before the handler).
        let status = out.status;
        assert!(
            status.code() == Some(130) || status.signal() == Some(2),
            "SIGINT after {delay_us} us: {status:?} {}",
            stderr(&out)
        );
        assert_nothing_left(pid, &format!("SIGINT {delay_us} us after start"));
    }
}

#[test]
fn sigkill_mid_probe_is_swept_by_clean() {
    need_root();
    let _runs = exclusive_runs();
    let dir = TempDir::new("sigkill");
    let mut child = start_stalled_run(&dir);
    let pid = child.id();
    // Queue for the run's lock before killing it: once the kernel drops the
    // dead run's lock we hold it, so no concurrent run's start-up sweep can
    // remove the leftovers before this test has seen them.
    let lock_path = format!("/run/sidecheck/{}.lock", prefix_of_pid(pid));
    let lock_file = std::fs::File::open(&lock_path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).ok());
    });
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    let held = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap().expect("taking the dead run's lock");
    // Stubs notice their stdin closing and exit by themselves.
    wait_for("the killed run's stubs to exit", || stubs_of_pid(pid).is_empty());
    assert_eq!(namespaces_of_pid(pid).len(), 5, "a SIGKILLed run cannot clean up: its namespaces must still be there");
    drop(held);
    let out = sidecheck(&["clean"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_nothing_left(pid, "a SIGKILLed run followed by sidecheck clean");
}

#[test]
fn default_run_passes_and_keeps_the_json_contract() {
    need_root();
    let _runs = shared_runs();
    let (out, _) = run_checked(&["run", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let trials = v["trials"].as_array().unwrap();
    // Every scenario, each in both families of the dual-stack topology.
    let n = trial_count(&Family::BOTH);
    assert_eq!(trials.len(), n);
    assert_eq!(v["passed"], n);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["families"], serde_json::json!(["ipv4", "ipv6"]));
    for t in trials {
        for key in ["name", "flow", "outcome", "expected", "observed", "message", "backend", "family"] {
            assert!(!t[key].is_null(), "trial lacks `{key}`: {t}");
        }
        assert_eq!(t["outcome"], "pass");
        assert_eq!(t["expected"]["ports"], t["observed"]["ports"]);
        assert_eq!(t["expected"]["path"], t["observed"]["path"], "{}", t["name"]);
    }
    let type4 = trials.iter().find(|t| t["name"] == "istio::type4-local-to-local-via-service::nft::ipv4").unwrap();
    assert_eq!(type4["observed"]["ports"], serde_json::json!([15001, 15006, 8080]));
    // Envoy's inbound passthrough reaches the app from 127.0.0.6, and from ::6 over IPv6.
    assert!(type4["observed"]["peer"].as_str().unwrap().starts_with("127.0.0.6:"), "{type4}");
    let type4v6 = trials.iter().find(|t| t["name"] == "istio::type4-local-to-local-via-service::nft::ipv6").unwrap();
    assert!(type4v6["observed"]["peer"].as_str().unwrap().starts_with("[::6]:"), "{type4v6}");
    assert_eq!(type4v6["observed"]["hops"][0]["original_dst"], "[fd00:10:96::10]:8080");
}

#[test]
fn human_output_has_a_row_per_flow_and_a_closing_line() {
    need_root();
    let _runs = shared_runs();
    let (out, _) = run_checked(&["run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let n = trial_count(&Family::BOTH);
    assert_eq!(text.lines().filter(|l| l.contains("istio::") && l.trim_end().ends_with("pass")).count(), n, "{text}");
    assert_eq!(text.lines().last(), Some(format!("{n} passed, 0 failed").as_str()), "{text}");
}

#[test]
fn broken_rules_fail_exactly_the_affected_flows_with_exit_1() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("broken");
    let good = harness::rules::istio::IstioCapture::default_for(harness::rules::istio::Shape::Current).to_restore();
    // No uid/gid 1337 RETURN: the proxy's own upstream connections loop.
    let b = expect::breakage(&expect::default_profile().name, "no-proxy-return");
    let broken = b.broken_rules();
    assert_eq!(good.lines().count() - b.remove.len(), broken.lines().count());
    let file = dir.write("broken.rules", &broken);
    let (out, _) = run_checked(&["run", "--rules", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut failed: Vec<&str> = v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "fail")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    failed.sort();
    // An IPv4 restore file alone: an IPv4 run.
    assert_eq!(v["families"], serde_json::json!(["ipv4"]));
    let want: Vec<String> = b.fails.iter().map(|t| expect::full(t, "nft")).collect();
    assert_eq!(failed, want, "{}", b.file.display());
    let t2 = v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "istio::type2-local-to-remote::nft::ipv4")
        .unwrap();
    assert_eq!(t2["observed"]["ports"], serde_json::json!([15001, 15001]));
    assert!(t2["message"].as_str().unwrap().contains("came back to the outbound listener 15001"), "{t2}");
}

#[test]
fn rules_that_do_not_apply_exit_2_with_the_tools_message() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("apply");
    let bad =
        dir.write("bad.v4.rules", "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 99999 -j RETURN\nCOMMIT\n");
    let (out, _) = run_checked(&["run", "--rules", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(err.contains("did not apply"), "{err}");
    assert!(err.contains("bad.v4.rules"), "{err}");
    // iptables' own words about the port and the line.
    assert!(err.contains("99999") && err.contains("line: 3"), "{err}");
    assert!(out.stdout.is_empty(), "no report when nothing ran");
}

#[test]
fn bad_input_exits_2_before_anything_is_built() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("bad");
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/istio/type2-local-to-remote.yaml"),
    )
    .unwrap();
    let unknown = dir.write("unknown/istio/a.yaml", &good.replace("flow: 2", "flow: 2\nflwo: 3"));
    let wrong_type = dir.write("wrongtype/istio/a.yaml", &good.replace("uid: 1000", "uid: root"));
    let malformed = dir.write("malformed/istio/a.yaml", "flow: [2\n");
    std::fs::create_dir_all(dir.0.join("empty")).unwrap();
    dir.write("dup/istio/a.yml", &good);
    dir.write("dup/istio/a.yaml", &good);
    let istio_profile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles/istio.yaml"))
            .unwrap();
    let mesh = dir.write("mesh.yaml", &istio_profile.replace("name: istio", "name: mymesh"));
    let typo = dir.write("typo.yaml", &istio_profile.replace("  stats: 15090", "  stats: 15090\n  stat: 1"));
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--scenarios".into(), dir.0.join("unknown").display().to_string()],
            format!("{}:2:1: ", unknown.display()),
        ),
        (
            vec!["--scenarios".into(), dir.0.join("wrongtype").display().to_string()],
            format!("{}:", wrong_type.display()),
        ),
        (
            vec!["--scenarios".into(), dir.0.join("malformed").display().to_string()],
            format!("{}:", malformed.display()),
        ),
        (vec!["--scenarios".into(), dir.0.join("empty").display().to_string()], "no scenario files".into()),
        (vec!["--scenarios".into(), dir.0.join("missing").display().to_string()], "cannot read".into()),
        (vec!["--scenarios".into(), dir.0.join("dup").display().to_string()], "both named istio::a".into()),
        (vec!["--rules".into(), "/nonexistent/rules.v4".into()], "cannot read /nonexistent/rules.v4".into()),
        (vec!["--format".into(), "yaml".into()], "invalid value 'yaml'".into()),
        (
            vec!["--profile".into(), "nope".into()],
            format!("no built-in profile `nope`: use one of {}", expect::profile_files().join(", ")),
        ),
        (vec!["--profile".into(), mesh.display().to_string()], "profile mymesh".into()),
        (
            vec!["--profile".into(), mesh.display().to_string()],
            "has no rule set of its own: give the rules to test with --rules".into(),
        ),
        (vec!["--profile".into(), typo.display().to_string()], format!("{}:", typo.display())),
    ];
    for (args, says) in cases {
        let mut all = vec!["run".to_string()];
        all.extend(args.clone());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (out, _) = run_checked(&all);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&says), "{args:?}: wanted `{says}` in: {}", stderr(&out));
    }
}

#[test]
fn not_root_exits_2_saying_so() {
    need_root();
    let _runs = shared_runs();
    // A copy the unprivileged uid can execute wherever the target dir lives.
    let dir = TempDir::new("nonroot");
    let exe = dir.0.join("sidecheck");
    std::fs::copy(BIN, &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = Command::new(&exe).arg("run").uid(65534).gid(65534).output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    // The three ways that work for a rustup user, and why `sudo cargo` does not.
    let err = stderr(&out);
    for said in [
        "sidecheck run creates network namespaces, which needs root",
        "as root, or as a user with sudo, `cargo test`",
        "`cargo install --locked --path harness`, then `sudo \"$(command -v sidecheck)\" run`",
        "/usr/local/bin",
        "Not `sudo cargo test`: sudo's secure_path lacks ~/.cargo/bin",
    ] {
        assert!(err.contains(said), "the not-root message does not say {said:?}:\n{err}");
    }
}

#[test]
fn clean_sweeps_dead_runs_and_spares_live_ones() {
    need_root();
    let _runs = exclusive_runs();
    // A dead run: its lock file nobody holds, and a namespace named after it.
    let dead = "sidecheck-4000000001-0";
    std::fs::create_dir_all("/run/sidecheck").unwrap();
    std::fs::write(format!("/run/sidecheck/{dead}.lock"), "").unwrap();
    std::mem::forget(harness::sandbox::ns::Namespace::create(&format!("{dead}-node")).unwrap());
    // A live run: this process holds its lock.
    let live = harness::sandbox::registry::RunGuard::acquire().unwrap();
    let live_ns = harness::sandbox::ns::Namespace::create(&format!("{}-node", live.prefix())).unwrap();

    let out = sidecheck(&["clean"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(harness::sandbox::registry::namespaces_of(dead).is_empty(), "the dead run's namespace is still there");
    assert!(!Path::new(&format!("/run/sidecheck/{dead}.lock")).exists());
    assert_eq!(
        harness::sandbox::registry::namespaces_of(live.prefix()),
        [format!("{}-node", live.prefix())],
        "a live run's namespace was swept"
    );
    drop(live_ns);
    drop(live);
}

#[test]
fn trace_prints_the_path_and_each_rule_with_its_text() {
    need_root();
    let _runs = shared_runs();
    let (out, _) = run_checked(&["trace", "--from", "local-pod:1000", "--to", "remote-pod:9090"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("path:  OUTPUT -> ISTIO_OUTPUT RULE 9 -> ISTIO_REDIRECT -> Envoy 15001 (Outbound) -> OUTPUT -> ISTIO_OUTPUT RULE 4 -> POSTROUTING -> Remote Pod"), "{text}");
    assert!(
        text.lines().any(|l| l.contains(" ISTIO_OUTPUT ")
            && l.contains("rule 4 ")
            && l.ends_with("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")),
        "{text}"
    );
    // The same through iptables-legacy, as JSON.
    let (out, _) = run_checked(&[
        "trace",
        "--from",
        "prometheus",
        "--to",
        "local-pod:15090",
        "--backend",
        "legacy",
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"]["line"], "PREROUTING -> ISTIO_INBOUND RULE 2 -> INPUT -> Envoy 15090");
    assert_eq!(v["path"]["legs"][0]["events"][1]["chain"], "ISTIO_INBOUND");
    // And over IPv6, to an address.
    let (out, _) =
        run_checked(&["trace", "--from", "local-pod:1000", "--to", "[fd00:10:244::20]:9090", "--backend", "legacy"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("path:  OUTPUT -> ISTIO_OUTPUT RULE 9 -> ISTIO_REDIRECT -> Envoy 15001 (Outbound) -> OUTPUT -> ISTIO_OUTPUT RULE 4 -> POSTROUTING -> Remote Pod"), "{text}");
    assert!(
        text.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN") || text.contains("uid-owner 1337 -j RETURN"),
        "{text}"
    );
}

#[test]
fn trace_names_where_a_stalled_connection_went() {
    need_root();
    let _runs = shared_runs();
    let (out, _) = run_checked(&["trace", "--from", "local-pod:1000", "--to", "remote-pod:9091"]);
    // Captured to 15001; Envoy's upstream to 9091 is refused.
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "OUTPUT -> ISTIO_OUTPUT RULE 9 -> ISTIO_REDIRECT -> Envoy 15001 (Outbound) -> (could not forward"
        ),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
}

#[test]
fn trace_rejects_unknown_endpoints() {
    need_root();
    let _runs = shared_runs();
    for (from, to, says) in [
        ("node", "remote-pod:9090", "`node` is not a pod"),
        ("local-pod:abc", "remote-pod:9090", "`abc` is not a uid"),
        ("local-pod", "mars:80", "`mars` is not a host"),
        ("local-pod", "remote-pod", "give TARGET:PORT"),
    ] {
        let (out, _) = run_checked(&["trace", "--from", from, "--to", to]);
        assert_eq!(code(&out), 2, "{from} {to}");
        assert!(stderr(&out).contains(says), "{from} {to}: {}", stderr(&out));
    }
}

/// (scenario, family, outcome, observed ports) of every trial.
fn json_ports(out: &Output) -> Vec<(String, String, String, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap().to_string();
            (s("scenario"), s("family"), s("outcome"), t["observed"]["ports"].clone())
        })
        .collect()
}

#[test]
fn the_built_in_rules_give_the_same_result_from_every_source() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("sources");
    let print = |form: &str, extra: &[&str]| {
        let mut args = vec!["rules", "--form", form];
        args.extend_from_slice(extra);
        let out = sidecheck(&args);
        assert_eq!(code(&out), 0);
        String::from_utf8(out.stdout).unwrap()
    };
    let restore = dir.write("builtin.rules", &print("restore", &[]));
    let restore6 = dir.write("builtin.rules6", &print("restore6", &[]));
    let script = dir.write("builtin.sh", &print("script", &["--iptables", "iptables-legacy"]));
    let nft = dir.write("builtin.nft", &print("nft", &[]));
    let generator = format!("{BIN} rules | iptables-nft-restore");
    let (reference, _) = run_checked(&["run", "--format", "json"]);
    assert_eq!(code(&reference), 0);
    let reference = json_ports(&reference);
    assert_eq!(reference.len(), trial_count(&Family::BOTH));
    let generator = format!("{generator} && {BIN} rules --form restore6 | ip6tables-nft-restore");
    for args in [
        vec!["--rules", restore.to_str().unwrap(), "--rules6", restore6.to_str().unwrap()],
        vec!["--script", script.to_str().unwrap()],
        vec!["--nft", nft.to_str().unwrap()],
        vec!["--generator", generator.as_str()],
    ] {
        let flag = args[0];
        let mut all = vec!["run", "--format", "json"];
        all.extend(args.iter());
        let (out, _) = run_checked(&all);
        assert_eq!(code(&out), 0, "{flag}: {}", stderr(&out));
        assert_eq!(json_ports(&out), reference, "{flag} gave another result");
    }
}

#[test]
fn rule_sources_that_fail_exit_2_showing_their_output_and_leave_nothing() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("badsources");
    // Unique to this test run: other worktrees run the same test.
    let hang = format!("sleep 600.{}", std::process::id());
    let bad_nft = dir.write("bad.nft", "table inet t {\n  chain c {\n    type nat hook output priority -100;\n    tcp dport 80 redirec to :15001\n  }\n}\n");
    let failing_script = dir.write("fail.sh", "echo writing rules\niptables-nft -t nat -A NOPE -j RETURN\n");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec!["--nft".into(), bad_nft.display().to_string()], vec!["bad.nft:4:", "Error", "did not apply"]),
        (
            vec!["--script".into(), failing_script.display().to_string()],
            vec!["writing rules", "No chain/target/match by that name", "did not apply"],
        ),
        // (What is looked for must not be in the command line the message quotes.)
        (
            vec!["--generator".into(), "echo half-$((1+1))-done; printf 'no such %s' option >&2; exit 3".into()],
            vec!["half-2-done", "no such option", "exit status: 3"],
        ),
        // Megabytes of output: bounded in the message, and nothing blocks.
        (
            vec!["--generator".into(), "head -c 5000000 /dev/zero | tr '\\0' x; exit 1".into()],
            vec!["more bytes of output not shown", "exit status: 1"],
        ),
        // A hang: killed at the timeout, with its children.
        (
            vec!["--generator".into(), format!("echo started-$((6*7)); {hang}"), "--rules-timeout".into(), "1".into()],
            vec!["did not finish within 1 s", "its output before it was killed:\nstarted-42"],
        ),
    ];
    for (args, says) in cases {
        let mut all = vec!["run".to_string()];
        all.extend(args.clone());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (out, _) = run_checked(&all);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.len() < 80_000, "{args:?}: the message is {} bytes", err.len());
        for s in says {
            assert!(err.contains(s), "{args:?}: wanted `{s}` in:\n{err}");
        }
    }
    // The hung generator's sleep was killed with it.
    let sleeping = std::process::Command::new("pgrep").args(["-f", &hang]).output().unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "the generator's child survived: {}",
        String::from_utf8_lossy(&sleeping.stdout)
    );
}

#[test]
fn missing_tools_exit_2_naming_the_package() {
    need_root();
    let _runs = shared_runs();
    // Hide a tool in a private mount namespace (bind /dev/null over it): the
    // host keeps its tools, the run does not see them.
    let hide = |path: &str, args: &str| {
        let script = format!("mount --bind /dev/null {path} && exec {BIN} {args}");
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap()
    };
    let nft_multi = std::fs::canonicalize("/usr/sbin/iptables-nft-restore").unwrap();
    let out = hide(nft_multi.to_str().unwrap(), "run");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("`iptables-nft-restore` is not installed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("apt-get install -y iptables"), "{}", stderr(&out));
    let nft = std::fs::canonicalize("/usr/sbin/nft").unwrap();
    let out = hide(nft.to_str().unwrap(), "run");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("apt-get install -y nftables"), "{}", stderr(&out));
    // Without tracing, nft is not needed.
    let out = hide(nft.to_str().unwrap(), "run --no-trace");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn topology_settings_that_cannot_work_exit_2_and_leave_nothing() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("topology");
    let cases = [
        (
            "services:\n  - { name: local-app, vip: 192.168.9.10, port: 8080, endpoint: local-pod }\n",
            vec!["VIP 192.168.9.10 is outside the service CIDR 10.96.0.0/12", "pick a VIP inside it"],
        ),
        (
            "local_app_ports: [15001]\n",
            vec!["0.0.0.0:15001", "Address already in use", "give the app a port the proxy does not use"],
        ),
        ("families: [ipv4]\nservce_cidr: 10.96.0.0/12\n", vec![":2:1:", "unknown field `servce_cidr`"]),
        ("addresses: { istiod: 10.244.0.10 }\n", vec!["local-pod and istiod both have address 10.244.0.10"]),
    ];
    for (i, (yaml, says)) in cases.iter().enumerate() {
        let file = dir.write(&format!("t{i}.yaml"), yaml);
        let (out, _) = run_checked(&["run", "--topology", file.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{yaml}: {}", stderr(&out));
        for s in says {
            assert!(stderr(&out).contains(s), "{yaml}: wanted `{s}` in {}", stderr(&out));
        }
    }
    // And a good one: IPv6 only, a second app port.
    let file = dir.write("good.yaml", "families: [ipv6]\nlocal_app_ports: [8080, 8081]\n");
    let (out, _) = run_checked(&["run", "--topology", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["families"], serde_json::json!(["ipv6"]));
    assert_eq!(v["passed"], trial_count(&[Family::Ipv6]));
}

#[test]
fn keep_leaves_a_failing_run_to_inspect_until_clean() {
    need_root();
    let _runs = exclusive_runs();
    let dir = TempDir::new("keep");
    let good = harness::rules::istio::IstioCapture::default_for(harness::rules::istio::Shape::Current).to_restore();
    let broken = dir.write("broken.rules", &good.replace("--to-ports 15001", "--to-ports 15002"));
    let child = Command::new(BIN)
        .args(["run", "--keep", "--rules", broken.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let kept = namespaces_of_pid(pid);
    assert_eq!(kept.len(), 5, "{}", stderr(&out));
    let prefix = prefix_of_pid(pid);
    let pod = format!("{prefix}-local-pod");
    assert!(stderr(&out).contains(&format!("ip netns exec {pod} iptables-save")), "{}", stderr(&out));
    // The kept rules are the broken ones, inspectable as printed.
    let saved = Command::new("ip").args(["netns", "exec", &pod, "iptables-nft-save"]).output().unwrap();
    assert!(String::from_utf8_lossy(&saved.stdout).contains("--to-ports 15002"));
    assert!(stubs_of_pid(pid).is_empty(), "stubs are not kept");
    // Another run does not sweep a kept run; clean does.
    let (other, _) = run_checked(&["run"]);
    assert_eq!(code(&other), 0);
    assert_eq!(namespaces_of_pid(pid).len(), 5, "a later run swept the kept namespaces");
    let out = sidecheck(&["clean"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 kept run(s)"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(namespaces_of_pid(pid).is_empty());
    assert!(!Path::new(&format!("/run/sidecheck/{prefix}.kept")).exists());
}

#[test]
fn reports_in_every_format_from_one_failing_run() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("reports");
    // 15090 no longer excluded: the scrape detours through 15006.
    let b = expect::breakage(&expect::default_profile().name, "stats-port-captured");
    let broken = dir.write("broken.rules", &b.broken_rules());
    let (ipv4, failed) = (trial_count(&[Family::Ipv4]), b.fails.len());
    let (junit, md) = (dir.0.join("r.xml"), dir.0.join("r.md"));
    let (out, _) = run_checked(&[
        "run",
        "--rules",
        broken.to_str().unwrap(),
        "--format",
        "json",
        "--output",
        &format!("junit={}", junit.display()),
        "--output",
        &format!("markdown={}", md.display()),
    ]);
    assert_eq!(code(&out), 1);
    // stdout keeps the JSON contract.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64()), (Some((ipv4 - failed) as u64), Some(failed as u64)));
    // JUnit: valid against the schema reporters read, the failure explained.
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/schema/junit.xsd");
    let lint = Command::new("xmllint")
        .args(["--noout", "--schema", schema.to_str().unwrap(), junit.to_str().unwrap()])
        .output()
        .expect("xmllint (apt-get install libxml2-utils, or ci/setup)");
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stderr));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), ipv4);
    assert_eq!(xml.matches("<failure ").count(), failed);
    for t in &b.fails {
        let (stem, family) = t.split_once("::").unwrap();
        assert!(xml.contains(&format!("name=\"{stem}::nft::{family}\"")), "{xml}");
    }
    // Markdown: a table row per trial, a diagram per trial, the failing one
    // with its expected path beside it.
    let md = std::fs::read_to_string(&md).unwrap();
    assert_eq!(md.matches("```mermaid").count(), ipv4, "{md}");
    assert!(md.contains(&format!("## sidecheck: {} passed, {failed} failed (FAILED)", ipv4 - failed)), "{md}");
    assert!(md.contains("subgraph e[\"expected\"]"), "{md}");
    assert!(md.contains("class o1 diff"), "{md}");
}

#[test]
fn each_mesh_profile_passes_with_its_rules_and_not_with_istios() {
    need_root();
    let _runs = shared_runs();
    let findings = expect::findings().unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("meshes");
    let istio = dir.write("istio.rules", &String::from_utf8(sidecheck(&["rules"]).stdout).unwrap());
    for p in expect::meshes() {
        let (mesh, title) = (p.name.as_str(), expect::title(&p.name));
        let families = p.rules().unwrap().families();
        let flows = expect::scenarios().iter().filter(|s| !s.families(&families).is_empty()).count();
        // A flow the mesh's own rules fail by design (findings.yaml) fails here too.
        let by_design: BTreeSet<&str> = findings
            .get(mesh)
            .map(|f| f.keys().map(|t| t.split_once("::").map_or(t.as_str(), |(stem, _)| stem)).collect())
            .unwrap_or_default();
        let (out, _) = run_checked(&["run", "--profile", mesh, "--assert", "paths", "--format", "summary"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let (want_code, verdict) = if by_design.is_empty() { (0, "conforms to") } else { (1, "does not conform to") };
        assert_eq!(code(&out), want_code, "{mesh}: {text}{}", stderr(&out));
        assert!(text.contains(&format!("profile {mesh}, backend nft")), "{text}");
        let fams = families.iter().map(|f| f.name().replace("ipv", "IPv")).collect::<Vec<_>>().join("+");
        let ok = flows - by_design.len();
        assert!(
            text.trim_end()
                .ends_with(&format!("{verdict} the {title} sidecar capture contract: {ok}/{flows} flows, {fams}, nft")),
            "{text}"
        );
        // Istio's rules are not this mesh's contract: wrong ports, wrong uid.
        let (out, _) =
            run_checked(&["run", "--profile", mesh, "--rules", istio.to_str().unwrap(), "--format", "summary"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(code(&out), 1, "{mesh}, Istio's rules: {text}{}", stderr(&out));
        assert!(text.contains(&format!("does not conform to the {title} sidecar capture contract")), "{text}");
    }
}

#[test]
fn a_generator_writing_the_wrong_table_gets_exit_2_or_a_failing_verdict() {
    need_root();
    let _runs = shared_runs();
    // REDIRECT exists only in nat: restoring into mangle fails, and says why.
    let mangle = format!("{BIN} rules | sed 's/^\\*nat/*mangle/' | iptables-nft-restore");
    // (run_checked asserts the failed run left nothing behind.)
    let (out, _) = run_checked(&["run", "--generator", &mangle]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("REDIRECT") && stderr(&out).contains("did not apply"), "{}", stderr(&out));
    // Rules in a table no hook reaches: installed, but nothing is captured.
    let unhooked = "nft add table ip elsewhere && nft add chain ip elsewhere out && nft add rule ip elsewhere out tcp dport 9090 redirect to :15001";
    let (out, _) = run_checked(&["run", "--generator", unhooked, "--family", "ipv4", "--format", "summary"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1, "{text}{}", stderr(&out));
    assert!(text.contains("does not conform to the Istio sidecar capture contract"), "{text}");
}

#[test]
fn reports_show_the_rules_as_installed_and_a_one_screen_summary() {
    need_root();
    let _runs = shared_runs();
    // A generator writing IPv4 rules only, its empty IPv6 side tested on
    // purpose: the report shows what it did.
    let generator = format!("{BIN} rules | iptables-nft-restore");
    let (out, _) = run_checked(&["run", "--generator", &generator, "--allow-empty-rules", "--format", "json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ruleset = v["ruleset"].as_str().expect("the JSON report carries the installed rules");
    assert!(
        ruleset.contains("# iptables-nft-save") && ruleset.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        "{ruleset}"
    );
    assert!(!ruleset.contains("sidecheck_trace"), "the harness's own trace table is not part of the rules tested");
    let (out, _) = run_checked(&["run", "--generator", &generator, "--allow-empty-rules", "--format", "summary"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ipv4 pass  ipv6 FAIL"), "{text}");
    // With no IPv6 rules nothing is captured there: exactly the flows whose
    // expectation passes no capture listener conform in both families.
    let (profile, topo) = (expect::default_profile(), harness::model::topology::TopologyConfig::default());
    let capture = [profile.proxy.outbound, profile.proxy.inbound];
    let scenarios = expect::scenarios();
    let uncaptured = scenarios
        .iter()
        .filter(|s| {
            let case = s.case(&profile, &topo, Family::Ipv6, "generator").unwrap();
            !case.expected.ports.iter().any(|p| capture.contains(p))
        })
        .count();
    let title = expect::title(&profile.name);
    let flows = scenarios.len();
    assert!(
        text.trim_end().ends_with(&format!(
            "does not conform to the {title} sidecar capture contract: {uncaptured}/{flows} flows, IPv4+IPv6, generator"
        )),
        "{text}"
    );
}

/// `run --each` (ci/mutate's): rule sets swapped into one topology give
/// each the result a run of its own gives, and a rule set that cannot be
/// read is refused without stopping the others.
#[test]
fn each_rule_set_in_one_topology_is_judged_as_its_own_run() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("each");
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policies/cni-basic.yaml");
    let policy = policy.to_str().unwrap();
    let reference = sidecheck(&["rules", "--policy", policy, "--form", "restore"]);
    assert_eq!(code(&reference), 0, "{}", stderr(&reference));
    let good = String::from_utf8(reference.stdout).unwrap();
    let broken = good.replace("-A ISTIO_OUTPUT -o lo -j RETURN\n", "");
    assert_ne!(broken, good, "the reference rules return lo traffic");
    let (good, broken) = (dir.write("good.rules", &good), dir.write("broken.rules", &broken));
    let missing = dir.0.join("missing.rules");
    let failing = |rules: &Path| -> Vec<String> {
        let (out, _) =
            run_checked(&["run", "--policy", policy, "--rules", rules.to_str().unwrap(), "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["trials"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["outcome"] != "pass")
            .map(|t| t["name"].to_string())
            .collect()
    };
    let broken_alone = failing(&broken);
    assert!(!broken_alone.is_empty(), "without the lo RETURN some probe fails");
    let list: String = [&good, &broken, &missing, &good].iter().map(|p| format!("rules {}\n", p.display())).collect();
    let list = dir.write("each.txt", &list);
    let (out, _) = run_checked(&["run", "--policy", policy, "--each", list.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let exits: Vec<i64> = lines.iter().map(|l| l["exit"].as_i64().unwrap()).collect();
    assert_eq!(exits, [0, 1, 2, 0], "{}", String::from_utf8_lossy(&out.stdout));
    let failed: Vec<String> = lines[1]["failed"].as_array().unwrap().iter().map(|t| t.to_string()).collect();
    assert_eq!(failed, broken_alone, "the broken rules swapped in fail as they do alone");
    assert!(lines[2]["error"].as_str().unwrap().contains("missing.rules"), "{}", lines[2]);
    // Bad input: a line that is not `rules PATH` / `rules6 PATH`.
    let bad = dir.write("bad.txt", &format!("rules {}\nnft {}\n", good.display(), good.display()));
    let (out, _) = run_checked(&["run", "--policy", policy, "--each", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.txt:2: `nft`: write `rules PATH` or `rules6 PATH`"), "{}", stderr(&out));
}

/// Services may share a VIP (one entry per port), and those given no IPv6
/// VIP share the default one: the node holds each address once. (The
/// second service used to stop the run: "File exists".)
#[test]
fn services_sharing_a_vip_start_and_pass() {
    need_root();
    let _runs = shared_runs();
    let dir = TempDir::new("shared-vip");
    let file = dir.write(
        "topology.yaml",
        "services:\n  - { name: local-app, vip: 10.96.0.10, port: 8080, endpoint: local-pod }\n  - { name: other-app, vip: 10.96.0.11, port: 8080, endpoint: local-pod }\n  - { name: other-port, vip: 10.96.0.11, port: 9090, endpoint: local-pod }\n",
    );
    let out = sidecheck(&["run", "--topology", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

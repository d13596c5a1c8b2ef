//! A FAIL always means the rules (issue 16): harness trouble is an ERROR
//! (exit 2) or is avoided by admission control, rule sources that install
//! nothing or fail are stopped with what they said, and the stubs never
//! panic or silently drop a connection when out of threads. Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sidecheck");

fn need_root() {
    assert!(nix::unistd::geteuid().is_root(), "run as root: sudo cargo test (these tests build network namespaces)");
}

fn sidecheck(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running sidecheck")
}

/// `sidecheck args` under shell limits (`ulimit -n 256`).
fn sidecheck_limited(limits: &str, args: &[&str]) -> Output {
    // bash: dash has no `ulimit -u`.
    Command::new("bash")
        .args(["-c", &format!("{limits}; exec \"$0\" \"$@\""), BIN])
        .args(args)
        .output()
        .expect("running sidecheck under limits")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("sidecheck was killed by a signal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sidecheck-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_generator_that_installs_nothing_is_exit_2_with_its_output() {
    need_root();
    for (generator, says) in [
        ("true", "it printed nothing"),
        // Garbage on stdout, exit 0: what a wrong tool on PATH does.
        ("printf 'usage: frob [-%s]\\n' xyz", "its output:\nusage: frob [-xyz]"),
    ] {
        let out = sidecheck(&["run", "--generator", generator]);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{generator}: {err}");
        assert!(err.contains("installed no rules for IPv4 and IPv6"), "{generator}: {err}");
        assert!(err.contains(says), "{generator}: wanted `{says}` in {err}");
        assert!(err.contains("--allow-empty-rules"), "{err}");
    }
    // On purpose: the empty rule set is tested, and fails the capture flows.
    let out = sidecheck(&["run", "--generator", "true", "--allow-empty-rules", "--family", "ipv4", "--format", "json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["failed"].as_u64().unwrap() > 0, "{v}");
    // One family empty is enough to stop: rules for IPv4 only, both tested.
    let out = sidecheck(&["run", "--generator", "iptables-nft -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("installed no rules for IPv6 ("), "{}", stderr(&out));
}

#[test]
fn a_script_stops_at_its_first_failing_command_naming_it_and_its_line() {
    need_root();
    let dir = TempDir::new("typo");
    // Without `sh -e` the typo was skipped and the rest installed: the run
    // judged a rule set missing one rule, and the message was never shown.
    let script = dir.write(
        "typo.sh",
        "iptables-nft -t nat -N X\niptables-nft -t nat -A X -p tcp --dprt 80 -j RETURN\niptables-nft -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001\n",
    );
    let out = sidecheck(&["run", "--script", script.to_str().unwrap(), "--family", "ipv4"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 2, "{err}");
    assert!(err.contains(&format!("the command that failed ({}:2): iptables-nft", script.display())), "{err}");
    assert!(err.contains("unknown option \"--dprt\""), "{err}");
    assert!(!err.contains("+sidecheck: "), "the shell's trace leaked: {err}");
}

#[test]
fn limits_too_tight_to_run_are_one_error_naming_the_limit() {
    need_root();
    for (limits, says) in
        [("ulimit -n 32", "RLIMIT_NOFILE, ulimit -n) is 32"), ("ulimit -u 8", "RLIMIT_NPROC, ulimit -u) is 8")]
    {
        let started = std::time::Instant::now();
        let out = sidecheck_limited(limits, &["run", "--family", "ipv4"]);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{limits}: {err}");
        assert!(err.contains(says), "{limits}: {err}");
        assert_eq!(err.lines().count(), 1, "{limits}: one error, not one per trial: {err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{limits}: {:?}", started.elapsed());
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn ten_thousand_trials_pass_under_256_open_files() {
    need_root();
    // 1430 x 7 = 10,010 trials: 9,783 failed with EMFILE before admission control.
    let out = sidecheck_limited(
        "ulimit -n 256",
        &["run", "--repeat", "1430", "--family", "ipv4", "--no-trace", "--format", "summary"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{}\n{}", text.lines().last().unwrap_or_default(), stderr(&out));
    assert!(text.contains("conforms to the Istio sidecar capture contract: 10010/10010 flows"), "{text}");
}

/// A namespace of its own (named outside the `sidecheck-` runs' space, so
/// no run's sweep touches it), removed on drop.
fn namespace(tag: &str) -> harness::topology::Namespace {
    let ns = harness::topology::Namespace::create(&format!("trust-{tag}-{}", std::process::id())).unwrap();
    let ran = Command::new("ip").args(["netns", "exec", ns.name(), "ip", "link", "set", "lo", "up"]).status().unwrap();
    assert!(ran.success());
    ns
}

/// fake-envoy in `ns` as a uid of its own with RLIMIT_NPROC `nproc`.
fn fake_envoy(ns: &harness::topology::Namespace, nproc: u64) -> std::process::Child {
    let exe = Path::new(env!("SIDECHECK_STUB_DIR")).join("fake-envoy");
    let uid = 40000 + std::process::id() % 20000;
    let mut cmd = ns.command(&exe);
    cmd.args(["--outbound", "127.0.0.1:15001", "--inbound", "127.0.0.1:15006", "--timeout-ms", "3000"]);
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: nproc, rlim_max: nproc };
            if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn fake_envoy_out_of_threads_answers_overloaded_and_never_panics() {
    need_root();
    let ns = namespace("envoy");
    // Too few threads for its listeners: exit 2 naming the limit (it panicked).
    let mut tight = fake_envoy(&ns, 2);
    let status = tight.wait().unwrap();
    let mut err = String::new();
    tight.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("RLIMIT_NPROC"), "{err}");

    // Room for its listeners and a few connections only.
    let mut envoy = fake_envoy(&ns, 10);
    let mut ready = String::new();
    BufReader::new(envoy.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "READY");
    // Thirty idle connections: each one served holds a thread (waiting for
    // its request); those without one must be answered at once, not closed.
    let conns: Vec<std::net::TcpStream> = ns
        .run(|| (0..30).map(|_| std::net::TcpStream::connect("127.0.0.1:15001").unwrap()).collect::<Vec<_>>())
        .unwrap();
    let mut overloaded = 0;
    for c in &conns {
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut line = String::new();
        if BufReader::new(c).read_line(&mut line).is_ok() && line.contains("error=overloaded@15001:") {
            overloaded += 1;
        }
    }
    assert!(overloaded >= 10, "only {overloaded} of 30 connections were answered as overloaded");
    drop(conns);
    // It recovers: a probe to itself is answered (as a loop) once threads are free.
    std::thread::sleep(Duration::from_millis(300));
    let answer = ns
        .run(|| {
            let mut c = std::net::TcpStream::connect("127.0.0.1:15001").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"SIDECHECK/1 id=7\n").unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&c).read_line(&mut line);
            line
        })
        .unwrap();
    assert!(answer.starts_with("SIDECHECK/1 id=7 hop=outbound@15001>127.0.0.1:15001"), "{answer}");
    assert!(envoy.try_wait().unwrap().is_none(), "fake-envoy exited");
    envoy.kill().unwrap();
    envoy.wait().unwrap();
    let mut err = String::new();
    envoy.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("dropped a connection on port 15001 (#1): could not start a thread"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn user_tables_named_like_the_tracers_work_and_are_shown() {
    need_root();
    let dir = TempDir::new("usertables");
    // Both names once collided: `inet sidecheck_trace` was refused with
    // "Operation not supported" (merged into the tracer's), and `ip
    // sidecheck_trace` was left out of "rules as installed".
    let builtin = sidecheck(&["rules", "--form", "nft"]);
    let mut text = String::from_utf8(builtin.stdout).unwrap();
    text.push_str(
        "table inet sidecheck_trace {\n  chain prerouting { type nat hook prerouting priority -150; policy accept; }\n}\ntable ip sidecheck_trace {\n  chain c { type nat hook output priority -150; policy accept; tcp dport 4444 return; }\n}\n",
    );
    let file = dir.write("user.nft", &text);
    let out = sidecheck(&["run", "--nft", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ruleset = v["ruleset"].as_str().unwrap();
    assert!(ruleset.contains("table inet sidecheck_trace {"), "{ruleset}");
    assert!(ruleset.contains("table ip sidecheck_trace {") && ruleset.contains("tcp dport 4444 return"), "{ruleset}");
    assert!(!ruleset.contains("sidecheck_trace_"), "the tracer's own table is not part of the rules: {ruleset}");
}

#[test]
fn a_trace_table_removed_while_probing_makes_every_trial_an_error() {
    need_root();
    let session = harness::Session::start(harness::SessionConfig {
        topology: harness::topology::TopologyConfig {
            families: vec![harness::topology::Family::Ipv4],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let scenarios = harness::scenario::builtin().unwrap();
    let before = session.run(&scenarios);
    assert!(before.iter().all(|t| t.outcome == harness::verdict::Outcome::Pass), "{:?}", before[0].message);
    // What a daemon left by a generator, or `flush ruleset`, does to it.
    let pod = session.topology().ns(harness::topology::Host::LocalPod).name().to_string();
    let table = harness::trace::trace_table();
    let ran =
        Command::new("ip").args(["netns", "exec", &pod, "nft", "delete", "table", "inet", table]).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let after = session.run(&scenarios);
    for t in &after {
        assert_eq!(t.outcome, harness::verdict::Outcome::Error, "{}: {}", t.name, t.message);
        assert!(t.message.contains(&format!("trace table inet {table} was removed")), "{}", t.message);
    }
}

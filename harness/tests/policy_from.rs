//! `sidecheck policy --from`: each generator's real command line (from the
//! PROVENANCE files in ../shared/third-party) gives a policy, and that
//! policy run against the rule set the generator wrote for it gives the
//! result written below, from the configuration and a reading of the rules.
//! Plus the command line's errors (exit 2, naming the flag and generator).
//!
//! Trials needing ../shared are reported ignored, with one line naming the
//! missing path, when it is absent (a failure under SIDECHECK_REQUIRE_SHARED=1).
//! Runs need root; `cargo test` runs this through ci/as-root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::{data_trial, TempDir, BIN};

fn sidecheck(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running sidecheck")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sidecheck policy --from -- WORDS`: the YAML, or the failure.
fn policy_from(words: &[&str]) -> Result<String, Failed> {
    let mut args = vec!["policy", "--from", "--"];
    args.extend(words);
    let out = sidecheck(&args);
    if out.status.code() != Some(0) {
        return Err(format!("policy --from {words:?}: exit {:?}: {}", out.status.code(), text(&out.stderr)).into());
    }
    Ok(text(&out.stdout))
}

/// One trial of a run: name, outcome, expected ports.
struct Trialled {
    name: String,
    passed: bool,
    ports: Vec<u16>,
}

/// Run sidecheck with `args` (plus `--format json`) and read its trials.
fn run_json(args: &[&str]) -> Result<Vec<Trialled>, Failed> {
    let mut all = vec!["run", "--format", "json"];
    all.extend(args);
    let out = sidecheck(&all);
    if !matches!(out.status.code(), Some(0) | Some(1)) {
        return Err(format!("sidecheck {all:?}: exit {:?}: {}", out.status.code(), text(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("sidecheck {all:?}: not JSON ({e}): {}", text(&out.stdout)))?;
    let trials = v["trials"].as_array().ok_or("no trials in the JSON report")?;
    Ok(trials
        .iter()
        .map(|t| Trialled {
            name: t["name"].as_str().unwrap_or_default().to_string(),
            passed: t["outcome"] == "pass",
            ports: t["expected"]["ports"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p as u16).collect())
                .unwrap_or_default(),
        })
        .collect())
}

/// What a run must show: exactly these trials fail, and these probes
/// expect these ports (so the policy said what the configuration says).
/// What a policy run must show (testdata/policy-from.yaml).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    fail: Vec<String>,
    ports: std::collections::BTreeMap<String, Vec<u16>>,
    /// Fewest trials: a policy that lost its exclusions probes fewer boundaries.
    at_least: usize,
}

/// The expectation of trial `name`, from the data beside the tests.
fn expected(name: &str) -> Result<Expect, Failed> {
    let file = common::expect::testdata().join("policy-from.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut all: std::collections::BTreeMap<String, Expect> =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    all.remove(name).ok_or_else(|| format!("{}: no expectation for `{name}`", file.display()).into())
}

fn check(trials: &[Trialled], want: &Expect) -> Result<(), Failed> {
    let failed: Vec<&str> = trials.iter().filter(|t| !t.passed).map(|t| t.name.as_str()).collect();
    let mut want_fail: Vec<&str> = want.fail.iter().map(String::as_str).collect();
    want_fail.sort();
    let mut got = failed.clone();
    got.sort();
    if got != want_fail {
        return Err(format!("failing trials: expected {want_fail:?}, got {got:?}").into());
    }
    for (name, ports) in &want.ports {
        let t = trials
            .iter()
            .find(|t| t.name == *name)
            .ok_or_else(|| format!("no trial {name} in {:?}", trials.iter().map(|t| &t.name).collect::<Vec<_>>()))?;
        if t.ports != *ports {
            return Err(format!("{name}: expected ports {ports:?}, the policy says {:?}", t.ports).into());
        }
    }
    if trials.len() < want.at_least {
        return Err(format!("{} trials, expected at least {}", trials.len(), want.at_least).into());
    }
    Ok(())
}

/// A trial on shared data: ignored (one line saying why) when it is absent.
fn on_shared(
    args: &Arguments,
    name: &str,
    needs: &[&str],
    f: impl FnOnce(&Path) -> Result<(), Failed> + Send + 'static,
) -> Trial {
    data_trial(args, name, needs, move |root| {
        common::require_root()?;
        f(&root.join("third-party"))
    })
}

/// Write the derived policy to a file and run it with `rules` (sidecheck args).
fn run_policy(tag: &str, words: &[&str], rules: &[String]) -> Result<Vec<Trialled>, Failed> {
    let yaml = policy_from(words)?;
    let dir = TempDir::new(tag);
    let file = dir.0.join("policy.yaml");
    std::fs::write(&file, &yaml).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let mut args = vec!["--policy".to_string(), file.display().to_string()];
    args.extend(rules.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_json(&refs).map_err(|e| format!("{}\npolicy:\n{yaml}", e.message().unwrap_or_default()).into())
}

fn s(p: PathBuf) -> String {
    p.display().to_string()
}

const ISTIO_INJECTOR: &str = "pilot-agent istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020 -o 15020 --log_output_level=default:info";
const LINKERD_INJECTOR: &[&str] = &[
    "proxy-init",
    "--incoming-proxy-port",
    "4143",
    "--outgoing-proxy-port",
    "4140",
    "--proxy-uid",
    "2102",
    "--inbound-ports-to-ignore",
    "4190,4191,4567,4568",
    "--outbound-ports-to-ignore",
    "4567,4568",
    "--iptables-mode",
    "nft",
    "--simulate",
];

fn shared_trials(args: &Arguments) -> Vec<Trial> {
    vec![
        // VARIANTS.md: cni-basic is the sidecar injector's configuration. The
        // golden writes `-o lo -m owner ! --uid-owner 1337 -j RETURN` before
        // the gid rule, so a process with only the proxy's gid calling its own
        // pod is returned instead of redirected inbound: that one probe fails.
        on_shared(
            args,
            "istio::injector-command-line::cni-basic",
            &["third-party/istio/raw/cni/pkg/plugin/testdata/basic.txt.golden"],
            |t| {
                let trials = run_policy(
                    "istio",
                    &[ISTIO_INJECTOR],
                    &["--rules".into(), s(t.join("istio/raw/cni/pkg/plugin/testdata/basic.txt.golden"))],
                )?;
                check(&trials, &expected("istio::injector-command-line::cni-basic")?)
            },
        ),
        // The injector's arguments: 4190,4191,4567,4568 RETURN inbound, 4567,4568
        // outbound; the proxy uid RETURNs before lo, so its call to its own pod
        // reaches the app with no inbound hop. Every probe passes, both families.
        on_shared(
            args,
            "linkerd::injector-defaults::gen-injector-default-nft",
            &["third-party/linkerd/gen-injector-default-nft.sh"],
            |t| {
                let trials = run_policy(
                    "linkerd",
                    LINKERD_INJECTOR,
                    &["--script".into(), s(t.join("linkerd/gen-injector-default-nft.sh"))],
                )?;
                check(&trials, &expected("linkerd::injector-defaults::gen-injector-default-nft")?)
            },
        ),
        // The same rules with IPv4's outbound ignore rule left out (half the
        // fixture): the app's IPv4 calls to 4567 and 4568 now go to 4140, and
        // only those two probes fail; the proxy's own call to its pod at 4567 is
        // still returned by its uid, and IPv6 still has the rule.
        on_shared(
            args,
            "linkerd::broken-fixture::no-ipv4-outbound-ignore",
            &["third-party/linkerd/gen-injector-default-nft.sh"],
            |t| {
                let script = std::fs::read_to_string(t.join("linkerd/gen-injector-default-nft.sh"))
                    .map_err(|e| e.to_string())?;
                let cut = "/usr/sbin/iptables-nft -t nat -A PROXY_INIT_OUTPUT -p tcp --match multiport --dports 4567,4568 -j RETURN";
                let kept: Vec<&str> = script.lines().filter(|l| !l.starts_with(cut)).collect();
                if kept.len() + 1 != script.lines().count() {
                    return Err(format!("expected one `{cut}` line in the script").into());
                }
                let dir = TempDir::new("linkerd-broken");
                let broken = dir.0.join("broken.sh");
                std::fs::write(&broken, kept.join("\n") + "\n").map_err(|e| e.to_string())?;
                let trials = run_policy("linkerd-b", LINKERD_INJECTOR, &["--script".into(), s(broken)])?;
                check(&trials, &expected("linkerd::broken-fixture::no-ipv4-outbound-ignore")?)
            },
        ),
        // root_test.go's configuration: ports 1234/2345 and uid and gid 33, which
        // no built-in profile has: the policy gives them, the linkerd profile the rest.
        on_shared(
            args,
            "linkerd::root-test-uid33::gen-roottest-uid33-nft",
            &["third-party/linkerd/gen-roottest-uid33-nft.sh"],
            |t| {
                let trials = run_policy(
                    "linkerd33",
                    &["proxy-init -p 1234 -o 2345 -u 33 -g 33 --iptables-mode nft --simulate"],
                    &["--script".into(), s(t.join("linkerd/gen-roottest-uid33-nft.sh"))],
                )?;
                check(&trials, &expected("linkerd::root-test-uid33::gen-roottest-uid33-nft")?)
            },
        ),
        // `--policy from-command`: the generator command itself. A stand-in
        // `proxy-init` that runs what proxy-init logged for those arguments.
        on_shared(
            args,
            "linkerd::policy-from-command::generator",
            &["third-party/linkerd/gen-injector-default-nft.sh"],
            |t| {
                let dir = TempDir::new("gen");
                let bin = dir.0.join("proxy-init");
                std::fs::write(
                    &bin,
                    format!("#!/bin/sh\nexec sh {}\n", t.join("linkerd/gen-injector-default-nft.sh").display()),
                )
                .map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
                let cmd = format!("{} {}", bin.display(), LINKERD_INJECTOR[1..].join(" "));
                let trials = run_json(&["--policy", "from-command", "--generator", &cmd])?;
                check(&trials, &expected("linkerd::policy-from-command::generator")?)
            },
        ),
        // The distro containers' default run: uid 5678, inbound 15006 in both
        // families (kumactl's default, from the command line, not the profile),
        // nothing excluded; the proxy's lo call to its own pod is redirected
        // inbound (KUMA_MESH_OUTBOUND rule 2).
        on_shared(
            args,
            "kuma::default::debian-12",
            &["third-party/kuma/default.v4.rules", "third-party/kuma/default.v6.rules"],
            |t| {
                let trials = run_policy(
                    "kuma",
                    &["kumactl", "install", "transparent-proxy", "--kuma-dp-user", "kuma-dp"],
                    &[
                        "--rules".into(),
                        s(t.join("kuma/default.v4.rules")),
                        "--rules6".into(),
                        s(t.join("kuma/default.v6.rules")),
                    ],
                )?;
                check(&trials, &expected("kuma::default::debian-12")?)
            },
        ),
        // The dry-run test's overrides (uid 0, ports 12345/12346, inbound 1000,1001
        // and outbound 2000,2001 excluded), IPv4 only.
        on_shared(
            args,
            "kuma::dry-run-overrides::uid0",
            &["third-party/kuma/kumactl-dryrun-overrides-uid0.v4.rules"],
            |t| {
                let trials = run_policy(
                "kuma0",
                &["kumactl install transparent-proxy --dry-run --ip-family-mode ipv4 --kuma-dp-user root --redirect-outbound-port 12345 --redirect-inbound-port 12346 --exclude-outbound-ports 2000,2001 --exclude-inbound-ports 1000,1001"],
                &["--rules".into(), s(t.join("kuma/kumactl-dryrun-overrides-uid0.v4.rules"))],
            )?;
                check(&trials, &expected("kuma::dry-run-overrides::uid0")?)
            },
        ),
        // sdk/nftables' "no proxy outbound port provided" (uid 123, inbound
        // 20000): no lo rule, so the app's call to its own pod address, and to
        // 127.0.0.2, goes to 15001; only 127.0.0.1 and ::1 are returned.
        on_shared(args, "consul::default::nft-uid123", &["third-party/consul/nft-default-uid123.nft"], |t| {
            let trials = run_policy(
                "consul",
                &["consul", "connect", "redirect-traffic", "-proxy-uid", "123", "-proxy-inbound-port", "20000"],
                &["--nft".into(), s(t.join("consul/nft-default-uid123.nft"))],
            )?;
            check(&trials, &expected("consul::default::nft-uid123")?)
        }),
        // "exclude inbound ports is set": outbound 21000, 22000 and 22500 not
        // captured inbound. 21000 is also the consul profile's readiness port
        // (consul-k8s's -envoy-ready-bind-port), so the built-in profile is
        // refused for it (below) and a copy with readiness on 21001 runs it.
        on_shared(
            args,
            "consul::exclude-inbound::nft-uid123",
            &["third-party/consul/nft-exclude-inbound-uid123.nft"],
            |t| {
                let dir = TempDir::new("consul-profile");
                let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles/consul.yaml");
                let yaml = std::fs::read_to_string(&builtin).map_err(|e| e.to_string())?;
                let moved: String = yaml
                    .lines()
                    .filter(|l| !l.starts_with("rules:"))
                    .map(|l| if l.trim() == "health: 21000" { "  health: 21001" } else { l })
                    .collect::<Vec<_>>()
                    .join("\n");
                if !moved.contains("health: 21001") {
                    return Err("the consul profile's health port is no longer 21000: revisit this trial".into());
                }
                let profile = dir.0.join("consul-ready-21001.yaml");
                std::fs::write(&profile, moved + "\n").map_err(|e| e.to_string())?;
                let cmd = "consul connect redirect-traffic -proxy-uid 123 -proxy-inbound-port 20000 -proxy-outbound-port 21000 -exclude-inbound-port 22000 -exclude-inbound-port 22500";
                let nft = s(t.join("consul/nft-exclude-inbound-uid123.nft"));
                let clash = sidecheck(&["run", "--policy", "from-command", "--generator", cmd]);
                if clash.status.code() != Some(2)
                    || !text(&clash.stderr).contains("outbound_port 21000 is also the consul profile's health port")
                {
                    return Err(format!("the built-in profile should be refused: {}", text(&clash.stderr)).into());
                }
                let trials = run_policy("consul-x", &[cmd], &["--nft".into(), nft, "--profile".into(), s(profile)])?;
                check(&trials, &expected("consul::exclude-inbound::nft-uid123")?)
            },
        ),
    ]
}

/// A hand-written policy using the new fields, with no rule source: its
/// reference rules under each mesh's profile must meet that mesh's oracle
/// (the two follow the same contract; a rule the reference forgets, or an
/// oracle branch it does not implement, fails here).
fn reference_trials() -> Vec<Trial> {
    ["istio", "linkerd", "kuma", "consul"]
        .into_iter()
        .map(|mesh| {
            Trial::test(format!("reference::{mesh}::new-fields"), move || {
                common::require_root()?;
                let dir = TempDir::new(&format!("ref-{mesh}"));
                let file = dir.0.join("policy.yaml");
                let yaml = "inbound_ports: '*'\ninbound_exclude: ['6000-6010']\ninbound_sources_exclude: [198.51.100.0/24]\noutbound_ranges_include: '*'\noutbound_ranges_exclude: [192.0.2.0/24]\noutbound_ports_exclude: ['5555:5557']\noutbound_uids_exclude: [456]\nipv6: true\n";
                std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
                let trials = run_json(&["--policy", &file.display().to_string(), "--profile", mesh])?;
                check(
                    &trials,
                    &expected("reference::new-fields")?,
                )
            })
        })
        .collect()
}

/// Bad command lines: exit 2, the message names what is wrong, no panic; no root needed.
fn error_trials() -> Vec<Trial> {
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "unknown-flag",
            vec!["policy", "--from", "--", "proxy-init", "-p", "1", "--bogus"],
            vec!["proxy-init: unknown flag `--bogus`", "root.go"],
        ),
        (
            "unknown-consul-flag",
            vec![
                "policy",
                "--from",
                "--",
                "consul connect redirect-traffic -proxy-uid 1 -proxy-inbound-port 2 -exclude-port 3",
            ],
            vec!["consul connect redirect-traffic: unknown flag `-exclude-port`"],
        ),
        (
            "inexpressible-flag",
            vec![
                "policy",
                "--from",
                "--",
                "kumactl",
                "install",
                "transparent-proxy",
                "--vnet",
                "docker0:172.17.0.0/16",
            ],
            vec!["--vnet cannot be expressed in a policy"],
        ),
        (
            "not-a-generator",
            vec!["policy", "--from", "--", "iptables", "-t", "nat", "-L"],
            vec!["is not a generator command"],
        ),
        ("no-command", vec!["policy", "--from"], vec!["give the generator command line after `--`"]),
        ("from-command-without-generator", vec!["run", "--policy", "from-command"], vec!["give it with --generator"]),
        (
            "from-command-bad-flag",
            vec!["run", "--policy", "from-command", "--generator", "istio-iptables --envoy-prot 1"],
            vec!["deriving the policy from --generator", "istio-iptables: unknown flag `--envoy-prot`"],
        ),
        (
            "from-command-profile-of-another-mesh",
            vec![
                "run",
                "--profile",
                "linkerd",
                "--policy",
                "from-command",
                "--generator",
                "kumactl install transparent-proxy",
            ],
            vec!["mesh: kuma but the profile is linkerd"],
        ),
    ];
    cases
        .into_iter()
        .map(|(name, args, want)| {
            Trial::test(format!("errors::{name}"), move || {
                let out = sidecheck(&args);
                let err = text(&out.stderr);
                if out.status.code() != Some(2) {
                    return Err(format!("{args:?}: exit {:?}, expected 2: {err}", out.status.code()).into());
                }
                if err.contains("panicked") {
                    return Err(format!("{args:?} panicked: {err}").into());
                }
                for w in &want {
                    if !err.contains(w) {
                        return Err(format!("{args:?}: `{w}` missing from: {err}").into());
                    }
                }
                Ok(())
            })
        })
        .collect()
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = error_trials();
    trials.extend(shared_trials(&args));
    trials.extend(reference_trials());
    libtest_mimic::run(&args, trials).exit();
}

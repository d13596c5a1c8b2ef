//! `sidecheck diff A B` as a user runs it: exit 0 when no connection's fate
//! differs, 1 when one does (listing exactly those), 2 on bad input; and on
//! Istio's own data (`shared::` trials, under the shared-data convention:
//! ignored with the missing path named when ../shared is absent, failed
//! instead when SIDECHECK_REQUIRE_SHARED=1). Expected differences are
//! written from reading the rules (docs/decisions.md), never from output.
//! Needs root, like the suite.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::{code, data_trial, expect, text, TempDir, BIN};
use harness::base::net::Family;

const NFT_GOLDENS: &str = "third-party/istio/raw/tools/istio-nftables/pkg/capture/testdata";

fn sidecheck(args: &[&str]) -> Result<Output, Failed> {
    common::require_root()?;
    Command::new(BIN).args(args).output().map_err(|e| format!("running sidecheck: {e}").into())
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn rules(args: &[&str]) -> Result<String, Failed> {
    let out = sidecheck(&[&["rules"], args].concat())?;
    ensure(code(&out) == 0, || text(&out))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A diff's JSON report and exit code.
fn diff_json(args: &[&str]) -> Result<(i32, serde_json::Value), Failed> {
    let out = sidecheck(&[&["diff"], args, &["--format", "json"]].concat())?;
    let v =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("diff {args:?}: not JSON ({e}): {}", text(&out)))?;
    Ok((code(&out), v))
}

fn differing(v: &serde_json::Value) -> BTreeSet<String> {
    v["differences"].as_array().into_iter().flatten().map(|d| d["name"].as_str().unwrap_or("").to_string()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn same(args: &[&str]) -> Result<(), Failed> {
    let (c, v) = diff_json(args)?;
    ensure(c == 0 && differing(&v).is_empty(), || format!("diff {args:?}: exit {c}, differences {:?}", differing(&v)))?;
    ensure(v["compared"].as_array().is_some_and(|a| !a.is_empty()), || format!("diff {args:?} compared nothing"))
}

/// The built-in rules without the proxy's uid and gid RETURNs (both families).
fn without_proxy_returns(dir: &TempDir) -> Result<String, Failed> {
    let strip = |t: String| -> String {
        t.lines()
            .filter(|l| {
                *l != "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"
                    && *l != "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let (v4, v6) = (rules(&[])?, rules(&["--form", "restore6"])?);
    let (s4, s6) = (strip(v4.clone()), strip(v6.clone()));
    ensure(s4.lines().count() + 2 == v4.lines().count() && s6.lines().count() + 2 == v6.lines().count(), || {
        "the built-in rules no longer hold both proxy RETURNs in both families".into()
    })?;
    Ok(format!("{},{}", dir.file("noret.v4", &s4), dir.file("noret.v6", &s6)))
}

fn cli_trials() -> Vec<Trial> {
    vec![
        Trial::test("diff::builtin-against-builtin-classic-is-the-same", || same(&["builtin", "builtin:classic"])),
        Trial::test("diff::builtin-restore-against-its-native-nft-form-is-the-same", || {
            let dir = TempDir::new("nft");
            let nft = dir.file("r.nft", &rules(&["--form", "nft"])?);
            same(&["builtin", &format!("nft:{nft}")])
        }),
        // From reading the rules (testdata/diffs.yaml): without the proxy's
        // uid and gid RETURNs, exactly the listed connections change.
        Trial::test("diff::without-the-proxy-returns-lists-exactly-the-connections-that-change", || {
            let dir = TempDir::new("noret");
            let b = without_proxy_returns(&dir)?;
            let expect = expect::diff_expect("without-proxy-returns")?;
            // `type2-local-to-remote::ipv4` -> `istio::type2-local-to-remote::ipv4`, as diff names it.
            let names = |trials: &BTreeSet<String>| -> BTreeSet<String> {
                trials.iter().map(|t| format!("istio::{t}")).collect()
            };
            let ports = names(&expect.ports_differ);
            let (c, v) = diff_json(&["builtin", &b])?;
            let want: BTreeSet<String> = ports.union(&names(&expect.rule_differs)).cloned().collect();
            ensure(c == 1 && differing(&v) == want, || format!("exit {c}, {:?} differ, want {want:?}", differing(&v)))?;
            let n = expect::trial_count(&Family::BOTH);
            ensure(v["compared"].as_array().map(Vec::len) == Some(n), || format!("compared {}", v["compared"]))?;
            let d5 =
                v["differences"].as_array().unwrap().iter().find(|d| d["name"] == "istio::type5-envoy-to-admin::ipv4");
            let d5 = d5.ok_or("no flow 5 difference")?;
            ensure(
                d5["ports_differ"] == false
                    && d5["first"]["hook"] == "OUTPUT"
                    && d5["first"]["a"]["text"] == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"
                    && d5["first"]["b"]["text"] == "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                || format!("flow 5: {d5:#}"),
            )?;
            let (c, v) = diff_json(&["builtin", &b, "--assert", "ports"])?;
            ensure(c == 1 && differing(&v) == ports, || format!("--assert ports: exit {c}, {:?}", differing(&v)))?;
            // Human output: only the differing connections, both rules side by side.
            let out = sidecheck(&["diff", "builtin", &b])?;
            let human = text(&out);
            let d = want.len();
            ensure(code(&out) == 1 && human.contains(&format!("{d} of {n} connections differ")), || human.clone())?;
            ensure(!human.contains("type1-remote-to-local") && !human.contains("type3-prometheus"), || human.clone())?;
            let side_by_side = human.lines().any(|l| {
                l.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
                    && l.contains("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
            });
            ensure(side_by_side, || human.clone())?;
            // Markdown (a Mermaid pair per difference) and JUnit, as files.
            let (md, xml) = (dir.0.join("d.md"), dir.0.join("d.xml"));
            let out = sidecheck(&[
                "diff",
                "builtin",
                &b,
                "--output",
                &format!("markdown={}", md.display()),
                "--output",
                &format!("junit={}", xml.display()),
            ])?;
            ensure(code(&out) == 1, || text(&out))?;
            let md = std::fs::read_to_string(md)?;
            // A pair (one diagram per side) per difference.
            ensure(md.matches("```mermaid\nflowchart LR").count() == 2 * d, || md.clone())?;
            let xml = std::fs::read_to_string(xml)?;
            let totals = format!("tests=\"{n}\" failures=\"{d}\"");
            ensure(xml.contains(&totals) && xml.matches("<failure").count() == d, || xml.clone())
        }),
        Trial::test("diff::bad-input-is-exit-2-with-what-to-do", || {
            let dir = TempDir::new("bad");
            let garbage = dir.file("garbage.rules", "*nat\n-A NOPE -j NOWHERE\nCOMMIT\n");
            for (args, says) in [
                (
                    vec!["diff", "builtin:nine", "builtin"],
                    "the built-in rules come as builtin, builtin:current or builtin:classic",
                ),
                (vec!["diff", "builtin", "/nonexistent/rules.v4"], "/nonexistent/rules.v4"),
                (vec!["diff", "builtin", "nft:"], "names no file"),
                (vec!["diff", "profile:kuma", "profile:linkerd"], "say which contract to probe with --profile"),
                (
                    vec!["diff", "builtin", "builtin", "--format", "summary"],
                    "diff writes human, json, markdown or junit",
                ),
                // The tool's own message, for the side that did not install.
                (vec!["diff", "builtin", &garbage], "setting up B"),
                (vec!["diff", "builtin", &garbage], "Chain 'NOWHERE' does not exist"),
            ] {
                let out = sidecheck(&args)?;
                ensure(code(&out) == 2 && text(&out).contains(says), || {
                    format!("{args:?}: exit {}: {}", code(&out), text(&out))
                })?;
            }
            Ok(())
        }),
    ]
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policies")
}

/// The variants whose goldens name groups this machine lacks (`java`,
/// `ftp`): they cannot be installed, so they are not compared.
const NEEDS_GROUPS: &[&str] = &[
    "outbound-owner-groups",
    "outbound-owner-groups-exclude",
    "ipv6-dns-outbound-owner-groups",
    "ipv6-dns-outbound-owner-groups-exclude",
];

fn shared_trials(args: &Arguments) -> Vec<Trial> {
    vec![
        // Each istio-iptables golden against its istio-nftables twin (the
        // same variant, VARIANTS.md) on its policy's matrix. Read side by
        // side, every pair writes the same rules in the same order per
        // family, but for the TPROXY mangle ISTIO_INBOUND inserts, which
        // istio-nftables puts in another order (`iifname lo mark != 1338
        // return` before the 127.0.0.6 RETURN): two RETURNs no probe tells
        // apart, since under TPROXY the proxy's upstream keeps the client's
        // address and carries mark 1337, which the first rule returns in
        // both. So no connection may differ (docs/decisions.md).
        data_trial(
            args,
            "shared::istio-iptables-goldens-against-their-istio-nftables-twins",
            &["third-party/istio/raw/tools/istio-iptables/pkg/capture/testdata", NFT_GOLDENS],
            |root| {
                // The upstream dry-run files as they are: `diff` splits them per family.
                let ipt = root.join("third-party/istio/raw/tools/istio-iptables/pkg/capture/testdata");
                let nft = root.join(NFT_GOLDENS);
                let mut files: Vec<String> = std::fs::read_dir(policies())?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("iptables-"))
                    .collect();
                files.sort();
                let mut pairs: Vec<(String, [String; 7])> = Vec::new();
                for file in files {
                    let name = file.trim_end_matches(".yaml");
                    let variant = name.trim_start_matches("iptables-");
                    let (golden, twin) = (ipt.join(format!("{variant}.golden")), nft.join(format!("{variant}.golden")));
                    if !golden.exists() || !twin.exists() || NEEDS_GROUPS.contains(&variant) {
                        continue;
                    }
                    let policy = policies().join(&file);
                    let args = [
                        "diff".to_string(),
                        golden.display().to_string(),
                        format!("nft:{}", twin.display()),
                        "--policy".into(),
                        policy.display().to_string(),
                        "--format".into(),
                        "json".into(),
                    ];
                    pairs.push((variant.to_string(), args));
                }
                // Each pair is its own `sidecheck diff`, mostly waiting on the
                // kernel and on probes: twice as many at once as there are cores.
                let width = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
                let next = std::sync::atomic::AtomicUsize::new(0);
                let problems = std::sync::Mutex::new(Vec::new());
                std::thread::scope(|scope| {
                    for _ in 0..width {
                        scope.spawn(|| loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((variant, args)) = pairs.get(i) else { break };
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            let problem = match sidecheck(&args) {
                                Err(e) => Some(format!("{variant}: {:?}", e.message())),
                                Ok(out) => {
                                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                                    (code(&out) != 0 || !differing(&v).is_empty()).then(|| {
                                        format!(
                                            "{variant}: exit {}, differ: {:?}\n{}",
                                            code(&out),
                                            differing(&v),
                                            String::from_utf8_lossy(&out.stderr)
                                        )
                                    })
                                }
                            };
                            problems.lock().unwrap().extend(problem);
                        });
                    }
                });
                let (pairs, mut problems) = (pairs.len(), problems.into_inner().unwrap());
                problems.sort();
                ensure(pairs >= 22, || format!("only {pairs} pairs compared"))?;
                ensure(problems.is_empty(), || problems.join("\n"))
            },
        ),
        // cni-basic of 2021-12 against today's: the lo redirects of 2021 lack
        // `-p tcp ! --dport 15008`, so the proxy's own call to its pod's tunnel
        // port is redirected to 15006 where today the uid RETURN lets it
        // through. (2021's `-A OUTPUT -p tcp` and today's UDP 15020 RETURN
        // differ only for UDP, which this matrix does not send; a gid-only
        // caller is returned by `-o lo ! --uid-owner 1337` in both.)
        data_trial(
            args,
            "shared::cni-basic-2021-12-against-today",
            &[
                "third-party/istio/raw/cni-basic-2021-12.golden",
                "third-party/istio/raw/cni/pkg/plugin/testdata/basic.txt.golden",
            ],
            |root| {
                let i = root.join("third-party/istio");
                let policy = policies().join("cni-basic.yaml");
                let (c, v) = diff_json(&[
                    i.join("raw/cni/pkg/plugin/testdata/basic.txt.golden").to_str().unwrap(),
                    i.join("raw/cni-basic-2021-12.golden").to_str().unwrap(),
                    "--policy",
                    policy.to_str().unwrap(),
                ])?;
                tunnel_port_difference(c, &v, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
            },
        ),
        // A policy of another mesh is read as `run` reads it (its `mesh:`
        // picks the profile): Kuma's own profile rule set, written in the
        // shape kumactl writes, against kumactl's real output for the same
        // configuration (the defaults: PROVENANCE.md) decides every probe of
        // the matrix the same way.
        data_trial(
            args,
            "shared::kuma-profile-rules-against-kumactl-under-its-policy",
            &["third-party/kuma/default.v4.rules", "third-party/kuma/default.v6.rules"],
            |root| {
                let k = root.join("third-party/kuma");
                let dir = TempDir::new("kuma");
                let out = sidecheck(&[
                    "policy",
                    "--from",
                    "--",
                    "kumactl",
                    "install",
                    "transparent-proxy",
                    "--kuma-dp-user",
                    "kuma-dp",
                ])?;
                ensure(code(&out) == 0, || text(&out))?;
                let policy = dir.file("kuma.yaml", &String::from_utf8_lossy(&out.stdout));
                let real = format!("{},{}", k.join("default.v4.rules").display(), k.join("default.v6.rules").display());
                let (c, v) = diff_json(&["profile:kuma", &real, "--policy", &policy])?;
                ensure(c == 0 && differing(&v).is_empty(), || format!("exit {c}: {v:#}"))
            },
        ),
        // The built-in current shape against the classic one on the same
        // matrix: the classic lo redirects have no tunnel-port guard (the
        // same one difference); its port-22 RETURN and TCP-only OUTPUT jump
        // meet no probe of this matrix.
        Trial::test("diff::builtin-current-against-classic-on-cni-basic", || {
            let policy = policies().join("cni-basic.yaml");
            let (c, v) =
                diff_json(&["builtin", "builtin:classic", "--policy", policy.to_str().unwrap(), "--family", "ipv4"])?;
            tunnel_port_difference(c, &v, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
        }),
    ]
}

fn tunnel_port_difference(c: i32, v: &serde_json::Value, a_rule: &str) -> Result<(), Failed> {
    let want = set(&["policy::proxy-uid-1337-to-own-pod-tunnel-15008::ipv4"]);
    ensure(c == 1 && differing(v) == want, || format!("exit {c}, differ {:?}, want {want:?}", differing(v)))?;
    let d = &v["differences"][0];
    ensure(
        d["ports_differ"] == true
            && d["first"]["leg"] == 1
            && d["first"]["hook"] == "OUTPUT"
            && d["first"]["a"]["text"] == a_rule
            && d["first"]["b"]["text"] == "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        || format!("{d:#}"),
    )
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = cli_trials();
    trials.extend(shared_trials(&args));
    libtest_mimic::run(&args, trials).exit();
}

//! `--assert paths` on a user's rule set: each connection must leave by the
//! same kind of rule as under the contract's own rules, whatever the
//! numbers, chain names, empty tables or front end (docs/decisions.md).
//! Needs root, like the suite; no shared data.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{code, expect, need_root, text, TempDir, BIN};

fn sidecheck(args: &[&str]) -> Output {
    need_root();
    Command::new(BIN).args(args).output().expect("running sidecheck")
}

fn builtin(args: &[&str]) -> String {
    let out = sidecheck(&[&["rules"], args].concat());
    assert_eq!(code(&out), 0, "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Failing trials of a JSON run: (name, message).
fn failures(out: &Output) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)));
    v["trials"]
        .as_array()
        .unwrap_or_else(|| panic!("no trials: {}", text(out)))
        .iter()
        .filter(|t| t["outcome"] == "fail")
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["message"].as_str().unwrap().to_string()))
        .collect()
}

fn passes_with_paths(args: &[&str]) {
    let out = sidecheck(&[&["run", "--assert", "paths", "--format", "json"], args].concat());
    assert_eq!(failures(&out), vec![], "{args:?}");
    assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
}

#[test]
fn the_builtin_rules_plus_an_empty_filter_table_pass() {
    let dir = TempDir::new("filter");
    let filter = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    let v4 = dir.file("r.v4", &(builtin(&[]) + filter));
    let v6 = dir.file("r.v6", &(builtin(&["--form", "restore6"]) + filter));
    passes_with_paths(&["--rules", &v4, "--rules6", &v6]);
}

#[test]
fn the_builtin_rules_as_native_nftables_pass() {
    let dir = TempDir::new("nft");
    let nft = dir.file("r.nft", &builtin(&["--form", "nft"]));
    passes_with_paths(&["--nft", &nft]);
}

#[test]
fn the_builtin_rules_as_a_script_and_through_iptables_legacy_pass() {
    let dir = TempDir::new("forms");
    let script = dir.file("r.sh", &builtin(&["--form", "script"]));
    passes_with_paths(&["--script", &script]);
    let v4 = dir.file("r.v4", &builtin(&[]));
    passes_with_paths(&["--rules", &v4, "--backend", "legacy"]);
}

/// Every mesh's own rule files, given as files: the same verdict as its
/// profile's embedded rules (a mesh whose rules fail a flow by design,
/// findings.yaml, is left to the conformance suite).
#[test]
fn kuma_and_linkerd_rule_files_pass_under_their_profiles() {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles");
    let findings = expect::findings().unwrap_or_else(|e| panic!("{e}"));
    for p in expect::meshes().into_iter().filter(|p| !findings.contains_key(&p.name)) {
        let files = p.rules.clone().expect("meshes() have rule files");
        let mut args = vec!["--profile".to_string(), p.name.clone()];
        for (flag, file) in [("--rules", files.ipv4), ("--rules6", files.ipv6)] {
            if let Some(f) = file {
                args.extend([flag.to_string(), profiles.join(f).display().to_string()]);
            }
        }
        passes_with_paths(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[test]
fn a_no_op_return_inserted_into_the_classic_rules_passes() {
    let dir = TempDir::new("noop");
    let classic = builtin(&["--shape", "classic"]);
    let catch_all = "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n";
    assert!(classic.contains(catch_all));
    // 192.0.2.1 (TEST-NET-1): no probe goes there; the catch-all is now rule 10.
    let v4 = dir
        .file("r.v4", &classic.replace(catch_all, &format!("-A ISTIO_OUTPUT -d 192.0.2.1/32 -j RETURN\n{catch_all}")));
    passes_with_paths(&["--rules", &v4]);
}

/// The proxy's call to its admin port on 127.0.0.1 goes (`-g`) to a chain
/// whose gid RETURN lets it through: its ports stay right, its deciding rule
/// is not the reference's. Only flow 5 changes, and the message names both
/// rules and how to trace that probe.
#[test]
fn the_gid_return_deciding_for_the_uid_return_fails_exactly_that_flow() {
    let dir = TempDir::new("gid");
    let uid_return = "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n";
    let rules = builtin(&[])
        .replace(":ISTIO_REDIRECT - [0:0]\n", ":ISTIO_REDIRECT - [0:0]\n:PROXY_LOCAL - [0:0]\n")
        .replace(
            uid_return,
            &format!("-A ISTIO_OUTPUT -d 127.0.0.1/32 -m owner --uid-owner 1337 -g PROXY_LOCAL\n{uid_return}"),
        )
        .replace("COMMIT\n", "-A PROXY_LOCAL -m owner --gid-owner 1337 -j RETURN\nCOMMIT\n");
    let v4 = dir.file("gid.v4", &rules);
    // Ports alone: every trial passes.
    let out = sidecheck(&["run", "--rules", &v4, "--format", "json"]);
    assert_eq!(failures(&out), vec![], "without --assert paths");
    let out = sidecheck(&["run", "--rules", &v4, "--assert", "paths", "--format", "json"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let failed = failures(&out);
    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["istio::type5-envoy-to-admin::nft::ipv4"], "{failed:?}");
    let message = &failed[0].1;
    for want in [
        "ports as expected (envoy-admin:15000)",
        "leg 1, OUTPUT",
        "reference  : nat ISTIO_OUTPUT rule 4  -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "these rules: nat PROXY_LOCAL rule 1  -A PROXY_LOCAL -m owner --gid-owner 1337 -j RETURN",
    ] {
        assert!(message.contains(want), "`{want}` missing:\n{message}");
    }
    // The trace command replays that very probe against these rules.
    let cmd = message.lines().find_map(|l| l.trim().strip_prefix("trace it: sidecheck ")).expect("a trace command");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(words, ["trace", "--from", "local-pod:1337", "--to", "127.0.0.1:15000", "--rules", v4.as_str()]);
    let out = sidecheck(&words);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("-A PROXY_LOCAL -m owner --gid-owner 1337 -j RETURN"), "{}", text(&out));
}

#[test]
fn a_profile_without_rules_of_its_own_cannot_assert_paths_on_rules() {
    let dir = TempDir::new("norules");
    let profile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles/istio.yaml"))
            .unwrap();
    let p = dir.file("mine.yaml", &profile.replace("name: istio", "name: mine"));
    let v4 = dir.file("r.v4", &builtin(&[]));
    let out = sidecheck(&["run", "--profile", &p, "--rules", &v4, "--assert", "paths"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("has none: give the profile its rule set"), "{}", text(&out));
}

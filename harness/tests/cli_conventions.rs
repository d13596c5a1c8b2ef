//! The command-line conventions of test runners, as a user meets them:
//! `sidecheck list` and `run --test/--skip` agreeing on trial names, a filter
//! that matches nothing being an error, `--color` with NO_COLOR and
//! CLICOLOR_FORCE, GitHub annotations pointing at the deciding rule's line,
//! and `trace`/`--output` accepting only the formats they have.
//!
//! Tests that start a run need root and fail saying so without it; the
//! others run anywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{code, expect, need_root, stderr, stdout, TempDir, BIN};
use harness::base::net::Family;

/// sidecheck with `args`, `env` set and the variables the tests are about
/// removed, so the caller's environment (say, a CI's GITHUB_ACTIONS) cannot
/// decide a result.
fn sidecheck_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    for v in ["NO_COLOR", "CLICOLOR_FORCE", "GITHUB_ACTIONS", "GITHUB_WORKSPACE"] {
        c.env_remove(v);
    }
    c.args(args).envs(env.iter().copied());
    let child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let left = harness::sandbox::registry::namespaces_of(&format!("sidecheck-{pid}"));
    assert!(left.is_empty(), "sidecheck {args:?} left namespaces behind: {left:?}");
    out
}

fn sidecheck(args: &[&str]) -> Output {
    sidecheck_env(args, &[])
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(out), stderr(out)))
}

fn names(v: &serde_json::Value, key: &str, field: Option<&str>) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no `{key}` array in {v}"))
        .iter()
        .map(|t| field.map_or(t, |f| &t[f]).as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_names_the_builtin_trials_and_profiles_without_root() {
    let out = sidecheck(&["list", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&out);
    let trials = names(&v, "trials", None);
    // Every built-in scenario in both families.
    assert_eq!(trials.len(), expect::trial_count(&Family::BOTH), "{trials:?}");
    assert!(trials.contains(&"istio::type2-local-to-remote::nft::ipv4".to_string()), "{trials:?}");
    assert!(trials.contains(&"istio::type6-agent-to-istiod::nft::ipv6".to_string()), "{trials:?}");
    for p in harness::model::profile::Profile::builtin_names() {
        assert!(names(&v, "profiles", None).contains(&p.to_string()), "{v}");
    }
    // The backend part of a name follows the rules given, as in `run`.
    let v = json(&sidecheck(&["list", "--format", "json", "--backend", "legacy", "--family", "ipv6"]));
    assert!(names(&v, "trials", None).iter().all(|t| t.ends_with("::legacy::ipv6")), "{v}");
    let human = stdout(&sidecheck(&["list", "--test", "type5"]));
    assert!(human.contains("  istio::type5-envoy-to-admin::nft::ipv4\n"), "{human}");
    assert!(!human.contains("type2"), "{human}");
    // Every profile file the repository has, sorted: adding a mesh is a data file only.
    let profiles = expect::profile_files();
    assert!(human.contains(&format!("profiles (--profile): {}\n", profiles.join(", "))), "{human}");
}

#[test]
fn list_shows_a_policys_probes() {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policies/cni-basic.yaml");
    let out = sidecheck(&["list", "--format", "json", "--policy", policy.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&out);
    let trials = names(&v, "trials", None);
    assert!(trials.contains(&"policy::inbound-8080::nft::ipv4".to_string()), "{trials:?}");
    assert!(trials.iter().all(|t| t.starts_with("policy::")), "{trials:?}");
    // Each probe once among the scenarios, each a trial per family.
    let probes = names(&v, "scenarios", Some("name"));
    assert!(probes.iter().all(|p| trials.iter().any(|t| t.starts_with(&format!("{p}::")))), "{probes:?}");
    assert!(!probes.is_empty() && trials.len() >= probes.len());
}

#[test]
fn bad_filters_are_exit_2_before_anything_runs() {
    // No root needed: selection comes before the topology.
    let none = format!("no trial matches --test 'no-such-trial' (of {} trials)", expect::trial_count(&Family::BOTH));
    for (args, want) in [
        (&["run", "--test", "no-such-trial"][..], none.as_str()),
        (&["run", "--skip", "."][..], "no trial matches --skip '.'"),
        (&["run", "--test", "type2", "--skip", "type2"][..], "no trial matches --test 'type2' --skip 'type2'"),
        (&["list", "--test", "no-such-trial"][..], "no trial matches"),
        (&["run", "--test", "type(2"][..], "--test `type(2` is not a regular expression"),
        (&["run", "--skip", "[ipv4"][..], "--skip `[ipv4` is not a regular expression"),
    ] {
        let out = sidecheck(args);
        let e = stderr(&out);
        assert_eq!(code(&out), 2, "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
        if want.starts_with("no trial") {
            assert!(e.contains("`sidecheck list`"), "{args:?}: says how to see the names: {e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn trace_and_output_accept_only_the_formats_they_have() {
    for f in ["junit", "markdown", "summary", "github"] {
        let out = sidecheck(&["trace", "--from", "local-pod", "--to", "remote-pod:9090", "--format", f]);
        let e = stderr(&out);
        assert_eq!(code(&out), 2, "trace --format {f}: {e}");
        assert!(e.contains(&format!("invalid value '{f}'")) && e.contains("[possible values: human, json]"), "{e}");
    }
    // In a temporary directory: were it accepted, the run would write it.
    let dir = TempDir::new("output");
    let file = format!("github={}", dir.0.join("x.txt").display());
    let out = sidecheck(&["run", "--output", &file]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("not a format of --output: human, json, junit, markdown or summary"),
        "{}",
        stderr(&out)
    );
    let help = stdout(&sidecheck(&["run", "--help"]));
    assert!(help.contains("FORMAT=FILE (human, json, junit, markdown, summary)"), "{help}");
    assert!(
        help.contains("--test <REGEX>") && help.contains("--skip <REGEX>") && help.contains("--color <WHEN>"),
        "{help}"
    );
}

#[test]
fn run_keeps_exactly_the_trials_list_names() {
    need_root();
    let selections: [(&[&str], &[&str]); 2] = [
        (
            &["--family", "ipv4", "--backend", "legacy", "--test", "type2|type5", "--skip", "admin"],
            &["istio::type2-local-to-remote::legacy::ipv4"],
        ),
        // A name picks one family of a scenario that runs in both.
        (&["--test", "type2.*ipv6$"], &["istio::type2-local-to-remote::nft::ipv6"]),
    ];
    for (select, want) in selections {
        let listed = json(&sidecheck(&[&["list", "--format", "json"][..], select].concat()));
        let listed = names(&listed, "trials", None);
        assert_eq!(listed, want, "{select:?}");
        let out = sidecheck(&[&["run", "--format", "json"][..], select].concat());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let ran = names(&json(&out), "trials", Some("name"));
        assert_eq!(ran, listed, "{select:?}");
    }
}

/// A run of one trial, for the colour tests.
const ONE: [&str; 5] = ["run", "--family", "ipv4", "--test", "type2"];

#[test]
fn colour_follows_the_flag_and_the_environment_and_never_reaches_files() {
    need_root();
    let dir = TempDir::new("colour");
    let file = dir.0.join("report.txt");
    let output = format!("human={}", file.display());
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = sidecheck_env(&[&ONE[..], extra].concat(), env);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    };
    const GREEN: &str = "\x1b[32mpass\x1b[0m";
    let coloured = run(&["--color", "always", "--output", &output], &[("NO_COLOR", "1")]);
    assert!(coloured.contains(GREEN), "{coloured}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(!written.contains('\x1b'), "--output files are never coloured: {written}");
    // Not a terminal here: auto is plain unless CLICOLOR_FORCE says otherwise.
    assert!(!run(&[], &[]).contains('\x1b'));
    assert!(run(&["--color", "auto"], &[("CLICOLOR_FORCE", "1")]).contains(GREEN));
    assert!(!run(&[], &[("CLICOLOR_FORCE", "0")]).contains('\x1b'));
    assert!(!run(&[], &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]).contains('\x1b'));
    assert!(!run(&["--color", "never"], &[("CLICOLOR_FORCE", "1")]).contains('\x1b'));
}

/// The built-in rules in `form`, with a rule inserted before the line that
/// starts with `before` which lets the local app reach the remote pod
/// without Envoy: flow 2 then fails, decided by the inserted rule. Returns
/// the file and the inserted rule's line.
fn broken_rules(dir: &TempDir, form: &str, before: &str, bypass: &str) -> (PathBuf, usize) {
    let out = sidecheck(&["rules", "--form", form]);
    assert_eq!(code(&out), 0);
    let mut lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    let at = lines.iter().position(|l| l.starts_with(before)).unwrap_or_else(|| panic!("no `{before}` in {lines:?}"));
    lines.insert(at, bypass.to_string());
    (dir.write(&format!("broken.{form}"), &(lines.join("\n") + "\n")), at + 1)
}

#[test]
fn github_annotations_point_at_the_line_of_the_deciding_rule() {
    need_root();
    let dir = TempDir::new("github");
    let cases = [
        ("restore", "--rules", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "-A ISTIO_OUTPUT -d 10.244.0.20/32 -j RETURN"),
        (
            "nft",
            "--nft",
            "add rule inet istio-proxy-nat istio-output jump istio-redirect",
            "add rule inet istio-proxy-nat istio-output ip daddr 10.244.0.20 return",
        ),
        (
            "script",
            "--script",
            "iptables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            "iptables -t nat -A ISTIO_OUTPUT -d 10.244.0.20/32 -j RETURN",
        ),
    ];
    for (form, flag, before, bypass) in cases {
        let (file, line) = broken_rules(&dir, form, before, bypass);
        let out = sidecheck_env(
            &["run", flag, file.to_str().unwrap(), "--family", "ipv4", "--format", "github"],
            // The repository root, as GitHub sets it: paths are shown from it.
            &[("GITHUB_WORKSPACE", dir.0.to_str().unwrap())],
        );
        let text = stdout(&out);
        assert_eq!(code(&out), 1, "{form}: {text}{}", stderr(&out));
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("::")).collect();
        assert_eq!(errors.len(), 1, "{form}: one annotation per failing trial: {text}");
        let want =
            format!("::error file=broken.{form},line={line},title=sidecheck%3A istio%3A%3Atype2-local-to-remote%3A%3A");
        assert!(errors[0].starts_with(&want), "{form}: {}\nwant {want}", errors[0]);
        // One line per annotation: the message's line breaks escaped.
        assert!(errors[0].contains("%0Aexpected 15001 -> remote-app:9090"), "{}", errors[0]);
        assert!(errors[0].contains("decided by "), "{}", errors[0]);
        // The table comes first, for people reading the log.
        let closing = format!("\n{} passed, 1 failed\n", expect::trial_count(&[Family::Ipv4]) - 1);
        let end = text.find(&closing).unwrap_or_else(|| panic!("{form}: {text}"));
        assert!(end < text.find("::error").unwrap(), "{text}");
    }
}

#[test]
fn in_github_actions_annotations_go_to_stderr_and_stdout_stays_the_report() {
    need_root();
    let dir = TempDir::new("actions");
    let (file, line) = broken_rules(
        &dir,
        "restore",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.244.0.20/32 -j RETURN",
    );
    let file = file.to_str().unwrap();
    let args = ["run", "--rules", file, "--family", "ipv4", "--test", "type[12]", "--format", "json"];
    let out = sidecheck_env(&args, &[("GITHUB_ACTIONS", "true")]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["failed"], 1, "{v}");
    let e = stderr(&out);
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("::error ")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    // Outside the workspace the path is shown as given.
    assert!(errors[0].starts_with(&format!("::error file={file},line={line},")), "{e}");
    // Not in Actions: no annotations.
    let out = sidecheck_env(&args, &[("GITHUB_ACTIONS", "false")]);
    assert_eq!(code(&out), 1);
    assert!(!stderr(&out).contains("::error") && !stdout(&out).contains("::error"), "{}", stderr(&out));
}

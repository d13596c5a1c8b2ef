//! Other meshes' real rule sets under their mesh's contract.
//!
//! Every rule set in `../shared/third-party/{linkerd,kuma,consul,osm}` has a
//! case in `harness/testdata/third-party/<mesh>/` (see its README): the
//! profile it runs under, the configuration PROVENANCE.md gives for it, and
//! which flows must fail in which family, and why. Everything else must pass.
//!
//! - `third-party::<mesh>/<file>[+<ipv6 file>][@<profile>]`: one rule set,
//!   all built-in scenarios, exactly the listed failures.
//! - `third-party::policy::...`: the boundary matrix of the case's capture
//!   policy (`command`: what `sidecheck policy --from -- COMMAND` prints;
//!   `policy`: a file under `policies/`): exactly `policy_expect` fails. A
//!   case whose configuration no policy can say is reported ignored, with its
//!   `not_expressible` reason.
//! - `third-party::half::...`: the same rule set with only the first half of
//!   each file's rule lines installed: it must fail, exactly as listed.
//! - `third-party::cases-are-sound`: the case files parse, name real
//!   scenarios and profiles (no root, no shared data needed).
//! - `third-party::every-rule-set-has-a-case`: no rule set is left out.
//!
//! The shared data is `$SIDECHECK_SHARED` or `../shared` beside the checkout;
//! when it is absent the trials that need it are ignored, saying which path
//! is missing, or fail when `SIDECHECK_REQUIRE_SHARED=1` (CI).

mod common;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::base::net::Family;
use harness::model::profile::Profile;
use harness::model::scenario::{self, Scenario};
use harness::model::topology::TopologyConfig;
use harness::rules::source::{Backend, RuleSource};
use harness::verdict::Outcome;
use harness::{sandbox::registry, Session, SessionConfig};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::Deserialize;

const MESHES: [&str; 4] = ["linkerd", "kuma", "consul", "osm"];

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Form {
    #[default]
    Restore,
    Script,
    Nft,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum BackendName {
    #[default]
    Nft,
    Legacy,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum ConfiguredAs {
    /// The injector's or installer's defaults: the built-in profile is exact.
    Default,
    /// Other ports or uid, said by a profile file under `profiles/`.
    ProfileVariant,
    /// Exclusions, modes or partial fixtures a profile cannot say.
    NeedsPolicy,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fails {
    fail: Vec<Family>,
    why: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    rules: String,
    #[serde(default)]
    rules6: Option<String>,
    #[serde(default)]
    form: Form,
    #[serde(default)]
    backend: BackendName,
    #[serde(default)]
    families: Option<Vec<Family>>,
    profile: String,
    configuration: String,
    configured_as: ConfiguredAs,
    #[serde(default)]
    needs: Option<String>,
    expect: BTreeMap<String, Fails>,
    #[serde(default)]
    half: Option<BTreeMap<String, Fails>>,
    /// The generator's command line from PROVENANCE: the policy run takes
    /// the policy `sidecheck policy --from -- COMMAND` prints for it.
    #[serde(default)]
    command: Option<String>,
    /// Or a hand-written policy file under `policies/` (no generator command
    /// line, or flags `--from` refuses).
    #[serde(default)]
    policy: Option<String>,
    /// What of the configuration no policy can say: alone, there is no
    /// policy run (the trial is reported ignored with this reason); beside
    /// `command`/`policy`, what the policy leaves out and why no probe depends on it.
    #[serde(default)]
    not_expressible: Option<String>,
    /// The policy run: probe name (as in `policy::NAME::...`) -> families it
    /// fails in and why; every other probe must pass.
    #[serde(default)]
    policy_expect: BTreeMap<String, Fails>,
    /// The case file, for messages.
    #[serde(skip)]
    file: PathBuf,
    #[serde(skip)]
    mesh: String,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/third-party")
}

fn load_cases() -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for mesh in MESHES {
        let dir = testdata().join(mesh);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
            let mut case: Case = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            case.file = file;
            case.mesh = mesh.to_string();
            cases.push(case);
        }
    }
    Ok(cases)
}

impl Case {
    fn profile(&self) -> Result<Profile, String> {
        let spec = if self.profile.ends_with(".yaml") {
            testdata().join(&self.profile).display().to_string()
        } else {
            self.profile.clone()
        };
        Profile::load(&spec).map_err(|e| format!("{}: profile {}: {e}", self.file.display(), self.profile))
    }

    /// What the profile is called in the trial name: a built-in name, or the
    /// variant file's stem.
    fn profile_label(&self) -> String {
        Path::new(&self.profile).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    fn name(&self) -> String {
        let mut n = self.rules.clone();
        if let Some(r6) = &self.rules6 {
            n.push('+');
            n.push_str(Path::new(r6).file_name().map(|f| f.to_string_lossy()).unwrap_or_default().as_ref());
        }
        if self.profile_label() != self.mesh {
            n.push('@');
            n.push_str(&self.profile_label());
        }
        n
    }

    fn files(&self) -> Vec<PathBuf> {
        let base = common::data_root().join("third-party");
        std::iter::once(&self.rules).chain(&self.rules6).map(|r| base.join(r)).collect()
    }

    /// The families tested: the case's, else the rule files'.
    fn tested_families(&self) -> Vec<Family> {
        match (&self.families, self.form) {
            (Some(f), _) => f.clone(),
            (None, Form::Restore) => {
                let mut f = vec![Family::Ipv4];
                if self.rules6.is_some() {
                    f.push(Family::Ipv6);
                }
                f
            }
            (None, _) => Family::BOTH.to_vec(),
        }
    }

    /// Problems a reader of the case file must fix (no root, no shared data).
    fn check(&self, stems: &BTreeSet<String>) -> Vec<String> {
        let mut bad = Vec::new();
        let at = self.file.display();
        if let Err(e) = self.profile() {
            bad.push(e);
        }
        if (self.configured_as == ConfiguredAs::NeedsPolicy) != self.needs.is_some() {
            bad.push(format!(
                "{at}: `needs` says what a policy must express: give it exactly when configured_as is needs-policy"
            ));
        }
        if self.configuration.trim().is_empty() {
            bad.push(format!("{at}: configuration is empty: copy it from PROVENANCE.md"));
        }
        if !self.rules.starts_with(&format!("{}/", self.mesh)) {
            bad.push(format!("{at}: rules {} is not under {}/", self.rules, self.mesh));
        }
        if self.rules6.is_some() && self.form != Form::Restore {
            bad.push(format!("{at}: rules6 is for restore files only"));
        }
        let tested = self.tested_families();
        for (what, map) in std::iter::once(("expect", &self.expect)).chain(self.half.as_ref().map(|h| ("half", h))) {
            for (stem, f) in map {
                if !stems.contains(stem) {
                    bad.push(format!("{at}: {what}.{stem} is not a built-in scenario (known: {stems:?})"));
                }
                if f.fail.is_empty() || f.fail.iter().any(|x| !tested.contains(x)) {
                    bad.push(format!(
                        "{at}: {what}.{stem}.fail {:?} must be families this case tests ({tested:?})",
                        f.fail
                    ));
                }
                if f.why.trim().is_empty() {
                    bad.push(format!("{at}: {what}.{stem}.why is empty: say why it fails"));
                }
            }
        }
        match (&self.command, &self.policy, &self.not_expressible) {
            (Some(_), Some(_), _) => bad.push(format!("{at}: give `command` or `policy`, not both")),
            (None, None, None) => bad.push(format!(
                "{at}: no policy run: give `command` (the generator command line from PROVENANCE.md), `policy` (a file under policies/) or `not_expressible` (why no policy can say the configuration)"
            )),
            (None, None, Some(_)) if !self.policy_expect.is_empty() => {
                bad.push(format!("{at}: policy_expect with no policy run: give `command` or `policy`"))
            }
            _ => {}
        }
        if self.not_expressible.as_ref().is_some_and(|w| w.trim().is_empty()) {
            bad.push(format!("{at}: not_expressible is empty: say what cannot be expressed and why"));
        }
        if let Err(e) = self.policy_text() {
            bad.push(e);
        }
        for (stem, f) in &self.policy_expect {
            if f.fail.is_empty() || f.fail.iter().any(|x| !tested.contains(x)) {
                bad.push(format!(
                    "{at}: policy_expect.{stem}.fail {:?} must be families this case tests ({tested:?})",
                    f.fail
                ));
            }
            if f.why.trim().is_empty() {
                bad.push(format!("{at}: policy_expect.{stem}.why is empty: say why it fails"));
            }
        }
        if self.half.as_ref().is_some_and(|h| h.is_empty()) {
            bad.push(format!("{at}: half lists no failure: half the rules must break something"));
        }
        bad
    }
}

impl Case {
    /// The policy file's path, for `--policy`.
    fn policy_file(&self) -> Option<PathBuf> {
        self.policy.as_ref().map(|p| testdata().join(p))
    }

    /// The policy of the policy run (None: no run), checked to load under
    /// the case's profile, in-process (no root): the run itself goes through
    /// the binary's `policy --from`.
    fn policy_text(&self) -> Result<Option<String>, String> {
        let at = self.file.display();
        let text = match (&self.command, self.policy_file()) {
            (Some(cmd), _) => {
                harness::policy::from::from_command(cmd).map_err(|e| format!("{at}: command `{cmd}`: {e:#}"))?.yaml
            }
            (None, Some(file)) => {
                std::fs::read_to_string(&file).map_err(|e| format!("{at}: policy {}: {e}", file.display()))?
            }
            (None, None) => return Ok(None),
        };
        let profile = self.profile()?;
        let label = format!("{at} (the policy of the case)");
        let policy = harness::policy::Policy::parse_for(&label, &text, &profile).map_err(|e| format!("{e:#}"))?;
        policy.check_profile(&label, &profile).map_err(|e| format!("{e:#}"))?;
        Ok(Some(text))
    }

    /// What `--profile` gets: a built-in name or the variant file's path.
    fn profile_arg(&self) -> String {
        if self.profile.ends_with(".yaml") {
            testdata().join(&self.profile).display().to_string()
        } else {
            self.profile.clone()
        }
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_sidecheck");

/// A temp file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The command line a generated rule file says it was written by: the
/// comment line after `run as:` (Linkerd's gen-*.sh).
fn run_as(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines().skip_while(|l| !(l.starts_with('#') && l.trim_end().ends_with("run as:")));
    lines.next()?;
    Some(lines.next()?.trim_start_matches('#').trim().to_string())
}

/// The policy run: the case's policy (for a `command`, what `sidecheck
/// policy --from -- COMMAND` prints) against its rules, every probe of the
/// boundary matrix; exactly the `policy_expect` probes fail.
fn run_policy(case: &Case) -> Result<(), Failed> {
    let at = case.file.display();
    if let Some(why) = &case.not_expressible {
        eprintln!("third-party::policy::{}: the policy leaves out: {why}", case.name());
    }
    // A generated script names the command line it came from: the case's must be that one.
    if let (Some(cmd), Some(logged)) = (&case.command, run_as(&case.files()[0])) {
        if *cmd != logged {
            return Err(
                format!("{at}: command `{cmd}` is not the one {} was generated with: `{logged}`", case.rules).into()
            );
        }
    }
    let mut _tmp = None;
    let file = match (&case.command, case.policy_file()) {
        (Some(cmd), _) => {
            let out = Command::new(BIN).args(["policy", "--from", "--", cmd]).output().map_err(|e| e.to_string())?;
            if out.status.code() != Some(0) {
                return Err(format!(
                    "{at}: sidecheck policy --from -- {cmd}: exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            let p = std::env::temp_dir().join(format!(
                "sidecheck-third-party-policy-{}-{}.yaml",
                std::process::id(),
                case.name().replace(['/', '+', '@'], "_")
            ));
            std::fs::write(&p, &out.stdout).map_err(|e| format!("writing {}: {e}", p.display()))?;
            _tmp = Some(TempFile(p.clone()));
            p
        }
        (None, Some(f)) => f,
        (None, None) => return Err(format!("{at}: no policy run").into()),
    };
    let files = case.files();
    let mut args: Vec<String> = ["run", "--format", "json", "--policy"].map(String::from).to_vec();
    args.push(file.display().to_string());
    args.extend(["--profile".to_string(), case.profile_arg()]);
    let families = case.tested_families();
    if let [one] = families.as_slice() {
        args.extend(["--family".to_string(), one.name().to_string()]);
    }
    if case.backend == BackendName::Legacy {
        args.extend(["--backend", "legacy"].map(String::from));
    }
    match case.form {
        Form::Restore => {
            args.extend(["--rules".to_string(), files[0].display().to_string()]);
            if let Some(v6) = files.get(1) {
                args.extend(["--rules6".to_string(), v6.display().to_string()]);
            }
        }
        Form::Script => args.extend(["--script".to_string(), files[0].display().to_string()]),
        Form::Nft => args.extend(["--nft".to_string(), files[0].display().to_string()]),
    }
    let out = Command::new(BIN).args(&args).output().map_err(|e| e.to_string())?;
    let policy_yaml = std::fs::read_to_string(&file).unwrap_or_default();
    if !matches!(out.status.code(), Some(0) | Some(1)) {
        return Err(format!(
            "{at}: sidecheck {}: exit {:?}: {}\npolicy:\n{policy_yaml}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{at}: not JSON: {e}"))?;
    let trials = v["trials"].as_array().ok_or_else(|| format!("{at}: no trials in the JSON report"))?;
    // policy::<probe>::<backend>::<family>
    let mut seen = BTreeSet::new();
    let mut ran = BTreeSet::new();
    let mut failed = BTreeMap::new();
    for t in trials {
        let name = t["name"].as_str().unwrap_or_default();
        // (A probe name can hold `::` itself: an IPv6 range.)
        let parts: Vec<&str> = name.strip_prefix("policy::").unwrap_or_default().rsplitn(3, "::").collect();
        let [family, _, probe] = parts.as_slice() else {
            return Err(format!("{at}: unexpected trial name {name}").into());
        };
        seen.insert(probe.to_string());
        ran.insert(family.to_string());
        if t["outcome"] != "pass" {
            failed.insert(format!("{probe}::{family}"), t["message"].as_str().unwrap_or_default().to_string());
        }
    }
    let want_families: BTreeSet<String> = families.iter().map(|f| f.name().to_string()).collect();
    if ran != want_families {
        return Err(format!("{at}: the policy run ran in {ran:?}, the case is for {want_families:?}").into());
    }
    let unknown: Vec<&String> = case.policy_expect.keys().filter(|k| !seen.contains(*k)).collect();
    if !unknown.is_empty() {
        return Err(format!("{at}: policy_expect names no probe of this policy: {unknown:?} (probes: {seen:?})").into());
    }
    let want: BTreeSet<String> = case
        .policy_expect
        .iter()
        .flat_map(|(s, f)| f.fail.iter().map(move |fam| format!("{s}::{}", fam.name())))
        .collect();
    let got: BTreeSet<String> = failed.keys().cloned().collect();
    if got == want {
        return Ok(());
    }
    let mut msg = format!(
        "{} (policy run, {at}, configuration: {}):\n  expected to fail: {want:?}\n  failed:           {got:?}\n",
        case.name(),
        case.configuration
    );
    for key in want.difference(&got) {
        let probe = key.rsplit_once("::").map(|(p, _)| p).unwrap_or_default();
        let why = &case.policy_expect[probe].why;
        msg.push_str(&format!("  PASSED but expected to fail, because {why}: {key}\n"));
    }
    for key in got.difference(&want) {
        msg.push_str(&format!("  FAILED unexpectedly: {key}: {}\n", failed[key]));
    }
    msg.push_str(&format!("policy:\n{policy_yaml}"));
    Err(msg.into())
}

/// The rule set with only the first half of each file's rule lines.
fn halve(text: &str) -> String {
    let is_rule = |l: &str| {
        let t = l.trim_start();
        !t.starts_with('#')
            && (t.starts_with("-A ")
                || t.starts_with("-I ")
                || t.starts_with("add rule ")
                || t.starts_with("insert rule ")
                || t.contains(" -A ")
                || t.contains(" -I "))
    };
    let keep = text.lines().filter(|l| is_rule(l)).count() / 2;
    let mut seen = 0;
    let mut out = String::new();
    for line in text.lines() {
        if is_rule(line) {
            seen += 1;
            if seen > keep {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Run the case (its rules, or `texts` in their place) and compare.
fn run(case: &Case, scenarios: &[Scenario], expect: &BTreeMap<String, Fails>, half: bool) -> Result<(), Failed> {
    let files = case.files();
    let mut tmp: Vec<PathBuf> = Vec::new();
    let paths: Vec<PathBuf> = if half {
        let dir = std::env::temp_dir().join(format!("sidecheck-third-party-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
                let name = format!("{}-half-{}", case.mesh, f.file_name().unwrap().to_string_lossy());
                let p = dir.join(name);
                std::fs::write(&p, halve(&text)).map_err(|e| format!("writing {}: {e}", p.display()))?;
                tmp.push(p.clone());
                Ok(p)
            })
            .collect::<Result<_, String>>()?
    } else {
        files
    };
    let rules = match case.form {
        Form::Restore => RuleSource::RestoreFiles { v4: Some(paths[0].clone()), v6: paths.get(1).cloned() },
        Form::Script => RuleSource::Script(paths[0].clone()),
        Form::Nft => RuleSource::NftFile(paths[0].clone()),
    };
    let backend = match case.backend {
        BackendName::Nft => Backend::Nft,
        BackendName::Legacy => Backend::Legacy,
    };
    let families = case.tested_families();
    let mut topology = TopologyConfig::default();
    topology.families.retain(|f| families.contains(f));
    // Half a rule set can leave one family with chains and no rule: tested as
    // it is (the half trials exist to fail), not refused as an empty install.
    let config = SessionConfig {
        rules,
        backend,
        topology,
        profile: case.profile()?,
        allow_empty_rules: half,
        ..SessionConfig::default()
    };
    let session = Session::start(config);
    for p in &tmp {
        let _ = std::fs::remove_file(p);
    }
    let results = session.map_err(|e| format!("{}: {e}", case.file.display()))?.run(scenarios);

    let stem = |scenario: &str| scenario.rsplit("::").next().unwrap_or(scenario).to_string();
    let ran: BTreeSet<String> = results.iter().map(|r| r.family.clone()).collect();
    let want_families: BTreeSet<String> = families.iter().map(|f| f.name().to_string()).collect();
    if ran != want_families {
        return Err(format!("{}: ran in {ran:?}, the case is for {want_families:?}", case.file.display()).into());
    }
    // An ERROR is no verdict: it must not count as failing, nor pass unseen.
    if let Some(e) = results.iter().find(|r| r.outcome == Outcome::Error) {
        return Err(format!("{}: {} could not be tested (ERROR): {}", case.file.display(), e.name, e.message).into());
    }
    let failed: BTreeSet<String> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .map(|r| format!("{}::{}", stem(&r.scenario), r.family))
        .collect();
    let want: BTreeSet<String> =
        expect.iter().flat_map(|(s, f)| f.fail.iter().map(move |fam| format!("{s}::{}", fam.name()))).collect();
    if failed == want {
        return Ok(());
    }
    let mut msg = format!(
        "{} ({}{}, configuration: {}):\n  expected to fail: {want:?}\n  failed:           {failed:?}\n",
        case.name(),
        if half { "first half of the rules, " } else { "" },
        case.file.display(),
        case.configuration
    );
    for r in &results {
        let key = format!("{}::{}", stem(&r.scenario), r.family);
        match (want.contains(&key), r.outcome == Outcome::Fail) {
            (true, false) => {
                let why = &expect[&stem(&r.scenario)].why;
                msg.push_str(&format!("  PASSED but expected to fail, because {why}: {key}\n"));
            }
            (false, true) => msg.push_str(&format!("  FAILED unexpectedly: {key}: {}\n", r.message)),
            _ => {}
        }
    }
    Err(msg.into())
}

fn main() {
    if let Err(e) = registry::install_signal_cleanup() {
        eprintln!("third_party: {e}");
        std::process::exit(2);
    }
    let args = Arguments::from_args();
    let scenarios = match scenario::builtin() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("third_party: the built-in scenarios do not load: {e}");
            std::process::exit(2);
        }
    };
    let cases = match load_cases() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("third_party: {e}");
            std::process::exit(2);
        }
    };
    let stems: BTreeSet<String> =
        scenarios.iter().map(|s| s.name.rsplit("::").next().unwrap_or(&s.name).to_string()).collect();

    let mut trials = Vec::new();
    {
        let cases = cases.clone();
        trials.push(Trial::test("third-party::cases-are-sound", move || {
            let bad: Vec<String> = cases.iter().flat_map(|c| c.check(&stems)).collect();
            let mut names = BTreeSet::new();
            let dup: Vec<String> = cases.iter().map(Case::name).filter(|n| !names.insert(n.clone())).collect();
            match (bad.is_empty(), dup.is_empty()) {
                (true, true) => Ok(()),
                _ => Err(format!(
                    "{}\n{}",
                    bad.join("\n"),
                    dup.iter().map(|d| format!("two cases named {d}")).collect::<Vec<_>>().join("\n")
                )
                .into()),
            }
        }));
    }
    {
        let cases = cases.clone();
        let root = common::data_root().join("third-party");
        let dirs: Vec<PathBuf> = MESHES.iter().map(|m| root.join(m)).collect();
        trials.push(common::data_trial(&args, "third-party::every-rule-set-has-a-case", &dirs, move |_| {
            let covered: BTreeSet<String> =
                cases.iter().flat_map(|c| std::iter::once(c.rules.clone()).chain(c.rules6.clone())).collect();
            let mut missing = Vec::new();
            for mesh in MESHES {
                let dir = root.join(mesh);
                let entries = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // raw/ holds the upstream originals the rule sets were wrapped from.
                    if e.path().is_dir() || name == "PROVENANCE.md" || name == "LICENSE" {
                        continue;
                    }
                    let rel = format!("{mesh}/{name}");
                    if !covered.contains(&rel) {
                        missing.push(rel);
                    }
                }
            }
            missing.sort();
            match missing.is_empty() {
                true => Ok(()),
                false => {
                    Err(format!("rule sets with no case in harness/testdata/third-party/: {}", missing.join(", "))
                        .into())
                }
            }
        }));
    }
    for case in cases {
        let name = case.name();
        let (c, s) = (case.clone(), scenarios.clone());
        trials.push(common::data_trial(&args, format!("third-party::{name}"), &case.files(), move |_| {
            run(&c, &s, &c.expect, false)
        }));
        {
            let c = case.clone();
            let trial_name = format!("third-party::policy::{name}");
            if c.command.is_none() && c.policy.is_none() {
                // Not data that is missing: a configuration no policy can say.
                let why =
                    format!("not expressible as a policy: {}", c.not_expressible.as_deref().unwrap_or("no policy"));
                let t = Trial::test(trial_name, {
                    let why = why.clone();
                    move || Err(why.into())
                });
                trials.push(common::ignored(&args, t, &why));
            } else {
                trials.push(common::data_trial(&args, trial_name, &case.files(), move |_| run_policy(&c)));
            }
        }
        if let Some(half) = case.half.clone() {
            let s = scenarios.clone();
            let files = case.files();
            trials.push(common::data_trial(&args, format!("third-party::half::{name}"), &files, move |_| {
                run(&case, &s, &half, true)
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

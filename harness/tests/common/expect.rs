//! What the suites expect, read from data: the flows are the built-in
//! scenarios (scenarios/), the meshes the built-in profiles
//! (scenarios/profiles/), and which trials a broken rule set or a mesh's
//! own rules must fail are files beside the tests (harness/testdata/
//! breakages/*.yaml, findings.yaml). No test lists flows or meshes, so a
//! new flow is a scenario file plus its lines in those files, and a new
//! mesh is data files only.
//!
//! A trial is named here as `<scenario>::<family>`, the scenario by its file
//! name (`type2-local-to-remote::ipv4`): the backend and the group prefix
//! vary by suite; [`short`] maps a run's trial name to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use harness::base::net::Family;
use harness::model::profile::Profile;
use harness::model::scenario::{self, Scenario};
use harness::rules::istio::{IstioCapture, Shape};
use serde::Deserialize;

/// The data beside the tests.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The built-in scenarios: the flows every suite runs.
pub fn scenarios() -> Vec<Scenario> {
    scenario::builtin().unwrap_or_else(|e| panic!("the built-in scenarios do not load: {e}"))
}

/// How many trials the built-in scenarios make in `families`.
pub fn trial_count(families: &[Family]) -> usize {
    scenarios().iter().map(|s| s.families(families).len()).sum()
}

/// `istio::type2-local-to-remote::nft::ipv4` (or `...#3::nft::ipv4`) ->
/// `type2-local-to-remote::ipv4`.
pub fn short(name: &str) -> String {
    let parts: Vec<&str> = name.split("::").collect();
    match parts.as_slice() {
        [_, stem, _, family] => format!("{stem}::{family}"),
        _ => name.to_string(),
    }
}

/// `type2-local-to-remote::ipv4` as a run with `backend` names it:
/// `istio::type2-local-to-remote::nft::ipv4`.
pub fn full(short: &str, backend: &str) -> String {
    let (stem, family) = short.split_once("::").unwrap_or((short, ""));
    format!("istio::{stem}::{backend}::{family}")
}

/// Every `<scenario>::<family>` trial the built-in scenarios have.
fn known_trials() -> BTreeSet<String> {
    scenarios()
        .iter()
        .flat_map(|s| s.families(&Family::BOTH).into_iter().map(move |f| short(&scenario::case_name(&s.name, "-", f))))
        .collect()
}

/// `list` names only trials the scenarios have: data left stale by a renamed
/// or removed scenario, or a typo, is an error naming the file.
fn check_trials<'a>(file: &Path, what: &str, list: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let known = known_trials();
    for t in list {
        if !known.contains(t) {
            return Err(format!(
                "{}: {what} names trial `{t}`, which no built-in scenario has (known: {})",
                file.display(),
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

fn ipv4() -> Family {
    Family::Ipv4
}

/// A way to break a profile's rule set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breakage {
    pub name: String,
    pub why: String,
    /// Rules to remove (the text after `-A `, exactly)...
    #[serde(default)]
    pub remove: Vec<String>,
    /// ...or a substring to replace: [from, to].
    #[serde(default)]
    pub replace: Option<(String, String)>,
    /// Whose rules are broken; the other family's stay as built.
    #[serde(default = "ipv4")]
    pub family: Family,
    /// The trials that must FAIL (every other one must pass).
    #[serde(default)]
    pub fails: BTreeSet<String>,
    /// With `--assert paths`, the trials that must fail on their path alone,
    /// with what the message says differs.
    #[serde(default)]
    pub path_fails: BTreeMap<String, String>,
    /// The profile whose rules these are (the file's `profile`).
    #[serde(skip)]
    pub profile: String,
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakageFile {
    profile: String,
    #[serde(default)]
    breakages: Vec<Breakage>,
    #[serde(default)]
    path_breakages: Vec<Breakage>,
}

/// (breakages, path breakages) of every file in testdata/breakages/, by
/// file name then as written.
pub fn breakages() -> Result<(Vec<Breakage>, Vec<Breakage>), String> {
    let dir = testdata().join("breakages");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (mut ports, mut paths) = (Vec::new(), Vec::new());
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let f: BreakageFile = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        Profile::builtin(&f.profile).map_err(|e| format!("{}: profile: {e}", file.display()))?;
        for (list, out) in [(f.breakages, &mut ports), (f.path_breakages, &mut paths)] {
            for mut b in list {
                check_trials(&file, &b.name, b.fails.iter().chain(b.path_fails.keys()))?;
                (b.profile, b.file) = (f.profile.clone(), file.clone());
                out.push(b);
            }
        }
    }
    Ok((ports, paths))
}

/// The breakage `name` of `profile`'s rules.
pub fn breakage(profile: &str, name: &str) -> Breakage {
    let (ports, paths) = breakages().unwrap_or_else(|e| panic!("{e}"));
    ports
        .into_iter()
        .chain(paths)
        .find(|b| b.profile == profile && b.name == name)
        .unwrap_or_else(|| panic!("no breakage {name} of {profile} in {}", testdata().join("breakages").display()))
}

/// The profile files scenarios/profiles/ holds, by name, sorted: what the
/// binary must have built in.
pub fn profile_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".yaml").map(str::to_string))
        .collect();
    names.sort();
    names
}

/// A built-in profile; the suites' data names only those.
pub fn profile(name: &str) -> Profile {
    Profile::builtin(name).unwrap_or_else(|e| panic!("built-in profile {name}: {e}"))
}

/// `profile`'s rules in `family` as built: its own rule set, or (a profile
/// without one: Istio's) the built-in reference rules.
pub fn rules_text(profile: &Profile, family: Family) -> Option<String> {
    match profile.rules() {
        None => Some(IstioCapture::default_for(Shape::Current).to_restore_for(family)),
        Some(_) => match family {
            Family::Ipv4 => profile.rule_texts.0.clone(),
            Family::Ipv6 => profile.rule_texts.1.clone(),
        },
    }
}

impl Breakage {
    /// The trial name: `broken::<name>` for the default profile's rules
    /// (the one `expect.path` describes), else `broken::<profile>::<name>`.
    pub fn trial(&self, kind: &str) -> String {
        if profile(&self.profile).expect_path {
            format!("{kind}::{}", self.name)
        } else {
            format!("{kind}::{}::{}", self.profile, self.name)
        }
    }

    /// The broken family's rules, broken.
    pub fn broken_rules(&self) -> String {
        let p = profile(&self.profile);
        let text = rules_text(&p, self.family).unwrap_or_else(|| {
            panic!("{}: profile {} has no {} rules", self.file.display(), p.name, self.family.name())
        });
        let mut out = String::new();
        let mut removed = 0;
        for line in text.lines() {
            if line.strip_prefix("-A ").is_some_and(|l| self.remove.iter().any(|r| r == l)) {
                removed += 1;
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        assert_eq!(removed, self.remove.len(), "{}: a rule to remove is not in the built-in rules", self.name);
        if let Some((from, to)) = &self.replace {
            assert!(out.contains(from.as_str()), "{}: `{from}` is not in the built-in rules", self.name);
            out = out.replace(from.as_str(), to);
        }
        out
    }

    /// (IPv4, IPv6) rules of the broken rule set: the broken family's, and
    /// IPv4 as built when IPv6 is the broken one.
    pub fn rule_set(&self) -> (Option<String>, Option<String>) {
        match self.family {
            Family::Ipv4 => (Some(self.broken_rules()), None),
            Family::Ipv6 => (rules_text(&profile(&self.profile), Family::Ipv4), Some(self.broken_rules())),
        }
    }

    /// The families a run of [`Breakage::rule_set`] tests.
    pub fn families(&self) -> Vec<Family> {
        match self.family {
            Family::Ipv4 => vec![Family::Ipv4],
            Family::Ipv6 => Family::BOTH.to_vec(),
        }
    }
}

/// Trials each built-in profile's own rules fail by design (findings.yaml):
/// profile -> trial -> why.
pub fn findings() -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let file = testdata().join("findings.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let map: BTreeMap<String, BTreeMap<String, String>> =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    for (p, trials) in &map {
        Profile::builtin(p).map_err(|e| format!("{}: {e}", file.display()))?;
        check_trials(&file, p, trials.keys())?;
    }
    Ok(map)
}

/// The default profile: the one scenarios' `expect.path` describes, whose
/// rules are the built-in reference rules (Istio's).
pub fn default_profile() -> Profile {
    let mut all: Vec<Profile> = Profile::builtin_names().into_iter().map(profile).filter(|p| p.expect_path).collect();
    assert_eq!(all.len(), 1, "exactly one built-in profile has expect_path: true");
    all.remove(0)
}

/// Every built-in profile with a rule set of its own (every mesh but the
/// default, whose rules are the built-in reference rules), by name.
pub fn meshes() -> Vec<Profile> {
    Profile::builtin_names().into_iter().map(profile).filter(|p| p.rules().is_some()).collect()
}

/// A mesh's name as the summary's verdict line writes it: the `display:`
/// its profile file gives (`OSM`), read from the file itself, else the name
/// capitalised (`Kuma`).
pub fn title(name: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/profiles/{name}.yaml"));
    let display = std::fs::read_to_string(&file).ok().and_then(|text| {
        let v: serde_norway::Value = serde_norway::from_str(&text).ok()?;
        v.get("display")?.as_str().map(str::to_string)
    });
    display.unwrap_or_else(|| {
        let mut c = name.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
    })
}

/// What `sidecheck diff builtin B` must find for the rule set `name`
/// (diffs.yaml).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffExpect {
    /// Connections whose ports differ.
    pub ports_differ: BTreeSet<String>,
    /// Connections whose ports are the same but whose deciding rule is not.
    #[serde(default)]
    pub rule_differs: BTreeSet<String>,
}

pub fn diff_expect(name: &str) -> Result<DiffExpect, String> {
    let file = testdata().join("diffs.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut map: BTreeMap<String, DiffExpect> =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let d = map.remove(name).ok_or_else(|| format!("{}: no `{name}`", file.display()))?;
    check_trials(&file, name, d.ports_differ.iter().chain(&d.rule_differs))?;
    Ok(d)
}

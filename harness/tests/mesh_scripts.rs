//! Smoke test per mesh: the real generators' rule sets in
//! ../shared/third-party/{linkerd,consul,osm} (scripts, run contained with
//! `sh -e`) and kuma (restore files) still install: each run is judged
//! (exit 0 or 1), never stopped (exit 2: did not apply, installed nothing,
//! changed the host). Which flows they pass is the data tests' business.
//! Without the shared data each trial is reported ignored, naming the
//! missing path (SIDECHECK_REQUIRE_SHARED=1 makes that a failure).

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

const BIN: &str = env!("CARGO_BIN_EXE_sidecheck");

fn shared_root() -> PathBuf {
    std::env::var_os("SIDECHECK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// (mesh, profile, flag, file) for every rule set of the four meshes.
fn cases(root: &Path) -> Vec<(String, &'static str, &'static str, PathBuf)> {
    let mut out = Vec::new();
    for (mesh, profile, flag, ext) in [
        ("linkerd", "linkerd", "--script", ".sh"),
        ("consul", "consul", "--script", ".sh"),
        // OSM has no profile: its scripts are checked to install only.
        ("osm", "istio", "--script", ".sh"),
        ("kuma", "kuma", "--rules", ".v4.rules"),
    ] {
        let dir = root.join("third-party").join(mesh);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(ext)).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let name = format!("{mesh}::{}", f.file_name().unwrap().to_string_lossy());
            out.push((name, profile, flag, f));
        }
    }
    out
}

fn installs(profile: &str, flag: &str, file: &Path) -> Result<(), Failed> {
    let out = Command::new(BIN)
        .args(["run", flag, file.to_str().unwrap(), "--profile", profile, "--family", "ipv4", "--format", "summary"])
        .output()
        .map_err(|e| format!("running sidecheck: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        other => Err(format!("{} did not install (exit {other:?}):\n{err}", file.display()).into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let root = shared_root();
    let required = std::env::var_os("SIDECHECK_REQUIRE_SHARED").is_some_and(|v| v == "1");
    let trials: Vec<Trial> = if root.join("third-party").is_dir() {
        cases(&root)
            .into_iter()
            .map(|(name, profile, flag, file)| Trial::test(name, move || installs(profile, flag, &file)))
            .collect()
    } else {
        let missing = root.join("third-party");
        let why =
            format!("missing {}: put ../shared beside the checkout or set SIDECHECK_SHARED=DIR", missing.display());
        eprintln!("mesh_scripts: {why}");
        if required {
            vec![Trial::test("mesh_scripts::shared-data", move || Err(why.into()))]
        } else {
            vec![Trial::test("mesh_scripts::shared-data", || Ok(())).with_ignored_flag(true)]
        }
    };
    libtest_mimic::run(&args, trials).exit();
}

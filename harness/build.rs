//! Two things the `sidecheck` binary carries inside it, so that it runs from
//! any directory and after `cargo install` with nothing beside it:
//!
//! 1. The stub binaries (fake-envoy, fake-istiod). Cargo has no stable way to
//!    depend on another package's binary, and `cargo run -p harness` alone
//!    would not build them, so this script builds them with a nested cargo in
//!    a target directory of their own (no lock shared with the outer build)
//!    and the harness embeds the result with `include_bytes!`.
//! 2. The scenario files under `scenarios/`: the default set of `sidecheck run`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// The walk `--scenarios DIR` takes, so the built-in set is read as a directory is.
#[path = "src/base/walk.rs"]
mod walk;

const STUBS: [&str; 2] = ["fake-envoy", "fake-istiod"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    build_stubs(&workspace, &out_dir);
    embed_scenarios(&workspace.join("scenarios"), &out_dir);
    embed_profiles(&workspace.join("scenarios").join("profiles"), &out_dir);
}

fn build_stubs(workspace: &Path, out_dir: &Path) {
    for dir in ["wire", "fake-envoy", "fake-istiod", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // OUT_DIR is <target>/[<triple>/]<profile>/build/harness-<hash>/out: share
    // one stub build between profiles, beside them.
    let build_dir = out_dir.ancestors().find(|p| p.file_name().is_some_and(|n| n == "build")).unwrap();
    let stub_target = build_dir.parent().unwrap().parent().unwrap().join("sidecheck-stubs");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&stub_target);
    for stub in STUBS {
        cmd.args(["-p", stub]);
    }
    // The outer build's target-dir settings must not redirect this one, and
    // its compiler flags (a fuzzer's sanitizer instrumentation, say) are not
    // for the stubs: they are plain standalone binaries.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("could not run cargo to build the stub binaries");
    assert!(status.success(), "building fake-envoy and fake-istiod failed: see the cargo output above");
    let bin_dir = stub_target.join("release");
    for stub in STUBS {
        assert!(bin_dir.join(stub).is_file(), "{stub} was not built in {}", bin_dir.display());
    }
    println!("cargo:rustc-env=SIDECHECK_STUB_DIR={}", bin_dir.display());
}

fn embed_scenarios(root: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed={}", root.display());
    // (An unreadable scenarios/ embeds none, which the built-in set's tests catch.)
    let files = walk::yaml_files(root)
        .unwrap_or_default()
        .into_iter()
        .map(|path| (path.strip_prefix(root).unwrap().to_string_lossy().into_owned(), path))
        .collect();
    let doc = "(path relative to scenarios/, contents) of every built-in scenario.";
    write_embedded(&out_dir.join("builtin_scenarios.rs"), doc, "BUILTIN", files);
}

/// Mesh profiles and their rule sets: every file in `scenarios/profiles/`.
fn embed_profiles(dir: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let files: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
                .collect()
        })
        .unwrap_or_default();
    write_embedded(
        &out_dir.join("builtin_profiles.rs"),
        "(file name, contents) of every file in scenarios/profiles/.",
        "FILES",
        files,
    );
}

/// `pub static NAME: &[(&str, &str)]` of (name, include_str!(file)), sorted.
fn write_embedded(out: &Path, doc: &str, name: &str, mut files: Vec<(String, PathBuf)>) {
    files.sort();
    let mut code = format!("/// {doc}\npub static {name}: &[(&str, &str)] = &[\n");
    for (rel, abs) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        writeln!(code, "    ({rel:?}, include_str!({:?})),", abs.display().to_string()).unwrap();
    }
    code.push_str("];\n");
    fs::write(out, code).unwrap();
}

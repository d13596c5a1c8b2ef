//! The declared `rust-version` must be at least what every dependency needs:
//! an older toolchain would otherwise fail deep in the build instead of
//! cargo saying "needs rustc X" up front. Reads `cargo metadata` offline
//! (the build already fetched the Linux dependency tree); no root, no network.

use std::process::Command;

type Version = (u64, u64, u64);
/// The largest need and who has it, and each member with its declared version.
type Found = (Option<(Version, String)>, Vec<(String, Option<Version>)>);

fn parse(v: &str) -> Version {
    let mut it = v.split('.').map(|n| n.parse::<u64>().unwrap_or_else(|_| panic!("rust-version {v:?} is not X.Y[.Z]")));
    (it.next().unwrap(), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The largest `rust_version` among dependencies, and every workspace
/// member's declared one, from `cargo metadata` JSON.
fn needed_and_declared(meta: &serde_json::Value) -> Found {
    let members: Vec<&str> =
        meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    // Only packages in the resolved graph: metadata also lists unused ones.
    let resolved: Vec<&str> =
        meta["resolve"]["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    let mut needed: Option<(Version, String)> = None;
    let mut declared = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap();
        let rv = p["rust_version"].as_str().map(parse);
        let name = format!("{} {}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap());
        if members.contains(&id) {
            declared.push((name, rv));
        } else if let Some(v) = rv.filter(|_| resolved.contains(&id)) {
            if needed.as_ref().is_none_or(|(n, _)| v > *n) {
                needed = Some((v, name));
            }
        }
    }
    (needed, declared)
}

#[test]
fn declared_rust_version_covers_every_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    // The harness is Linux-only; without a platform filter, metadata wants
    // the Windows-only crates too, which an offline Linux build never fetched.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(cargo)
        .args(["metadata", "--offline", "--locked", "--format-version", "1", "--filter-platform", &platform])
        .args(["--manifest-path", workspace])
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (needed, declared) = needed_and_declared(&meta);
    let (needed, by) = needed.expect("no dependency declares a rust-version: cargo metadata output changed?");
    assert!(!declared.is_empty());
    for (member, rv) in declared {
        let rv = rv.unwrap_or_else(|| panic!("{member} declares no rust-version: add `rust-version.workspace = true`"));
        assert!(
            rv >= needed,
            "{member} declares rust-version {}.{}.{} but {by} needs {}.{}.{}: raise rust-version in the workspace Cargo.toml",
            rv.0,
            rv.1,
            rv.2,
            needed.0,
            needed.1,
            needed.2
        );
    }
}

#[test]
fn the_largest_dependency_rust_version_wins_and_unresolved_packages_do_not_count() {
    // A tree where a newer-needing crate is listed but not resolved must not
    // raise the bar; the resolved one that needs most must.
    let meta = serde_json::json!({
        "workspace_members": ["ws"],
        "resolve": {"nodes": [{"id": "ws"}, {"id": "a"}, {"id": "b"}]},
        "packages": [
            {"id": "ws", "name": "sidecheck", "version": "0.1.0", "rust_version": "1.85"},
            {"id": "a", "name": "a", "version": "1.0.0", "rust_version": "1.70"},
            {"id": "b", "name": "b", "version": "2.0.0", "rust_version": "1.85.1"},
            {"id": "c", "name": "c", "version": "3.0.0", "rust_version": "1.99"},
        ]
    });
    let (needed, declared) = needed_and_declared(&meta);
    assert_eq!(needed, Some(((1, 85, 1), "b 2.0.0".to_string())));
    assert_eq!(declared, vec![("sidecheck 0.1.0".to_string(), Some((1, 85, 0)))]);
}

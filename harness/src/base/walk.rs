//! The one walk over a directory of YAML files (`--scenarios DIR`, and
//! build.rs embedding `scenarios/`, which includes this file by path: so
//! it uses std alone).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Every `*.yaml` / `*.yml` below `dir`, sorted. A directory named
/// `profiles` holds mesh profiles, not scenarios, and is left out. Each
/// directory and file is taken once by its real path, so a symlink loop or a
/// second link to a file loads nothing twice (the first link
/// met, in sorted order, stands for it). A directory that cannot be read is
/// the error, with its path.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let mut out = Vec::new();
    collect(dir, &mut out, &mut HashSet::new())?;
    out.sort();
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<(), (PathBuf, std::io::Error)> {
    if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "profiles") {
                collect(&path, out, seen)?;
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && seen.insert(path.canonicalize().unwrap_or_else(|_| path.clone()))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_below_is_found_once_sorted_without_profiles() {
        let dir = std::env::temp_dir().join(format!("sidecheck-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["sub", "profiles", "z"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for f in ["b.yml", "a.yaml", "c.txt", "sub/d.yaml", "profiles/p.yaml", "z/e.yaml"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        // A loop back to the top, and a second name for a.yaml.
        std::os::unix::fs::symlink(&dir, dir.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(dir.join("a.yaml"), dir.join("sub/again.yaml")).unwrap();
        let found = yaml_files(&dir).unwrap();
        let rel: Vec<_> = found.iter().map(|p| p.strip_prefix(&dir).unwrap().to_str().unwrap()).collect();
        assert_eq!(rel, ["a.yaml", "b.yml", "sub/d.yaml", "z/e.yaml"]);
        let (path, _) = yaml_files(&dir.join("missing")).unwrap_err();
        assert_eq!(path, dir.join("missing"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

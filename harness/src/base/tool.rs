//! Finding the host tools the harness runs (iptables, nft, ip, unshare).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Find `tool` on PATH (and the sbin directories sudo's secure_path has),
/// or say which package provides it.
pub fn find_tool(tool: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(tool);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::ToolMissing { tool: tool.into(), package: package.into() })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

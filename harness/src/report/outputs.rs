//! `--output FORMAT=FILE` destinations, checked before anything is built:
//! a report that cannot be written must not cost a whole run (and the
//! report on stdout).

use std::path::Path;

use nix::unistd::{access, AccessFlags};

use crate::{Error, Result};

/// Whether `file` can be written: an existing regular file we may write, or
/// a new name in an existing directory we may write in. Nothing is created.
pub fn check_writable(file: &Path) -> Result<()> {
    let fail = |why: String| Err(Error::config(format!("cannot write {}: {why}", file.display())));
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => return fail("it is a directory; name a file".into()),
        Ok(_) => {
            return match access(file, AccessFlags::W_OK) {
                Ok(()) => Ok(()),
                Err(e) => fail(format!("{e}")),
            }
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return fail(e.to_string()),
        Err(_) => {}
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => match access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            Ok(()) => Ok(()),
            Err(e) => fail(format!("directory {}: {e}", dir.display())),
        },
        Ok(_) => fail(format!("{} is not a directory", dir.display())),
        Err(e) => fail(format!("directory {}: {e}; create it first", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directories_and_directories_as_files_are_refused() {
        let e = check_writable(Path::new("/nonexistent/dir/x.xml")).unwrap_err().to_string();
        assert!(e.contains("directory /nonexistent/dir") && e.contains("create it first"), "{e}");
        assert!(check_writable(Path::new("/tmp")).unwrap_err().to_string().contains("is a directory"));
        assert!(check_writable(&std::env::temp_dir().join("sidecheck-outputs-new.xml")).is_ok());
        assert!(check_writable(Path::new("relative-new-file.xml")).is_ok());
    }
}

//! Bounded input: every file the harness reads is a regular file under a
//! size cap, read without blocking on a FIFO; YAML is pre-scanned for a
//! nesting budget before the parser sees it (the parser's time grows with
//! the square of the depth); nft `include`s stay in the rule file's
//! directory. docs/verdicts.md states the caps.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Rule files (restore, nft, scripts): Istio's largest golden is ~10 KiB.
pub const RULES_MAX: u64 = 4 << 20;
/// One listing of the rules as installed (iptables-save, `nft -a list
/// ruleset`): a listing is longer than its rule file (`-m tcp`, `/32`,
/// handles; `--syn` becomes `--tcp-flags FIN,SYN,RST,ACK SYN`), at most
/// 4.7 times as measured (docs/verdicts.md), so a maximal rule file's fits.
pub const LISTING_MAX: u64 = 8 * RULES_MAX;
/// YAML files (scenarios, policies, profiles, topology settings).
pub const YAML_MAX: u64 = 1 << 20;
/// Deepest YAML nesting accepted (flow `[`/`{` or block indentation levels).
pub const YAML_DEPTH_MAX: usize = 64;

/// Read `path` as text: a regular file of at most `cap` bytes. A FIFO or a
/// device is refused at once (opened non-blocking, checked by fstat).
pub fn read_text(path: &Path, cap: u64) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| Error::Read { path: path.to_path_buf(), err })?;
    let meta = file.metadata().map_err(|err| Error::Read { path: path.to_path_buf(), err })?;
    if !meta.is_file() {
        let what = match () {
            _ if meta.is_dir() => "a directory",
            _ if std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) => "a FIFO",
            _ if std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) => "a character device",
            _ if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) => "a block device",
            _ => "not a regular file",
        };
        return Err(Error::config(format!(
            "{}: is {what}, not a regular file: give a file (it is read whole, so it must end)",
            path.display()
        )));
    }
    if meta.len() > cap {
        return Err(too_big(path, cap));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // (A file growing while read stops at the cap too.)
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|err| Error::Read { path: path.to_path_buf(), err })?;
    if bytes.len() as u64 > cap {
        return Err(too_big(path, cap));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::config(format!(
            "{}: byte {} is not UTF-8: give a text file",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn too_big(path: &Path, cap: u64) -> Error {
    Error::config(format!(
        "{}: larger than {} KiB, the most sidecheck reads from such a file",
        path.display(),
        cap >> 10
    ))
}

/// Refuse YAML nested deeper than [`YAML_DEPTH_MAX`] or larger than
/// [`YAML_MAX`], with the line where the budget ran out.
pub fn yaml_budget(file: &str, text: &str) -> Result<()> {
    if text.len() as u64 > YAML_MAX {
        return Err(Error::ScenarioInvalid {
            file: file.into(),
            message: format!("larger than {} KiB, the most sidecheck reads from a YAML file", YAML_MAX >> 10),
        });
    }
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if flow == 0 && !body.is_empty() && !body.starts_with('#') {
            // Block nesting: one level per deeper indentation, and one per
            // `- ` sequence mark that opens a nested node on the same line.
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|d| *d >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let dashes = body.split("- ").take_while(|p| p.is_empty()).count();
            if indents.len() + dashes > YAML_DEPTH_MAX {
                return Err(too_deep(file, i + 1));
            }
        }
        let (mut quote, mut prev) = (None, ' ');
        for c in line.chars() {
            match (quote, c) {
                (None, '#') if prev == ' ' || prev == '\t' => break,
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow + indents.len() > YAML_DEPTH_MAX {
                        return Err(too_deep(file, i + 1));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    Ok(())
}

fn too_deep(file: &str, line: usize) -> Error {
    Error::ScenarioInvalid {
        file: format!("{file}:{line}"),
        message: format!(
            "nested deeper than {YAML_DEPTH_MAX} levels: no sidecheck file needs that; refused before parsing"
        ),
    }
}

/// `include "FILE"` statements of an nft rule file that leave the file's
/// own directory (after symlinks): refused, since nft echoes the lines of
/// what it includes into its error output (CI logs).
pub fn nft_includes_outside(file: &Path, text: &str) -> Result<()> {
    let dir = file.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix("include") else { continue };
        if !rest.starts_with([' ', '\t', '"']) {
            continue;
        }
        let target = rest.trim().trim_end_matches(';').trim().trim_matches('"');
        let path = if Path::new(target).is_absolute() { PathBuf::from(target) } else { dir.join(target) };
        // A glob or a missing file: judged by its directory.
        let resolved = path.canonicalize().or_else(|_| {
            path.parent().unwrap_or(Path::new("/")).canonicalize().map(|p| p.join(path.file_name().unwrap_or_default()))
        });
        let inside = resolved.as_ref().is_ok_and(|p| p.starts_with(&dir));
        if !inside {
            return Err(Error::config(format!(
                "{}:{}: include \"{target}\" reaches outside the rule file's directory {}: refused; copy what it needs beside the rule file",
                file.display(),
                i + 1,
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_big_files_are_refused_fast() {
        let dir = std::env::temp_dir().join(format!("sidecheck-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // (A FIFO with no writer would block a plain open forever: this
        // returning at all is the check.)
        let e = read_text(&fifo, RULES_MAX).unwrap_err().to_string();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        let e = read_text(Path::new("/dev/zero"), RULES_MAX).unwrap_err().to_string();
        assert!(e.contains("a character device"), "{e}");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert!(read_text(&big, 1024).unwrap_err().to_string().contains("larger than 1 KiB"));
        assert_eq!(read_text(&big, 4096).unwrap().len(), 2048);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deep_yaml_is_refused_before_parsing_and_shallow_yaml_passes() {
        let deep = "[".repeat(100_000);
        let e = yaml_budget("x.yaml", &deep).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:1: nested deeper than 64"), "{e}");
        let block: String = (0..100).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        assert!(yaml_budget("b.yaml", &block).unwrap_err().to_string().starts_with("b.yaml:65:"));
        let ok = "flow: 2 # [[[[ not nesting\nsource: { host: local-pod, uid: 1000 }\nexpect:\n  ports: [15001, 9090]\n  server: \"x[{\"\n";
        yaml_budget("ok.yaml", ok).unwrap();
    }

    #[test]
    fn nft_includes_must_stay_beside_the_rule_file() {
        let dir = std::env::temp_dir().join(format!("sidecheck-include-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("part.nft"), "").unwrap();
        let file = dir.join("main.nft");
        std::fs::write(&file, "").unwrap();
        nft_includes_outside(&file, "include \"part.nft\"\ninclude \"./part.nft\";\n").unwrap();
        for bad in ["include \"/etc/shadow\"", "  include \"../../etc/shadow\"", "include \"/etc/*\""] {
            let e = nft_includes_outside(&file, bad).unwrap_err().to_string();
            assert!(e.contains("main.nft:1: include") && e.contains("refused"), "{bad}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

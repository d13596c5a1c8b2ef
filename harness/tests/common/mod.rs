//! What test files share: where the project's shared data lives (third-party
//! rule sets this repository does not carry), trials that need it, and
//! running the `sidecheck` binary with the check that a run left nothing.
//!
//! Shared data: `$SIDECHECK_SHARED` if set, else `<workspace>/../shared`. A
//! trial names the paths it needs; when one is absent the trial is reported
//! ignored with one line saying which and how to get it, unless
//! `SIDECHECK_REQUIRE_SHARED=1` (CI), where absence is a failure.
//!
//! Use from a libtest-mimic target (`harness = false`): `mod common;`, build
//! trials with [`data_trials`].
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod expect;

use libtest_mimic::{Arguments, Failed, Trial};

pub const BIN: &str = env!("CARGO_BIN_EXE_sidecheck");

/// The shared data root.
pub fn data_root() -> PathBuf {
    match std::env::var_os("SIDECHECK_SHARED") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        // harness/ -> the workspace -> beside it.
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap_or(Path::new("/")).join("shared"),
    }
}

/// Whether absent data fails (CI) instead of ignoring.
pub fn required() -> bool {
    std::env::var("SIDECHECK_REQUIRE_SHARED").is_ok_and(|v| v == "1")
}

/// Why a trial needing `needs` (paths under the data root, or absolute
/// paths) cannot run, if it cannot.
pub fn missing<P: AsRef<Path>>(needs: &[P]) -> Option<String> {
    let root = data_root();
    let absent: Vec<&Path> = needs.iter().map(AsRef::as_ref).filter(|p| !root.join(p).exists()).collect();
    let first = absent.first()?;
    let first = first.strip_prefix(&root).unwrap_or(first).display();
    let more = match absent.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    Some(format!(
        "needs {first}{more} under {} (not found): put ../shared beside the checkout or set SIDECHECK_SHARED=DIR",
        root.display()
    ))
}

/// A test that needs shared data: its name, the paths (under the data root)
/// it reads, and its body, which fails by panicking like a #[test].
pub struct DataTest {
    pub name: &'static str,
    pub needs: &'static [&'static str],
    pub body: fn(&Path),
}

/// One trial needing `needs` (paths under the data root): it runs `body`
/// on the data root when every path is there; otherwise it is ignored, with
/// one stderr line giving the reason (libtest prints a bare `ignored` for it,
/// nextest SKIP), or fails under SIDECHECK_REQUIRE_SHARED=1.
pub fn data_trial<P: AsRef<Path>>(
    args: &Arguments,
    name: impl Into<String>,
    needs: &[P],
    body: impl FnOnce(PathBuf) -> Result<(), Failed> + Send + 'static,
) -> Trial {
    let name = name.into();
    match missing(needs) {
        None => Trial::test(name, move || body(data_root())),
        Some(why) if required() => {
            Trial::test(name, move || Err(Failed::from(format!("{why} (SIDECHECK_REQUIRE_SHARED=1: absence fails)"))))
        }
        Some(why) => {
            // Ignored when listed, so libtest, nextest and `--ignored` see it
            // as such. Run anyway (--include-ignored, nextest --run-ignored),
            // it fails with the reason: a pass would lie.
            let t = Trial::test(name.clone(), {
                let why = why.clone();
                move || Err(Failed::from(why))
            })
            .with_ignored_flag(true);
            ignored(args, t, &why)
        }
    }
}

/// `trial`, ignored for `why`: said on one stderr line when it would run,
/// because libtest prints a bare `ignored` (nextest SKIP).
pub fn ignored(args: &Arguments, trial: Trial, why: &str) -> Trial {
    let trial = trial.with_ignored_flag(true);
    if !args.list && !args.is_filtered_out(&trial) {
        eprintln!("ignored {}: {why}", trial.name());
    }
    trial
}

/// Trials for `tests`, each as [`data_trial`].
pub fn data_trials(args: &Arguments, tests: Vec<DataTest>) -> Vec<Trial> {
    tests
        .into_iter()
        .map(|DataTest { name, needs, body }| {
            data_trial(args, name, needs, move |root| {
                body(&root);
                Ok(())
            })
        })
        .collect()
}

/// What a test that builds network namespaces says when not run as root.
pub const NOT_ROOT: &str = "run as root: these tests build network namespaces (cargo test runs them through \
    ci/as-root, which uses sudo; see the README's note for users without root)";

/// For a #[test]: fails (panics) saying how to run it, unless root.
pub fn need_root() {
    assert!(nix::unistd::geteuid().is_root(), "{NOT_ROOT}");
}

/// For a libtest-mimic trial: the same, as its failure.
pub fn require_root() -> Result<(), Failed> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(NOT_ROOT.into())
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("sidecheck was killed by a signal")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both streams, for messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sidecheck-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// As [`TempDir::write`], the path as a string for an argument list.
    pub fn file(&self, rel: &str, text: &str) -> String {
        self.write(rel, text).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pids of stub processes started by the sidecheck process `pid`.
pub fn stubs_of_pid(pid: u32) -> Vec<u32> {
    let marker = format!("/run/sidecheck/sidecheck-{pid}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|exe| exe.to_string_lossy().starts_with(&marker))
        })
        .collect()
}

/// Namespaces of sidecheck runs whose pid is this test's child: each test
/// checks that its own runs left none.
pub fn namespaces_of_pid(pid: u32) -> Vec<String> {
    harness::sandbox::registry::namespaces_of(&format!("sidecheck-{pid}"))
}

/// Entries of /run/sidecheck of the runs of process `pid` (run names are
/// `sidecheck-<pid>-<n>`, n random per process).
pub fn run_files_of_pid(pid: u32) -> Vec<String> {
    let (a, b) = (format!("sidecheck-{pid}-"), format!(".sidecheck-{pid}-"));
    std::fs::read_dir("/run/sidecheck")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&a) || n.starts_with(&b))
        .collect()
}

/// Assert the sidecheck process `pid` left no namespace, run file, lock or
/// keep marker, or stub behind.
pub fn assert_nothing_left(pid: u32, what: &str) {
    let left = namespaces_of_pid(pid);
    assert!(left.is_empty(), "{what} left namespaces behind: {left:?}");
    let files = run_files_of_pid(pid);
    assert!(files.is_empty(), "{what} left its run directory or lock file: {files:?}");
    let stubs = stubs_of_pid(pid);
    assert!(stubs.is_empty(), "{what} left stub processes: {stubs:?}");
}

/// Run `sidecheck args`, then check the run left no namespace, run file or
/// stub; with the run's pid.
pub fn run_checked_pid(args: &[&str]) -> (Output, u32) {
    let child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_nothing_left(pid, &format!("sidecheck {args:?}"));
    (out, pid)
}

/// [`run_checked_pid`] without the pid.
pub fn run_checked(args: &[&str]) -> Output {
    run_checked_pid(args).0
}

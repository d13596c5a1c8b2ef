//! Who owns what: every run holds a lock file under `/run/sidecheck/`, and
//! names everything it creates after it. The lock is an `flock`, which the
//! kernel drops when the process dies, even by SIGKILL, so the next run (or
//! `sidecheck clean`) can tell a dead run's leftovers from a live run's
//! resources without trusting pids, and sweep only the former.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use crate::{Error, Result};

pub const RUN_DIR: &str = "/run/sidecheck";
/// Where `ip netns` (and netns-rs) bind-mount named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Every resource name starts with this; nothing else on the host does.
pub const NAME_PREFIX: &str = "sidecheck-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Creating things the signal handler must clean (namespaces, children)
/// takes this shared; the handler takes it alone, so nothing is half made
/// while it cleans and nothing is made after. Writing a stub binary also
/// takes it alone: a child forked while another thread holds that file open
/// for writing would inherit the fd until its exec, and exec of the stub
/// would then fail with ETXTBSY.
static CREATE_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub(crate) fn creating() -> std::sync::RwLockReadGuard<'static, ()> {
    CREATE_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    CREATE_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// Set as soon as a stop signal is being handled.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Call before exiting: when a signal is being handled, its handler owns the
/// exit (status 128+signal, after cleanup); whatever the main thread saw
/// meanwhile (a stub killed under it, say) is not the run's outcome.
pub fn wait_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Runs alive in this process, for the signal handler.
static LIVE: Mutex<Vec<LiveRun>> = Mutex::new(Vec::new());

/// Short-lived children (rule installers, generators), each the leader of
/// its own process group, for the signal handler to kill with their children.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A child that leads its own process group: killed (group and all) if a
/// signal stops the run before it ends.
pub fn track_group(pgid: i32) {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
}

pub fn untrack_group(pgid: i32) {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pgid);
}

struct LiveRun {
    prefix: String,
    pids: Vec<i32>,
}

/// One run's ownership of its resources. Dropping it removes whatever is
/// still named after it: the safety net under the owners' own Drops.
pub struct RunGuard {
    prefix: String,
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
    keep: std::sync::atomic::AtomicBool,
}

/// 32 random bits drawn once per process.
fn process_nonce() -> u32 {
    static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        let mut b = [0u8; 4];
        // SAFETY: writes at most 4 bytes into `b`.
        if unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) } == 4 {
            u32::from_ne_bytes(b)
        } else {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
        }
    })
}

impl RunGuard {
    pub fn acquire() -> Result<RunGuard> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(RUN_DIR)
            .map_err(Error::io(format!("creating {RUN_DIR}")))?;
        // The pid alone is not unique: runs in separate PID namespaces share
        // /run (each may be pid 1). A random number per process joins it;
        // a name already taken is never replaced, another is drawn.
        for _ in 0..8 {
            let n = (u64::from(process_nonce()) << 20) | u64::from(SEQ.fetch_add(1, Ordering::SeqCst));
            let prefix = format!("{NAME_PREFIX}{}-{n}", std::process::id());
            // Known to the signal handler before anything named after it exists.
            let _creating = creating();
            LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(LiveRun { prefix: prefix.clone(), pids: Vec::new() });
            match Self::make(Path::new(RUN_DIR), prefix.clone()) {
                Ok(g) => return Ok(g),
                Err(e) => {
                    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| r.prefix != prefix);
                    if !matches!(&e, Error::Io { err, .. } if err.kind() == std::io::ErrorKind::AlreadyExists) {
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::config(format!(
            "could not find a free run name in {RUN_DIR} after 8 tries: remove stale files there (sidecheck clean)"
        )))
    }

    /// Take `prefix` in `run_dir`, or fail with AlreadyExists if any run
    /// (live or not yet swept) has it: its lock is never replaced.
    fn make(run_dir: &Path, prefix: String) -> Result<RunGuard> {
        let lock_path = run_dir.join(format!("{prefix}.lock"));
        // Lock a temporary file, then link it into place (link, unlike
        // rename, fails when the name exists): a sweeper never sees this
        // run's lock file unlocked, and never another run's lock replaced.
        let tmp = run_dir.join(format!(".{prefix}.lock.tmp"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(Error::io(format!("creating lock file {}", tmp.display())))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, e)) => {
                let _ = fs::remove_file(&tmp);
                return Err(Error::Io { doing: format!("locking {}", tmp.display()), err: e.into() });
            }
        };
        let linked = fs::hard_link(&tmp, &lock_path);
        let _ = fs::remove_file(&tmp);
        linked.map_err(Error::io(format!("taking {} (from {})", lock_path.display(), tmp.display())))?;
        let dir = run_dir.join(&prefix);
        fs::DirBuilder::new().mode(0o755).create(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        Ok(RunGuard { prefix, dir, lock_path, _lock: lock, keep: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Start of every name this run gives: namespaces are `<prefix>-<host>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A directory only this run uses (stub binaries live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remember a child so that a signal kills it before the process exits.
    pub fn register_pid(&self, pid: i32) {
        if let Some(run) = LIVE.lock().unwrap().iter_mut().find(|r| r.prefix == self.prefix) {
            run.pids.push(pid);
        }
    }
}

/// A child of run `prefix` was reaped: the signal handler must not kill its pid.
pub fn forget_pid(prefix: &str, pid: i32) {
    if let Some(run) = LIVE.lock().unwrap().iter_mut().find(|r| r.prefix == prefix) {
        run.pids.retain(|p| *p != pid);
    }
}

impl RunGuard {
    /// Keep this run's namespaces after it ends: its lock file becomes
    /// `<prefix>.kept`, which sweeps of stale runs leave alone and
    /// `sidecheck clean` removes.
    pub fn keep(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.keep.load(Ordering::SeqCst) {
            let _ = fs::remove_dir_all(&self.dir);
            let _ = fs::rename(&self.lock_path, Path::new(RUN_DIR).join(format!("{}.kept", self.prefix)));
            LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| r.prefix != self.prefix);
            return;
        }
        remove_run_resources(&self.prefix);
        let _ = fs::remove_file(&self.lock_path);
        LIVE.lock().unwrap().retain(|r| r.prefix != self.prefix);
    }
}

/// Unmount and delete one named namespace, as `ip netns del` does.
pub fn remove_netns(name: &str) -> std::io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Namespaces currently named after `prefix`.
pub fn namespaces_of(prefix: &str) -> Vec<String> {
    let want = format!("{prefix}-");
    let Ok(entries) = fs::read_dir(NETNS_DIR) else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with(&want)).collect()
}

fn remove_run_resources(prefix: &str) -> usize {
    let names = namespaces_of(prefix);
    for name in &names {
        let _ = remove_netns(name);
    }
    let _ = fs::remove_dir_all(Path::new(RUN_DIR).join(prefix));
    names.len()
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub runs: usize,
    pub namespaces: usize,
}

/// Remove what dead runs left: every lock file nobody holds, with the
/// namespaces and directory named after it. Live runs are never touched.
pub fn sweep_stale() -> Swept {
    let mut swept = Swept::default();
    if let Ok(entries) = fs::read_dir(RUN_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A lock being made (`.<prefix>.lock.tmp`) is locked before it
            // is renamed; an unlocked one belongs to a run that died then.
            let (prefix, tmp) =
                match (name.strip_suffix(".lock"), name.strip_prefix('.').and_then(|n| n.strip_suffix(".lock.tmp"))) {
                    (Some(p), _) => (p.to_string(), false),
                    (None, Some(p)) => (p.to_string(), true),
                    _ => continue,
                };
            if !prefix.starts_with(NAME_PREFIX) {
                continue;
            }
            // A lock file is opened before it is locked: a sweeper could lock
            // it in between. One being made belongs to a live process, so
            // make sure its creator (the pid in the name) is gone.
            if tmp {
                let pid = prefix[NAME_PREFIX.len()..].split('-').next().unwrap_or("");
                if Path::new("/proc").join(pid).exists() {
                    continue;
                }
            }
            let Ok(file) = File::open(entry.path()) else { continue };
            let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { continue };
            swept.runs += usize::from(!tmp);
            swept.namespaces += remove_run_resources(&prefix);
            let _ = fs::remove_file(entry.path());
        }
    }
    // Namespaces of ours with neither a lock nor a keep marker: no live run
    // has those (a run's lock exists before its first namespace).
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(prefix) = run_prefix_of(&name) else { continue };
            let marker = |ext: &str| Path::new(RUN_DIR).join(format!("{prefix}.{ext}")).exists();
            if !marker("lock") && !marker("kept") && remove_netns(&name).is_ok() {
                swept.namespaces += 1;
            }
        }
    }
    swept
}

/// `sidecheck-<pid>-<n>` of a namespace name `sidecheck-<pid>-<n>-<host>`.
fn run_prefix_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let (pid, n) = (parts.next()?, parts.next()?);
    parts.next()?;
    if pid.chars().all(|c| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_digit())
        && !pid.is_empty()
        && !n.is_empty()
    {
        Some(&name[..NAME_PREFIX.len() + pid.len() + 1 + n.len()])
    } else {
        None
    }
}

/// Remove runs kept with `--keep` (their `<prefix>.kept` marker and namespaces).
pub fn sweep_kept() -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(RUN_DIR) else { return swept };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(prefix) = name.strip_suffix(".kept").filter(|p| p.starts_with(NAME_PREFIX)) else { continue };
        swept.runs += 1;
        swept.namespaces += remove_run_resources(prefix);
        let _ = fs::remove_file(entry.path());
    }
    swept
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread
/// started after it) and handle them on a thread of their own: kill the
/// children of every live run, remove its namespaces, exit 128+signal. Call it
/// first thing in `main`, before any other thread exists.
pub fn install_signal_cleanup() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().map_err(|e| Error::Io { doing: "blocking signals".into(), err: e.into() })?;
    std::thread::Builder::new()
        .name("signal-cleanup".into())
        .spawn(move || {
            let sig = set.wait().unwrap_or(Signal::SIGTERM);
            INTERRUPTED.store(true, Ordering::SeqCst);
            // No child is between fork and registration while we clean up,
            // and none starts after: hold the fork lock until exit.
            let _nothing_new = exclusive();
            for pgid in std::mem::take(&mut *GROUPS.lock().unwrap_or_else(|e| e.into_inner())) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pgid), None);
            }
            let runs = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
            for run in &runs {
                for pid in &run.pids {
                    let pid = nix::unistd::Pid::from_raw(*pid);
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    // Reap it: once we exit, none of our stubs is still dying.
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                remove_run_resources(&run.prefix);
                let _ = fs::remove_file(Path::new(RUN_DIR).join(format!("{}.lock", run.prefix)));
                let _ = fs::remove_file(Path::new(RUN_DIR).join(format!(".{}.lock.tmp", run.prefix)));
            }
            eprintln!("sidecheck: interrupted by {sig}; removed {} run(s)", runs.len());
            std::process::exit(128 + sig as i32);
        })
        .map_err(Error::io("starting the signal thread"))?;
    Ok(())
}

/// For children: undo the signal mask they inherit from a blocked thread.
pub fn unblock_signals_in_child() {
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
}

#[cfg(test)]
mod held_locks {
    use super::*;

    #[test]
    fn a_held_lock_is_never_replaced() {
        let dir = std::env::temp_dir().join(format!("sidecheck-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let prefix = format!("{NAME_PREFIX}1-7");
        let first = RunGuard::make(&dir, prefix.clone()).unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&first.lock_path);
        // The same name again, as a run in another PID namespace would take it.
        let again = RunGuard::make(&dir, prefix.clone());
        let e = again.err().expect("a second run took a held lock's name");
        assert!(matches!(&e, Error::Io { err, .. } if err.kind() == std::io::ErrorKind::AlreadyExists), "{e}");
        assert_eq!(inode(&first.lock_path), before, "the held lock file was replaced");
        assert!(!dir.join(format!(".{prefix}.lock.tmp")).exists());
        std::mem::forget(first); // its Drop cleans the real run directory
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn prefixes_differ_by_more_than_the_pid() {
        assert_ne!(process_nonce(), 0);
        let n = (u64::from(process_nonce()) << 20) | 5;
        assert!(run_prefix_of(&format!("{NAME_PREFIX}1-{n}-local-pod")).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefixes_of_namespace_names() {
        assert_eq!(run_prefix_of("sidecheck-123-0-local-pod"), Some("sidecheck-123-0"));
        assert_eq!(run_prefix_of("sidecheck-123-10-node"), Some("sidecheck-123-10"));
        assert_eq!(run_prefix_of("sidecheck-abc-0-node"), None);
        assert_eq!(run_prefix_of("sidecheck-123-0"), None);
        assert_eq!(run_prefix_of("other-123-0-node"), None);
    }
}

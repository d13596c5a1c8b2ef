//! Running a tool inside a namespace: bounded in time and output, killed
//! with its whole process group, and with sidecheck.

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// What `sh -x` puts before each command it runs (PS4): a mark no
/// command's own output starts with.
pub const XTRACE: &str = "+sidecheck: ";

/// A tool's output kept for messages.
const OUTPUT_CAP: usize = 64 * 1024;

/// Output of a command run inside a namespace.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub output: String,
    /// Bytes of output past the cap, not kept.
    pub dropped: u64,
}

/// Run `program args` inside `ns` with `stdin` fed to it, bounded by `timeout`
/// (killed after it), output (stdout+stderr) capped at 64 KiB.
pub fn run_in(ns: &Namespace, program: &Path, args: &[&str], stdin: &str, timeout: Duration) -> Result<Ran> {
    run_capped(ns, program, args, stdin, timeout, OUTPUT_CAP)
}

/// As [`run_in`], keeping up to `cap` bytes of stdout and of stderr each.
pub fn run_capped(
    ns: &Namespace,
    program: &Path,
    args: &[&str],
    stdin: &str,
    timeout: Duration,
    cap: usize,
) -> Result<Ran> {
    let mut cmd = ns.command(program);
    cmd.args(args)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PS4", XTRACE)
        .process_group(0);
    // Dies with sidecheck, even by SIGKILL: a contained source's `unshare`
    // then takes its whole PID namespace along (--kill-child).
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let doing = format!("running {} in namespace {}", program.display(), ns.name());
    let spawned = {
        let _guard = crate::sandbox::registry::creating();
        let spawned = cmd.spawn();
        if let Ok(c) = &spawned {
            crate::sandbox::registry::track_group(c.id() as i32);
        }
        spawned
    };
    let mut child = spawned.map_err(Error::io(doing.clone()))?;
    let pgid = child.id() as i32;
    struct Untrack(i32);
    impl Drop for Untrack {
        fn drop(&mut self) {
            crate::sandbox::registry::untrack_group(self.0);
        }
    }
    let _untrack = Untrack(pgid);
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    // Keep the first `cap` bytes of output and drain the rest: a child that
    // prints megabytes must never block on a full pipe.
    // Kept in shared buffers: a killed child's output is shown too, without
    // waiting for pipes a leftover grandchild may hold open.
    let collect = |r: Option<Box<dyn std::io::Read + Send>>| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = buf.clone();
        let handle = std::thread::spawn(move || {
            let mut dropped = 0u64;
            if let Some(mut r) = r {
                use std::io::Read;
                let mut chunk = [0u8; 16 * 1024];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut kept = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let room = cap.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&chunk[..room]);
                    dropped += (n - room) as u64;
                }
            }
            if dropped > 0 {
                let mut kept = shared.lock().unwrap_or_else(|e| e.into_inner());
                kept.extend_from_slice(format!("\n[... {dropped} more bytes of output not shown]\n").as_bytes());
            }
            dropped
        });
        (buf, handle)
    };
    let so_far = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    let out = collect(child.stdout.take().map(|s| Box::new(s) as _));
    let err = collect(child.stderr.take().map(|s| Box::new(s) as _));
    // Wait on a thread so the deadline is a channel timeout, not a poll loop.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => status.map_err(Error::io(doing.clone()))?,
        Err(_) => {
            // The whole process group: a generator's own children too.
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            // A moment for the readers to take what was already written.
            std::thread::sleep(Duration::from_millis(50));
            let said = so_far(&out.0) + &so_far(&err.0);
            let said = if said.trim().is_empty() {
                "it printed nothing".to_string()
            } else {
                format!("its output before it was killed:\n{}", crate::base::text::shown(&said))
            };
            return Err(Error::Timeout { doing: format!("{doing} ({said})"), seconds: timeout.as_secs_f32() });
        }
    };
    let _ = writer.join();
    let dropped = out.1.join().unwrap_or(0) + err.1.join().unwrap_or(0);
    let output = so_far(&out.0) + &so_far(&err.0);
    Ok(Ran { status, output, dropped })
}

//! The stub processes: fake-envoy in the local pod (as the proxy uid/gid,
//! since iptables' owner match sees the socket creator) and fake-istiod in
//! the istiod namespace. Their binaries are embedded in the harness at build
//! time and written to the run's directory, so `sidecheck` needs nothing
//! beside it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::mpsc;
use std::time::Duration;

use crate::sandbox::ns::Namespace;
use crate::sandbox::registry::RunGuard;
use crate::{Error, Result};

const FAKE_ENVOY: &[u8] = include_bytes!(concat!(env!("SIDECHECK_STUB_DIR"), "/fake-envoy"));
const FAKE_ISTIOD: &[u8] = include_bytes!(concat!(env!("SIDECHECK_STUB_DIR"), "/fake-istiod"));

/// Which stub.
#[derive(Clone, Copy, Debug)]
pub enum Stub {
    FakeEnvoy,
    FakeIstiod,
}

impl Stub {
    pub fn name(self) -> &'static str {
        match self {
            Stub::FakeEnvoy => "fake-envoy",
            Stub::FakeIstiod => "fake-istiod",
        }
    }

    fn bytes(self) -> &'static [u8] {
        match self {
            Stub::FakeEnvoy => FAKE_ENVOY,
            Stub::FakeIstiod => FAKE_ISTIOD,
        }
    }

    /// Write the binary into the run's directory (mode 0755: the proxy uid
    /// must be able to execute it).
    pub fn install(self, run: &RunGuard) -> Result<PathBuf> {
        let path = run.dir().join(self.name());
        let _exclusive = crate::sandbox::registry::exclusive();
        std::fs::write(&path, self.bytes()).map_err(Error::io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("making {} executable", path.display())))?;
        Ok(path)
    }
}

/// A running stub. Dropping it kills and reaps it. Its stdin is a pipe we
/// hold: if the harness dies, the stub sees EOF and exits by itself.
pub struct StubProcess {
    child: Child,
    _stdin: ChildStdin,
    pid: i32,
    run_prefix: String,
    /// Drains the stub's stderr; joined on drop so its pipe is closed by then.
    drain: Option<std::thread::JoinHandle<()>>,
    /// The first lines it logged about connections it dropped (bounded).
    trouble: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl StubProcess {
    /// Start `exe args` in `ns` as `uid:gid` and wait (at most `timeout`) for
    /// its READY line. If it exits first, its stderr is the error.
    pub fn start(
        run: &RunGuard,
        stub: Stub,
        exe: &Path,
        ns: &Namespace,
        (uid, gid): (u32, u32),
        args: &[String],
        timeout: Duration,
    ) -> Result<StubProcess> {
        let mut cmd = ns.command(exe);
        // Thousands of short connection threads would each get a glibc malloc
        // arena (up to 8 per core); one arena is plenty for line-sized buffers.
        cmd.args(args).current_dir("/").env("MALLOC_ARENA_MAX", "1");
        // SAFETY: only async-signal-safe calls between fork and exec. This
        // runs after the namespace's own pre_exec (setns needs root), which
        // is why the ids are not dropped with Command::uid/gid: std drops
        // them before any pre_exec runs.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let failed =
            |detail: String| Error::StubFailed { stub: stub.name().into(), namespace: ns.name().into(), detail };
        let spawned = {
            let _guard = crate::sandbox::registry::creating();
            let spawned = cmd.spawn();
            if let Ok(c) = &spawned {
                run.register_pid(c.id() as i32);
            }
            spawned
        };
        let mut child = spawned.map_err(|e| failed(format!("could not start {}: {e}", exe.display())))?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut proc = StubProcess {
            child,
            _stdin: stdin,
            pid,
            run_prefix: run.prefix().into(),
            drain: None,
            trouble: Default::default(),
        };
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(timeout) {
            Ok(line) if line.trim() == sidecheck_wire::stub::READY => {
                let _ = reader.join();
                // Keep draining stderr so a chatty stub never blocks on a full
                // pipe, keeping what it says about dropped connections.
                let trouble = proc.trouble.clone();
                proc.drain = Some(std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                        let mut t = trouble.lock().unwrap_or_else(|e| e.into_inner());
                        if line.contains(sidecheck_wire::stub::DROPPED_LOG) && t.len() < 10 {
                            t.push(line);
                        }
                    }
                }));
                Ok(proc)
            }
            Ok(_) => {
                let _ = proc.child.wait();
                let mut err = String::new();
                let _ = stderr.take(8192).read_to_string(&mut err);
                let hint = if err.contains("Address already in use") {
                    "\nSomething in that namespace already listens on a port the stubs need: change the port in the settings."
                } else {
                    ""
                };
                Err(failed(format!("it exited before it was ready: {}{hint}", err.trim())))
            }
            Err(_) => Err(failed(format!("no READY line within {} ms", timeout.as_millis()))),
        }
    }
}

impl StubProcess {
    /// What the stub logged so far about connections it could not serve.
    pub fn trouble(&self) -> Vec<String> {
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for StubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        crate::sandbox::registry::forget_pid(&self.run_prefix, self.pid);
    }
}

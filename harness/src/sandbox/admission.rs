//! Admission control: how many probes may be in flight at once, sized from
//! the limits that would otherwise turn load into false FAILs. A probe in
//! flight holds descriptors in the harness (its client socket, the app
//! server's accepted socket), descriptors and one thread per hop in
//! fake-envoy, and a thread in fake-istiod. Threads of the stubs count
//! against RLIMIT_NPROC of their uid, which every process of that uid on the
//! machine shares (other runs' stubs too), so the tasks that uid already has
//! are subtracted.
//!
//! The count is the process's: `diff`, the `--assert paths` reference and
//! parallel tests run several sessions in one process, and the harness's
//! descriptors and the proxy uid's threads are shared by all of them, so
//! every session draws from one count ([`admit`]) with its own budget as
//! the ceiling.

use std::sync::{Mutex, OnceLock};

use nix::sys::resource::{getrlimit, Resource};
use tokio::sync::Notify;

use crate::{Error, Result};

/// Never more than this many at once, whatever the limits: beyond it the
/// harness's own app servers (one runtime, two workers) answer too late.
pub const MAX_IN_FLIGHT: usize = 512;
/// Descriptors the harness needs besides probes (namespaces, netlink,
/// runtime, listeners), and that a stub needs for its listeners.
const HARNESS_FDS: u64 = 128;
const STUB_FDS: u64 = 64;
/// Per probe: harness descriptors, fake-envoy descriptors and threads (two hops).
const PROBE_FDS_HARNESS: u64 = 2;
const PROBE_FDS_STUB: u64 = 4;
const PROBE_THREADS_STUB: u64 = 2;
/// Threads a stub starts before any probe (accept loops, stdin watcher).
const STUB_BASE_THREADS: u64 = 24;

/// The limits a budget is computed from (read from the system, or given in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NOFILE soft and hard (the stubs raise their soft limit to the hard one).
    pub nofile: (u64, u64),
    /// RLIMIT_NPROC soft limit the stubs inherit (None: unlimited).
    pub nproc: Option<u64>,
    /// Tasks the proxy uid and the control plane uid already have.
    pub proxy_tasks: u64,
    pub control_plane_tasks: u64,
}

impl Limits {
    pub fn read(proxy_uid: u32, control_plane_uid: u32) -> Limits {
        let nofile = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
        let nproc = getrlimit(Resource::RLIMIT_NPROC).ok().map(|(soft, _)| soft).filter(|n| *n != libc::RLIM_INFINITY);
        Limits {
            nofile,
            nproc,
            proxy_tasks: tasks_of(proxy_uid),
            control_plane_tasks: if control_plane_uid == proxy_uid { 0 } else { tasks_of(control_plane_uid) },
        }
    }
}

/// Probes allowed in flight at once, or one error naming the limit that is
/// too tight to run at all.
pub fn budget(l: &Limits, proxy_uid: u32, control_plane_uid: u32) -> Result<usize> {
    let (soft, hard) = l.nofile;
    let need = HARNESS_FDS + PROBE_FDS_HARNESS * 4;
    if soft < need {
        return Err(Error::config(format!(
            "the open-file limit (RLIMIT_NOFILE, ulimit -n) is {soft}: sidecheck needs at least {need}; raise it (ulimit -n 1024)"
        )));
    }
    let mut n = (soft - HARNESS_FDS) / PROBE_FDS_HARNESS;
    n = n.min(hard.saturating_sub(STUB_FDS) / PROBE_FDS_STUB);
    if let Some(nproc) = l.nproc {
        for (uid, tasks, per_probe) in
            [(proxy_uid, l.proxy_tasks, PROBE_THREADS_STUB), (control_plane_uid, l.control_plane_tasks, 1)]
        {
            let room = nproc.saturating_sub(tasks + STUB_BASE_THREADS) / per_probe;
            if room < 1 {
                return Err(Error::config(format!(
                    "the process limit (RLIMIT_NPROC, ulimit -u) is {nproc} and uid {uid} already has {tasks} tasks: its stub needs {} threads more; raise it (ulimit -u 4096)",
                    STUB_BASE_THREADS + per_probe
                )));
            }
            n = n.min(room);
        }
    }
    Ok((n as usize).clamp(1, MAX_IN_FLIGHT))
}

/// Probes in flight in this process, every session's.
static IN_FLIGHT: Mutex<usize> = Mutex::new(0);

/// Woken whenever a probe finishes.
fn released() -> &'static Notify {
    static RELEASED: OnceLock<Notify> = OnceLock::new();
    RELEASED.get_or_init(Notify::new)
}

/// One probe's place in the process's count, given back on drop.
#[must_use = "the probe is admitted only while its permit is held"]
pub struct Permit(());

impl Drop for Permit {
    fn drop(&mut self) {
        *IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        released().notify_waiters();
    }
}

/// Wait until fewer than `budget` probes of this process (any session's)
/// are in flight, then count one more. Runtime-independent: sessions each
/// have their own runtime.
pub async fn admit(budget: usize) -> Permit {
    loop {
        // Registered before the count is read, so a release in between is not missed.
        let notified = released().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut n = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            if *n < budget.max(1) {
                *n += 1;
                return Permit(());
            }
        }
        notified.await;
    }
}

/// Probes of this process in flight now.
pub fn in_flight() -> usize {
    *IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads of every process whose real uid is `uid` (what RLIMIT_NPROC counts).
fn tasks_of(uid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut total = 0;
    for entry in dir.flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            total += field("Threads:").unwrap_or(1);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(nofile: u64, nproc: Option<u64>, tasks: u64) -> Limits {
        Limits { nofile: (nofile, nofile), nproc, proxy_tasks: tasks, control_plane_tasks: 0 }
    }

    #[test]
    fn generous_limits_are_capped() {
        assert_eq!(budget(&limits(1 << 20, None, 0), 1337, 65534).unwrap(), MAX_IN_FLIGHT);
    }

    #[test]
    fn each_limit_narrows_the_budget() {
        // 256 descriptors: fake-envoy's (256 - 64) / 4 = 48 bind first.
        assert_eq!(budget(&limits(256, None, 0), 1337, 65534).unwrap(), 48);
        // 40 tasks for uid 1337, 4 in use: (40 - 4 - 24) / 2 = 6.
        assert_eq!(budget(&limits(65536, Some(40), 4), 1337, 65534).unwrap(), 6);
    }

    #[test]
    fn limits_too_tight_name_the_limit() {
        let e = budget(&limits(32, None, 0), 1337, 65534).unwrap_err().to_string();
        assert!(e.contains("RLIMIT_NOFILE") && e.contains("is 32"), "{e}");
        let e = budget(&limits(65536, Some(8), 0), 1337, 65534).unwrap_err().to_string();
        assert!(e.contains("RLIMIT_NPROC") && e.contains("uid 1337"), "{e}");
    }

    #[test]
    fn every_session_of_the_process_draws_from_one_count() {
        use std::time::Duration;
        // Two sessions, each with its own runtime, as diff and parallel tests run them.
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (a, b) = (runtime(), runtime());
        let mut held: Vec<Permit> = a.block_on(async { vec![admit(3).await, admit(3).await] });
        held.push(b.block_on(admit(3)));
        assert_eq!(in_flight(), 3);
        let waits = |budget| {
            b.block_on(async { tokio::time::timeout(Duration::from_millis(100), admit(budget)).await }).is_err()
        };
        assert!(waits(3), "a fourth probe admitted with a budget of 3 and 3 in flight across two sessions");
        // A tighter budget (a session whose limits are lower) waits longer.
        held.pop();
        assert!(waits(2), "a budget of 2 admitted a probe with 2 in flight");
        // One finishing in session a lets one of session b in.
        let waiting = std::thread::spawn(move || {
            b.block_on(async { tokio::time::timeout(Duration::from_secs(10), admit(2)).await })
        });
        std::thread::sleep(Duration::from_millis(50));
        held.pop();
        let admitted = waiting.join().unwrap().expect("admitted once a probe finished");
        assert_eq!(in_flight(), 2);
        drop((admitted, held));
        assert_eq!(in_flight(), 0);
    }

    #[test]
    fn tasks_of_counts_this_process() {
        assert!(tasks_of(nix::unistd::getuid().as_raw()) >= 1);
    }
}

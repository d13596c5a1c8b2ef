//! Sessions give back every descriptor, thread and child they take: start
//! and drop several (with probes, tracing, every backend) and the process
//! holds what it held before. A test binary of its own, so no other test's
//! descriptors come and go meanwhile. Needs root.

mod common;
use common::need_root;
use harness::rules::source::Backend;
use harness::{model::scenario, Session, SessionConfig};

/// The tests here count the process's own descriptors: one at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn sessions_leak_no_descriptors_threads_or_children() {
    need_root();
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let scenarios = scenario::builtin().unwrap();
    let cycle = |backend| {
        let s = Session::start(SessionConfig { backend, ..SessionConfig::default() }).unwrap();
        assert!(s.run(&scenarios).iter().all(|r| r.outcome == harness::verdict::Outcome::Pass));
    };
    // The first session loads what stays loaded (kernel modules, lazy statics).
    cycle(Backend::Nft);
    let (fds, tasks) = (open_fds(), threads());
    for backend in harness::netfilter::all().iter().cycle().take(5).map(|f| f.backend()) {
        cycle(backend);
    }
    assert_eq!(open_fds(), fds, "descriptors leaked across 5 sessions");
    // Detached helper threads (stderr drains, waiters) end with their child.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while threads() > tasks && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(threads(), tasks, "threads leaked across 5 sessions");
    let children =
        std::fs::read_to_string(format!("/proc/self/task/{}/children", std::process::id())).unwrap_or_default();
    assert!(children.trim().is_empty(), "child processes left: {children}");
}

#[test]
fn children_inherit_no_descriptor_of_a_live_session() {
    need_root();
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    // A descriptor without close-on-exec would live on in every stub and
    // rule installer (found once: a pipe that then never saw EOF).
    // What a child inherits regardless of us (cargo's jobserver, say).
    let inherited = || -> Vec<String> {
        let out = std::process::Command::new("/bin/sh").args(["-c", "ls /proc/$$/fd"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    };
    let before = inherited();
    let session = Session::start(SessionConfig::default()).unwrap();
    let during = inherited();
    drop(session);
    assert_eq!(during, before, "a child of a live session inherits more than one started before it");
}

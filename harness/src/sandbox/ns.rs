//! One named network namespace, owned: created bind-mounted under
//! /run/netns, entered on a short-lived thread, deleted on drop.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use netns_rs::NetNs;

use crate::sandbox::registry::remove_netns;
use crate::{Error, Result};

/// One named network namespace, bind-mounted under /run/netns like
/// `ip netns add` does (so a person can `ip netns exec` into a kept one).
/// Dropping it unmounts and deletes it.
pub struct Namespace {
    name: String,
    ns: Option<NetNs>,
    pub(crate) keep: std::sync::atomic::AtomicBool,
}

impl Namespace {
    pub fn create(name: &str) -> Result<Namespace> {
        // Under the creation lock: a signal's cleanup never lists the
        // namespaces while one is being made.
        let _creating = crate::sandbox::registry::creating();
        let ns = NetNs::new(name).map_err(|e| Error::Netlink {
            doing: "creating the namespace".into(),
            namespace: name.into(),
            detail: format!("{e}; is /run/netns writable and are you root?"),
        })?;
        Ok(Namespace { name: name.to_string(), ns: Some(ns), keep: std::sync::atomic::AtomicBool::new(false) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns.as_ref().expect("namespace used after removal").file().as_fd()
    }

    /// Run `f` on a fresh thread inside this namespace. Sockets it creates
    /// belong to the namespace for good, whichever thread uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::Io { doing: format!("entering namespace {}", self.name), err: e.into() })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::config(format!("a thread working in namespace {} panicked", self.name))))
        })
    }

    /// For `pre_exec`: move a forked child into this namespace.
    pub fn raw_fd(&self) -> i32 {
        self.fd().as_raw_fd()
    }

    /// A command whose process runs in this namespace (entered between
    /// fork and exec, so nothing in this process changes namespace), with
    /// the signal mask the harness blocked for itself cleared again and
    /// its three standard streams piped.
    pub fn command(&self, program: &std::path::Path) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let fd = self.raw_fd();
        let mut cmd = std::process::Command::new(program);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: sigprocmask and setns are async-signal-safe; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                crate::sandbox::registry::unblock_signals_in_child();
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Write a namespaced sysctl (`/proc/sys/net/...` resolves against the
    /// namespace of the thread that opens it).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let started = std::time::Instant::now();
        let written = self.run(|| std::fs::write(&path, value));
        crate::base::phases::record("sysctls", started.elapsed());
        written?.map_err(Error::io(format!("setting {key}={value} in namespace {}", self.name)))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Close our handle first, then unmount: the kernel frees the
        // namespace (and its veth ends) once nothing refers to it.
        drop(self.ns.take());
        if !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = remove_netns(&self.name);
        }
    }
}

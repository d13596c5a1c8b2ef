//! A NETLINK_NETFILTER socket: netlink-sys for the socket itself, nix for
//! the options netlink-sys has no call for. No `unsafe` here.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::{messages, Msg, NLMSG_DONE};

/// Set on a dump's messages when the kernel's object list changed under it
/// (linux/netlink.h).
const NLM_F_DUMP_INTR: u16 = 0x10;

/// A NETLINK_NETFILTER socket.
pub struct Socket {
    sock: netlink_sys::Socket,
}

impl Socket {
    /// Open in the calling thread's network namespace.
    pub fn open(nonblocking: bool) -> io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.set_non_blocking(nonblocking)?;
        Ok(Socket { sock })
    }

    /// `f` with a blocking socket opened in `ns` (on a thread there), whose
    /// replies time out after `timeout`. The outer error is entering `ns`.
    pub fn in_namespace<T: Send>(
        ns: &crate::sandbox::ns::Namespace,
        timeout: Duration,
        f: impl FnOnce(&Socket) -> io::Result<T> + Send,
    ) -> crate::Result<io::Result<T>> {
        ns.run(|| {
            let sock = Socket::open(false)?;
            sock.set_receive_timeout(timeout)?;
            f(&sock)
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub fn join_group(&self, group: u32) -> io::Result<()> {
        self.sock.add_membership(group)
    }

    /// A large receive buffer: events queue while probes run and are read
    /// after they finish. As root, FORCE ignores rmem_max.
    pub fn set_receive_buffer(&self, bytes: i32) -> io::Result<()> {
        let bytes = usize::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        setsockopt(&self.sock, sockopt::RcvBufForce, &bytes)
            .or_else(|_| setsockopt(&self.sock, sockopt::RcvBuf, &bytes))
            .map_err(io::Error::from)
    }

    pub fn set_receive_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = TimeVal::new(t.as_secs() as libc::time_t, t.subsec_micros() as libc::suseconds_t);
        setsockopt(&self.sock, sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_non_blocking(on)
    }

    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.sock.send(msg, 0).map(|_| ())
    }

    /// One datagram into `buf`; `WouldBlock` when none is queued (or the
    /// receive timeout passed), `ENOBUFS` once after the kernel dropped
    /// messages for want of room.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut room = buf;
        self.sock.recv(&mut room, 0)
    }

    /// Send a request and collect every reply message body until DONE (for
    /// dumps) or the ack. `f` sees each message. A dump the kernel marks
    /// interrupted (NLM_F_DUMP_INTR: the ruleset changed while it was being
    /// read, so entries may be missing or twice) is sent again from the
    /// start, `f`'s state reset by `again`, up to three times; then it is an
    /// `Interrupted` error.
    pub fn transact(&self, req: &[u8], seq: u32, mut f: impl FnMut(&Msg<'_>)) -> io::Result<()> {
        self.transact_again(req, seq, &mut f, || {})
    }

    /// As [`Socket::transact`], calling `again` before a dump is sent again.
    pub fn transact_again(
        &self,
        req: &[u8],
        seq: u32,
        f: &mut dyn FnMut(&Msg<'_>),
        mut again: impl FnMut(),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        for attempt in 0..3 {
            if attempt > 0 {
                again();
            }
            self.send(req)?;
            let mut interrupted = false;
            let done = loop {
                let n = self.recv(&mut buf)?;
                if let Some(done) = replies(&buf[..n], seq, &mut interrupted, f)? {
                    break done;
                }
            };
            if done == Reply::Acked || !interrupted {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the ruleset kept changing while it was read (3 dumps interrupted)",
        ))
    }
}

/// How a request's replies ended.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// An ack (a request that was not a dump).
    Acked,
    /// A dump's DONE.
    Done,
}

/// Read one datagram of replies to `seq`: `f` sees each message, and
/// `interrupted` is set when one carries NLM_F_DUMP_INTR. None while more
/// are to come.
fn replies(buf: &[u8], seq: u32, interrupted: &mut bool, f: &mut dyn FnMut(&Msg<'_>)) -> io::Result<Option<Reply>> {
    for msg in messages(buf) {
        let msg = msg.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if msg.seq != seq {
            continue;
        }
        *interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
        match msg.error {
            Some(0) => return Ok(Some(Reply::Acked)),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
            None if msg.ty == NLMSG_DONE => return Ok(Some(Reply::Done)),
            None => f(&msg),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::{request, NFNL_SUBSYS_NFTABLES};
    use super::*;

    #[test]
    fn an_interrupted_dump_is_told_from_a_whole_one() {
        // A rule message (0xa06) and DONE (type 3), flags as the kernel sets
        // them: NLM_F_MULTI 0x2, and NLM_F_DUMP_INTR 0x10 when interrupted.
        let dump = |flags: u16| {
            let mut b = request(NFNL_SUBSYS_NFTABLES, 6, flags, 7, 2, 0, &[(1, b"nat\0")]);
            b.extend(request(0, 3, flags, 7, 0, 0, &[]));
            b
        };
        for (flags, want) in [(0x2, false), (0x12, true)] {
            let (mut seen, mut interrupted) = (0, false);
            let end = replies(&dump(flags), 7, &mut interrupted, &mut |_| seen += 1).unwrap();
            assert_eq!((end, seen, interrupted), (Some(Reply::Done), 1, want), "flags {flags:#x}");
        }
        // Another request's replies are not ours; an error is an error.
        let (mut seen, mut interrupted) = (0, false);
        assert_eq!(replies(&dump(0x12), 8, &mut interrupted, &mut |_| seen += 1).unwrap(), None);
        assert_eq!((seen, interrupted), (0, false));
        let mut err = request(0, 2, 0, 7, 0, 0, &[]);
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let e = replies(&err[..20], 7, &mut interrupted, &mut |_| ()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}

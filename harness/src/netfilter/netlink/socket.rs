//! A NETLINK_NETFILTER socket: netlink-sys for the socket itself, nix for
//! the options netlink-sys has no call for. No `unsafe` here.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::{messages, Msg, NLMSG_DONE};

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
    /// dumps) or the ack. `f` sees each message.
    pub fn transact(&self, req: &[u8], seq: u32, mut f: impl FnMut(&Msg<'_>)) -> io::Result<()> {
        self.send(req)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for msg in messages(&buf[..n]) {
                let msg = msg.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if msg.seq != seq {
                    continue;
                }
                match msg.error {
                    Some(0) => return Ok(()),
                    Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    None if msg.ty == NLMSG_DONE => return Ok(()),
                    None => f(&msg),
                }
            }
        }
    }
}

//! Probe clients and the app servers they reach.
//!
//! Both live in the harness process. A socket belongs for good to the
//! namespace it was created in, and iptables' owner match (and nft's
//! `meta skuid`) looks at the credentials the socket was *created* with. So a
//! short-lived thread enters the namespace, takes the probe's uid/gid as its
//! filesystem ids and groups (per-thread syscalls, not glibc's process-wide
//! setuid), creates the socket and exits; the connection then runs as an
//! ordinary async task. That is what an app running under that uid would
//! look like to the kernel, without a process per probe.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use sidecheck_wire::{Answer, End, Probe};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::model::scenario::{DROPPED, RESET};
// The deadlines are part of a session's configuration (plan), named here too.
pub use crate::plan::Timeouts;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// The stages of [`Observation::Failed`]: where the client's side stopped.
pub mod stage {
    /// No socket could be made for it: nothing was sent.
    pub const SETUP: &str = "setup";
    /// The probe's task died: its result is lost.
    pub const PROBE: &str = "probe";
    pub const CONNECT: &str = "connect";
    pub const SEND: &str = "send";
    pub const ANSWER: &str = "answer";
    /// The answer on this probe's connection was another probe's: the
    /// harness mixed up its own connections (an ERROR, never the rules' FAIL).
    pub const IDENTIFY: &str = "identify";
}

/// How a probe connection went, from the client's side.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Someone at the end of the chain answered.
    Answered(Answer),
    /// The client could not complete its side: what it was doing, and why.
    Failed { stage: String, detail: String },
}

/// Create a TCP (or UDP) socket in `ns` owned by `uid`/`gid` (no supplementary groups).
pub fn client_socket(ns: &Namespace, uid: u32, gid: u32, ipv6: bool, udp: bool) -> Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    ns.run(move || -> std::io::Result<OwnedFd> {
        // Raw syscalls: these act on this thread only, and the thread ends
        // right after, so no other code ever runs with these ids.
        // SAFETY: plain syscalls on integers and `groups`, which lives across the call.
        unsafe {
            let groups = [gid];
            if libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
            if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != uid {
                return Err(std::io::Error::other(format!("could not take fsuid {uid}")));
            }
        }
        let family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let kind = if udp { SockType::Datagram } else { SockType::Stream };
        let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        if udp {
            // So the DNS agent may ask from this very address and port (fake-envoy --dns).
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReuseAddr, &true)?;
        }
        Ok(fd)
    })?
    .map_err(Error::io(format!("creating a socket as uid {uid} gid {gid} in namespace {}", ns.name())))
}

/// Connect `fd` to `to`, send probe `id`, and read the answer. Also returns
/// the client's own address (known once the SYN left: trace events of this
/// leg carry it).
pub async fn run(fd: OwnedFd, to: SocketAddr, id: u64, t: Timeouts) -> (Observation, Option<SocketAddr>) {
    let std_stream = std::net::TcpStream::from(fd);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&std_stream);
    let socket = TcpSocket::from_std_stream(std_stream);
    let connecting = socket.connect(to);
    tokio::pin!(connecting);
    // The first poll sends the SYN and binds the source port: read it then,
    // so a connection that never completes still has a traceable source.
    let first = futures_util::poll!(&mut connecting);
    let local = local_addr_of(raw);
    let connected = match first {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => timeout(t.connect, connecting).await,
    };
    (finish(connected, to, id, t).await, local)
}

/// Send one TCP segment with SYN, FIN and ACK set (conntrack marks it
/// INVALID, so NAT never touches it) from `src` to `to` over a raw socket
/// created in `ns`, and wait `window` for the reset the destination's kernel
/// sends back. Blocking. The answer's server is [`RESET`] or [`DROPPED`].
pub fn run_invalid(
    ns: &Namespace,
    src: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
    id: u64,
    window: Duration,
) -> Observation {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    let failed = |detail: String| Observation::Failed { stage: stage::SETUP.into(), detail };
    let fd = match ns.run(|| socket(AddressFamily::Inet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Tcp)) {
        Ok(Ok(fd)) => fd,
        Ok(Err(e)) => return failed(format!("a raw TCP socket in namespace {}: {e}", ns.name())),
        Err(e) => return failed(e.to_string()),
    };
    let sport = 20000 + (id % 40000) as u16;
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&to.port().to_be_bytes());
    seg[4..8].copy_from_slice(&(id as u32).to_be_bytes());
    seg[8..12].copy_from_slice(&1u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x13; // FIN|SYN|ACK
    seg[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&seg);
    let sum = checksum(&pseudo);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    use nix::sys::socket::{recv, sendto, setsockopt, sockopt, MsgFlags, SockaddrIn};
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    if let Err(e) = sendto(raw, &seg, &SockaddrIn::from(std::net::SocketAddrV4::new(*to.ip(), 0)), MsgFlags::empty()) {
        return Observation::Failed { stage: stage::SEND.into(), detail: format!("{to}: {e}") };
    }
    let end = Instant::now() + window;
    let mut buf = [0u8; 128];
    while let Some(left) = end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        let _ = setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(left.as_secs() as i64, left.subsec_micros().into()),
        );
        let Ok(n) = recv(raw, &mut buf, MsgFlags::empty()) else { break };
        let ihl = usize::from(buf[0] & 15) * 4;
        if n < ihl + 14 || buf[12..16] != to.ip().octets() {
            continue;
        }
        let (from_port, to_port) =
            (u16::from_be_bytes([buf[ihl], buf[ihl + 1]]), u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]));
        if from_port == to.port() && to_port == sport && buf[ihl + 13] & 0x04 != 0 {
            return answered(id, RESET, to);
        }
    }
    answered(id, DROPPED, to)
}

fn answered(id: u64, fate: &str, to: std::net::SocketAddrV4) -> Observation {
    Observation::Answered(Answer {
        probe: Probe::new(id),
        end: End::Server { name: fate.into(), port: to.port(), peer: SocketAddr::V4(to) },
    })
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Send probe `id` as one datagram to `to` and wait for the answer datagram
/// (a connected socket: only an answer from `to`, as NAT undoes it, counts).
pub async fn run_udp(fd: OwnedFd, to: SocketAddr, id: u64, t: Timeouts) -> Observation {
    let failed = |stage: &str, detail: String| Observation::Failed { stage: stage.into(), detail };
    let sock = match tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)) {
        Ok(s) => s,
        Err(e) => return failed(stage::SETUP, format!("registering a UDP socket: {e}")),
    };
    if let Err(e) = sock.connect(to).await {
        return failed(stage::CONNECT, format!("{to}: {e}"));
    }
    if let Err(e) = sock.send(Probe::new(id).to_line().as_bytes()).await {
        return failed(stage::SEND, format!("{to}: {e}"));
    }
    let mut buf = vec![0u8; sidecheck_wire::MAX_LINE];
    let budget = t.connect + t.answer;
    match timeout(budget, sock.recv(&mut buf)).await {
        Err(_) => failed(stage::ANSWER, format!("no answer datagram from {to} within {} ms: a rule dropped it, it went where nothing listens, or the answer came back from another address", budget.as_millis())),
        Ok(Err(e)) => failed(stage::ANSWER, format!("{to}: {e}")),
        Ok(Ok(n)) => match Answer::parse(&String::from_utf8_lossy(&buf[..n])) {
            Ok(a) => own_answer(a, id, to),
            Err(e) => failed(stage::ANSWER, format!("{to}: unreadable answer: {e}")),
        },
    }
}

async fn finish(
    connected: std::result::Result<std::io::Result<TcpStream>, tokio::time::error::Elapsed>,
    to: SocketAddr,
    id: u64,
    t: Timeouts,
) -> Observation {
    let failed = |stage: &str, detail: String| Observation::Failed { stage: stage.into(), detail };
    let started = Instant::now();
    let stream = match connected {
        Err(_) => {
            return failed(
                stage::CONNECT,
                format!(
                "no answer to the SYN for {to} within {} ms: a rule dropped it, or it was sent where nothing replies",
                t.connect.as_millis()
            ),
            )
        }
        Ok(Err(e)) => return failed(stage::CONNECT, format!("{to}: {e}")),
        Ok(Ok(s)) => s,
    };
    match timeout(t.answer, exchange(stream, id)).await {
        Err(_) => failed(
            stage::ANSWER,
            format!(
                "connected to {to} after {} ms, then no answer within {} ms: whatever accepted it is not a sidecheck stub",
                started.elapsed().as_millis(),
                t.answer.as_millis()
            ),
        ),
        Ok(Err(detail)) => failed(stage::ANSWER, format!("{to}: {detail}")),
        // A stub that had no thread for the connection answers before reading it.
        Ok(Ok(answer)) if matches!(&answer.end, End::Error { role, .. } if role == sidecheck_wire::stub::OVERLOADED) => {
            Observation::Answered(answer)
        }
        Ok(Ok(answer)) => own_answer(answer, id, to),
    }
}

/// `answer` as probe `id`'s observation: an answer carrying another id came
/// over this probe's connection, which is the harness's own mix-up.
pub fn own_answer(answer: Answer, id: u64, to: SocketAddr) -> Observation {
    if answer.probe.id == id {
        Observation::Answered(answer)
    } else {
        Observation::Failed {
            stage: stage::IDENTIFY.into(),
            detail: format!("{to}: answer is for probe {} instead of {id}", answer.probe.id),
        }
    }
}

fn local_addr_of(fd: std::os::fd::RawFd) -> Option<SocketAddr> {
    let addr: nix::sys::socket::SockaddrStorage = nix::sys::socket::getsockname(fd).ok()?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6().map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

async fn exchange(mut stream: TcpStream, id: u64) -> std::result::Result<Answer, String> {
    stream.write_all(Probe::new(id).to_line().as_bytes()).await.map_err(|e| format!("sending the probe: {e}"))?;
    let line = read_line(&mut stream).await?;
    Answer::parse(&line).map_err(|e| format!("unreadable answer `{}`: {e}", line.trim_end()))
}

async fn read_line(stream: &mut TcpStream) -> std::result::Result<String, String> {
    let mut reader = BufReader::new(stream).take(sidecheck_wire::MAX_LINE as u64 + 1);
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(0) => Err("the connection was closed without an answer".into()),
        Ok(_) if !line.ends_with('\n') => Err("the answer was cut off".into()),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}

/// An app server: answers every probe as `name`. Runs until dropped.
pub struct AppServer {
    task: JoinHandle<()>,
}

impl AppServer {
    /// Listen on the any-address of `family`, `port`, in `ns`. Must be
    /// called inside the runtime.
    pub fn start(
        ns: &Namespace,
        name: &str,
        family: crate::base::net::Family,
        port: u16,
        io_timeout: Duration,
    ) -> Result<AppServer> {
        let addr = match family {
            crate::base::net::Family::Ipv4 => SocketAddr::from(([0, 0, 0, 0], port)),
            crate::base::net::Family::Ipv6 => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        };
        AppServer::start_at(ns, name, addr, io_timeout)
    }

    /// Listen on `addr` in `ns`. Must be called inside the runtime.
    pub fn start_at(ns: &Namespace, name: &str, addr: SocketAddr, io_timeout: Duration) -> Result<AppServer> {
        let port = addr.port();
        let std_listener = ns.run(move || sidecheck_wire::stub::listen(addr))?.map_err(|err| {
            let hint = if err.kind() == std::io::ErrorKind::AddrInUse {
                "; a stub in that namespace already listens there: give the app a port the proxy does not use"
            } else {
                ""
            };
            Error::Io {
                doing: format!("listening on {addr} in namespace {} for {name}", ns.name()),
                err: std::io::Error::new(err.kind(), format!("{err}{hint}")),
            }
        })?;
        std_listener.set_nonblocking(true).map_err(Error::io("making a listener non-blocking"))?;
        let listener = TcpListener::from_std(std_listener).map_err(Error::io("registering a listener"))?;
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else { continue };
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = timeout(io_timeout, answer(conn, peer, &name, port)).await;
                });
            }
        });
        Ok(AppServer { task })
    }
}

async fn answer(mut conn: TcpStream, peer: SocketAddr, name: &str, port: u16) -> std::result::Result<(), String> {
    let line = read_line(&mut conn).await?;
    let probe = Probe::parse(&line).map_err(|e| e.to_string())?;
    let answer = Answer { probe, end: End::Server { name: name.into(), port, peer } };
    conn.write_all(answer.to_line().as_bytes()).await.map_err(|e| e.to_string())?;
    // The client closes first: its side holds TIME_WAIT, so its source port
    // is not reused for this destination while the run's trace is read.
    let mut buf = [0u8; 64];
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// A UDP server answering each datagram's probe as `name` (a nameserver).
pub struct UdpServer {
    task: JoinHandle<()>,
}

impl UdpServer {
    /// Bind `addr` in `ns`. Must be called inside the runtime.
    pub fn start(ns: &Namespace, name: &str, addr: SocketAddr) -> Result<UdpServer> {
        let sock = ns
            .run(move || std::net::UdpSocket::bind(addr))?
            .map_err(Error::io(format!("listening on udp {addr} in namespace {} for {name}", ns.name())))?;
        sock.set_nonblocking(true).map_err(Error::io("making a UDP socket non-blocking"))?;
        let sock = tokio::net::UdpSocket::from_std(sock).map_err(Error::io("registering a UDP socket"))?;
        let name = name.to_string();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; sidecheck_wire::MAX_LINE];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else { continue };
                let Ok(probe) = Probe::parse(&String::from_utf8_lossy(&buf[..n])) else { continue };
                let answer = Answer { probe, end: End::Server { name: name.clone(), port: addr.port(), peer } };
                let _ = sock.send_to(answer.to_line().as_bytes(), peer).await;
            }
        });
        Ok(UdpServer { task })
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

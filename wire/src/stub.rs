//! What every stub process does the same way: answer probes as a terminal
//! server, say READY once its sockets are bound, and exit when the harness
//! that started it is gone (its stdin pipe closes, even after a SIGKILL).

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::{read_line, Answer, End, Probe};

/// Read buffer per connection: probe lines are a few hundred bytes, and a
/// stub holds thousands of connections at once under load.
pub const READ_BUFFER: usize = 1024;

/// Stack of a per-connection thread: the handlers are shallow; a small
/// stack keeps thousands of threads cheap in resident memory.
pub const CONNECTION_STACK: usize = 32 * 1024;

/// Run `f` on a new thread with [`CONNECTION_STACK`].
pub fn spawn_connection(f: impl FnOnce() + Send + 'static) {
    // If even a small thread cannot be had, the connection is dropped and
    // the client sees it closed: the verdict says so.
    let _ = thread::Builder::new().stack_size(CONNECTION_STACK).spawn(f);
}

/// The line a stub prints on stdout once every listener is bound.
pub const READY: &str = "READY";

/// Accept forever on `listener`, answering each probe as server `name`.
pub fn serve_terminal(listener: TcpListener, name: String, io_timeout: Duration) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let name = name.clone();
            spawn_connection(move || {
                let _ = answer_as_server(conn, &name, io_timeout);
            });
        }
    });
}

fn answer_as_server(conn: TcpStream, name: &str, io_timeout: Duration) -> io::Result<()> {
    conn.set_read_timeout(Some(io_timeout))?;
    conn.set_write_timeout(Some(io_timeout))?;
    let port = conn.local_addr()?.port();
    let peer = conn.peer_addr()?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, &conn);
    let line = read_line(&mut reader)?;
    let probe = Probe::parse(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let answer = Answer { probe, end: End::Server { name: name.to_string(), port, peer } };
    (&conn).write_all(answer.to_line().as_bytes())
}

/// Tell the harness we are listening.
pub fn announce_ready() {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
}

/// Exit as soon as stdin reaches EOF: the harness holds the other end, so a
/// stub never outlives the run that started it.
pub fn exit_with_parent() {
    thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

/// Accept queue depth for every listener: std's `TcpListener::bind` asks
/// for 128, and under a thousand concurrent probes the SYNs past it are
/// dropped and retried a second later, which reads as a timeout.
pub const BACKLOG: i32 = 4096;

/// Bind and listen with [`BACKLOG`] (SO_REUSEADDR on), in the calling
/// thread's network namespace.
pub fn listen(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen as sys_listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrStorage,
    };
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        // [::]:P and 0.0.0.0:P are separate listeners.
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))?;
    sys_listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

/// Bind, or exit 2 with a message the harness shows verbatim.
pub fn bind_or_exit(prog: &str, addr: std::net::SocketAddr) -> TcpListener {
    match listen(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{prog}: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    }
}

/// Parse `NAME=ADDR:PORT`.
pub fn parse_named_addr(arg: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (name, addr) = arg.split_once('=').ok_or_else(|| format!("`{arg}` is not NAME=ADDRESS:PORT"))?;
    let addr = addr.parse().map_err(|_| format!("`{addr}` in `{arg}` is not ADDRESS:PORT"))?;
    Ok((name.to_string(), addr))
}

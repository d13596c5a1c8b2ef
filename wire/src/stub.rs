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

/// Role of the answer a stub sends on a connection it cannot serve (no
/// thread could be had for it). Its probe id is 0: the request was never
/// read. The harness counts such a trial as its own trouble, not the rules'.
pub const OVERLOADED: &str = "overloaded";

/// Run `f(item)` on a new thread with [`CONNECTION_STACK`]. When no thread
/// can be had (the uid's process limit, memory), `item` comes back with the
/// error, so the caller can still answer on it.
pub fn spawn_with<T: Send + 'static>(item: T, f: impl FnOnce(T) + Send + 'static) -> Result<(), (T, io::Error)> {
    // The item travels through a channel: a failed spawn drops its closure,
    // and the connection must survive that to be answered.
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(1);
    match thread::Builder::new().stack_size(CONNECTION_STACK).spawn(move || {
        if let Ok(item) = rx.recv() {
            f(item)
        }
    }) {
        Ok(_) => {
            let _ = tx.send(item);
            Ok(())
        }
        Err(e) => Err((item, e)),
    }
}

/// Serve `conn` on its own thread; if none can be had, answer it with
/// [`OVERLOADED`] and log that to stderr (the harness reads it).
pub fn spawn_connection(prog: &str, port: u16, conn: TcpStream, f: impl FnOnce(TcpStream) + Send + 'static) {
    if let Err((conn, e)) = spawn_with(conn, f) {
        refuse_overloaded(prog, port, &conn, &e);
    }
}

static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The line fake-envoy and fake-istiod log for a connection they dropped.
pub const DROPPED_LOG: &str = "dropped a connection";

/// Answer `conn` as overloaded and log it (the first few, then every 1000th).
pub fn refuse_overloaded(prog: &str, port: u16, conn: &TcpStream, e: &io::Error) {
    let answer = Answer { probe: Probe::new(0), end: overloaded_end(port, e) };
    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = (&*conn).write_all(answer.to_line().as_bytes());
    log_dropped(prog, port, e);
}

/// The end of an answer for a probe a stub had no resources for.
pub fn overloaded_end(port: u16, e: &io::Error) -> End {
    End::Error { role: OVERLOADED.into(), port, message: format!("could not start a thread for it: {e}") }
}

/// Log one dropped connection (the first ten, then every thousandth).
pub fn log_dropped(prog: &str, port: u16, e: &io::Error) {
    let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n <= 10 || n % 1000 == 0 {
        eprintln!("{prog}: {DROPPED_LOG} on port {port} (#{n}): could not start a thread for it: {e}");
    }
}

/// Start a long-lived thread (a listener's accept loop), or exit 2 naming
/// the limit: a stub that cannot even listen must not look like a rule.
pub fn spawn_or_exit(prog: &str, what: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().spawn(f) {
        eprintln!(
            "{prog}: cannot start a thread for {what}: {e}; the process limit of uid {} (RLIMIT_NPROC, ulimit -u) or memory is too low",
            nix::unistd::getuid()
        );
        std::process::exit(2);
    }
}

/// The line a stub prints on stdout once every listener is bound.
pub const READY: &str = "READY";

/// Accept forever on `listener`, answering each probe as server `name`.
pub fn serve_terminal(prog: &'static str, listener: TcpListener, name: String, io_timeout: Duration) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    spawn_or_exit(prog, &format!("the listener on port {port}"), move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let name = name.clone();
            spawn_connection(prog, port, conn, move |conn| {
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
    (&conn).write_all(answer.to_line().as_bytes())?;
    await_close(&conn);
    Ok(())
}

/// After answering, wait (within the read timeout) for the client to close
/// first. The client's side then holds TIME_WAIT, so its source port is not
/// reused for the same destination at once: two connections with one
/// address-and-port tuple in a run could not be told apart in the trace.
pub fn await_close(conn: &TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = (&*conn).read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Tell the harness we are listening.
pub fn announce_ready() {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
}

/// Exit as soon as stdin reaches EOF: the harness holds the other end, so a
/// stub never outlives the run that started it.
pub fn exit_with_parent(prog: &str) {
    spawn_or_exit(prog, "watching stdin", || {
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

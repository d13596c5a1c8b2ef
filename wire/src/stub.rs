//! What every stub process does the same way: answer probes as a terminal
//! server, say READY once its sockets are bound, and exit when the harness
//! that started it is gone (its stdin pipe closes, even after a SIGKILL).

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::{read_line, Answer, End, Probe};

/// The line a stub prints on stdout once every listener is bound.
pub const READY: &str = "READY";

/// Accept forever on `listener`, answering each probe as server `name`.
pub fn serve_terminal(listener: TcpListener, name: String, io_timeout: Duration) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let name = name.clone();
            thread::spawn(move || {
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
    let mut reader = BufReader::new(&conn);
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

/// Bind, or exit 2 with a message the harness shows verbatim.
pub fn bind_or_exit(prog: &str, addr: std::net::SocketAddr) -> TcpListener {
    match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{prog}: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    }
}

/// Parse `NAME=ADDR:PORT`.
pub fn parse_named_addr(arg: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (name, addr) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}` is not NAME=ADDRESS:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` in `{arg}` is not ADDRESS:PORT"))?;
    Ok((name.to_string(), addr))
}

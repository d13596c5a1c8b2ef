//! The probe protocol: one request line from the client, one answer line back.
//!
//! A probe client sends `SIDECHECK/1 id=7\n`. Every proxy listener it passes
//! (fake-envoy's outbound and inbound listeners) appends the hop it made,
//! `hop=outbound@15001>10.96.0.10:8080,10.244.0.10:41234>10.244.0.20:9090`
//! (role, listener port, original destination, then the source and
//! destination of the upstream connection it opened, once it has one) before
//! forwarding the line upstream. The upstream 4-tuple is what lets the
//! harness attribute kernel trace events to this exact connection leg. The server that ends the
//! connection answers with the whole request plus how it ended:
//! `server=local-app@8080 peer=127.0.0.6:40412`, or `loop=outbound@15001` when a
//! proxy sees a probe come back to a listener it already passed, or
//! `error=outbound@15001:connect_refused_10.244.0.20:9091` when a proxy could not
//! reach its upstream. Proxies relay the answer line back unchanged, so the
//! client gets the full hop list of its own connection: hops of concurrent
//! probes can never be mixed up.

use std::fmt;
use std::io::{self, BufRead, Read};
use std::net::SocketAddr;

pub mod stub;

/// First word of every line; bump the number when the grammar changes.
pub const MAGIC: &str = "SIDECHECK/1";
/// No line is longer: readers stop there instead of buffering without bound.
pub const MAX_LINE: usize = 4096;
/// A probe passing more proxy hops than this is looping even if no listener saw it twice.
pub const MAX_HOPS: usize = 16;

/// One proxy listener a probe passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub role: String,
    pub port: u16,
    pub original_dst: SocketAddr,
    /// (source, destination) of the connection the proxy opened upstream.
    pub upstream: Option<(SocketAddr, SocketAddr)>,
}

/// What a client sends and what proxies extend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub id: u64,
    pub hops: Vec<Hop>,
}

/// How a probe connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// A terminal server answered: its name, the port it was reached on, and
    /// the source address it saw.
    Server { name: String, port: u16, peer: SocketAddr },
    /// The probe came back to a proxy listener it had already passed.
    Loop { role: String, port: u16 },
    /// A proxy listener could not forward the probe.
    Error { role: String, port: u16, message: String },
}

/// The answer line: the probe as it arrived at the end, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub probe: Probe,
    pub end: End,
}

/// A line that is not valid protocol; says which token and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn bad(what: impl Into<String>) -> ParseError {
    ParseError(what.into())
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}>{}", self.role, self.port, self.original_dst)?;
        if let Some((src, dst)) = self.upstream {
            write!(f, ",{src}>{dst}")?;
        }
        Ok(())
    }
}

impl Hop {
    fn parse(s: &str) -> Result<Hop, ParseError> {
        let (listener, upstream) = match s.split_once(',') {
            Some((l, u)) => (l, Some(u)),
            None => (s, None),
        };
        let addr =
            |a: &str| a.parse::<SocketAddr>().map_err(|_| bad(format!("hop `{s}`: `{a}` is not an address:port")));
        let (role_port, dst) = listener
            .split_once('>')
            .ok_or_else(|| bad(format!("hop `{s}` has no `>` before its original destination")))?;
        let (role, port) = split_role_port(role_port)?;
        let original_dst = addr(dst)?;
        let upstream = match upstream {
            Some(u) => {
                let (src, dst) = u
                    .split_once('>')
                    .ok_or_else(|| bad(format!("hop `{s}`: upstream `{u}` is not source>destination")))?;
                Some((addr(src)?, addr(dst)?))
            }
            None => None,
        };
        Ok(Hop { role, port, original_dst, upstream })
    }
}

fn split_role_port(s: &str) -> Result<(String, u16), ParseError> {
    let (role, port) = s.split_once('@').ok_or_else(|| bad(format!("`{s}` is not role@port")))?;
    if !is_word(role) {
        return Err(bad(format!("`{role}` is not a role name")));
    }
    let port = port.parse().map_err(|_| bad(format!("`{port}` in `{s}` is not a port number")))?;
    Ok((role.to_string(), port))
}

/// Names travel inside space-separated tokens: keep them to a safe alphabet.
fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Make free text (an OS error) safe to carry as one token.
pub fn token_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_graphic() && c != '=' { c } else { '_' }).collect()
}

impl Probe {
    pub fn new(id: u64) -> Probe {
        Probe { id, hops: Vec::new() }
    }

    /// Whether the probe already passed the listener on `port`.
    pub fn has_passed(&self, port: u16) -> bool {
        self.hops.iter().any(|h| h.port == port)
    }

    /// The request line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = format!("{MAGIC} id={}", self.id);
        for hop in &self.hops {
            line.push_str(&format!(" hop={hop}"));
        }
        line.push('\n');
        line
    }

    pub fn parse(line: &str) -> Result<Probe, ParseError> {
        let (probe, rest) = parse_probe_tokens(line)?;
        if let Some(tok) = rest.first() {
            return Err(bad(format!("unexpected `{tok}` in a request line")));
        }
        Ok(probe)
    }
}

fn parse_probe_tokens(line: &str) -> Result<(Probe, Vec<&str>), ParseError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.len() > MAX_LINE {
        return Err(bad(format!("line longer than {MAX_LINE} bytes")));
    }
    let mut tokens = line.split(' ');
    match tokens.next() {
        Some(MAGIC) => {}
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Err(bad(format!("expected `{MAGIC}`, got `{shown}`: not a sidecheck probe")));
        }
        None => return Err(bad("empty line")),
    }
    let id = match tokens.next().and_then(|t| t.strip_prefix("id=")) {
        Some(id) => id.parse().map_err(|_| bad(format!("probe id `{id}` is not a number")))?,
        None => return Err(bad("no `id=` after the protocol word")),
    };
    let mut probe = Probe::new(id);
    let mut rest = Vec::new();
    for tok in tokens {
        match tok.strip_prefix("hop=") {
            Some(h) if rest.is_empty() => {
                if probe.hops.len() == MAX_HOPS {
                    return Err(bad(format!("more than {MAX_HOPS} hops")));
                }
                probe.hops.push(Hop::parse(h)?)
            }
            _ => rest.push(tok),
        }
    }
    Ok((probe, rest))
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Server { name, port, peer } => write!(f, "server={name}@{port} peer={peer}"),
            End::Loop { role, port } => write!(f, "loop={role}@{port}"),
            End::Error { role, port, message } => {
                write!(f, "error={role}@{port}:{}", token_safe(message))
            }
        }
    }
}

impl Answer {
    pub fn to_line(&self) -> String {
        let mut line = self.probe.to_line();
        line.pop();
        line.push_str(&format!(" {}\n", self.end));
        line
    }

    pub fn parse(line: &str) -> Result<Answer, ParseError> {
        let (probe, rest) = parse_probe_tokens(line)?;
        let end = match rest.as_slice() {
            [server, peer] if server.starts_with("server=") => {
                let (name, port) = split_role_port(&server["server=".len()..])?;
                let peer = peer
                    .strip_prefix("peer=")
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad(format!("`{peer}` is not peer=address:port")))?;
                End::Server { name, port, peer }
            }
            [l] if l.starts_with("loop=") => {
                let (role, port) = split_role_port(&l["loop=".len()..])?;
                End::Loop { role, port }
            }
            [e] if e.starts_with("error=") => {
                let body = &e["error=".len()..];
                let (at, message) =
                    body.split_once(':').ok_or_else(|| bad(format!("`{e}` is not error=role@port:message")))?;
                let (role, port) = split_role_port(at)?;
                End::Error { role, port, message: message.to_string() }
            }
            [] => return Err(bad("the answer does not say how the probe ended")),
            other => return Err(bad(format!("cannot read the end of an answer: `{}`", other.join(" ")))),
        };
        Ok(Answer { probe, end })
    }
}

/// Read one line of at most [`MAX_LINE`] bytes. EOF before a newline is an
/// error: the peer closed mid-line.
pub fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::with_capacity(128);
    let mut limited = reader.by_ref().take(MAX_LINE as u64 + 1);
    limited.read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        let why = if buf.len() > MAX_LINE { "line too long" } else { "connection closed before a full line" };
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(role: &str, port: u16, dst: &str) -> Hop {
        Hop { role: role.into(), port, original_dst: dst.parse().unwrap(), upstream: None }
    }

    #[test]
    fn request_round_trips_with_ipv4_and_ipv6_hops() {
        let mut p = Probe::new(42);
        p.hops.push(hop("outbound", 15001, "10.96.0.10:8080"));
        p.hops[0].upstream = Some(("10.244.0.10:41234".parse().unwrap(), "10.244.0.10:8080".parse().unwrap()));
        p.hops.push(hop("inbound", 15006, "[fd00::10]:8080"));
        let line = p.to_line();
        assert_eq!(
            line,
            "SIDECHECK/1 id=42 hop=outbound@15001>10.96.0.10:8080,10.244.0.10:41234>10.244.0.10:8080 hop=inbound@15006>[fd00::10]:8080\n"
        );
        assert_eq!(Probe::parse(&line).unwrap(), p);
        assert!(p.has_passed(15006));
        assert!(!p.has_passed(15090));
    }

    #[test]
    fn every_kind_of_answer_round_trips() {
        let probe = Probe { id: 1, hops: vec![hop("outbound", 15001, "10.244.0.20:9090")] };
        for end in [
            End::Server { name: "remote-app".into(), port: 9090, peer: "10.244.0.10:5000".parse().unwrap() },
            End::Loop { role: "outbound".into(), port: 15001 },
            End::Error { role: "outbound".into(), port: 15001, message: "Connection refused (os error 111)".into() },
        ] {
            let a = Answer { probe: probe.clone(), end };
            let back = Answer::parse(&a.to_line()).unwrap();
            match (&a.end, &back.end) {
                (End::Error { message: m, .. }, End::Error { message: b, .. }) => {
                    assert_eq!(b, "Connection_refused_(os_error_111)");
                    assert_ne!(m, b);
                }
                _ => assert_eq!(back, a),
            }
        }
    }

    #[test]
    fn rejects_what_is_not_a_probe() {
        for (line, says) in [
            ("GET / HTTP/1.1\n", "not a sidecheck probe"),
            ("SIDECHECK/1\n", "no `id=`"),
            ("SIDECHECK/1 id=x\n", "not a number"),
            ("SIDECHECK/1 id=1 hop=outbound15001>1.2.3.4:5\n", "not role@port"),
            ("SIDECHECK/1 id=1 hop=outbound@15001\n", "no `>`"),
            ("SIDECHECK/1 id=1 hop=out bound@1>1.2.3.4:5\n", "no `>`"),
            ("SIDECHECK/1 id=1 hop=outbound@99999>1.2.3.4:5\n", "not a port"),
            ("SIDECHECK/1 id=1 extra\n", "unexpected `extra`"),
            ("SIDECHECK/1 id=1 hop=outbound@1>1.2.3.4:5,1.2.3.4:6\n", "is not source>destination"),
        ] {
            let err = Probe::parse(line).unwrap_err().to_string();
            assert!(err.contains(says), "{line:?}: {err}");
        }
        let err = Answer::parse("SIDECHECK/1 id=1\n").unwrap_err().to_string();
        assert!(err.contains("does not say how"), "{err}");
    }

    #[test]
    fn hop_count_is_bounded() {
        let mut line = String::from("SIDECHECK/1 id=1");
        for _ in 0..=MAX_HOPS {
            line.push_str(" hop=outbound@15001>1.2.3.4:5");
        }
        assert!(Probe::parse(&line).unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn read_line_is_bounded_and_wants_a_newline() {
        let long = vec![b'a'; MAX_LINE + 10];
        let err = read_line(&mut &long[..]).unwrap_err();
        assert!(err.to_string().contains("too long"));
        let err = read_line(&mut &b"SIDECHECK/1 id=1"[..]).unwrap_err();
        assert!(err.to_string().contains("closed before"));
        assert_eq!(read_line(&mut &b"ab\ncd\n"[..]).unwrap(), "ab\n");
    }
}

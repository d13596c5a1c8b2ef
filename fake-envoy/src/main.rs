//! fake-envoy: the listeners of an Istio sidecar, without Envoy.
//!
//! Outbound (15001) and inbound (15006) listeners read the connection's
//! original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST after a NAT
//! REDIRECT; the accepted socket's local address when there was none, as
//! under TPROXY), add a hop to the probe line and forward it the way Envoy
//! would: outbound to the original destination, or to the endpoint of a
//! configured service VIP; inbound from the passthrough source (127.0.0.6) to
//! the original destination, or (`--inbound-upstream loopback`, as OSM's and
//! Consul's Envoy) to 127.0.0.1 / ::1 at the original port. A probe that comes back to a listener it already
//! passed is a loop: it is answered as such and closed, never left to hang.
//! Admin, stats and health listeners are plain terminal servers.
//!
//! Under TPROXY (`--tproxy-mark`) the inbound listener is transparent and its
//! upstream keeps the client's address, marked, as Envoy's original_src
//! filter does. With `--dns` it also plays pilot-agent's DNS proxy (15053,
//! UDP and TCP), which asks the pod's nameserver itself.
//!
//! It runs as the proxy uid/gid (1337) inside the pod's network namespace, so
//! the rules under test see its upstream connections as the proxy's own.

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::thread;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use sidecheck_wire::{read_line, stub, Answer, End, Hop, Probe};

const USAGE: &str = "usage: fake-envoy [options]
  --outbound ADDR:PORT     outbound capture listener (repeatable; default 0.0.0.0:15001)
  --inbound ADDR:PORT      inbound capture listener (repeatable; default 0.0.0.0:15006)
  --serve NAME=ADDR:PORT   a terminal listener answering as NAME (repeatable)
  --route VIP:PORT=IP:PORT outbound cluster: connections to VIP:PORT go to IP:PORT (repeatable)
  --passthrough4 IP        source of inbound upstream connections, IPv4 (default 127.0.0.6)
  --passthrough6 IP        the same for IPv6 (default ::6)
  --no-passthrough         inbound upstream connections pick no source (the kernel's choice)
  --inbound-upstream TO    where inbound connections go on to: original-destination (default; the
                           address the client dialled) or loopback (127.0.0.1 / ::1, the original port)
  --tproxy-mark N          TPROXY mode, as Istio's sidecar under interceptionMode TPROXY: inbound
                           listeners are transparent (IP_TRANSPARENT; the original destination is
                           the accepted socket's local address) and inbound upstream connections
                           keep the client's address as their source and carry mark N (Envoy's
                           original_src filter); needs CAP_NET_ADMIN, so run as root
  --dns LISTEN=UPSTREAM    the agent's DNS proxy (pilot-agent, 15053): UDP and TCP on LISTEN, each
                           query forwarded to UPSTREAM (the pod's nameserver) as the proxy
                           (repeatable, one per family)
  --timeout-ms N           upstream connect and answer budget (default 2000)";

struct Config {
    outbound: Vec<SocketAddr>,
    inbound: Vec<SocketAddr>,
    serve: Vec<(String, SocketAddr)>,
    routes: HashMap<SocketAddr, SocketAddr>,
    passthrough4: Ipv4Addr,
    passthrough6: Ipv6Addr,
    /// Bind inbound upstream connections to the passthrough source.
    passthrough: bool,
    /// Inbound upstream connections go to loopback at the original port.
    inbound_to_loopback: bool,
    /// TPROXY mode: the mark of inbound upstream connections.
    tproxy_mark: Option<u32>,
    /// DNS proxy listeners and the nameserver each forwards to.
    dns: Vec<(SocketAddr, SocketAddr)>,
    timeout: Duration,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        outbound: Vec::new(),
        inbound: Vec::new(),
        serve: Vec::new(),
        routes: HashMap::new(),
        passthrough4: Ipv4Addr::new(127, 0, 0, 6),
        passthrough6: "::6".parse().unwrap(),
        passthrough: true,
        inbound_to_loopback: false,
        tproxy_mark: None,
        dns: Vec::new(),
        timeout: Duration::from_millis(2000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-passthrough" {
            cfg.passthrough = false;
            continue;
        }
        let v = args.next().ok_or_else(|| format!("`{flag}` needs a value"))?;
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| format!("{flag}: `{s}` is not ADDRESS:PORT"));
        match flag.as_str() {
            "--outbound" => cfg.outbound.push(addr(&v)?),
            "--inbound" => cfg.inbound.push(addr(&v)?),
            "--serve" => cfg.serve.push(stub::parse_named_addr(&v)?),
            "--route" => {
                let (vip, ep) = v.split_once('=').ok_or_else(|| format!("--route `{v}` is not VIP:PORT=IP:PORT"))?;
                cfg.routes.insert(addr(vip)?, addr(ep)?);
            }
            "--inbound-upstream" => {
                cfg.inbound_to_loopback = match v.as_str() {
                    "original-destination" => false,
                    "loopback" => true,
                    _ => return Err(format!("--inbound-upstream `{v}`: use original-destination or loopback")),
                }
            }
            "--passthrough4" => {
                cfg.passthrough4 = v.parse().map_err(|_| format!("--passthrough4 `{v}` is not an IPv4 address"))?
            }
            "--passthrough6" => {
                cfg.passthrough6 = v.parse().map_err(|_| format!("--passthrough6 `{v}` is not an IPv6 address"))?
            }
            "--dns" => {
                let (listen, up) = v.split_once('=').ok_or_else(|| format!("--dns `{v}` is not LISTEN=UPSTREAM"))?;
                cfg.dns.push((addr(listen)?, addr(up)?));
            }
            "--tproxy-mark" => {
                cfg.tproxy_mark = Some(v.parse().map_err(|_| format!("--tproxy-mark `{v}` is not a number"))?)
            }
            "--timeout-ms" => {
                cfg.timeout =
                    Duration::from_millis(v.parse().map_err(|_| format!("--timeout-ms `{v}` is not a number"))?)
            }
            _ => return Err(format!("unknown option `{flag}`")),
        }
    }
    if cfg.outbound.is_empty() {
        cfg.outbound.push("0.0.0.0:15001".parse().unwrap());
    }
    if cfg.inbound.is_empty() {
        cfg.inbound.push("0.0.0.0:15006".parse().unwrap());
    }
    Ok(cfg)
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Outbound,
    Inbound,
    /// The DNS proxy: every query goes to this nameserver.
    Dns(SocketAddr),
}

impl Direction {
    fn role(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Dns(_) => "dns",
        }
    }
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fake-envoy: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    stub::exit_with_parent("fake-envoy");
    // Each proxied probe holds two sockets: allow thousands at once.
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let outbound: Vec<_> = cfg.outbound.iter().map(|a| stub::bind_or_exit("fake-envoy", *a)).collect();
    let inbound: Vec<_> = cfg.inbound.iter().map(|a| stub::bind_or_exit("fake-envoy", *a)).collect();
    if cfg.tproxy_mark.is_some() {
        for l in &inbound {
            if let Err(e) = set_transparent(l.as_fd(), l.local_addr().map(|a| a.is_ipv4()).unwrap_or(true)) {
                eprintln!("fake-envoy: making the inbound listener transparent (IP_TRANSPARENT, TPROXY mode): {e}; it needs CAP_NET_ADMIN: run fake-envoy as root");
                std::process::exit(2);
            }
        }
    }
    let terminals: Vec<_> =
        cfg.serve.iter().map(|(name, a)| (name.clone(), stub::bind_or_exit("fake-envoy", *a))).collect();
    for (name, l) in terminals {
        stub::serve_terminal("fake-envoy", l, name, cfg.timeout);
    }
    let dns_tcp: Vec<_> =
        cfg.dns.iter().map(|(a, up)| (stub::bind_or_exit("fake-envoy", *a), Direction::Dns(*up))).collect();
    let dns_udp: Vec<_> = cfg
        .dns
        .iter()
        .map(|(a, up)| match std::net::UdpSocket::bind(a) {
            Ok(s) => (s, *up),
            Err(e) => {
                eprintln!("fake-envoy: cannot listen on udp {a}: {e}");
                std::process::exit(2);
            }
        })
        .collect();
    let cfg: &'static Config = Box::leak(Box::new(cfg));
    for (sock, up) in dns_udp {
        stub::spawn_or_exit("fake-envoy", "the DNS listener", move || dns_udp_loop(sock, up, cfg));
    }
    let listeners = inbound
        .into_iter()
        .map(|l| (l, Direction::Inbound))
        .chain(outbound.into_iter().map(|l| (l, Direction::Outbound)))
        .chain(dns_tcp);
    for (l, dir) in listeners {
        stub::spawn_or_exit("fake-envoy", &format!("the {} listener", dir.role()), move || accept_loop(l, dir, cfg));
    }
    stub::announce_ready();
    loop {
        thread::park();
    }
}

fn accept_loop(listener: TcpListener, dir: Direction, cfg: &'static Config) {
    // The listener's own port: under TPROXY an accepted socket's local
    // address is the client's original destination, not the listener.
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // No thread for it: answered as overloaded, never silently closed.
        stub::spawn_connection("fake-envoy", port, conn, move |conn| {
            let _ = proxy(conn, port, dir, cfg);
        });
    }
}

/// The destination the client asked for before NAT changed it.
fn original_dst(conn: &TcpStream) -> io::Result<SocketAddr> {
    let local = conn.local_addr()?;
    let got = match local {
        SocketAddr::V4(_) => getsockopt(&conn.as_fd(), sockopt::OriginalDst).map(|sa| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        }),
        SocketAddr::V6(_) => getsockopt(&conn.as_fd(), sockopt::Ip6tOriginalDst).map(|sa| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(sa.sin6_addr.s6_addr), u16::from_be(sa.sin6_port), 0, 0))
        }),
    };
    // ENOENT: no NAT entry, so nothing was rewritten (TPROXY, or a direct
    // connection): the local address is the destination the client used.
    Ok(got.unwrap_or(local))
}

fn proxy(conn: TcpStream, port: u16, dir: Direction, cfg: &Config) -> io::Result<()> {
    conn.set_read_timeout(Some(cfg.timeout))?;
    conn.set_write_timeout(Some(cfg.timeout))?;
    let mut reader = BufReader::with_capacity(stub::READ_BUFFER, &conn);
    let line = read_line(&mut reader)?;
    let mut probe = Probe::parse(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let role = dir.role().to_string();
    let reply = |probe: Probe, end: End| (&conn).write_all(Answer { probe, end }.to_line().as_bytes());

    if probe.has_passed(port) || probe.hops.len() >= sidecheck_wire::MAX_HOPS {
        return reply(probe, End::Loop { role, port });
    }
    let dst = original_dst(&conn)?;
    probe.hops.push(Hop { role: role.clone(), port, original_dst: dst, upstream: None });
    let upstream_addr = match dir {
        Direction::Outbound => *cfg.routes.get(&dst).unwrap_or(&dst),
        Direction::Inbound if cfg.inbound_to_loopback => {
            let lo: IpAddr = if dst.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
            SocketAddr::new(lo, dst.port())
        }
        Direction::Inbound => dst,
        Direction::Dns(up) => up,
    };
    // Nested proxies answer sooner than the ones in front of them, so an
    // error from deep in the chain reaches the client before it gives up.
    let budget = cfg.timeout.saturating_sub(cfg.timeout / 8 * probe.hops.len() as u32);
    let replied = match forward(&mut probe, conn.peer_addr()?, upstream_addr, dir, cfg, budget) {
        Ok(answer_line) => (&conn).write_all(answer_line.as_bytes()),
        Err(e) => {
            let message = format!("{upstream_addr} {e}");
            reply(probe, End::Error { role, port, message })
        }
    };
    // The client closes first (its port then waits in TIME_WAIT, unused).
    stub::await_close(&conn);
    replied
}

fn forward(
    probe: &mut Probe,
    client: SocketAddr,
    to: SocketAddr,
    dir: Direction,
    cfg: &Config,
    budget: Duration,
) -> io::Result<String> {
    let upstream = match dir {
        // Two thirds for the connect: a first SYN that waits on neighbour
        // resolution (retried after 1 s) must still fit.
        Direction::Outbound | Direction::Dns(_) => TcpStream::connect_timeout(&to, budget * 2 / 3)?,
        // TPROXY: from the client's own address, marked (Envoy's original_src).
        Direction::Inbound if cfg.tproxy_mark.is_some() => {
            connect_from(SocketAddr::new(client.ip(), 0), to, budget * 2 / 3, cfg.tproxy_mark)?
        }
        Direction::Inbound if !cfg.passthrough => TcpStream::connect_timeout(&to, budget * 2 / 3)?,
        Direction::Inbound => {
            let source = match to.ip() {
                IpAddr::V4(_) => SocketAddr::new(cfg.passthrough4.into(), 0),
                IpAddr::V6(_) => SocketAddr::new(cfg.passthrough6.into(), 0),
            };
            connect_from(source, to, budget * 2 / 3, None)?
        }
    };
    if let Some(hop) = probe.hops.last_mut() {
        hop.upstream = Some((upstream.local_addr()?, to));
    }
    upstream.set_read_timeout(Some(budget))?;
    upstream.set_write_timeout(Some(budget))?;
    (&upstream).write_all(probe.to_line().as_bytes())?;
    let mut reader = BufReader::with_capacity(stub::READ_BUFFER, &upstream);
    read_line(&mut reader).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(e.kind(), format!("no answer within {} ms", budget.as_millis()))
        }
        _ => e,
    })
}

/// The DNS proxy over UDP: one datagram in, the nameserver's answer out,
/// sent back from the listening socket (so the client's NAT is undone).
fn dns_udp_loop(sock: std::net::UdpSocket, upstream: SocketAddr, cfg: &'static Config) {
    let sock = std::sync::Arc::new(sock);
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = vec![0u8; sidecheck_wire::MAX_LINE];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf) else { continue };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let job = (sock.clone(), line);
        let spawned = stub::spawn_with(job, move |(sock, line)| {
            let Ok(mut probe) = Probe::parse(&line) else { return };
            let role = "dns".to_string();
            let end = if probe.has_passed(port) || probe.hops.len() >= sidecheck_wire::MAX_HOPS {
                Some(End::Loop { role: role.clone(), port })
            } else {
                None
            };
            let answer = match end {
                Some(end) => Answer { probe, end }.to_line(),
                None => {
                    probe.hops.push(Hop { role: role.clone(), port, original_dst: upstream, upstream: None });
                    match dns_forward(&mut probe, client, upstream, cfg.timeout) {
                        Ok(answer) => answer,
                        Err(e) => Answer { probe, end: End::Error { role, port, message: format!("{upstream} {e}") } }
                            .to_line(),
                    }
                }
            };
            let _ = sock.send_to(answer.as_bytes(), client);
        });
        if let Err(((sock, line), e)) = spawned {
            if let Ok(probe) = Probe::parse(&line) {
                let _ =
                    sock.send_to(Answer { probe, end: stub::overloaded_end(port, &e) }.to_line().as_bytes(), client);
            }
            stub::log_dropped("fake-envoy", port, &e);
        }
    }
}

/// Ask the nameserver. The query goes out from the client's own address and
/// port when the kernel allows it: the collision the DNS conntrack zones
/// exist for (istio/istio#46935), made on purpose instead of by chance; the
/// kernel's choice otherwise.
fn dns_forward(probe: &mut Probe, client: SocketAddr, upstream: SocketAddr, timeout: Duration) -> io::Result<String> {
    let up = match upstream_socket(Some(client), upstream) {
        Ok(s) => s,
        // (The client's address cannot reach this nameserver: 127.0.0.1 to a remote one.)
        Err(_) => upstream_socket(None, upstream)?,
    };
    if let Some(hop) = probe.hops.last_mut() {
        hop.upstream = Some((up.local_addr()?, upstream));
    }
    up.set_read_timeout(Some(timeout))?;
    up.send(probe.to_line().as_bytes())?;
    let mut buf = vec![0u8; sidecheck_wire::MAX_LINE];
    let n = up.recv(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(e.kind(), format!("no answer within {} ms", timeout.as_millis()))
        }
        _ => e,
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn upstream_socket(from: Option<SocketAddr>, upstream: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if upstream.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let any: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let from = from.filter(|c| c.is_ipv4() == upstream.is_ipv4()).unwrap_or(any);
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(from))?;
    let up = std::net::UdpSocket::from(fd);
    up.connect(upstream)?;
    Ok(up)
}

fn set_transparent(fd: std::os::fd::BorrowedFd<'_>, v4: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, name) =
        if v4 { (libc::SOL_IP, libc::IP_TRANSPARENT) } else { (libc::SOL_IPV6, libc::IPV6_TRANSPARENT) };
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from `one`, which lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            level,
            name,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connect from a fixed source address, as Envoy's inbound passthrough does;
/// with a mark, transparently (the source need not be local).
fn connect_from(source: SocketAddr, to: SocketAddr, timeout: Duration, mark: Option<u32>) -> io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if source.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    // Let connect() pick the source port (IP_BIND_ADDRESS_NO_PORT), as it
    // does for unbound sockets: it walks the port range per destination,
    // where bind(port 0) readily hands out a port just freed. A reused
    // 4-tuple would make two legs' trace events indistinguishable.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from `one`, which lives across the call.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    if let Some(mark) = mark {
        set_transparent(fd.as_fd(), source.is_ipv4())?;
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::Mark, &mark)?;
    }
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(source))?;
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(to)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    wait_connected(&stream, timeout)?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn wait_connected(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, ms)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {} ms", timeout.as_millis()),
        ));
    }
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

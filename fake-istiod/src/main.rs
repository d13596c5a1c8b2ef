//! fake-istiod: listens where Istiod listens (15010 xDS plaintext, 15012 xDS
//! TLS, 15014 monitoring, 15017 webhooks) and answers every sidecheck probe as
//! the server `istiod`. It speaks no xDS: the harness only needs to know a
//! connection arrived, and through which proxy hops.

use std::net::SocketAddr;
use std::time::Duration;

use sidecheck_wire::stub;

const USAGE: &str = "usage: fake-istiod [--listen ADDRESS:PORT]... [--name NAME] [--timeout-ms N]
  default: --listen 0.0.0.0:15010 --listen 0.0.0.0:15012 --listen 0.0.0.0:15014 --listen 0.0.0.0:15017 --name istiod";

fn main() {
    let mut listen: Vec<SocketAddr> = Vec::new();
    let mut name = String::from("istiod");
    let mut timeout = Duration::from_millis(3000);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        let ok = match (flag.as_str(), value) {
            ("--listen", Some(v)) => v.parse().map(|a| listen.push(a)).is_ok(),
            ("--name", Some(v)) => {
                name = v;
                true
            }
            ("--timeout-ms", Some(v)) => v.parse().map(|ms| timeout = Duration::from_millis(ms)).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("fake-istiod: bad argument `{flag}`\n{USAGE}");
            std::process::exit(2);
        }
    }
    if listen.is_empty() {
        listen = [15010, 15012, 15014, 15017].iter().map(|p| SocketAddr::from(([0, 0, 0, 0], *p))).collect();
    }
    stub::exit_with_parent("fake-istiod");
    let listeners: Vec<_> = listen.iter().map(|a| stub::bind_or_exit("fake-istiod", *a)).collect();
    for l in listeners {
        stub::serve_terminal("fake-istiod", l, name.clone(), timeout);
    }
    stub::announce_ready();
    loop {
        std::thread::park();
    }
}

//! Values that parse but cannot be tested: refused with the field, the file
//! and the line, before anything reaches the kernel (where they came back
//! as FAILs: a uid of -1, a link-local address without a scope, port 0).

use std::net::IpAddr;

use crate::Error;

/// The line of the first `key:` in `text` (block or flow style), 1-based.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    text.lines()
        .position(|l| {
            l.match_indices(&pat).any(|(i, _)| {
                l[..i].chars().last().is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-' || c == '\t')
            })
        })
        .map(|i| i + 1)
}

/// An error at `key` of `file` (`file:line: key: message`).
pub fn at(file: &str, text: &str, key: &str, message: impl std::fmt::Display) -> Error {
    let file = match line_of(text, key) {
        Some(n) => format!("{file}:{n}"),
        None => file.to_string(),
    };
    Error::ScenarioInvalid { file, message: format!("{key}: {message}") }
}

/// uid/gid values the kernel cannot take: (uid_t)-1 means "unchanged" to
/// setfsuid and friends, so the socket would keep root's ids.
pub fn uid(v: u64) -> Result<u32, String> {
    match u32::try_from(v) {
        Ok(u32::MAX) => Err(format!(
            "uid {v} is (uid_t)-1, which the kernel reads as \"leave unchanged\", not as a uid: use a uid below {}",
            u32::MAX
        )),
        Ok(u) => Ok(u),
        Err(_) => Err(format!("uid {v} is out of range (at most {})", u32::MAX - 1)),
    }
}

/// A destination a probe can connect to from a pod: not unspecified, not
/// multicast or broadcast, and not IPv6 link-local (it needs a scope, an
/// interface, which a destination cannot carry).
pub fn destination(ip: IpAddr) -> Result<(), String> {
    match ip {
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Err(format!(
            "{ip} is IPv6 link-local (fe80::/10): it means something only together with an interface (a scope), which a destination cannot give; use the pod's global or ULA address"
        )),
        ip if ip.is_unspecified() => Err(format!("{ip} is the unspecified address: name a host or an address to connect to")),
        ip if ip.is_multicast() => Err(format!("{ip} is a multicast address: a TCP connection cannot go there")),
        IpAddr::V4(v4) if v4.is_broadcast() => Err(format!("{ip} is the broadcast address")),
        _ => Ok(()),
    }
}

/// Ports an app serves: at least one, none of them 0.
pub fn app_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("is empty: the app must serve at least one port, or no flow can reach it".into());
    }
    if ports.contains(&0) {
        return Err("port 0 is not a port a server can listen on or a client connect to: give 1-65535".into());
    }
    Ok(())
}

/// `TARGET:PORT` on the command line: an IPv6 address with a port must be
/// bracketed (`fd00::20:9090` reads as the address fd00::20:9090 or as
/// fd00::20 port 9090 alike), and port 0 is no port.
pub fn target_port(arg: &str, target: &str, port: &str) -> Result<u16, String> {
    if target.contains(':') && !target.starts_with('[') {
        return Err(format!(
            "`{arg}`: an IPv6 address with a port must be in brackets, e.g. [{target}]:{port} (without them the last group could be the port or part of the address)"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(format!("`{arg}`: port 0 is not a port a connection can go to: give 1-65535")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("`{arg}`: `{port}` is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_block_and_flow_style() {
        let text = "flow: 2\nsource: { host: local-pod, uid: 7 }\ndestination:\n  address: fe80::1\n";
        assert_eq!(line_of(text, "uid"), Some(2));
        assert_eq!(line_of(text, "address"), Some(4));
        assert_eq!(line_of(text, "host"), Some(2));
        assert_eq!(line_of("myuid: 1\n", "uid"), None);
        let e = at("s.yaml", text, "address", "bad").to_string();
        assert_eq!(e, "s.yaml:4: address: bad");
    }

    #[test]
    fn edge_values_are_refused_with_the_reason() {
        assert!(uid(4294967295).unwrap_err().contains("(uid_t)-1"));
        assert_eq!(uid(4294967294), Ok(4294967294));
        assert!(destination("fe80::1".parse().unwrap()).unwrap_err().contains("link-local"));
        assert!(destination("febf::1".parse().unwrap()).is_err());
        assert!(destination("fec0::1".parse().unwrap()).is_ok());
        assert!(destination("0.0.0.0".parse().unwrap()).is_err());
        assert!(destination("fd00::20".parse().unwrap()).is_ok());
        assert!(app_ports(&[]).is_err() && app_ports(&[0]).is_err() && app_ports(&[8080]).is_ok());
        assert!(target_port("fd00::20:9090", "fd00::20", "9090").unwrap_err().contains("brackets"));
        assert!(target_port("remote-pod:0", "remote-pod", "0").unwrap_err().contains("port 0"));
        assert_eq!(target_port("remote-pod:9090", "remote-pod", "9090"), Ok(9090));
    }
}

//! Capture policies: what a rule generator was asked to do, with fields that
//! mirror `istio-iptables`' flags. From a policy the harness derives three
//! things: the reference rules ([`Policy::to_restore_for`]), the expected
//! hops of any connection ([`oracle()`], the specification), and a matrix of
//! probes on every boundary the policy draws ([`Policy::matrix`]).

pub mod from;
pub mod matrix;
pub mod oracle;
pub mod parse;
pub mod reference;
pub mod run;
pub mod schema;

use std::net::IpAddr;

use crate::base::net::Family;

pub use crate::base::cidr::Cidr;
pub use matrix::{MatrixProbe, MatrixTopology};
pub use oracle::{invalid_fate, oracle, Dest, Query};
pub use run::PolicyRun;
pub use schema::{GroupRef, Mesh, Mode, Policy, PortRange, Select};

/// Where pilot-agent's DNS proxy listens (on 127.0.0.1 and ::1).
pub const DNS_AGENT_PORT: u16 = 15053;
/// How the servers on the hosts behind the pod's extra interfaces answer.
pub const SIDE_APP_NAME: &str = "side-app";
/// How the nameserver stubs answer.
pub const DNS_SERVER_NAME: &str = "dns-server";

/// The nameserver a pod has when the policy lists none (kube-dns's VIP in a
/// default cluster), on the remote pod.
pub fn kube_dns(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)),
        Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa)),
    }
}

/// A DNS server on the pod itself: a 127/8 address (systemd-resolved's
/// 127.0.0.53), or one written as an IPv4-compatible IPv6 address
/// (`::127.0.0.53`, as Istio's own tests give it).
pub fn dns_server_is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.segments()[..6] == [0; 6] && a.octets()[12] == 127,
    }
}

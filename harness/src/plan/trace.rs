//! `sidecheck trace`: one connection, from a pod (as a uid and gid) to a
//! host, a service or an address of the topology.

use std::net::{IpAddr, SocketAddr};

use crate::base::net::Family;
use crate::model::topology::{Host, TopologyConfig};
use crate::model::validate;
use crate::plan::{RuleInput, SessionConfig};
use crate::{Error, Result};

/// What a trace runs: the session, and the one probe.
#[derive(Clone, Debug)]
pub struct TracePlan {
    pub config: SessionConfig,
    pub from: Host,
    pub uid: u32,
    pub gid: u32,
    pub to: SocketAddr,
}

impl TracePlan {
    /// `--from HOST[:UID[:GID]]` to `--to TARGET:PORT` under `rules`.
    pub fn build(rules: &RuleInput, from: &str, to: &str, note: &mut dyn FnMut(&str)) -> Result<TracePlan> {
        let (config, topology_file) = rules.config(note)?;
        let mut config = SessionConfig { rule_texts: true, ..config };
        let (from, uid, gid) = parse_from(from)?;
        let target = parse_to(to, &config.topology)?;
        // Host names resolve in the first family tested; an address picks its own.
        let family = if target.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 };
        if !config.topology.families.contains(&family) {
            return Err(Error::config(format!(
                "--to {to}: an {} address, but this run tests only {:?}",
                family.name(),
                config.topology.families
            )));
        }
        config.topology.families.retain(|f| *f == family || config.rules.families().len() > 1);
        if let Some(file) = &topology_file {
            file.check(&config.topology)?;
        }
        Ok(TracePlan { config, from, uid, gid, to: target })
    }
}

fn parse_from(from: &str) -> Result<(Host, u32, u32)> {
    let (from, gid) = match from.splitn(3, ':').nth(2) {
        Some(g) => (
            &from[..from.len() - g.len() - 1],
            Some(g.parse::<u32>().map_err(|e| Error::config(format!("--from {from}: `{g}` is not a gid: {e}")))?),
        ),
        None => (from, None),
    };
    let (host, uid) = match from.split_once(':') {
        Some((h, u)) => {
            let n: u64 = u.parse().map_err(|e| Error::config(format!("--from {from}: `{u}` is not a uid: {e}")))?;
            (h, validate::uid(n).map_err(|e| Error::config(format!("--from {from}: {e}")))?)
        }
        None => (from, 1000),
    };
    let host = Host::parse(host).filter(|h| *h != Host::Node).ok_or_else(|| {
        Error::config(format!("--from {from}: `{host}` is not a pod; use local-pod, remote-pod, prometheus or istiod"))
    })?;
    Ok((host, uid, gid.unwrap_or(uid)))
}

fn parse_to(to: &str, topo: &TopologyConfig) -> Result<SocketAddr> {
    let (target, port) = to.rsplit_once(':').ok_or_else(|| {
        Error::config(format!("--to {to}: give TARGET:PORT, e.g. remote-pod:9090 or [fd00:10:244::20]:9090"))
    })?;
    let port = validate::target_port(to, target, port).map_err(|e| Error::config(format!("--to {e}")))?;
    if let Ok(addr) = to.parse::<SocketAddr>() {
        validate::destination(addr.ip()).map_err(|e| Error::config(format!("--to {to}: {e}")))?;
        return Ok(addr);
    }
    let family = *topo.families.first().unwrap_or(&Family::Ipv4);
    let ip: IpAddr = if target == "localhost" {
        family.localhost()
    } else if let Some(h) = Host::parse(target) {
        topo.address_of(h, family)
    } else if let Some(s) = topo.service(target) {
        s.vip_of(family)
    } else {
        let ip: IpAddr = target.parse().map_err(|e| {
            Error::config(format!("--to {to}: `{target}` is not a host (local-pod, remote-pod, prometheus, istiod, node, localhost), a service ({}) or an address: {e}",
                topo.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")))
        })?;
        validate::destination(ip).map_err(|e| Error::config(format!("--to {to}: {e}")))?;
        ip
    };
    Ok(SocketAddr::new(ip, port))
}

//! Starting a session: the topology, the rules and the tracer over them,
//! the stubs and the app servers.

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use super::{Session, SessionConfig};
use crate::base::net::Family;
use crate::base::phases::Phases;
use crate::model::profile::AppBind;
use crate::model::scenario::Scenario;
use crate::model::topology::{Host, Tproxy};
use crate::netfilter;
use crate::netfilter::trace::Tracer;
use crate::probe::{self, AppServer};
use crate::rules::source::RuleSource;
use crate::sandbox::registry::{self, RunGuard};
use crate::sandbox::stubs::{EnvoyArgs, IstiodArgs, Stub, StubProcess};
use crate::sandbox::topology::Topology;
use crate::{Error, Result};

impl Session {
    /// Check everything that can be checked before touching the system, so
    /// that bad input costs nothing and leaves nothing behind.
    pub fn preflight(config: &SessionConfig, scenarios: &[Scenario]) -> Result<()> {
        config.topology.validate()?;
        for s in scenarios {
            for f in s.families(&config.topology.families) {
                s.target(&config.profile, &config.topology, f)?;
            }
        }
        config.rules.check(config.backend)?;
        if config.trace {
            crate::base::tool::find_tool("nft", "nftables")?;
        }
        Ok(())
    }

    pub fn start(mut config: SessionConfig) -> Result<Session> {
        crate::require_root("building the test topology")?;
        let mut phases = Phases::new();
        // Test the families the rules are for: an IPv4 restore file alone
        // is an IPv4 test (the report says which families ran).
        let for_rules = config.rules.families();
        config.topology.families.retain(|f| for_rules.contains(f));
        if config.topology.families.is_empty() {
            return Err(Error::config(format!("{} has rules for no family this run tests", config.rules.describe())));
        }
        Self::preflight(&config, &[])?;
        crate::raise_fd_limit();
        let limits = crate::sandbox::admission::Limits::read(config.profile.proxy.uid, config.control_plane_uid);
        let in_flight = crate::sandbox::admission::budget(&limits, config.profile.proxy.uid, config.control_plane_uid)?;
        registry::sweep_stale();
        let run = RunGuard::acquire()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::io("starting the async runtime"))?;
        let topology = phases.time("links", || Topology::create(run.prefix(), config.topology.clone()))?;
        // The rules (and the tracer over them) and the stubs need nothing of
        // each other: no traffic flows before the probes. Installing the
        // rules is mostly waiting on restore processes, so the stubs start
        // meanwhile, and rules that need no link go in while the links are
        // made too.
        let early = rules_need_no_links(&config);
        let begun = std::thread::scope(|scope| -> Result<_> {
            let install = || {
                let mut phases = Phases::silent();
                let tracer = Self::install_rules(&config, &topology, &mut phases);
                (phases, tracer)
            };
            // (An early install still running when linking fails is joined
            // by the scope, and its result dropped.)
            let early = early.then(|| scope.spawn(install));
            phases.time("links", || rt.block_on(topology.link()))?;
            let installing = early.unwrap_or_else(|| scope.spawn(install));
            let stubs_from = Instant::now();
            let started = Self::start_stubs(&config, &topology, &run, &rt);
            let stubs_took = stubs_from.elapsed();
            let installed = installing
                .join()
                .unwrap_or_else(|_| (Phases::silent(), Err(Error::config("the thread installing the rules panicked"))));
            Ok((installed, stubs_took, started))
        });
        let (installed, stubs_took, started) = begun?;
        let (rule_phases, tracer) = installed;
        phases.absorb(&rule_phases);
        phases.add("stubs", stubs_took);
        let tracer = tracer?;
        let (stubs, apps, udp) = started?;
        // The tracer's own table, as it stands once everything is up.
        if let Some(trouble) = tracer.as_ref().and_then(|t| t.check(topology.ns(Host::LocalPod), config.rules_timeout))
        {
            return Err(Error::config(trouble));
        }
        let phases = std::sync::Mutex::new(phases);
        Ok(Session { _apps: apps, _udp: udp, _stubs: stubs, rt, tracer, topology, config, in_flight, run, phases })
    }

    /// The rules under test in the pod (with TPROXY's routing where the
    /// rules do not bring their own) and, when tracing, the tracer over them.
    fn install_rules(config: &SessionConfig, topology: &Topology, phases: &mut Phases) -> Result<Option<Tracer>> {
        let pod = topology.ns(Host::LocalPod);
        // A script or a generator sets up its own routing, as istio-iptables
        // does (`ip rule add fwmark ...`); rule files carry none.
        phases.time("rules", || -> Result<()> {
            if let (Some(t), false) =
                (config.tproxy, matches!(config.rules, RuleSource::Script(_) | RuleSource::Generator(_)))
            {
                tproxy_routing(pod, t, &config.topology.families, config.rules_timeout)?;
            }
            let said = config.rules.install(pod, config.backend, &config.topology.families, config.rules_timeout)?;
            crate::netfilter::installed::verify(
                pod,
                &config.rules.describe(),
                config.rules.frontend(config.backend),
                &config.topology.families,
                config.allow_empty_rules,
                &said,
                config.rules_timeout,
            )
        })?;
        let frontend = config.rules.frontend(config.backend);
        let tracer = phases.time("tracer", || -> Result<Option<Tracer>> {
            Ok(match config.trace {
                true => {
                    let mut t = Tracer::start(pod, frontend, config.rules_timeout, config.rule_texts)?;
                    t.set_proxy_name(&config.profile.proxy.name);
                    Some(t)
                }
                false => None,
            })
        })?;

        Ok(tracer)
    }

    /// fake-envoy and fake-istiod, and the app (and DNS) servers.
    fn start_stubs(
        config: &SessionConfig,
        topology: &Topology,
        run: &RunGuard,
        rt: &Runtime,
    ) -> Result<(Vec<StubProcess>, Vec<AppServer>, Vec<probe::UdpServer>)> {
        let pod = topology.ns(Host::LocalPod);
        let mut stubs = Vec::new();
        let envoy_exe = Stub::FakeEnvoy.install(run)?;
        let p = &config.profile.proxy;
        let args = EnvoyArgs::new(
            &config.profile,
            &config.topology,
            config.probe_timeouts.connect,
            config.tproxy,
            config.dns.as_ref(),
        )
        .argv();
        stubs.push(StubProcess::start(
            run,
            Stub::FakeEnvoy,
            &envoy_exe,
            pod,
            (p.uid, p.gid),
            &args,
            config.stub_ready_timeout,
        )?);

        let istiod_exe = Stub::FakeIstiod.install(run)?;
        let args = IstiodArgs::new(&config.profile, &config.topology.families).argv();
        let istiod_ns = topology.ns(Host::Istiod);
        let uid = config.control_plane_uid;
        stubs.push(StubProcess::start(
            run,
            Stub::FakeIstiod,
            &istiod_exe,
            istiod_ns,
            (uid, uid),
            &args,
            config.stub_ready_timeout,
        )?);

        let io = config.probe_timeouts.answer;
        let (apps, udp) = {
            let _ctx = rt.enter();
            let mut apps = Vec::new();
            let mut udp = Vec::new();
            for (ip, host) in config.dns.iter().flat_map(|d| &d.servers) {
                if config.topology.families.contains(&Family::of(*ip)) {
                    let addr = std::net::SocketAddr::new(*ip, 53);
                    apps.push(AppServer::start_at(topology.ns(*host), crate::policy::DNS_SERVER_NAME, addr, io)?);
                    udp.push(probe::UdpServer::start(topology.ns(*host), crate::policy::DNS_SERVER_NAME, addr)?);
                }
            }
            for f in config.topology.families.iter().copied() {
                for port in &config.local_app_ports {
                    apps.push(match config.profile.app_bind {
                        AppBind::Any => AppServer::start(pod, "local-app", f, *port, io)?,
                        AppBind::PodAddress => {
                            let at = std::net::SocketAddr::new(config.topology.address_of(Host::LocalPod, f), *port);
                            AppServer::start_at(pod, "local-app", at, io)?
                        }
                    });
                }
                for port in &config.remote_app_ports {
                    apps.push(AppServer::start(topology.ns(Host::RemotePod), "remote-app", f, *port, io)?);
                }
                for side in config.topology.hosts().into_iter().filter(|h| matches!(h, Host::Side(_))) {
                    for port in &config.side_app_ports {
                        apps.push(AppServer::start(topology.ns(side), crate::policy::SIDE_APP_NAME, f, *port, io)?);
                    }
                }
            }
            (apps, udp)
        };
        Ok((stubs, apps, udp))
    }
}

/// The routing TPROXY needs in the pod, per family, as istio-iptables adds it.
fn tproxy_routing(
    pod: &crate::sandbox::ns::Namespace,
    t: Tproxy,
    families: &[Family],
    timeout: Duration,
) -> Result<()> {
    let ip = crate::base::tool::find_tool("ip", "iproute2")?;
    let (mark, table) = (t.mark.to_string(), t.table.to_string());
    for f in families {
        let (flag, default) = match f {
            Family::Ipv4 => ("-4", "0.0.0.0/0"),
            Family::Ipv6 => ("-6", "::/0"),
        };
        for args in [
            vec![flag, "rule", "add", "fwmark", &mark, "lookup", &table],
            vec![flag, "route", "add", "local", default, "dev", "lo", "table", &table],
        ] {
            let ran = netfilter::run_in(pod, &ip, &args, "", timeout)?;
            if !ran.status.success() {
                return Err(Error::config(format!(
                    "setting up TPROXY routing in namespace {}: ip {} failed: {}",
                    pod.name(),
                    args.join(" "),
                    ran.output.trim()
                )));
            }
        }
    }
    Ok(())
}

/// Whether the rules can go in before the pod's links exist: restore files
/// name interfaces only by name (x_tables compares `-i eth0` as text, with
/// or without such an interface) and bring no routing. An nft ruleset may
/// name one by index (`iif eth0` is resolved when it is loaded, and refused
/// before the interface exists); scripts and generators may read the pod's
/// interfaces and set up routing; TPROXY's routing needs a wired `lo`.
fn rules_need_no_links(config: &SessionConfig) -> bool {
    config.tproxy.is_none()
        && !matches!(config.rules, RuleSource::Script(_) | RuleSource::Generator(_))
        && netfilter::front_end(config.rules.frontend(config.backend))
            .is_some_and(|f| f.format() == netfilter::RuleFormat::Restore)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::source::Backend;

    #[test]
    fn only_restore_files_without_tproxy_go_in_before_the_links() {
        let with = |rules: RuleSource, backend: Backend| SessionConfig { rules, backend, ..SessionConfig::default() };
        assert!(rules_need_no_links(&SessionConfig::default()), "the built-in rules through iptables-nft");
        assert!(rules_need_no_links(&with(
            RuleSource::RestoreFiles { v4: Some("/r".into()), v6: None },
            Backend::Legacy
        )));
        // The built-in rules as nft, an nft file, a script, a generator: after.
        assert!(!rules_need_no_links(&with(SessionConfig::default().rules, Backend::NftNative)));
        assert!(!rules_need_no_links(&with(RuleSource::NftFile("/r.nft".into()), Backend::Nft)));
        assert!(!rules_need_no_links(&with(RuleSource::Script("/s.sh".into()), Backend::Nft)));
        assert!(!rules_need_no_links(&with(RuleSource::Generator("true".into()), Backend::Nft)));
        let tproxy = SessionConfig { tproxy: Some(Tproxy { mark: 1337, table: 133 }), ..SessionConfig::default() };
        assert!(!rules_need_no_links(&tproxy), "TPROXY's routing needs the wired pod");
    }
}

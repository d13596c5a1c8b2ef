//! A session: one topology with one rule set installed and the stubs
//! running, reused by every probe against that rule set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::base::net::Family;
use crate::base::phases::Phases;
use crate::model::profile::{AppBind, Bind, InboundUpstream};
use crate::model::scenario::Protocol;
use crate::model::scenario::Scenario;
use crate::model::topology::{Host, Tproxy};
use crate::netfilter;
use crate::netfilter::trace::Tracer;
use crate::probe::{self, AppServer, Observation};
use crate::rules::source::{self, Backend, RuleSource};
use crate::sandbox::registry::{self, RunGuard};
use crate::sandbox::stubs::{Stub, StubProcess};
use crate::sandbox::topology::Topology;
use crate::verdict::{self, PathCheck, TrialResult};
use crate::{Error, Result};

// The configuration is the plan's (an earlier layer); named here too.
pub use crate::plan::SessionConfig;

struct ProbeRequest {
    from: Host,
    uid: u32,
    gid: u32,
    target: Result<std::net::SocketAddr>,
    protocol: Protocol,
}

/// One finished probe.
pub struct ProbeDone {
    pub observation: Observation,
    pub path: Option<crate::netfilter::trace::ObservedPath>,
    pub ms: u64,
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(1);

/// A probe id no other probe of any process running now shares.
fn next_probe_id() -> u64 {
    (u64::from(std::process::id()) << 32) | PROBE_SEQ.fetch_add(1, Ordering::Relaxed)
}

pub struct Session {
    // Field order is drop order: servers and stubs, then the runtime (its
    // tasks hold sockets in the namespaces), then the namespaces, then the
    // run's lock.
    _apps: Vec<AppServer>,
    _udp: Vec<probe::UdpServer>,
    _stubs: Vec<StubProcess>,
    rt: Runtime,
    tracer: Option<Tracer>,
    topology: Topology,
    config: SessionConfig,
    /// Probes allowed in flight at once ([`crate::sandbox::admission`]).
    in_flight: usize,
    run: RunGuard,
    // Last: its drop ends the teardown phase and reports (SIDECHECK_PHASES).
    phases: std::sync::Mutex<Phases>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.phases.get_mut().unwrap_or_else(|e| e.into_inner()).teardown_starts();
    }
}

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
        let topology = phases.time("links", || rt.block_on(Topology::build(run.prefix(), config.topology.clone())))?;

        // The rules (and the tracer over them) and the stubs need nothing of
        // each other: no traffic flows before the probes. Installing the
        // rules is mostly waiting on restore processes, so the stubs start
        // meanwhile.
        let (installed, started) = std::thread::scope(|scope| {
            let installing = scope.spawn(|| {
                let mut phases = Phases::silent();
                let tracer = Self::install_rules(&config, &topology, &mut phases);
                (phases, tracer)
            });
            let stubs_from = Instant::now();
            let started = Self::start_stubs(&config, &topology, &run, &rt);
            let stubs_took = stubs_from.elapsed();
            let installed = installing
                .join()
                .unwrap_or_else(|_| (Phases::silent(), Err(Error::config("the thread installing the rules panicked"))));
            ((installed, stubs_took), started)
        });
        let ((rule_phases, tracer), stubs_took) = installed;
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
        let topo = &config.topology;
        let any = |f: Family| -> &'static str {
            match f {
                Family::Ipv4 => "0.0.0.0",
                Family::Ipv6 => "[::]",
            }
        };
        let loopback = |f: Family| -> &'static str {
            match f {
                Family::Ipv4 => "127.0.0.1",
                Family::Ipv6 => "[::1]",
            }
        };
        let mut args: Vec<String> = Vec::new();
        for f in topo.families.iter().copied() {
            let inbound = config.profile.port(crate::model::profile::Role::Inbound, f);
            args.extend([
                "--outbound".into(),
                format!("{}:{}", any(f), p.outbound),
                "--inbound".into(),
                format!("{}:{inbound}", any(f)),
            ]);
            for (name, port, bind) in config.profile.served() {
                let addr = match bind {
                    Bind::Loopback => loopback(f),
                    Bind::Any => any(f),
                };
                args.extend(["--serve".into(), format!("{name}={addr}:{port}")]);
            }
            for s in &topo.services {
                args.push("--route".into());
                args.push(format!(
                    "{}={}",
                    std::net::SocketAddr::new(s.vip_of(f), s.port),
                    std::net::SocketAddr::new(topo.address_of(s.endpoint, f), s.target_port)
                ));
            }
        }
        match &p.passthrough {
            Some(pt) => args.extend([
                "--passthrough4".into(),
                pt.ipv4.to_string(),
                "--passthrough6".into(),
                pt.ipv6.to_string(),
            ]),
            None => args.push("--no-passthrough".into()),
        }
        if p.inbound_upstream == InboundUpstream::Loopback {
            args.extend(["--inbound-upstream".into(), "loopback".into()]);
        }
        args.extend(["--timeout-ms".into(), config.probe_timeouts.connect.as_millis().to_string()]);
        if let Some(t) = config.tproxy {
            args.extend(["--tproxy-mark".into(), t.mark.to_string()]);
        }
        if let Some(dns) = &config.dns {
            for (f, up) in dns.upstreams.iter().filter(|(f, _)| topo.families.contains(f)) {
                let listen = std::net::SocketAddr::new(f.localhost(), dns.agent_port);
                args.extend(["--dns".into(), format!("{listen}={}", std::net::SocketAddr::new(*up, 53))]);
            }
        }
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
        let mut args: Vec<String> = vec!["--name".into(), config.profile.control_plane.name.clone()];
        for f in config.topology.families.iter().copied() {
            for port in &config.profile.control_plane.ports {
                args.push("--listen".into());
                args.push(format!("{}:{port}", any(f)));
            }
        }
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

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether [`Session::swap_rules`] can put `rules` (with `backend`) in
    /// place of this session's: both everything-in-nftables (iptables-nft
    /// or native nft; `nft flush ruleset` removes all of it, x_tables
    /// legacy tables it would not), neither a script or generator (they set
    /// up routing of their own), and for exactly this session's families.
    pub fn can_swap_to(&self, rules: &RuleSource, backend: Backend) -> bool {
        let in_nft = |r: &RuleSource, b: Backend| {
            !matches!(r, RuleSource::Script(_) | RuleSource::Generator(_))
                && matches!(r.frontend(b), source::Frontend::IptablesNft | source::Frontend::Nft)
        };
        let mut families = rules.families();
        families.retain(|f| self.config.topology.families.contains(f));
        in_nft(&self.config.rules, self.config.backend)
            && in_nft(rules, backend)
            && families.len() == self.config.topology.families.len()
    }

    /// Test other rules in this topology: flush every rule in the pod
    /// (nftables and conntrack: no connection of the old rules keeps its
    /// NAT), install `rules`, and start the tracer afresh (trace table
    /// reinstalled, rules indexed again). The stubs and app servers stay:
    /// they depend on the profile and topology, not on the rules. Refused
    /// (a configuration error) where [`Session::can_swap_to`] says no.
    pub fn swap_rules(&mut self, rules: RuleSource, backend: Backend) -> Result<()> {
        if !self.can_swap_to(&rules, backend) {
            return Err(Error::config(format!(
                "{} cannot replace {} in the same topology: start a new session",
                rules.describe(),
                self.config.rules.describe()
            )));
        }
        let pod = self.topology.ns(Host::LocalPod);
        let timeout = self.config.rules_timeout;
        let mut phases = Phases::silent();
        // Closes the old trace sockets before the table they follow goes.
        self.tracer = None;
        phases.time("rules", || -> Result<()> {
            let nft = crate::base::tool::find_tool("nft", "nftables")?;
            let ran = netfilter::run_in(pod, &nft, &["flush", "ruleset"], "", timeout)?;
            if !ran.status.success() {
                return Err(Error::config(format!(
                    "flushing the rules in namespace {} failed: {}",
                    pod.name(),
                    ran.output.trim()
                )));
            }
            flush_conntrack(pod)?;
            let said = rules.install(pod, backend, &self.config.topology.families, timeout)?;
            crate::netfilter::installed::verify(
                pod,
                &rules.describe(),
                &self.config.topology.families,
                self.config.allow_empty_rules,
                &said,
                timeout,
            )
        })?;
        self.config.rules = rules;
        self.config.backend = backend;
        let frontend = self.config.rules.frontend(backend);
        if self.config.trace {
            let mut t = phases.time("tracer", || Tracer::start(pod, frontend, timeout, self.config.rule_texts))?;
            t.set_proxy_name(&self.config.profile.proxy.name);
            if let Some(trouble) = t.check(pod, timeout) {
                return Err(Error::config(trouble));
            }
            self.tracer = Some(t);
        }
        self.phases.lock().unwrap_or_else(|e| e.into_inner()).absorb(&phases);
        Ok(())
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Keep the namespaces (rules, addresses) after this session is dropped,
    /// for a person to inspect; `sidecheck clean` removes them.
    pub fn keep(&self) {
        self.topology.keep();
        self.run.keep();
    }

    /// The run's name prefix (every namespace name starts with it).
    pub fn prefix(&self) -> &str {
        self.run.prefix()
    }

    /// The tracer, when this session traces.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.tracer.as_ref()
    }

    /// Run every scenario's probe at once (ids keep them apart) and judge each.
    pub fn run(&self, scenarios: &[Scenario]) -> Vec<TrialResult> {
        self.run_with(scenarios, self.config.assert_paths)
    }

    /// As [`Session::run`], choosing whether paths are asserted.
    pub fn run_with(&self, scenarios: &[Scenario], assert_paths: bool) -> Vec<TrialResult> {
        let cases: Vec<(Scenario, Family)> = scenarios
            .iter()
            .flat_map(|s| s.families(&self.config.topology.families).into_iter().map(move |f| (s.clone(), f)))
            .collect();
        self.run_cases(&cases, assert_paths)
    }

    /// The families this session tests.
    pub fn families(&self) -> &[Family] {
        &self.config.topology.families
    }

    /// How trial names and reports call this session's backend.
    pub fn backend_name(&self) -> String {
        self.config.backend_name()
    }

    /// Run each (scenario, family) case once, all at once.
    pub fn run_cases(&self, cases: &[(Scenario, Family)], assert_paths: bool) -> Vec<TrialResult> {
        let mut label = self.config.rules.label();
        if matches!(self.config.rules, RuleSource::Builtin(_)) && self.config.backend == Backend::NftNative {
            label.push_str("-nft-native");
        }
        let resolved: Vec<_> =
            cases.iter().map(|(s, f)| s.case(&self.config.profile, &self.topology.config, *f, &label)).collect();
        let mut expected = Vec::new();
        let mut requests = Vec::new();
        for ((s, _), case) in cases.iter().zip(resolved) {
            let from = s.spec.source.host;
            match case {
                Ok(c) => {
                    requests.push(ProbeRequest {
                        from,
                        uid: c.uid,
                        gid: c.gid,
                        target: Ok(c.target),
                        protocol: c.protocol,
                    });
                    expected.push(c.expected);
                }
                // Checked in preflight; a failure here fails the trial with its reason.
                Err(e) => {
                    requests.push(ProbeRequest { from, uid: 0, gid: 0, target: Err(e), protocol: Protocol::Tcp });
                    expected.push(crate::model::scenario::Expected {
                        ports: Vec::new(),
                        server: String::new(),
                        path: None,
                        note: None,
                    });
                }
            }
        }
        let backend = self.backend_name();
        let (done, health) = self.probe_all(requests);
        cases
            .iter()
            .zip(expected)
            .zip(done)
            .map(|(((s, f), expected), done)| {
                let check = PathCheck { label: &label, assert: assert_paths };
                let complete = done.path.as_ref().is_none_or(|p| p.complete);
                let mut r = verdict::judge(s, expected, &done.observation, done.ms, done.path, &check);
                crate::verdict::outcome::settle(&mut r, &done.observation, complete, &health);
                r.name = crate::model::scenario::case_name(&s.name, &backend, *f);
                r.backend = backend.clone();
                r.family = f.name().into();
                r
            })
            .collect()
    }

    /// One connection, for troubleshooting: what happened and its path.
    pub fn probe_one(&self, from: Host, uid: u32, gid: u32, target: std::net::SocketAddr) -> ProbeDone {
        self.probe_all(vec![ProbeRequest { from, uid, gid, target: Ok(target), protocol: Protocol::Tcp }]).0.remove(0)
    }

    /// Run probes concurrently, at most `in_flight` at a time; then collect
    /// each one's trace, and what the run saw of its own health meanwhile.
    fn probe_all(&self, requests: Vec<ProbeRequest>) -> (Vec<ProbeDone>, crate::verdict::outcome::Health) {
        let started = Instant::now();
        let done = self.probe_all_untimed(requests);
        self.phases.lock().unwrap_or_else(|e| e.into_inner()).add("probes", started.elapsed());
        done
    }

    /// [`Session::probe_all`] without the phase timing: each probe's socket
    /// is made once it is admitted.
    fn probe_all_untimed(&self, requests: Vec<ProbeRequest>) -> (Vec<ProbeDone>, crate::verdict::outcome::Health) {
        let namespaces: Vec<&crate::sandbox::ns::Namespace> =
            self.topology.config.hosts().into_iter().map(|h| self.topology.ns(h)).collect();
        let drops_before: Vec<Option<u64>> =
            namespaces.iter().map(|ns| crate::verdict::outcome::listen_drops(ns)).collect();
        let t = self.config.probe_timeouts;
        let admit = std::sync::Arc::new(tokio::sync::Semaphore::new(self.in_flight));
        let probes = self.rt.block_on(async {
            // (None: an INVALID segment, sent afterwards from a raw socket.)
            let mut tasks = Vec::new();
            for r in &requests {
                if r.protocol == Protocol::TcpInvalid && r.target.is_ok() {
                    tasks.push(None);
                    continue;
                }
                // Admitted first, then the socket is made: descriptors are
                // held only by probes in flight.
                let permit = admit.clone().acquire_owned().await;
                let udp = r.protocol == Protocol::Udp;
                let made = r.target.as_ref().map_err(|e| e.to_string()).and_then(|to| {
                    probe::client_socket(self.topology.ns(r.from), r.uid, r.gid, to.is_ipv6(), udp)
                        .map(|fd| (fd, *to))
                        .map_err(|e| e.to_string())
                });
                tasks.push(Some(tokio::spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let (obs, client) = match made {
                        Ok((fd, to)) if !udp => probe::run(fd, to, next_probe_id(), t).await,
                        Ok((fd, to)) => (probe::run_udp(fd, to, next_probe_id(), t).await, None),
                        Err(e) => (Observation::Failed { stage: "setup".into(), detail: e }, None),
                    };
                    (obs, client, started.elapsed().as_millis() as u64)
                })));
            }
            let mut out = Vec::new();
            for task in tasks {
                out.push(match task {
                    None => None,
                    Some(task) => Some(task.await.unwrap_or_else(|e| {
                        (
                            Observation::Failed {
                                stage: "probe".into(),
                                detail: format!("the probe task failed: {e}"),
                            },
                            None,
                            0,
                        )
                    })),
                });
            }
            out
        });
        let mut health = crate::verdict::outcome::Health::default();
        for (ns, before) in namespaces.iter().zip(drops_before) {
            if let (Some(b), Some(a)) = (before, crate::verdict::outcome::listen_drops(ns)) {
                if a > b {
                    health.listen_drops.push((ns.name().to_string(), a - b));
                }
            }
        }
        health.stub_trouble = self._stubs.iter().flat_map(|s| s.trouble()).collect();
        health.run_trouble =
            self.tracer.as_ref().and_then(|t| t.check(self.topology.ns(Host::LocalPod), self.config.rules_timeout));
        let done = requests
            .into_iter()
            .zip(probes)
            .map(|(r, done)| {
                let (observation, client, ms) = match (done, &r.target) {
                    (Some(done), _) => done,
                    (None, Ok(target)) => self.probe_invalid(r.from, *target),
                    (None, Err(e)) => (Observation::Failed { stage: "setup".into(), detail: e.to_string() }, None, 0),
                };
                // The tracer follows TCP SYNs; a datagram's hops are its answer.
                let path = match (&self.tracer, &r.target) {
                    (Some(tracer), Ok(target)) if r.protocol == Protocol::Tcp => {
                        Some(tracer.path(client, r.from == Host::LocalPod, *target, &observation))
                    }
                    _ => None,
                };
                ProbeDone { observation, path, ms }
            })
            .collect();
        (done, health)
    }

    /// One INVALID segment (IPv4 only), after the concurrent probes: it
    /// waits out a short window when nothing answers.
    fn probe_invalid(
        &self,
        from: Host,
        target: std::net::SocketAddr,
    ) -> (Observation, Option<std::net::SocketAddr>, u64) {
        let started = Instant::now();
        let obs = match (target, self.topology.config.address_of(from, Family::Ipv4)) {
            (std::net::SocketAddr::V4(to), std::net::IpAddr::V4(src)) => {
                probe::run_invalid(self.topology.ns(from), src, to, next_probe_id(), Duration::from_millis(300))
            }
            _ => Observation::Failed {
                stage: "setup".into(),
                detail: format!("an INVALID segment is sent over IPv4 only, not to {target}"),
            },
        };
        (obs, None, started.elapsed().as_millis() as u64)
    }

    /// The rules as installed, for reports: every front end's listing
    /// (iptables-save / ip6tables-save of the backends in use, `nft list
    /// ruleset` where nftables itself is used), the harness's own trace table
    /// left out.
    pub fn installed_rules(&self) -> Result<String> {
        self.listing(false)
    }

    /// The rules under test as the kernel holds them now, counters zeroed:
    /// every listing, `nft list ruleset` included whatever the backend (a
    /// rule added to any table shows).
    pub fn ruleset_snapshot(&self) -> Result<String> {
        Ok(normalize_counters(&self.listing(true)?))
    }

    fn listing(&self, every_nft_table: bool) -> Result<String> {
        let ns = self.topology.ns(Host::LocalPod);
        let frontend = self.config.rules.frontend(self.config.backend);
        let snap = netfilter::snapshot(ns, frontend, self.config.rules_timeout)?;
        let mut out = String::new();
        let saves = [
            ("iptables-nft-save", &snap.iptables_nft),
            ("ip6tables-nft-save", &snap.ip6tables_nft),
            ("iptables-legacy-save", &snap.iptables_legacy),
            ("ip6tables-legacy-save", &snap.ip6tables_legacy),
        ];
        for (tool, text) in saves {
            if let Some(t) = text.as_deref().filter(|t| t.lines().any(|l| l.starts_with("-A ") || l.starts_with(':'))) {
                out.push_str(&format!(
                    "# {tool}\n{}",
                    t.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect::<String>()
                ));
            }
        }
        let native = !matches!(frontend, source::Frontend::IptablesNft | source::Frontend::IptablesLegacy);
        if let Some(nft) = snap.nft.as_ref().filter(|_| every_nft_table || native) {
            let listing: String =
                nft.lines().map(|l| format!("{}\n", l.split(" # handle ").next().unwrap_or(l))).collect();
            let listing = strip_table(&listing, crate::netfilter::trace::trace_table());
            if !listing.trim().is_empty() {
                out.push_str(&format!("# nft list ruleset\n{listing}"));
            }
        }
        Ok(out)
    }
}

/// `[12:345]` -> `[0:0]`, `packets 3 bytes 180` -> `packets 0 bytes 0`;
/// comment lines (timestamps) dropped.
fn normalize_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words: Vec<String> = Vec::new();
        let mut zero_next = false;
        for w in line.split(' ') {
            let w = if zero_next && w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() {
                "0".to_string()
            } else if w.starts_with('[')
                && w.ends_with(']')
                && w[1..w.len() - 1].split(':').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            {
                "[0:0]".to_string()
            } else {
                w.to_string()
            };
            zero_next = w == "packets" || w == "bytes";
            words.push(w);
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// `nft list ruleset` without the block of table `name`.
fn strip_table(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        // Only the tracer's own (family inet): a user's table of the same
        // name in another family is part of the rules.
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"table") && words.get(1) == Some(&"inet") && words.get(2) == Some(&name) {
            skipping = true;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
        if skipping && line == "}" {
            skipping = false;
        }
    }
    out
}

/// Delete every conntrack entry in `ns` (ctnetlink IPCTNL_MSG_CT_DELETE
/// without a tuple, both families): after a rule swap a new probe that
/// happens to reuse an old source port must meet the new rules, not an old
/// connection's NAT binding.
fn flush_conntrack(ns: &crate::sandbox::ns::Namespace) -> Result<()> {
    use crate::netfilter::netlink as nl;
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    let doing = format!("flushing conntrack in namespace {}", ns.name());
    let acked = ns.run(|| -> std::io::Result<()> {
        let sock = nl::Socket::open(false)?;
        sock.set_receive_timeout(Duration::from_secs(5))?;
        let msg =
            nl::request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, nl::NLM_F_REQUEST | nl::NLM_F_ACK, 1, 0, 0, &[]);
        sock.send(&msg)?;
        let mut buf = vec![0u8; 8192];
        let n = sock.recv(&mut buf)?;
        for m in nl::messages(&buf[..n]).into_iter().flatten() {
            match m.error {
                // ENOENT: the table was empty already.
                Some(0) | Some(libc::ENOENT) => return Ok(()),
                Some(e) => return Err(std::io::Error::from_raw_os_error(e.abs())),
                None => {}
            }
        }
        Err(std::io::Error::other("no acknowledgement"))
    })?;
    acked.map_err(Error::io(doing))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_zeroed_and_the_trace_table_dropped() {
        let text = "# Generated 12:00\n:OUTPUT ACCEPT [12:720]\n-A OUTPUT -j X\ntable inet sidecheck_trace {\n\tchain a {\n\t}\n}\ntable ip sidecheck_trace {\n}\ntable ip nat {\n\tcounter packets 3 bytes 180 jump X\n}\n";
        let got = strip_table(&normalize_counters(text), "sidecheck_trace");
        // A user's `ip sidecheck_trace` stays: only the tracer's inet table goes.
        assert_eq!(
            got,
            ":OUTPUT ACCEPT [0:0]\n-A OUTPUT -j X\ntable ip sidecheck_trace {\n}\ntable ip nat {\n\tcounter packets 0 bytes 0 jump X\n}\n"
        );
    }
}

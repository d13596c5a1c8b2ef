//! Running probes in a session: every trial's connection at once, each
//! admitted within the budget, then judged against its scenario.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Session;
use crate::base::net::Family;
use crate::model::scenario::{Protocol, Scenario};
use crate::model::topology::Host;
use crate::netfilter;
use crate::probe::{self, Observation};
use crate::rules::source::RuleSource;
use crate::verdict::{self, PathCheck, TrialResult};
use crate::Result;

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

impl Session {
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

    /// Run each (scenario, family) case once, all at once.
    pub fn run_cases(&self, cases: &[(Scenario, Family)], assert_paths: bool) -> Vec<TrialResult> {
        let mut label = self.config.rules.label();
        // The built-in rules as an nft ruleset are a rule set of their own.
        if matches!(self.config.rules, RuleSource::Builtin(_))
            && netfilter::for_backend(self.config.backend).format() == netfilter::RuleFormat::Nft
        {
            label.push_str(&format!("-{}", self.config.backend.name()));
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
        let trace_losses = self.tracer.as_ref().map_or(0, |t| t.losses());
        let t = self.config.probe_timeouts;
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
                let permit = crate::sandbox::admission::admit(self.in_flight).await;
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
                        let legs = crate::verdict::legs::legs(tracer.proxy(), client, *target, &observation);
                        Some(tracer.path(legs, r.from == Host::LocalPod, trace_losses))
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
}

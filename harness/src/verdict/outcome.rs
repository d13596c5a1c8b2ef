//! The third outcome: a trial the harness could not test. A FAIL must
//! always mean the rules sent the connection somewhere else; when the
//! evidence says the harness itself was in trouble (out of descriptors or
//! threads, a stub that dropped the connection, trace events the kernel
//! dropped, the tracer's table changed) the trial is an ERROR and the run
//! exits 2. Full accept queues are not among them: a redirect loop in the
//! rules floods them. docs/verdicts.md explains each signal.

use crate::probe::Observation;
use crate::sandbox::ns::Namespace;
use crate::verdict::ending::{Cause, Ending};
use crate::verdict::{Outcome, TrialResult};

/// What the run saw of its own health while the probes ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// SYNs dropped by full accept queues (TcpExt ListenDrops), per
    /// namespace, during the probes: the harness overloaded its listeners.
    pub listen_drops: Vec<(String, u64)>,
    /// What the stubs logged about connections they could not serve.
    pub stub_trouble: Vec<String>,
    /// Trouble that spoils every trial of the run (the trace table changed).
    pub run_trouble: Option<String>,
}

/// Why the harness, not the rules, is to blame for this observation.
pub fn harness_cause(obs: &Observation, trace_complete: bool, health: &Health) -> Option<String> {
    let ending = Ending::of(obs);
    let text = match &ending {
        // No socket, or the probe task died: nothing was sent.
        Ending::ClientFailed { cause: Cause::NotSent, detail, .. } => {
            return Some(format!("the probe could not be sent: {detail}"))
        }
        Ending::ClientFailed { cause: Cause::MixedUp, detail, .. } => {
            return Some(format!(
                "the harness mixed up its own connections (the answer on this probe's connection is another probe's): {detail}"
            ))
        }
        Ending::Overloaded { port, message } => {
            return Some(format!("the stub on port {port} had no thread for the connection ({message}){}", stub_log(health)))
        }
        Ending::Reached { .. } | Ending::Loop { .. } => return None,
        Ending::NotForwarded { message: text, cause, .. } | Ending::ClientFailed { detail: text, cause, .. } => {
            if let Cause::Resources(name) = cause {
                return Some(format!("out of resources ({name}): {text}"));
            }
            text
        }
    };
    if !trace_complete {
        return Some(format!(
            "{text}; the trace is incomplete (the kernel dropped trace events, or two connections of the run shared this leg's addresses and ports), so where the SYN went cannot be told"
        ));
    }
    None
}

fn stub_log(health: &Health) -> String {
    match health.stub_trouble.first() {
        Some(line) => format!("; the stub logged: {line}"),
        None => String::new(),
    }
}

/// Turn a FAIL into an ERROR when the harness was to blame. A pass stays a
/// pass (the connection went where the rules should send it), unless the
/// run's trouble spoils every trial: something rewrote the ruleset while
/// the probes ran, so what passed is not what was installed.
pub fn settle(r: &mut TrialResult, obs: &Observation, trace_complete: bool, health: &Health) {
    if let Some(t) = &health.run_trouble {
        r.outcome = Outcome::Error;
        r.message = format!("the harness could not test this: {t}\n  (what was seen: {})", r.message);
        return;
    }
    if r.outcome != Outcome::Fail {
        return;
    }
    if let Some(cause) = harness_cause(obs, trace_complete, health) {
        r.outcome = Outcome::Error;
        r.message = format!("the harness could not test this: {cause}\n  (what was seen: {})", r.message);
        return;
    }
    // The ports and the server were as expected and only the rule path
    // differs, but the trace cannot be trusted for this leg: the difference
    // may be the trace's (a connection of the run with the same addresses
    // and ports, lost events), not the rules'.
    if !trace_complete && path_only(r) {
        r.outcome = Outcome::Error;
        r.message = format!(
            "the harness could not test this: only the rule path differs, and the trace is incomplete (the kernel dropped trace events, or two connections of the run shared a leg's addresses and ports), so the path cannot be told\n  (what was seen: {})",
            r.message
        );
        return;
    }
    // Full accept queues during a timeout are evidence, not an excuse:
    // admission control keeps the harness's own connections far below the
    // listeners' backlog, and a redirect loop in the rules under test (each
    // pass opens a new connection) is what floods them (ci/mutate's TPROXY
    // mutants do exactly that). The FAIL stands and says so.
    if let Some(text) = timeout_text(obs) {
        if !health.listen_drops.is_empty() {
            let drops: Vec<String> = health.listen_drops.iter().map(|(ns, n)| format!("{n} in {ns}")).collect();
            r.message = format!(
                "{}\n  ({text}; meanwhile full accept queues dropped SYNs ({}): a redirect loop in the rules does this)",
                r.message,
                drops.join(", ")
            );
        }
    }
}

/// A failure in the rule path alone: the connection passed the expected
/// ports and reached the expected server.
fn path_only(r: &TrialResult) -> bool {
    r.observed.ports == r.expected.ports && r.observed.server.as_deref() == Some(r.expected.server.as_str())
}

/// The failure text of an observation that ended in a timeout.
fn timeout_text(obs: &Observation) -> Option<String> {
    let ending = Ending::of(obs);
    match ending.cause() {
        Some(Cause::TimedOut) => ending.error_text().map(str::to_string),
        _ => None,
    }
}

/// TcpExt ListenDrops of `ns` (SYNs or handshakes dropped at a listener).
pub fn listen_drops(ns: &Namespace) -> Option<u64> {
    // /proc/thread-self/net is the reading thread's namespace.
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/netstat")).ok()?.ok()?;
    parse_netstat(&text, "TcpExt:", "ListenDrops")
}

fn parse_netstat(text: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecheck_wire::{Answer, Probe};

    fn failed(stage: &str, detail: &str) -> Observation {
        Observation::Failed { stage: stage.into(), detail: detail.into() }
    }

    fn error_end(role: &str, message: &str) -> Observation {
        Observation::Answered(Answer {
            probe: Probe::new(1),
            end: sidecheck_wire::End::Error { role: role.into(), port: 15001, message: message.into() },
        })
    }

    /// A trial the rules failed on `obs` (what [`super::settle`] starts from).
    fn failing(obs: &Observation) -> TrialResult {
        TrialResult {
            name: "t".into(),
            scenario: "t".into(),
            backend: "nft".into(),
            family: "ipv4".into(),
            flow: 1,
            description: String::new(),
            outcome: Outcome::Fail,
            expected: crate::model::scenario::Expected {
                ports: vec![15006, 8080],
                server: "local-app".into(),
                path: None,
                note: None,
            },
            observed: crate::verdict::observe(obs),
            message: "expected 15006 -> local-app:8080".into(),
            duration_ms: 0,
        }
    }

    #[test]
    fn resource_exhaustion_is_the_harness() {
        let h = Health::default();
        for obs in [
            failed("setup", "creating a socket as uid 1000: Too many open files (os error 24)"),
            failed("connect", "10.244.0.20:9090: Cannot assign requested address (os error 99)"),
            error_end("outbound", "10.244.0.20:9090_Too_many_open_files_(os_error_24)"),
            error_end(sidecheck_wire::stub::OVERLOADED, "could not start a thread for it"),
            failed("probe", "the probe task failed: panicked"),
        ] {
            assert!(harness_cause(&obs, true, &h).is_some(), "{obs:?}");
        }
    }

    #[test]
    fn what_the_rules_do_stays_a_failure() {
        let h = Health::default();
        for obs in [
            failed("connect", "no answer to the SYN for 10.244.0.20:9090 within 2000 ms: a rule dropped it"),
            failed("connect", "10.244.0.20:9090: Connection refused (os error 111)"),
            error_end("outbound", "10.244.0.20:9090_Connection_refused_(os_error_111)"),
            error_end("inbound", "10.244.0.10:8080 no answer within 1500 ms"),
        ] {
            assert_eq!(harness_cause(&obs, true, &h), None, "{obs:?}");
        }
    }

    #[test]
    fn a_timeout_while_listeners_overflowed_stays_the_rules_failure_with_the_evidence() {
        let h = Health { listen_drops: vec![("sidecheck-1-0-local-pod".into(), 12)], ..Health::default() };
        let t = failed("connect", "no answer to the SYN for 10.244.0.20:9090 within 2000 ms");
        assert_eq!(harness_cause(&t, true, &h), None);
        let mut r = failing(&t);
        settle(&mut r, &t, true, &h);
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.message.contains("12 in sidecheck-1-0-local-pod") && r.message.contains("redirect loop"),
            "{}",
            r.message
        );
    }

    #[test]
    fn an_etimedout_while_listeners_overflowed_is_the_same_evidence() {
        // ETIMEDOUT's text, as the client and as fake-envoy (its upstream) report it.
        let h = Health { listen_drops: vec![("sidecheck-1-0-local-pod".into(), 12)], ..Health::default() };
        for t in [
            failed("connect", "10.244.0.20:9090: Connection timed out (os error 110)"),
            error_end("outbound", "10.244.0.20:9090_Connection_timed_out_(os_error_110)"),
        ] {
            assert_eq!(harness_cause(&t, true, &h), None, "{t:?}");
            let mut r = failing(&t);
            settle(&mut r, &t, true, &h);
            assert_eq!(r.outcome, Outcome::Fail);
            assert!(r.message.contains("Connection timed out") && r.message.contains("redirect loop"), "{}", r.message);
        }
    }

    #[test]
    fn an_answer_for_another_probe_is_the_harness_error() {
        let to: std::net::SocketAddr = "10.244.0.20:9090".parse().unwrap();
        let answer = |id| Answer {
            probe: Probe::new(id),
            end: sidecheck_wire::End::Server { name: "remote-app".into(), port: 9090, peer: to },
        };
        assert!(matches!(crate::probe::own_answer(answer(5), 5, to), Observation::Answered(_)));
        let crossed = crate::probe::own_answer(answer(7), 5, to);
        let mut r = failing(&crossed);
        settle(&mut r, &crossed, true, &Health::default());
        assert_eq!(r.outcome, Outcome::Error, "{}", r.message);
        assert!(
            r.message.contains("mixed up its own connections") && r.message.contains("probe 7 instead of 5"),
            "{}",
            r.message
        );
    }

    #[test]
    fn lost_trace_events_make_a_failure_an_error_but_not_a_pass() {
        let obs = failed("connect", "10.244.0.20:9090: Connection refused (os error 111)");
        assert!(harness_cause(&obs, false, &Health::default()).unwrap().contains("dropped trace events"));
    }

    /// Reached local-app:8080 through the inbound listener 15006.
    fn reached() -> Observation {
        let mut probe = Probe::new(1);
        probe.hops.push(sidecheck_wire::Hop {
            role: "inbound".into(),
            port: 15006,
            original_dst: "10.244.0.10:8080".parse().unwrap(),
            upstream: Some(("127.0.0.6:40000".parse().unwrap(), "10.244.0.10:8080".parse().unwrap())),
        });
        let end = sidecheck_wire::End::Server {
            name: "local-app".into(),
            port: 8080,
            peer: "127.0.0.6:40000".parse().unwrap(),
        };
        Observation::Answered(Answer { probe, end })
    }

    #[test]
    fn a_path_only_failure_on_an_incomplete_trace_is_the_harness() {
        let h = Health::default();
        // Ports and server as expected, the path differs, the trace cannot be trusted.
        let mut r = failing(&reached());
        settle(&mut r, &reached(), false, &h);
        assert_eq!(r.outcome, Outcome::Error, "{}", r.message);
        assert!(r.message.contains("only the rule path differs, and the trace is incomplete"), "{}", r.message);
        // The same on a complete trace: the rules' path, a FAIL.
        let mut r = failing(&reached());
        settle(&mut r, &reached(), true, &h);
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.message);
        // Other ports come from the proxy's own hops, not the trace: a FAIL either way.
        let mut r = failing(&reached());
        r.expected.ports = vec![15001, 15006, 8080];
        settle(&mut r, &reached(), false, &h);
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.message);
    }

    #[test]
    fn netstat_fields_are_found_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_netstat(text, "TcpExt:", "ListenDrops"), Some(9));
        assert_eq!(parse_netstat(text, "TcpExt:", "Nope"), None);
    }
}

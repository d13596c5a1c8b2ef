//! Where a session's time goes, for `ci/bench` and whoever tunes it: with
//! `SIDECHECK_PHASES=1` each session prints one line to stderr when it ends,
//!
//! ```text
//! sidecheck-phases: namespaces=3.1 links=9.8 sysctls=1.2 stubs=6.0 rules=21.4 tracer=8.3 probes=40.2 teardown=12.9 total=103.0
//! ```
//!
//! (milliseconds; the rules and the tracer are installed while the stubs
//! start, so those phases overlap and the sum can exceed the total); with
//! `SIDECHECK_PHASES=FILE` the line is appended to
//! FILE instead, so a test's child runs can be summed afterwards. Off, it
//! costs one environment lookup per session.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The phases in the order a session goes through them.
pub const PHASES: [&str; 8] = ["namespaces", "links", "sysctls", "stubs", "rules", "tracer", "probes", "teardown"];

thread_local! {
    // Time spent in phases that happen deep inside others (namespace
    // creation inside the topology build, sysctl writes inside topology and
    // tracer set-up). A session's start runs on one thread, so the building
    // thread's totals are that session's.
    static NESTED: RefCell<[Duration; PHASES.len()]> = RefCell::new(Default::default());
}

fn index(phase: &str) -> usize {
    PHASES.iter().position(|p| *p == phase).expect("a phase name from PHASES")
}

/// Add `d` to this thread's time in `phase`, which [`Phases::time`] then
/// takes out of the phase it happened within.
pub fn record(phase: &str, d: Duration) {
    NESTED.with(|n| n.borrow_mut()[index(phase)] += d);
}

fn nested() -> [Duration; PHASES.len()] {
    NESTED.with(|n| *n.borrow())
}

/// Where the line goes, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    Stderr,
    File(std::path::PathBuf),
}

impl Sink {
    /// From the value of SIDECHECK_PHASES: unset, empty or `0` is off.
    pub fn parse(value: Option<&str>) -> Option<Sink> {
        match value {
            None | Some("") | Some("0") => None,
            Some("1") => Some(Sink::Stderr),
            Some(path) => Some(Sink::File(path.into())),
        }
    }

    pub fn from_env() -> Option<Sink> {
        Sink::parse(std::env::var("SIDECHECK_PHASES").ok().as_deref())
    }
}

/// One session's phase times.
#[derive(Debug)]
pub struct Phases {
    sink: Option<Sink>,
    started: Instant,
    times: [Duration; PHASES.len()],
    teardown_from: Option<Instant>,
}

impl Phases {
    pub fn new() -> Phases {
        Phases { sink: Sink::from_env(), started: Instant::now(), times: Default::default(), teardown_from: None }
    }

    /// Times to add to another's ([`Phases::absorb`]): never reported itself.
    pub fn silent() -> Phases {
        Phases { sink: None, started: Instant::now(), times: Default::default(), teardown_from: None }
    }

    /// Add `d` to `phase` (one of [`PHASES`]; another name is a bug here).
    pub fn add(&mut self, phase: &str, d: Duration) {
        self.times[index(phase)] += d;
    }

    /// Time `f` as `phase`, less what it [`record`]ed for other phases
    /// (those get it).
    pub fn time<T>(&mut self, phase: &str, f: impl FnOnce() -> T) -> T {
        let (t, before) = (Instant::now(), nested());
        let out = f();
        let elapsed = t.elapsed();
        let mut inner = Duration::ZERO;
        for (i, (after, before)) in nested().iter().zip(before).enumerate() {
            let d = after.saturating_sub(before);
            self.times[i] += d;
            inner += d;
        }
        self.add(phase, elapsed.saturating_sub(inner));
        out
    }

    /// Add another's times to these (a session's later work).
    pub fn absorb(&mut self, other: &Phases) {
        for (t, o) in self.times.iter_mut().zip(other.times) {
            *t += o;
        }
    }

    /// Teardown starts now; it ends when this value is dropped.
    pub fn teardown_starts(&mut self) {
        self.teardown_from = Some(Instant::now());
    }

    /// The report line (times in ms, one decimal).
    pub fn line(&self) -> String {
        let mut out = String::from("sidecheck-phases:");
        for (name, d) in PHASES.iter().zip(self.times) {
            out.push_str(&format!(" {name}={:.1}", d.as_secs_f64() * 1000.0));
        }
        out.push_str(&format!(" total={:.1}", self.started.elapsed().as_secs_f64() * 1000.0));
        out
    }
}

impl Default for Phases {
    fn default() -> Self {
        Phases::new()
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else { return };
        if let Some(t) = self.teardown_from {
            self.add("teardown", t.elapsed());
        }
        let line = self.line();
        match sink {
            Sink::Stderr => eprintln!("{line}"),
            Sink::File(path) => {
                use std::io::Write;
                // One write of the whole line: concurrent runs appending to
                // the same file never interleave within a line (O_APPEND).
                let opened = std::fs::OpenOptions::new().create(true).append(true).open(&path);
                if let Ok(mut f) = opened {
                    let _ = f.write_all(format!("{line}\n").as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_chooses_the_sink() {
        assert_eq!(Sink::parse(None), None);
        assert_eq!(Sink::parse(Some("0")), None);
        assert_eq!(Sink::parse(Some("")), None);
        assert_eq!(Sink::parse(Some("1")), Some(Sink::Stderr));
        assert_eq!(Sink::parse(Some("/tmp/p.log")), Some(Sink::File("/tmp/p.log".into())));
    }

    #[test]
    fn the_line_names_every_phase_with_its_time() {
        let mut p = Phases { sink: None, started: Instant::now(), times: Default::default(), teardown_from: None };
        p.add("rules", Duration::from_micros(21_400));
        p.add("rules", Duration::from_micros(1_000));
        p.add("probes", Duration::from_millis(3));
        let line = p.line();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "sidecheck-phases:");
        let names: Vec<&str> = fields[1..=PHASES.len()].iter().map(|f| f.split('=').next().unwrap()).collect();
        assert_eq!(names, PHASES);
        assert!(fields.contains(&"rules=22.4"), "{line}");
        assert!(fields.contains(&"probes=3.0"), "{line}");
        assert!(fields.contains(&"stubs=0.0"), "{line}");
        assert!(fields.last().unwrap().starts_with("total="), "{line}");
    }

    #[test]
    fn nested_time_moves_to_its_own_phase_on_this_thread_only() {
        let mut p = Phases { sink: None, started: Instant::now(), times: Default::default(), teardown_from: None };
        p.time("links", || {
            std::thread::sleep(Duration::from_millis(30));
            record("sysctls", Duration::from_millis(20));
            // Another thread's records are another session's.
            std::thread::spawn(|| record("namespaces", Duration::from_secs(5))).join().unwrap();
        });
        let ms = |phase: &str| p.times[index(phase)].as_millis();
        assert_eq!(ms("sysctls"), 20);
        assert_eq!(ms("namespaces"), 0);
        assert!((10..1000).contains(&ms("links")), "links {} ms: the 20 ms of sysctls taken out", ms("links"));
    }
}

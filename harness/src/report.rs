//! Printing results: a table for people, one JSON object for programs.

use std::fmt::Write as _;

use serde::Serialize;

use crate::verdict::{Outcome, TrialResult};

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where the rules came from.
    pub rules: String,
    pub backend: String,
    /// The IP families tested.
    pub families: Vec<String>,
    pub trials: Vec<TrialResult>,
    pub passed: usize,
    pub failed: usize,
}

impl Report {
    pub fn new(rules: String, backend: String, trials: Vec<TrialResult>) -> Report {
        let passed = trials.iter().filter(|t| t.outcome == Outcome::Pass).count();
        let failed = trials.len() - passed;
        Report { rules, backend, families: Vec::new(), trials, passed, failed }
    }

    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// One row per trial (expected ports, observed ports, verdict), the
    /// failures spelled out below, and a closing `N passed, M failed` line.
    pub fn to_human(&self) -> String {
        let route = |ports: &[u16], end: &str| {
            let mut parts: Vec<String> = ports.iter().map(u16::to_string).collect();
            if parts.is_empty() {
                return "-".to_string();
            }
            if !end.is_empty() {
                *parts.last_mut().unwrap() = end.to_string();
            }
            parts.join(" > ")
        };
        let rows: Vec<[String; 5]> = self
            .trials
            .iter()
            .map(|t| {
                let want = route(&t.expected.ports, &format!("{}:{}", t.expected.server, t.expected.ports.last().copied().unwrap_or(0)));
                let got_end = match &t.observed.server {
                    Some(s) => format!("{s}:{}", t.observed.ports.last().copied().unwrap_or(0)),
                    None if !t.observed.ports.is_empty() && t.observed.end.starts_with("loop") => {
                        format!("LOOP@{}", t.observed.ports.last().unwrap())
                    }
                    None => String::new(),
                };
                let mut got = route(&t.observed.ports, &got_end);
                if t.observed.server.is_none() && !t.observed.end.starts_with("loop") {
                    got = if t.observed.ports.is_empty() { "ERROR".into() } else { format!("{got} > ERROR") };
                }
                let verdict = match t.outcome {
                    Outcome::Pass => "pass",
                    Outcome::Fail => "FAIL",
                };
                [t.flow.to_string(), t.name.clone(), want, got, verdict.to_string()]
            })
            .collect();
        let header = ["FLOW", "TRIAL", "EXPECTED", "OBSERVED", "VERDICT"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "rules: {}  (backend: {}; families: {})", self.rules, self.backend, self.families.join(", "));
        for r in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        for t in self.trials.iter().filter(|t| t.outcome == Outcome::Fail) {
            let _ = writeln!(out, "\nFAIL {} (flow {}): {}\n  {}", t.name, t.flow, t.description, t.message);
        }
        let _ = writeln!(out, "\n{} passed, {} failed", self.passed, self.failed);
        out
    }
}

/// `sidecheck trace`'s human output: the path, then each leg's rules with
/// their text.
pub fn trace_text(
    from: &str,
    uid: u32,
    to: std::net::SocketAddr,
    rules: &str,
    observed: &crate::verdict::Observed,
    path: Option<&crate::trace::ObservedPath>,
    index: &crate::trace::RuleIndex,
) -> String {
    use crate::trace::Step;
    let mut out = String::new();
    let _ = writeln!(out, "{from} (uid {uid}) -> {to}   rules: {rules}");
    let ports: Vec<String> = observed.ports.iter().map(u16::to_string).collect();
    let _ = writeln!(out, "ports: {}   ended: {}", if ports.is_empty() { "-".into() } else { ports.join(" > ") }, observed.end);
    let Some(path) = path else {
        let _ = writeln!(out, "(not traced)");
        return out;
    };
    let _ = writeln!(out, "path:  {}", path.line);
    if !path.complete {
        let _ = writeln!(out, "warning: the kernel dropped trace events; the path may be incomplete");
    }
    for (i, leg) in path.legs.iter().enumerate() {
        let _ = writeln!(out, "\nleg {}: {} -> {}, reached {}", i + 1, leg.src, leg.dst, leg.reached);
        if leg.events.is_empty() {
            let _ = writeln!(out, "  (no rule of the rules under test saw this SYN)");
        }
        for e in &leg.events {
            let (what, text) = match &e.step {
                Step::Rule(n) => (format!("rule {n}"), index.rule_text(e.nfproto, &e.table, &e.chain, *n).unwrap_or("").to_string()),
                Step::Return => ("end of chain".into(), "(no rule matched: back to the calling chain)".into()),
                Step::Policy => ("policy".into(), "(the base chain's policy)".into()),
            };
            let _ = writeln!(out, "  {:<16} {:<18} {:<13} {}", e.table, e.chain, what, text);
        }
    }
    out
}

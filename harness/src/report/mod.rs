//! Printing results: a table for people, one JSON object for programs.

pub mod annotate;
pub mod outputs;

use std::fmt::Write as _;

use serde::Serialize;

use crate::base::text::escape_controls;
use crate::verdict::{Outcome, TrialResult};

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where the rules came from.
    pub rules: String,
    /// The mesh profile the expectations came from (`istio`, `linkerd`, ...).
    pub profile: String,
    pub backend: String,
    /// The IP families tested.
    pub families: Vec<String>,
    /// The rules as installed (what was actually tested), when read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ruleset: Option<String>,
    pub trials: Vec<TrialResult>,
    pub passed: usize,
    pub failed: usize,
    /// Trials the harness could not test (exit 2).
    pub errors: usize,
}

impl Report {
    pub fn new(rules: String, backend: String, trials: Vec<TrialResult>) -> Report {
        let passed = trials.iter().filter(|t| t.outcome == Outcome::Pass).count();
        let failed = trials.iter().filter(|t| t.outcome == Outcome::Fail).count();
        let errors = trials.iter().filter(|t| t.outcome == Outcome::Error).count();
        Report {
            rules,
            profile: "istio".into(),
            backend,
            families: Vec::new(),
            ruleset: None,
            trials,
            passed,
            failed,
            errors,
        }
    }

    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.errors == 0
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
                let want = route(
                    &t.expected.ports,
                    &format!("{}:{}", t.expected.server, t.expected.ports.last().copied().unwrap_or(0)),
                );
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
                    Outcome::Error => "ERROR",
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
        let _ =
            writeln!(out, "rules: {}  (backend: {}; families: {})", self.rules, self.backend, self.families.join(", "));
        for r in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        for t in self.trials.iter().filter(|t| t.outcome != Outcome::Pass) {
            let word = if t.outcome == Outcome::Error { "ERROR" } else { "FAIL" };
            let _ = writeln!(out, "\n{word} {} (flow {}): {}\n  {}", t.name, t.flow, t.description, t.message);
            // The paths one above the other, also when the ports failed.
            if let (Some(want), Some(got)) = (&t.expected.path, &t.observed.path) {
                if want != got && !t.message.contains("path expected:") {
                    for line in crate::verdict::path_diff(want, got).lines() {
                        let _ = writeln!(out, "  {line}");
                    }
                }
            }
        }
        let _ = write!(out, "\n{} passed, {} failed", self.passed, self.failed);
        if self.errors > 0 {
            let _ = write!(out, ", {} could not be tested (ERROR: the harness's trouble, not the rules')", self.errors);
        }
        out.push('\n');
        escape_controls(&out)
    }
}

/// `--color`: when the human table is coloured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour, given whether stdout is a terminal and the values of
    /// `NO_COLOR` and `CLICOLOR_FORCE`. Only `auto` reads them: `NO_COLOR`
    /// (non-empty) turns colour off, else `CLICOLOR_FORCE` (non-empty, not
    /// `0`) turns it on, else a terminal decides. `NO_COLOR` wins when both
    /// are set: it is the user's own opt-out.
    pub fn enabled(self, terminal: bool, no_color: Option<&str>, clicolor_force: Option<&str>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto if no_color.is_some_and(|v| !v.is_empty()) => false,
            ColorChoice::Auto if clicolor_force.is_some_and(|v| !v.is_empty() && v != "0") => true,
            ColorChoice::Auto => terminal,
        }
    }
}

impl Report {
    /// [`Report::to_human`], the verdict column and the FAIL lines coloured
    /// when `colour`.
    pub fn to_human_coloured(&self, colour: bool) -> String {
        let text = self.to_human();
        if !colour {
            return text;
        }
        text.lines()
            .map(|l| match l {
                l if l.ends_with("  pass") => format!("{}\x1b[32mpass\x1b[0m\n", &l[..l.len() - 4]),
                l if l.ends_with("  FAIL") => format!("{}\x1b[1;31mFAIL\x1b[0m\n", &l[..l.len() - 4]),
                l if l.starts_with("FAIL ") => format!("\x1b[1;31m{l}\x1b[0m\n"),
                l => format!("{l}\n"),
            })
            .collect()
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
    path: Option<&crate::netfilter::trace::ObservedPath>,
    index: &crate::netfilter::trace::RuleIndex,
) -> String {
    use crate::netfilter::trace::Step;
    let mut out = String::new();
    let _ = writeln!(out, "{from} (uid {uid}) -> {to}   rules: {rules}");
    let ports: Vec<String> = observed.ports.iter().map(u16::to_string).collect();
    let _ = writeln!(
        out,
        "ports: {}   ended: {}",
        if ports.is_empty() { "-".into() } else { ports.join(" > ") },
        observed.end
    );
    let Some(path) = path else {
        let _ = writeln!(out, "(not traced)");
        return escape_controls(&out);
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
                Step::Rule(n) => {
                    (format!("rule {n}"), index.rule_text(e.nfproto, &e.table, &e.chain, *n).unwrap_or("").to_string())
                }
                Step::Return => ("end of chain".into(), "(no rule matched: back to the calling chain)".into()),
                Step::Policy => ("policy".into(), "(the base chain's policy)".into()),
            };
            let _ = writeln!(out, "  {:<16} {:<18} {:<13} {}", e.table, e.chain, what, text);
        }
    }
    escape_controls(&out)
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

impl Report {
    /// One screen a generator author can paste into an issue: the verdict
    /// per scenario over every family, then a one-line statement.
    pub fn to_summary(&self) -> String {
        // (scenario, flow, [(family, passed)])
        type Row<'a> = (&'a str, u8, Vec<(&'a str, Outcome)>);
        let mut scenarios: Vec<Row<'_>> = Vec::new();
        for t in &self.trials {
            let pass = t.outcome;
            match scenarios.iter_mut().find(|(s, _, _)| *s == t.scenario) {
                Some(entry) => entry.2.push((&t.family, pass)),
                None => scenarios.push((&t.scenario, t.flow, vec![(&t.family, pass)])),
            }
        }
        let ok = scenarios.iter().filter(|(_, _, f)| f.iter().all(|(_, p)| *p == Outcome::Pass)).count();
        let families = if self.families.is_empty() {
            "-".to_string()
        } else {
            self.families.join("+").replace("ipv4", "IPv4").replace("ipv6", "IPv6")
        };
        let mut out = String::new();
        let _ = writeln!(out, "sidecheck conformance: {}", self.rules);
        let _ = writeln!(out, "profile {}, backend {}, families {}\n", self.profile, self.backend, families);
        for (name, flow, fams) in &scenarios {
            let cells: Vec<String> = fams.iter().map(|(f, p)| format!("{f} {}", outcome_word(*p))).collect();
            let _ = writeln!(out, "  flow {flow}  {name:<44} {}", cells.join("  "));
        }
        let verdict = if self.errors > 0 {
            "could not test"
        } else if ok == scenarios.len() {
            "conforms to"
        } else {
            "does not conform to"
        };
        let _ = writeln!(
            out,
            "\n{verdict} the {} sidecar capture contract: {ok}/{} flows, {families}, {}",
            capitalized(&self.profile),
            scenarios.len(),
            self.backend
        );
        escape_controls(&out)
    }

    /// JUnit XML: one `<testsuite>` per run, one `<testcase>` per trial
    /// (classname = the scenario's directory, name = the rest), a failing
    /// trial's message and path difference in `<failure>`.
    pub fn to_junit(&self) -> String {
        let seconds: f64 = self.trials.iter().map(|t| t.duration_ms as f64 / 1000.0).sum();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"sidecheck\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{seconds:.3}\">",
            self.trials.len(),
            self.failed,
            self.errors
        );
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{seconds:.3}\">",
            xml_escape(&format!("sidecheck: {} ({})", self.rules, self.backend)),
            self.trials.len(),
            self.failed,
            self.errors
        );
        for t in &self.trials {
            let (class, name) = t.name.split_once("::").unwrap_or(("sidecheck", &t.name));
            let time = t.duration_ms as f64 / 1000.0;
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
                xml_escape(class),
                xml_escape(name)
            );
            match t.outcome {
                Outcome::Pass => {
                    let _ = writeln!(out, "{open}/>");
                }
                Outcome::Error => {
                    let _ = writeln!(
                        out,
                        "{open}>\n      <error message=\"{}\" type=\"sidecheck.harness\">{}</error>\n    </testcase>",
                        xml_escape(t.message.lines().next().unwrap_or_default()),
                        xml_escape(&format!("flow {}: {}\n{}\n", t.flow, t.description, t.message))
                    );
                }
                Outcome::Fail => {
                    let summary = t.message.lines().next().unwrap_or_default();
                    let mut body = format!("flow {}: {}\n{}\n", t.flow, t.description, t.message);
                    if let (Some(want), Some(got)) = (&t.expected.path, &t.observed.path) {
                        if want != got {
                            body.push_str(&format!("\nexpected path: {want}\nobserved path: {got}\n"));
                        }
                    }
                    let _ = writeln!(
                        out,
                        "{open}>\n      <failure message=\"{}\" type=\"sidecheck.mismatch\">{}</failure>\n    </testcase>",
                        xml_escape(summary),
                        xml_escape(&body)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }

    /// Markdown for a GitHub job summary: a table of the trials, then per
    /// trial a Mermaid flowchart of the observed path (failing trials with
    /// the expected path beside it, the first difference highlighted).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.errors > 0 {
            "ERROR: could not test"
        } else if self.failed == 0 {
            "all passed"
        } else {
            "FAILED"
        };
        let errors = if self.errors > 0 { format!(", {} errors", self.errors) } else { String::new() };
        let _ = writeln!(out, "## sidecheck: {} passed, {} failed{errors} ({verdict})\n", self.passed, self.failed);
        let _ = writeln!(
            out,
            "Rules: `{}`, backend `{}`, families {}.\n",
            self.rules,
            self.backend,
            self.families.join(", ")
        );
        if let Some(rules) = &self.ruleset {
            let _ =
                writeln!(out, "<details><summary>The rules as installed</summary>\n\n```\n{}```\n</details>\n", rules);
        }
        out.push_str("| flow | trial | expected | observed | verdict |\n|---|---|---|---|---|\n");
        for t in &self.trials {
            let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" → ");
            let mark = match t.outcome {
                Outcome::Pass => "✅ pass",
                Outcome::Fail => "❌ **fail**",
                Outcome::Error => "⚠️ **ERROR**",
            };
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {mark} |",
                t.flow,
                t.name,
                ports(&t.expected.ports),
                ports(&t.observed.ports)
            );
        }
        for t in &self.trials {
            let Some(observed) = &t.observed.path else { continue };
            let _ = writeln!(
                out,
                "\n### {} `{}`\n\n{}\n",
                match t.outcome {
                    Outcome::Pass => "✅",
                    Outcome::Fail => "❌",
                    Outcome::Error => "⚠️",
                },
                t.name,
                t.description
            );
            let expected = t.expected.path.as_deref().filter(|e| *e != observed);
            if t.outcome != Outcome::Pass {
                let _ = writeln!(out, "{}\n", t.message.lines().next().unwrap_or_default());
            }
            out.push_str("```mermaid\nflowchart LR\n");
            let first_diff = expected.map(|e| {
                let (a, b): (Vec<&str>, Vec<&str>) = (e.split(" -> ").collect(), observed.split(" -> ").collect());
                a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
            });
            mermaid_chain(&mut out, "observed", "o", observed, first_diff);
            if let Some(e) = expected {
                mermaid_chain(&mut out, "expected", "e", e, first_diff);
            }
            out.push_str(
                "classDef diff fill:#f8d7da,stroke:#c00,color:#600\nclassDef envoy fill:#e7f0ff,stroke:#36c\n```\n",
            );
        }
        markdown_escaped(out)
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
        Outcome::Error => "ERROR",
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// One path as a Mermaid subgraph of nodes `{prefix}{i}`; from element
/// `diff` on, nodes are marked as differing.
fn mermaid_chain(out: &mut String, title: &str, prefix: &str, path: &str, diff: Option<usize>) {
    let _ = writeln!(out, "subgraph {prefix}[\"{title}\"]\ndirection LR");
    let parts: Vec<&str> = path.split(" -> ").collect();
    for (i, p) in parts.iter().enumerate() {
        let label = p.replace('"', "'");
        // Endpoints are capitalized words (`Envoy 15001 (Outbound)`, `Local
        // Pod`, `Istiod`); chains are upper case or nft's lower case.
        let mut chars = p.chars();
        let endpoint = chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let shape = if endpoint { format!("{prefix}{i}([\"{label}\"])") } else { format!("{prefix}{i}[\"{label}\"]") };
        let _ = writeln!(out, "{shape}");
        if i > 0 {
            let _ = writeln!(out, "{prefix}{} --> {prefix}{i}", i - 1);
        }
        if diff.is_some_and(|d| i >= d) {
            let _ = writeln!(out, "class {prefix}{i} diff");
        } else if p.starts_with("Envoy") {
            let _ = writeln!(out, "class {prefix}{i} envoy");
        }
    }
    out.push_str("end\n");
}

/// The Markdown report with control characters escaped.
fn markdown_escaped(text: String) -> String {
    escape_controls(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scenario::Expected;
    use crate::verdict::Observed;

    fn trial(name: &str, pass: bool, message: &str) -> TrialResult {
        TrialResult {
            name: name.into(),
            scenario: name.into(),
            backend: "nft".into(),
            family: "ipv4".into(),
            flow: 2,
            description: "app <to> remote & back".into(),
            outcome: if pass { Outcome::Pass } else { Outcome::Fail },
            expected: Expected {
                ports: vec![15001, 9090],
                server: "remote-app".into(),
                path: Some("OUTPUT -> ISTIO_OUTPUT RULE 9 -> Remote Pod".into()),
                note: None,
            },
            observed: Observed {
                ports: vec![15001, 9090],
                end: "remote-app:9090".into(),
                server: Some("remote-app".into()),
                peer: None,
                hops: vec![],
                path: Some(
                    if pass {
                        "OUTPUT -> ISTIO_OUTPUT RULE 9 -> Remote Pod"
                    } else {
                        "OUTPUT -> ISTIO_OUTPUT RULE 8 -> Remote Pod"
                    }
                    .into(),
                ),
                legs: vec![],
            },
            message: message.into(),
            duration_ms: 12,
        }
    }

    #[test]
    fn summary_counts_a_scenario_as_passing_only_in_every_family() {
        let mut a4 = trial("istio::a::nft::ipv4", true, "ok");
        a4.scenario = "istio::a".into();
        let mut a6 = trial("istio::a::nft::ipv6", false, "x");
        a6.scenario = "istio::a".into();
        a6.family = "ipv6".into();
        let mut b4 = trial("istio::b::nft::ipv4", true, "ok");
        b4.scenario = "istio::b".into();
        let mut r = Report::new("gen".into(), "nft".into(), vec![a4, a6, b4]);
        r.families = vec!["ipv4".into(), "ipv6".into()];
        let s = r.to_summary();
        assert!(s.contains("istio::a") && s.contains("ipv4 pass  ipv6 FAIL"), "{s}");
        assert!(
            s.trim_end().ends_with("does not conform to the Istio sidecar capture contract: 1/2 flows, IPv4+IPv6, nft"),
            "{s}"
        );
    }

    #[test]
    fn junit_has_a_testcase_per_trial_and_escapes_everything() {
        let r = Report::new(
            "rules <x> & \"y\"".into(),
            "nft".into(),
            vec![
                trial("istio::a::nft::ipv4", true, "ok"),
                trial("istio::b::nft::ipv4", false, "path <differs> & \u{1}"),
            ],
        );
        let x = r.to_junit();
        assert!(x.contains("<testsuites name=\"sidecheck\" tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("<testcase classname=\"istio\" name=\"a::nft::ipv4\" time=\"0.012\"/>"), "{x}");
        assert!(x.contains("<failure message=\"path &lt;differs&gt; &amp; ?\""), "{x}");
        assert!(x.contains("expected path: OUTPUT -&gt; ISTIO_OUTPUT RULE 9"), "{x}");
        assert!(!x.contains("\u{1}"));
        assert_eq!(x.matches("<testcase").count(), 2);
        assert!(x.contains("rules &lt;x&gt; &amp; &quot;y&quot;"));
    }

    #[test]
    fn human_output_aligns_the_paths_of_a_failing_trial() {
        let r = Report::new(
            "r".into(),
            "nft".into(),
            vec![trial("istio::b::nft::ipv4", false, "expected 15001 -> remote-app:9090, observed ...")],
        );
        let h = r.to_human();
        assert!(h.contains("  path expected: OUTPUT -> ISTIO_OUTPUT RULE 9 -> Remote Pod\n"), "{h}");
        assert!(h.contains("  path observed: OUTPUT -> ISTIO_OUTPUT RULE 8 -> Remote Pod\n"), "{h}");
        assert!(h.contains("first difference at element 2"), "{h}");
        assert!(h.trim_end().ends_with("0 passed, 1 failed"), "{h}");
    }

    #[test]
    fn markdown_draws_observed_and_expected_with_the_difference_marked() {
        let r = Report::new(
            "r".into(),
            "nft".into(),
            vec![trial("istio::b::nft::ipv4", false, "ports as expected, but the rule path differs")],
        );
        let m = r.to_markdown();
        assert!(m.starts_with("## sidecheck: 0 passed, 1 failed (FAILED)"), "{m}");
        assert!(m.contains("```mermaid\nflowchart LR\nsubgraph o[\"observed\"]"), "{m}");
        assert!(m.contains("subgraph e[\"expected\"]"), "{m}");
        // Element 2 (index 1) is the first difference, in both chains.
        assert!(m.contains("o1[\"ISTIO_OUTPUT RULE 8\"]\no0 --> o1\nclass o1 diff"), "{m}");
        assert!(m.contains("e1[\"ISTIO_OUTPUT RULE 9\"]\ne0 --> e1\nclass e1 diff"), "{m}");
        assert!(!m.contains("class o0 diff"));
    }

    #[test]
    fn colour_follows_the_flag_then_no_color_then_clicolor_force_then_the_terminal() {
        use ColorChoice::*;
        // (choice, terminal, NO_COLOR, CLICOLOR_FORCE) -> colour
        let matrix = [
            (Always, false, Some("1"), None, true),
            (Never, true, None, Some("1"), false),
            (Auto, true, None, None, true),
            (Auto, false, None, None, false),
            (Auto, true, Some("1"), None, false),
            (Auto, true, Some(""), None, true),
            (Auto, false, None, Some("1"), true),
            (Auto, false, None, Some("0"), false),
            (Auto, false, None, Some(""), false),
            (Auto, false, Some("1"), Some("1"), false),
        ];
        for (choice, terminal, no_color, force, want) in matrix {
            assert_eq!(
                choice.enabled(terminal, no_color, force),
                want,
                "{choice:?} tty={terminal} NO_COLOR={no_color:?} CLICOLOR_FORCE={force:?}"
            );
        }
    }

    #[test]
    fn colour_marks_only_the_verdicts_and_fail_lines() {
        let r = Report::new(
            "r".into(),
            "nft".into(),
            vec![trial("istio::a::nft::ipv4", true, "ok"), trial("istio::b::nft::ipv4", false, "bad")],
        );
        assert_eq!(r.to_human_coloured(false), r.to_human());
        let c = r.to_human_coloured(true);
        assert!(c.contains("  \x1b[32mpass\x1b[0m\n") && c.contains("  \x1b[1;31mFAIL\x1b[0m\n"), "{c}");
        assert!(c.contains("\x1b[1;31mFAIL istio::b::nft::ipv4 (flow 2)"), "{c}");
        // Nothing else: stripped of the escapes, the same text.
        let plain = c.replace("\x1b[32m", "").replace("\x1b[1;31m", "").replace("\x1b[0m", "");
        assert_eq!(plain, r.to_human());
        assert_eq!(c.matches("\x1b[0m").count(), 3, "{c}");
    }
}

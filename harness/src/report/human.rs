//! The human table (`--format human`), its colours, and `sidecheck trace`'s text.

use std::fmt::Write as _;

use crate::base::text::escape_controls;
use crate::report::Report;
use crate::verdict::ending::Ending;
use crate::verdict::Outcome;

impl Report {
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
                let looped = matches!(t.observed.end, Ending::Loop { .. });
                let got_end = match (&t.observed.server, &t.observed.end) {
                    (Some(s), _) => format!("{s}:{}", t.observed.ports.last().copied().unwrap_or(0)),
                    (None, Ending::Loop { port, .. }) if !t.observed.ports.is_empty() => format!("LOOP@{port}"),
                    (None, _) => String::new(),
                };
                let mut got = route(&t.observed.ports, &got_end);
                if t.observed.server.is_none() && !looped {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::presets::{failed_with, looped, not_forwarded, refused, trial};

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

    #[test]
    fn the_observed_column_says_how_each_probe_ended() {
        let r = Report::new(
            "r".into(),
            "nft".into(),
            vec![
                failed_with("istio::loop::nft::ipv4", &looped()),
                failed_with("istio::unforwarded::nft::ipv4", &not_forwarded()),
                failed_with("istio::refused::nft::ipv4", &refused()),
            ],
        );
        let h = r.to_human();
        let observed = |name: &str| {
            let row = h.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{h}"));
            row.split("  ").filter(|c| !c.is_empty()).map(str::trim).nth(3).unwrap_or_default().to_string()
        };
        assert_eq!(observed("istio::loop::"), "15001 > LOOP@15001", "{h}");
        assert_eq!(observed("istio::unforwarded::"), "15001 > ERROR", "{h}");
        assert_eq!(observed("istio::refused::"), "ERROR", "{h}");
    }
}

//! `--format junit`: one `<testsuite>` per run, one `<testcase>` per trial.

use std::fmt::Write as _;

use crate::report::Report;
use crate::verdict::Outcome;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::presets::trial;

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
}

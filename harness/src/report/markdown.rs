//! `--format markdown`: a GitHub job summary with Mermaid paths.

use std::fmt::Write as _;

use crate::base::text::escape_controls;
use crate::report::Report;
use crate::verdict::Outcome;

impl Report {
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
    use crate::report::presets::trial;

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
}

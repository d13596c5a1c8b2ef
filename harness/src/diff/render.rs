//! `sidecheck diff`'s formats: human, JSON, Markdown (Mermaid pairs), JUnit.

use std::fmt::Write as _;

use crate::diff::against::side_line;
use crate::diff::{DiffReport, Difference, Fate};
use crate::verdict::decision::{Decision, Divergence};

fn pad(s: &str, w: usize) -> String {
    format!("{s:<w$}")
}
impl DiffReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a diff report always serializes")
    }

    fn probe_line(d: &Difference) -> String {
        match &d.probe {
            Some(p) => format!("{} uid {} -> {}", p.from, p.uid, p.to),
            None => String::new(),
        }
    }

    /// Only the connections whose fate differs: ports and end on each side,
    /// then the first hook where the decisions part, both rules side by side.
    pub fn to_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "A: {}  (backend {})", self.a, self.backend_a);
        let _ = writeln!(out, "B: {}  (backend {})", self.b, self.backend_b);
        let what = if self.assert == "paths" { "ports and deciding rules" } else { "ports only" };
        let _ = writeln!(out, "compared {} connections ({}), {what}", self.compared.len(), self.families.join(", "));
        for d in &self.differences {
            let _ = writeln!(out, "\n{}  (flow {})  {}", d.name, d.flow, Self::probe_line(d));
            let (ra, rb) = (d.a.route(), d.b.route());
            let w = ra.len().max(2) + 2;
            let _ =
                writeln!(out, "  ports      A: {}B: {rb}{}", pad(&ra, w), if d.ports_differ { "" } else { "  (same)" });
            match &d.first {
                Some(f) => {
                    let _ = writeln!(out, "  first different decision: leg {}, {}", f.leg, f.hook);
                    let cell = |x: &Option<Decision>| match x {
                        Some(x) => (x.place(), x.text.clone()),
                        None => ("(no rule decided here)".to_string(), String::new()),
                    };
                    let ((pa, ta), (pb, tb)) = (cell(&f.a), cell(&f.b));
                    let w = pa.len().max(ta.len()) + 3;
                    let _ = writeln!(out, "    A: {}B: {pb}", pad(&pa, w));
                    let _ = writeln!(out, "       {}   {tb}", pad(&ta, w));
                }
                None => {
                    let _ = writeln!(out, "  (the same rules decided; the connections still ended differently)");
                }
            }
        }
        let _ = writeln!(out, "\n{} of {} connections differ", self.differences.len(), self.compared.len());
        out
    }

    /// A summary table, then per difference a Mermaid pair (A, B) with the
    /// first different decision highlighted.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = String::new();
        let _ = writeln!(out, "## sidecheck diff\n");
        let _ = writeln!(out, "- **A**: {} (backend {})", esc(&self.a), self.backend_a);
        let _ = writeln!(out, "- **B**: {} (backend {})", esc(&self.b), self.backend_b);
        let _ = writeln!(
            out,
            "- {} of {} connections differ ({}; compared: {})\n",
            self.differences.len(),
            self.compared.len(),
            self.families.join(", "),
            if self.assert == "paths" { "ports and deciding rules" } else { "ports only" }
        );
        if self.differences.is_empty() {
            return out;
        }
        let _ = writeln!(out, "| connection | A | B | first different decision |\n|---|---|---|---|");
        for d in &self.differences {
            let first = d.first.as_ref().map_or("-".to_string(), |f| {
                let t = |x: &Option<Decision>| x.as_ref().map_or("(none)".to_string(), |x| format!("`{}`", x.text));
                format!("leg {} {}: {} vs {}", f.leg, f.hook, t(&f.a), t(&f.b))
            });
            let _ = writeln!(out, "| `{}` | {} | {} | {} |", d.name, esc(&d.a.route()), esc(&d.b.route()), esc(&first));
        }
        for d in &self.differences {
            let _ = writeln!(out, "\n### `{}`\n\n{}\n", d.name, esc(&d.description));
            for (label, fate) in [("A", &d.a), ("B", &d.b)] {
                let _ = writeln!(
                    out,
                    "**{label}**: {}\n\n```mermaid\n{}```\n",
                    esc(&fate.route()),
                    mermaid(fate, d.first.as_ref())
                );
            }
        }
        out
    }

    /// One `<testcase>` per connection compared; a differing one fails.
    pub fn to_junit(&self) -> String {
        let x = |s: &str| {
            s.chars()
                .map(|c| match c {
                    '&' => "&amp;".to_string(),
                    '<' => "&lt;".to_string(),
                    '>' => "&gt;".to_string(),
                    '"' => "&quot;".to_string(),
                    c if (c as u32) < 0x20 && c != '\n' && c != '\t' => "?".to_string(),
                    c => c.to_string(),
                })
                .collect::<String>()
        };
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites><testsuite name=\"sidecheck diff\" tests=\"{}\" failures=\"{}\">",
            self.compared.len(),
            self.differences.len()
        );
        for name in &self.compared {
            let classname = name.split("::").next().unwrap_or("diff");
            match self.differences.iter().find(|d| &d.name == name) {
                None => {
                    let _ = writeln!(out, "<testcase classname=\"{}\" name=\"{}\"/>", x(classname), x(name));
                }
                Some(d) => {
                    let mut body = format!("A: {}\nB: {}", d.a.route(), d.b.route());
                    if let Some(f) = &d.first {
                        body.push_str(&format!(
                            "\nleg {}, {}\n{}\n{}",
                            f.leg,
                            f.hook,
                            side_line("A", &f.a),
                            side_line("B", &f.b)
                        ));
                    }
                    let _ = writeln!(
                        out,
                        "<testcase classname=\"{}\" name=\"{}\"><failure message=\"{}\">{}</failure></testcase>",
                        x(classname),
                        x(name),
                        x(&format!("A: {} / B: {}", d.a.route(), d.b.route())),
                        x(&body)
                    );
                }
            }
        }
        out.push_str("</testsuite></testsuites>\n");
        out
    }
}

/// One side's connection as a flowchart: per leg, each hook's deciding
/// rules, then what the leg reached; the first different decision in red.
fn mermaid(f: &Fate, first: Option<&Divergence>) -> String {
    let q = |s: &str| s.replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;");
    let mut out = String::from("flowchart LR\n");
    let mut prev: Option<String> = None;
    let mut n = 0;
    let mut node = |out: &mut String, label: String, hot: bool, prev: &mut Option<String>| {
        n += 1;
        let id = format!("n{n}");
        let _ = writeln!(out, "  {id}[\"{}\"]", q(&label));
        if let Some(p) = prev.as_ref() {
            let _ = writeln!(out, "  {p} --> {id}");
        }
        if hot {
            let _ = writeln!(out, "  style {id} fill:#fdd,stroke:#c00,stroke-width:2px");
        }
        *prev = Some(id);
    };
    let legs = f.decisions.legs.len().max(f.reached.len());
    for leg in 0..legs {
        let hooks = f.decisions.legs.get(leg).cloned().unwrap_or_default();
        let mut marked = false;
        for h in &hooks {
            let hot = first.is_some_and(|d| d.leg == leg + 1 && d.hook == h.hook);
            marked |= hot;
            let rules: Vec<String> = h.decisions.iter().map(|d| format!("{}: {}", d.place(), d.meaning)).collect();
            node(&mut out, format!("{} {}", h.hook, rules.join("; ")), hot, &mut prev);
        }
        if let Some(d) = first.filter(|d| d.leg == leg + 1 && !marked) {
            node(&mut out, format!("{}: no rule decided", d.hook), true, &mut prev);
        }
        let reached = f.reached.get(leg).cloned().unwrap_or_else(|| "?".into());
        node(&mut out, reached, false, &mut prev);
    }
    if legs == 0 {
        node(&mut out, f.end.to_string(), false, &mut prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::ProbeInfo;
    use crate::verdict::decision::{self, Decisions, HookDecisions};

    fn dec(leg: usize, text: &str) -> Decision {
        Decision {
            leg,
            hook: "OUTPUT".into(),
            table: "nat".into(),
            chain: "ISTIO_OUTPUT".into(),
            position: 4,
            text: text.into(),
            meaning: decision::meaning(text).canonical(),
        }
    }

    fn fate(text: &str) -> Fate {
        Fate {
            ports: vec![15000],
            end: crate::verdict::ending::Ending::Reached { server: "envoy-admin".into(), port: 15000 },
            path: None,
            decisions: Decisions {
                legs: vec![vec![HookDecisions { leg: 1, hook: "OUTPUT".into(), decisions: vec![dec(1, text)] }]],
            },
            reached: vec!["Envoy 15000".into()],
        }
    }

    fn report() -> DiffReport {
        let (a, b) = (
            fate("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
            fate("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"),
        );
        let first = decision::first_divergence(&a.decisions, &b.decisions);
        DiffReport {
            a: "A rules".into(),
            b: "B rules".into(),
            backend_a: "nft".into(),
            backend_b: "nft".into(),
            families: vec!["ipv4".into()],
            assert: "paths".into(),
            compared: vec!["istio::type5-envoy-to-admin::ipv4".into(), "istio::type1-remote-to-local::ipv4".into()],
            differences: vec![Difference {
                name: "istio::type5-envoy-to-admin::ipv4".into(),
                scenario: "istio::type5-envoy-to-admin".into(),
                family: "ipv4".into(),
                flow: 5,
                description: "Envoy calls its admin port".into(),
                probe: Some(ProbeInfo {
                    from: "local-pod".into(),
                    uid: 1337,
                    gid: 1337,
                    to: "127.0.0.1:15000".into(),
                    traced: true,
                }),
                ports_differ: false,
                a,
                b,
                first,
            }],
        }
    }

    #[test]
    fn human_output_names_both_deciding_rules_side_by_side() {
        let text = report().to_human();
        let line = text.lines().find(|l| l.contains("A: nat ISTIO_OUTPUT rule 4")).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("B: nat ISTIO_OUTPUT rule 4"), "{text}");
        let texts = text.lines().find(|l| l.contains("--uid-owner 1337 -j RETURN")).unwrap();
        assert!(texts.contains("-d 127.0.0.1/32 -j RETURN"), "{text}");
        assert!(text.contains("first different decision: leg 1, OUTPUT"), "{text}");
        assert!(text.ends_with("1 of 2 connections differ\n"), "{text}");
        // The connection that does not differ is not printed.
        assert!(!text.contains("type1"), "{text}");
    }

    #[test]
    fn markdown_draws_a_mermaid_pair_with_the_difference_highlighted() {
        let md = report().to_markdown();
        assert_eq!(md.matches("```mermaid\nflowchart LR").count(), 2, "{md}");
        assert_eq!(md.matches("style n1 fill:#fdd").count(), 2, "{md}");
    }

    #[test]
    fn junit_fails_exactly_the_differing_connection() {
        let x = report().to_junit();
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert_eq!(x.matches("<failure").count(), 1, "{x}");
        assert!(x.contains("name=\"istio::type1-remote-to-local::ipv4\"/>"), "{x}");
    }
}

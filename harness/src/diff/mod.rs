//! Two rule sets, the same probes: which connections they treat
//! differently (`sidecheck diff`), and the reference a user's rule set is
//! judged against under `--assert paths` (the contract's own rules run
//! beside it on the same probes).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::base::net::Family;
use crate::model::scenario::{Protocol, Scenario};
use crate::model::topology::Host;
use crate::rules::istio::{IstioCapture, Shape};
use crate::rules::source::{Backend, RuleSource};
use crate::verdict::decision::{self, Decision, Decisions, Divergence};
use crate::verdict::{Outcome, TrialResult};
use crate::{Error, Result, Session, SessionConfig};

/// One rule set run on the probes: its trials (ports judged) and, per
/// trial, what its rules decided.
#[derive(Clone, Debug)]
pub struct SideRun {
    pub describe: String,
    pub backend: String,
    pub families: Vec<Family>,
    pub trials: Vec<TrialResult>,
    pub decisions: Vec<Decisions>,
}

impl SideRun {
    /// The first trial the harness could not test, if any: a side with an
    /// ERROR is no basis for a comparison (exit 2, not a difference).
    pub fn harness_error(&self) -> Option<String> {
        self.trials
            .iter()
            .find(|t| t.outcome == crate::verdict::Outcome::Error)
            .map(|t| format!("{} (ERROR): {}", t.name, t.message.lines().next().unwrap_or_default()))
    }

    fn find(&self, scenario: &str, family: &str) -> Option<(&TrialResult, &Decisions)> {
        let k = self.trials.iter().position(|t| t.scenario == scenario && t.family == family)?;
        Some((&self.trials[k], &self.decisions[k]))
    }
}

/// Start a session for `config`, run every scenario (ports judged, paths
/// not), and read each traced probe's decisions before the session ends.
pub fn run_side(mut config: SessionConfig, scenarios: &[Scenario]) -> Result<SideRun> {
    config.trace = true;
    config.rule_texts = true;
    let describe = config.rules.describe();
    let session = Session::start(config)?;
    let trials = session.run_with(scenarios, false);
    let index = session.tracer().map(|t| t.index().clone()).unwrap_or_default();
    let decisions = trials.iter().map(|t| decision::decisions(&t.observed.legs, &index)).collect();
    Ok(SideRun { describe, backend: session.backend_name(), families: session.families().to_vec(), trials, decisions })
}

/// Both sides at once: separate topologies, mostly waiting on probes.
pub fn run_pair(a: SessionConfig, b: SessionConfig, scenarios: &[Scenario]) -> (Result<SideRun>, Result<SideRun>) {
    std::thread::scope(|s| {
        let ha = s.spawn(|| run_side(a, scenarios));
        let hb = s.spawn(|| run_side(b, scenarios));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<SideRun>>| {
            h.join().unwrap_or_else(|_| Err(Error::config("a rule set's run panicked")))
        };
        (join(ha), join(hb))
    })
}

/// The rules a user's rule set is compared with under `--assert paths`:
/// the policy's reference rules, else the profile's own rule set (the
/// built-in Istio rules for `istio`). Same topology and probes.
pub fn reference_config(config: &SessionConfig, policy_rules: Option<RuleSource>) -> Result<SessionConfig> {
    let rules = match policy_rules {
        Some(r) => r,
        None if config.profile.name == "istio" => RuleSource::Builtin(IstioCapture::default_for(Shape::Current)),
        None => config.profile.rules().ok_or_else(|| {
            Error::config(format!(
                "--assert paths compares each connection's deciding rules with the profile's own rule set, but profile {} ({}) has none: give the profile its rule set (`rules: {{ ipv4: FILE, ipv6: FILE }}`) or use --assert ports",
                config.profile.name, config.profile.file
            ))
        })?,
    };
    let mut c = config.clone();
    let (mine, theirs) = (config.rules.families(), rules.families());
    c.topology.families.retain(|f| mine.contains(f) && theirs.contains(f));
    if c.topology.families.is_empty() {
        return Err(Error::config(format!(
            "{} and the reference ({}) have no IP family in common to compare",
            config.rules.describe(),
            rules.describe()
        )));
    }
    c.rules = rules;
    // Restore text installs through iptables; the front end of the
    // reference does not matter to its decisions.
    c.backend = Backend::Nft;
    c.assert_paths = false;
    Ok(c)
}

/// Who connects where, per (scenario, family): for messages and the
/// `sidecheck trace` command that replays one probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeInfo {
    pub from: String,
    pub uid: u32,
    pub gid: u32,
    pub to: String,
    /// Only TCP probes are traced (a datagram's path is its answer).
    pub traced: bool,
}

pub type Probes = HashMap<(String, String), ProbeInfo>;

pub fn probes(scenarios: &[Scenario], config: &SessionConfig) -> Probes {
    let mut out = HashMap::new();
    for s in scenarios {
        for f in s.families(&config.topology.families) {
            if let Ok(c) = s.case(&config.profile, &config.topology, f, "") {
                out.insert(
                    (s.name.clone(), f.name().to_string()),
                    ProbeInfo {
                        from: s.spec.source.host.name().to_string(),
                        uid: c.uid,
                        gid: c.gid,
                        to: c.target.to_string(),
                        traced: c.protocol == Protocol::Tcp,
                    },
                );
            }
        }
    }
    out
}

/// A ready-to-paste `sidecheck trace` for one probe; `rule_args` are the
/// run's own (`--rules FILE`, `--nft FILE`, `--profile kuma` ...).
pub fn trace_command(p: &ProbeInfo, rule_args: &str) -> String {
    let host = Host::parse(&p.from).map_or(p.from.clone(), |h| h.name().to_string());
    let id = if p.gid == p.uid { p.uid.to_string() } else { format!("{}:{}", p.uid, p.gid) };
    let mut cmd = format!("sidecheck trace --from {host}:{id} --to {}", p.to);
    if !rule_args.is_empty() {
        cmd.push(' ');
        cmd.push_str(rule_args);
    }
    cmd
}

fn side_line(label: &str, d: &Option<Decision>) -> String {
    match d {
        Some(d) => format!("{label}: {}  {}", d.place(), d.text),
        None => format!("{label}: (no rule decided here)"),
    }
}

fn describe_ports(ports: &[u16], end: &str) -> String {
    let mut parts: Vec<String> = ports.iter().map(u16::to_string).collect();
    match parts.last_mut() {
        Some(last) => *last = end.to_string(),
        None => return end.to_string(),
    }
    parts.join(" -> ")
}

/// `--assert paths` for a rule set that is not the contract's own: each
/// trial also fails when a connection leaves by a different kind of rule
/// than under the reference, and every failing trial says where the
/// decisions part and how to trace that probe.
pub fn judge_against(
    trials: &mut [TrialResult],
    mine: &[Decisions],
    reference: &SideRun,
    probes: &Probes,
    rule_args: &str,
) {
    for (t, d) in trials.iter_mut().zip(mine) {
        // The scenarios' path strings describe the built-in rules; here the
        // reference's decisions are the expectation, so reports must not
        // set the strings beside another layout's path.
        t.expected.path = None;
        let Some((_, theirs)) = reference.find(&t.scenario, &t.family) else { continue };
        let probe = probes.get(&(t.scenario.clone(), t.family.clone()));
        let Some(div) = decision::first_divergence(theirs, d) else { continue };
        let mut text = format!(
            "first different decision from the reference ({}): leg {}, {}\n    {}\n    {}",
            reference.describe,
            div.leg,
            div.hook,
            side_line("reference  ", &div.a),
            side_line("these rules", &div.b)
        );
        if let Some(p) = probe {
            text.push_str(&format!("\n  trace it: {}", trace_command(p, rule_args)));
        }
        if t.outcome == Outcome::Pass {
            let want = describe_ports(
                &t.expected.ports,
                &format!("{}:{}", t.expected.server, t.expected.ports.last().copied().unwrap_or(0)),
            );
            t.outcome = Outcome::Fail;
            t.message = format!("ports as expected ({want}), but a connection leaves by a different rule:\n  {text}");
        } else {
            t.message = format!("{}\n  {text}", t.message);
        }
    }
}

/// A connection's fate on one side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fate {
    pub ports: Vec<u16>,
    pub end: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub decisions: Decisions,
    /// What each leg reached (`Envoy 15001 (Outbound)`, `Remote Pod`).
    pub reached: Vec<String>,
}

impl Fate {
    fn of(t: &TrialResult, d: &Decisions) -> Fate {
        Fate {
            ports: t.observed.ports.clone(),
            end: t.observed.end.clone(),
            path: t.observed.path.clone(),
            decisions: d.clone(),
            reached: t.observed.legs.iter().map(|l| l.reached.clone()).collect(),
        }
    }

    /// `15001 > remote-app:9090`, `15001 > loop at 15001`.
    pub fn route(&self) -> String {
        let mut parts: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let end = if self.end.starts_with("loop") {
            format!("loop at {}", self.ports.last().copied().unwrap_or(0))
        } else {
            self.end.clone()
        };
        match parts.last_mut() {
            Some(last) if !self.end.contains("could not forward") => *last = end,
            _ => parts.push(end),
        }
        parts.join(" > ")
    }
}

/// One connection whose fate differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    /// `<scenario>::<family>`.
    pub name: String,
    pub scenario: String,
    pub family: String,
    pub flow: u8,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeInfo>,
    /// The ports or the end differ (not only the deciding rules).
    pub ports_differ: bool,
    pub a: Fate,
    pub b: Fate,
    /// Where the decisions first part; None when only the ports say so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Divergence>,
}

/// What `sidecheck diff` found.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub backend_a: String,
    pub backend_b: String,
    pub families: Vec<String>,
    /// `paths`: decisions and ports compared; `ports`: ports and ends only.
    pub assert: String,
    /// Every connection compared, `<scenario>::<family>`.
    pub compared: Vec<String>,
    pub differences: Vec<Difference>,
}

/// Compare every connection both sides ran.
pub fn compare(a: &SideRun, b: &SideRun, probes: &Probes, paths: bool) -> DiffReport {
    let mut compared = Vec::new();
    let mut differences = Vec::new();
    for (ta, da) in a.trials.iter().zip(&a.decisions) {
        let Some((tb, db)) = b.find(&ta.scenario, &ta.family) else { continue };
        let name = format!("{}::{}", ta.scenario, ta.family);
        compared.push(name.clone());
        let ports_differ = ta.observed.ports != tb.observed.ports
            || ta.observed.server != tb.observed.server
            || (ta.observed.server.is_none() && ta.observed.end != tb.observed.end);
        let first = if paths || ports_differ { decision::first_divergence(da, db) } else { None };
        if ports_differ || (paths && first.is_some()) {
            differences.push(Difference {
                name,
                scenario: ta.scenario.clone(),
                family: ta.family.clone(),
                flow: ta.flow,
                description: ta.description.clone(),
                probe: probes.get(&(ta.scenario.clone(), ta.family.clone())).cloned(),
                ports_differ,
                a: Fate::of(ta, da),
                b: Fate::of(tb, db),
                first,
            });
        }
    }
    DiffReport {
        a: a.describe.clone(),
        b: b.describe.clone(),
        backend_a: a.backend.clone(),
        backend_b: b.backend.clone(),
        families: a.families.iter().filter(|f| b.families.contains(f)).map(|f| f.name().to_string()).collect(),
        assert: if paths { "paths" } else { "ports" }.into(),
        compared,
        differences,
    }
}

fn pad(s: &str, w: usize) -> String {
    format!("{s:<w$}")
}

impl DiffReport {
    pub fn differs(&self) -> bool {
        !self.differences.is_empty()
    }

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
        node(&mut out, f.end.clone(), false, &mut prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::decision::HookDecisions;

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
            end: "envoy-admin:15000".into(),
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

    #[test]
    fn trace_commands_replay_the_probe() {
        let p = ProbeInfo { from: "local-pod".into(), uid: 1337, gid: 1337, to: "[::1]:15000".into(), traced: true };
        assert_eq!(
            trace_command(&p, "--rules x.v4"),
            "sidecheck trace --from local-pod:1337 --to [::1]:15000 --rules x.v4"
        );
    }
}

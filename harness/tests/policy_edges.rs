//! Every policy field's edge values (testdata/policy-edges.yaml) through the
//! reference rules and the oracle: each value either agrees (the reference
//! rules, installed in a real topology, pass every probe of the policy's own
//! matrix: `sidecheck run --policy FILE` exits 0, as root) or is refused
//! before anything is built (exit 2, no root) with a message naming the
//! field at its file:line. A unit check keeps the data file covering every
//! field of `struct Policy`, so a new field cannot be forgotten.
//!
//! Trials run on libtest-mimic's threads, so the root runs overlap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::{code, text, TempDir, BIN};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/policy-edges.yaml");
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/schema.rs");

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Edge {
    value: serde_norway::Value,
    expect: String,
    #[serde(default)]
    with: serde_norway::Mapping,
    /// The reading the expectation comes from (for people).
    #[serde(default)]
    #[allow(dead_code)]
    why: Option<String>,
    /// Why the refusal names the file but no line (a known gap).
    #[serde(default)]
    unlocated: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Agrees,
    Refused(String),
}

fn expectation(s: &str) -> Result<Expect, String> {
    match s.strip_prefix("refused:") {
        Some(t) if !t.trim().is_empty() => Ok(Expect::Refused(t.trim().to_string())),
        Some(_) => Err("`refused:` needs the text the message must contain".into()),
        None if s == "agrees" => Ok(Expect::Agrees),
        None => Err(format!("`{s}`: give `agrees` or `refused: TEXT`")),
    }
}

fn load() -> BTreeMap<String, Vec<Edge>> {
    let text = std::fs::read_to_string(DATA).expect("reading testdata/policy-edges.yaml");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{DATA}: {e}"))
}

/// The `pub` fields of `struct Policy` in the schema's source, in order.
fn schema_fields(source: &str) -> Vec<String> {
    let start = source.find("pub struct Policy {").expect("schema.rs has `pub struct Policy {`");
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("the struct ends")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| n != "struct Policy {" && !n.contains(' '))
        .collect()
}

/// What is wrong with the data file against the schema: a field it does not
/// cover, one the schema lacks, a field with no agreeing or no refused value,
/// an expectation that is neither form, a refusal that does not name its field.
fn coverage_problems(fields: &[String], data: &BTreeMap<String, Vec<Edge>>) -> Vec<String> {
    let mut bad = Vec::new();
    for f in fields {
        match data.get(f) {
            None => bad.push(format!("schema field `{f}` has no edge values in {DATA}")),
            Some(edges) => {
                let exp: Vec<_> = edges.iter().map(|e| expectation(&e.expect)).collect();
                for e in exp.iter().filter_map(|e| e.as_ref().err()) {
                    bad.push(format!("{f}: {e}"));
                }
                for says in exp.iter().filter_map(|e| if let Ok(Expect::Refused(t)) = e { Some(t) } else { None }) {
                    if !says.contains(f.as_str()) {
                        bad.push(format!("{f}: `refused: {says}` does not name the field"));
                    }
                }
                if !exp.iter().any(|e| e == &Ok(Expect::Agrees)) {
                    bad.push(format!("{f}: no value that agrees"));
                }
                if !exp.iter().any(|e| matches!(e, Ok(Expect::Refused(_)))) {
                    bad.push(format!("{f}: no value that is refused"));
                }
            }
        }
    }
    for f in data.keys().filter(|k| !fields.contains(k)) {
        bad.push(format!("{DATA} lists `{f}`, which is no field of struct Policy"));
    }
    bad
}

/// The policy file for one edge, and the line its field is on.
fn policy_text(field: &str, edge: &Edge) -> (String, usize) {
    let flow = |v: &serde_norway::Value| serde_json::to_string(v).expect("a YAML value as JSON (flow YAML)");
    let mut s = String::new();
    if field != "note" {
        s.push_str("note: policy-edges\n");
    }
    for (k, v) in &edge.with {
        s.push_str(&format!("{}: {}\n", k.as_str().expect("`with` keys are field names"), flow(v)));
    }
    s.push_str(&format!("{field}: {}\n", flow(&edge.value)));
    let line = s.lines().count();
    (s, line)
}

fn sidecheck(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("running sidecheck")
}

fn refused(dir: &Path, text_: &str, line: Option<usize>, says: &str) -> Result<(), Failed> {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, text_).map_err(|e| e.to_string())?;
    let file = file.display().to_string();
    let out = sidecheck(&["run", "--policy", &file]);
    let all = text(&out);
    if code(&out) != 2 {
        return Err(format!("exit {} (wanted 2, refused: {says}) for\n{text_}{all}", code(&out)).into());
    }
    let at = match line {
        Some(n) => format!("{file}:{n}"),
        None => file.clone(),
    };
    if !all.contains(says) || !all.contains(&at) {
        return Err(format!("wanted `{says}` at {at} in the message, for\n{text_}got: {all}").into());
    }
    if all.contains("panicked") {
        return Err(format!("a panic: {all}").into());
    }
    Ok(())
}

fn agrees(dir: &Path, text_: &str) -> Result<(), Failed> {
    common::require_root()?;
    let file = dir.join("policy.yaml");
    std::fs::write(&file, text_).map_err(|e| e.to_string())?;
    let out = common::run_checked(&["run", "--policy", &file.display().to_string()]);
    if code(&out) != 0 {
        let all = text(&out);
        let fails: Vec<&str> = all.lines().filter(|l| !l.trim_end().ends_with(" pass")).collect();
        return Err(format!(
            "exit {} (wanted 0: reference rules and oracle agree) for\n{text_}{}",
            code(&out),
            fails.join("\n")
        )
        .into());
    }
    Ok(())
}

/// A short, unique-enough label for a value in a trial name.
fn label(v: &serde_norway::Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "-.:/*".contains(c) { c } else { '_' }).collect();
    s.trim_matches('_').chars().take(24).collect::<String>()
}

fn trials() -> Vec<Trial> {
    let mut v = vec![Trial::test("data::covers-every-schema-field", || {
        let source = std::fs::read_to_string(SCHEMA).map_err(|e| e.to_string())?;
        let fields = schema_fields(&source);
        if fields.len() < 20 {
            return Err(format!("read only {} fields from {SCHEMA}: {fields:?}", fields.len()).into());
        }
        let bad = coverage_problems(&fields, &load());
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("\n").into())
        }
    })];
    // The check itself, on planted gaps: a field dropped from the data, a new
    // field in the schema, an expectation of neither form.
    v.push(Trial::test("data::coverage-check-catches-gaps", || {
        let source = std::fs::read_to_string(SCHEMA).map_err(|e| e.to_string())?;
        let fields = schema_fields(&source);
        let mut data = load();
        data.remove("tproxy_table");
        let bad = coverage_problems(&fields, &data);
        if !bad.iter().any(|b| b.contains("`tproxy_table` has no edge values")) {
            return Err(format!("a dropped field went unnoticed: {bad:?}").into());
        }
        let planted = source.replace("pub struct Policy {", "pub struct Policy {\n    pub brand_new: bool,");
        let bad = coverage_problems(&schema_fields(&planted), &load());
        if !bad.iter().any(|b| b.contains("`brand_new` has no edge values")) {
            return Err(format!("a new schema field went unnoticed: {bad:?}").into());
        }
        let mut data = load();
        data.get_mut("ipv6").expect("ipv6 has edges").push(Edge {
            value: serde_norway::Value::Null,
            expect: "refused: invalid type".into(),
            with: Default::default(),
            why: None,
            unlocated: None,
        });
        if !coverage_problems(&fields, &data).iter().any(|b| b.contains("does not name the field")) {
            return Err("a refusal whose text does not name its field went unnoticed".into());
        }
        if expectation("refused").is_ok() || expectation("agree").is_ok() || expectation("refused: ").is_ok() {
            return Err("a malformed expectation was taken".into());
        }
        Ok(())
    }));
    for (field, edges) in load() {
        for (i, edge) in edges.into_iter().enumerate() {
            let (policy, line) = policy_text(&field, &edge);
            let line = edge.unlocated.is_none().then_some(line);
            let Ok(expect) = expectation(&edge.expect) else { continue }; // data::covers-every-schema-field fails
            let tag = format!("edges-{field}-{i}");
            let name = match &expect {
                Expect::Agrees => format!("agrees::{field}::{i}::{}", label(&edge.value)),
                Expect::Refused(_) => format!("refused::{field}::{i}::{}", label(&edge.value)),
            };
            v.push(Trial::test(name, move || {
                let dir = TempDir::new(&tag);
                match expect {
                    Expect::Agrees => agrees(&dir.0, &policy),
                    Expect::Refused(says) => refused(&dir.0, &policy, line, &says),
                }
            }));
        }
    }
    v
}

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

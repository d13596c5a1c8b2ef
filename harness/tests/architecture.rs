//! The layout is checked, not only described: docs/architecture.md names the
//! layers of `harness/src` in the order data flows through a run, and a
//! module may import only from its own layer or the layers before it. This
//! test reads every source file, finds each `crate::` path, and fails on an
//! import from a later layer, on any cycle between files, on a file longer
//! than the size budget, and on a file the map does not name. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, first to last. `error` and the crate root are below all.
const LAYERS: &[&str] = &[
    "error",
    "base",
    "rules",
    "model",
    "policy",
    "plan",
    "sandbox",
    "netfilter",
    "probe",
    "verdict",
    "report",
    "session",
    "diff",
    "run",
];

/// Longest a source file may be (code and its unit tests together).
const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read harness/src") {
        let p = e.expect("read harness/src").path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
}

/// `netfilter/trace.rs` -> ["netfilter", "trace"]; `policy/mod.rs` -> ["policy"].
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn layer(module: &[String]) -> Option<usize> {
    match module.first() {
        None => Some(0), // lib.rs: the crate root
        Some(top) => LAYERS.iter().position(|l| l == top),
    }
}

/// Every `crate::a::b` path in the text, as its module prefix that names a
/// file (the longest prefix that is a known module).
fn imports(text: &str, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        // `$crate::` in macros and `sidecheck_crate::`-like names are not ours.
        if at > 0 && text[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        let path: Vec<String> = rest
            .split("::")
            .map(|seg| seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
            .take_while(|seg| !seg.is_empty() && seg.chars().next().is_some_and(|c| c.is_lowercase()))
            .collect();
        let mut best = Vec::new();
        for n in 1..=path.len() {
            if known.contains(&path[..n].to_vec()) {
                best = path[..n].to_vec();
            }
        }
        if !best.is_empty() {
            out.insert(best);
        }
    }
    out
}

type Module = Vec<String>;
type Edges = BTreeMap<Module, BTreeSet<Module>>;

fn graph() -> (Edges, BTreeMap<Module, usize>) {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let known: BTreeSet<Vec<String>> = all.iter().map(|f| module_of(f)).collect();
    let mut edges = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for f in &all {
        let text = std::fs::read_to_string(f).expect("read a source file");
        let m = module_of(f);
        lines.insert(m.clone(), text.lines().count());
        let mut to = imports(&text, &known);
        to.remove(&m);
        edges.insert(m, to);
    }
    (edges, lines)
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn every_module_is_in_a_named_layer() {
    let (edges, _) = graph();
    let stray: Vec<String> = edges.keys().filter(|m| layer(m).is_none()).map(|m| name(m)).collect();
    assert!(
        stray.is_empty(),
        "modules outside the layers of docs/architecture.md (add the folder to LAYERS and the map): {stray:?}"
    );
}

#[test]
fn no_module_imports_a_later_layer() {
    let (edges, _) = graph();
    let mut bad = Vec::new();
    for (from, tos) in &edges {
        let (Some(lf), false) = (layer(from), from.is_empty()) else { continue };
        for to in tos {
            if to.is_empty() {
                continue;
            }
            if let Some(lt) = layer(to) {
                if lt > lf {
                    bad.push(format!("{} ({}) imports {} ({})", name(from), LAYERS[lf], name(to), LAYERS[lt]));
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports against the flow of docs/architecture.md:\n  {}", bad.join("\n  "));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let (edges, _) = graph();
    // Depth-first search with colours; a grey node met again closes a cycle.
    fn visit(
        n: &Vec<String>,
        edges: &Edges,
        colour: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(n.clone(), 1);
        stack.push(n.clone());
        for to in edges.get(n).into_iter().flatten() {
            // A parent module re-exporting or declaring its children is not a use.
            if to.is_empty() || (to.len() < n.len() && n.starts_with(to)) {
                continue;
            }
            match colour.get(to).copied().unwrap_or(0) {
                0 => visit(to, edges, colour, stack, cycles),
                1 => {
                    let at = stack.iter().position(|s| s == to).unwrap();
                    let ring: Vec<String> = stack[at..].iter().map(|m| name(m)).collect();
                    cycles.push(format!("{} -> {}", ring.join(" -> "), name(to)));
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n.clone(), 2);
    }
    let mut colour = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in edges.keys() {
        if colour.get(n).copied().unwrap_or(0) == 0 {
            visit(n, &edges, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n  {}", cycles.join("\n  "));
}

#[test]
fn no_source_file_is_over_the_budget() {
    let (_, lines) = graph();
    let long: Vec<String> =
        lines.iter().filter(|(_, n)| **n > MAX_LINES).map(|(m, n)| format!("{} ({n} lines)", name(m))).collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines (split them by concern): {long:?}");
}

#[test]
fn every_file_is_on_the_map() {
    // docs/architecture.md names each file with its concern: a file it does
    // not name is a concern a newcomer cannot find.
    let map = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"))
        .expect("read docs/architecture.md");
    let mut all = Vec::new();
    files(&src(), &mut all);
    let missing: Vec<String> = all
        .iter()
        .map(|f| f.strip_prefix(src()).unwrap().to_string_lossy().into_owned())
        .filter(|rel| rel != "lib.rs" && rel != "error.rs" && !map.contains(&format!("`{rel}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "files docs/architecture.md does not name (add a row to their layer's table): {missing:?}"
    );
}

#[test]
fn the_checker_sees_a_back_edge_and_a_cycle() {
    // The checks above must be able to fail: a planted import is found.
    let known: BTreeSet<Vec<String>> = [vec!["base".to_string()], vec!["report".to_string()]].into();
    let found = imports("use crate::report::Report;\nfn f() { $crate::x; crate::base::y() }", &known);
    assert_eq!(found, [vec!["base".to_string()], vec!["report".to_string()]].into());
    assert!(layer(&["report".to_string()]) > layer(&["base".to_string()]));
}

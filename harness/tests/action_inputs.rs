//! docs/action-inputs.md (included in README's CI section) lists the
//! composite action's inputs and outputs: it must say what ci/action.yml
//! defines, or users pass inputs that do not exist. No root needed.
//! `SIDECHECK_BLESS=1 cargo test --test action_inputs` rewrites the file.

use std::path::Path;

const WS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The Markdown tables for an action.yml's inputs and outputs.
fn render(action_yml: &str) -> String {
    let doc: serde_norway::Value = serde_norway::from_str(action_yml).expect("ci/action.yml is not YAML");
    let mut md = String::from(
        "<!-- Generated from ci/action.yml; harness/tests/action_inputs.rs checks it. \
         Rewrite with SIDECHECK_BLESS=1 cargo test --test action_inputs -->\n\n\
         | Input | Default | What |\n|---|---|---|\n",
    );
    let text = |v: &serde_norway::Value| match v {
        serde_norway::Value::String(s) => s.trim().replace('|', "\\|"),
        serde_norway::Value::Bool(b) => b.to_string(),
        serde_norway::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let inputs = doc["inputs"].as_mapping().expect("ci/action.yml has no inputs");
    for (name, spec) in inputs {
        let default = text(&spec["default"]);
        let default = if default.is_empty() { String::new() } else { format!("`{default}`") };
        let required = if spec["required"].as_bool() == Some(true) { " (required)" } else { "" };
        md += &format!("| `{}`{required} | {default} | {} |\n", text(name), text(&spec["description"]));
    }
    md += "\n| Output | What |\n|---|---|\n";
    for (name, spec) in doc["outputs"].as_mapping().expect("ci/action.yml has no outputs") {
        md += &format!("| `{}` | {} |\n", text(name), text(&spec["description"]));
    }
    md
}

#[test]
fn docs_list_the_actions_inputs_and_outputs() {
    let action = std::fs::read_to_string(Path::new(WS).join("ci/action.yml")).unwrap();
    let want = render(&action);
    let doc = Path::new(WS).join("docs/action-inputs.md");
    if std::env::var_os("SIDECHECK_BLESS").is_some() {
        std::fs::write(&doc, &want).unwrap();
    }
    let have = std::fs::read_to_string(&doc).unwrap_or_default();
    assert!(
        have == want,
        "{} does not match ci/action.yml's inputs and outputs; rewrite it with \
         SIDECHECK_BLESS=1 cargo test --test action_inputs.\n--- expected:\n{want}\n--- found:\n{have}",
        doc.display()
    );
}

#[test]
fn every_input_and_output_is_rendered() {
    let md = render(
        "inputs:\n  a:\n    description: the a\n    default: \"x\"\n  b:\n    description: b|c\n    required: true\n\
         outputs:\n  o:\n    description: out\n    value: v\n",
    );
    assert!(md.contains("| `a` | `x` | the a |\n"), "{md}");
    assert!(md.contains("| `b` (required) |  | b\\|c |\n"), "{md}");
    assert!(md.contains("| `o` | out |\n"), "{md}");
}

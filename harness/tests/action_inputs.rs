//! README's CI section lists the composite action's inputs and outputs,
//! between `<!-- action-inputs -->` and `<!-- /action-inputs -->`: it must say
//! what ci/action.yml defines, or users pass inputs that do not exist. No
//! root needed. `SIDECHECK_BLESS=1 cargo test --test action_inputs` rewrites
//! the block.

use std::path::Path;

const WS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The Markdown tables for an action.yml's inputs and outputs.
fn render(action_yml: &str) -> String {
    let doc: serde_norway::Value = serde_norway::from_str(action_yml).expect("ci/action.yml is not YAML");
    let mut md = String::from("| Input | Default | What |\n|---|---|---|\n");
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

const OPEN: &str = "<!-- action-inputs -->\n";
const CLOSE: &str = "<!-- /action-inputs -->";

#[test]
fn readme_lists_the_actions_inputs_and_outputs() {
    let action = std::fs::read_to_string(Path::new(WS).join("ci/action.yml")).unwrap();
    let want = render(&action);
    let path = Path::new(WS).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(a), Some(b)) = (readme.find(OPEN), readme.find(CLOSE)) else {
        panic!("{} has no {OPEN:?} ... {CLOSE:?} block for the action's inputs", path.display())
    };
    let have = &readme[a + OPEN.len()..b];
    if std::env::var_os("SIDECHECK_BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &readme[..a + OPEN.len()], &readme[b..])).unwrap();
        return;
    }
    assert!(
        have == want,
        "{}'s action-inputs block does not match ci/action.yml's inputs and outputs; rewrite it with \
         SIDECHECK_BLESS=1 cargo test --test action_inputs.\n--- expected:\n{want}\n--- found:\n{have}",
        path.display()
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

//! The one way sidecheck reads YAML (scenarios, profiles, policies,
//! topology settings): the nesting and size budget first, then serde, with
//! every error at `file:line:column`; and, for the checks made after
//! parsing, the line a key or a `key: value` is on (serde keeps no spans).

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Parse `text`, read from `file`, as a `T`.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T> {
    crate::base::bounded::yaml_budget(file, text)?;
    serde_norway::from_str(text).map_err(|e| match e.location() {
        Some(loc) => {
            Error::ScenarioSyntax { file: file.into(), line: loc.line(), column: loc.column(), message: e.to_string() }
        }
        None => Error::ScenarioInvalid { file: file.into(), message: e.to_string() },
    })
}

/// Where `key:` starts a mapping entry in `line` (block or flow style): the
/// byte after the colon. `myuid:` is no `uid:`.
fn key_in(line: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    line.match_indices(&pat)
        .find(|(i, _)| line[..*i].chars().last().is_none_or(|c| matches!(c, ' ' | '\t' | '{' | ',' | '-')))
        .map(|(i, _)| i + pat.len())
}

/// The line (1-based) of the first `key: value` at or after line `from`,
/// the value plain or quoted, in block (`name: api`) or flow style
/// (`{ name: api, vip: ... }`).
pub fn line_of_value(text: &str, key: &str, value: &str, from: usize) -> Option<usize> {
    text.lines().enumerate().skip(from.saturating_sub(1)).find_map(|(n, line)| {
        let mut rest = line;
        while let Some(at) = key_in(rest, key) {
            let after = rest[at..].trim_start_matches([' ', '\t']);
            for quote in ["", "\"", "'"] {
                let Some(v) = after.strip_prefix(quote).and_then(|a| a.strip_prefix(value)) else { continue };
                let Some(end) = v.strip_prefix(quote) else { continue };
                if end.is_empty() || end.starts_with([' ', '\t', ',', '}', ']', '#']) {
                    return Some(n + 1);
                }
            }
            rest = &rest[at..];
        }
        None
    })
}

/// The line (1-based) of the first `key:`.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|l| key_in(l, key).is_some()).map(|n| n + 1)
}

/// `file:line`, or `file` alone when there is no line to give.
pub fn place(file: &str, line: Option<usize>) -> String {
    match line {
        Some(n) => format!("{file}:{n}"),
        None => file.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // (read by Debug only: the test is about the errors)
    struct T {
        a: u16,
    }

    #[test]
    fn errors_are_located_and_the_budget_comes_first() {
        parse::<T>("t.yaml", "a: 1\n").unwrap();
        let e = parse::<T>("t.yaml", "a: 1\nb: 2\n").unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:2:1: unknown field `b`"), "{e}");
        let e = parse::<T>("t.yaml", "a: 70000\n").unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:1:4: "), "{e}");
        // Nesting past the budget is refused before serde sees it.
        let e = parse::<T>("t.yaml", &format!("a: {}\n", "[".repeat(100))).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:1: nested deeper than 64"), "{e}");
    }

    #[test]
    fn values_are_found_in_block_and_flow_style_quoted_or_not() {
        let text = "services:\n  - { name: api, vip: 10.96.0.5 }\n  - name: \"web\"\n    vip: 10.96.0.6\n  - name: 'db' # the database\n  - {name: apiv2}\n";
        assert_eq!(line_of_value(text, "name", "api", 1), Some(2));
        assert_eq!(line_of_value(text, "name", "web", 1), Some(3));
        assert_eq!(line_of_value(text, "name", "db", 1), Some(5));
        assert_eq!(line_of_value(text, "name", "apiv2", 1), Some(6));
        assert_eq!(line_of_value(text, "vip", "10.96.0.6", 1), Some(4));
        // A prefix of another value, another key ending in the key, or before `from`: not it.
        assert_eq!(line_of_value(text, "name", "ap", 1), None);
        assert_eq!(line_of_value("rename: api\n", "name", "api", 1), None);
        assert_eq!(line_of_value(text, "name", "api", 3), None);
        assert_eq!(line_of_key(text, "vip"), Some(2));
        assert_eq!(line_of_key("myvip: 1\n", "vip"), None);
        assert_eq!(place("t.yaml", Some(4)), "t.yaml:4");
        assert_eq!(place("t.yaml", None), "t.yaml");
    }
}

//! `--format json`: one object, the contract of [`Report`]'s fields.

use crate::report::Report;

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

//! Text that reaches terminals and CI logs: control characters escaped,
//! tools' output cut to what a person reads.

/// Control characters as `\xNN` (newlines and tabs kept): descriptions,
/// file names and tools' output reach terminals and CI logs, where an
/// escape sequence could rewrite what the report says.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            let n = c as u32;
            if n <= 0xff {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// At most this many lines of a rule source's output are shown in an error
/// (the last ones: where it stopped).
pub const SHOWN_LINES: usize = 40;

/// And at most this many characters of each.
pub const SHOWN_LINE_CHARS: usize = 1000;

/// `text` cut to its last [`SHOWN_LINES`] lines, control characters escaped
/// (a tool's output reaches terminals and CI logs).
pub fn shown(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skip = lines.len().saturating_sub(SHOWN_LINES);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines not shown]\n"));
    }
    for l in &lines[skip..] {
        let long = l.chars().count().saturating_sub(SHOWN_LINE_CHARS);
        let l: String = l.chars().take(SHOWN_LINE_CHARS).collect();
        out.push_str(&crate::base::text::escape_controls(&l));
        if long > 0 {
            out.push_str(&format!(" [... {long} more characters]"));
        }
        out.push('\n');
    }
    out.trim_end().to_string()
}

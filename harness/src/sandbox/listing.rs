//! Rule listings as compared: what varies on its own (packet counters,
//! timestamps) taken out, so that two listings of the same rules are equal.

/// `[12:345]` -> `[0:0]`, `packets 3 bytes 180` -> `packets 0 bytes 0`;
/// comment lines (timestamps) dropped.
pub fn normalize_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words: Vec<String> = Vec::new();
        let mut zero_next = false;
        for w in line.split(' ') {
            let w = if zero_next && w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() {
                "0".to_string()
            } else if w.starts_with('[')
                && w.ends_with(']')
                && w[1..w.len() - 1].split(':').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            {
                "[0:0]".to_string()
            } else {
                w.to_string()
            };
            zero_next = w == "packets" || w == "bytes";
            words.push(w);
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

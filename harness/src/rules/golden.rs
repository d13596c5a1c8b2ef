//! Istio's dry-run / golden format, read as it is.
//!
//! `istio-iptables --dry-run` and Istio's golden test files record what the
//! generator would run: the calls it makes (`iptables-save`, `ip6tables-save`)
//! and the input it feeds iptables-restore, `* nat` ... `COMMIT` blocks, first
//! the IPv4 restore and then the IPv6 one, with nothing between them. This
//! module splits such a file into one restore input per family.
//!
//! Each family's text keeps the file's line numbers (lines of the other family
//! and recorded calls become blank lines, which iptables-restore skips but
//! counts), so the tool's "Error occurred at line: N" points into the file.

use std::net::{IpAddr, SocketAddr};

use crate::base::net::Family;
use crate::{Error, Result};

/// The restore input of one family, cut out of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub family: Family,
    /// Line (1-based) of its first `* table` header.
    pub line: usize,
    /// As many lines as the file: this family's blocks, blank elsewhere.
    pub text: String,
}

/// What a rule file turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not this format (a line outside any block is some other command, or a
    /// block is unfinished) and nothing marks it as Istio's: leave it to the
    /// tool it was meant for, which reports its own errors.
    Other,
    /// Plain iptables-restore input: one restore, no recorded calls.
    Plain,
    /// Istio's dry-run form: recorded calls and/or a restore per family.
    DryRun(Vec<Restore>),
}

struct Block {
    table: String,
    /// Lines (0-based) from the header to COMMIT.
    start: usize,
    end: usize,
}

/// `iptables-save`, `ip6tables-nft-save -t nat`, ...: a call the stub recorded.
fn recorded_call(line: &str) -> bool {
    let word = line.split_whitespace().next().unwrap_or("");
    let base = word.rsplit('/').next().unwrap_or(word);
    let Some(tool) = base.strip_suffix("-save") else { return false };
    matches!(tool, "iptables" | "ip6tables" | "iptables-nft" | "ip6tables-nft" | "iptables-legacy" | "ip6tables-legacy")
}

/// The table a `*nat` / `* nat` header opens.
fn header(line: &str) -> Option<&str> {
    line.strip_prefix('*').map(str::trim)
}

/// Addresses a line names (`-s`, `-d`, `--to-destination`, ...), as (family, text).
fn addresses(line: &str) -> Vec<(Family, String)> {
    let mut out = Vec::new();
    for word in line.split_whitespace() {
        for item in word.trim_start_matches('!').split(',') {
            let host = item.split('/').next().unwrap_or("");
            let ip = host.parse::<IpAddr>().ok().or_else(|| host.parse::<SocketAddr>().ok().map(|s| s.ip()));
            match ip {
                Some(IpAddr::V4(_)) => out.push((Family::Ipv4, item.to_string())),
                Some(IpAddr::V6(_)) => out.push((Family::Ipv6, item.to_string())),
                None => {}
            }
        }
    }
    out
}

fn pretty(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

/// Read `text` (from `file`, named in errors as `file:line`).
pub fn parse(text: &str, file: &str) -> Result<Parsed> {
    let lines: Vec<&str> = text.lines().collect();
    let err = |line: usize, msg: String| Error::config(format!("{file}:{line}: {msg}"));
    let mut calls = 0;
    let mut foreign: Option<usize> = None;
    let mut broken: Option<(usize, String)> = None;
    let mut blocks: Vec<Block> = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        match &open {
            Some((table, start)) => {
                if line == "COMMIT" {
                    blocks.push(Block { table: table.clone(), start: *start, end: i });
                    open = None;
                } else if header(line).is_some() && broken.is_none() {
                    broken = Some((
                        i + 1,
                        format!("`{line}` opens a table before `* {table}` (line {}) has its COMMIT", start + 1),
                    ));
                }
            }
            None => {
                if line.is_empty() || line.starts_with('#') {
                } else if let Some(table) = header(line) {
                    if table.is_empty() || table.contains(char::is_whitespace) {
                        broken.get_or_insert((i + 1, format!("`{line}` is not a table header (`* nat`, `*mangle`)")));
                    }
                    open = Some((table.to_string(), i));
                } else if recorded_call(line) {
                    calls += 1;
                } else {
                    foreign.get_or_insert(i + 1);
                }
            }
        }
    }
    if let Some((table, start)) = &open {
        broken.get_or_insert((start + 1, format!("`* {table}` has no COMMIT before the end of the file")));
    }
    // A table seen again starts the next family's restore.
    let mut groups: Vec<Vec<&Block>> = Vec::new();
    for b in &blocks {
        match groups.last_mut() {
            Some(g) if !g.iter().any(|x| x.table == b.table) => g.push(b),
            _ => groups.push(vec![b]),
        }
    }
    let marked = calls > 0 || groups.len() > 1;
    if !marked {
        return Ok(if foreign.is_some() || broken.is_some() || blocks.is_empty() {
            Parsed::Other
        } else {
            Parsed::Plain
        });
    }
    if let Some(line) = foreign {
        return Err(err(
            line,
            format!(
                "`{}` is neither in a `* table` ... `COMMIT` block nor a recorded iptables-save/ip6tables-save call, the two things Istio's dry-run format holds (a shell script goes to --script)",
                lines[line - 1].trim()
            ),
        ));
    }
    if let Some((line, msg)) = broken {
        return Err(err(line, msg));
    }
    if groups.is_empty() {
        return Err(Error::config(format!(
            "{file}: only recorded calls, no `* table` ... `COMMIT` block: no rules to test"
        )));
    }
    if groups.len() > 2 {
        let third = groups[2][0];
        return Err(err(
            third.start + 1,
            format!(
                "`* {}` is a third restore (its table was seen twice before): Istio's dry-run format holds at most two, IPv4 then IPv6",
                third.table
            ),
        ));
    }
    let family_of = |g: &[&Block]| -> Vec<(usize, Family, String)> {
        g.iter()
            .flat_map(|b| (b.start..=b.end).flat_map(|i| addresses(lines[i]).into_iter().map(move |(f, a)| (i, f, a))))
            .collect()
    };
    let mut out = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        let found = family_of(g);
        let family = match (k, groups.len()) {
            // One restore: IPv6 only if it names IPv6 addresses and no IPv4 ones.
            (0, 1) if found.iter().any(|a| a.1 == Family::Ipv6) && !found.iter().any(|a| a.1 == Family::Ipv4) => {
                Family::Ipv6
            }
            (0, _) => Family::Ipv4,
            _ => Family::Ipv6,
        };
        if let Some((i, f, a)) = found.iter().find(|a| a.1 != family) {
            let which = if k == 0 { "first" } else { "second" };
            return Err(err(
                i + 1,
                format!(
                    "`{a}` is an {} address, but this line is in the file's {which} restore (from line {}), which Istio writes for {}: IPv4 blocks come first, then IPv6",
                    pretty(*f),
                    g[0].start + 1,
                    pretty(family)
                ),
            ));
        }
        let mut text = vec![""; lines.len()];
        let mut normalised = Vec::new();
        for b in g {
            text[b.start + 1..=b.end].copy_from_slice(&lines[b.start + 1..=b.end]);
            normalised.push((b.start, format!("*{}", b.table)));
        }
        let mut text: Vec<String> = text.into_iter().map(str::to_string).collect();
        for (i, h) in normalised {
            text[i] = h;
        }
        out.push(Restore { family, line: g[0].start + 1, text: text.join("\n") + "\n" });
    }
    Ok(Parsed::DryRun(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of an istio-iptables golden with both families (trimmed).
    const BOTH: &str = "iptables-save\nip6tables-save\n* nat\n-N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN\nCOMMIT\n* raw\n-A OUTPUT -p udp --dport 53 -j CT --zone 1\nCOMMIT\n* nat\n-N ISTIO_OUTPUT\n-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n-A ISTIO_OUTPUT -d ::127.0.0.53/128 -j RETURN\nCOMMIT\n* raw\n-A OUTPUT -p udp --dport 53 -j CT --zone 1\nCOMMIT\niptables-save\nip6tables-save\n";

    fn restores(text: &str) -> Vec<Restore> {
        match parse(text, "t.golden").unwrap() {
            Parsed::DryRun(r) => r,
            other => panic!("not read as a dry run: {other:?}"),
        }
    }

    fn rules(r: &Restore) -> Vec<&str> {
        r.text.lines().filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn both_families_split_in_order_keeping_line_numbers() {
        let r = restores(BOTH);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].family, r[0].line, r[1].family, r[1].line), (Family::Ipv4, 3, Family::Ipv6, 11));
        for x in &r {
            assert_eq!(x.text.lines().count(), BOTH.lines().count(), "line numbers kept");
        }
        assert_eq!(r[0].text.lines().nth(5), Some("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"));
        assert_eq!(r[1].text.lines().nth(12), Some("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN"));
        assert_eq!(rules(&r[0])[0], "*nat", "the header as iptables-restore writes it");
        assert_eq!(rules(&r[0]).len(), 8);
        assert_eq!(rules(&r[1]).len(), 8);
        assert!(!r[0].text.contains("::6") && !r[1].text.contains("127.0.0.6") && !r[0].text.contains("save"));
    }

    #[test]
    fn one_family_and_plain_restore_and_scripts_are_told_apart() {
        let v4 = "iptables-save\nip6tables-save\n* nat\n-A OUTPUT -d 10.0.0.1 -j RETURN\nCOMMIT\niptables-save\n";
        let r = restores(v4);
        assert_eq!((r.len(), r[0].family), (1, Family::Ipv4));
        // istio-cni's goldens: blocks only, no recorded calls.
        assert_eq!(parse("* mangle\n-N X\nCOMMIT\n* nat\n-N Y\nCOMMIT\n", "f").unwrap(), Parsed::Plain);
        assert_eq!(parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "f").unwrap(), Parsed::Plain);
        // A script feeding iptables-restore from a heredoc is a script.
        let script = "iptables-restore <<EOF\n*nat\n-A OUTPUT -j RETURN\nCOMMIT\nEOF\n";
        assert_eq!(parse(script, "f").unwrap(), Parsed::Other);
        assert_eq!(parse("iptables -t nat -N X\n", "f").unwrap(), Parsed::Other);
        assert_eq!(parse("", "f").unwrap(), Parsed::Other);
        // A lone restore naming only IPv6 addresses is IPv6.
        let v6 = restores("ip6tables-save\n* nat\n-A OUTPUT -d ::1/128 -j RETURN\nCOMMIT\n");
        assert_eq!(v6[0].family, Family::Ipv6);
    }

    #[test]
    fn malformed_files_give_located_errors() {
        let cases = [
            ("iptables-save\n* nat\n-A X\n", "t.golden:2: `* nat` has no COMMIT"),
            ("iptables-save\n* nat\n* raw\nCOMMIT\n", "t.golden:3: `* raw` opens a table before `* nat` (line 2)"),
            ("iptables-save\niptables -t nat -N X\n", "t.golden:2: `iptables -t nat -N X` is neither"),
            ("iptables-save\n", "t.golden: only recorded calls"),
            ("*nat\nCOMMIT\n*nat\nCOMMIT\n*nat\nCOMMIT\n", "t.golden:5: `* nat` is a third restore"),
            (
                "iptables-save\n* nat\n-A X -s ::6/128 -j RETURN\nCOMMIT\n*nat\n-A X -d 10.1.1.1/32\nCOMMIT\n",
                "t.golden:3: `::6/128` is an IPv6 address, but this line is in the file's first restore",
            ),
            ("iptables-save\n*\nCOMMIT\n", "t.golden:2: `*` is not a table header"),
        ];
        for (text, want) in cases {
            let e = parse(text, "t.golden").unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: wanted `{want}`, got `{e}`");
        }
    }

    /// Mutations of a real-shaped file: never a panic, and every error names
    /// the file and a line inside it.
    #[test]
    fn mangled_input_never_panics_and_errors_are_located() {
        let seed: Vec<&str> = BOTH.lines().collect();
        let pieces =
            ["* nat", "COMMIT", "iptables-save", "", "*", "* ", "-A X -d ::1", "-A X -d 1.2.3.4", "é", "\r", "#"];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut errors = 0;
        for _ in 0..5000 {
            let mut lines: Vec<String> = seed.iter().map(|s| s.to_string()).collect();
            for _ in 0..1 + next(4) {
                let at = next(lines.len() + 1);
                match next(4) {
                    0 if !lines.is_empty() => drop(lines.remove(at.min(lines.len() - 1))),
                    1 => lines.insert(at, pieces[next(pieces.len())].to_string()),
                    2 if at < lines.len() => {
                        let cut = next(lines[at].len() + 1);
                        let mut s = lines[at].clone();
                        while !s.is_char_boundary(cut.min(s.len())) {
                            s.pop();
                        }
                        s.truncate(cut.min(s.len()));
                        lines[at] = s;
                    }
                    _ if lines.len() > 1 => {
                        let (a, b) = (next(lines.len()), next(lines.len()));
                        lines.swap(a, b);
                    }
                    _ => {}
                }
            }
            let text = lines.join("\n");
            if let Err(e) = parse(&text, "m.golden") {
                errors += 1;
                let e = e.to_string();
                let rest = e.strip_prefix("m.golden").unwrap_or_else(|| panic!("unlocated: {e}"));
                if let Some(n) = rest.strip_prefix(':').and_then(|r| r.split(':').next()) {
                    let n: usize = n.parse().unwrap_or_else(|_| panic!("no line number: {e}"));
                    assert!(n >= 1 && n <= text.lines().count(), "line {n} outside the file: {e}");
                } else {
                    assert!(rest.starts_with(": only recorded calls"), "{e}");
                }
            }
        }
        assert!(errors > 500, "the mutations hardly ever broke the file ({errors}): the test tests nothing");
    }
}

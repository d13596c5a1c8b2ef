//! `sidecheck policy --from -- <command line>`: the capture policy a rule
//! generator's command line asks for. One module per generator, each
//! reading exactly the flags that generator documents (the source file is
//! cited in each); an unknown flag is an error naming it and the generator,
//! and a flag whose effect a policy cannot express is refused, never dropped.

mod consul;
mod istio;
mod kuma;
mod linkerd;

use crate::policy::{Mesh, Policy};
use crate::{Error, Result};

/// A policy derived from a command line, as YAML `--policy` loads.
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    pub mesh: Mesh,
    /// Which generator read it (`istio-iptables`, `proxy-init`, ...).
    pub generator: &'static str,
    pub yaml: String,
}

impl Derived {
    /// The policy itself, as `--policy` would load it under `profile`.
    pub fn policy(&self, profile: &crate::model::profile::Profile) -> Result<Policy> {
        Policy::parse_for(&format!("(the policy of the {} command line)", self.generator), &self.yaml, profile)
    }
}

/// The policy for a command line given as one string (`--generator 'CMD'`),
/// split as `sh` would split plain words and quotes.
pub fn from_command(cmd: &str) -> Result<Derived> {
    from_args(&split_words(cmd)?)
}

/// The policy for a command line given as words.
pub fn from_args(words: &[String]) -> Result<Derived> {
    let mut w: Vec<&str> = words.iter().map(String::as_str).collect();
    // `sudo` and `env` run the generator; they are not it.
    while let Some(first) = w.first() {
        if *first == "sudo" || *first == "env" {
            w.remove(0);
        } else if first.contains('=') && !first.starts_with('-') {
            return Err(Error::config(format!(
                "`{first}`: environment settings are not read (a generator may take its flags from them): give the flags on the command line"
            )));
        } else {
            break;
        }
    }
    let Some(program) = w.first() else {
        return Err(Error::config("policy --from: no command line given: put the generator's command line after `--`"));
    };
    let base = program.rsplit('/').next().unwrap_or(program);
    let rest: Vec<String> = w.iter().skip(1).map(|s| s.to_string()).collect();
    let sub = |n: usize| rest.iter().take(n).map(String::as_str).collect::<Vec<_>>();
    match base {
        "istio-iptables" => istio::derive(&rest),
        "pilot-agent" if sub(1) == ["istio-iptables"] => istio::derive(&rest[1..]),
        "proxy-init" | "linkerd2-proxy-init" => linkerd::derive(&rest),
        "kumactl" if sub(2) == ["install", "transparent-proxy"] => kuma::derive(&rest[2..]),
        "consul" if sub(2) == ["connect", "redirect-traffic"] => consul::derive(&rest[2..]),
        _ => Err(Error::config(format!(
            "`{}` is not a generator command sidecheck reads: give istio-iptables, pilot-agent istio-iptables, proxy-init (Linkerd), kumactl install transparent-proxy, or consul connect redirect-traffic, with their flags",
            w.join(" ")
        ))),
    }
}

/// Words as `sh` splits them: blanks separate, '...' and "..." quote,
/// backslash escapes. Anything that needs a shell (`$`, `;`, `|`, `` ` ``)
/// is refused: the policy would depend on what the shell made of it.
pub fn split_words(cmd: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(Error::config(format!("`{cmd}`: a ' quote is not closed"))),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => cur.push(x),
                            None => return Err(Error::config(format!("`{cmd}`: a \" quote is not closed"))),
                        },
                        Some('$') | Some('`') => {
                            return Err(Error::config(format!(
                                "`{cmd}`: expansions ($, `) need a shell: give the values themselves"
                            )))
                        }
                        Some(x) => cur.push(x),
                        None => return Err(Error::config(format!("`{cmd}`: a \" quote is not closed"))),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(x) => cur.push(x),
                }
            }
            '$' | '`' | ';' | '|' | '&' | '<' | '>' | '(' | ')' => {
                return Err(Error::config(format!(
                    "`{cmd}`: `{c}` needs a shell (expansion, a list or a pipe): give one generator command line with its values"
                )))
            }
            x => {
                in_word = true;
                cur.push(x);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Words back as one command line, quoted where `sh` needs it (the policy's note).
fn shell_join(words: &[String]) -> String {
    let plain = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,:/@+%".contains(c));
    words
        .iter()
        .map(|w| if plain(w) { w.clone() } else { format!("'{}'", w.replace('\'', "'\\''")) })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a flag is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
}

/// One documented flag: its long name, its one-letter name (pflag), whether
/// it takes a value.
struct Flag {
    long: &'static str,
    short: Option<char>,
    kind: Kind,
}

const fn val(long: &'static str, short: Option<char>) -> Flag {
    Flag { long, short, kind: Kind::Value }
}

const fn flag(long: &'static str, short: Option<char>) -> Flag {
    Flag { long, short, kind: Kind::Bool }
}

/// The flags given, by long name, in order (a bool's value is "true" unless written).
struct Given {
    generator: &'static str,
    /// How the generator writes a long flag (`--`, or `-` for Go's `flag`).
    dash: &'static str,
    flags: Vec<(&'static str, String)>,
}

impl Given {
    fn last(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every value given for `name`, comma-separated ones split.
    fn list(&self, name: &str) -> Vec<String> {
        self.flags
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| *n == name)
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.last(name) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| self.bad(name, v, "true or false")),
        }
    }

    fn bad(&self, name: &str, value: &str, want: &str) -> Error {
        Error::config(format!("{}: {}{name} {value}: give {want}", self.generator, self.dash))
    }

    fn port(&self, name: &str) -> Result<Option<u16>> {
        self.last(name)
            .map(|v| {
                v.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| self.bad(name, v, "a port (1-65535)"))
            })
            .transpose()
    }

    fn refuse(&self, name: &str, why: &str) -> Result<()> {
        if self.has(name) {
            return Err(Error::config(format!(
                "{}: {}{name} cannot be expressed in a policy: {why}",
                self.generator, self.dash
            )));
        }
        Ok(())
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Some(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parse `args` against `flags`. `single_dash_long`: Go's `flag` package
/// (Consul), where `-name` is a long flag; otherwise pflag (cobra), where
/// `-x` is a one-letter flag and `-xVALUE` carries its value.
fn parse_flags(
    generator: &'static str,
    source: &str,
    flags: &[Flag],
    args: &[String],
    single_dash_long: bool,
) -> Result<Given> {
    let mut out = Vec::new();
    let unknown = |arg: &str| {
        Error::config(format!(
            "{generator}: unknown flag `{arg}` (the flags are those {source} defines): check its spelling, or that this generator version has it"
        ))
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (spec, inline): (&Flag, Option<String>) = if let Some(long) = arg.strip_prefix("--") {
            let (name, v) = long.split_once('=').map(|(n, v)| (n, Some(v.to_string()))).unwrap_or((long, None));
            (flags.iter().find(|f| f.long == name).ok_or_else(|| unknown(arg))?, v)
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            if single_dash_long {
                let (name, v) = short.split_once('=').map(|(n, v)| (n, Some(v.to_string()))).unwrap_or((short, None));
                (flags.iter().find(|f| f.long == name).ok_or_else(|| unknown(arg))?, v)
            } else {
                let c = short.chars().next().expect("not empty");
                let spec = flags.iter().find(|f| f.short == Some(c)).ok_or_else(|| unknown(arg))?;
                let tail = &short[c.len_utf8()..];
                let v = match tail.strip_prefix('=') {
                    Some(v) => Some(v.to_string()),
                    None if tail.is_empty() => None,
                    None if spec.kind == Kind::Value => Some(tail.to_string()),
                    None => return Err(unknown(arg)),
                };
                (spec, v)
            }
        } else {
            return Err(Error::config(format!(
                "{generator}: unexpected argument `{arg}`: it takes flags only (a value with a space in it needs quotes)"
            )));
        };
        let value = match (spec.kind, inline) {
            (_, Some(v)) => v,
            (Kind::Bool, None) => "true".into(),
            (Kind::Value, None) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(Error::config(format!("{generator}: {arg} needs a value"))),
            },
        };
        out.push((spec.long, value));
    }
    Ok(Given { generator, dash: if single_dash_long { "-" } else { "--" }, flags: out })
}

/// YAML text for a policy, field by field, values already in YAML.
struct Yaml {
    lines: Vec<String>,
}

impl Yaml {
    fn new(mesh: Mesh, note: String) -> Yaml {
        Yaml { lines: vec![format!("mesh: {}", mesh.name()), format!("note: {}", quote(&note))] }
    }

    fn set(&mut self, key: &str, value: impl std::fmt::Display) {
        self.lines.push(format!("{key}: {value}"));
    }

    fn list<T: std::fmt::Display>(&mut self, key: &str, items: &[T]) {
        let v: Vec<String> = items.iter().map(|x| quote(&x.to_string())).collect();
        self.lines.push(format!("{key}: [{}]", v.join(", ")));
    }

    fn comment(&mut self, text: &str) {
        self.lines.push(format!("# {text}"));
    }

    fn done(self, mesh: Mesh, generator: &'static str) -> Derived {
        Derived { mesh, generator, yaml: self.lines.join("\n") + "\n" }
    }
}

/// A YAML scalar that stays a string (JSON's quoting is YAML's).
fn quote(s: &str) -> String {
    match s.parse::<u64>() {
        Ok(_) => s.to_string(),
        Err(_) => serde_json::to_string(s).expect("a string serialises"),
    }
}

/// Port ranges as a generator writes them (`4190,4191`, `6000-8000`, `8080:9000`).
fn port_ranges(g: &Given, name: &str) -> Result<Vec<crate::policy::PortRange>> {
    g.list(name)
        .iter()
        .map(|p| {
            crate::policy::PortRange::parse(p).ok_or_else(|| {
                g.bad(
                    name,
                    p,
                    "ports or ranges of ports as numbers (a service name such as `ssh` is not resolved here)",
                )
            })
        })
        .collect()
}

/// Address ranges; a plain address is its own /32 or /128.
fn cidrs(g: &Given, name: &str) -> Result<Vec<crate::base::cidr::Cidr>> {
    g.list(name)
        .iter()
        .map(|c| crate::base::cidr::Cidr::parse(c).ok_or_else(|| g.bad(name, c, "addresses or CIDR ranges")))
        .collect()
}

/// Numbers, and ranges `FIRST-LAST` of them (uids, as Kuma takes them).
fn numbers(g: &Given, name: &str, items: &[String]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for s in items {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let (a, b): (u32, u32) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) if a <= b && b - a < 1024 => (a, b),
            _ => return Err(g.bad(name, s, "numbers or short ranges FIRST-LAST")),
        };
        out.extend(a..=b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn words(s: &str) -> Vec<String> {
        split_words(s).unwrap()
    }

    #[test]
    fn words_split_as_sh_splits_them() {
        assert_eq!(words("a 'b c' \"d\\\"e\" f\\ g"), ["a", "b c", "d\"e", "f g"]);
        assert_eq!(words("-i '*' -x \"\""), ["-i", "*", "-x", ""]);
        let back = shell_join(&words("-i '*' -x '' -d 1,2 it\\'s"));
        assert_eq!(back, "-i '*' -x '' -d 1,2 'it'\\''s'");
        assert_eq!(words(&back), ["-i", "*", "-x", "", "-d", "1,2", "it's"], "the note reads back as the same words");
        for bad in ["a 'b", "a \"b", "a $X", "a; b", "a | b", "a `b`"] {
            assert!(split_words(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_generators_and_env_are_refused() {
        let e = from_command("iptables -t nat -L").unwrap_err().to_string();
        assert!(e.contains("is not a generator command") && e.contains("kumactl install transparent-proxy"), "{e}");
        let e = from_command("kumactl install control-plane").unwrap_err().to_string();
        assert!(e.contains("is not a generator command"), "{e}");
        let e = from_command("").unwrap_err().to_string();
        assert!(e.contains("no command line given"), "{e}");
        let e = from_command("INBOUND_CAPTURE_PORT=1 istio-iptables").unwrap_err().to_string();
        assert!(e.contains("environment settings are not read"), "{e}");
        assert_eq!(from_command("sudo /usr/local/bin/istio-iptables -p 1").unwrap().generator, "istio-iptables");
    }

    #[test]
    fn flags_parse_in_every_spelling() {
        let fl = [val("envoy-port", Some('p')), flag("dry-run", Some('n'))];
        let g = parse_flags("g", "s", &fl, &words("-p 1 --envoy-port=2 -p3 -p=4 -n --dry-run=false"), false).unwrap();
        assert_eq!(g.flags.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4", "true", "false"]);
        assert!(!g.bool("dry-run", true).unwrap());
        let e = parse_flags("gen", "src.go", &fl, &words("--envoy-prot 1"), false).err().unwrap().to_string();
        assert!(e.contains("gen: unknown flag `--envoy-prot`") && e.contains("src.go"), "{e}");
        let e = parse_flags("gen", "s", &fl, &words("-p"), false).err().unwrap().to_string();
        assert!(e.contains("-p needs a value"), "{e}");
        let e = parse_flags("gen", "s", &fl, &words("stray"), false).err().unwrap().to_string();
        assert!(e.contains("unexpected argument `stray`"), "{e}");
        let go = [val("proxy-uid", None)];
        let g = parse_flags("g", "s", &go, &words("-proxy-uid 5 --proxy-uid=6"), true).unwrap();
        assert_eq!(g.last("proxy-uid"), Some("6"));
    }
}

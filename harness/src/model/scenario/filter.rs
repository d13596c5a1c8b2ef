//! Which trials a run has: their names, and `--test` / `--skip` on them.

use super::Scenario;
use crate::base::net::Family;
use crate::{Error, Result};

/// A trial's name as runs and reports give it: the scenario, the backend,
/// the family (`istio::type2-app-to-remote::nft::ipv4`).
pub fn case_name(scenario: &str, backend: &str, family: Family) -> String {
    format!("{scenario}::{backend}::{}", family.name())
}

/// `--test` / `--skip` on trial names, as libtest and nextest have them: a
/// trial is kept when it matches any `--test` (or none was given) and no
/// `--skip`. Patterns are unanchored regular expressions.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    test: Vec<regex::Regex>,
    skip: Vec<regex::Regex>,
}

impl Filter {
    pub fn new(test: &[String], skip: &[String]) -> Result<Filter> {
        let compile = |flag: &str, list: &[String]| {
            list.iter()
                .map(|p| {
                    regex::Regex::new(p).map_err(|e| {
                        Error::config(format!("{flag} `{p}` is not a regular expression: {e}\nfix the pattern (trial names contain `::`, which needs no escaping)"))
                    })
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(Filter { test: compile("--test", test)?, skip: compile("--skip", skip)? })
    }

    /// No pattern given: every trial runs.
    pub fn is_empty(&self) -> bool {
        self.test.is_empty() && self.skip.is_empty()
    }

    pub fn keeps(&self, name: &str) -> bool {
        (self.test.is_empty() || self.test.iter().any(|r| r.is_match(name)))
            && !self.skip.iter().any(|r| r.is_match(name))
    }

    /// The patterns as given, for messages: `--test a --skip b`.
    pub fn describe(&self) -> String {
        let test = self.test.iter().map(|r| format!("--test '{}'", r.as_str()));
        let skip = self.skip.iter().map(|r| format!("--skip '{}'", r.as_str()));
        test.chain(skip).collect::<Vec<_>>().join(" ")
    }
}

/// The (scenario, family) cases a run has, in order, named with `backend`,
/// those the filter drops left out. A filter that leaves nothing is an error:
/// a run of no trial would pass without testing anything.
pub fn select(
    scenarios: &[Scenario],
    families: &[Family],
    backend: &str,
    filter: &Filter,
) -> Result<Vec<(Scenario, Family)>> {
    let all: Vec<(Scenario, Family)> =
        scenarios.iter().flat_map(|s| s.families(families).into_iter().map(move |f| (s.clone(), f))).collect();
    let total = all.len();
    let kept: Vec<_> = all.into_iter().filter(|(s, f)| filter.keeps(&case_name(&s.name, backend, *f))).collect();
    if kept.is_empty() && !filter.is_empty() {
        return Err(Error::config(format!(
            "no trial matches {} (of {total} trials): `sidecheck list` with the same options shows their names",
            filter.describe()
        )));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario> {
        Scenario::parse("t::x".into(), "x.yaml".into(), text)
    }

    const GOOD: &str = "flow: 2
description: app to remote
source: { host: local-pod, uid: 1000 }
destination: { host: remote-pod, port: 9090 }
expect:
  ports: [15001, 9090]
  server: remote-app
";

    #[test]
    fn filter_keeps_any_test_match_and_drops_any_skip_match() {
        let s = parse(GOOD).unwrap();
        let names = |f: &Filter| -> Vec<String> {
            select(std::slice::from_ref(&s), &Family::BOTH, "nft", f)
                .unwrap()
                .iter()
                .map(|(s, f)| case_name(&s.name, "nft", *f))
                .collect()
        };
        let all = names(&Filter::default());
        assert_eq!(all, ["t::x::nft::ipv4", "t::x::nft::ipv6"]);
        let f = |t: &[&str], k: &[&str]| {
            Filter::new(
                &t.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &k.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        assert_eq!(names(&f(&["ipv6$"], &[])), ["t::x::nft::ipv6"]);
        // Any --test keeps; any --skip drops, also what a --test kept.
        assert_eq!(names(&f(&["ipv6$", "ipv4$"], &[])), all);
        assert_eq!(names(&f(&["x::"], &["ipv4"])), ["t::x::nft::ipv6"]);
        assert_eq!(names(&f(&[], &["ipv4", "nothing"])), ["t::x::nft::ipv6"]);
        // Unanchored, as libtest's substring filters.
        assert_eq!(names(&f(&["nft"], &[])), all);
        let e = select(std::slice::from_ref(&s), &Family::BOTH, "nft", &f(&["ipv5"], &[])).unwrap_err().to_string();
        assert!(e.starts_with("no trial matches --test 'ipv5' (of 2 trials)") && e.contains("sidecheck list"), "{e}");
        let e = Filter::new(&["a(".into()], &[]).unwrap_err().to_string();
        assert!(e.starts_with("--test `a(` is not a regular expression"), "{e}");
        let e = Filter::new(&[], &["[".into()]).unwrap_err().to_string();
        assert!(e.starts_with("--skip `[` is not a regular expression"), "{e}");
    }
}

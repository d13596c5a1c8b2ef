//! `run --each LIST` (for ci/mutate): many rule sets, one after another in
//! one topology. The list names them; the plan runs in the list's family.

use std::path::{Path, PathBuf};

use crate::base::net::Family;
use crate::plan::{Doing, Plan};
use crate::{Error, Result};

/// The rule sets a list names, all of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Each {
    pub family: Family,
    pub files: Vec<PathBuf>,
}

impl Each {
    /// Read LIST: one `rules PATH` (IPv4 restore) or `rules6 PATH` (IPv6)
    /// a line, blank lines skipped.
    pub fn load(list: &Path) -> Result<Each> {
        let text = crate::base::bounded::read_text(list, crate::base::bounded::RULES_MAX)
            .doing(|| format!("reading --each {}", list.display()))?;
        Self::parse(list, &text)
    }

    pub fn parse(list: &Path, text: &str) -> Result<Each> {
        let mut sets = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let where_ = format!("{}:{}", list.display(), n + 1);
            let (flag, path) = line
                .split_once(' ')
                .ok_or_else(|| Error::config(format!("{where_}: `{line}` is not `rules PATH` or `rules6 PATH`")))?;
            let family = match flag {
                "rules" => Family::Ipv4,
                "rules6" => Family::Ipv6,
                _ => return Err(Error::config(format!("{where_}: `{flag}`: write `rules PATH` or `rules6 PATH`"))),
            };
            sets.push((family, PathBuf::from(path)));
        }
        let Some(&(family, _)) = sets.first() else {
            return Err(Error::config(format!("--each {}: lists no rule set", list.display())));
        };
        if let Some((_, p)) = sets.iter().find(|(f, _)| *f != family) {
            return Err(Error::config(format!(
                "--each {}: {} is for another family than the first: one family per list",
                list.display(),
                p.display()
            )));
        }
        Ok(Each { family, files: sets.into_iter().map(|(_, p)| p).collect() })
    }

    /// `plan` restricted to the list's family (which the policy must test).
    pub fn restrict(&self, list: &Path, plan: &mut Plan) -> Result<()> {
        if !plan.config.topology.families.contains(&self.family) {
            return Err(Error::config(format!(
                "--each {}: the policy does not test {}",
                list.display(),
                self.family.name()
            )));
        }
        plan.config.topology.families = vec![self.family];
        plan.cases.retain(|(_, f)| *f == self.family);
        Ok(())
    }
}

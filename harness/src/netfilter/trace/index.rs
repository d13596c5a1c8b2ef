//! The rules under test as the kernel holds them: rule handle -> position
//! (from an nf_tables rule dump), the hook of each base chain, and the
//! rule texts by chain for detailed views.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::netfilter;
use crate::netfilter::netlink::{self as nl, nftables, Socket};
use crate::rules::source::Frontend;
use crate::sandbox::ns::Namespace;
use crate::{Error, Result};

/// The rules under test as the kernel holds them: positions of nf_tables
/// rule handles, and the text of every rule by chain (from iptables-save)
/// for detailed views.
#[derive(Clone, Debug, Default)]
pub struct RuleIndex {
    /// (family, table, chain, handle) -> position
    positions: HashMap<(u8, String, String, u64), u32>,
    /// (nfproto, table, chain) -> number of rules, from the nf_tables dump
    counts: HashMap<(u8, String, String), usize>,
    /// (nfproto, table, chain) -> hook, for nf_tables base chains (any name)
    hooks: HashMap<(u8, String, String), &'static str>,
    /// (nfproto, table, chain) -> rule texts in order
    pub texts: BTreeMap<(u8, String, String), Vec<String>>,
    /// What the kernel held after installation.
    pub snapshot: netfilter::Snapshot,
}

impl RuleIndex {
    /// Parse iptables-save output (of family `nfproto`) into rule texts by chain.
    pub fn parse_save(nfproto: u8, text: &str) -> BTreeMap<(u8, String, String), Vec<String>> {
        let mut out: BTreeMap<(u8, String, String), Vec<String>> = BTreeMap::new();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap_or_default().to_string();
                out.entry((nfproto, table.clone(), chain)).or_default().push(line.to_string());
            }
        }
        out
    }

    pub fn rule_count(&self, nfproto: u8, table: &str, chain: &str) -> usize {
        let key = (nfproto, table.to_string(), chain.to_string());
        match self.counts.get(&key) {
            Some(n) => *n,
            None => self.texts.get(&key).map_or(0, Vec::len),
        }
    }

    /// The hook a chain is attached to, in the article's spelling
    /// (`OUTPUT`), or None for a user chain. nf_tables says so itself;
    /// x_tables' base chains are named after their hooks.
    pub fn hook_of(&self, nfproto: u8, table: &str, chain: &str) -> Option<&'static str> {
        if let Some(h) = self.hooks.get(&(nfproto, table.to_string(), chain.to_string())) {
            return Some(h);
        }
        ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].into_iter().find(|h| *h == chain)
    }

    /// Rule texts of native nftables tables from `nft -a list ruleset`,
    /// placed by the positions of their handles.
    fn add_nft_texts(&mut self, listing: &str) {
        let family_number = |f: &str| match f {
            "ip" => nl::NFPROTO_IPV4,
            "ip6" => nl::NFPROTO_IPV6,
            "inet" => nl::NFPROTO_INET,
            "arp" => nl::NFPROTO_ARP,
            "bridge" => nl::NFPROTO_BRIDGE,
            "netdev" => nl::NFPROTO_NETDEV,
            _ => nl::NFPROTO_UNSPEC,
        };
        let (mut family, mut table, mut chain) = (0u8, String::new(), String::new());
        for line in listing.lines() {
            let t = line.trim();
            let words: Vec<&str> = t.split_whitespace().collect();
            match words.as_slice() {
                ["table", f, name, ..] => {
                    family = family_number(f);
                    table = name.to_string();
                }
                ["chain", name, ..] => chain = name.to_string(),
                _ => {
                    let Some((text, handle)) = t.rsplit_once(" # handle ") else { continue };
                    let Ok(handle) = handle.trim().parse::<u64>() else { continue };
                    let Some(pos) = self.position(family, &table, &chain, handle) else { continue };
                    let rules = self.texts.entry((family, table.clone(), chain.clone())).or_default();
                    let i = pos as usize - 1;
                    if rules.len() <= i {
                        rules.resize(i + 1, String::new());
                    }
                    if rules[i].is_empty() {
                        // Counter values are from when the listing was taken: noise.
                        let mut words: Vec<&str> = text.split(' ').collect();
                        if let Some(k) = words.iter().position(|w| *w == "packets") {
                            if words.len() > k + 3 && words[k + 2] == "bytes" {
                                words.drain(k..k + 4);
                            }
                        }
                        rules[i] = words.join(" ");
                    }
                }
            }
        }
    }

    pub fn rule_text(&self, nfproto: u8, table: &str, chain: &str, n: u32) -> Option<&str> {
        let i = (n as usize).checked_sub(1)?;
        self.texts.get(&(nfproto, table.to_string(), chain.to_string()))?.get(i).map(String::as_str)
    }

    pub(super) fn position(&self, family: u8, table: &str, chain: &str, handle: u64) -> Option<u32> {
        self.positions.get(&(family, table.to_string(), chain.to_string(), handle)).copied()
    }
}

type Positions = HashMap<(u8, String, String, u64), u32>;
type Hooks = HashMap<(u8, String, String), &'static str>;

impl RuleIndex {
    /// Index the rules under test in `ns`. `rule_texts`: also read the rules
    /// back as text (for views that print each rule beside its number).
    /// x_tables rule counts come from that text too, so under
    /// iptables-legacy it is read regardless.
    pub fn read(ns: &Namespace, frontend: Frontend, timeout: Duration, rule_texts: bool) -> Result<RuleIndex> {
        let snapshot = if rule_texts || netfilter::traced_by(frontend, netfilter::TraceSource::Nflog) {
            netfilter::snapshot(ns, frontend, timeout)?
        } else {
            netfilter::Snapshot::default()
        };
        let (positions, hooks) = match netfilter::traced_by(frontend, netfilter::TraceSource::NfTrace) {
            false => (HashMap::new(), HashMap::new()),
            _ => dump_nft(ns)?,
        };
        let mut counts = HashMap::new();
        for (family, table, chain, _) in positions.keys() {
            *counts.entry((*family, table.clone(), chain.clone())).or_insert(0) += 1;
        }
        let mut texts = BTreeMap::new();
        let saves = [
            (nl::NFPROTO_IPV4, &snapshot.iptables_nft),
            (nl::NFPROTO_IPV6, &snapshot.ip6tables_nft),
            (nl::NFPROTO_IPV4, &snapshot.iptables_legacy),
            (nl::NFPROTO_IPV6, &snapshot.ip6tables_legacy),
        ];
        for (nfproto, save) in saves {
            for (k, v) in RuleIndex::parse_save(nfproto, save.as_deref().unwrap_or("")) {
                texts.entry(k).or_insert(v);
            }
        }
        let mut index = RuleIndex { positions, counts, hooks, texts, snapshot };
        if let Some(listing) = index.snapshot.nft.clone() {
            index.add_nft_texts(&listing);
        }
        Ok(index)
    }
}

/// Dump nf_tables rules and chains (all families) in `ns`: rule handle ->
/// position, and the hook of every base chain.
fn dump_nft(ns: &Namespace) -> Result<(Positions, Hooks)> {
    let doing = format!("listing nf_tables rules in namespace {}", ns.name());
    Socket::in_namespace(ns, Duration::from_secs(5), |sock| -> std::io::Result<_> {
        let mut bad = false;
        // (Positions are counted afresh when an interrupted dump is sent again.)
        type Counted = (HashMap<(u8, String, String), u32>, Positions);
        let counted: std::cell::RefCell<Counted> = Default::default();
        let req = nftables::dump_request(nftables::NFT_MSG_GETRULE, 1);
        let mut count = |m: &nl::Msg<'_>| match nftables::rule(m) {
            Ok(Some(r)) => {
                let (counters, positions) = &mut *counted.borrow_mut();
                let n = counters.entry((r.family, r.table.clone(), r.chain.clone())).or_insert(0);
                *n += 1;
                positions.insert((r.family, r.table, r.chain, r.handle), *n);
            }
            Ok(None) => {}
            Err(_) => bad = true,
        };
        sock.transact_again(&req, 1, &mut count, || *counted.borrow_mut() = Default::default())?;
        let (_, positions) = counted.into_inner();
        let mut hooks = HashMap::new();
        let req = nftables::dump_request(nftables::NFT_MSG_GETCHAIN, 2);
        sock.transact(&req, 2, |m| match nftables::base_chain(m) {
            Ok(Some(c)) => {
                hooks.insert((c.family, c.table, c.chain), c.hook);
            }
            Ok(None) => {}
            Err(_) => bad = true,
        })?;
        if bad {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "malformed attributes in an nf_tables dump",
            ));
        }
        Ok((positions, hooks))
    })?
    .map_err(Error::io(doing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> RuleIndex {
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        RuleIndex { texts: RuleIndex::parse_save(2, save), ..RuleIndex::default() }
    }

    #[test]
    fn save_output_is_indexed_by_chain() {
        let i = index();
        assert_eq!(i.rule_count(2, "nat", "ISTIO_OUTPUT"), 2);
        assert_eq!(i.rule_text(2, "nat", "ISTIO_OUTPUT", 2), Some("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert_eq!(i.rule_count(2, "nat", "NOPE"), 0);
        assert_eq!(i.rule_count(10, "nat", "ISTIO_OUTPUT"), 0);
    }
}

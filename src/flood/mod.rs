//! Flood blocks as the packet path reads them: an immutable [`BlockTable`] (built and swapped
//! whole by `control::flood`, read through a per-worker `arc_swap::Cache`) answering "is this
//! source, or this name, blocked now?" without allocating.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use tokio::time::Instant;

pub use crate::config::BlockAction;

/// What a block covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Queries from a source prefix.
    Prefix(IpNet),
    /// Queries for a name and every name under it (lower-case, trailing dot).
    Suffix(String),
}

/// Which queries for a suffix a block applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every query it matches.
    All,
    /// Only queries that would go to PowerDNS: not answered in-process nor from the packet
    /// cache (a random-subdomain flood: the zone's real names keep being answered).
    Uncached,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Uncached => "uncached",
        }
    }
}

/// One time-limited block.
#[derive(Debug)]
pub struct Block {
    pub id: u64,
    pub target: Target,
    pub scope: Scope,
    pub action: BlockAction,
    /// Why (the rule's measurement, or the operator's text).
    pub reason: String,
    /// `rule:<name>` or `operator`.
    pub origin: String,
    pub start_unix: u64,
    pub expires_unix: u64,
    pub expires: Instant,
    /// Queries it applied to. Every worker adds to the same counter: a contended atomic, but
    /// only on queries that are being refused or dropped anyway.
    pub hits: AtomicU64,
}

impl Block {
    #[inline]
    fn active(&self, now: Instant) -> bool {
        now < self.expires
    }

    #[inline]
    fn hit(&self) -> &Block {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self
    }
}

type Map<K> = HashMap<K, Arc<Block>, foldhash::fast::RandomState>;

/// Every active block, indexed for the packet path.
#[derive(Default)]
pub struct BlockTable {
    /// Per prefix length in use (longest first): masked network → block.
    v4: Vec<(u8, Map<u32>)>,
    v6: Vec<(u8, Map<u128>)>,
    /// Suffix blocks by lower-case wire name, per scope.
    names: [Map<Box<[u8]>>; 2],
    /// Bit n set: some blocked name is n bytes long in wire format.
    name_lengths: [u64; 4],
    blocks: Vec<Arc<Block>>,
}

impl BlockTable {
    /// The table of `blocks` (a later block for the same target and scope wins).
    pub fn build(blocks: Vec<Arc<Block>>) -> BlockTable {
        let mut t = BlockTable::default();
        for b in &blocks {
            match &b.target {
                Target::Prefix(IpNet::V4(n)) => {
                    let m = slot(&mut t.v4, n.prefix_len());
                    m.insert(u32::from(n.network()), b.clone());
                }
                Target::Prefix(IpNet::V6(n)) => {
                    let m = slot(&mut t.v6, n.prefix_len());
                    m.insert(u128::from(n.network()), b.clone());
                }
                Target::Suffix(name) => {
                    let Ok(wire) = crate::dns::name_from_text(name) else {
                        continue;
                    };
                    let n = wire.len().min(255);
                    t.name_lengths[n / 64] |= 1 << (n % 64);
                    t.names[b.scope as usize].insert(wire.into_boxed_slice(), b.clone());
                }
            }
        }
        t.v4.sort_by_key(|b| std::cmp::Reverse(b.0));
        t.v6.sort_by_key(|b| std::cmp::Reverse(b.0));
        t.blocks = blocks;
        t
    }

    /// Every block in the table.
    pub fn blocks(&self) -> &[Arc<Block>] {
        &self.blocks
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The block that applies to any query from `src` or for `qname` (lower-case wire
    /// format), counted as a hit. Prefix blocks first (longest prefix), then `Scope::All`
    /// suffix blocks (longest name).
    #[inline]
    pub fn check(&self, src: IpAddr, qname: &[u8], now: Instant) -> Option<&Block> {
        if self.is_empty() {
            return None;
        }
        let by_source = match src {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    m.get(&(a & mask))
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                    m.get(&(a & mask))
                })
            }
        };
        if let Some(b) = by_source.filter(|b| b.active(now)) {
            return Some(b.hit());
        }
        self.by_name(Scope::All, qname, now)
    }

    /// The `Scope::Uncached` block for `qname`, for a query about to go to PowerDNS.
    #[inline]
    pub fn check_uncached(&self, qname: &[u8], now: Instant) -> Option<&Block> {
        if self.names[Scope::Uncached as usize].is_empty() {
            return None;
        }
        self.by_name(Scope::Uncached, qname, now)
    }

    #[inline]
    fn by_name(&self, scope: Scope, qname: &[u8], now: Instant) -> Option<&Block> {
        let names = &self.names[scope as usize];
        if names.is_empty() {
            return None;
        }
        let mut off = 0;
        while let Some(&len) = qname.get(off) {
            let suffix = &qname[off..];
            let n = suffix.len().min(255);
            if self.name_lengths[n / 64] & (1 << (n % 64)) != 0
                && let Some(b) = names.get(suffix).filter(|b| b.active(now))
            {
                return Some(b.hit());
            }
            if len == 0 {
                break;
            }
            off += 1 + usize::from(len);
        }
        None
    }
}

fn slot<K>(v: &mut Vec<(u8, Map<K>)>, len: u8) -> &mut Map<K> {
    let i = match v.iter().position(|(l, _)| *l == len) {
        Some(i) => i,
        None => {
            v.push((len, Map::default()));
            v.len() - 1
        }
    };
    &mut v[i].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(target: Target, scope: Scope, expires: Instant) -> Arc<Block> {
        Arc::new(Block {
            id: 1,
            target,
            scope,
            action: BlockAction::Refused,
            reason: String::new(),
            origin: "operator".into(),
            start_unix: 0,
            expires_unix: 0,
            expires,
            hits: AtomicU64::new(0),
        })
    }

    fn wire(s: &str) -> Vec<u8> {
        crate::dns::name_from_text(s).unwrap()
    }

    #[test]
    fn prefixes_and_suffixes_match_until_expiry() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(10);
        let t = BlockTable::build(vec![
            block(
                Target::Prefix("192.0.2.0/24".parse().unwrap()),
                Scope::All,
                later,
            ),
            block(
                Target::Prefix("2001:db8::/32".parse().unwrap()),
                Scope::All,
                later,
            ),
            block(Target::Suffix("evil.test.".into()), Scope::All, later),
            block(Target::Suffix("flood.test.".into()), Scope::Uncached, later),
        ]);
        let q = wire("www.example.");
        assert!(t.check("192.0.2.9".parse().unwrap(), &q, now).is_some());
        assert!(t.check("192.0.3.9".parse().unwrap(), &q, now).is_none());
        assert!(t.check("2001:db8:5::1".parse().unwrap(), &q, now).is_some());
        let other = "198.51.100.1".parse().unwrap();
        assert!(t.check(other, &wire("a.b.evil.test."), now).is_some());
        assert!(t.check(other, &wire("evil.test."), now).is_some());
        assert!(t.check(other, &wire("notevil.test."), now).is_none());
        // Uncached-scope blocks only answer `check_uncached`.
        assert!(t.check(other, &wire("x.flood.test."), now).is_none());
        assert!(t.check_uncached(&wire("x.flood.test."), now).is_some());
        assert!(t.check_uncached(&wire("x.evil.test."), now).is_none());
        assert_eq!(t.blocks()[0].hits.load(Ordering::Relaxed), 1);
        assert!(t.check("192.0.2.9".parse().unwrap(), &q, later).is_none());
    }
}

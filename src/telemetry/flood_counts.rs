//! Per-worker flood counters: fixed-size count-min sketches keyed by source prefix, and
//! NXDOMAIN counts per zone slot, written on the packet path and read by the flood rules
//! (`control::flood`) once per interval.
//!
//! Every cell is a single-writer counter that only grows (wrapping): the control plane never
//! writes, it keeps earlier readings and takes differences, so there is no reset race. Each
//! sketch also remembers recent keys in a small direct-mapped table: the candidates the rules
//! estimate (a heavy source writes its key there constantly, so it is present at read time).
//! Accepted races: a read may see some cells of a packet's update and not others (an estimate
//! off by one packet), and a candidate slot may hold a key another source overwrote just
//! before the read (that source's turn comes at a later read if it stays heavy).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{FloodConfig, MAX_FLOOD_QTYPES};
use crate::telemetry::dns_metrics::ZoneSlot;
use crate::telemetry::prom::Cnt;

/// Cells per sketch row (a power of two).
pub(crate) const WIDTH: usize = 1024;
/// Rows per sketch: an estimate is the smallest of its cells, one per row.
pub(crate) const ROWS: usize = 2;
/// Recent keys kept per sketch (a power of two).
pub(crate) const CANDIDATES: usize = 256;
/// A candidate slot never written (255.255.255.255/32 and multicast are never sources).
pub(crate) const EMPTY: u64 = u64::MAX;
/// Zone slots counted (the DNS metrics' slots).
pub(crate) const ZONES: usize = crate::telemetry::dns_metrics::MAX_ZONES + 2;

/// What a sketch counts per source prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    Nxdomain = 0,
    Bytes = 1,
    /// The `i`-th watched query type is at `QTYPE + i`.
    Qtype = 2,
}

/// Sketches per worker: NXDOMAIN, bytes, one per watched query type.
pub(crate) const SKETCHES: usize = 2 + MAX_FLOOD_QTYPES;

/// A source prefix as one 64-bit key: IPv4 as `0xffffffff_xxxxxxxx` (inside ff00::/8, never a
/// source address), IPv6 as its first 64 bits masked to the prefix.
#[inline]
pub fn source_key(ip: IpAddr, cfg: &FloodConfig) -> u64 {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cfg.ipv4_prefix))
                .unwrap_or(0);
            0xffff_ffff_0000_0000 | u64::from(u32::from(a) & mask)
        }
        IpAddr::V6(a) => {
            let hi = (u128::from(a) >> 64) as u64;
            hi & u64::MAX
                .checked_shl(64 - u32::from(cfg.ipv6_prefix))
                .unwrap_or(0)
        }
    }
}

/// The source prefix a key stands for.
pub fn key_net(key: u64, cfg: &FloodConfig) -> ipnet::IpNet {
    if key >> 32 == 0xffff_ffff {
        let a = std::net::Ipv4Addr::from(key as u32);
        ipnet::IpNet::new(IpAddr::V4(a), cfg.ipv4_prefix).unwrap_or_else(|_| IpAddr::V4(a).into())
    } else {
        let a = std::net::Ipv6Addr::from(u128::from(key) << 64);
        ipnet::IpNet::new(IpAddr::V6(a), cfg.ipv6_prefix).unwrap_or_else(|_| IpAddr::V6(a).into())
    }
}

/// The cell of `key` in each row, and its candidate slot.
#[inline]
pub(crate) fn cells(key: u64) -> ([usize; ROWS], usize) {
    let h = (key ^ 0x5bd1_e995_9e37_79b9).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let g = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let row0 = (h >> 54) as usize;
    let row1 = WIDTH + (g >> 54) as usize;
    ([row0, row1], ((g >> 20) as usize) & (CANDIDATES - 1))
}

/// One count-min sketch with its recent keys.
struct Sketch {
    cells: Box<[Cnt]>,
    candidates: Box<[AtomicU64]>,
}

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch {
            cells: (0..ROWS * WIDTH).map(|_| Cnt::default()).collect(),
            candidates: (0..CANDIDATES).map(|_| AtomicU64::new(EMPTY)).collect(),
        }
    }
}

impl Sketch {
    #[inline]
    fn add(&self, key: u64, n: u64) {
        let (rows, slot) = cells(key);
        for c in rows {
            self.cells[c].add(n);
        }
        self.candidates[slot].store(key, Ordering::Relaxed);
    }
}

/// One worker's flood counters (written by that worker only).
pub struct FloodCounts {
    sketches: [Sketch; SKETCHES],
    zone_nx: [Cnt; ZONES],
    /// Queries a block applied to, by `BlockAction` (exported by `control::flood`).
    pub(crate) blocked: [Cnt; 4],
}

impl Default for FloodCounts {
    fn default() -> FloodCounts {
        FloodCounts {
            sketches: std::array::from_fn(|_| Sketch::default()),
            zone_nx: std::array::from_fn(|_| Cnt::default()),
            blocked: Default::default(),
        }
    }
}

impl FloodCounts {
    /// A query from `key` of type `qtype`: counted if a rule watches that type.
    #[inline]
    pub(crate) fn query(&self, key: u64, qtype: u16, cfg: &FloodConfig) {
        if let Some(i) = cfg.watched_qtypes.iter().position(|&w| w == qtype) {
            self.sketches[Measure::Qtype as usize + i].add(key, 1);
        }
    }

    /// An answer of `size` bytes with `rcode` sent to `key`.
    #[inline]
    pub(crate) fn response(&self, key: u64, rcode: u8, size: usize) {
        self.sketches[Measure::Bytes as usize].add(key, size as u64);
        if rcode == 3 {
            self.sketches[Measure::Nxdomain as usize].add(key, 1);
        }
    }

    /// An NXDOMAIN from PowerDNS for a name in `zone`.
    #[inline]
    pub(crate) fn zone_nxdomain(&self, zone: ZoneSlot) {
        if let Some(c) = self.zone_nx.get(zone.index()) {
            c.inc();
        }
    }

    /// Adds this worker's cells of sketch `s` into `out` (`ROWS * WIDTH` long, wrapping).
    pub(crate) fn add_cells(&self, s: usize, out: &mut [u64]) {
        for (o, c) in out.iter_mut().zip(self.sketches[s].cells.iter()) {
            *o = o.wrapping_add(c.get());
        }
    }

    /// This worker's recent keys of sketch `s`.
    pub(crate) fn candidates(&self, s: usize) -> impl Iterator<Item = u64> + '_ {
        self.sketches[s]
            .candidates
            .iter()
            .map(|k| k.load(Ordering::Relaxed))
            .filter(|&k| k != EMPTY)
    }

    /// Adds this worker's per-zone NXDOMAIN counts into `out` (`ZONES` long).
    pub(crate) fn add_zone_nx(&self, out: &mut [u64]) {
        for (o, c) in out.iter_mut().zip(self.zone_nx.iter()) {
            *o = o.wrapping_add(c.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FloodConfig {
        FloodConfig {
            interval: std::time::Duration::from_secs(1),
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            exclude: Vec::new(),
            rules: Vec::new(),
            watched_qtypes: [255, 0],
        }
    }

    #[test]
    fn keys_mask_to_the_prefix_and_name_it_back() {
        let c = cfg();
        let a = source_key("192.0.2.7".parse().unwrap(), &c);
        let b = source_key("192.0.2.200".parse().unwrap(), &c);
        assert_eq!(a, b);
        assert_ne!(a, source_key("192.0.3.7".parse().unwrap(), &c));
        assert_eq!(key_net(a, &c).to_string(), "192.0.2.0/24");
        let v6 = source_key("2001:db8:1:2::1".parse().unwrap(), &c);
        assert_eq!(key_net(v6, &c).to_string(), "2001:db8:1::/48");
        assert_ne!(a, EMPTY);
    }

    #[test]
    fn counts_reach_the_cells_and_candidates() {
        let c = cfg();
        let f = FloodCounts::default();
        let k = source_key("10.1.2.3".parse().unwrap(), &c);
        for _ in 0..5 {
            f.response(k, 3, 100);
            f.query(k, 255, &c);
            f.query(k, 1, &c);
        }
        let mut nx = vec![0u64; ROWS * WIDTH];
        f.add_cells(Measure::Nxdomain as usize, &mut nx);
        let (rows, _) = cells(k);
        assert!(rows.iter().all(|&r| nx[r] == 5));
        let mut bytes = vec![0u64; ROWS * WIDTH];
        f.add_cells(Measure::Bytes as usize, &mut bytes);
        assert!(rows.iter().all(|&r| bytes[r] == 500));
        let mut any = vec![0u64; ROWS * WIDTH];
        f.add_cells(Measure::Qtype as usize, &mut any);
        assert!(rows.iter().all(|&r| any[r] == 5));
        assert_eq!(f.candidates(0).collect::<Vec<_>>(), vec![k]);
    }
}

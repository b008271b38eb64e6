//! Flood rules (dnsdist's DynBlockRulesGroup, evaluated by the control plane): every
//! `[flood].interval` the workers' sketches are read, each rule's rate over its window is
//! estimated per source prefix (or per zone), and a hit becomes a time-limited block. The
//! block list (rule and operator blocks) is kept here and published as an immutable
//! `flood::BlockTable` the workers read. Nothing here runs on the packet path.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::proto::{MetricFamily, MetricType};
use tokio::time::Instant;

use super::{Control, unix_now};
use crate::config::{BlockAction, FloodConfig, FloodKind, FloodRule};
use crate::flood::{Block, BlockTable, Scope, Target};
use crate::state::Shared;
use crate::telemetry::flood_counts::{self, Measure, ROWS, SKETCHES, WIDTH, ZONES};
use crate::telemetry::metrics::{labelled, scalar};

/// Most blocks in force at once (rule and operator): the block table's memory bound. A rule
/// hit beyond it is skipped (counted as `full`); an operator gets an error.
pub(crate) const MAX_BLOCKS: usize = 65_536;

/// A change to the block list (counted and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    RuleAdded = 0,
    OperatorAdded = 1,
    OperatorRemoved = 2,
    Expired = 3,
    /// A rule hit dropped because the list was full.
    Full = 4,
}

impl Change {
    const ALL: [Change; 5] = [
        Change::RuleAdded,
        Change::OperatorAdded,
        Change::OperatorRemoved,
        Change::Expired,
        Change::Full,
    ];

    fn label(self) -> &'static str {
        match self {
            Change::RuleAdded => "rule_added",
            Change::OperatorAdded => "operator_added",
            Change::OperatorRemoved => "operator_removed",
            Change::Expired => "expired",
            Change::Full => "full",
        }
    }
}

/// The block list and the rules' memory of earlier readings.
#[derive(Default)]
pub(crate) struct Flood {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    changes: [AtomicU64; 5],
    /// Requests to the block endpoints refused for a missing or wrong token.
    pub(crate) auth_failures: AtomicU64,
}

#[derive(Default)]
struct Inner {
    blocks: Vec<Arc<Block>>,
    /// Readings of the last `max window` (oldest first).
    history: VecDeque<Reading>,
}

/// The workers' counters summed at one instant.
struct Reading {
    at: Instant,
    sketches: Vec<Vec<u64>>,
    zones: Vec<u64>,
}

/// A block an operator asks for.
pub(crate) struct NewBlock {
    pub(crate) target: Target,
    pub(crate) scope: Scope,
    pub(crate) action: BlockAction,
    pub(crate) duration: Duration,
    pub(crate) reason: String,
}

/// Evaluates the rules every `[flood].interval` (re-read each time: reloads apply).
pub(crate) async fn run(ctl: Arc<Control>) {
    loop {
        let interval = ctl.data.snapshot.load().config.flood.interval;
        tokio::time::sleep(interval).await;
        ctl.flood.tick(&ctl.data, Instant::now());
    }
}

impl Flood {
    /// One evaluation: read the counters, apply the rules, expire blocks, publish.
    pub(crate) fn tick(&self, shared: &Shared, now: Instant) {
        let snap = shared.snapshot.load();
        let cfg = &snap.config.flood;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = self.expire(&mut inner, now);
        if cfg.counting() {
            let (reading, candidates) = read(shared, now);
            let max_window = cfg.rules.iter().map(|r| r.window).max().unwrap_or_default();
            let zone_names = snap.dns_zones.slot_names();
            for rule in &cfg.rules {
                let Some(base) = base_reading(&inner.history, now, rule.window) else {
                    continue;
                };
                let secs = (now - base.at).as_secs_f64();
                if secs < cfg.interval.as_secs_f64() / 2.0 {
                    continue;
                }
                let hits = match rule.kind {
                    FloodKind::ZoneNxdomain => zone_hits(rule, base, &reading, secs, &zone_names),
                    _ => prefix_hits(rule, cfg, base, &reading, &candidates, secs),
                };
                for (target, scope, rate) in hits {
                    changed |= self.rule_block(&mut inner, rule, target, scope, rate, now);
                }
            }
            inner.history.push_back(reading);
            // Keep one reading at least `max_window` old.
            while inner.history.len() > 2 && inner.history[1].at + max_window + cfg.interval <= now
            {
                inner.history.pop_front();
            }
        } else {
            inner.history.clear();
        }
        if changed {
            publish(shared, &inner.blocks);
        }
    }

    fn expire(&self, inner: &mut Inner, now: Instant) -> bool {
        let before = inner.blocks.len();
        inner.blocks.retain(|b| {
            let live = b.expires > now;
            if !live {
                log_change(Change::Expired, b);
            }
            live
        });
        let n = (before - inner.blocks.len()) as u64;
        self.changes[Change::Expired as usize].fetch_add(n, Ordering::Relaxed);
        n > 0
    }

    /// A rule hit: a new block unless the target is blocked already.
    fn rule_block(
        &self,
        inner: &mut Inner,
        rule: &FloodRule,
        target: Target,
        scope: Scope,
        rate: f64,
        now: Instant,
    ) -> bool {
        if inner
            .blocks
            .iter()
            .any(|b| b.target == target && b.scope == scope)
        {
            return false;
        }
        if inner.blocks.len() >= MAX_BLOCKS {
            self.changes[Change::Full as usize].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let b = self.block(
            NewBlock {
                target,
                scope,
                action: rule.action,
                duration: rule.duration,
                reason: format!(
                    "{} {rate:.0}/s over {}s (threshold {})",
                    rule.kind.label(),
                    rule.window.as_secs(),
                    rule.threshold
                ),
            },
            format!("rule:{}", rule.name),
            now,
        );
        log_change(Change::RuleAdded, &b);
        self.changes[Change::RuleAdded as usize].fetch_add(1, Ordering::Relaxed);
        inner.blocks.push(b);
        true
    }

    fn block(&self, n: NewBlock, origin: String, now: Instant) -> Arc<Block> {
        let start = unix_now();
        Arc::new(Block {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            target: n.target,
            scope: n.scope,
            action: n.action,
            reason: n.reason,
            origin,
            start_unix: start,
            expires_unix: start + n.duration.as_secs(),
            expires: now + n.duration,
            hits: AtomicU64::new(0),
        })
    }

    /// An operator's block (replacing one for the same target and scope); its id, or None
    /// when [`MAX_BLOCKS`] are in force.
    pub(crate) fn add(&self, shared: &Shared, n: NewBlock) -> Option<u64> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let b = self.block(n, "operator".into(), Instant::now());
        inner
            .blocks
            .retain(|o| !(o.target == b.target && o.scope == b.scope));
        if inner.blocks.len() >= MAX_BLOCKS {
            return None;
        }
        log_change(Change::OperatorAdded, &b);
        self.changes[Change::OperatorAdded as usize].fetch_add(1, Ordering::Relaxed);
        let id = b.id;
        inner.blocks.push(b);
        publish(shared, &inner.blocks);
        Some(id)
    }

    /// Lifts block `id`; false if there is none.
    pub(crate) fn remove(&self, shared: &Shared, id: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(i) = inner.blocks.iter().position(|b| b.id == id) else {
            return false;
        };
        let b = inner.blocks.remove(i);
        log_change(Change::OperatorRemoved, &b);
        self.changes[Change::OperatorRemoved as usize].fetch_add(1, Ordering::Relaxed);
        publish(shared, &inner.blocks);
        true
    }

    /// Every active block as JSON (most time left first), at most `limit`.
    pub(crate) fn list(&self, limit: usize) -> Vec<serde_json::Value> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut blocks: Vec<&Arc<Block>> = inner.blocks.iter().collect();
        blocks.sort_by_key(|b| std::cmp::Reverse(b.expires));
        blocks
            .into_iter()
            .take(limit)
            .map(|b| block_json(b))
            .collect()
    }

    /// Blocks in force made by rules, and by operators (an alert tells a rule's block, which
    /// nobody chose, from an operator's).
    fn active_by_origin(&self) -> [usize; 2] {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let rule = inner
            .blocks
            .iter()
            .filter(|b| b.origin != "operator")
            .count();
        [rule, inner.blocks.len() - rule]
    }

    fn active(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocks
            .len()
    }

    /// `/status`'s `flood` object: rules, counts, the 20 blocks with the most time left.
    pub(crate) fn status(&self, cfg: &FloodConfig) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = cfg
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "kind": r.kind.label(),
                    "threshold": r.threshold,
                    "window_s": r.window.as_secs(),
                    "action": r.action.label(),
                    "duration_s": r.duration.as_secs(),
                })
            })
            .collect();
        let changes: serde_json::Map<String, serde_json::Value> = Change::ALL
            .iter()
            .map(|c| {
                let n = self.changes[*c as usize].load(Ordering::Relaxed);
                (c.label().to_string(), n.into())
            })
            .collect();
        serde_json::json!({
            "rules": rules,
            "blocks_active": self.active(),
            "changes": changes,
            "blocks": self.list(20),
        })
    }

    /// `dnsteer_flood_*` and the admin token failures.
    pub(crate) fn families(&self, shared: &Shared) -> Vec<MetricFamily> {
        let mut by_action = [0u64; 4];
        shared.metrics.each(|w| {
            for (o, c) in by_action.iter_mut().zip(w.flood.blocked.iter()) {
                *o += c.get();
            }
        });
        vec![
            labelled(
                "dnsteer_flood_blocks_active",
                "Flood blocks in force now, by origin (rule or operator).",
                MetricType::GAUGE,
                "origin",
                ["rule", "operator"]
                    .into_iter()
                    .zip(self.active_by_origin())
                    .map(|(o, n)| (o, n as f64)),
            ),
            labelled(
                "dnsteer_flood_block_changes_total",
                "Changes to the flood block list, by kind.",
                MetricType::COUNTER,
                "change",
                Change::ALL.iter().map(|&c| {
                    let n = self.changes[c as usize].load(Ordering::Relaxed);
                    (c.label(), n as f64)
                }),
            ),
            labelled(
                "dnsteer_flood_blocked_queries_total",
                "Queries a flood block applied to, by action.",
                MetricType::COUNTER,
                "action",
                BlockAction::ALL
                    .iter()
                    .map(|&a| (a.label(), by_action[a as usize] as f64)),
            ),
            scalar(
                "dnsteer_admin_auth_failures_total",
                "Requests to the block endpoints refused for a missing or wrong token.",
                MetricType::COUNTER,
                self.auth_failures.load(Ordering::Relaxed) as f64,
            ),
        ]
    }
}

/// Sums every worker's sketches; the candidate keys of each sketch.
fn read(shared: &Shared, now: Instant) -> (Reading, Vec<HashSet<u64>>) {
    let mut sketches = vec![vec![0u64; ROWS * WIDTH]; SKETCHES];
    let mut candidates = vec![HashSet::new(); SKETCHES];
    let mut zones = vec![0u64; ZONES];
    shared.metrics.each(|w| {
        for (s, (cells, keys)) in sketches.iter_mut().zip(candidates.iter_mut()).enumerate() {
            w.flood.add_cells(s, cells);
            keys.extend(w.flood.candidates(s));
        }
        w.flood.add_zone_nx(&mut zones);
    });
    let reading = Reading {
        at: now,
        sketches,
        zones,
    };
    (reading, candidates)
}

/// The reading a rule's rate is measured from: the newest one at least `window` old, else
/// the oldest (shortly after start or a rule change).
fn base_reading(history: &VecDeque<Reading>, now: Instant, window: Duration) -> Option<&Reading> {
    history
        .iter()
        .rev()
        .find(|r| r.at + window <= now)
        .or_else(|| history.front())
}

/// Source prefixes over a per-prefix rule's threshold.
fn prefix_hits(
    rule: &FloodRule,
    cfg: &FloodConfig,
    base: &Reading,
    now: &Reading,
    candidates: &[HashSet<u64>],
    secs: f64,
) -> Vec<(Target, Scope, f64)> {
    let s = match rule.kind {
        FloodKind::Nxdomain => Measure::Nxdomain as usize,
        FloodKind::Bytes => Measure::Bytes as usize,
        FloodKind::Qtype(_, i) => Measure::Qtype as usize + i,
        FloodKind::ZoneNxdomain => return Vec::new(),
    };
    let (cur, old) = (&now.sketches[s], &base.sketches[s]);
    let mut out = Vec::new();
    for &key in &candidates[s] {
        let (cells, _) = flood_counts::cells(key);
        let est = cells
            .iter()
            .map(|&c| cur[c].wrapping_sub(old[c]))
            .min()
            .unwrap_or(0);
        let rate = est as f64 / secs;
        if rate < rule.threshold {
            continue;
        }
        let net = flood_counts::key_net(key, cfg);
        if cfg.exclude.iter().any(|x| x.contains(&net.network())) {
            continue;
        }
        out.push((Target::Prefix(net), Scope::All, rate));
    }
    out
}

/// Zones over a `zone_nxdomain` rule's threshold (their uncached names get blocked).
fn zone_hits(
    rule: &FloodRule,
    base: &Reading,
    now: &Reading,
    secs: f64,
    names: &[String],
) -> Vec<(Target, Scope, f64)> {
    // Slots 0 and 1 are "other" and "dropped": no zone to block.
    (2..ZONES.min(names.len()))
        .filter_map(|i| {
            let rate = now.zones[i].wrapping_sub(base.zones[i]) as f64 / secs;
            (rate >= rule.threshold)
                .then(|| (Target::Suffix(names[i].clone()), Scope::Uncached, rate))
        })
        .collect()
}

fn publish(shared: &Shared, blocks: &[Arc<Block>]) {
    shared
        .blocks
        .store(Arc::new(BlockTable::build(blocks.to_vec())));
}

fn target_text(t: &Target) -> String {
    match t {
        Target::Prefix(n) => n.to_string(),
        Target::Suffix(s) => s.clone(),
    }
}

fn log_change(c: Change, b: &Block) {
    tracing::warn!(
        target: "dnsteer::flood",
        change = c.label(),
        id = b.id,
        block = %target_text(&b.target),
        scope = b.scope.label(),
        action = b.action.label(),
        origin = %b.origin,
        reason = %b.reason,
        expires_unix = b.expires_unix,
        hits = b.hits.load(Ordering::Relaxed),
        "flood block changed"
    );
}

fn block_json(b: &Block) -> serde_json::Value {
    let (kind, target) = match &b.target {
        Target::Prefix(n) => ("prefix", n.to_string()),
        Target::Suffix(s) => ("suffix", s.clone()),
    };
    serde_json::json!({
        "id": b.id,
        "kind": kind,
        "target": target,
        "scope": b.scope.label(),
        "action": b.action.label(),
        "reason": b.reason,
        "origin": b.origin,
        "start_unix": b.start_unix,
        "expires_unix": b.expires_unix,
        "hits": b.hits.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FloodConfig {
        FloodConfig {
            interval: Duration::from_secs(1),
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exclude: vec!["198.51.100.0/24".parse().unwrap()],
            rules: Vec::new(),
            watched_qtypes: [0, 0],
        }
    }

    fn rule(kind: FloodKind, threshold: f64) -> FloodRule {
        FloodRule {
            name: "r".into(),
            kind,
            threshold,
            window: Duration::from_secs(2),
            action: BlockAction::Drop,
            duration: Duration::from_secs(60),
        }
    }

    fn reading(at: Instant) -> Reading {
        Reading {
            at,
            sketches: vec![vec![0; ROWS * WIDTH]; SKETCHES],
            zones: vec![0; ZONES],
        }
    }

    #[test]
    fn a_prefix_over_the_rate_is_hit_unless_excluded() {
        let c = cfg();
        let t0 = Instant::now();
        let (old, mut now) = (reading(t0), reading(t0 + Duration::from_secs(2)));
        let heavy = flood_counts::source_key("192.0.2.9".parse().unwrap(), &c);
        let light = flood_counts::source_key("203.0.113.9".parse().unwrap(), &c);
        let excluded = flood_counts::source_key("198.51.100.9".parse().unwrap(), &c);
        for (key, n) in [(heavy, 100), (light, 10), (excluded, 100)] {
            for cell in flood_counts::cells(key).0 {
                now.sketches[Measure::Nxdomain as usize][cell] += n;
            }
        }
        let mut candidates = vec![HashSet::new(); SKETCHES];
        candidates[Measure::Nxdomain as usize].extend([heavy, light, excluded]);
        let hits = prefix_hits(
            &rule(FloodKind::Nxdomain, 20.0),
            &c,
            &old,
            &now,
            &candidates,
            2.0,
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].0, Target::Prefix("192.0.2.0/24".parse().unwrap()));
        assert!((hits[0].2 - 50.0).abs() < 1e-9);
        // The same counts measured by another sketch: nothing.
        let bytes = prefix_hits(
            &rule(FloodKind::Bytes, 20.0),
            &c,
            &old,
            &now,
            &candidates,
            2.0,
        );
        assert!(bytes.is_empty());
    }

    #[test]
    fn a_zone_over_the_rate_gets_an_uncached_block_and_windows_pick_their_base() {
        let t0 = Instant::now();
        let (old, mut now) = (reading(t0), reading(t0 + Duration::from_secs(1)));
        let names: Vec<String> = ["other", "dropped", "a.test.", "b.test."]
            .map(String::from)
            .to_vec();
        now.zones[2] = 500;
        now.zones[3] = 5;
        now.zones[0] = 10_000;
        let hits = zone_hits(
            &rule(FloodKind::ZoneNxdomain, 100.0),
            &old,
            &now,
            1.0,
            &names,
        );
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0, Target::Suffix("a.test.".into()));
        assert_eq!(hits[0].1, Scope::Uncached);

        let history: VecDeque<Reading> = (0..5)
            .map(|i| reading(t0 + Duration::from_secs(i)))
            .collect();
        let at = t0 + Duration::from_secs(5);
        let base = base_reading(&history, at, Duration::from_secs(2)).unwrap();
        assert_eq!(base.at, t0 + Duration::from_secs(3));
        let base = base_reading(&history, at, Duration::from_secs(60)).unwrap();
        assert_eq!(base.at, t0, "the oldest while history is short");
    }

    #[test]
    fn blocks_in_force_are_told_apart_by_origin() {
        let f = Flood::default();
        let now = Instant::now();
        let prefix = |p: &str| Target::Prefix(p.parse().unwrap());
        let op = |p: &str| NewBlock {
            target: prefix(p),
            scope: Scope::All,
            action: BlockAction::Refused,
            duration: Duration::from_secs(60),
            reason: "ticket".into(),
        };
        let mut inner = f.inner.lock().unwrap();
        let r = rule(FloodKind::Nxdomain, 1.0);
        for p in ["192.0.2.0/24", "203.0.113.0/24"] {
            assert!(f.rule_block(&mut inner, &r, prefix(p), Scope::All, 5.0, now));
        }
        let b = f.block(op("198.51.100.0/24"), "operator".into(), now);
        inner.blocks.push(b);
        drop(inner);
        assert_eq!(f.active_by_origin(), [2, 1]);
        assert_eq!(f.active(), 3);
    }
}

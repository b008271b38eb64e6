//! Per-source rate limiting in fixed memory, in one of two modes: `qps` (dnsdist
//! `MaxQPSIPRule` + dynamic block, on queries) or `rrl` (BIND/NSD/Knot response rate limiting,
//! on UDP answers; see "RRL mode" below).
//!
//! Key: the packet's source address (never ECS, which the client chooses) masked to
//! `ipv4_prefix` / `ipv6_prefix`; an IPv4-mapped IPv6 source counts as IPv4. Each key gets a
//! GCRA bucket of `burst` queries refilled at `qps`. The query that overflows it starts a
//! block: every query from the key is limited for `block_for`, after which the key starts
//! fresh with a full bucket. With `block_for = 0` there is no block: queries over the rate are
//! limited one by one, and `block_started` marks the first of each run.
//!
//! Memory: one table allocated up front and never grown: `max_tracked_sources` rounded up
//! to a power of two, 16 bytes per source (a 64-bit keyed-hash tag and a 64-bit state), in
//! 4-way buckets of one cache line each. GCRA is implemented here rather than through
//! governor: governor's `StateStore` sees one key at a time and stores only a TAT, so it can
//! express neither a block nor "evict anything but a blocked source".
//!
//! Eviction, when a new source finds its bucket full: the entry whose state is closest to
//! fresh goes first. An entry whose bucket has refilled is indistinguishable from an unseen
//! source, so dropping it loses nothing; otherwise the one with the least debt (the
//! least-recently or least-heavily active) goes. An entry under an active block is never
//! evicted; when all four entries of a bucket are blocked the new source is not tracked and is
//! allowed (fail open: a spoofed flood cannot make the table refuse legitimate sources).
//!
//! Concurrency: shared by all workers, lock-free. A slot's tag and state are separate atomics:
//! a hit updates the state with a compare-and-swap loop; an insert claims the slot by swapping
//! its tag to a reserved value, writes the state, then publishes the tag. Races accepted:
//! - two workers inserting the same new source at once may give it two slots: lookups use
//!   the first, the other ages out unused, so the source gets one extra query;
//! - a state read by one worker while another evicts the slot can charge one query to the
//!   wrong source, or admit one extra query;
//! - an entry can be evicted in the instant between being chosen as victim and becoming
//!   blocked, losing that block.
//!
//! Tags come from foldhash (quality variant) with a random seed per table, so an attacker
//! cannot aim sources at a chosen bucket (HashDoS against the table). foldhash is not a PRF
//! like SipHash, but SipHash cost 43 ns per check here against 3 ns, and the stakes are
//! bounded: a bucket is 4 slots whatever the input (no worst-case blow-up), and all a
//! collision can do is evict state that is not a block.
//!
//! Time: `check_at` takes the caller's `Instant` (read once per batch, or driven by tests);
//! `check` reads the clock once.
//!
//! RRL mode (`rrl_check_at`, per UDP answer): the same table holds one GCRA budget per
//! (source prefix, response kind, name[, qtype]) key, BIND's: `responses_per_second` with one
//! second of burst, limited answers charged too up to `window` seconds of debt; and, when
//! `bytes_per_second` is set, one byte budget per prefix (charged with what is sent). A check
//! probes one bucket for the response key and, only if that allows, one for the prefix's
//! bytes; nothing is allocated (names are hashed label by label, lowercased, following
//! compression pointers). Eviction as above: least debt first; nothing is ever blocked, so
//! nothing is pinned. Races accepted, on top of those above:
//! - `slip` counts limited answers per worker thread (a counter stripe), not per key: the
//!   ratio holds overall, but one key's slips may come unevenly;
//! - a response allowed by its key's budget and then limited by the byte budget stays charged
//!   to its key (BIND charges limited responses too);
//! - `rrl_before_forward_at` reads a key and then charges it: queries racing it on other
//!   workers may still be forwarded, and a query forwarded just before the budget ran out is
//!   limited when its answer comes back (PowerDNS was asked anyway).

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prometheus::proto::{MetricFamily, MetricType};

use crate::config::{RateLimitConfig, RateLimitMode};
use crate::dns::{ResponseClass, classify_response, for_each_label};
use crate::telemetry::metrics::{Metrics, family, labelled, scalar};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its rate (or limiting disabled, or the source could not be tracked).
    Allow,
    /// Never counted nor limited.
    Exempt,
    /// Over its rate or blocked: apply the configured action (unless dry run).
    /// `block_started` is true for the query that started the block (log it once).
    Limited { block_started: bool },
    /// `dry_run`: this query would have been `Limited`; count and log it, then answer it
    /// normally. The limiter's state moves exactly as it would without dry run, so the logs
    /// show the blocks a real run would impose.
    WouldLimit { block_started: bool },
}

/// A source under an active block, for /status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct BlockedSource {
    pub prefix: IpNet,
    /// Seconds left, rounded up.
    pub(crate) remaining_secs: u64,
}

/// Counters since start (they survive `reconfigure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateLimitStats {
    /// Calls while enabled, exempt ones included.
    pub(crate) checks: u64,
    pub exempt: u64,
    /// `Limited` and `WouldLimit` verdicts.
    pub limited: u64,
    /// Verdicts with `block_started` (with `block_for = 0`: starts of a run of limited queries).
    pub(crate) blocks_started: u64,
    /// Tracked sources dropped for a new one while still carrying state (debt or block):
    /// steadily nonzero means `max_tracked_sources` is too small for the traffic.
    pub(crate) evictions: u64,
    /// Sources allowed without tracking because their bucket held only blocked sources.
    pub(crate) untracked: u64,
}

/// Slots per bucket: 4 tags + 4 states = one 64-byte cache line per lookup.
const WAYS: usize = 4;
/// Block starts remembered for `top_blocked` (most recent first matters: every block lasts
/// `block_for`, so the most recent starts are the ones with the most time left).
const RECENT_BLOCKS: usize = 1024;
const STRIPES: usize = 16;

// Tag values: valid tags are odd.
const EMPTY: u64 = 0;
const RESERVED: u64 = 2;

// State word: flags in the top bits, nanoseconds since `epoch` below.
const BLOCKED: u64 = 1 << 63;
const LIMITING: u64 = 1 << 62;
const TIME: u64 = LIMITING - 1;

pub struct RateLimiter {
    shared: ArcSwap<Shared>,
    /// Mirror of `params.enabled`: a disabled limiter costs one relaxed load per packet, not
    /// an `ArcSwap` load.
    enabled: std::sync::atomic::AtomicBool,
    /// Enabled in rrl mode: the answer path classifies a response only then.
    rrl_active: std::sync::atomic::AtomicBool,
    /// Origin of the table's times, an hour before creation so that callers on tokio's
    /// paused clock (which lags real time) still read times after it.
    epoch: Instant,
    stats: [Stripe; STRIPES],
}

/// What one check reads: the settings and the table they apply to, swapped together.
struct Shared {
    params: Params,
    table: Arc<Table>,
}

struct Params {
    enabled: bool,
    dry_run: bool,
    /// GCRA emission interval: 1 s / qps.
    interval_ns: u64,
    /// burst × interval: how far ahead of now the theoretical arrival time may run.
    limit_ns: u64,
    block_ns: u64,
    exempt: ExemptSet,
    /// Set in rrl mode (then the qps fields are unused).
    rrl: Option<RrlParams>,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let now = Instant::now();
        let epoch = [3600, 60, 1]
            .into_iter()
            .find_map(|s| now.checked_sub(Duration::from_secs(s)))
            .unwrap_or(now);
        RateLimiter {
            shared: ArcSwap::from_pointee(Shared {
                params: Params::new(cfg),
                table: Arc::new(Table::new(cfg)),
            }),
            enabled: std::sync::atomic::AtomicBool::new(cfg.enabled),
            rrl_active: std::sync::atomic::AtomicBool::new(rrl_active(cfg)),
            epoch,
            stats: Default::default(),
        }
    }

    pub fn check(&self, src: IpAddr) -> Verdict {
        self.check_at(src, Instant::now())
    }

    /// `check` at a given time: a worker reads the clock once per batch, tests drive time.
    /// Under tokio's paused clock pass `tokio::time::Instant::now().into_std()`. A time
    /// earlier than one already seen does no harm (the source just refills less).
    pub fn check_at(&self, src: IpAddr, now: Instant) -> Verdict {
        if !self.enabled.load(Ordering::Relaxed) || self.rrl_active() {
            return Verdict::Allow;
        }
        let shared = self.shared.load();
        let p = &shared.params;
        if !p.enabled || p.rrl.is_some() {
            return Verdict::Allow;
        }
        let stats = self.local_stats();
        stats.checks.fetch_add(1, Ordering::Relaxed);
        let src = src.to_canonical();
        if p.exempt.contains(src) {
            stats.exempt.fetch_add(1, Ordering::Relaxed);
            return Verdict::Exempt;
        }
        let key = shared.table.key(src);
        let tag = shared.table.tag(key);
        let Some(block_started) = shared.table.check(tag, self.nanos(now), p, stats) else {
            return Verdict::Allow;
        };
        if block_started && p.block_ns > 0 {
            shared.table.remember_block(key, tag);
        }
        stats.limited.fetch_add(1, Ordering::Relaxed);
        if block_started {
            stats.blocks_started.fetch_add(1, Ordering::Relaxed);
        }
        if p.dry_run {
            Verdict::WouldLimit { block_started }
        } else {
            Verdict::Limited { block_started }
        }
    }

    /// Applies a reloaded `[ratelimit]`. qps, burst, block_for (also for blocks already
    /// running: they end at start + the new block_for), exempt, dry_run and enabled
    /// change in place and keep all state. A change of `max_tracked_sources` (after rounding
    /// to a power of two) or of a prefix length starts an empty table: the old keys mean
    /// nothing under another mask, and resizing in place would need a lock.
    pub(crate) fn reconfigure(&self, cfg: &RateLimitConfig) {
        let current = self.shared.load_full();
        let table = if current.table.fits(cfg) {
            Arc::clone(&current.table)
        } else {
            Arc::new(Table::new(cfg))
        };
        // The old table, if replaced, is freed here on the control plane, not by a worker.
        let _old = self.shared.swap(Arc::new(Shared {
            params: Params::new(cfg),
            table,
        }));
        self.enabled.store(cfg.enabled, Ordering::Relaxed);
        self.rrl_active.store(rrl_active(cfg), Ordering::Relaxed);
    }

    /// Whether answers are to be checked (enabled, rrl mode): one relaxed load.
    #[inline]
    pub fn rrl_active(&self) -> bool {
        self.rrl_active.load(Ordering::Relaxed)
    }

    /// Sources carrying state (debt or a block) now. Scans the whole table: for metrics
    /// scrapes and /status, not the packet path.
    pub(crate) fn tracked(&self) -> usize {
        self.tracked_at(Instant::now())
    }

    pub fn tracked_at(&self, now: Instant) -> usize {
        let shared = self.shared.load();
        shared.table.count(self.nanos(now), &shared.params).0
    }

    /// Sources under an active block now. Scans the whole table, like `tracked`.
    pub(crate) fn blocked_now(&self) -> usize {
        self.blocked_now_at(Instant::now())
    }

    pub(crate) fn blocked_now_at(&self, now: Instant) -> usize {
        let shared = self.shared.load();
        shared.table.count(self.nanos(now), &shared.params).1
    }

    /// Up to `n` blocked sources, most time left first. Drawn from the last 1024 block
    /// starts, which hold the longest-remaining blocks since every block lasts `block_for`.
    pub(crate) fn top_blocked(&self, n: usize) -> Vec<BlockedSource> {
        self.top_blocked_at(n, Instant::now())
    }

    pub(crate) fn top_blocked_at(&self, n: usize, now: Instant) -> Vec<BlockedSource> {
        let shared = self.shared.load();
        shared.table.top_blocked(n, self.nanos(now), &shared.params)
    }

    /// Bytes held by the table and the recent-blocks ring: fixed once configured.
    pub fn memory_bytes(&self) -> usize {
        self.shared.load().table.memory_bytes() + std::mem::size_of::<Self>()
    }

    pub(crate) fn stats(&self) -> RateLimitStats {
        let sum = |f: fn(&Stripe) -> &AtomicU64| {
            self.stats
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        RateLimitStats {
            checks: sum(|s| &s.checks),
            exempt: sum(|s| &s.exempt),
            limited: sum(|s| &s.limited),
            blocks_started: sum(|s| &s.blocks_started),
            evictions: sum(|s| &s.evictions),
            untracked: sum(|s| &s.untracked),
        }
    }

    /// The limiter's metric families: what the workers did with limited queries (their
    /// counters) and the table's state.
    pub(crate) fn families(&self, workers: &Metrics) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        out.push(labelled(
            "dnsteer_ratelimit_limited_total",
            "Queries limited by the per-source rate limit, by action applied.",
            MetricType::COUNTER,
            "action",
            ["drop", "refused", "truncate"]
                .into_iter()
                .enumerate()
                .map(|(i, a)| (a, workers.sum(|w| w.limited_by_action[i].get()) as f64)),
        ));
        out.push(scalar(
            "dnsteer_ratelimit_dry_run_total",
            "Queries that would have been limited in dry-run mode.",
            MetricType::COUNTER,
            workers.sum(|w| w.would_limit.get()) as f64,
        ));
        out.push(family(
            "dnsteer_rrl_limited_total",
            "UDP responses limited in rrl mode, by response kind and outcome (slipped = sent as TC=1).",
            MetricType::COUNTER,
            RrlKind::ALL
                .iter()
                .flat_map(|&k| {
                    ["slipped", "dropped"].into_iter().enumerate().map(move |(o, outcome)| {
                        (
                            vec![("kind", k.label().to_string()), ("outcome", outcome.to_string())],
                            workers.sum(|w| w.rrl_limited[k as usize][o].get()) as f64,
                        )
                    })
                })
                .collect(),
        ));
        out.push(scalar(
            "dnsteer_rrl_limited_by_bytes_total",
            "UDP responses limited in rrl mode by their source prefix's bytes_per_second budget.",
            MetricType::COUNTER,
            workers.sum(|w| w.rrl_by_bytes.get()) as f64,
        ));
        out.push(scalar(
            "dnsteer_rrl_not_forwarded_total",
            "UDP queries limited in rrl mode before forwarding: PowerDNS was not asked.",
            MetricType::COUNTER,
            workers.sum(|w| w.rrl_not_forwarded.get()) as f64,
        ));
        let stats = self.stats();
        out.push(scalar(
            "dnsteer_ratelimit_checks_total",
            "Rate-limit checks made while the limiter is enabled, exempt sources included.",
            MetricType::COUNTER,
            stats.checks as f64,
        ));
        out.push(scalar(
            "dnsteer_ratelimit_blocks_total",
            "Blocks started (a source went over its rate).",
            MetricType::COUNTER,
            stats.blocks_started as f64,
        ));
        out.push(scalar(
            "dnsteer_ratelimit_blocked_sources",
            "Source prefixes blocked right now.",
            MetricType::GAUGE,
            self.blocked_now() as f64,
        ));
        out.push(scalar(
            "dnsteer_ratelimit_tracked_sources",
            "Source prefixes in the rate-limit table (bounded by max_tracked_sources).",
            MetricType::GAUGE,
            self.tracked() as f64,
        ));
        out.push(scalar(
            "dnsteer_ratelimit_evictions_total",
            "Table entries replaced to make room for new sources.",
            MetricType::COUNTER,
            stats.evictions as f64,
        ));
        out
    }

    fn nanos(&self, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX).min(TIME)
    }

    /// This thread's counter stripe: workers (one thread each) rarely share a cache line.
    fn local_stats(&self) -> &Stripe {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        &self.stats[INDEX.with(|i| *i)]
    }
}

#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    checks: AtomicU64,
    exempt: AtomicU64,
    limited: AtomicU64,
    blocks_started: AtomicU64,
    evictions: AtomicU64,
    untracked: AtomicU64,
    /// Limited RRL responses seen by this thread: every `slip`-th one slips.
    slip_seq: AtomicU64,
}

impl Params {
    fn new(cfg: &RateLimitConfig) -> Self {
        let interval_ns = (1_000_000_000 / u64::from(cfg.qps.max(1))).max(1);
        Params {
            enabled: cfg.enabled,
            dry_run: cfg.dry_run,
            interval_ns,
            limit_ns: interval_ns.saturating_mul(u64::from(cfg.burst.max(1))),
            block_ns: u64::try_from(cfg.block_for.as_nanos())
                .unwrap_or(TIME)
                .min(TIME),
            exempt: ExemptSet::new(&cfg.exempt),
            rrl: (cfg.mode == RateLimitMode::Rrl).then(|| RrlParams::new(cfg)),
        }
    }

    fn remaining_block(&self, state: u64, now: u64) -> Option<u64> {
        let end = (state & TIME).saturating_add(self.block_ns);
        (state & BLOCKED != 0 && now < end).then(|| end - now)
    }
}

/// How a table entry's state moves on one event: qps mode's GCRA with blocks ([`Params`]), or
/// an RRL budget ([`Budget`]).
trait Policy {
    /// The verdict (`Some(run_started)` when limited) and the slot's next state. State 0 is
    /// an unseen key.
    fn step(&self, state: u64, now: u64) -> (Option<bool>, u64);
    /// How much a slot's state differs from unseen: None for one that must not be evicted
    /// (an active block), else its debt in nanoseconds (0 = as good as unseen).
    fn debt(&self, state: u64, now: u64) -> Option<u64>;
}

impl Policy for Params {
    /// GCRA step for one query: the verdict (`Some(block_started)` when limited) and the
    /// slot's next state.
    fn step(&self, state: u64, now: u64) -> (Option<bool>, u64) {
        let time = state & TIME;
        if state & BLOCKED != 0 {
            if now < time.saturating_add(self.block_ns) {
                return (Some(false), state);
            }
            return (None, self.fresh(now));
        }
        let next = time.max(now).saturating_add(self.interval_ns);
        if next - now <= self.limit_ns {
            return (None, next.min(TIME));
        }
        if self.block_ns > 0 {
            return (Some(true), BLOCKED | now);
        }
        // No blocks: refuse this query without charging it; flag the run's first.
        (Some(state & LIMITING == 0), state | LIMITING)
    }

    fn debt(&self, state: u64, now: u64) -> Option<u64> {
        let time = state & TIME;
        if state & BLOCKED != 0 {
            return (now >= time.saturating_add(self.block_ns)).then_some(0);
        }
        Some(time.saturating_sub(now))
    }
}

impl Params {
    /// State after a new source's first query (always allowed: burst ≥ 1).
    fn fresh(&self, now: u64) -> u64 {
        now.saturating_add(self.interval_ns).min(TIME)
    }
}

// ---------------------------------------------------------------------------------------------
// RRL mode
// ---------------------------------------------------------------------------------------------

/// A response's kind, each with its own budgets (BIND's classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RrlKind {
    Positive = 0,
    NoData = 1,
    NxDomain = 2,
    Referral = 3,
    Error = 4,
}

impl RrlKind {
    pub(crate) const ALL: [RrlKind; 5] = [
        RrlKind::Positive,
        RrlKind::NoData,
        RrlKind::NxDomain,
        RrlKind::Referral,
        RrlKind::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RrlKind::Positive => "positive",
            RrlKind::NoData => "nodata",
            RrlKind::NxDomain => "nxdomain",
            RrlKind::Referral => "referral",
            RrlKind::Error => "error",
        }
    }
}

/// The name a response is accounted under, in whatever form the caller has it.
#[derive(Debug, Clone, Copy)]
pub enum RrlName<'a> {
    /// Errors: one budget per prefix whatever was asked.
    None,
    /// An uncompressed, lowercase wire name (a parsed query name, or its parent).
    Wire(&'a [u8]),
    /// A possibly compressed name at an offset in a response (the SOA or NS owner).
    At(&'a [u8], usize),
    /// A zone dnsteer knows, by its index.
    Zone(u8),
}

/// What one response is accounted under: BIND's key, less the source prefix.
#[derive(Debug, Clone, Copy)]
pub struct RrlKey<'a> {
    pub kind: RrlKind,
    pub name: RrlName<'a>,
    /// Only positive answers tell types apart (an empty answer has no type to count by).
    pub qtype: u16,
}

impl<'a> RrlKey<'a> {
    /// The key of `resp`, the answer to `qname`/`qtype` (`qname` lowercase, uncompressed, as
    /// parsed): positive answers per name and type; NXDOMAIN and NODATA per zone (`zone`, the
    /// apex dnsteer knows, else the SOA owner in the response, else the name's parent);
    /// referrals per delegation (the NS owner); errors all together.
    pub fn of_response(resp: &'a [u8], qname: &'a [u8], qtype: u16, zone: Option<u8>) -> Self {
        let (class, owner) = classify_response(resp);
        let kind = match class {
            ResponseClass::Positive => return RrlKey::positive(qname, qtype),
            ResponseClass::Error => {
                return RrlKey {
                    kind: RrlKind::Error,
                    name: RrlName::None,
                    qtype: 0,
                };
            }
            ResponseClass::NoData => RrlKind::NoData,
            ResponseClass::NxDomain => RrlKind::NxDomain,
            ResponseClass::Referral => RrlKind::Referral,
        };
        let name = match (kind, zone, owner) {
            (RrlKind::NoData | RrlKind::NxDomain, Some(z), _) => RrlName::Zone(z),
            (_, _, Some(at)) => RrlName::At(resp, at),
            _ => RrlName::Wire(parent(qname)),
        };
        RrlKey {
            kind,
            name,
            qtype: 0,
        }
    }

    pub fn positive(qname: &'a [u8], qtype: u16) -> Self {
        RrlKey {
            kind: RrlKind::Positive,
            name: RrlName::Wire(qname),
            qtype,
        }
    }
}

/// `name` less its first label (the root stays the root).
fn parent(name: &[u8]) -> &[u8] {
    match name.first() {
        Some(&n) if n > 0 => name.get(1 + usize::from(n)..).unwrap_or(&[0]),
        _ => name,
    }
}

/// An RRL verdict on one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RrlVerdict {
    /// Send it (within budget, limiting off, or not tracked).
    Allow,
    /// Never counted nor limited.
    Exempt,
    /// Over budget: send the minimal TC=1 answer instead (`slip`) or nothing.
    Limited(RrlLimit),
    /// `dry_run`: would have been `Limited`; send it as is.
    WouldLimit(RrlLimit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlLimit {
    pub kind: RrlKind,
    /// This one goes out as TC=1 (every `slip`-th limited response).
    pub slip: bool,
    /// The prefix's byte budget limited it (its response budget had room).
    pub by_bytes: bool,
    /// The first limited response of a run for its key (log it once).
    pub started: bool,
}

/// rrl mode's settings, in table units.
struct RrlParams {
    responses: Budget,
    /// Nanoseconds of budget one response byte costs ×1024 (0 = no byte budget).
    ns_per_kib: u64,
    slip: u64,
}

impl RrlParams {
    fn new(cfg: &RateLimitConfig) -> Self {
        const SECOND: u64 = 1_000_000_000;
        let rps = u64::from(cfg.responses_per_second.max(1));
        let interval = (SECOND / rps).max(1);
        RrlParams {
            responses: Budget {
                cost_ns: interval,
                // One second of responses, like BIND's largest balance (= the rate).
                tolerance_ns: interval * rps,
                // Limited responses are charged too, down to `window` seconds of debt: a key
                // over its rate stays limited until it slows down, as in BIND.
                cap_ns: interval * rps + u64::from(cfg.window) * SECOND,
                charge_limited: true,
            },
            ns_per_kib: match cfg.bytes_per_second {
                0 => 0,
                bps => (SECOND * 1024 / bps).max(1),
            },
            slip: u64::from(cfg.slip),
        }
    }

    /// The byte budget's step for a response of `len` bytes: one second of bytes as burst,
    /// only what is sent is charged.
    fn bytes(&self, len: usize) -> Budget {
        let tolerance = 1_000_000_000;
        Budget {
            cost_ns: (len as u64).saturating_mul(self.ns_per_kib) / 1024,
            tolerance_ns: tolerance,
            cap_ns: tolerance,
            charge_limited: false,
        }
    }
}

/// A token bucket as GCRA: the state is the time at which the bucket is full again.
struct Budget {
    /// What one event costs.
    cost_ns: u64,
    /// How far ahead of now that time may run and still allow (the burst).
    tolerance_ns: u64,
    /// How far ahead a limited event may push it (the debt), when `charge_limited`.
    cap_ns: u64,
    charge_limited: bool,
}

impl Policy for Budget {
    fn step(&self, state: u64, now: u64) -> (Option<bool>, u64) {
        let next = (state & TIME).max(now).saturating_add(self.cost_ns);
        if next - now <= self.tolerance_ns {
            return (None, next.min(TIME));
        }
        let started = state & LIMITING == 0;
        let time = if self.charge_limited {
            next.min(now.saturating_add(self.cap_ns)).min(TIME)
        } else {
            state & TIME
        };
        (Some(started), time | LIMITING)
    }

    fn debt(&self, state: u64, now: u64) -> Option<u64> {
        Some((state & TIME).saturating_sub(now))
    }
}

impl RateLimiter {
    /// RRL's verdict on a UDP response of `len` bytes to `src`, accounted under `key`.
    /// Allows everything unless enabled in rrl mode. The caller does not ask for TCP or a
    /// proven source (a valid server cookie): those are never limited.
    pub fn rrl_check_at(
        &self,
        src: IpAddr,
        key: RrlKey<'_>,
        len: usize,
        now: Instant,
    ) -> RrlVerdict {
        if !self.enabled.load(Ordering::Relaxed) {
            return RrlVerdict::Allow;
        }
        let shared = self.shared.load();
        let (p, table) = (&shared.params, &*shared.table);
        let Some(rrl) = p.rrl.as_ref().filter(|_| p.enabled) else {
            return RrlVerdict::Allow;
        };
        let stats = self.local_stats();
        stats.checks.fetch_add(1, Ordering::Relaxed);
        let src = src.to_canonical();
        if p.exempt.contains(src) {
            stats.exempt.fetch_add(1, Ordering::Relaxed);
            return RrlVerdict::Exempt;
        }
        let prefix = table.key(src);
        let now = self.nanos(now);
        let mut by_bytes = false;
        let mut started = table.check(table.rrl_tag(prefix, &key), now, &rrl.responses, stats);
        if started.is_none() && rrl.ns_per_kib > 0 && len > 0 {
            started = table.check(table.bytes_tag(prefix), now, &rrl.bytes(len), stats);
            by_bytes = started.is_some();
        }
        let Some(started) = started else {
            return RrlVerdict::Allow;
        };
        stats.limited.fetch_add(1, Ordering::Relaxed);
        if started {
            stats.blocks_started.fetch_add(1, Ordering::Relaxed);
        }
        let seq = stats.slip_seq.fetch_add(1, Ordering::Relaxed);
        let limit = RrlLimit {
            kind: key.kind,
            slip: rrl.slip > 0 && seq.is_multiple_of(rrl.slip),
            by_bytes,
            started,
        };
        if p.dry_run {
            RrlVerdict::WouldLimit(limit)
        } else {
            RrlVerdict::Limited(limit)
        }
    }

    /// Before forwarding a UDP query: `Limited` (charged like an answer) when its positive
    /// answer's budget is already spent, so the query need not reach PowerDNS; else `Allow`
    /// (the answer is checked when it comes back). A read, and a write only when limited.
    /// Dry run never limits here: the answer's own check reports it.
    pub fn rrl_before_forward_at(
        &self,
        src: IpAddr,
        qname: &[u8],
        qtype: u16,
        now: Instant,
    ) -> RrlVerdict {
        if !self.enabled.load(Ordering::Relaxed) {
            return RrlVerdict::Allow;
        }
        let shared = self.shared.load();
        let (p, table) = (&shared.params, &*shared.table);
        let Some(rrl) = p.rrl.as_ref().filter(|_| p.enabled && !p.dry_run) else {
            return RrlVerdict::Allow;
        };
        let src = src.to_canonical();
        let key = RrlKey::positive(qname, qtype);
        let Some(state) = table.state_of(table.rrl_tag(table.key(src), &key)) else {
            return RrlVerdict::Allow;
        };
        let full_at = state & TIME;
        let budget = &rrl.responses;
        if full_at.saturating_add(budget.cost_ns) <= self.nanos(now) + budget.tolerance_ns {
            return RrlVerdict::Allow;
        }
        self.rrl_check_at(src, key, 0, now)
    }
}

impl Table {
    /// Tag of an RRL response key: the prefix, the kind, the name (lowercase), the type.
    fn rrl_tag(&self, prefix: Key, key: &RrlKey<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        (prefix.v6, prefix.bits, key.kind as u8, key.qtype).hash(&mut h);
        match key.name {
            RrlName::None => {}
            // Label by label for both forms, so a name hashes the same either way.
            RrlName::Wire(name) => hash_labels(name, 0, &mut h),
            RrlName::At(pkt, off) => hash_labels(pkt, off, &mut h),
            RrlName::Zone(z) => (0xFFu8, z).hash(&mut h),
        }
        h.finish() | 1
    }

    /// Tag of a prefix's byte budget (a kind no response key uses).
    fn bytes_tag(&self, prefix: Key) -> u64 {
        self.hasher.hash_one((prefix.v6, prefix.bits, 0xFFu8, 0u16)) | 1
    }
}

fn rrl_active(cfg: &RateLimitConfig) -> bool {
    cfg.enabled && cfg.mode == RateLimitMode::Rrl
}

fn hash_labels(pkt: &[u8], off: usize, h: &mut impl Hasher) {
    for_each_label(pkt, off, |label| {
        h.write_u8(label.len() as u8);
        h.write(label);
    });
    h.write_u8(0);
}

/// A masked source address: family and prefix bits.
#[derive(Clone, Copy)]
struct Key {
    v6: bool,
    bits: u128,
}

#[repr(C, align(64))]
#[derive(Default)]
struct Bucket {
    tags: [AtomicU64; WAYS],
    states: [AtomicU64; WAYS],
}

/// One remembered block start; `tag` is written last and re-derived by readers, so a torn
/// entry is recognised and skipped.
#[derive(Default)]
struct BlockRecord {
    tag: AtomicU64,
    v6: AtomicU64,
    hi: AtomicU64,
    lo: AtomicU64,
}

struct Table {
    buckets: Box<[Bucket]>,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    hasher: foldhash::quality::SeedableRandomState,
    recent: Box<[BlockRecord]>,
    recent_next: AtomicUsize,
    /// Built for rrl mode: its states are RRL budgets, meaningless to qps mode.
    rrl: bool,
}

impl Table {
    fn new(cfg: &RateLimitConfig) -> Self {
        // A disabled limiter holds no table; enabling it later builds one.
        let slots = if cfg.enabled { Self::slots_for(cfg) } else { 0 };
        Table {
            buckets: (0..slots / WAYS).map(|_| Bucket::default()).collect(),
            ipv4_prefix: cfg.ipv4_prefix.min(32),
            ipv6_prefix: cfg.ipv6_prefix.min(128),
            // Per-table seed from std's OS-random SipHash keys; foldhash's own per-instance
            // seed is only the stack address.
            hasher: foldhash::quality::SeedableRandomState::with_seed(
                std::hash::RandomState::new().hash_one(0u8),
                foldhash::SharedSeed::global_random(),
            ),
            recent: (0..RECENT_BLOCKS).map(|_| BlockRecord::default()).collect(),
            recent_next: AtomicUsize::new(0),
            rrl: cfg.mode == RateLimitMode::Rrl,
        }
    }

    fn slots_for(cfg: &RateLimitConfig) -> usize {
        cfg.max_tracked_sources.max(WAYS).next_power_of_two()
    }

    /// Whether this table can serve `cfg` as is (same size, same key masks).
    fn fits(&self, cfg: &RateLimitConfig) -> bool {
        !cfg.enabled
            || (self.buckets.len() * WAYS == Self::slots_for(cfg)
                && self.ipv4_prefix == cfg.ipv4_prefix
                && self.ipv6_prefix == cfg.ipv6_prefix
                && self.rrl == (cfg.mode == RateLimitMode::Rrl))
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
            + std::mem::size_of_val(&*self.recent)
            + std::mem::size_of::<Self>()
    }

    fn key(&self, src: IpAddr) -> Key {
        match src {
            IpAddr::V4(a) => Key {
                v6: false,
                bits: u128::from(u32::from(a) & mask32(self.ipv4_prefix)),
            },
            IpAddr::V6(a) => Key {
                v6: true,
                bits: u128::from(a) & mask128(self.ipv6_prefix),
            },
        }
    }

    /// Odd (never EMPTY or RESERVED); its high bits pick the bucket.
    fn tag(&self, key: Key) -> u64 {
        self.hasher.hash_one((key.v6, key.bits)) | 1
    }

    fn bucket(&self, tag: u64) -> &Bucket {
        // A power-of-two count; the tag's top bits are independent of its forced low bit.
        let index = (tag >> 32) as usize & (self.buckets.len() - 1);
        &self.buckets[index]
    }

    /// Runs one event for `tag` through the table: `Some(run_started)` when limited.
    fn check(&self, tag: u64, now: u64, p: &impl Policy, stats: &Stripe) -> Option<bool> {
        if self.buckets.is_empty() {
            return None;
        }
        let bucket = self.bucket(tag);
        // A retry happens only when another worker changed this bucket under us.
        for _ in 0..3 {
            if let Some(way) = (0..WAYS).find(|&w| bucket.tags[w].load(Ordering::Acquire) == tag) {
                match Self::update(bucket, way, tag, now, p) {
                    Some(verdict) => return verdict,
                    None => continue,
                }
            }
            let Some((way, old_tag, live)) = Self::victim(bucket, now, p) else {
                stats.untracked.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let slot = &bucket.tags[way];
            if slot
                .compare_exchange(old_tag, RESERVED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let (verdict, state) = p.step(0, now);
            bucket.states[way].store(state, Ordering::Release);
            slot.store(tag, Ordering::Release);
            if live {
                stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
            return verdict;
        }
        // Lost the bucket to other workers three times: let this one query through.
        stats.untracked.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// GCRA update of a slot holding `tag`; None if the slot was taken by another source
    /// meanwhile (the caller retries as a miss).
    fn update(
        bucket: &Bucket,
        way: usize,
        tag: u64,
        now: u64,
        p: &impl Policy,
    ) -> Option<Option<bool>> {
        let state = &bucket.states[way];
        let mut current = state.load(Ordering::Acquire);
        // Re-check after reading the state: an evictor reserves the tag before writing it.
        if bucket.tags[way].load(Ordering::Acquire) != tag {
            return None;
        }
        loop {
            let (verdict, next) = p.step(current, now);
            if next == current {
                // Blocked sources land here: no write, so a blocked flood does not bounce
                // the cache line between workers.
                return Some(verdict);
            }
            match state.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(verdict),
                Err(seen) => {
                    if bucket.tags[way].load(Ordering::Acquire) != tag {
                        return None;
                    }
                    current = seen;
                }
            }
        }
    }

    /// The slot a new source should take: (way, its current tag, whether it still carried
    /// state). None when every slot is under an active block or being written.
    fn victim(bucket: &Bucket, now: u64, p: &impl Policy) -> Option<(usize, u64, bool)> {
        let mut best: Option<(usize, u64, u64)> = None;
        for way in 0..WAYS {
            let tag = bucket.tags[way].load(Ordering::Acquire);
            if tag == EMPTY {
                return Some((way, EMPTY, false));
            }
            if tag == RESERVED {
                continue;
            }
            let Some(debt) = p.debt(bucket.states[way].load(Ordering::Acquire), now) else {
                continue;
            };
            if best.is_none_or(|(_, _, least)| debt < least) {
                best = Some((way, tag, debt));
            }
        }
        best.map(|(way, tag, debt)| (way, tag, debt > 0))
    }

    fn remember_block(&self, key: Key, tag: u64) {
        let i = self.recent_next.fetch_add(1, Ordering::Relaxed) % self.recent.len();
        let r = &self.recent[i];
        r.tag.store(EMPTY, Ordering::Release);
        r.v6.store(u64::from(key.v6), Ordering::Relaxed);
        r.hi.store((key.bits >> 64) as u64, Ordering::Relaxed);
        r.lo.store(key.bits as u64, Ordering::Relaxed);
        r.tag.store(tag, Ordering::Release);
    }

    /// (tracked, blocked) now, by a full scan.
    fn count(&self, now: u64, p: &Params) -> (usize, usize) {
        let (mut tracked, mut blocked) = (0, 0);
        for bucket in &*self.buckets {
            for way in 0..WAYS {
                if bucket.tags[way].load(Ordering::Acquire) & 1 == 0 {
                    continue;
                }
                let state = bucket.states[way].load(Ordering::Acquire);
                match p.debt(state, now) {
                    None => {
                        tracked += 1;
                        blocked += 1;
                    }
                    Some(0) => {}
                    Some(_) => tracked += 1,
                }
            }
        }
        (tracked, blocked)
    }

    /// The current state of a tracked key, if any.
    fn state_of(&self, tag: u64) -> Option<u64> {
        let bucket = self.bucket(tag);
        (0..WAYS)
            .find(|&w| bucket.tags[w].load(Ordering::Acquire) == tag)
            .map(|w| bucket.states[w].load(Ordering::Acquire))
    }

    fn top_blocked(&self, n: usize, now: u64, p: &Params) -> Vec<BlockedSource> {
        if self.buckets.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<(u64, u64, Key)> = Vec::new();
        for r in &*self.recent {
            let tag = r.tag.load(Ordering::Acquire);
            if tag == EMPTY {
                continue;
            }
            let key = Key {
                v6: r.v6.load(Ordering::Relaxed) != 0,
                bits: u128::from(r.hi.load(Ordering::Relaxed)) << 64
                    | u128::from(r.lo.load(Ordering::Relaxed)),
            };
            // Torn by a concurrent writer, or overwritten: skip.
            if r.tag.load(Ordering::Acquire) != tag || self.tag(key) != tag {
                continue;
            }
            if let Some(left) = self.state_of(tag).and_then(|s| p.remaining_block(s, now)) {
                found.push((left, tag, key));
            }
        }
        found.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        found.dedup_by_key(|f| f.1);
        found
            .into_iter()
            .filter_map(|(left, _, key)| {
                Some(BlockedSource {
                    prefix: self.prefix(key)?,
                    remaining_secs: left.div_ceil(1_000_000_000),
                })
            })
            .take(n)
            .collect()
    }

    fn prefix(&self, key: Key) -> Option<IpNet> {
        Some(if key.v6 {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(key.bits), self.ipv6_prefix).ok()?)
        } else {
            let v4 = u32::try_from(key.bits).ok()?;
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(v4), self.ipv4_prefix).ok()?)
        })
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// Exempt prefixes as sorted, merged address ranges: a binary search per query.
struct ExemptSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl ExemptSet {
    fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        ExemptSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// `ip` is canonical (an IPv4-mapped source arrives as IPv4), so exempt IPv4 networks
    /// are written as IPv4.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitAction, RateLimitMode};

    fn cfg() -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            qps: 100,
            burst: 100,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            block_for: Duration::from_secs(60),
            action: LimitAction::Drop,
            max_tracked_sources: 4096,
            exempt: Vec::new(),
            dry_run: false,
            mode: RateLimitMode::Qps,
            responses_per_second: 20,
            window: 15,
            bytes_per_second: 0,
            slip: 2,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ALLOW: Verdict = Verdict::Allow;
    const LIMITED: Verdict = Verdict::Limited {
        block_started: false,
    };
    const BLOCK_STARTS: Verdict = Verdict::Limited {
        block_started: true,
    };

    /// Sends `n` queries from `src` evenly over `[from, from + span)`; returns the verdicts.
    fn send(rl: &RateLimiter, src: IpAddr, from: Instant, span: Duration, n: u32) -> Vec<Verdict> {
        (0..n)
            .map(|i| rl.check_at(src, from + span * i / n))
            .collect()
    }

    fn count(v: &[Verdict], which: Verdict) -> usize {
        v.iter().filter(|&&x| x == which).count()
    }

    #[test]
    fn shared_across_worker_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RateLimiter>();
    }

    #[test]
    fn double_rate_without_block_is_held_to_qps_after_the_burst() {
        let rl = RateLimiter::new(&RateLimitConfig {
            block_for: Duration::ZERO,
            ..cfg()
        });
        let t0 = Instant::now();
        // 200 qps for 10 s against qps 100, burst 100.
        let v = send(&rl, ip("192.0.2.1"), t0, Duration::from_secs(10), 2000);
        let allowed = count(&v, ALLOW);
        assert!((1095..=1101).contains(&allowed), "allowed {allowed}");
        assert!(v[..100].iter().all(|&x| x == ALLOW), "the burst passes");
        // Limiting runs alternate with allowed queries; each run is flagged once.
        let starts = count(&v, BLOCK_STARTS);
        assert!(starts > 800, "runs {starts}");
        assert_eq!(rl.stats().limited as usize, 2000 - allowed);
        assert_eq!(rl.blocked_now_at(t0 + Duration::from_secs(10)), 0);
    }

    #[test]
    fn overflow_blocks_for_block_for_then_starts_fresh() {
        let rl = RateLimiter::new(&cfg());
        let src = ip("192.0.2.7");
        let t0 = Instant::now();
        // 200 qps: the burst of 100 plus what refills, then the block.
        let v = send(&rl, src, t0, Duration::from_secs(5), 1000);
        let first_limited = v.iter().position(|&x| x != ALLOW).unwrap();
        // 100 burst + refill at 100/s while sending at 200/s: overflow at ~query 200 (1 s).
        assert!((195..=202).contains(&first_limited), "{first_limited}");
        assert_eq!(v[first_limited], BLOCK_STARTS);
        assert!(v[first_limited + 1..].iter().all(|&x| x == LIMITED));
        let block_start = t0 + Duration::from_secs(5) * first_limited as u32 / 1000;

        // Even one query a minute keeps getting Limited until block_for has passed.
        let just_before = block_start + Duration::from_secs(60) - Duration::from_millis(1);
        assert_eq!(rl.check_at(src, just_before), LIMITED);
        assert_eq!(rl.blocked_now_at(just_before), 1);
        let blocked = rl.top_blocked_at(10, just_before);
        assert_eq!(
            blocked,
            vec![BlockedSource {
                prefix: "192.0.2.7/32".parse().unwrap(),
                remaining_secs: 1
            }]
        );

        // After the block: a full, fresh bucket.
        let after = block_start + Duration::from_secs(60);
        let v = send(&rl, src, after, Duration::from_millis(10), 100);
        assert!(v.iter().all(|&x| x == ALLOW), "{v:?}");
        assert_eq!(rl.blocked_now_at(after), 0);
        assert!(rl.top_blocked_at(10, after).is_empty());
        let s = rl.stats();
        assert_eq!((s.blocks_started, s.checks), (1, 1101));
    }

    #[test]
    fn within_rate_is_never_limited() {
        let rl = RateLimiter::new(&cfg());
        let t0 = Instant::now();
        let v = send(&rl, ip("192.0.2.9"), t0, Duration::from_secs(30), 2970);
        assert_eq!(count(&v, ALLOW), 2970);
        assert_eq!(
            rl.tracked_at(t0 + Duration::from_secs(30)),
            0,
            "refilled = forgotten"
        );
    }

    #[test]
    fn exempt_sources_pass_untouched() {
        let rl = RateLimiter::new(&RateLimitConfig {
            exempt: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8:e::/48".parse().unwrap(),
            ],
            ..cfg()
        });
        let t0 = Instant::now();
        for src in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8:e:1::1"] {
            let v = send(&rl, ip(src), t0, Duration::from_millis(100), 1000);
            assert!(v.iter().all(|&x| x == Verdict::Exempt), "{src}");
        }
        assert_eq!(rl.tracked_at(t0), 0);
        assert_eq!(rl.stats().exempt, 3000);
        let v = send(&rl, ip("11.0.0.1"), t0, Duration::ZERO, 1000);
        assert_eq!(count(&v, ALLOW), 100);
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let rl = RateLimiter::new(&cfg());
        let t0 = Instant::now();
        // 100 from one address drains the /64's burst; a neighbour in the same /64 is over.
        assert_eq!(
            count(
                &send(&rl, ip("2001:db8:1:2::1"), t0, Duration::ZERO, 100),
                ALLOW
            ),
            100
        );
        assert_eq!(rl.check_at(ip("2001:db8:1:2:ffff::9"), t0), BLOCK_STARTS);
        // Another /64 has its own bucket.
        assert_eq!(
            count(
                &send(&rl, ip("2001:db8:1:3::1"), t0, Duration::ZERO, 100),
                ALLOW
            ),
            100
        );
        let top = rl.top_blocked_at(5, t0);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].prefix, "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
        assert_eq!(top[0].remaining_secs, 60);
    }

    #[test]
    fn ipv4_prefix_24_aggregates() {
        let rl = RateLimiter::new(&RateLimitConfig {
            ipv4_prefix: 24,
            ..cfg()
        });
        let t0 = Instant::now();
        let v: Vec<Verdict> = (0..=100)
            .map(|i| rl.check_at(ip(&format!("198.51.100.{i}")), t0))
            .collect();
        assert_eq!(count(&v, ALLOW), 100);
        assert_eq!(v[100], BLOCK_STARTS);
        assert_eq!(rl.check_at(ip("198.51.101.1"), t0), ALLOW);
        assert_eq!(
            rl.top_blocked_at(1, t0)[0].prefix,
            "198.51.100.0/24".parse::<IpNet>().unwrap()
        );
        // Without aggregation the same addresses are 101 separate sources.
        let rl = RateLimiter::new(&cfg());
        assert!((0..=100).all(|i| rl.check_at(ip(&format!("198.51.100.{i}")), t0) == ALLOW));
    }

    #[test]
    fn dry_run_reports_would_limit_and_allows_nothing_less() {
        let rl = RateLimiter::new(&RateLimitConfig {
            dry_run: true,
            ..cfg()
        });
        let t0 = Instant::now();
        let v = send(&rl, ip("192.0.2.1"), t0, Duration::ZERO, 103);
        assert_eq!(count(&v, ALLOW), 100);
        assert_eq!(
            v[100],
            Verdict::WouldLimit {
                block_started: true
            }
        );
        assert_eq!(
            v[101..],
            [Verdict::WouldLimit {
                block_started: false
            }; 2]
        );
        assert_eq!(rl.blocked_now_at(t0), 1, "state moves as in a real run");
        assert_eq!(rl.stats().limited, 3);
    }

    #[test]
    fn disabled_allows_everything_and_holds_no_table() {
        let rl = RateLimiter::new(&RateLimitConfig {
            enabled: false,
            ..cfg()
        });
        let t0 = Instant::now();
        let v = send(&rl, ip("192.0.2.1"), t0, Duration::ZERO, 1000);
        assert_eq!(count(&v, ALLOW), 1000);
        assert_eq!(rl.stats(), RateLimitStats::default());
        assert!(rl.memory_bytes() < 64 * 1024, "{}", rl.memory_bytes());
    }

    #[test]
    fn reconfigure_keeps_state_unless_the_table_changes() {
        let rl = RateLimiter::new(&cfg());
        let src = ip("192.0.2.1");
        let t0 = Instant::now();
        send(&rl, src, t0, Duration::ZERO, 101);
        assert_eq!(rl.blocked_now_at(t0), 1);

        // New rates and block length: the running block now ends 10 s after it started.
        rl.reconfigure(&RateLimitConfig {
            qps: 10,
            burst: 5,
            block_for: Duration::from_secs(10),
            action: LimitAction::Refused,
            ..cfg()
        });
        assert_eq!(rl.check_at(src, t0 + Duration::from_secs(9)), LIMITED);
        let later = t0 + Duration::from_secs(10);
        let v = send(&rl, src, later, Duration::ZERO, 6);
        assert_eq!(count(&v, ALLOW), 5, "new burst applies");
        assert_eq!(v[5], BLOCK_STARTS);

        // Disabling and re-enabling with the same table keeps the block.
        rl.reconfigure(&RateLimitConfig {
            enabled: false,
            ..cfg()
        });
        assert_eq!(rl.check_at(src, later), ALLOW);
        rl.reconfigure(&cfg());
        assert_eq!(rl.check_at(src, later), LIMITED);

        // A new prefix length starts an empty table.
        let before = rl.memory_bytes();
        rl.reconfigure(&RateLimitConfig {
            ipv4_prefix: 24,
            ..cfg()
        });
        assert_eq!(rl.memory_bytes(), before);
        assert_eq!(rl.check_at(src, later), ALLOW);
        assert_eq!(rl.stats().blocks_started, 2, "counters survive");
        // A larger table.
        rl.reconfigure(&RateLimitConfig {
            max_tracked_sources: 5000,
            ..cfg()
        });
        assert!(rl.memory_bytes() > before);
    }

    #[test]
    fn blocked_sources_are_not_evicted_by_new_ones() {
        // 1024 slots: 256 buckets of 4. Block enough sources that some bucket is all blocked.
        let rl = RateLimiter::new(&RateLimitConfig {
            burst: 1,
            max_tracked_sources: 1024,
            ..cfg()
        });
        let t0 = Instant::now();
        let blocked: Vec<IpAddr> = (0..900u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        for &src in &blocked {
            rl.check_at(src, t0);
            rl.check_at(src, t0);
        }
        let survivors = rl.blocked_now_at(t0);
        // Expected ~760: buckets that filled with blocked sources left the rest untracked.
        assert!(survivors > 600, "{survivors}");
        // A flood of new sources: none of the blocked ones may go.
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20_000 {
            rl.check_at(IpAddr::V4(Ipv4Addr::from(rng.u32(..) | 0x8000_0000)), t0);
        }
        assert_eq!(rl.blocked_now_at(t0), survivors);
        assert!(
            rl.stats().untracked > 0,
            "full buckets let new sources through untracked"
        );
    }

    #[test]
    fn million_source_flood_keeps_memory_and_blocks() {
        let rl = RateLimiter::new(&RateLimitConfig {
            qps: 1,
            burst: 5,
            max_tracked_sources: 65_536,
            ..cfg()
        });
        let t0 = Instant::now();
        let memory = rl.memory_bytes();
        assert!(memory < 65_536 * 16 + 64 * 1024, "{memory}");

        // 100 abusers get blocked.
        let abusers: Vec<IpAddr> = (0..100u32)
            .map(|i| {
                if i % 2 == 0 {
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8))
                } else {
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, i as u16, 0, 0, 0, 1))
                }
            })
            .collect();
        for &src in &abusers {
            let v = send(&rl, src, t0, Duration::ZERO, 6);
            assert_eq!(v[5], BLOCK_STARTS);
        }
        let legit = ip("198.51.100.53");

        // 1,000,000 random sources, one query each, over 20 s: 50k new sources a second
        // against qps 1, so each stays live (in debt) for 1 s and ~50k are live at a time in
        // 64k slots, enough to force evictions. Meanwhile a legitimate source asks every
        // 1.2 s (under its rate) and the abusers keep asking.
        let mut rng = fastrand::Rng::with_seed(42);
        let span = Duration::from_secs(20);
        let n = 1_000_000u32;
        for i in 0..n {
            let now = t0 + span * i / n;
            let src = if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
            } else {
                IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
            };
            rl.check_at(src, now);
            if i % 60_000 == 0 {
                assert_eq!(rl.check_at(legit, now), ALLOW, "legit at {i}");
            }
            if i % 1000 == 0 {
                let abuser = abusers[(i / 1000) as usize % abusers.len()];
                assert_eq!(rl.check_at(abuser, now), LIMITED, "abuser at {i}");
            }
        }
        let end = t0 + span;
        assert!(
            abusers.iter().all(|&a| rl.check_at(a, end) == LIMITED),
            "every blocked source survived the flood"
        );
        assert_eq!(rl.blocked_now_at(end), 100);
        assert_eq!(rl.check_at(legit, end), ALLOW);
        assert_eq!(rl.memory_bytes(), memory, "table never grows");
        let s = rl.stats();
        assert!(s.evictions > 0, "the flood did press on the table: {s:?}");
        assert!(rl.tracked_at(end) <= 65_536);
        // Process RSS is checked in tests/ratelimit_memory.rs, alone in its own process: here
        // other tests allocate in parallel threads.
    }

    #[test]
    fn concurrent_workers_agree_on_one_hot_source() {
        // 4 threads share one source at the same instant: the burst is split between them
        // and exactly one query starts the block (the CAS loop serialises the state).
        let rl = Arc::new(RateLimiter::new(&cfg()));
        let t0 = Instant::now();
        // Track the source first: racing first inserts may legitimately create two slots.
        assert_eq!(rl.check_at(ip("192.0.2.1"), t0), ALLOW);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let rl = Arc::clone(&rl);
                std::thread::spawn(move || send(&rl, ip("192.0.2.1"), t0, Duration::ZERO, 1000))
            })
            .collect();
        let all: Vec<Verdict> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(count(&all, ALLOW), 99);
        assert_eq!(count(&all, BLOCK_STARTS), 1);
        assert_eq!(rl.stats().checks, 4001);
    }

    // --- rrl mode ---

    fn rrl_cfg() -> RateLimitConfig {
        RateLimitConfig {
            mode: RateLimitMode::Rrl,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            responses_per_second: 10,
            window: 5,
            bytes_per_second: 0,
            slip: 2,
            ..cfg()
        }
    }

    /// A header-only response: rcode, answer count (classification reads no further).
    fn resp(rcode: u8, answers: u16) -> Vec<u8> {
        let mut r = vec![0, 1, 0x84, rcode, 0, 1];
        r.extend_from_slice(&answers.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r
    }

    fn wire(name: &str) -> Vec<u8> {
        crate::dns::name_from_text(name).unwrap()
    }

    /// `n` positive answers for `name` to `src`, evenly over `[from, from + span)`.
    fn answers(
        rl: &RateLimiter,
        src: &str,
        name: &[u8],
        from: Instant,
        span: Duration,
        n: u32,
    ) -> Vec<RrlVerdict> {
        let r = resp(0, 1);
        (0..n)
            .map(|i| {
                let key = RrlKey::of_response(&r, name, 1, None);
                rl.rrl_check_at(ip(src), key, 100, from + span * i / n)
            })
            .collect()
    }

    fn limited(v: &[RrlVerdict]) -> usize {
        v.iter()
            .filter(|x| matches!(x, RrlVerdict::Limited(_)))
            .count()
    }

    #[test]
    fn rrl_burst_is_one_second_then_the_rate_and_debt_lasts_the_window() {
        let rl = RateLimiter::new(&rrl_cfg());
        let name = wire("www.example.");
        let t0 = Instant::now();
        // 100/s for 10 s against 10/s: the first second's 10 pass (plus what refills while
        // they arrive), then nothing: limited responses are charged too (down to the window's
        // debt), so a key over its rate gets nothing more until it slows down, as in BIND.
        let v = answers(&rl, "192.0.2.1", &name, t0, Duration::from_secs(10), 1000);
        let first = v.iter().position(|&x| x != RrlVerdict::Allow).unwrap();
        assert!((10..=12).contains(&first), "{first}");
        let RrlVerdict::Limited(l) = v[first] else {
            panic!("{:?}", v[first]);
        };
        assert!(l.started && l.kind == RrlKind::Positive && !l.by_bytes);
        assert_eq!(limited(&v), 1000 - first);
        assert!(
            matches!(v[first + 1], RrlVerdict::Limited(l) if !l.started),
            "one start per run"
        );
        // The debt runs 1 s + window (5 s) ahead of the last response; after that, answers.
        let last = t0 + Duration::from_secs(10) * 999 / 1000;
        let probe = |at: Duration| {
            let rl = RateLimiter::new(&rrl_cfg());
            answers(&rl, "192.0.2.1", &name, t0, Duration::from_secs(10), 1000);
            answers(&rl, "192.0.2.1", &name, last + at, Duration::ZERO, 1)[0]
        };
        assert!(matches!(
            probe(Duration::from_millis(4800)),
            RrlVerdict::Limited(_)
        ));
        assert_eq!(probe(Duration::from_millis(5200)), RrlVerdict::Allow);
    }

    #[test]
    fn rrl_at_the_rate_is_never_limited() {
        let rl = RateLimiter::new(&rrl_cfg());
        let t0 = Instant::now();
        let v = answers(
            &rl,
            "192.0.2.1",
            &wire("a.example."),
            t0,
            Duration::from_secs(30),
            300,
        );
        assert_eq!(limited(&v), 0);
    }

    #[test]
    fn rrl_slip_sends_every_nth_limited_response_as_tc() {
        for (slip, slipped) in [(0u8, 0usize), (1, 100), (2, 50), (3, 34)] {
            let rl = RateLimiter::new(&RateLimitConfig { slip, ..rrl_cfg() });
            let t0 = Instant::now();
            let v = answers(
                &rl,
                "192.0.2.1",
                &wire("x.example."),
                t0,
                Duration::ZERO,
                110,
            );
            let slips = v
                .iter()
                .filter(|x| matches!(x, RrlVerdict::Limited(l) if l.slip))
                .count();
            assert_eq!((limited(&v), slips), (100, slipped), "slip {slip}");
        }
    }

    #[test]
    fn rrl_keys_follow_bind() {
        let rl = RateLimiter::new(&rrl_cfg());
        let t0 = Instant::now();
        // Another name, another type, another /24: each has its own budget.
        let spent = answers(
            &rl,
            "192.0.2.1",
            &wire("a.example."),
            t0,
            Duration::ZERO,
            10,
        );
        assert_eq!(limited(&spent), 0);
        let over = |src: &str, name: &str, qtype: u16| {
            let r = resp(0, 1);
            let n = wire(name);
            let key = RrlKey::of_response(&r, &n, qtype, None);
            matches!(
                rl.rrl_check_at(ip(src), key, 100, t0),
                RrlVerdict::Limited(_)
            )
        };
        assert!(
            over("192.0.2.200", "a.example.", 1),
            "same /24, same name: one budget"
        );
        assert!(!over("192.0.2.1", "b.example.", 1));
        assert!(!over("192.0.2.1", "a.example.", 28));
        assert!(!over("192.0.3.1", "a.example.", 1));
        // IPv6: one /56.
        for _ in 0..10 {
            over("2001:db8:0:1::1", "a.example.", 1);
        }
        assert!(over("2001:db8:0:ff::2", "a.example.", 1));
        assert!(!over("2001:db8:0:100::1", "a.example.", 1));

        // NXDOMAIN for random names under one zone share a budget: by the zone dnsteer knows,
        // else by the name's parent (no SOA in these responses).
        let nx = resp(3, 0);
        let names: Vec<Vec<u8>> = (0..11)
            .map(|i| wire(&format!("r{i}.zone.example.")))
            .collect();
        let v: Vec<RrlVerdict> = names
            .iter()
            .map(|n| {
                rl.rrl_check_at(
                    ip("198.51.100.1"),
                    RrlKey::of_response(&nx, n, 1, None),
                    50,
                    t0,
                )
            })
            .collect();
        assert_eq!(limited(&v), 1);
        assert!(matches!(v[10], RrlVerdict::Limited(l) if l.kind == RrlKind::NxDomain));
        let v: Vec<RrlVerdict> = names
            .iter()
            .map(|n| {
                rl.rrl_check_at(
                    ip("198.51.100.1"),
                    RrlKey::of_response(&nx, n, 1, Some(7)),
                    50,
                    t0,
                )
            })
            .collect();
        assert_eq!(limited(&v), 1, "a known zone is its own key");
        // Errors: one budget per prefix whatever the name and type.
        let refused = resp(5, 0);
        let v: Vec<RrlVerdict> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let key = RrlKey::of_response(&refused, n, i as u16, None);
                rl.rrl_check_at(ip("203.0.113.9"), key, 30, t0)
            })
            .collect();
        assert!(matches!(v[10], RrlVerdict::Limited(l) if l.kind == RrlKind::Error));
        assert_eq!(parent(&wire("a.b.")), wire("b.").as_slice());
        assert_eq!(parent(&[0]), [0]);
        assert_eq!(parent(&[9, b'x']), [0], "a malformed name never panics");
    }

    #[test]
    fn rrl_byte_budget_bounds_bytes_per_prefix_across_names() {
        let rl = RateLimiter::new(&RateLimitConfig {
            responses_per_second: 1000,
            bytes_per_second: 10_000,
            ..rrl_cfg()
        });
        let t0 = Instant::now();
        let r = resp(0, 1);
        // 1000-byte answers for ever new names at 100/s for 10 s: 10 kB/s lets ~10 a second
        // through after the first second's 10 kB.
        let mut sent = 0usize;
        let mut by_bytes = 0;
        for i in 0..1000u32 {
            let n = wire(&format!("n{i}.example."));
            let at = t0 + Duration::from_millis(10) * i;
            match rl.rrl_check_at(
                ip("192.0.2.1"),
                RrlKey::of_response(&r, &n, 1, None),
                1000,
                at,
            ) {
                RrlVerdict::Allow => sent += 1000,
                RrlVerdict::Limited(l) => by_bytes += usize::from(l.by_bytes),
                v => panic!("{v:?}"),
            }
        }
        assert!((100_000..=111_000).contains(&sent), "{sent} bytes");
        assert_eq!(by_bytes, 1000 - sent / 1000);
    }

    #[test]
    fn rrl_exempt_dry_run_and_modes_apart() {
        let name = wire("a.example.");
        let t0 = Instant::now();
        let rl = RateLimiter::new(&RateLimitConfig {
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
            ..rrl_cfg()
        });
        let v = answers(&rl, "192.0.2.1", &name, t0, Duration::ZERO, 50);
        assert!(v.iter().all(|&x| x == RrlVerdict::Exempt));
        // rrl mode never limits queries; qps mode never limits responses.
        assert!((0..500).all(|_| rl.check_at(ip("198.51.100.1"), t0) == ALLOW));
        let qps = RateLimiter::new(&cfg());
        assert_eq!(
            limited(&answers(&qps, "192.0.2.1", &name, t0, Duration::ZERO, 50)),
            0
        );

        let rl = RateLimiter::new(&RateLimitConfig {
            dry_run: true,
            ..rrl_cfg()
        });
        let v = answers(&rl, "192.0.2.1", &name, t0, Duration::ZERO, 12);
        assert!(matches!(v[10], RrlVerdict::WouldLimit(l) if l.started));
        assert_eq!(limited(&v), 0);
        assert_eq!(rl.stats().limited, 2);
        // Dry run never stops a query before forwarding.
        assert_eq!(
            rl.rrl_before_forward_at(ip("192.0.2.1"), &name, 1, t0),
            RrlVerdict::Allow
        );
    }

    #[test]
    fn rrl_before_forward_only_stops_a_spent_positive_budget() {
        let rl = RateLimiter::new(&rrl_cfg());
        let name = wire("a.example.");
        let t0 = Instant::now();
        let before = |at: Instant| rl.rrl_before_forward_at(ip("192.0.2.1"), &name, 1, at);
        assert_eq!(before(t0), RrlVerdict::Allow, "unseen");
        answers(&rl, "192.0.2.1", &name, t0, Duration::ZERO, 9);
        assert_eq!(before(t0), RrlVerdict::Allow, "room for one more");
        let checks = rl.stats().checks;
        answers(&rl, "192.0.2.1", &name, t0, Duration::ZERO, 1);
        assert!(matches!(before(t0), RrlVerdict::Limited(l) if l.kind == RrlKind::Positive));
        assert_eq!(
            rl.stats().checks,
            checks + 2,
            "the stop is charged like an answer"
        );
        // Another type of the same name is another key.
        assert_eq!(
            rl.rrl_before_forward_at(ip("192.0.2.1"), &name, 28, t0),
            RrlVerdict::Allow
        );
    }

    #[test]
    fn switching_mode_starts_an_empty_table() {
        let rl = RateLimiter::new(&cfg());
        let t0 = Instant::now();
        send(&rl, ip("192.0.2.1"), t0, Duration::ZERO, 101);
        assert_eq!(rl.blocked_now_at(t0), 1);
        rl.reconfigure(&RateLimitConfig {
            ipv4_prefix: 32,
            ..rrl_cfg()
        });
        assert_eq!(rl.tracked_at(t0), 0);
        let v = answers(
            &rl,
            "192.0.2.1",
            &wire("a.example."),
            t0,
            Duration::ZERO,
            10,
        );
        assert_eq!(limited(&v), 0);
    }

    #[test]
    fn exempt_ranges_merge_and_match() {
        let set = ExemptSet::new(&[
            "10.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
            "192.0.2.0/25".parse().unwrap(),
            "192.0.2.128/25".parse().unwrap(),
            "::/0".parse().unwrap(),
        ]);
        // Overlapping ranges merge; adjacent ones may stay apart (same answers).
        assert_eq!(
            set.v4,
            vec![
                (0x0a00_0000, 0x0aff_ffff),
                (0xc000_0200, 0xc000_027f),
                (0xc000_0280, 0xc000_02ff)
            ]
        );
        assert!(set.contains(ip("10.255.255.255")));
        assert!(!set.contains(ip("11.0.0.0")));
        assert!(set.contains(ip("192.0.2.200")));
        assert!(!set.contains(ip("192.0.3.0")));
        assert!(set.contains(ip("2001:db8::1")));
        assert_eq!(
            (mask32(0), mask32(24), mask32(32)),
            (0, 0xffff_ff00, u32::MAX)
        );
        assert_eq!(mask128(0), 0);
        assert_eq!(mask128(128), u128::MAX);
    }
}

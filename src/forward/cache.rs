//! The packet cache for answers from PowerDNS (`[cache]`): looked up before a query is
//! forwarded, filled when PowerDNS answers (UDP and TCP), and the source of stale answers
//! when PowerDNS cannot answer (RFC 8767).
//!
//! **Key.** The query as it was forwarded, minus its ID: name (case-insensitive), type, class,
//! DO, CD, the EDNS buffer-size class, and what PowerDNS saw of the client. ECS-scope-aware
//! (RFC 7871 §7.3.2): an answer PowerDNS gave with scope 0 is stored once under the key
//! without the client and serves every client; an answer with scope S > 0 leaves a marker
//! there ("scoped, S bits") and is stored under the key plus the client's subnet cut to S
//! bits, so it is only served inside that subnet (and only to queries whose own source
//! prefix is at least S). With `client_address = "proxy"` PowerDNS sees the whole address
//! and says nothing of scope, so such answers are kept per client address.
//!
//! **Memory.** Fixed: `max_entries` entries and `max_bytes` bytes (stored answer + a fixed
//! per-entry overhead), split evenly over the shards; an insert that does not fit evicts by
//! CLOCK (an entry served since the hand last passed gets a second chance; entries past their
//! stale window go first). Nothing grows past the caps, whatever the query mix.
//!
//! **Locks.** Sharded by key hash, one short mutex per shard, taken only with `try_lock`: a
//! packet thread never waits. The races we accept: a lookup that finds its shard busy counts
//! as a miss and forwards; an insert that finds it busy is skipped (`reason="busy"`); two
//! identical misses in flight both forward and the later answer replaces the earlier; an
//! answer in flight while its zone is invalidated may be stored under the new generation
//! (one upstream round trip wide; the invalidation that follows the zone transfer closes it
//! again).
//!
//! **Invalidation.** One generation per `[zones].transfer` zone; an entry remembers the
//! generation of its name's zone when stored and is dead once it changed (NOTIFY accepted,
//! transfer with a new serial).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use arc_swap::ArcSwap;
use prometheus::proto::{MetricFamily, MetricType};
use tokio::time::Instant;

use crate::config::{CacheConfig, ClientAddress, UpstreamConfig};
use crate::dns::cached::{self, AnswerFacts, StoredAnswer, Ttls};
use crate::dns::{Added, Query, rcode};
use crate::telemetry::metrics::{CacheSkip, Metrics, WorkerMetrics, labelled, scalar};

/// Bytes counted per entry besides its answer: the entry, its slot and its index entry.
pub(crate) const ENTRY_OVERHEAD: usize = 160;
/// Larger answers are not cached (`reason="too_big"`).
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// TTL of a stale answer (RFC 8767 §4).
pub(crate) const STALE_ANSWER_TTL: u32 = 30;

/// What PowerDNS saw of the client: the part of the key an answer may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Nothing of the client (`client_address = "none"`): the answer is everyone's.
    Nobody,
    /// An ECS option (the client's own, or the one dnsteer added).
    Subnet { addr: IpAddr, source: u8 },
    /// The whole address, by PROXY header.
    Address(IpAddr),
}

impl Seen {
    /// The client address PowerDNS saw (0.0.0.0 when it saw none).
    #[inline]
    fn addr(self) -> IpAddr {
        match self {
            Seen::Subnet { addr, .. } | Seen::Address(addr) => addr,
            Seen::Nobody => IpAddr::from([0u8; 4]),
        }
    }

    /// How many bits of the client's address an answer depends on, given the ECS scope
    /// PowerDNS echoed: never more than the source prefix it was sent; with the whole address
    /// (PROXY), all of it.
    #[inline]
    fn scope(self, ecs_scope: Option<u8>) -> u8 {
        match self {
            Seen::Nobody => 0,
            Seen::Subnet { source, .. } => ecs_scope.unwrap_or(0).min(source),
            Seen::Address(a) => full_width(a),
        }
    }
}

/// A query as the cache looks at it; built once per lookup or insert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    base: u64,
    flags: u8,
    seen: Seen,
    zone_gen: u64,
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    Fresh,
    /// Past its lifetime, within `stale_ttl`: TTLs set to 30.
    Stale,
}

enum Body {
    Answer {
        stored: StoredAnswer,
        /// The subnet (address cut to `scope` bits) this answer is for; 0 bits: everyone.
        subnet: IpAddr,
        scope: u8,
    },
    /// Answers for this key depend on the client: they are stored per subnet of these widths.
    Scoped { v4: u8, v6: u8 },
}

struct Entry {
    key: u64,
    flags: u8,
    zone_gen: u64,
    body: Body,
    inserted: Instant,
    expires: Instant,
    /// End of the stale window: past it the entry is dead.
    dead_at: Instant,
    /// Served since the CLOCK hand last passed.
    referenced: bool,
}

impl Entry {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.body {
                Body::Answer { stored, .. } => stored.size(),
                Body::Scoped { .. } => 0,
            }
    }
}

#[derive(Default)]
struct Shard {
    index: HashMap<u64, u32, foldhash::fast::RandomState>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    hand: usize,
    bytes: usize,
}

/// One shard and the numbers the scraper reads without taking its lock.
#[repr(align(128))]
struct ShardCell {
    shard: Mutex<Shard>,
    entries: AtomicU64,
    bytes: AtomicU64,
    evictions: AtomicU64,
}

struct ZoneGen {
    /// Lower-case wire form of the apex.
    apex: Vec<u8>,
    generation: AtomicU64,
}

/// The cache, shared by every packet thread (see the module comment).
pub struct PacketCache {
    cfg: CacheConfig,
    shards: Box<[ShardCell]>,
    shard_entries: usize,
    shard_bytes: usize,
    hasher: foldhash::fast::RandomState,
    zones: ArcSwap<Vec<Arc<ZoneGen>>>,
    next_gen: AtomicU64,
}

impl PacketCache {
    /// A cache sized by `cfg`, knowing the zones whose entries `invalidate_zone` drops.
    pub(crate) fn new(cfg: &CacheConfig, zones: &[String]) -> PacketCache {
        // About 1024 entries and at least 64 KiB per shard, at most 64 shards.
        let shards = (cfg.max_entries / 1024)
            .min(cfg.max_bytes / (64 << 10))
            .next_power_of_two()
            .clamp(1, 64);
        let cache = PacketCache {
            cfg: cfg.clone(),
            shards: (0..shards)
                .map(|_| ShardCell {
                    shard: Mutex::new(Shard::default()),
                    entries: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    evictions: AtomicU64::new(0),
                })
                .collect(),
            shard_entries: cfg.max_entries.div_ceil(shards).max(1),
            shard_bytes: cfg.max_bytes / shards,
            hasher: foldhash::fast::RandomState::default(),
            zones: ArcSwap::from_pointee(Vec::new()),
            next_gen: AtomicU64::new(1),
        };
        for z in zones {
            cache.register_zone(z);
        }
        cache
    }

    /// Builds the cache's view of a query from `client` (None for queries never cached:
    /// TSIG-signed ones and zone transfers).
    pub(crate) fn request(
        &self,
        q: &Query,
        client: IpAddr,
        up: &UpstreamConfig,
    ) -> Option<Request> {
        if q.signed || q.qtype == 251 || q.qtype == 252 {
            return None;
        }
        let client = client.to_canonical();
        let seen = match q.edns.and_then(|e| e.ecs) {
            Some(ecs) => Seen::Subnet {
                addr: ecs.addr,
                source: ecs.source_prefix,
            },
            None => match up.client_address {
                ClientAddress::Ecs => {
                    let source = if client.is_ipv4() {
                        up.ecs_ipv4_prefix
                    } else {
                        up.ecs_ipv6_prefix
                    };
                    Seen::Subnet {
                        addr: cut(client, source),
                        source,
                    }
                }
                ClientAddress::Proxy => Seen::Address(client),
                ClientAddress::None => Seen::Nobody,
            },
        };
        let size_class = match q.edns {
            None => 0u8,
            Some(e) if e.udp_size < 1232 => 1,
            Some(e) if e.udp_size < 4096 => 2,
            Some(_) => 3,
        };
        let dnssec_ok = q.edns.is_some_and(|e| e.dnssec_ok);
        let flags = u8::from(dnssec_ok) | u8::from(q.cd) << 1 | size_class << 2;
        let mut h = self.hasher.build_hasher();
        h.write(q.qname.as_bytes());
        h.write_u16(q.qtype);
        h.write_u16(q.qclass);
        h.write_u8(flags);
        Some(Request {
            base: h.finish(),
            flags,
            seen,
            zone_gen: self.zone_gen(q.qname.as_bytes()),
        })
    }

    /// Writes the cached answer to `q` (the client's packet `pkt`) into `out`. Only fresh
    /// entries unless `allow_stale`. `max_udp`: the client's UDP limit (None over TCP).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lookup(
        &self,
        req: &Request,
        q: &Query,
        pkt: &[u8],
        now: Instant,
        allow_stale: bool,
        max_udp: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Option<Served> {
        let ctx = Serve {
            cfg: &self.cfg,
            req,
            q,
            pkt,
            now,
            allow_stale,
            max_udp,
        };
        let scope = match self.with_entry(req.base, |e| ctx.at_base(e, out)).ok()?? {
            Found::Served(s) => return Some(s),
            Found::Scoped { v4, v6 } => match req.seen {
                Seen::Subnet { addr, source } => {
                    let scope = if addr.is_ipv4() { v4 } else { v6 };
                    // A coarser query than the answer's scope cannot use it (§7.3.2).
                    if scope == 0 || source < scope {
                        return None;
                    }
                    (addr, scope)
                }
                Seen::Address(addr) => (addr, if addr.is_ipv4() { v4 } else { v6 }),
                Seen::Nobody => return None,
            },
        };
        let subnet = cut(scope.0, scope.1);
        let key = self.sub_key(req.base, subnet, scope.1);
        self.with_entry(key, |e| ctx.at_subnet(e, subnet, scope.1, out))
            .ok()?
    }

    /// Stores PowerDNS's answer `resp` to `q` (forwarded with `added`), or counts why not.
    pub(crate) fn insert(
        &self,
        req: &Request,
        q: &Query,
        resp: &[u8],
        added: Added,
        now: Instant,
        metrics: &WorkerMetrics,
    ) {
        if let Err(why) = self.try_insert(req, q, resp, added, now) {
            metrics.cache_skipped[why as usize].inc();
        }
    }

    fn try_insert(
        &self,
        req: &Request,
        q: &Query,
        resp: &[u8],
        added: Added,
        now: Instant,
    ) -> Result<(), CacheSkip> {
        let (facts, stored) = cached::prepare(resp, added).map_err(|_| CacheSkip::Malformed)?;
        let life = self.lifetime(facts, &stored, q)?;
        let scope = req.seen.scope(facts.ecs_scope);
        let expires = now + life;
        let entry = |key, body| Entry {
            key,
            flags: req.flags,
            zone_gen: req.zone_gen,
            body,
            inserted: now,
            expires,
            dead_at: expires + self.cfg.stale_ttl,
            referenced: false,
        };
        let addr = req.seen.addr();
        if scope == 0 {
            let body = Body::Answer {
                stored,
                subnet: addr,
                scope: 0,
            };
            return self.put(entry(req.base, body), now);
        }
        let subnet = cut(addr, scope);
        let (v4, v6) = self.marker_widths(req, addr.is_ipv4(), scope);
        self.put(entry(req.base, Body::Scoped { v4, v6 }), now)?;
        let body = Body::Answer {
            stored,
            subnet,
            scope,
        };
        self.put(entry(self.sub_key(req.base, subnet, scope), body), now)
    }

    /// How long an answer may be served fresh, or why it is not cached at all.
    #[inline]
    fn lifetime(
        &self,
        facts: AnswerFacts,
        stored: &StoredAnswer,
        q: &Query,
    ) -> Result<std::time::Duration, CacheSkip> {
        if facts.truncated {
            return Err(CacheSkip::Truncated);
        }
        match facts.rcode {
            rcode::NOERROR | rcode::NXDOMAIN => {}
            rcode::SERVFAIL => return Err(CacheSkip::ServFail),
            _ => return Err(CacheSkip::Rcode),
        }
        if !cached::answers(stored, q) {
            return Err(CacheSkip::Malformed);
        }
        let ttl = facts.ttl.ok_or(CacheSkip::NoSoa)?;
        let cap = if facts.negative {
            self.cfg.negative_ttl_cap
        } else {
            self.cfg.max_ttl
        };
        let life = std::time::Duration::from_secs(u64::from(ttl)).min(cap);
        if life.is_zero() || life < self.cfg.min_ttl {
            return Err(CacheSkip::Ttl);
        }
        if stored.packet.len() > MAX_ANSWER_BYTES
            || stored.size() + 2 * ENTRY_OVERHEAD > self.shard_bytes
        {
            return Err(CacheSkip::TooBig);
        }
        Ok(life)
    }

    /// The widths the scope marker at `req`'s key holds once an answer scoped to `scope` bits
    /// of an IPv4 (or IPv6) address is stored. The marker keeps the other family's width (an
    /// answer may be scoped per family).
    #[inline]
    fn marker_widths(&self, req: &Request, ipv4: bool, scope: u8) -> (u8, u8) {
        let (mut v4, mut v6) = (0, 0);
        let _ = self.with_entry(req.base, |e| {
            if let Some(Entry {
                body: Body::Scoped { v4: a, v6: b },
                flags,
                ..
            }) = e
                && *flags == req.flags
            {
                (v4, v6) = (*a, *b);
            }
        });
        if ipv4 {
            v4 = scope;
        } else {
            v6 = scope;
        }
        (v4, v6)
    }

    /// Drops every entry of `zone` (lower-case, absolute), registering it if it is new.
    pub(crate) fn invalidate_zone(&self, zone: &str) {
        let Ok(apex) = crate::dns::name_from_text(zone) else {
            return;
        };
        let apex = apex.to_ascii_lowercase();
        match self.zones.load().iter().find(|z| z.apex == apex) {
            Some(z) => z.generation.store(
                self.next_gen.fetch_add(1, Ordering::Relaxed),
                Ordering::Relaxed,
            ),
            None => self.register_zone(zone),
        }
    }

    fn register_zone(&self, zone: &str) {
        let Ok(apex) = crate::dns::name_from_text(zone) else {
            return;
        };
        let z = Arc::new(ZoneGen {
            apex: apex.to_ascii_lowercase(),
            generation: AtomicU64::new(self.next_gen.fetch_add(1, Ordering::Relaxed)),
        });
        self.zones.rcu(|list| {
            let mut list = Vec::clone(list);
            list.retain(|o| o.apex != z.apex);
            list.push(z.clone());
            list
        });
    }

    /// (entries, bytes, evictions) over all shards, for `/metrics`.
    pub(crate) fn stats(&self) -> (u64, u64, u64) {
        self.shards.iter().fold((0, 0, 0), |(e, b, v), s| {
            (
                e + s.entries.load(Ordering::Relaxed),
                b + s.bytes.load(Ordering::Relaxed),
                v + s.evictions.load(Ordering::Relaxed),
            )
        })
    }

    /// The generation of the innermost registered zone holding `qname` (0: none).
    fn zone_gen(&self, qname: &[u8]) -> u64 {
        let zones = self.zones.load();
        let mut best: Option<&ZoneGen> = None;
        for z in zones.iter() {
            if is_under(qname, &z.apex) && best.is_none_or(|b| z.apex.len() > b.apex.len()) {
                best = Some(z);
            }
        }
        best.map_or(0, |z| z.generation.load(Ordering::Relaxed))
    }

    fn sub_key(&self, base: u64, subnet: IpAddr, scope: u8) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(base);
        match subnet {
            IpAddr::V4(a) => h.write(&a.octets()),
            IpAddr::V6(a) => h.write(&a.octets()),
        }
        h.write_u8(scope);
        h.finish()
    }

    fn cell(&self, key: u64) -> &ShardCell {
        // The low bits pick the slot in the shard's map; the high ones pick the shard.
        &self.shards[(key >> 58) as usize % self.shards.len()]
    }

    /// Runs `f` on the entry under `key` (None: no entry) with its shard locked; Err when the
    /// shard is busy (never waits).
    fn with_entry<R>(
        &self,
        key: u64,
        f: impl FnOnce(&mut Option<Entry>) -> R,
    ) -> Result<R, CacheSkip> {
        let cell = self.cell(key);
        let mut shard = match cell.shard.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(CacheSkip::Busy),
        };
        let Some(&slot) = shard.index.get(&key) else {
            return Ok(f(&mut None));
        };
        let slot = slot as usize;
        let cost = shard.slots[slot].as_ref().map_or(0, Entry::cost);
        let r = f(&mut shard.slots[slot]);
        if shard.slots[slot].is_none() {
            // `f` dropped a dead or invalidated entry.
            shard.index.remove(&key);
            shard.free.push(slot as u32);
            shard.bytes -= cost;
            cell.entries
                .store(shard.index.len() as u64, Ordering::Relaxed);
            cell.bytes.store(shard.bytes as u64, Ordering::Relaxed);
        }
        Ok(r)
    }

    fn put(&self, entry: Entry, now: Instant) -> Result<(), CacheSkip> {
        let cell = self.cell(entry.key);
        let mut guard = match cell.shard.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(CacheSkip::Busy),
        };
        let shard = &mut *guard;
        let cost = entry.cost();
        if let Some(&slot) = shard.index.get(&entry.key) {
            shard.remove_slot(slot as usize);
        }
        let mut evicted = 0;
        while shard.index.len() >= self.shard_entries || shard.bytes + cost > self.shard_bytes {
            if !shard.evict_one(now) {
                break;
            }
            evicted += 1;
        }
        if shard.index.len() >= self.shard_entries || shard.bytes + cost > self.shard_bytes {
            return Err(CacheSkip::TooBig);
        }
        let key = entry.key;
        let slot = match shard.free.pop() {
            Some(s) => {
                shard.slots[s as usize] = Some(entry);
                s
            }
            None => {
                shard.slots.push(Some(entry));
                (shard.slots.len() - 1) as u32
            }
        };
        shard.index.insert(key, slot);
        shard.bytes += cost;
        cell.entries
            .store(shard.index.len() as u64, Ordering::Relaxed);
        cell.bytes.store(shard.bytes as u64, Ordering::Relaxed);
        if evicted > 0 {
            cell.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Shard {
    fn remove_slot(&mut self, slot: usize) {
        if let Some(e) = self.slots[slot].take() {
            self.bytes -= e.cost();
            self.index.remove(&e.key);
            self.free.push(slot as u32);
        }
    }

    /// CLOCK: the first entry not served since the hand last passed (dead ones at once).
    fn evict_one(&mut self, now: Instant) -> bool {
        let n = self.slots.len();
        for _ in 0..2 * n + 1 {
            if n == 0 {
                break;
            }
            self.hand = (self.hand + 1) % n;
            let Some(e) = &mut self.slots[self.hand] else {
                continue;
            };
            if e.referenced && now < e.dead_at {
                e.referenced = false;
                continue;
            }
            let slot = self.hand;
            self.remove_slot(slot);
            return true;
        }
        false
    }
}

/// What a lookup found under the key without the client.
enum Found {
    Served(Served),
    Scoped { v4: u8, v6: u8 },
}

/// One lookup's inputs.
struct Serve<'a> {
    cfg: &'a CacheConfig,
    req: &'a Request,
    q: &'a Query,
    pkt: &'a [u8],
    now: Instant,
    allow_stale: bool,
    max_udp: Option<usize>,
}

impl Serve<'_> {
    fn at_base(&self, slot: &mut Option<Entry>, out: &mut Vec<u8>) -> Option<Found> {
        let e = self.live(slot)?;
        match &e.body {
            Body::Scoped { v4, v6 } => Some(Found::Scoped { v4: *v4, v6: *v6 }),
            Body::Answer { scope: 0, .. } => self.write(e, 0, out).map(Found::Served),
            Body::Answer { .. } => None,
        }
    }

    fn at_subnet(
        &self,
        slot: &mut Option<Entry>,
        subnet: IpAddr,
        scope: u8,
        out: &mut Vec<u8>,
    ) -> Option<Served> {
        let e = self.live(slot)?;
        match &e.body {
            Body::Answer {
                subnet: s,
                scope: sc,
                ..
            } if *s == subnet && *sc == scope => self.write(e, scope, out),
            _ => None,
        }
    }

    /// The entry if it belongs to this query and is not dead (a dead or invalidated one is
    /// dropped).
    fn live<'e>(&self, slot: &'e mut Option<Entry>) -> Option<&'e mut Entry> {
        let e = slot.as_ref()?;
        if e.zone_gen != self.req.zone_gen || self.now >= e.dead_at {
            *slot = None;
            return None;
        }
        let e = slot.as_mut()?;
        (e.flags == self.req.flags).then_some(e)
    }

    fn write(&self, e: &mut Entry, scope: u8, out: &mut Vec<u8>) -> Option<Served> {
        let Body::Answer { stored, .. } = &e.body else {
            return None;
        };
        let (ttls, served) = if self.now < e.expires {
            let ttls = if self.cfg.age_ttls {
                Ttls::Age(self.now.saturating_duration_since(e.inserted).as_secs() as u32)
            } else {
                Ttls::Keep
            };
            (ttls, Served::Fresh)
        } else if self.allow_stale {
            (Ttls::Fixed(STALE_ANSWER_TTL), Served::Stale)
        } else {
            return None;
        };
        if !cached::answers(stored, self.q) {
            return None;
        }
        cached::serve(stored, self.pkt, self.q, ttls, scope, self.max_udp, out).ok()?;
        e.referenced = true;
        Some(served)
    }
}

/// `addr` with only its first `bits` bits kept.
fn cut(addr: IpAddr, bits: u8) -> IpAddr {
    ipnet::IpNet::new(addr, bits.min(full_width(addr))).map_or(addr, |n| n.network())
}

fn full_width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// True if wire name `name` is `apex` or below it (both lower case).
fn is_under(name: &[u8], apex: &[u8]) -> bool {
    let mut off = 0;
    while off < name.len() {
        if name[off..] == *apex {
            return true;
        }
        let len = name[off] as usize;
        if len == 0 {
            return false;
        }
        off += len + 1;
    }
    false
}

/// The cache's families: size and evictions read from the shards (zeros when `[cache]` is
/// off), hits, misses, stale answers and skipped inserts summed from the workers' counters.
pub(crate) fn families(cache: Option<&PacketCache>, workers: &Metrics) -> Vec<MetricFamily> {
    let (entries, bytes, evictions) = cache.map_or((0, 0, 0), PacketCache::stats);
    let mut out = vec![
        scalar(
            "dnsteer_cache_entries",
            "Entries in the packet cache (answers and scope markers).",
            MetricType::GAUGE,
            entries as f64,
        ),
        scalar(
            "dnsteer_cache_bytes",
            "Bytes the packet cache holds (answers plus per-entry overhead).",
            MetricType::GAUGE,
            bytes as f64,
        ),
        scalar(
            "dnsteer_cache_evictions_total",
            "Packet cache entries removed to make room.",
            MetricType::COUNTER,
            evictions as f64,
        ),
    ];
    for (name, help, get) in [
        (
            "dnsteer_cache_hits_total",
            "Queries answered from the packet cache with a fresh entry.",
            (|w: &WorkerMetrics| w.cache_hits.get()) as fn(&WorkerMetrics) -> u64,
        ),
        (
            "dnsteer_cache_misses_total",
            "Packet cache lookups that found no usable entry (the query was forwarded).",
            |w| w.cache_misses.get(),
        ),
        (
            "dnsteer_cache_stale_served_total",
            "Expired packet cache entries served (TTL 30) because PowerDNS could not answer.",
            |w| w.cache_stale.get(),
        ),
    ] {
        out.push(scalar(
            name,
            help,
            MetricType::COUNTER,
            workers.sum(get) as f64,
        ));
    }
    out.push(labelled(
        "dnsteer_cache_insert_skipped_total",
        "Answers from PowerDNS not put in the packet cache, by reason.",
        MetricType::COUNTER,
        "reason",
        CacheSkip::ALL.iter().map(|&r| {
            let n = workers.sum(|w| w.cache_skipped[r as usize].get());
            (r.label(), n as f64)
        }),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::dns::{QueryEdns, build_query, name_from_text, parse_query, rewrite_for_upstream};

    fn cfg(max_entries: usize, max_bytes: usize) -> CacheConfig {
        CacheConfig {
            enabled: true,
            max_entries,
            max_bytes,
            max_ttl: Duration::from_secs(60),
            min_ttl: Duration::ZERO,
            negative_ttl_cap: Duration::from_secs(30),
            age_ttls: false,
            stale_ttl: Duration::from_secs(3600),
        }
    }

    fn upstream(mode: &str) -> UpstreamConfig {
        let text = format!("[upstream]\nclient_address = \"{mode}\"\n");
        crate::config::Config::parse(&text, std::path::Path::new("t.toml"))
            .unwrap()
            .upstream
    }

    fn client_query(name: &str, dnssec_ok: bool) -> Vec<u8> {
        let wire = name_from_text(name).unwrap();
        let edns = QueryEdns {
            udp_size: 1232,
            dnssec_ok,
        };
        build_query(0x4242, &wire, 1, Some(edns))
    }

    /// PowerDNS's answer to the forwarded form of `pkt` from `client` (ECS added as in "ecs"
    /// mode): one A record, TTL 300, the ECS echoed with `scope` (or `rcode` and no answer).
    fn answer(pkt: &[u8], client: IpAddr, scope: u8, rc: u8, flags: u8) -> (Vec<u8>, Added) {
        let q = parse_query(pkt).unwrap();
        let mut up = Vec::new();
        let added = rewrite_for_upstream(pkt, &q, 7, Some((client, 24)), &mut up);
        let mut r = up[..q.question_end].to_vec();
        r[2] |= 0x80 | 0x04 | flags;
        r[3] = rc;
        if rc == rcode::NOERROR {
            r[7] = 1;
            r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 1]);
        }
        let mut opt = up[q.question_end..].to_vec();
        let n = opt.len();
        opt[n - 4] = scope; // the /24 ECS option ends: family(2) source(1) scope(1) addr(3)
        r.extend_from_slice(&opt);
        (r, added)
    }

    struct T {
        cache: PacketCache,
        up: UpstreamConfig,
        metrics: WorkerMetrics,
        now: Instant,
    }

    impl T {
        fn new(c: CacheConfig) -> T {
            T {
                cache: PacketCache::new(&c, &["example.test.".to_string()]),
                up: upstream("ecs"),
                metrics: WorkerMetrics::default(),
                now: Instant::now(),
            }
        }

        fn fill(&self, name: &str, client: &str, scope: u8, rc: u8, flags: u8, dnssec_ok: bool) {
            let client: IpAddr = client.parse().unwrap();
            let pkt = client_query(name, dnssec_ok);
            let q = parse_query(&pkt).unwrap();
            let (resp, added) = answer(&pkt, client, scope, rc, flags);
            let req = self.cache.request(&q, client, &self.up).unwrap();
            self.cache
                .insert(&req, &q, &resp, added, self.now, &self.metrics);
        }

        fn get(&self, name: &str, client: &str, dnssec_ok: bool, at: Duration) -> Option<Served> {
            self.get_stale(name, client, dnssec_ok, at, false)
        }

        fn get_stale(
            &self,
            name: &str,
            client: &str,
            dnssec_ok: bool,
            at: Duration,
            allow_stale: bool,
        ) -> Option<Served> {
            let pkt = client_query(name, dnssec_ok);
            let q = parse_query(&pkt).unwrap();
            let req = self
                .cache
                .request(&q, client.parse().unwrap(), &self.up)
                .unwrap();
            let mut out = Vec::new();
            let r = self
                .cache
                .lookup(&req, &q, &pkt, self.now + at, allow_stale, None, &mut out);
            if r.is_some() {
                assert_eq!(&out[..2], &pkt[..2], "the client's ID");
            }
            r
        }

        fn skipped(&self, why: CacheSkip) -> u64 {
            self.metrics.cache_skipped[why as usize].get()
        }
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn scope_zero_is_shared_and_scope_24_stays_in_its_subnet() {
        let t = T::new(cfg(1000, 1 << 20));
        t.fill("static.example.test.", "192.0.2.7", 0, 0, 0, false);
        assert_eq!(
            t.get("static.example.test.", "198.51.100.1", false, NOW),
            Some(Served::Fresh),
            "scope 0: every client"
        );
        t.fill("who.example.test.", "192.0.2.7", 24, 0, 0, false);
        assert_eq!(
            t.get("who.example.test.", "192.0.2.200", false, NOW),
            Some(Served::Fresh),
            "same /24"
        );
        assert_eq!(
            t.get("who.example.test.", "192.0.3.7", false, NOW),
            None,
            "another /24"
        );
        // A scope wider than the client's own ECS source prefix cannot be used (§7.3.2).
        let pkt = {
            let wire = name_from_text("who.example.test.").unwrap();
            let mut p = build_query(1, &wire, 1, None);
            // EDNS with ECS 192.0.2.0/16 from the client.
            p[11] = 1;
            p.extend_from_slice(&[
                0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 10, 0, 8, 0, 6, 0, 1, 16, 0, 192, 0,
            ]);
            p
        };
        let q = parse_query(&pkt).unwrap();
        let req = t
            .cache
            .request(&q, "192.0.2.7".parse().unwrap(), &t.up)
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            t.cache.lookup(&req, &q, &pkt, t.now, false, None, &mut out),
            None
        );
    }

    #[test]
    fn proxy_mode_keeps_answers_per_client_address() {
        let mut t = T::new(cfg(1000, 1 << 20));
        t.up = upstream("proxy");
        t.fill("who.example.test.", "192.0.2.7", 0, 0, 0, false);
        assert_eq!(
            t.get("who.example.test.", "192.0.2.7", false, NOW),
            Some(Served::Fresh)
        );
        assert_eq!(t.get("who.example.test.", "192.0.2.8", false, NOW), None);
        let mut t = T::new(cfg(1000, 1 << 20));
        t.up = upstream("none");
        t.fill("who.example.test.", "192.0.2.7", 0, 0, 0, false);
        assert_eq!(
            t.get("who.example.test.", "203.0.113.1", false, NOW),
            Some(Served::Fresh)
        );
    }

    #[test]
    fn do_and_non_do_are_kept_apart() {
        let t = T::new(cfg(1000, 1 << 20));
        t.fill("a.example.test.", "192.0.2.7", 0, 0, 0, true);
        assert_eq!(t.get("a.example.test.", "192.0.2.7", false, NOW), None);
        assert_eq!(
            t.get("a.example.test.", "192.0.2.7", true, NOW),
            Some(Served::Fresh)
        );
    }

    #[test]
    fn servfail_truncated_and_soa_less_negative_answers_are_not_cached() {
        let t = T::new(cfg(1000, 1 << 20));
        t.fill(
            "sf.example.test.",
            "192.0.2.7",
            0,
            rcode::SERVFAIL,
            0,
            false,
        );
        t.fill("tc.example.test.", "192.0.2.7", 0, 0, 0x02, false);
        t.fill(
            "nx.example.test.",
            "192.0.2.7",
            0,
            rcode::NXDOMAIN,
            0,
            false,
        );
        t.fill("rf.example.test.", "192.0.2.7", 0, rcode::REFUSED, 0, false);
        for n in ["sf", "tc", "nx", "rf"] {
            assert_eq!(
                t.get(&format!("{n}.example.test."), "192.0.2.7", false, NOW),
                None,
                "{n}"
            );
        }
        assert_eq!(t.skipped(CacheSkip::ServFail), 1);
        assert_eq!(t.skipped(CacheSkip::Truncated), 1);
        assert_eq!(t.skipped(CacheSkip::NoSoa), 1);
        assert_eq!(t.skipped(CacheSkip::Rcode), 1);
        assert_eq!(t.cache.stats().0, 0);
    }

    #[test]
    fn lifetime_is_capped_then_stale_then_dead() {
        let t = T::new(cfg(1000, 1 << 20));
        t.fill("a.example.test.", "192.0.2.7", 0, 0, 0, false);
        let s = Duration::from_secs;
        // TTL 300, max_ttl 60.
        assert_eq!(
            t.get("a.example.test.", "192.0.2.7", false, s(59)),
            Some(Served::Fresh)
        );
        assert_eq!(t.get("a.example.test.", "192.0.2.7", false, s(61)), None);
        assert_eq!(
            t.get_stale("a.example.test.", "192.0.2.7", false, s(61), true),
            Some(Served::Stale)
        );
        assert_eq!(
            t.get_stale("a.example.test.", "192.0.2.7", false, s(60 + 3601), true),
            None,
            "past the stale window"
        );
        assert_eq!(t.cache.stats().0, 0, "the dead entry was dropped");
    }

    #[test]
    fn a_zone_invalidation_drops_its_names_only() {
        let t = T::new(cfg(1000, 1 << 20));
        t.fill("a.example.test.", "192.0.2.7", 0, 0, 0, false);
        t.fill("a.other.test.", "192.0.2.7", 0, 0, 0, false);
        t.cache.invalidate_zone("example.test.");
        assert_eq!(t.get("a.example.test.", "192.0.2.7", false, NOW), None);
        assert_eq!(
            t.get("a.other.test.", "192.0.2.7", false, NOW),
            Some(Served::Fresh)
        );
        // A zone not known before is registered by its first invalidation.
        t.cache.invalidate_zone("other.test.");
        assert_eq!(t.get("a.other.test.", "192.0.2.7", false, NOW), None);
    }

    #[test]
    fn a_million_distinct_names_stay_within_the_entry_and_byte_caps() {
        let (max_entries, max_bytes) = (20_000, 2 << 20);
        let t = T::new(cfg(max_entries, max_bytes));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let mut pkt = client_query("n0000000.example.test.", false);
        let (mut resp, added) = answer(&pkt, client, 0, 0, 0);
        let mut digits = [b'0'; 7];
        for i in 0..1_000_000u32 {
            let mut n = i;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            pkt[14..21].copy_from_slice(&digits);
            resp[14..21].copy_from_slice(&digits);
            let q = parse_query(&pkt).unwrap();
            let req = t.cache.request(&q, client, &t.up).unwrap();
            t.cache.insert(&req, &q, &resp, added, t.now, &t.metrics);
        }
        let (entries, bytes, evictions) = t.cache.stats();
        assert!(entries as usize <= max_entries, "{entries}");
        assert!(bytes as usize <= max_bytes, "{bytes}");
        // ~230 bytes an entry: here the byte cap is the one reached.
        assert!(
            bytes as usize > max_bytes * 9 / 10,
            "filled to the cap: {bytes}"
        );
        assert!(evictions >= 1_000_000 - entries, "{evictions}");
        assert_eq!(t.skipped(CacheSkip::TooBig), 0);
        // The last names are there.
        assert_eq!(
            t.get("n0999999.example.test.", "192.0.2.7", false, NOW),
            Some(Served::Fresh)
        );
    }
}

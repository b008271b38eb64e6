//! One query's way through dnsteer, the same for UDP and TCP:
//! rate limit → parse → in-process record, NODATA, or forward to PowerDNS.
//!
//! `handle` decides and, for answers made here, writes the response and does the accounting
//! (metrics, sampled log, dnstap). Forwarded queries are accounted when their answer comes back.

use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;

use tokio::time::Instant;

use crate::config::{BlockAction, LimitAction};
use crate::dns::cookie::{self, Checked};
use crate::dns::{self, EdnsReply, Query, ResponseBuilder, rcode};
use crate::dnssec::SignerState;
use crate::flood::BlockTable;
use crate::forward::cache::{PacketCache, Served};
use crate::ratelimit::{RateLimiter, RrlKey, RrlVerdict, Verdict};
use crate::server::signing::{SignState, TYPE_RRSIG};
use crate::state::Shared;
use crate::state::Snapshot;
use crate::steer::records::{AnswerKind, AnswerSink, Client, Lookup, Outcome, RecordSet, ZoneInfo};
use crate::telemetry::Report;
use crate::telemetry::dns_metrics::{AnswerPath, Site, ZoneSlot};
use crate::telemetry::dnstap::Dnstap;
use crate::telemetry::flood_counts::source_key;
use crate::telemetry::metrics::{
    CookieSeen, Decision, DnssecForward, DropReason, Malformed, Path, Transport, WorkerMetrics,
};
use crate::telemetry::querylog::{Event, QueryEntry, QueryLog, Sampler};

/// What the transport should do with the packet.
// Returned by value once per packet; boxing the query would cost an allocation per forward.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Send `out` to the client.
    Reply,
    /// Send to PowerDNS; `report` says where its answer is reported when it completes.
    Forward { query: Query, report: Report },
    /// Send nothing.
    Drop,
}

/// Everything `handle` reads, borrowed from the worker.
pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub limiter: &'a RateLimiter,
    pub metrics: &'a WorkerMetrics,
    pub log: &'a QueryLog,
    pub sampler: &'a mut Sampler,
    pub max_udp_payload: u16,
    /// Where NOTIFYs for transferred zones go.
    pub notify: &'a tokio::sync::mpsc::Sender<String>,
    /// This worker's index (shards per-record counters).
    pub worker: usize,
    /// How in-process answers reach the latency histogram.
    pub latency: Latency,
    /// This thread's signature cache and scratch space.
    pub sign: &'a mut SignState,
    /// The packet cache for forwarded answers (None: `[cache]` off).
    pub cache: Option<&'a PacketCache>,
    /// dnstap output (None: `[dnstap]` off).
    pub tap: Option<&'a Dnstap>,
    /// Flood blocks in force (None on TCP: a TCP source is proven, blocks never apply).
    pub blocks: Option<&'a BlockTable>,
}

/// Latency accounting for in-process answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Observed per query when its answer is built (TCP: it is written right after).
    PerQuery,
    /// Counted here; the caller observes the whole batch once it was sent (UDP: answers leave
    /// together with one `sendmmsg`, so the batch's end is every answer's real send time, and
    /// it costs one clock read per batch instead of one per query).
    Batch { answered: u64 },
}

/// Decides what to do with one packet from `src`, writing any local answer into `out`.
pub fn handle(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src: SocketAddr,
    t: Transport,
    received: Instant,
    out: &mut Vec<u8>,
) -> Action {
    // dnstap's decision comes first and costs one RNG draw; only a tapped query is copied.
    let tapped = ctx.tap.is_some() && ctx.sampler.sample(ctx.snap.dnstap_threshold);
    let action = counted(ctx, pkt, src, t, received, out, tapped);
    if tapped && let Some(tap) = ctx.tap {
        match action {
            Action::Reply => tap.exchange(t, src, received, pkt, Some(out)),
            Action::Drop => tap.exchange(t, src, received, pkt, None),
            // Tapped with its answer, in `forwarded_done`.
            Action::Forward { .. } => {}
        }
    }
    action
}

/// [`handle`] without dnstap (`tapped` only travels with a forwarded query): decides, and
/// counts every answer made here once; forwarded ones are counted in `forwarded_done`.
#[inline]
fn counted(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src: SocketAddr,
    t: Transport,
    received: Instant,
    out: &mut Vec<u8>,
    tapped: bool,
) -> Action {
    let src_ip = src.ip().to_canonical();
    let mut site = Site {
        proto: t,
        v6: src_ip.is_ipv6(),
        zone: ZoneSlot::DROPPED,
    };
    let (action, path) = decide(ctx, pkt, src_ip, &mut site, received, out, tapped);
    if let Action::Reply = action {
        let rc = out.get(3).map_or(rcode::NOERROR, |b| b & 0x0f);
        ctx.metrics.dns.response(site, rc, path, out.len());
        let flood = &ctx.snap.config.flood;
        if flood.counting() {
            ctx.metrics
                .flood
                .response(source_key(src_ip, flood), rc, out.len());
        }
    }
    action
}

/// [`counted`] without the DNS response count: the action, and which path wrote `out`.
#[inline]
fn decide(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src_ip: IpAddr,
    site: &mut Site,
    received: Instant,
    out: &mut Vec<u8>,
    tapped: bool,
) -> (Action, AnswerPath) {
    let t = site.proto;
    // Limit before parsing: a blocked source costs a table lookup, nothing more. The receive
    // time is reused: one clock read per packet.
    if let Some(action) = rate_limit(ctx, pkt, src_ip, t, received, out) {
        ctx.metrics.dns.request(*site, None, false, pkt.len());
        return (action, AnswerPath::RateLimited);
    }

    // Borrowed from the Result: the Query is only copied when it is forwarded.
    let parsed = dns::parse_query(pkt);
    let q = match &parsed {
        Ok(q) => q,
        Err(e) => {
            ctx.metrics.dns.request(*site, None, false, pkt.len());
            return (malformed(ctx, pkt, src_ip, *e, t, out), AnswerPath::Error);
        }
    };
    site.zone = ctx.snap.dns_zones.slot_of(q.qname.as_bytes());
    let dnssec_ok = q.edns.is_some_and(|e| e.dnssec_ok);
    ctx.metrics
        .dns
        .request(*site, Some(q.qtype), dnssec_ok, pkt.len());
    if q.opcode != 0 {
        return notify(ctx, pkt, src_ip, t, out);
    }
    let cookie = check_cookie(ctx, q, pkt, src_ip);

    let asked = Asked {
        pkt,
        q,
        src_ip,
        t,
        report: Report {
            sampled: ctx.sampler.sample(ctx.snap.sample_threshold),
            tapped,
            zone: site.zone,
        },
        max_size: match t {
            Transport::Udp => q.max_udp_response(ctx.max_udp_payload),
            Transport::Tcp => usize::from(u16::MAX),
        },
        udp_size: ctx.max_udp_payload,
        dnssec_ok,
        source_proven: t == Transport::Tcp
            || cookie.is_some_and(|c| c.outcome == cookie::Outcome::Valid),
        cookie: cookie.map(|c| c.reply),
    };
    let flood = &ctx.snap.config.flood;
    if flood.counting() {
        let key = source_key(src_ip, flood);
        ctx.metrics.flood.query(key, q.qtype, flood);
    }
    let blocked = match ctx.blocks {
        Some(b) if !asked.source_proven => b.check(src_ip, q.qname.as_bytes(), received),
        _ => None,
    };
    let step = match blocked.map(|b| b.action) {
        Some(action) => flood_block(ctx, &asked, action, received, out),
        None => answer(ctx, &asked, received, out),
    };
    match step {
        ControlFlow::Continue(done) => {
            if let Some(limited) = rrl_answer(ctx, &asked, received, out) {
                return limited;
            }
            account_answer(ctx, &asked, done, received);
            (Action::Reply, done.path)
        }
        ControlFlow::Break(done @ (Action::Forward { .. }, _)) => {
            rrl_before_forward(ctx, &asked, received, out).unwrap_or(done)
        }
        ControlFlow::Break(done) => done,
    }
}

/// An answer made here, as its accounting needs it.
#[derive(Clone, Copy)]
struct Answered {
    decision: Decision,
    rcode: u8,
    answers: u16,
    path: AnswerPath,
}

impl Answered {
    fn new(decision: Decision, rcode: u8, answers: u16, path: AnswerPath) -> Answered {
        Answered {
            decision,
            rcode,
            answers,
            path,
        }
    }
}

/// One parsed query on its way to an answer made here, and what that answer must respect.
struct Asked<'q> {
    pkt: &'q [u8],
    q: &'q Query,
    src_ip: IpAddr,
    t: Transport,
    /// Where its answer is reported.
    report: Report,
    /// Largest response the client takes.
    max_size: usize,
    /// Our EDNS UDP size.
    udp_size: u16,
    dnssec_ok: bool,
    /// The source address is not spoofed: TCP, or a valid server cookie (RFC 7873). Flood
    /// blocks do not apply, and RRL never limits such a source.
    source_proven: bool,
    /// The COOKIE option data of the answer (the query carried one and `[cookies]` is on).
    cookie: Option<[u8; cookie::REPLY_LEN]>,
}

impl Asked<'_> {
    /// The OPT record of the answer (if the query had one), with ECS `scope`.
    #[inline]
    fn edns_reply(&self, scope: u8) -> Option<EdnsReply> {
        self.q.edns.map(|e| EdnsReply {
            udp_size: self.udp_size,
            dnssec_ok: e.dnssec_ok,
            ecs: e.ecs.map(|ecs| (ecs, scope)),
            ext_rcode: 0,
            cookie: self.cookie,
        })
    }

    /// Our COOKIE option into an answer made from the packet cache.
    #[inline]
    fn cookie_into(&self, out: &mut Vec<u8>) {
        if let Some(reply) = &self.cookie {
            let edns = (self.udp_size, self.dnssec_ok);
            let max = (self.t == Transport::Udp).then_some(self.max_size);
            let _ = dns::rewrite::put_cookie_in_answer(out, reply, edns, max);
        }
    }

    /// Sent to PowerDNS (the path is unused: nothing is answered yet).
    #[inline]
    fn forward(&self) -> (Action, AnswerPath) {
        let action = Action::Forward {
            query: *self.q,
            report: self.report,
        };
        (action, AnswerPath::Forwarded)
    }

    /// Sent to PowerDNS because dnsteer cannot sign the answer (counted by `why`).
    #[inline]
    fn forward_dnssec(&self, ctx: &Ctx<'_>, why: DnssecForward) -> (Action, AnswerPath) {
        ctx.metrics.dnssec_forwarded[why as usize].inc();
        self.forward()
    }
}

/// The rate limiter's verdict on `src_ip`: `Some` when the query ends here (dropped, or
/// answered REFUSED or TC=1 into `out`).
#[inline]
fn rate_limit(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src_ip: IpAddr,
    t: Transport,
    received: Instant,
    out: &mut Vec<u8>,
) -> Option<Action> {
    match ctx.limiter.check_at(src_ip, received.into_std()) {
        Verdict::Allow | Verdict::Exempt => None,
        Verdict::WouldLimit { block_started } => {
            ctx.metrics.would_limit.inc();
            if block_started {
                ctx.log.event(Event::BlockStarted {
                    source: src_ip,
                    prefix: limiter_prefix(ctx.snap, src_ip),
                    dry_run: true,
                });
            }
            None
        }
        Verdict::Limited { block_started } => {
            if block_started {
                ctx.log.event(Event::BlockStarted {
                    source: src_ip,
                    prefix: limiter_prefix(ctx.snap, src_ip),
                    dry_run: false,
                });
            }
            if t == Transport::Udp && ctx.snap.cookies.is_some() {
                match limited_cookie(ctx, pkt, src_ip, out) {
                    LimitedCookie::Proven => return None,
                    LimitedCookie::BadCookie => return Some(Action::Reply),
                    LimitedCookie::Absent => {}
                }
            }
            let action = ctx.snap.config.ratelimit.action;
            // TCP already proved the source address: truncation means "come back over TCP",
            // so a limited TCP query under `truncate` is answered normally.
            if action == LimitAction::Truncate && t == Transport::Tcp {
                return None;
            }
            ctx.metrics.limited_by_action[action as usize].inc();
            ctx.metrics.query(t, Decision::Limited);
            Some(match action {
                LimitAction::Drop => {
                    ctx.metrics.dropped(DropReason::RateLimited);
                    Action::Drop
                }
                LimitAction::Refused => reply_error(ctx, pkt, rcode::REFUSED, false, t, out),
                LimitAction::Truncate => reply_error(ctx, pkt, rcode::NOERROR, true, t, out),
            })
        }
    }
}

/// RRL on an answer made here for UDP (in-process or the packet cache), already in `out`:
/// `Some` when limited, with `out` turned into its TC=1 slip or the answer dropped.
#[inline]
fn rrl_answer(
    ctx: &mut Ctx<'_>,
    a: &Asked<'_>,
    received: Instant,
    out: &mut Vec<u8>,
) -> Option<(Action, AnswerPath)> {
    if a.source_proven || !ctx.limiter.rrl_active() {
        return None;
    }
    let qname = a.q.qname.as_bytes();
    let key = RrlKey::of_response(out, qname, a.q.qtype, a.report.zone.known());
    let verdict = ctx
        .limiter
        .rrl_check_at(a.src_ip, key, out.len(), received.into_std());
    rrl_limited(ctx, a, verdict, out)
}

/// Carries out an RRL verdict on a query answered here (see [`rrl_apply`]) and counts a
/// limited one as such.
#[inline]
fn rrl_limited(
    ctx: &mut Ctx<'_>,
    a: &Asked<'_>,
    verdict: RrlVerdict,
    out: &mut Vec<u8>,
) -> Option<(Action, AnswerPath)> {
    let prefix = limiter_prefix(ctx.snap, a.src_ip);
    let action = rrl_apply(
        ctx.metrics,
        ctx.log,
        verdict,
        (a.pkt, a.src_ip, prefix),
        out,
    )?;
    ctx.metrics.query(a.t, Decision::Limited);
    if let Action::Reply = action {
        ctx.metrics.response(a.t, rcode::NOERROR);
    }
    Some((action, AnswerPath::RateLimited))
}

/// RRL before a UDP query goes to PowerDNS: when the budget of its positive answer is spent,
/// the query ends here (slipped or dropped) and PowerDNS is not asked. Other kinds (NXDOMAIN,
/// NODATA, ...) are only known from the answer, so those queries still go out.
#[inline]
fn rrl_before_forward(
    ctx: &mut Ctx<'_>,
    a: &Asked<'_>,
    received: Instant,
    out: &mut Vec<u8>,
) -> Option<(Action, AnswerPath)> {
    if a.source_proven || !ctx.limiter.rrl_active() {
        return None;
    }
    let (qname, qtype) = (a.q.qname.as_bytes(), a.q.qtype);
    let verdict = ctx
        .limiter
        .rrl_before_forward_at(a.src_ip, qname, qtype, received.into_std());
    let limited = rrl_limited(ctx, a, verdict, out)?;
    ctx.metrics.rrl_not_forwarded.inc();
    Some(limited)
}

/// RRL on a forwarded UDP query's answer from PowerDNS, restored for the client in `reply`:
/// `None` to send it as is, `Some(Reply)` with `reply` turned into the TC=1 slip,
/// `Some(Drop)` to send nothing. PowerDNS was asked either way.
pub(crate) fn rrl_forwarded(
    snap: &Snapshot,
    metrics: &WorkerMetrics,
    shared: &Shared,
    p: &crate::forward::upstream::Pending,
    reply: &mut Vec<u8>,
    now: Instant,
    source_proven: bool,
) -> Option<Action> {
    // Over UDP only a valid server cookie proves the source (checked when the answer got its
    // cookie): RRL never limits it.
    if source_proven || !shared.limiter.rrl_active() {
        return None;
    }
    let src = p.client.addr.ip().to_canonical();
    let (qname, zone) = (p.query.qname.as_bytes(), p.report.zone.known());
    let key = RrlKey::of_response(reply, qname, p.query.qtype, zone);
    let verdict = shared
        .limiter
        .rrl_check_at(src, key, reply.len(), now.into_std());
    let prefix = limiter_prefix(snap, src);
    rrl_apply(
        metrics,
        &shared.log,
        verdict,
        (&p.packet, src, prefix),
        reply,
    )
}

/// Carries out an RRL verdict on the response in `out` to the query `pkt` from `src`
/// (whose limiter key is `src/prefix`): None to send it as is; else the TC=1 slip (header and
/// question only, never larger than the query) written into `out`, or a drop. Counted here.
fn rrl_apply(
    metrics: &WorkerMetrics,
    log: &QueryLog,
    verdict: RrlVerdict,
    (pkt, src, prefix): (&[u8], IpAddr, u8),
    out: &mut Vec<u8>,
) -> Option<Action> {
    let (limit, dry_run) = match verdict {
        RrlVerdict::Allow | RrlVerdict::Exempt => return None,
        RrlVerdict::WouldLimit(l) => (l, true),
        RrlVerdict::Limited(l) => (l, false),
    };
    if limit.started {
        log.event(Event::RrlStarted {
            source: src,
            prefix,
            kind: limit.kind.label(),
            dry_run,
        });
    }
    if dry_run {
        metrics.would_limit.inc();
        return None;
    }
    if limit.by_bytes {
        metrics.rrl_by_bytes.inc();
    }
    let counts = &metrics.rrl_limited[limit.kind as usize];
    if limit.slip && dns::write_error(pkt, rcode::NOERROR, out) {
        out[2] |= 0x02;
        counts[0].inc();
        return Some(Action::Reply);
    }
    counts[1].inc();
    metrics.dropped(DropReason::RateLimited);
    Some(Action::Drop)
}

/// The answer made here, if there is one (an in-process record, or the packet cache for
/// names PowerDNS answers): `Continue` once it is in `out`, `Break` when the query goes to
/// PowerDNS instead or its answer was already accounted (with the path that wrote it).
#[inline]
fn answer(
    ctx: &mut Ctx<'_>,
    a: &Asked<'_>,
    received: Instant,
    out: &mut Vec<u8>,
) -> ControlFlow<(Action, AnswerPath), Answered> {
    let q = a.q;
    let lookup = ctx.snap.records.lookup(q.qname.as_bytes(), q.qtype);
    if let Lookup::Miss = lookup {
        if let Some(done) = cached(ctx, a, received, out) {
            return ControlFlow::Continue(done);
        }
        // Bound for PowerDNS: a zone under a random-subdomain flood stops here.
        if let Some(blocks) = ctx.blocks
            && !a.source_proven
            && let Some(b) = blocks.check_uncached(q.qname.as_bytes(), received)
        {
            let action = match b.action {
                BlockAction::CacheOnly => BlockAction::Refused,
                other => other,
            };
            return flood_block(ctx, a, action, received, out);
        }
    }
    ControlFlow::Continue(match lookup {
        Lookup::Miss if a.dnssec_ok => {
            return ControlFlow::Break(a.forward_dnssec(ctx, DnssecForward::NotInProcess));
        }
        Lookup::Miss => return ControlFlow::Break(a.forward()),
        // A signed zone never gets an unsigned in-process answer to a DO=1 query: it is signed
        // here or, when that is not possible, sent to PowerDNS (which signs it and proves
        // denials).
        Lookup::NoData(z) if z.signed && a.dnssec_ok => {
            return ControlFlow::Break(a.forward_dnssec(ctx, DnssecForward::NoData));
        }
        // A wildcard answer needs PowerDNS's proof that the query name does not exist.
        Lookup::Hit(set, Some(z)) if set.wildcard && z.signed && a.dnssec_ok => {
            return ControlFlow::Break(a.forward_dnssec(ctx, DnssecForward::NotInProcess));
        }
        Lookup::Hit(_, Some(z)) if z.signed && a.dnssec_ok && z.signer.signer().is_none() => {
            let why = match z.signer {
                SignerState::NotPublished { .. } => DnssecForward::KeyNotPublished,
                SignerState::Waiting { .. } => DnssecForward::WaitingForDnskeyTtl,
                _ => DnssecForward::NoKey,
            };
            return ControlFlow::Break(a.forward_dnssec(ctx, why));
        }
        Lookup::Hit(set, zone) => return answer_record(ctx, a, set, zone, out),
        Lookup::NoData(z) => {
            let mut b = ResponseBuilder::new(out, a.pkt, q, rcode::NOERROR, true);
            b.authority_soa(&z.apex_wire, z.negative_ttl, &z.soa_rdata);
            b.finish(a.edns_reply(0), a.max_size);
            Answered::new(Decision::Empty, rcode::NOERROR, 0, AnswerPath::InProcess)
        }
    })
}

/// `a` answered from the packet cache into `out`, if it holds the answer.
#[inline]
fn cached(ctx: &Ctx<'_>, a: &Asked<'_>, received: Instant, out: &mut Vec<u8>) -> Option<Answered> {
    let served = from_cache(ctx, a, received, out)?;
    a.cookie_into(out);
    note_truncation(ctx, out, 0);
    let rc = out.get(3).map_or(rcode::NOERROR, |b| b & 0x0f);
    let answers = out
        .get(6..8)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    Some(Answered::new(
        Decision::Cache,
        rc,
        answers,
        served_path(served),
    ))
}

/// A flood block's `action` on `a` (from a source not proven): dropped, REFUSED, TC=1, or
/// (`cache_only`) the packet cache's answer when it has one.
#[cold]
fn flood_block(
    ctx: &mut Ctx<'_>,
    a: &Asked<'_>,
    action: BlockAction,
    received: Instant,
    out: &mut Vec<u8>,
) -> ControlFlow<(Action, AnswerPath), Answered> {
    ctx.metrics.flood.blocked[action as usize].inc();
    if action == BlockAction::CacheOnly
        && let Some(done) = cached(ctx, a, received, out)
    {
        return ControlFlow::Continue(done);
    }
    ctx.metrics.query(a.t, Decision::Limited);
    let (pkt, t) = (a.pkt, a.t);
    ControlFlow::Break(match action {
        BlockAction::Drop => {
            ctx.metrics.dropped(DropReason::RateLimited);
            (Action::Drop, AnswerPath::RateLimited)
        }
        BlockAction::Truncate => {
            let action = reply_error(ctx, pkt, rcode::NOERROR, true, t, out);
            (action, AnswerPath::RateLimited)
        }
        BlockAction::Refused | BlockAction::CacheOnly => {
            let action = reply_error(ctx, pkt, rcode::REFUSED, false, t, out);
            (action, AnswerPath::RateLimited)
        }
    })
}

/// The path of an answer from the packet cache.
#[inline]
fn served_path(served: Served) -> AnswerPath {
    match served {
        Served::Fresh => AnswerPath::Cached,
        Served::Stale => AnswerPath::Stale,
    }
}

/// Evaluates a record set into `out`, signed when its zone signs DO=1 answers here.
#[inline]
fn answer_record(
    ctx: &mut Ctx<'_>,
    a: &Asked<'_>,
    set: &RecordSet,
    zone: Option<&ZoneInfo>,
    out: &mut Vec<u8>,
) -> ControlFlow<(Action, AnswerPath), Answered> {
    let (pkt, q, t) = (a.pkt, a.q, a.t);
    let client = Client {
        bestwho: q.edns.and_then(|e| e.ecs).map_or_else(
            || ctx.snap.config.upstream.client_identity(a.src_ip),
            |e| e.addr,
        ),
        ecs_source_prefix: q.edns.and_then(|e| e.ecs).map(|e| e.source_prefix),
    };
    let signer = zone
        .filter(|z| z.signed && a.dnssec_ok)
        .and_then(|z| z.signer.signer());
    let mut b = ResponseBuilder::new(out, pkt, q, rcode::NOERROR, true);
    ctx.sign.start();
    let mut sink = Sink {
        b: &mut b,
        ttl: set.ttl,
        n: 0,
        keep: signer.is_some().then_some(&mut *ctx.sign),
        owner: None,
    };
    // Rules that print the query name (createReverse) keep its case, as PowerDNS does.
    let qname = q.qname.as_bytes();
    let asked = pkt
        .get(dns::HEADER_LEN..dns::HEADER_LEN + qname.len())
        .filter(|raw| raw.eq_ignore_ascii_case(qname))
        .unwrap_or(qname);
    let ev = match set.evaluate_for(&client, asked, &mut sink) {
        Ok(ev) => ev,
        Err(e) => {
            set.stats.count(ctx.worker, AnswerKind::Error);
            let b = ResponseBuilder::new(out, pkt, q, rcode::SERVFAIL, true);
            b.finish(a.edns_reply(0), a.max_size);
            ctx.log.event(Event::ServFail {
                client: a.src_ip,
                qname: q.qname,
                qtype: q.qtype,
                reason: e.kind(),
            });
            let done = Answered::new(Decision::Error, rcode::SERVFAIL, 0, AnswerPath::Error);
            return ControlFlow::Continue(done);
        }
    };
    let mut n = sink.n;
    let mut scope = ev.scope;
    let mut chased_soa = None;
    if set.rtype == TYPE_CNAME && q.qtype != TYPE_CNAME && q.qtype != TYPE_ANY && n == 1 {
        // Copied (lower-cased) only here: the chase appends to the buffer it lies in.
        let target = CnameTarget::of(b.last_answer_rdata());
        if signer.is_some() {
            if ctx.snap.dns_zones.slot_of(target.name()) != ZoneSlot::OTHER {
                return ControlFlow::Break(a.forward_dnssec(ctx, DnssecForward::CnameChase));
            }
        } else {
            match chase(ctx, &client, q.qtype, target, &mut b) {
                Chased::End {
                    pushed,
                    scope: s,
                    soa,
                } => {
                    n += pushed;
                    scope = scope.max(s);
                    chased_soa = soa;
                }
                Chased::Forward => return ControlFlow::Break(a.forward()),
                Chased::Failed(e) => {
                    let b = ResponseBuilder::new(out, pkt, q, rcode::SERVFAIL, true);
                    b.finish(a.edns_reply(0), a.max_size);
                    ctx.log.event(Event::ServFail {
                        client: a.src_ip,
                        qname: q.qname,
                        qtype: q.qtype,
                        reason: e.kind(),
                    });
                    let done =
                        Answered::new(Decision::Error, rcode::SERVFAIL, 0, AnswerPath::Error);
                    return ControlFlow::Continue(done);
                }
            }
        }
    }
    let empty = ev.outcome == Outcome::Empty || n == 0;
    if empty && signer.is_some() {
        return ControlFlow::Break(a.forward_dnssec(ctx, DnssecForward::Empty));
    }
    if let Some(s) = signer {
        let signed = ctx
            .sign
            .sign(s, q.qname.as_bytes(), set.ttl, ctx.metrics, |rrsig| {
                b.answer(TYPE_RRSIG, set.ttl, rrsig);
            });
        if !signed {
            let b = ResponseBuilder::new(out, pkt, q, rcode::SERVFAIL, true);
            b.finish(a.edns_reply(0), a.max_size);
            ctx.metrics.query(t, Decision::Error);
            ctx.metrics.response(t, rcode::SERVFAIL);
            return ControlFlow::Break((Action::Reply, AnswerPath::Error));
        }
        ctx.metrics.dnssec_signed.inc();
    }
    if empty && let Some(z) = zone {
        b.authority_soa(&z.apex_wire, z.negative_ttl, &z.soa_rdata);
    } else if let Some(z) = chased_soa {
        b.authority_soa(&z.apex_wire, z.negative_ttl, &z.soa_rdata);
    }
    let len = b.finish(a.edns_reply(scope), a.max_size);
    let (d, kind) = match ev.outcome {
        Outcome::Primary => (Decision::Rule, AnswerKind::Primary),
        Outcome::Backup => (Decision::Backup, AnswerKind::Backup),
        Outcome::Empty => (Decision::Empty, AnswerKind::Empty),
    };
    set.stats.count(ctx.worker, kind);
    note_truncation(ctx, out, len);
    let path = match signer {
        Some(_) => AnswerPath::Signed,
        None => AnswerPath::InProcess,
    };
    ControlFlow::Continue(Answered::new(d, rcode::NOERROR, n, path))
}

/// Metrics, latency and the sampled log line for an answer made here.
#[inline]
fn account_answer(ctx: &mut Ctx<'_>, a: &Asked<'_>, done: Answered, received: Instant) {
    let t = a.t;
    let (decision, rc, answers) = (done.decision, done.rcode, done.answers);
    ctx.metrics.query(t, decision);
    ctx.metrics.response(t, rc);
    match &mut ctx.latency {
        Latency::PerQuery => {
            let latency = received.elapsed().as_nanos() as u64;
            ctx.metrics.latency[Path::InProcess as usize].observe_ns(latency);
        }
        Latency::Batch { answered } => *answered += 1,
    }
    if a.report.sampled {
        let latency = received.elapsed().as_nanos() as u64;
        ctx.log.query(entry(
            ctx.snap, t, a.src_ip, a.q, decision, rc, answers, latency, None,
        ));
    }
}

/// Answers `q` from the packet cache into `out` if it holds a fresh entry (or a stale one
/// while no PowerDNS server is healthy: forwarding could only time out). Never used for
/// in-process records: they follow probe state.
fn from_cache(ctx: &Ctx<'_>, a: &Asked<'_>, now: Instant, out: &mut Vec<u8>) -> Option<Served> {
    let cache = ctx.cache?;
    let req = cache.request(a.q, a.src_ip, &ctx.snap.config.upstream)?;
    let all_down = ctx.snap.upstream.servers.iter().all(|s| !s.is_healthy());
    let served = cache.lookup(&req, a.q, a.pkt, now, all_down, Some(a.max_size), out);
    match served {
        Some(Served::Fresh) => ctx.metrics.cache_hits.inc(),
        Some(Served::Stale) => ctx.metrics.cache_stale.inc(),
        None => ctx.metrics.cache_misses.inc(),
    }
    served
}

/// A forwarded query that could not be answered by PowerDNS: its stale cache entry, if the
/// cache has one within `stale_ttl` (RFC 8767), written into `out`; the path it took.
pub(crate) fn stale_answer(
    cache: Option<&PacketCache>,
    snap: &Snapshot,
    metrics: &WorkerMetrics,
    (q, client): (&Query, IpAddr),
    pkt: &[u8],
    max_udp: Option<usize>,
    out: &mut Vec<u8>,
) -> Option<AnswerPath> {
    let cache = cache?;
    let req = cache.request(q, client, &snap.config.upstream)?;
    let served = cache.lookup(&req, q, pkt, Instant::now(), true, max_udp, out)?;
    match served {
        Served::Stale => metrics.cache_stale.inc(),
        Served::Fresh => metrics.cache_hits.inc(),
    }
    Some(served_path(served))
}

/// A forwarded query, as its accounting needs it.
pub(crate) struct Forwarded<'q> {
    pub(crate) transport: Transport,
    pub client: SocketAddr,
    pub query: &'q Query,
    /// The client's packet, verbatim (for dnstap).
    pub packet: &'q [u8],
    pub(crate) received: Instant,
    pub(crate) report: Report,
    /// What made the answer.
    pub(crate) path: AnswerPath,
}

/// Accounting for a forwarded query's answer (or its SERVFAIL) on its way to the client.
pub(crate) fn forwarded_done(
    snap: &Snapshot,
    metrics: &WorkerMetrics,
    shared: &Shared,
    f: &Forwarded<'_>,
    response: &[u8],
    upstream: Option<SocketAddr>,
) {
    let Forwarded {
        transport: t,
        client,
        query: q,
        packet,
        received,
        report: Report {
            sampled,
            tapped,
            zone,
        },
        path,
    } = *f;
    if tapped && let Some(tap) = &shared.dnstap {
        tap.exchange(t, client, received, packet, Some(response));
    }
    let client = client.ip();
    let rc = response.get(3).map_or(rcode::SERVFAIL, |b| b & 0x0f);
    metrics.response(t, rc);
    let site = Site {
        proto: t,
        v6: client.is_ipv6(),
        zone,
    };
    metrics.dns.response(site, rc, path, response.len());
    let flood = &snap.config.flood;
    if flood.counting() {
        let key = source_key(client.to_canonical(), flood);
        metrics.flood.response(key, rc, response.len());
        if rc == rcode::NXDOMAIN && path == AnswerPath::Forwarded {
            metrics.flood.zone_nxdomain(zone);
        }
    }
    let latency = received.elapsed().as_nanos() as u64;
    metrics.latency[Path::Forwarded as usize].observe_ns(latency);
    if sampled {
        let answers = response
            .get(6..8)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        shared.log.query(entry(
            snap,
            t,
            client,
            q,
            Decision::Forwarded,
            rc,
            answers,
            latency,
            upstream,
        ));
    }
}

/// A forwarded UDP query that gets SERVFAIL instead (no server left, pending table full, send
/// refused, out of attempts): counted, logged, and the answer written into `out`. False if
/// the packet cannot carry an error answer (then nothing is sent).
pub(crate) fn servfail_forwarded(
    snap: &Snapshot,
    metrics: &WorkerMetrics,
    shared: &Shared,
    p: &crate::forward::upstream::Pending,
    e: &crate::forward::upstream::ForwardError,
    out: &mut Vec<u8>,
) -> bool {
    let (log, cache) = (&shared.log, shared.cache.as_ref());
    let mut f = Forwarded {
        transport: Transport::Udp,
        client: p.client.addr,
        query: &p.query,
        packet: &p.packet,
        received: p.received_at,
        report: p.report,
        path: AnswerPath::Error,
    };
    let max = p
        .query
        .max_udp_response(snap.config.restart.max_udp_payload);
    let asked = (&p.query, p.client.addr.ip());
    if let Some(path) = stale_answer(cache, snap, metrics, asked, &p.packet, Some(max), out) {
        let _ = cookie_for_answer(snap, asked, &p.packet, Some(max), out);
        f.path = path;
        forwarded_done(snap, metrics, shared, &f, out, None);
        return true;
    }
    metrics.dropped(match e {
        crate::forward::upstream::ForwardError::PendingFull => DropReason::PendingFull,
        _ => DropReason::UpstreamUnavailable,
    });
    log.event(Event::ServFail {
        client: p.client.addr.ip(),
        qname: p.query.qname,
        qtype: p.query.qtype,
        reason: e.kind(),
    });
    if !dns::write_error(&p.packet, rcode::SERVFAIL, out) {
        return false;
    }
    let _ = cookie_for_answer(snap, asked, &p.packet, Some(max), out);
    forwarded_done(snap, metrics, shared, &f, out, None);
    true
}

struct Sink<'s, 'b> {
    b: &'s mut ResponseBuilder<'b>,
    ttl: u32,
    n: u16,
    /// Where RDATAs are kept for signing (a DO=1 answer in a zone signed here).
    keep: Option<&'s mut SignState>,
    /// Owner of the records pushed (wire format); `None`: the question name.
    owner: Option<&'s [u8]>,
}

impl AnswerSink for Sink<'_, '_> {
    fn push(&mut self, rtype: u16, rdata: &[u8]) {
        match self.owner {
            Some(owner) => self.b.answer_owned(owner, rtype, self.ttl, rdata),
            None => self.b.answer(rtype, self.ttl, rdata),
        }
        if let Some(k) = self.keep.as_deref_mut() {
            k.keep(rtype, rdata);
        }
        self.n += 1;
    }
}

const TYPE_CNAME: u16 = 5;
const TYPE_ANY: u16 = 255;

/// CNAME targets followed in one answer at most (PowerDNS stops a chain at 10 as well).
const MAX_CHASE: usize = 10;

/// A CNAME's target name, lower-case wire format, kept without allocating.
#[derive(Clone, Copy)]
struct CnameTarget {
    name: [u8; 255],
    len: u8,
}

impl CnameTarget {
    const EMPTY: CnameTarget = CnameTarget {
        name: [0; 255],
        len: 0,
    };

    /// The RDATA of a CNAME built here is one uncompressed name.
    fn of(rdata: &[u8]) -> CnameTarget {
        let mut t = CnameTarget::EMPTY;
        if let Ok(len) = u8::try_from(rdata.len()) {
            t.name[..rdata.len()].copy_from_slice(rdata);
            t.name[..rdata.len()].make_ascii_lowercase();
            t.len = len;
        }
        t
    }

    fn name(&self) -> &[u8] {
        &self.name[..usize::from(self.len)]
    }
}

/// Where a chase through in-process records ended.
enum Chased<'t> {
    /// The answer is complete: `pushed` records of the target(s) were appended (possibly
    /// none: a target in no zone dnsteer knows is answered as the bare CNAME, as PowerDNS
    /// answers out-of-zone targets), with `soa` for a target without this type (NODATA).
    End {
        pushed: u16,
        scope: u8,
        soa: Option<&'t ZoneInfo>,
    },
    /// A target in a zone PowerDNS serves but not answered here: PowerDNS answers the whole
    /// chain (it knows whether the target exists).
    Forward,
    Failed(crate::steer::records::EvalError),
}

/// Follows a LUA CNAME answer to a query of another type, like PowerDNS does inside its own
/// zones (spec §1 "CNAME chasing"): in-process targets are evaluated and appended here.
fn chase<'t>(
    ctx: &Ctx<'t>,
    client: &Client,
    qtype: u16,
    mut target: CnameTarget,
    b: &mut ResponseBuilder<'_>,
) -> Chased<'t> {
    let (mut pushed, mut scope) = (0u16, 0u8);
    for _ in 0..MAX_CHASE {
        let name = target.name();
        let set = match ctx.snap.records.lookup(name, qtype) {
            Lookup::Hit(set, _) => set,
            Lookup::NoData(z) => {
                let soa = Some(z);
                return Chased::End { pushed, scope, soa };
            }
            Lookup::Miss if ctx.snap.dns_zones.slot_of(name) == ZoneSlot::OTHER => {
                return Chased::End {
                    pushed,
                    scope,
                    soa: None,
                };
            }
            Lookup::Miss => return Chased::Forward,
        };
        let mut sink = Sink {
            b: &mut *b,
            ttl: set.ttl,
            n: 0,
            keep: None,
            owner: Some(name),
        };
        let ev = match set.evaluate(client, &mut sink) {
            Ok(ev) => ev,
            Err(e) => return Chased::Failed(e),
        };
        let n = sink.n;
        pushed += n;
        scope = scope.max(ev.scope);
        let kind = match ev.outcome {
            Outcome::Primary => AnswerKind::Primary,
            Outcome::Backup => AnswerKind::Backup,
            Outcome::Empty => AnswerKind::Empty,
        };
        set.stats.count(ctx.worker, kind);
        if set.rtype != TYPE_CNAME || n != 1 {
            return Chased::End {
                pushed,
                scope,
                soa: None,
            };
        }
        target = CnameTarget::of(b.last_answer_rdata());
    }
    Chased::Forward
}

fn note_truncation(ctx: &Ctx<'_>, out: &[u8], _len: usize) {
    if out.get(2).is_some_and(|b| b & 0x02 != 0) {
        ctx.metrics.truncated.inc();
    }
}

/// NOTIFY (RFC 1996) for a `[zones].transfer` zone from an allowed source: acknowledged and
/// passed to the transfer loop. Anything else: REFUSED.
fn notify(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src: IpAddr,
    t: Transport,
    out: &mut Vec<u8>,
) -> (Action, AnswerPath) {
    let cfg = &ctx.snap.config;
    let zone = dns::message::parse_notify(pkt).map(|(_, z)| z.to_ascii_lowercase());
    match zone {
        Some(zone) if cfg.zones.transfer.contains(&zone) && cfg.notify_allowed(src) => {
            ctx.metrics.query(t, Decision::Notify);
            // The zone changed in PowerDNS: its cached answers go now, not after the transfer.
            if let Some(cache) = ctx.cache {
                cache.invalidate_zone(&zone);
            }
            // A full queue means refreshes are already pending: dropping this one loses nothing.
            let _ = ctx.notify.try_send(zone);
            if dns::message::notify_ack(pkt, out) {
                ctx.metrics.response(t, rcode::NOERROR);
                (Action::Reply, AnswerPath::Notify)
            } else {
                (Action::Drop, AnswerPath::Notify)
            }
        }
        _ => {
            ctx.metrics.query(t, Decision::Error);
            let action = reply_error_counted(ctx, pkt, rcode::REFUSED, t, out);
            (action, AnswerPath::Error)
        }
    }
}

/// The verdict on the query's COOKIE option and its answer's cookie (None: no option, or
/// `[cookies]` off), counted by outcome.
#[inline]
fn check_cookie(ctx: &Ctx<'_>, q: &Query, pkt: &[u8], src_ip: IpAddr) -> Option<Checked> {
    let secrets = ctx.snap.cookies.as_ref()?;
    let Some(at) = q.edns.and_then(|e| e.cookie) else {
        ctx.metrics.cookies[CookieSeen::None as usize].inc();
        return None;
    };
    let checked = secrets.check(pkt, at, src_ip, cookie_clock());
    ctx.metrics.cookies[cookie_seen(checked.outcome) as usize].inc();
    Some(checked)
}

fn cookie_seen(o: cookie::Outcome) -> CookieSeen {
    match o {
        cookie::Outcome::ClientOnly => CookieSeen::ClientOnly,
        cookie::Outcome::Valid => CookieSeen::Valid,
        cookie::Outcome::Invalid => CookieSeen::Invalid,
    }
}

/// Server cookie time: Unix seconds modulo 2^32 (RFC 9018 §4.3), from the wall clock that
/// every replica shares (a monotonic clock is per host).
fn cookie_clock() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// What a rate-limited UDP query's cookie changes.
enum LimitedCookie {
    /// No COOKIE option (or an unparsable query): the limit's own action applies.
    Absent,
    /// A valid server cookie proves the source address: not limited.
    Proven,
    /// BADCOOKIE is in `out`.
    BadCookie,
}

/// A rate-limited UDP query's cookie (RFC 7873 §5.2.3, §5.4): a valid server cookie proves
/// the source is real, so the limit does not apply; a client cookie without a valid server
/// cookie gets BADCOOKIE with a fresh server cookie instead of the limit's action. That answer
/// is header, question and OPT only (no amplification); a real client retries with the cookie
/// and is exempt, a spoofed source never sees it. Only run when the limiter already said
/// "limited", so the common path parses once.
fn limited_cookie(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src_ip: IpAddr,
    out: &mut Vec<u8>,
) -> LimitedCookie {
    let Some(secrets) = ctx.snap.cookies.as_ref() else {
        return LimitedCookie::Absent;
    };
    let Ok(q) = dns::parse_query(pkt) else {
        return LimitedCookie::Absent;
    };
    let (Some(at), Some(edns)) = (q.edns.and_then(|e| e.cookie), q.edns) else {
        return LimitedCookie::Absent;
    };
    let checked = secrets.check(pkt, at, src_ip, cookie_clock());
    if checked.outcome == cookie::Outcome::Valid {
        // Counted with the query's answer.
        return LimitedCookie::Proven;
    }
    ctx.metrics.cookies[cookie_seen(checked.outcome) as usize].inc();
    ctx.metrics.badcookie.inc();
    ctx.metrics.query(Transport::Udp, Decision::Limited);
    let badcookie = rcode::BADCOOKIE;
    let b = ResponseBuilder::new(out, pkt, &q, (badcookie & 0xF) as u8, false);
    let reply = EdnsReply {
        udp_size: ctx.max_udp_payload,
        dnssec_ok: edns.dnssec_ok,
        ecs: None,
        ext_rcode: (badcookie >> 4) as u8,
        cookie: Some(checked.reply),
    };
    b.finish(Some(reply), q.max_udp_response(ctx.max_udp_payload));
    LimitedCookie::BadCookie
}

/// Our COOKIE option into the answer to a forwarded query (PowerDNS's, stale, or SERVFAIL)
/// when the query carried one: RFC 7873 §5.2 wants it in every answer. PowerDNS's own COOKIE,
/// if any, is replaced. A TSIG-signed answer is left as it is (its MAC covers the OPT).
/// True when the query's server cookie is valid (the source is proven: RRL exempts it).
pub(crate) fn cookie_for_answer(
    snap: &Snapshot,
    (q, client): (&Query, IpAddr),
    pkt: &[u8],
    max_udp: Option<usize>,
    out: &mut Vec<u8>,
) -> bool {
    let (Some(secrets), Some(edns)) = (snap.cookies.as_ref(), q.edns) else {
        return false;
    };
    let Some(at) = edns.cookie.filter(|_| !q.signed) else {
        return false;
    };
    let checked = secrets.check(pkt, at, client.to_canonical(), cookie_clock());
    let ours = (snap.config.restart.max_udp_payload, edns.dnssec_ok);
    let _ = dns::rewrite::put_cookie_in_answer(out, &checked.reply, ours, max_udp);
    checked.outcome == cookie::Outcome::Valid
}

fn limiter_prefix(snap: &Snapshot, ip: IpAddr) -> u8 {
    let r = &snap.config.ratelimit;
    if ip.is_ipv4() {
        r.ipv4_prefix
    } else {
        r.ipv6_prefix
    }
}

fn malformed(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    src: IpAddr,
    e: dns::ParseError,
    t: Transport,
    out: &mut Vec<u8>,
) -> Action {
    use dns::ParseError::*;
    match e {
        TooShort | IsResponse => {
            ctx.metrics.query(t, Decision::Dropped);
            ctx.metrics.dropped(if e == TooShort {
                DropReason::TooShort
            } else {
                DropReason::IsResponse
            });
            Action::Drop
        }
        NotImplemented(_) => {
            ctx.metrics.malformed(Malformed::NotImp);
            ctx.metrics.query(t, Decision::Error);
            reply_error_counted(ctx, pkt, rcode::NOTIMP, t, out)
        }
        FormErr(reason) => {
            ctx.metrics.malformed(Malformed::FormErr);
            if ctx.snap.cookies.is_some() && cookie::is_malformed(reason) {
                ctx.metrics.cookies[CookieSeen::Malformed as usize].inc();
            }
            ctx.metrics.query(t, Decision::Error);
            ctx.log.event(Event::FormErr {
                client: src,
                reason,
            });
            reply_error_counted(ctx, pkt, rcode::FORMERR, t, out)
        }
        BadVersion(_) => {
            ctx.metrics.malformed(Malformed::BadVers);
            ctx.metrics.query(t, Decision::Error);
            if dns::write_badvers(pkt, ctx.max_udp_payload, out) {
                ctx.metrics.response(t, rcode::NOERROR);
                Action::Reply
            } else {
                Action::Drop
            }
        }
    }
}

fn reply_error(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    rc: u8,
    tc: bool,
    t: Transport,
    out: &mut Vec<u8>,
) -> Action {
    if !dns::write_error(pkt, rc, out) {
        // A limited packet is not parsed before this: it may be a whole header with QR set.
        ctx.metrics.dropped(if pkt.len() >= dns::HEADER_LEN {
            DropReason::IsResponse
        } else {
            DropReason::TooShort
        });
        return Action::Drop;
    }
    if tc {
        out[2] |= 0x02;
    }
    ctx.metrics.response(t, rc);
    Action::Reply
}

fn reply_error_counted(
    ctx: &mut Ctx<'_>,
    pkt: &[u8],
    rc: u8,
    t: Transport,
    out: &mut Vec<u8>,
) -> Action {
    reply_error(ctx, pkt, rc, false, t, out)
}

#[allow(clippy::too_many_arguments)]
fn entry(
    snap: &Snapshot,
    t: Transport,
    client: IpAddr,
    q: &Query,
    decision: Decision,
    rcode: u8,
    answers: u16,
    latency_ns: u64,
    upstream: Option<SocketAddr>,
) -> QueryEntry {
    let u = &snap.config.upstream;
    let prefix = if client.is_ipv4() {
        u.ecs_ipv4_prefix
    } else {
        u.ecs_ipv6_prefix
    };
    let masked = ipnet::IpNet::new(client, prefix).map_or(client, |n| n.network());
    QueryEntry {
        transport: t,
        client: masked,
        client_prefix: prefix,
        ecs: q
            .edns
            .and_then(|e| e.ecs)
            .map(|e| (e.addr, e.source_prefix)),
        qname: q.qname,
        qtype: q.qtype,
        decision,
        rcode,
        answers,
        latency_ns,
        upstream,
    }
}

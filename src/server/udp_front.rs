//! The UDP front end: one OS thread per worker and listen socket, a single-threaded event loop
//! over its client socket and its own connected socket per PowerDNS server. One turn:
//!
//! 1. `poll(2)` until a socket is readable or the next forwarded query runs out of time;
//! 2. answers from PowerDNS, a batch per `recvmmsg`, matched to their pending query and
//!    restored for the client (`finish_upstream_answer`);
//! 3. client queries, a batch per `recvmmsg`, through the pipeline: answers made here go to
//!    the client batch, forwards to a batch per server;
//! 4. attempts past their deadline: retried on the next server, or SERVFAIL;
//! 5. one `sendmmsg` per server with queries, one `sendmmsg` to the clients.
//!
//! No runtime, channel or cross-thread wake-up on the UDP path: epoll, the async runtime and
//! a handoff between threads cost as much per batch as the answers themselves
//! (BENCHMARKS.md §0). TCP stays on the worker's runtime (`listener`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::dns::{self, Added, rcode};
use crate::flood::BlockTable;
use crate::forward::udp::{MAX_PENDING_PER_SERVER, UdpUpstreams};
use crate::forward::upstream::{ForwardError, Pending, UdpClient, UpstreamSet};
use crate::server::pipeline::{self, Action, Ctx, Latency};
use crate::server::signing::SignState;
use crate::server::udp_batch::{BATCH, ConnectedSendBatch, PollSet, RecvBatch, SLOT, SendBatch};
use crate::state::{Shared, Snapshot};
use crate::telemetry::dns_metrics::AnswerPath;
use crate::telemetry::metrics::{Decision, DropReason, Malformed, Path, Transport, WorkerMetrics};
use crate::telemetry::querylog::{Event, Sampler};

/// Longest wait in `poll`: how soon the thread sees the stop flag (and a reload) when idle.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Batches read from one server's socket per turn, so one busy server cannot starve the rest.
const UPSTREAM_BATCHES_PER_TURN: usize = 4;

/// What one front-end thread owns.
pub struct UdpFront {
    worker: usize,
    listener: usize,
    shared: Arc<Shared>,
    sock: std::net::UdpSocket,
    stop: watch::Receiver<bool>,
    ups: UdpUpstreams,
}

impl UdpFront {
    /// The thread's state for client socket `sock`, with a socket per server of the current
    /// pool (opened here, so an error shows at start-up).
    pub fn new(
        worker: usize,
        listener: usize,
        shared: Arc<Shared>,
        sock: std::net::UdpSocket,
        stop: watch::Receiver<bool>,
    ) -> io::Result<UdpFront> {
        sock.set_nonblocking(true)?;
        let ups = UdpUpstreams::build(
            shared.snapshot.load().upstream.clone(),
            MAX_PENDING_PER_SERVER,
            shared.restart.socket_buffer,
        )?;
        Ok(UdpFront {
            worker,
            listener,
            shared,
            sock,
            stop,
            ups,
        })
    }

    /// Caps the queries in flight per server on this thread (default
    /// [`MAX_PENDING_PER_SERVER`]; tests make it small).
    pub fn with_max_pending(mut self, max: usize) -> UdpFront {
        self.ups.set_max_pending(max);
        self
    }

    /// Serves the socket until `stop` turns true (or its sender is gone), then answers what
    /// is still in flight upstream, for at most `timeout × attempts`.
    pub fn run(self) {
        let UdpFront {
            worker,
            listener,
            shared,
            sock,
            mut stop,
            ups,
        } = self;
        let metrics = shared.metrics.register_worker();
        let mut fw = Forwarder::new(&shared, &metrics, &sock, ups);
        let mut snap_cache = arc_swap::Cache::new(shared.snapshot.clone());
        let mut clients = Clients::new(worker, &shared, &metrics);
        let mut answers = Box::new(RecvBatch::with_slot(answer_slot(
            shared.restart.max_udp_payload,
        )));
        let mut poll = PollSet::default();
        // Set once stopping: until when queries in flight are waited for.
        let mut stopping: Option<Instant> = None;
        while !finished(&mut stop, &mut stopping, &fw.ups) {
            let reading = stopping.is_none();
            if !fw.wait_ready(&mut poll, reading, worker) {
                continue;
            }
            // One clock read and one snapshot load per turn.
            let now = Instant::now();
            // Borrowed from the per-thread cache: no shared refcount touched per turn.
            let snap = snap_cache.load();
            fw.ready_upstreams(snap, &poll, usize::from(reading), &mut answers, now);
            let answered = if reading && poll.ready(0) {
                clients.serve(&mut fw, snap, now)
            } else {
                0
            };
            fw.end_turn(snap, now, answered);
        }
        tracing::debug!(worker, listener, "UDP front end stopped");
    }
}

/// Whether the loop is done. Once `stop` is seen, the queries in flight are waited for, up
/// to `settle_bound`, with no new ones read.
#[inline]
fn finished(
    stop: &mut watch::Receiver<bool>,
    stopping: &mut Option<Instant>,
    ups: &UdpUpstreams,
) -> bool {
    if stopping.is_none() && stopped(stop) {
        *stopping = Some(Instant::now() + settle_bound(ups.set()));
    }
    stopping.is_some_and(|until| ups.in_flight() == 0 || Instant::now() >= until)
}

/// The size of an answer buffer: up to what a client may be sent, with room for the ECS
/// option we added.
fn answer_slot(max_udp_payload: u16) -> usize {
    (usize::from(max_udp_payload) + 512).max(SLOT)
}

/// How long forwarded queries may still take: every attempt, plus a margin.
fn settle_bound(set: &UpstreamSet) -> Duration {
    set.config.timeout * set.config.attempts as u32 + STOP_POLL
}

/// The thread's query half: what the pipeline reads besides the snapshot, kept across turns.
struct Clients<'a> {
    worker: usize,
    shared: &'a Shared,
    metrics: &'a WorkerMetrics,
    sampler: Sampler,
    sign: SignState,
    queries: Box<RecvBatch>,
    /// This thread's view of the flood block table.
    blocks: arc_swap::Cache<Arc<ArcSwap<BlockTable>>, Arc<BlockTable>>,
}

impl<'a> Clients<'a> {
    fn new(worker: usize, shared: &'a Shared, metrics: &'a WorkerMetrics) -> Clients<'a> {
        Clients {
            worker,
            shared,
            metrics,
            sampler: Sampler::default(),
            sign: SignState::for_thread(shared),
            queries: Box::new(RecvBatch::default()),
            blocks: arc_swap::Cache::new(shared.blocks.clone()),
        }
    }

    /// One batch of client queries through the pipeline; returns how many were answered
    /// in-process (their latency is observed once the batch is sent).
    #[inline]
    fn serve(&mut self, fw: &mut Forwarder, snap: &Snapshot, now: Instant) -> u64 {
        let mut ctx = Ctx {
            snap,
            limiter: &self.shared.limiter,
            metrics: self.metrics,
            log: &self.shared.log,
            sampler: &mut self.sampler,
            max_udp_payload: self.shared.restart.max_udp_payload,
            notify: &self.shared.notify_tx,
            worker: self.worker,
            latency: Latency::Batch { answered: 0 },
            sign: &mut self.sign,
            cache: self.shared.cache.as_ref(),
            tap: self.shared.dnstap.as_ref(),
            blocks: Some(&**self.blocks.load()),
        };
        fw.client_queries(&mut ctx, &mut self.queries, now);
        match ctx.latency {
            Latency::Batch { answered } => answered,
            Latency::PerQuery => 0,
        }
    }
}

/// The thread's forwarding half: the pool's sockets and pending tables, the batches leaving
/// this turn.
struct Forwarder {
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    client_fd: RawFd,
    /// The client socket's address (the destination in a PROXY header).
    local: std::net::SocketAddr,
    ups: UdpUpstreams,
    /// Queries for each server this turn, indexed like `ups.servers()`.
    sends: Vec<ConnectedSendBatch>,
    /// Answers for the clients this turn.
    tx: Box<SendBatch>,
    expired: Vec<(usize, Pending)>,
    unsent: Vec<(u16, io::ErrorKind)>,
    max_udp_payload: u16,
    /// A pool whose sockets could not be opened: not tried again until the next reload.
    rejected: Option<Arc<UpstreamSet>>,
}

impl Forwarder {
    fn new(
        shared: &Arc<Shared>,
        metrics: &Arc<WorkerMetrics>,
        sock: &std::net::UdpSocket,
        ups: UdpUpstreams,
    ) -> Forwarder {
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        Forwarder {
            sends: ups.servers().iter().map(|_| Default::default()).collect(),
            ups,
            client_fd: sock.as_raw_fd(),
            local,
            tx: Box::default(),
            expired: Vec::new(),
            unsent: Vec::new(),
            max_udp_payload: shared.restart.max_udp_payload,
            metrics: metrics.clone(),
            shared: shared.clone(),
            rejected: None,
        }
    }

    /// Waits until a socket is readable or the next forwarded query runs out of time, at
    /// most [`STOP_POLL`]. Poll slot 0 is the client socket while `reading`, then one per
    /// server. False when the wait failed: the turn is skipped.
    #[inline]
    fn wait_ready(&mut self, poll: &mut PollSet, reading: bool, worker: usize) -> bool {
        poll.clear();
        if reading {
            poll.add(self.client_fd);
        }
        for s in self.ups.servers() {
            poll.add(s.fd());
        }
        let wait = self.ups.next_deadline().map_or(STOP_POLL, |d| {
            d.saturating_duration_since(Instant::now()).min(STOP_POLL)
        });
        let Err(e) = poll.wait(wait) else {
            return true;
        };
        if e.kind() != io::ErrorKind::Interrupted {
            tracing::warn!(worker, error = %e, "poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Reads the answers of every server whose socket `poll` found readable (server `idx` in
    /// slot `first + idx`).
    #[inline]
    fn ready_upstreams(
        &mut self,
        snap: &Snapshot,
        poll: &PollSet,
        first: usize,
        rx: &mut RecvBatch,
        now: Instant,
    ) {
        for idx in 0..self.ups.servers().len() {
            if poll.ready(first + idx) {
                self.upstream_answers(snap, idx, rx, now);
            }
        }
    }

    /// Ends a turn: attempts past their deadline retried or failed, every batch sent, the
    /// in-process answers' latency observed (they left with the client batch), and a pool a
    /// reload published taken up while the server batches are empty.
    #[inline]
    fn end_turn(&mut self, snap: &Snapshot, now: Instant, answered: u64) {
        self.expire(snap, now);
        self.flush_upstreams(snap);
        flush_counted(&mut self.tx, self.client_fd, &self.metrics);
        if answered > 0 {
            let ns = now.elapsed().as_nanos() as u64;
            self.metrics.latency[Path::InProcess as usize].observe_many_ns(ns, answered);
        }
        self.follow_reload(&snap.upstream);
    }

    /// One batch of client queries through the pipeline.
    fn client_queries(&mut self, ctx: &mut Ctx<'_>, rx: &mut RecvBatch, received: Instant) {
        let n = match rx.recv(self.client_fd) {
            Ok(n) => n,
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                    // Nothing else is expected on an unconnected socket; do not spin.
                    _ => {
                        tracing::warn!(worker = ctx.worker, error = %e, "UDP receive failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                return;
            }
        };
        for i in 0..n {
            let Some((pkt, src)) = rx.get(i) else {
                self.metrics.dropped(DropReason::TooShort);
                continue;
            };
            let reply = reply_slot(&mut self.tx, self.client_fd, &self.metrics);
            match pipeline::handle(ctx, pkt, src, Transport::Udp, received, reply) {
                Action::Reply => self.tx.commit(src),
                Action::Drop => {}
                Action::Forward { query, report } => {
                    self.metrics.query(Transport::Udp, Decision::Forwarded);
                    let p = Pending {
                        client: UdpClient {
                            addr: src,
                            local: self.local,
                        },
                        orig_id: query.id,
                        added: Added::Nothing,
                        query,
                        packet: pkt.to_vec(),
                        attempt: 0,
                        tried: 0,
                        sent_at: received,
                        received_at: received,
                        report,
                    };
                    self.forward(ctx.snap, p);
                }
            }
        }
    }

    /// Queues `p` (new, or a retry) for the next server, or answers it SERVFAIL.
    fn forward(&mut self, snap: &Snapshot, p: Pending) {
        let Some(idx) = self.ups.pick(p.tried) else {
            return self.fail(snap, p, ForwardError::NoServer);
        };
        if self.sends[idx].is_full() {
            self.flush_upstream(snap, idx);
        }
        let out = self.sends[idx].next_buf().expect("room after a flush");
        match self.ups.start_attempt(idx, p, out) {
            Ok(id) => self.sends[idx].commit(id),
            Err(err) => {
                let (e, p) = *err;
                self.fail(snap, p, e);
            }
        }
    }

    /// A forwarded query that gets no further: its stale cache entry if there is one, else
    /// SERVFAIL to its client.
    fn fail(&mut self, snap: &Snapshot, p: Pending, e: ForwardError) {
        let out = reply_slot(&mut self.tx, self.client_fd, &self.metrics);
        if pipeline::servfail_forwarded(snap, &self.metrics, &self.shared, &p, &e, out) {
            self.tx.commit(p.client.addr);
        }
    }

    fn retry_or_fail(&mut self, snap: &Snapshot, p: Pending) {
        if p.attempt >= self.ups.set().config.attempts {
            self.fail(snap, p, ForwardError::NoServer);
        } else {
            self.forward(snap, p);
        }
    }

    /// Sends server `idx`'s queued queries; those its socket refused are answered SERVFAIL.
    fn flush_upstream(&mut self, snap: &Snapshot, idx: usize) {
        let fd = self.ups.servers()[idx].fd();
        let unsent = &mut self.unsent;
        self.sends[idx].flush(fd, |id, kind| unsent.push((id, kind)));
        let mut unsent = std::mem::take(&mut self.unsent);
        for (id, kind) in unsent.drain(..) {
            if let Some(p) = self.ups.send_failed(idx, id) {
                self.fail(snap, p, ForwardError::Send(kind));
            }
        }
        self.unsent = unsent;
    }

    fn flush_upstreams(&mut self, snap: &Snapshot) {
        for idx in 0..self.sends.len() {
            if !self.sends[idx].is_empty() {
                self.flush_upstream(snap, idx);
            }
        }
    }

    /// Reads what server `idx` sent, a batch per system call, up to a few batches.
    fn upstream_answers(&mut self, snap: &Snapshot, idx: usize, rx: &mut RecvBatch, now: Instant) {
        let fd = self.ups.servers()[idx].fd();
        for _ in 0..UPSTREAM_BATCHES_PER_TURN {
            // An error is WouldBlock (drained) or ECONNREFUSED from an ICMP port unreachable
            // (the read clears it; the queries time out and are retried): either way, done.
            let Ok(n) = rx.recv(fd) else { return };
            for i in 0..n {
                let Some((resp, too_big)) = rx.get_prefix(i) else {
                    continue;
                };
                let Some(p) = self.ups.take_matching(idx, resp) else {
                    self.metrics
                        .malformed(Malformed::MismatchedUpstreamResponse);
                    continue;
                };
                self.finish_upstream_answer(snap, idx, p, (resp, too_big), now);
            }
            if n < BATCH {
                return;
            }
        }
    }

    /// The one place an answer from server `idx` becomes its client's: ID restored, the ECS
    /// we added taken out, truncated with TC=1 when too big for the client, offered to the
    /// packet cache, accounted and queued in the client batch. A malformed answer: the query
    /// is retried or fails.
    fn finish_upstream_answer(
        &mut self,
        snap: &Snapshot,
        idx: usize,
        p: Pending,
        (resp, too_big): (&[u8], bool),
        now: Instant,
    ) {
        let max = p.query.max_udp_response(self.max_udp_payload);
        let reply = reply_slot(&mut self.tx, self.client_fd, &self.metrics);
        // An answer larger than any client may get over UDP (PowerDNS allowed more than
        // `max_udp_payload`): only its start was read, so the client gets TC=1 and asks again
        // over TCP, as it would for a truncated answer.
        let restored = if too_big {
            // The client's own query parsed, so its error answer can be written.
            let ok = dns::write_error(&p.packet, rcode::NOERROR, reply);
            if ok {
                reply[2] |= 0x02;
            }
            ok
        } else {
            dns::restore_response(resp, p.orig_id, p.added, Some(max), reply).is_ok()
        };
        let server = &self.ups.servers()[idx];
        if !restored {
            self.metrics.malformed(Malformed::BadUpstreamResponse);
            server.counters.errors.inc();
            return self.retry_or_fail(snap, p);
        }
        if !too_big
            && let Some(cache) = &self.shared.cache
            && let Some(req) = cache.request(&p.query, p.client.addr.ip(), &snap.config.upstream)
        {
            cache.insert(&req, &p.query, resp, p.added, now, &self.metrics);
        }
        let asked = (&p.query, p.client.addr.ip());
        let proven = pipeline::cookie_for_answer(snap, asked, &p.packet, Some(max), reply);
        if reply.get(2).is_some_and(|b| b & 0x02 != 0) {
            self.metrics.truncated.inc();
        }
        let path = match pipeline::rrl_forwarded(
            snap,
            &self.metrics,
            &self.shared,
            &p,
            reply,
            now,
            proven,
        ) {
            None => AnswerPath::Forwarded,
            Some(Action::Reply) => AnswerPath::RateLimited,
            Some(_) => return,
        };
        pipeline::forwarded_done(
            snap,
            &self.metrics,
            &self.shared,
            &pipeline::Forwarded {
                transport: Transport::Udp,
                client: p.client.addr,
                query: &p.query,
                packet: &p.packet,
                received: p.received_at,
                report: p.report,
                path,
            },
            reply,
            Some(server.server.addr),
        );
        self.tx.commit(p.client.addr);
    }

    /// Attempts past their deadline: logged against the server that did not answer, then
    /// retried on the next one (sent this turn) or answered SERVFAIL.
    fn expire(&mut self, snap: &Snapshot, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.ups.expired(now, &mut expired);
        for (idx, p) in expired.drain(..) {
            if let Some(s) = self.ups.servers().get(idx) {
                self.shared.log.event(Event::UpstreamTimeout {
                    server: s.server.addr,
                    qname: p.query.qname,
                    qtype: p.query.qtype,
                });
            }
            self.retry_or_fail(snap, p);
        }
        self.expired = expired;
    }

    /// Takes up a pool a reload published (and closes removed servers once drained). Runs
    /// between turns, when every server batch is empty.
    fn follow_reload(&mut self, set: &Arc<UpstreamSet>) {
        if self.rejected.as_ref().is_some_and(|r| Arc::ptr_eq(r, set)) {
            return;
        }
        match self.ups.update(set) {
            Ok(false) => {}
            Ok(true) => {
                debug_assert!(
                    self.sends
                        .iter()
                        .all(super::udp_batch::ConnectedSendBatch::is_empty)
                );
                self.sends
                    .resize_with(self.ups.servers().len(), Default::default);
            }
            Err(e) => {
                tracing::error!(target: "dnsteer::forward::upstream", error = %e, "cannot open upstream sockets; keeping the previous pool");
                self.rejected = Some(set.clone());
            }
        }
    }
}

/// The client batch's next buffer, sending the batch first when it is full.
fn reply_slot<'t>(tx: &'t mut SendBatch, fd: RawFd, metrics: &WorkerMetrics) -> &'t mut Vec<u8> {
    if tx.len() >= BATCH {
        flush_counted(tx, fd, metrics);
    }
    tx.next_buf().expect("room after a flush")
}

/// Sends a batch's queued answers, if any; those the socket would not take are counted.
pub(crate) fn flush_counted(tx: &mut SendBatch, fd: RawFd, metrics: &WorkerMetrics) {
    if tx.is_empty() {
        return;
    }
    let queued = tx.len();
    let sent = tx.flush(fd).unwrap_or(0);
    for _ in sent..queued {
        metrics.dropped(DropReason::SendFailed);
    }
}

/// True once the stop flag is set or its sender is gone; one atomic load when nothing changed.
fn stopped(stop: &mut watch::Receiver<bool>) -> bool {
    match stop.has_changed() {
        Ok(false) => false,
        Ok(true) => *stop.borrow_and_update(),
        Err(_) => true,
    }
}

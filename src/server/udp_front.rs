//! The UDP front end: one dedicated OS thread per worker and listen socket that blocks in
//! `recvmmsg(MSG_WAITFORONE)`, runs the pipeline on the batch and answers it with one
//! `sendmmsg`. Two system calls per batch and no event loop on the packet path: epoll and the
//! async runtime cost as much per batch as the answers themselves (BENCHMARKS.md §0), so the
//! hot path stays out of them.
//!
//! Queries for PowerDNS are handed, a batch at a time, to the worker's async runtime, which
//! owns the upstream sockets and pending tables and sends the answers back from its own
//! handle on the same socket (with `MSG_DONTWAIT`: the socket itself blocks). The handoff queue is bounded: when the worker is
//! that far behind, the query gets SERVFAIL at once, counted as `pending_full`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::dns::{Added, Query};
use crate::forward::upstream::{ForwardError, Pending, UdpClient};
use crate::server::pipeline::{self, Action, Ctx, Latency};
use crate::server::signing::SignState;
use crate::server::udp_batch::{RecvBatch, SendBatch};
use crate::state::{Shared, Snapshot};
use crate::telemetry::metrics::{Decision, DropReason, Path, Transport, WorkerMetrics};
use crate::telemetry::querylog::Sampler;

/// How long a blocked receive waits before the thread looks at the stop flag again.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Batches of forwarded queries a worker may have queued from one socket (≤ 32 queries each).
pub(crate) const FORWARD_QUEUE: usize = 256;

/// A batch of queries for the worker's upstream pool.
pub type ForwardBatch = Vec<Pending>;

/// What one front-end thread owns.
pub struct UdpFront {
    pub worker: usize,
    pub listener: usize,
    pub shared: Arc<Shared>,
    pub sock: std::net::UdpSocket,
    pub forward: mpsc::Sender<ForwardBatch>,
    pub stop: watch::Receiver<bool>,
}

impl UdpFront {
    /// Serves the socket until `stop` turns true (or its sender is gone). The socket is put in
    /// blocking mode with a receive timeout; other handles on it send with `MSG_DONTWAIT`.
    pub fn run(mut self) {
        if let Err(e) = self
            .sock
            .set_nonblocking(false)
            .and_then(|()| self.sock.set_read_timeout(Some(STOP_POLL)))
        {
            tracing::error!(worker = self.worker, error = %e, "cannot make the UDP socket blocking; this listener stops");
            return;
        }
        let fd = self.sock.as_raw_fd();
        let local = self
            .sock
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let metrics = self.shared.metrics.register_worker();
        let mut snap_cache = arc_swap::Cache::new(self.shared.snapshot.clone());
        let mut sampler = Sampler::default();
        let mut sign = SignState::for_thread(&self.shared);
        let mut rx = Box::new(RecvBatch::default());
        let mut tx = Box::new(SendBatch::default());
        let mut forwards: ForwardBatch = Vec::new();
        // A closed queue means the worker is gone (start-up failed or it stopped).
        while !stopped(&mut self.stop) && !self.forward.is_closed() {
            let n = match rx.recv_wait(fd) {
                Ok(n) => n,
                Err(e) => {
                    self.recv_failed(&e);
                    continue;
                }
            };
            // One clock read and one snapshot load per batch.
            let received = Instant::now();
            // Borrowed from the per-thread cache: no shared refcount touched per batch.
            let snap = snap_cache.load();
            let mut ctx = Ctx {
                snap,
                limiter: &self.shared.limiter,
                metrics: &metrics,
                log: &self.shared.log,
                sampler: &mut sampler,
                max_udp_payload: self.shared.restart.max_udp_payload,
                notify: &self.shared.notify_tx,
                worker: self.worker,
                latency: Latency::Batch { answered: 0 },
                sign: &mut sign,
                cache: self.shared.cache.as_ref(),
            };
            for i in 0..n {
                let Some((pkt, src)) = rx.get(i) else {
                    metrics.dropped(DropReason::TooShort);
                    continue;
                };
                let Some(reply) = tx.next_buf() else { break };
                match pipeline::handle(&mut ctx, pkt, src, Transport::Udp, received, reply) {
                    Action::Reply => tx.commit(src),
                    Action::Drop => {}
                    Action::Forward { query, sampled } => {
                        metrics.query(Transport::Udp, Decision::Forwarded);
                        forwards.push(self.pending(pkt, src, local, query, sampled, received));
                    }
                }
            }
            if !forwards.is_empty() {
                self.hand_over(snap, &metrics, &mut forwards, &mut tx);
            }
            flush_counted(&mut tx, fd, &metrics);
            if let Latency::Batch { answered } = ctx.latency
                && answered > 0
            {
                let ns = received.elapsed().as_nanos() as u64;
                metrics.latency[Path::InProcess as usize].observe_many_ns(ns, answered);
            }
        }
        tracing::debug!(
            worker = self.worker,
            listener = self.listener,
            "UDP front end stopped"
        );
    }

    /// After a failed receive: a timeout (time to look at the stop flag) or a signal is
    /// expected; anything else is logged, and the thread pauses so it does not spin.
    fn recv_failed(&self, e: &std::io::Error) {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
            _ => {
                tracing::warn!(worker = self.worker, error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// A query from `src` to our socket `local`, to forward, as the worker's pending table
    /// keeps it.
    #[inline]
    fn pending(
        &self,
        pkt: &[u8],
        src: SocketAddr,
        local: SocketAddr,
        query: Query,
        sampled: bool,
        received: Instant,
    ) -> Pending {
        Pending {
            client: UdpClient {
                addr: src,
                listener: self.listener,
                local,
            },
            orig_id: query.id,
            added: Added::Nothing,
            query,
            packet: pkt.to_vec(),
            attempt: 0,
            tried: 0,
            sent_at: received,
            received_at: received,
            sampled,
        }
    }

    /// Queues this batch's forwards for the worker; if it cannot take them, each gets SERVFAIL
    /// in the outgoing batch.
    fn hand_over(
        &self,
        snap: &Snapshot,
        metrics: &WorkerMetrics,
        forwards: &mut ForwardBatch,
        tx: &mut SendBatch,
    ) {
        // The next batch's vector is sized like this one's: one allocation per batch that has
        // forwards, no regrowth while it fills.
        let next = Vec::with_capacity(forwards.len());
        let batch = std::mem::replace(forwards, next);
        let rejected = match self.forward.try_send(batch) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => b,
        };
        for p in rejected {
            let Some(out) = tx.next_buf() else { break };
            let e = ForwardError::PendingFull;
            let cache = self.shared.cache.as_ref();
            if pipeline::servfail_forwarded(snap, metrics, &self.shared.log, cache, &p, &e, out) {
                tx.commit(p.client.addr);
            }
        }
    }
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

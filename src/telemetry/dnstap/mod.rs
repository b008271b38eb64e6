//! dnstap output: sampled query/answer pairs sent to a Frame Streams collector on a Unix socket.
//!
//! The packet path decides first (the worker's sampler), then copies the two packets into one
//! buffer and `try_send`s it to a bounded queue; a full queue, a byte budget spent, or no
//! collector connected drops the pair and counts it. One writer thread owns the socket
//! (`writer`), turns each pair into an AUTH_QUERY and an AUTH_RESPONSE frame (`wire`) and
//! reconnects with backoff when the collector is absent or goes away.

mod wire;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto::{MetricFamily, MetricType};

use crate::config::DnstapOutput;
use crate::telemetry::metrics::{Transport, family, scalar};

/// Packet bytes queued at most, whatever `queue` allows: 4096 pairs of 64 KiB TCP answers
/// would otherwise be 256 MiB.
const MAX_QUEUED_BYTES: usize = 32 << 20;

/// One sampled exchange on its way to the writer.
struct Tapped {
    tcp: bool,
    client: SocketAddr,
    query_time: Duration,
    /// None: the query got no answer (dropped).
    response_time: Option<Duration>,
    /// The query, then the answer.
    packets: Vec<u8>,
    query_len: usize,
}

/// What the packet path and the writer both touch.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    dropped_full: AtomicU64,
    dropped_disconnected: AtomicU64,
    connect_failures: AtomicU64,
    connected: AtomicBool,
    queued_bytes: AtomicUsize,
    stop: AtomicBool,
}

/// The producer side, shared by all workers.
pub struct Dnstap {
    tx: SyncSender<Tapped>,
    counters: Arc<Counters>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Dnstap {
    /// Starts the writer thread, which connects to `cfg.socket` (and keeps trying).
    pub(crate) fn start(cfg: &DnstapOutput) -> std::io::Result<Dnstap> {
        let (tx, rx) = sync_channel(cfg.queue);
        let counters = Arc::new(Counters::default());
        let w = writer::Writer::new(cfg, host_identity, counters.clone());
        let handle = std::thread::Builder::new()
            .name("dnsteer-dnstap".into())
            .spawn(move || w.run(&rx))?;
        Ok(Dnstap {
            tx,
            counters,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues a sampled exchange: `query` received at `received` from `client`, and the
    /// `response` sent for it now (None: none was sent). Never blocks.
    pub(crate) fn exchange(
        &self,
        t: Transport,
        client: SocketAddr,
        received: tokio::time::Instant,
        query: &[u8],
        response: Option<&[u8]>,
    ) {
        let c = &self.counters;
        if !c.connected.load(Ordering::Relaxed) {
            c.dropped_disconnected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = query.len() + response.map_or(0, <[u8]>::len);
        if c.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            c.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            c.dropped_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut packets = Vec::with_capacity(len);
        packets.extend_from_slice(query);
        packets.extend_from_slice(response.unwrap_or_default());
        let entry = Tapped {
            tcp: t == Transport::Tcp,
            client,
            query_time: now.saturating_sub(received.elapsed()),
            response_time: response.map(|_| now),
            packets,
            query_len: query.len(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(entry)
        {
            c.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            c.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops the writer: what is queued is written, then STOP, and FINISH is waited for
    /// (bounded). Call once the workers are gone.
    pub(crate) fn shutdown(&self) {
        self.counters.stop.store(true, Ordering::Relaxed);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!(target: "dnsteer::telemetry::dnstap", "the dnstap writer panicked");
        }
    }
}

impl Drop for Dnstap {
    /// A start-up that failed after this was made: the writer ends too (not waited for).
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::Relaxed);
    }
}

/// The host name, dnstap's default identity (the pod name in Kubernetes).
fn host_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dnsteer".to_string())
}

/// The dnstap families; zeros when `[dnstap]` is off, so dashboards see them either way.
pub(crate) fn families(tap: Option<&Dnstap>) -> Vec<MetricFamily> {
    let get = |f: fn(&Counters) -> &AtomicU64| {
        tap.map_or(0.0, |t| f(&t.counters).load(Ordering::Relaxed) as f64)
    };
    let connected = tap.is_some_and(|t| t.counters.connected.load(Ordering::Relaxed));
    vec![
        scalar(
            "dnsteer_dnstap_frames_total",
            "dnstap frames written to the collector.",
            MetricType::COUNTER,
            get(|c| &c.frames),
        ),
        family(
            "dnsteer_dnstap_dropped_total",
            "Sampled queries whose dnstap messages were not written, by reason.",
            MetricType::COUNTER,
            vec![
                (
                    vec![("reason", "queue_full".into())],
                    get(|c| &c.dropped_full),
                ),
                (
                    vec![("reason", "disconnected".into())],
                    get(|c| &c.dropped_disconnected),
                ),
            ],
        ),
        scalar(
            "dnsteer_dnstap_connected",
            "1 while the dnstap collector connection is up.",
            MetricType::GAUGE,
            f64::from(u8::from(connected)),
        ),
        scalar(
            "dnsteer_dnstap_connect_failures_total",
            "Failed attempts to connect to the dnstap collector (or to complete its handshake).",
            MetricType::COUNTER,
            get(|c| &c.connect_failures),
        ),
    ]
}

//! The dnstap writer thread: owns the collector connection (Frame Streams, bidirectional:
//! READY → ACCEPT → START → data frames → STOP → FINISH), writes the queued exchanges in
//! batches, and reconnects with exponential backoff when the collector is absent or gone.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::wire::{self, Control, Message, MessageType};
use super::{Counters, Tapped};
use crate::config::DnstapOutput;

/// How long the writer sleeps when the queue is empty. Polling instead of a blocking `recv`
/// keeps senders from waking the writer (a futex call) on the packet path.
const POLL: Duration = Duration::from_millis(20);
/// Bytes gathered before a write.
const FLUSH_AT: usize = 64 << 10;
/// A collector that does not answer the handshake, or stops reading, for this long is
/// dropped (a write cut short leaves the stream unusable anyway) and reconnected.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Connection problems are logged at most this often (counted in between).
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum TapError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("handshake: the collector sent control frame {0} instead of ACCEPT")]
    NotAccepted(u32),
    #[error("handshake: the collector does not accept protobuf:dnstap.Dnstap")]
    ContentType,
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
}

impl TapError {
    fn kind(&self) -> &'static str {
        match self {
            TapError::Connect(_) => "connect",
            TapError::Handshake(_) | TapError::NotAccepted(_) | TapError::ContentType => {
                "handshake"
            }
            TapError::Write(_) => "write",
        }
    }
}

/// The writer's state, moved into its thread.
pub(super) struct Writer {
    socket: PathBuf,
    identity: Vec<u8>,
    version: Vec<u8>,
    counters: Arc<Counters>,
    /// Frames of `batch` not yet written, and the exchanges they carry.
    batch: Vec<u8>,
    batch_frames: u64,
    batch_exchanges: u64,
    scratch: Vec<u8>,
    last_log: Option<Instant>,
    /// Problems since the last log line.
    unlogged: u64,
}

impl Writer {
    pub(super) fn new(
        cfg: &DnstapOutput,
        host: impl FnOnce() -> String,
        counters: Arc<Counters>,
    ) -> Writer {
        Writer {
            socket: cfg.socket.clone(),
            identity: cfg.identity.clone().unwrap_or_else(host).into_bytes(),
            version: cfg.version.clone().into_bytes(),
            counters,
            batch: Vec::with_capacity(FLUSH_AT + 1024),
            batch_frames: 0,
            batch_exchanges: 0,
            scratch: Vec::new(),
            last_log: None,
            unlogged: 0,
        }
    }

    /// Connects, writes, reconnects, until `stop` is set and what was queued is written.
    pub(super) fn run(mut self, rx: &Receiver<Tapped>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match connect(&self.socket) {
                Ok(mut conn) => {
                    backoff = BACKOFF_MIN;
                    self.counters.connected.store(true, Ordering::Relaxed);
                    tracing::info!(target: "dnsteer::telemetry::dnstap", socket = %self.socket.display(), "dnstap collector connected");
                    let served = self.serve(&mut conn, rx);
                    self.counters.connected.store(false, Ordering::Relaxed);
                    match served {
                        Ok(()) => return finish(&mut conn),
                        Err(e) => self.problem(&e),
                    }
                }
                Err(e) => {
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.problem(&e);
                }
            }
            if !self.wait(rx, backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Writes queued exchanges until stopped (Ok, everything queued written) or the
    /// connection fails.
    fn serve(&mut self, conn: &mut UnixStream, rx: &Receiver<Tapped>) -> Result<(), TapError> {
        loop {
            match rx.try_recv() {
                Ok(t) => {
                    self.counters
                        .queued_bytes
                        .fetch_sub(t.packets.len(), Ordering::Relaxed);
                    self.encode(&t);
                    if self.batch.len() >= FLUSH_AT {
                        self.flush(conn)?;
                    }
                }
                Err(TryRecvError::Empty) => {
                    self.flush(conn)?;
                    if self.counters.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(POLL);
                }
                Err(TryRecvError::Disconnected) => return self.flush(conn),
            }
        }
    }

    /// Appends an exchange's frames to the batch: AUTH_QUERY, and AUTH_RESPONSE if answered.
    fn encode(&mut self, t: &Tapped) {
        let (query, response) = t.packets.split_at(t.query_len.min(t.packets.len()));
        let mut m = Message {
            kind: MessageType::AuthQuery,
            tcp: t.tcp,
            client: t.client,
            query_time: t.query_time,
            query: Some(query),
            response: None,
        };
        let (id, v) = (&self.identity, &self.version);
        wire::data_frame(id, v, &m, &mut self.scratch, &mut self.batch);
        self.batch_frames += 1;
        if let Some(at) = t.response_time {
            m.kind = MessageType::AuthResponse;
            m.query = None;
            m.response = Some((at, response));
            wire::data_frame(id, v, &m, &mut self.scratch, &mut self.batch);
            self.batch_frames += 1;
        }
        self.batch_exchanges += 1;
    }

    /// Writes the batch; on failure its exchanges count as dropped (disconnected).
    fn flush(&mut self, conn: &mut UnixStream) -> Result<(), TapError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let written = conn.write_all(&self.batch);
        let c = &self.counters;
        match written {
            Ok(()) => c.frames.fetch_add(self.batch_frames, Ordering::Relaxed),
            Err(_) => c
                .dropped_disconnected
                .fetch_add(self.batch_exchanges, Ordering::Relaxed),
        };
        self.batch.clear();
        self.batch_frames = 0;
        self.batch_exchanges = 0;
        written.map_err(TapError::Write)
    }

    /// Waits `backoff` before the next attempt, dropping what is queued meanwhile (counted as
    /// disconnected). False when stopped.
    fn wait(&mut self, rx: &Receiver<Tapped>, backoff: Duration) -> bool {
        let until = Instant::now() + backoff;
        loop {
            let gone = loop {
                match rx.try_recv() {
                    Ok(t) => {
                        let c = &self.counters;
                        c.queued_bytes.fetch_sub(t.packets.len(), Ordering::Relaxed);
                        c.dropped_disconnected.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => break e == TryRecvError::Disconnected,
                }
            };
            if gone || self.counters.stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep(POLL.min(until - now));
        }
    }

    /// Logs a connection problem, at most once per [`LOG_EVERY`].
    fn problem(&mut self, e: &TapError) {
        self.unlogged += 1;
        if self.last_log.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::warn!(
            target: "dnsteer::telemetry::dnstap",
            socket = %self.socket.display(),
            error = %e,
            kind = e.kind(),
            problems = self.unlogged,
            "dnstap collector unavailable; sampled queries are dropped until it is back"
        );
        self.last_log = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// Connects and completes the handshake: READY → ACCEPT (naming our content type) → START.
fn connect(path: &std::path::Path) -> Result<UnixStream, TapError> {
    let mut conn = UnixStream::connect(path).map_err(TapError::Connect)?;
    let hs = TapError::Handshake;
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(hs)?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(hs)?;
    let mut out = Vec::with_capacity(64);
    wire::control_frame(Control::Ready, &mut out);
    conn.write_all(&out).map_err(hs)?;
    match read_control(&mut conn).map_err(hs)? {
        (kind, true) if kind == Control::Accept as u32 => {}
        (kind, _) if kind != Control::Accept as u32 => return Err(TapError::NotAccepted(kind)),
        _ => return Err(TapError::ContentType),
    }
    out.clear();
    wire::control_frame(Control::Start, &mut out);
    conn.write_all(&out).map_err(hs)?;
    Ok(conn)
}

/// Reads one control frame: (type, whether it allows dnstap).
fn read_control(conn: &mut UnixStream) -> std::io::Result<(u32, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut head = [0u8; 8];
    conn.read_exact(&mut head)?;
    let [e0, e1, e2, e3, l0, l1, l2, l3] = head;
    if u32::from_be_bytes([e0, e1, e2, e3]) != 0 {
        return Err(bad("a data frame where a control frame was expected"));
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > wire::MAX_CONTROL_LEN {
        return Err(bad("control frame too long"));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    wire::parse_control(&body).ok_or_else(|| bad("malformed control frame"))
}

/// Ends the stream cleanly: STOP, then the collector's FINISH (bounded by [`IO_TIMEOUT`]).
fn finish(conn: &mut UnixStream) {
    let mut out = Vec::with_capacity(12);
    wire::control_frame(Control::Stop, &mut out);
    if conn.write_all(&out).is_err() {
        return;
    }
    // Whatever comes back (FINISH, EOF, a timeout), the stream is over: only noted.
    match read_control(conn) {
        Ok((kind, _)) if kind == Control::Finish as u32 => {}
        other => {
            tracing::debug!(target: "dnsteer::telemetry::dnstap", reply = ?other, "no FINISH after STOP");
        }
    }
}

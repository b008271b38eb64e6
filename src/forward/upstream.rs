//! The PowerDNS pool: server health shared by all workers, the choice of server, and each
//! worker's pooled TCP connections. UDP forwarding state lives on the UDP front threads
//! (`forward::udp`).
//!
//! Forwarding sends the client's bytes with only the ID rewritten (and ECS added when
//! configured); a response is accepted only from the socket connected to the server asked,
//! with the expected ID and the same question. Each attempt has its own timeout; a query
//! gets at most `attempts` servers, then SERVFAIL, so the total time is bounded.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{UpstreamConfig, UpstreamPolicy};
use crate::dns::{self, Added, Query};
use crate::telemetry::Report;
use crate::telemetry::metrics::{Cnt, Hist};

/// Counters one thread keeps for one server (single writer), summed at scrape.
#[derive(Default)]
pub(crate) struct ServerCounters {
    pub(crate) requests: Cnt,
    pub(crate) responses: Cnt,
    pub timeouts: Cnt,
    pub(crate) errors: Cnt,
    pub latency: Hist,
}

/// One PowerDNS replica, shared by all workers. Health is written by the checker task.
pub(crate) struct UpstreamServer {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    /// Set when a reload removed this server: its checker stops.
    retired: AtomicBool,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) consecutive_successes: AtomicU32,
    pub(crate) checks: AtomicU64,
    pub(crate) check_failures: AtomicU64,
    /// Every worker's counters for this server.
    counters: Mutex<Vec<Arc<ServerCounters>>>,
}

impl UpstreamServer {
    fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(UpstreamServer {
            addr,
            // Healthy until checks say otherwise: starting in front of a working PowerDNS must
            // not SERVFAIL while the first check is in flight.
            healthy: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            checks: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
            counters: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Counters for one more thread (a worker's TCP forwarding, a UDP front thread).
    pub(crate) fn register(&self) -> Arc<ServerCounters> {
        let c = Arc::new(ServerCounters::default());
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(c.clone());
        c
    }

    /// Sums of every worker's counters: (requests, responses, timeouts, errors).
    pub(crate) fn totals(&self) -> (u64, u64, u64, u64) {
        let list = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.iter().fold((0, 0, 0, 0), |acc, c| {
            (
                acc.0 + c.requests.get(),
                acc.1 + c.responses.get(),
                acc.2 + c.timeouts.get(),
                acc.3 + c.errors.get(),
            )
        })
    }

    /// Latency histogram summed over workers: (bucket counts, sum in ns).
    pub(crate) fn latency(&self, counts: &mut [u64], sum_ns: &mut u64) {
        for c in self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            c.latency.add_into(counts, sum_ns);
        }
    }
}

/// The configured pool, swapped as a whole on reload (servers keep their identity by address).
pub(crate) struct UpstreamSet {
    pub servers: Vec<Arc<UpstreamServer>>,
    pub config: UpstreamConfig,
}

impl UpstreamSet {
    /// Builds the pool, reusing `previous` servers with the same address (health kept).
    pub(crate) fn new(config: &UpstreamConfig, previous: Option<&UpstreamSet>) -> Arc<UpstreamSet> {
        let servers = config
            .servers
            .iter()
            .map(|addr| {
                previous
                    .and_then(|p| p.servers.iter().find(|s| s.addr == *addr).cloned())
                    .unwrap_or_else(|| UpstreamServer::new(*addr))
            })
            .collect();
        Arc::new(UpstreamSet {
            servers,
            config: config.clone(),
        })
    }

    /// ECS to add for a client, per config (None when switched off).
    pub(crate) fn ecs_for(&self, client: IpAddr) -> Option<(IpAddr, u8)> {
        let c = &self.config;
        if !c.add_ecs() {
            return None;
        }
        let prefix = if client.is_ipv4() {
            c.ecs_ipv4_prefix
        } else {
            c.ecs_ipv6_prefix
        };
        Some((client, prefix))
    }

    /// Marks servers not in `next` as retired so their checkers stop.
    pub(crate) fn retire_missing(&self, next: &UpstreamSet) {
        for s in &self.servers {
            if !next.servers.iter().any(|n| Arc::ptr_eq(n, s)) {
                s.retired.store(true, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Health checks (control plane)
// ---------------------------------------------------------------------------------------------

/// Runs the health check of one server until it is retired. A SOA query for
/// `health_check_name` every interval; any well-formed matching response is healthy (REFUSED
/// included) unless `must_resolve`, then NOERROR is required.
pub(crate) async fn health_check_loop(
    server: Arc<UpstreamServer>,
    current: impl Fn() -> Arc<UpstreamSet>,
) {
    let mut id: u16 = fastrand::u16(..);
    while !server.retired.load(Ordering::Relaxed) {
        let cfg = current().config.clone();
        id = id.wrapping_add(1);
        let ok = check_once(server.addr, &cfg, id).await;
        server.checks.fetch_add(1, Ordering::Relaxed);
        if ok {
            server.consecutive_failures.store(0, Ordering::Relaxed);
            let n = server.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !server.is_healthy() && n >= cfg.health_check_rise {
                server.healthy.store(true, Ordering::Relaxed);
                tracing::info!(target: "dnsteer::forward::upstream", server = %server.addr, "upstream healthy again");
            }
        } else {
            server.check_failures.fetch_add(1, Ordering::Relaxed);
            server.consecutive_successes.store(0, Ordering::Relaxed);
            let n = server.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if server.is_healthy() && n >= cfg.health_check_fall {
                server.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(target: "dnsteer::forward::upstream", server = %server.addr, failures = n, "upstream marked down");
            }
        }
        tokio::time::sleep(cfg.health_check_interval).await;
    }
}

async fn check_once(addr: SocketAddr, cfg: &UpstreamConfig, id: u16) -> bool {
    let Ok(name) = dns::name_from_text(&cfg.health_check_name) else {
        return false;
    };
    let query = dns::build_query(id, &name, dns::TYPE_SOA, None);
    match dns::exchange_udp_with(addr, cfg.proxies_own_queries(), &query, cfg.timeout).await {
        Ok(answer) => {
            let rcode = answer[3] & 0x0f;
            !cfg.health_check_must_resolve || rcode == dns::rcode::NOERROR
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Per-worker forwarding state
// ---------------------------------------------------------------------------------------------

/// Where a UDP answer goes back to.
#[derive(Clone, Copy)]
pub(crate) struct UdpClient {
    pub addr: SocketAddr,
    /// The listen socket's address (replies leave from the thread that owns it; the
    /// destination in a PROXY header).
    pub(crate) local: SocketAddr,
}

/// A forwarded UDP query waiting for its answer.
pub(crate) struct Pending {
    pub(crate) client: UdpClient,
    pub(crate) orig_id: u16,
    pub(crate) added: Added,
    pub(crate) query: Query,
    /// The client's packet, kept for a retry on another server and for SERVFAIL.
    pub(crate) packet: Vec<u8>,
    pub(crate) attempt: usize,
    /// Bit i set: server i of the worker's list was tried.
    pub(crate) tried: u64,
    pub(crate) sent_at: Instant,
    pub(crate) received_at: Instant,
    /// Where its answer is reported.
    pub(crate) report: Report,
}

/// One server as one worker's TCP forwarding sees it.
pub(crate) struct WorkerServer {
    pub server: Arc<UpstreamServer>,
    pub counters: Arc<ServerCounters>,
    pub tcp: TcpPool,
}

/// A worker's view of the pool for TCP. Rebuilt (keeping the connections of unchanged
/// servers) when the shared `UpstreamSet` changes.
pub(crate) struct WorkerUpstreams {
    pub set: Arc<UpstreamSet>,
    pub servers: Vec<Rc<WorkerServer>>,
    rr: Cell<usize>,
}

/// Picks one of `n` servers for an attempt, not yet tried (`tried` bitmask), healthy ones
/// first, by policy (`outstanding`: queries in flight on a server, for least-outstanding).
/// Once every server was tried, any may be picked again: a retry then resends to the same
/// PowerDNS, which is what recovers a lost UDP packet when there is one replica.
/// Allocation-free: it runs once per forwarded query.
pub(crate) fn pick_server(
    policy: UpstreamPolicy,
    rr: &mut usize,
    n: usize,
    tried: u64,
    healthy: impl Fn(usize) -> bool,
    outstanding: impl Fn(usize) -> usize,
) -> Option<usize> {
    // The config rejects more servers than the mask has bits.
    debug_assert!(n <= crate::config::MAX_UPSTREAM_SERVERS);
    let all_tried = (0..n).all(|i| tried & (1 << i) != 0);
    let untried = |i: usize| all_tried || tried & (1 << i) == 0;
    let any_healthy = (0..n).any(|i| untried(i) && healthy(i));
    // With every untried server marked down, still try one: a false "down" must not turn
    // into SERVFAIL for everyone, and a real outage fails within the timeout anyway.
    let eligible = |i: usize| untried(i) && (!any_healthy || healthy(i));
    let count = (0..n).filter(|&i| eligible(i)).count();
    if count == 0 {
        return None;
    }
    let nth = |k: usize, pred: &dyn Fn(usize) -> bool| (0..n).filter(|&i| pred(i)).nth(k);
    match policy {
        UpstreamPolicy::FirstAvailable => nth(0, &eligible),
        UpstreamPolicy::RoundRobin => {
            let i = *rr;
            *rr = i.wrapping_add(1);
            nth(i % count, &eligible)
        }
        UpstreamPolicy::LeastOutstanding => {
            let min = (0..n).filter(|&i| eligible(i)).map(&outstanding).min()?;
            let least = |i: usize| eligible(i) && outstanding(i) == min;
            let ties = (0..n).filter(|&i| least(i)).count();
            let i = *rr;
            *rr = i.wrapping_add(1);
            nth(i % ties, &least)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream server left to try")]
    NoServer,
    #[error("too many queries in flight")]
    PendingFull,
    #[error("send failed: {0}")]
    Send(std::io::ErrorKind),
}

impl ForwardError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ForwardError::NoServer => "no_server",
            ForwardError::PendingFull => "pending_full",
            ForwardError::Send(_) => "send",
        }
    }
}

impl WorkerUpstreams {
    /// The worker's view of `set`, reusing the TCP pools of `previous` for servers that stay.
    pub(crate) fn build(
        set: Arc<UpstreamSet>,
        previous: Option<&WorkerUpstreams>,
    ) -> WorkerUpstreams {
        let servers = set
            .servers
            .iter()
            .map(|s| {
                previous
                    .and_then(|p| p.servers.iter().find(|w| Arc::ptr_eq(&w.server, s)))
                    .cloned()
                    .unwrap_or_else(|| {
                        Rc::new(WorkerServer {
                            counters: s.register(),
                            tcp: TcpPool::new(s.addr, set.config.tcp_pool_size),
                            server: s.clone(),
                        })
                    })
            })
            .collect();
        WorkerUpstreams {
            set,
            servers,
            rr: Cell::new(0),
        }
    }

    /// Picks a server for a TCP attempt (see [`pick_server`]); least-outstanding counts the
    /// queries in flight on this worker's connections to each.
    pub(crate) fn pick(&self, tried: u64) -> Option<usize> {
        let mut rr = self.rr.get();
        let picked = pick_server(
            self.set.config.policy,
            &mut rr,
            self.servers.len(),
            tried,
            |i| self.servers[i].server.is_healthy(),
            |i| self.servers[i].tcp.in_flight(),
        );
        self.rr.set(rr);
        picked
    }

    /// ECS to add for a client, per config (None when switched off).
    pub(crate) fn ecs_for(&self, client: IpAddr) -> Option<(IpAddr, u8)> {
        self.set.ecs_for(client)
    }
}

// ---------------------------------------------------------------------------------------------
// TCP pool (per worker, per server)
// ---------------------------------------------------------------------------------------------

/// Where an answer goes, with the token of the query that registered it.
type Reply = (u64, oneshot::Sender<Vec<u8>>);

/// One pooled connection as its queries and its task share it (single thread).
struct ConnState {
    /// Callers waiting for an answer, by upstream ID. An ID is unique among them; the token
    /// tells a waiter's own entry from a later one that reused the ID after it gave up.
    waiting: RefCell<HashMap<u16, Reply>>,
    next_token: Cell<u64>,
    closed: Cell<bool>,
    /// Queries written and not yet followed by as many answers (late answers included).
    owed: Cell<usize>,
    /// When the connection last made progress while answers were owed: the first query owed,
    /// or the last answer read. No progress for `[upstream].timeout` closes it.
    owed_since: Cell<Instant>,
}

impl ConnState {
    fn in_flight(&self) -> usize {
        self.waiting.borrow().len()
    }
}

struct TcpConn {
    tx: mpsc::Sender<Vec<u8>>,
    state: Rc<ConnState>,
}

/// Reused TCP connections to one server; queries are pipelined and matched by ID.
pub(crate) struct TcpPool {
    addr: SocketAddr,
    /// Written first on each new connection (a PROXY header), or empty.
    preamble: Vec<u8>,
    size: usize,
    conns: RefCell<Vec<TcpConn>>,
    rng: RefCell<fastrand::Rng>,
}

/// Queries queued per pooled connection before a new connection is preferred.
const TCP_CONN_QUEUE: usize = 64;

/// A query sent on a pooled connection, waiting for its answer. Dropping it (answered, timed
/// out or failed) frees its ID and its place in the connection's in-flight count.
pub(crate) struct TcpWaiter {
    id: u16,
    token: u64,
    rx: oneshot::Receiver<Vec<u8>>,
    conn: Rc<ConnState>,
}

impl TcpWaiter {
    /// The ID the query was sent with (the answer must carry it).
    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// The raw answer; an error if the connection closed first.
    pub(crate) async fn answer(&mut self) -> Result<Vec<u8>, oneshot::error::RecvError> {
        (&mut self.rx).await
    }
}

impl Drop for TcpWaiter {
    fn drop(&mut self) {
        let mut waiting = self.conn.waiting.borrow_mut();
        if waiting.get(&self.id).is_some_and(|(t, _)| *t == self.token) {
            waiting.remove(&self.id);
        }
    }
}

/// An ID `taken` does not hold: a few random draws (IDs stay unpredictable), then a scan from
/// a random start, so a nearly full connection still finds the free one. None: all taken.
fn free_id(mut draw: impl FnMut() -> u16, taken: impl Fn(u16) -> bool) -> Option<u16> {
    for _ in 0..8 {
        let id = draw();
        if !taken(id) {
            return Some(id);
        }
    }
    let start = draw();
    (0..=u16::MAX)
        .map(|i| start.wrapping_add(i))
        .find(|&id| !taken(id))
}

impl TcpPool {
    fn new(addr: SocketAddr, size: usize) -> TcpPool {
        Self::with_preamble(addr, size, Vec::new())
    }

    /// A pool whose connections start with `preamble`: with a PROXY header, one TCP client's
    /// own connection(s) to PowerDNS (a header speaks for the whole connection).
    pub(crate) fn with_preamble(addr: SocketAddr, size: usize, preamble: Vec<u8>) -> TcpPool {
        TcpPool {
            addr,
            preamble,
            size,
            conns: RefCell::new(Vec::new()),
            rng: RefCell::new(fastrand::Rng::new()),
        }
    }

    /// Sends `query` with its ID replaced by one free on the chosen connection. A connection
    /// opened here, or one that goes without any answer for `timeout` while answers are owed,
    /// is given that long (a half-dead server cannot keep it, and its waiters, forever).
    pub(crate) fn send(
        &self,
        mut query: Vec<u8>,
        timeout: Duration,
    ) -> Result<TcpWaiter, ForwardError> {
        if query.len() < dns::HEADER_LEN {
            return Err(ForwardError::Send(std::io::ErrorKind::InvalidInput));
        }
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| !c.state.closed.get());
        let least = conns
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.state.in_flight())
            .map(|(i, c)| (i, c.state.in_flight()));
        let idx = match least {
            Some((i, n)) if n == 0 || conns.len() >= self.size => i,
            _ => {
                conns.push(self.connect(timeout));
                conns.len() - 1
            }
        };
        let conn = &conns[idx];
        let id = {
            let waiting = conn.state.waiting.borrow();
            let mut rng = self.rng.borrow_mut();
            free_id(|| rng.u16(..), |id| waiting.contains_key(&id))
                .ok_or(ForwardError::PendingFull)?
        };
        query[0..2].copy_from_slice(&id.to_be_bytes());
        conn.tx
            .try_send(query)
            .map_err(|_| ForwardError::PendingFull)?;
        let (tx, rx) = oneshot::channel();
        let token = conn.state.next_token.get();
        conn.state.next_token.set(token.wrapping_add(1));
        conn.state.waiting.borrow_mut().insert(id, (token, tx));
        Ok(TcpWaiter {
            id,
            token,
            rx,
            conn: conn.state.clone(),
        })
    }

    /// Queries waiting for an answer on this pool's open connections.
    pub(crate) fn in_flight(&self) -> usize {
        self.conns
            .borrow()
            .iter()
            .filter(|c| !c.state.closed.get())
            .map(|c| c.state.in_flight())
            .sum()
    }

    fn connect(&self, timeout: Duration) -> TcpConn {
        let (tx, rx) = mpsc::channel(TCP_CONN_QUEUE);
        let state = Rc::new(ConnState {
            waiting: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            closed: Cell::new(false),
            owed: Cell::new(0),
            owed_since: Cell::new(Instant::now()),
        });
        tokio::task::spawn_local(run_tcp_conn(
            self.addr,
            self.preamble.clone(),
            rx,
            state.clone(),
            timeout,
        ));
        TcpConn { tx, state }
    }
}

async fn run_tcp_conn(
    addr: SocketAddr,
    preamble: Vec<u8>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    state: Rc<ConnState>,
    timeout: Duration,
) {
    let result = async {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        if !preamble.is_empty() {
            tokio::io::AsyncWriteExt::write_all(&mut wr, &preamble).await?;
        }
        let writer = async {
            let mut frame = Vec::with_capacity(514);
            while let Some(q) = rx.recv().await {
                if state.owed.get() == 0 {
                    state.owed_since.set(Instant::now());
                }
                state.owed.set(state.owed.get() + 1);
                dns::write_frame(&mut wr, &q, &mut frame).await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let reader = async {
            loop {
                let mut msg = Vec::new();
                dns::read_frame(&mut rd, &mut msg, dns::MAX_FRAME).await?;
                state.owed.set(state.owed.get().saturating_sub(1));
                state.owed_since.set(Instant::now());
                if msg.len() >= 2 {
                    let id = u16::from_be_bytes([msg[0], msg[1]]);
                    // Removed before the send: the waiter's drop then finds nothing to free.
                    let waiter = state.waiting.borrow_mut().remove(&id);
                    if let Some((_, reply)) = waiter {
                        let _ = reply.send(msg);
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        };
        // A server that accepts and reads but answers nothing (a wedged PowerDNS) would keep
        // this connection, and every query sent on it, forever.
        let watchdog = async {
            loop {
                if state.owed.get() == 0 {
                    tokio::time::sleep(timeout).await;
                    continue;
                }
                let deadline = state.owed_since.get() + timeout;
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer within the upstream timeout",
                    ));
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        tokio::select! {
            r = writer => r,
            r = reader => r,
            r = watchdog => r,
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(target: "dnsteer::forward::upstream", server = %addr, error = %e, "upstream TCP connection closed");
    }
    // Dropping the waiting senders fails their receivers: the callers retry or SERVFAIL.
    state.closed.set(true);
    let waiting = std::mem::take(&mut *state.waiting.borrow_mut());
    drop(waiting);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(policy: &str) -> WorkerUpstreams {
        let text = format!(
            "[upstream]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\npolicy = \"{policy}\"\n"
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        WorkerUpstreams::build(UpstreamSet::new(&cfg.upstream, None), None)
    }

    #[test]
    fn pick_follows_policy_and_health() {
        let w = pool("first-available");
        assert_eq!(w.pick(0), Some(0));
        assert_eq!(w.pick(0b001), Some(1));
        w.servers[1].server.healthy.store(false, Ordering::Relaxed);
        assert_eq!(
            w.pick(0b001),
            Some(2),
            "down servers are skipped while others are up"
        );
        assert_eq!(
            w.pick(0b101),
            Some(1),
            "with only down servers left, one is still tried"
        );
        assert_eq!(
            w.pick(0b111),
            Some(0),
            "all tried: a retry goes to a healthy one again"
        );

        let w = pool("round-robin");
        let picks: Vec<_> = (0..6).map(|_| w.pick(0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        let outstanding = [5, 0, 1];
        let mut rr = 0;
        let mut pick = |tried| {
            pick_server(
                UpstreamPolicy::LeastOutstanding,
                &mut rr,
                3,
                tried,
                |_| true,
                |i| outstanding[i],
            )
        };
        assert_eq!(pick(0), Some(1));
        assert_eq!(pick(0b010), Some(2));
    }

    #[test]
    fn tcp_ids_never_collide_on_one_connection() {
        // A source that keeps drawing the same ID, as an unlucky RNG would.
        let taken: std::collections::HashSet<u16> = [7].into();
        let id = free_id(|| 7, |id| taken.contains(&id)).unwrap();
        assert_ne!(id, 7, "a taken ID is never handed out again");
        // Nearly full: the one free ID is found; full: None, never a duplicate.
        let free = free_id(|| 1234, |id| id != 4321);
        assert_eq!(free, Some(4321));
        assert_eq!(free_id(|| 1234, |_| true), None);
    }

    #[test]
    fn a_silent_tcp_server_frees_every_waiter_and_its_connection() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            // Accepts, reads, never answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = silent.local_addr().unwrap();
            let held = Rc::new(RefCell::new(Vec::new()));
            let keep = held.clone();
            tokio::task::spawn_local(async move {
                while let Ok((s, _)) = silent.accept().await {
                    keep.borrow_mut().push(s);
                }
            });
            let pool = TcpPool::new(addr, 1);
            let timeout = Duration::from_millis(100);
            let query = dns::build_query(0, b"\x01a\x04test\x00", dns::TYPE_SOA, None);
            let mut waiters: Vec<_> = (0..3)
                .map(|_| pool.send(query.clone(), timeout).unwrap())
                .collect();
            let ids: std::collections::HashSet<u16> =
                waiters.iter().map(super::TcpWaiter::id).collect();
            assert_eq!(ids.len(), 3, "one connection, three distinct IDs");
            assert_eq!(pool.in_flight(), 3);
            for w in &mut waiters {
                let r = tokio::time::timeout(timeout * 5, w.answer()).await;
                assert!(
                    matches!(r, Ok(Err(_))),
                    "the dead connection is closed and its waiters fail"
                );
            }
            assert_eq!(pool.in_flight(), 0);
            drop(waiters);
            assert!(pool.conns.borrow().iter().all(|c| c.state.closed.get()));
            // A waiter that gives up on its own frees its entry too.
            let w = pool.send(query.clone(), Duration::from_secs(60)).unwrap();
            assert_eq!(pool.in_flight(), 1);
            drop(w);
            assert_eq!(pool.in_flight(), 0);
        });
    }
}

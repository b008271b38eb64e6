//! The PowerDNS pool: server health shared by all workers, and each worker's own forwarding
//! state (connected UDP sockets with their pending tables, pooled TCP connections).
//!
//! Forwarding sends the client's bytes with only the ID rewritten (and ECS added when
//! configured); a response is accepted only from the socket connected to the server asked,
//! with the expected ID and the same question. Each attempt has its own timeout; a query
//! gets at most `attempts` servers, then SERVFAIL, so the total time is bounded.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{ClientAddress, UpstreamConfig, UpstreamPolicy};
use crate::dns::{self, Added, Query};
use crate::telemetry::metrics::{Cnt, Hist};

/// Per-worker in-flight UDP queries per server; beyond this new queries are dropped (counted).
const MAX_PENDING_PER_SERVER: usize = 16_384;

/// Counters one worker keeps for one server (single writer), summed at scrape.
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

    /// A reload removed this server: workers drop their sockets for it once drained.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn register(&self) -> Arc<ServerCounters> {
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
    /// Index of the listen socket the query arrived on (replies leave from it).
    pub listener: usize,
    /// That socket's address (the destination in a PROXY header).
    pub(crate) local: SocketAddr,
}

/// A forwarded UDP query waiting for its answer.
pub struct Pending {
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
    pub(crate) sampled: bool,
}

/// One server as one worker sees it.
pub(crate) struct WorkerServer {
    pub server: Arc<UpstreamServer>,
    pub counters: Arc<ServerCounters>,
    pub udp: Rc<UdpSocket>,
    pub pending: RefCell<HashMap<u16, Pending, foldhash::fast::RandomState>>,
    pub(crate) outstanding: Cell<u32>,
    pub tcp: TcpPool,
}

/// A worker's view of the pool. Rebuilt (keeping sockets of unchanged servers) when the
/// shared `UpstreamSet` changes.
pub(crate) struct WorkerUpstreams {
    pub set: Arc<UpstreamSet>,
    pub servers: Vec<Rc<WorkerServer>>,
    rr: Cell<usize>,
    /// (deadline, server index, id) of UDP attempts, in send order (deadlines are monotonic
    /// because every attempt has the same timeout).
    pub(crate) deadlines: RefCell<VecDeque<(Instant, usize, u16)>>,
    rng: RefCell<fastrand::Rng>,
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
    /// Creates sockets for `set`, reusing those of `previous` for servers that stay.
    /// `buffer`: SO_RCVBUF/SO_SNDBUF for new sockets (`[server].socket_buffer`).
    pub(crate) fn build(
        set: Arc<UpstreamSet>,
        previous: Option<&WorkerUpstreams>,
        buffer: usize,
    ) -> std::io::Result<WorkerUpstreams> {
        let mut servers = Vec::with_capacity(set.servers.len());
        for s in &set.servers {
            if let Some(ws) =
                previous.and_then(|p| p.servers.iter().find(|w| Arc::ptr_eq(&w.server, s)))
            {
                servers.push(ws.clone());
                continue;
            }
            servers.push(Rc::new(WorkerServer::new(
                s.clone(),
                set.config.tcp_pool_size,
                buffer,
            )?));
        }
        Ok(WorkerUpstreams {
            set,
            servers,
            rr: Cell::new(0),
            deadlines: RefCell::new(VecDeque::new()),
            rng: RefCell::new(fastrand::Rng::new()),
        })
    }

    /// Picks a server not yet tried (`tried` bitmask), healthy ones first, by policy. Once
    /// every server was tried, any may be picked again: a retry then resends to the same
    /// PowerDNS, which is what recovers a lost UDP packet when there is one replica.
    /// Allocation-free: it runs once per forwarded query.
    pub(crate) fn pick(&self, tried: u64) -> Option<usize> {
        // The config rejects more servers than the mask has bits.
        let n = self.servers.len();
        debug_assert!(n <= crate::config::MAX_UPSTREAM_SERVERS);
        let all_tried = (0..n).all(|i| tried & (1 << i) != 0);
        let untried = |i: usize| all_tried || tried & (1 << i) == 0;
        let any_healthy = (0..n).any(|i| untried(i) && self.servers[i].server.is_healthy());
        // With every untried server marked down, still try one: a false "down" must not turn
        // into SERVFAIL for everyone, and a real outage fails within the timeout anyway.
        let eligible =
            |i: usize| untried(i) && (!any_healthy || self.servers[i].server.is_healthy());
        let count = (0..n).filter(|&i| eligible(i)).count();
        if count == 0 {
            return None;
        }
        let nth = |k: usize, pred: &dyn Fn(usize) -> bool| (0..n).filter(|&i| pred(i)).nth(k);
        match self.set.config.policy {
            UpstreamPolicy::FirstAvailable => nth(0, &eligible),
            UpstreamPolicy::RoundRobin => {
                let i = self.rr.get();
                self.rr.set(i.wrapping_add(1));
                nth(i % count, &eligible)
            }
            UpstreamPolicy::LeastOutstanding => {
                let outstanding = |i: usize| self.servers[i].outstanding.get();
                let min = (0..n).filter(|&i| eligible(i)).map(outstanding).min()?;
                let least = |i: usize| eligible(i) && outstanding(i) == min;
                let ties = (0..n).filter(|&i| least(i)).count();
                let i = self.rr.get();
                self.rr.set(i.wrapping_add(1));
                nth(i % ties, &least)
            }
        }
    }

    /// ECS to add for a client, per config (None when switched off).
    pub(crate) fn ecs_for(&self, client: IpAddr) -> Option<(IpAddr, u8)> {
        let c = &self.set.config;
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

    /// Sends a UDP query (new or retried) to the next server and records it as pending.
    pub(crate) fn send_udp(
        &self,
        mut p: Pending,
        buf: &mut Vec<u8>,
    ) -> Result<(), Box<(ForwardError, Pending)>> {
        let Some(idx) = self.pick(p.tried) else {
            return Err(Box::new((ForwardError::NoServer, p)));
        };
        let ws = &self.servers[idx];
        let mut pending = ws.pending.borrow_mut();
        if pending.len() >= MAX_PENDING_PER_SERVER {
            return Err(Box::new((ForwardError::PendingFull, p)));
        }
        let mut rng = self.rng.borrow_mut();
        let id = loop {
            let id = rng.u16(..);
            if !pending.contains_key(&id) {
                break id;
            }
        };
        let ecs = self.ecs_for(p.client.addr.ip().to_canonical());
        p.added = dns::rewrite_for_upstream(&p.packet, &p.query, id, ecs, buf);
        if self.set.config.client_address == ClientAddress::Proxy {
            // PowerDNS reads the client from the header and answers without one.
            let mut header = Vec::with_capacity(dns::proxy::MAX_LEN + buf.len());
            dns::proxy::header(p.client.addr, p.client.local, true, &mut header);
            header.extend_from_slice(buf);
            *buf = header;
        }
        // The syscall directly, not tokio's `try_send`: that one answers WouldBlock from its
        // cached readiness, which a socket made in this tick (start-up, a reload adding a
        // server) does not have yet, and a SERVFAIL would follow for a send that cannot block.
        if let Err(e) = socket2::SockRef::from(&*ws.udp).send(buf) {
            ws.counters.errors.inc();
            return Err(Box::new((ForwardError::Send(e.kind()), p)));
        }
        ws.counters.requests.inc();
        ws.outstanding.set(ws.outstanding.get() + 1);
        p.tried |= 1 << idx;
        p.attempt += 1;
        p.sent_at = Instant::now();
        self.deadlines
            .borrow_mut()
            .push_back((p.sent_at + self.set.config.timeout, idx, id));
        pending.insert(id, p);
        Ok(())
    }

    /// Removes and returns the pending query `id` of server `idx` if `resp` answers it.
    /// A response that does not match (wrong ID or question) is left alone (None).
    pub(crate) fn take_matching(&self, idx: usize, resp: &[u8]) -> Option<Pending> {
        if resp.len() < dns::HEADER_LEN {
            return None;
        }
        let id = u16::from_be_bytes([resp[0], resp[1]]);
        let ws = &self.servers[idx];
        let mut pending = ws.pending.borrow_mut();
        match pending.get(&id) {
            Some(p) if dns::response_matches(resp, id, &p.query) => {}
            _ => return None,
        }
        let p = pending.remove(&id)?;
        ws.outstanding.set(ws.outstanding.get().saturating_sub(1));
        ws.counters.responses.inc();
        ws.counters
            .latency
            .observe_ns(p.sent_at.elapsed().as_nanos() as u64);
        Some(p)
    }

    /// Pops every attempt whose deadline passed and is still pending, with the index of the
    /// server that attempt went to (the one that timed out, not the first one tried).
    pub(crate) fn expired(&self, now: Instant, out: &mut Vec<(usize, Pending)>) {
        let mut dl = self.deadlines.borrow_mut();
        while let Some(&(deadline, idx, id)) = dl.front() {
            if deadline > now {
                break;
            }
            dl.pop_front();
            let Some(ws) = self.servers.get(idx) else {
                continue;
            };
            let mut pending = ws.pending.borrow_mut();
            // The slot may hold a newer query that reused the ID: only expire a stale one.
            if let Some(p) = pending.get(&id)
                && p.sent_at + self.set.config.timeout <= now
            {
                let p = pending.remove(&id).expect("present");
                ws.outstanding.set(ws.outstanding.get().saturating_sub(1));
                ws.counters.timeouts.inc();
                out.push((idx, p));
            }
        }
    }
}

impl WorkerServer {
    fn new(
        server: Arc<UpstreamServer>,
        pool_size: usize,
        buffer: usize,
    ) -> std::io::Result<WorkerServer> {
        let bind: SocketAddr = if server.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if buffer > 0 {
            // Answers from PowerDNS queue here while the worker is busy: the kernel default
            // (~208 KiB) overflows within a short pause at high rates. Capped by rmem_max.
            let _ = sock.set_recv_buffer_size(buffer);
            let _ = sock.set_send_buffer_size(buffer);
        }
        sock.set_nonblocking(true)?;
        sock.bind(&bind.into())?;
        sock.connect(&server.addr.into())?;
        let udp = Rc::new(UdpSocket::from_std(sock.into())?);
        Ok(WorkerServer {
            counters: server.register(),
            tcp: TcpPool::new(server.addr, pool_size),
            server,
            udp,
            pending: RefCell::new(HashMap::default()),
            outstanding: Cell::new(0),
        })
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
    #[cfg(test)]
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

    fn pool(policy: &str) -> (tokio::runtime::Runtime, WorkerUpstreams) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = format!(
            "[upstream]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\npolicy = \"{policy}\"\n"
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let set = UpstreamSet::new(&cfg.upstream, None);
        let w = rt.block_on(async { WorkerUpstreams::build(set, None, 0).unwrap() });
        (rt, w)
    }

    #[test]
    fn a_query_can_be_sent_on_a_socket_made_in_this_very_tick() {
        // At start-up (the first handed-over batch) and after a reload adding a server, the
        // first send happens before the runtime ever polled the new socket for readiness.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let text = format!(
            "[upstream]\nservers = [\"{}\"]\n",
            target.local_addr().unwrap()
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let name = dns::name_from_text("a.test.").unwrap();
        let packet = dns::build_query(0x4242, &name, dns::TYPE_SOA, None);
        let query = dns::parse_query(&packet).unwrap();
        let client: SocketAddr = "127.0.0.1:53000".parse().unwrap();
        rt.block_on(async {
            let w = WorkerUpstreams::build(UpstreamSet::new(&cfg.upstream, None), None, 0).unwrap();
            let p = Pending {
                client: UdpClient {
                    addr: client,
                    listener: 0,
                    local: "127.0.0.1:53".parse().unwrap(),
                },
                orig_id: query.id,
                added: Added::Nothing,
                query,
                packet: packet.clone(),
                attempt: 0,
                tried: 0,
                sent_at: Instant::now(),
                received_at: Instant::now(),
                sampled: false,
            };
            let mut buf = Vec::new();
            assert!(
                w.send_udp(p, &mut buf).is_ok(),
                "sent without waiting for readiness"
            );
        });
        target
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut got = [0u8; 512];
        let n = target.recv(&mut got).unwrap();
        assert!(n > packet.len());
        assert_eq!(
            &got[12..packet.len()],
            &packet[12..],
            "the question, forwarded (with a new ID and ECS added)"
        );
    }

    #[test]
    fn pick_follows_policy_and_health() {
        let (_rt, w) = pool("first-available");
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

        let (_rt, w) = pool("round-robin");
        let picks: Vec<_> = (0..6).map(|_| w.pick(0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        let (_rt, w) = pool("least-outstanding");
        w.servers[0].outstanding.set(5);
        w.servers[2].outstanding.set(1);
        assert_eq!(w.pick(0), Some(1));
        assert_eq!(w.pick(0b010), Some(2));
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

//! Sockets and workers: one thread per worker, each with its own single-threaded runtime for
//! TCP (clients and pooled upstream connections), and per listen address its own
//! `SO_REUSEPORT` TCP listener and UDP socket; each UDP socket gets its own front thread
//! (`udp_front`), which also forwards its queries over UDP. Nothing on the per-packet path
//! takes a lock.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::config::{ClientAddress, UdpSteering};
use crate::dns::{self, rcode};
use crate::forward::upstream::{TcpPool, WorkerServer, WorkerUpstreams};
use crate::server::pipeline::{self, Action, Ctx};
use crate::server::signing::SignState;
use crate::server::udp_batch;
use crate::server::udp_front::UdpFront;
use crate::state::{Shared, Snapshot};
use crate::telemetry::Report;
use crate::telemetry::dns_metrics::AnswerPath;
use crate::telemetry::metrics::{Decision, DropReason, Malformed, Transport, WorkerMetrics};
use crate::telemetry::querylog::{Event, Sampler};

/// How long a closing TCP connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

/// Sockets bound before the workers start, so bind errors surface at start-up.
pub(crate) struct BoundSockets {
    /// Per listen address: one UDP socket and one TCP listener per worker.
    pub udp: Vec<Vec<std::net::UdpSocket>>,
    pub tcp: Vec<Vec<std::net::TcpListener>>,
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
}

fn reuseport_socket(
    addr: SocketAddr,
    ty: Type,
    proto: Protocol,
    buffer: usize,
) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if buffer > 0 && ty == Type::DGRAM {
        // The kernel caps these at net.core.rmem_max / wmem_max; failure is not fatal.
        let _ = s.set_recv_buffer_size(buffer);
        let _ = s.set_send_buffer_size(buffer);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Largest UDP payload for which IPv4 answers leave with DF set (RFC 9715's recommended
/// maximum DNS/UDP payload): above it the operator chose fragmentable answers.
pub(crate) const DONT_FRAGMENT_MAX_PAYLOAD: u16 = 1400;

/// IPv4 UDP answers with the Don't Fragment bit and no path-MTU state (RFC 9715 R4:
/// fragmented DNS answers are dropped or spoofed on the way, and forged ICMP "fragmentation
/// needed" must not shrink them). With DF set, the kernel also skips computing a random IP ID
/// for every datagram. Best effort: a kernel without the option just keeps its default.
fn set_dont_fragment(s: &Socket, addr: SocketAddr) {
    use std::os::fd::AsRawFd;
    if !addr.is_ipv4() {
        // IPv6 routers never fragment; the source only does for answers over the path MTU.
        return;
    }
    if let Err(e) = udp_batch::set_ip_mtu_discover(s.as_raw_fd(), libc::IP_PMTUDISC_PROBE) {
        tracing::debug!(error = %e, "IP_MTU_DISCOVER not set");
    }
}

/// Binds `workers` UDP sockets and TCP listeners on every address. For port 0, one port free
/// for both UDP and TCP is found first, then every worker binds it. `dont_fragment`: see
/// [`DONT_FRAGMENT_MAX_PAYLOAD`].
pub(crate) fn bind_all(
    listen: &[SocketAddr],
    workers: usize,
    buffer: usize,
    dont_fragment: bool,
    steering: UdpSteering,
) -> std::io::Result<BoundSockets> {
    let mut out = BoundSockets {
        udp: Vec::new(),
        tcp: Vec::new(),
        addrs: Vec::new(),
    };
    for &want in listen {
        let mut last_err = None;
        let mut bound = None;
        for _ in 0..32 {
            match bind_one(want, workers, buffer, dont_fragment, steering) {
                Ok(b) => {
                    bound = Some(b);
                    break;
                }
                Err(e) if want.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let (addr, udp, tcp) = bound
            .ok_or_else(|| last_err.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()))?;
        out.addrs.push(addr);
        out.udp.push(udp);
        out.tcp.push(tcp);
    }
    Ok(out)
}

type Bound = (
    SocketAddr,
    Vec<std::net::UdpSocket>,
    Vec<std::net::TcpListener>,
);

fn bind_one(
    want: SocketAddr,
    workers: usize,
    buffer: usize,
    dont_fragment: bool,
    steering: UdpSteering,
) -> std::io::Result<Bound> {
    let first_tcp = reuseport_socket(want, Type::STREAM, Protocol::TCP, buffer)?;
    let addr = first_tcp
        .local_addr()?
        .as_socket()
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    first_tcp.listen(1024)?;
    let mut tcp = vec![std::net::TcpListener::from(first_tcp)];
    let mut udp = Vec::with_capacity(workers);
    for i in 0..workers {
        let u = reuseport_socket(addr, Type::DGRAM, Protocol::UDP, buffer)?;
        if dont_fragment {
            set_dont_fragment(&u, addr);
        }
        if i == 0 && steering == UdpSteering::Cpu {
            // One program serves the whole group; a kernel without it keeps hashing.
            use std::os::fd::AsRawFd;
            if let Err(e) = udp_batch::steer_reuseport_by_cpu(u.as_raw_fd(), workers as u32) {
                tracing::warn!(error = %e, %addr, "udp_steering = \"cpu\" not available: hashing");
            }
        }
        udp.push(std::net::UdpSocket::from(u));
        if i > 0 {
            let t = reuseport_socket(addr, Type::STREAM, Protocol::TCP, buffer)?;
            t.listen(1024)?;
            tcp.push(std::net::TcpListener::from(t));
        }
    }
    Ok((addr, udp, tcp))
}

/// One worker's state, shared by its tasks (single thread: `Rc` and `RefCell`).
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    snap: RefCell<arc_swap::Cache<Arc<arc_swap::ArcSwap<Snapshot>>, Arc<Snapshot>>>,
    metrics: Arc<WorkerMetrics>,
    sampler: RefCell<Sampler>,
    sign: RefCell<SignState>,
    upstreams: RefCell<Rc<WorkerUpstreams>>,
    /// This worker's open TCP client connections (waited for at shutdown).
    tcp_open: Cell<usize>,
}

impl Worker {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.borrow_mut().load().clone()
    }

    /// Runs the pipeline for one packet with this worker's state.
    fn handle(
        &self,
        snap: &Snapshot,
        pkt: &[u8],
        from: SocketAddr,
        t: Transport,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Action {
        let mut sampler = self.sampler.borrow_mut();
        let mut sign = self.sign.borrow_mut();
        let mut ctx = Ctx {
            snap,
            limiter: &self.shared.limiter,
            metrics: &self.metrics,
            log: &self.shared.log,
            sampler: &mut sampler,
            max_udp_payload: self.shared.restart.max_udp_payload,
            notify: &self.shared.notify_tx,
            worker: self.index,
            latency: pipeline::Latency::PerQuery,
            sign: &mut sign,
            cache: self.shared.cache.as_ref(),
            tap: self.shared.dnstap.as_ref(),
            // Only TCP comes here: a proven source, never blocked.
            blocks: None,
        };
        pipeline::handle(&mut ctx, pkt, from, t, received, out)
    }

    /// The worker's TCP view of the pool, rebuilt when a reload replaced it.
    fn upstreams(&self, snap: &Snapshot) -> Rc<WorkerUpstreams> {
        let current = self.upstreams.borrow().clone();
        if Arc::ptr_eq(&current.set, &snap.upstream) {
            return current;
        }
        let next = Rc::new(WorkerUpstreams::build(
            snap.upstream.clone(),
            Some(&current),
        ));
        *self.upstreams.borrow_mut() = next.clone();
        next
    }
}

/// Runs one worker until `stop` turns true and its in-flight work is done.
pub(crate) fn run_worker(
    index: usize,
    shared: Arc<Shared>,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let mut fronts = Vec::new();
    let result = local.block_on(&rt, async {
        // Each UDP socket gets its own thread (`udp_front`), which forwards its queries too.
        for (listener, sock) in udp.into_iter().enumerate() {
            let front = UdpFront::new(index, listener, shared.clone(), sock, stop.clone())?;
            fronts.push(
                std::thread::Builder::new()
                    .name(format!("dnsteer-udp-{index}"))
                    .spawn(move || front.run())?,
            );
        }
        let snap0 = shared.snapshot.load_full();
        let worker = Rc::new(Worker {
            index,
            snap: RefCell::new(arc_swap::Cache::new(shared.snapshot.clone())),
            metrics: shared.metrics.register_worker(),
            sampler: RefCell::new(Sampler::default()),
            sign: RefCell::new(SignState::for_thread(&shared)),
            upstreams: RefCell::new(Rc::new(WorkerUpstreams::build(
                snap0.upstream.clone(),
                None,
            ))),
            tcp_open: Cell::new(0),
            shared,
        });
        let mut tasks = Vec::new();
        for l in tcp {
            let l = TcpListener::from_std(l)?;
            tasks.push(tokio::task::spawn_local(tcp_accept_loop(
                worker.clone(),
                l,
                stop.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Let every TCP connection write its in-flight answers and close (bounded). Returning
        // drops the LocalSet, which would cancel those tasks mid-query.
        let snap = worker.snapshot();
        let bound = snap.upstream.config.timeout * snap.upstream.config.attempts as u32
            + Duration::from_millis(100);
        let until = Instant::now() + bound;
        while Instant::now() < until && worker.tcp_open.get() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<(), std::io::Error>(())
    });
    // The front threads see the stop flag too and finish their forwarded queries (bounded the
    // same way). If start-up failed half way, those already started serve UDP until the app
    // stops.
    if let Err(e) = &result {
        tracing::error!(worker = index, error = %e, "worker start-up failed; its TCP is not served");
    }
    drop(local);
    for f in fronts {
        if f.join().is_err() {
            tracing::error!(worker = index, "a UDP front-end thread panicked");
        }
    }
    tracing::debug!(worker = index, "worker stopped");
    result
}

/// Offers PowerDNS's answer `resp` to the packet cache, if there is one.
fn cache_answer(
    w: &Worker,
    snap: &Snapshot,
    q: &dns::Query,
    client: std::net::IpAddr,
    resp: &[u8],
    added: dns::Added,
    now: Instant,
) {
    if let Some(cache) = &w.shared.cache
        && let Some(req) = cache.request(q, client, &snap.config.upstream)
    {
        cache.insert(&req, q, resp, added, now, &w.metrics);
    }
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

async fn tcp_accept_loop(w: Rc<Worker>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let limits = &w.shared.restart.tcp;
        let counts = &w.shared.tcp_counts;
        let ip = peer.ip().to_canonical();
        let total = counts.total.fetch_add(1, Ordering::Relaxed) + 1;
        let per_client = {
            let mut e = counts.per_client.entry(ip).or_insert(0);
            *e += 1;
            *e
        };
        w.tcp_open.set(w.tcp_open.get() + 1);
        let guard = ConnGuard {
            worker: w.clone(),
            ip,
        };
        if total > limits.max_connections || per_client > limits.max_connections_per_client {
            w.metrics.dropped(DropReason::TcpConnectionCap);
            drop(stream);
            drop(guard);
            continue;
        }
        w.metrics.tcp_accepted.inc();
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(tcp_connection(w.clone(), stream, peer, guard, stop.clone()));
    }
}

/// Releases a connection's slots in the shared and worker counts when the connection ends.
struct ConnGuard {
    worker: Rc<Worker>,
    ip: std::net::IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let open = &self.worker.tcp_open;
        open.set(open.get().saturating_sub(1));
        let c = &self.worker.shared.tcp_counts;
        c.total.fetch_sub(1, Ordering::Relaxed);
        c.per_client.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

async fn tcp_connection(
    w: Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    _guard: ConnGuard,
    mut stop: watch::Receiver<bool>,
) {
    let limits = w.shared.restart.tcp.clone();
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    // With `client_address = "proxy"`: this client's own upstream connections, made on its
    // first forwarded query and closed with it.
    let own = Rc::new(ClientPools::new(peer, local));
    let (mut rd, wr) = stream.into_split();
    // Responses are written by one task; the queue is bounded by the in-flight limit, and a
    // client that does not read stalls only itself: its permits stay taken, we stop reading.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(limits.max_in_flight_per_connection);
    let idle = limits.idle_timeout;
    let writer = tokio::task::spawn_local(tcp_writer(wr, rx, idle));
    let permits = Arc::new(Semaphore::new(limits.max_in_flight_per_connection));
    let mut served: u64 = 0;
    let mut out = Vec::with_capacity(1024);
    loop {
        if limits.max_queries_per_connection > 0 && served >= limits.max_queries_per_connection {
            w.metrics.tcp_closed_query_cap.inc();
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(msg) = read_tcp_query(&w, &mut rd, idle, &mut stop).await else {
            break;
        };
        served += 1;
        let received = Instant::now();
        let snap = w.snapshot();
        let action = w.handle(&snap, &msg, peer, Transport::Tcp, received, &mut out);
        match action {
            Action::Reply => {
                if tx.send(out.clone()).await.is_err() {
                    break;
                }
                drop(permit);
            }
            Action::Drop => drop(permit),
            Action::Forward { query, report } => {
                w.metrics.query(Transport::Tcp, Decision::Forwarded);
                let forward = TcpForward {
                    msg,
                    query,
                    peer,
                    received,
                    report,
                    own: own.clone(),
                };
                tokio::task::spawn_local(forward.run(
                    w.clone(),
                    w.upstreams(&snap),
                    tx.clone(),
                    permit,
                ));
            }
        }
    }
    // Wait for in-flight queries (they hold permits) so their answers are written, then close.
    let _ = permits
        .acquire_many(limits.max_in_flight_per_connection as u32)
        .await;
    drop(tx);
    let _ = writer.await;
    linger(&mut rd).await;
}

/// Writes the connection's answers in order; stops on a client that does not read within
/// `idle`. Shuts the write side down once every sender is gone.
async fn tcp_writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    idle: Duration,
) {
    let mut frame = Vec::with_capacity(514);
    while let Some(msg) = rx.recv().await {
        match tokio::time::timeout(idle, dns::write_frame(&mut wr, &msg, &mut frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = wr.shutdown().await;
}

/// Reads one length-prefixed query; `None` closes the connection (client closed, idle, a bad
/// frame, or stop).
async fn read_tcp_query(
    w: &Worker,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    idle: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<u8>> {
    let len = tokio::select! {
        r = tokio::time::timeout(idle, rd.read_u16()) => match r {
            Ok(Ok(n)) => n as usize,
            Ok(Err(_)) => return None,
            Err(_) => {
                w.metrics.tcp_closed_idle.inc();
                return None;
            }
        },
        _ = stop.changed() => return None,
    };
    if len < dns::HEADER_LEN {
        w.metrics.dropped(DropReason::TcpFrame);
        return None;
    }
    let mut msg = vec![0u8; len];
    // The body must follow promptly: a slow trickle is treated like an idle client.
    match tokio::time::timeout(idle, rd.read_exact(&mut msg)).await {
        Ok(Ok(_)) => Some(msg),
        _ => {
            w.metrics.dropped(DropReason::TcpFrame);
            None
        }
    }
}

/// A TCP query on its way to PowerDNS.
struct TcpForward {
    msg: Vec<u8>,
    query: dns::Query,
    peer: SocketAddr,
    received: Instant,
    report: Report,
    /// The client's own upstream connections (`client_address = "proxy"`).
    own: Rc<ClientPools>,
}

impl TcpForward {
    /// Forwards, accounts the answer (or SERVFAIL) and queues it for the writer; the permit
    /// is released once it is queued.
    async fn run(
        self,
        w: Rc<Worker>,
        ups: Rc<WorkerUpstreams>,
        tx: mpsc::Sender<Vec<u8>>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let (resp, server, path) =
            forward_tcp(&w, &ups, &self.own, &self.msg, &self.query, self.peer).await;
        let snap = w.snapshot();
        let mut resp = resp;
        let asked = (&self.query, self.peer.ip());
        let _ = pipeline::cookie_for_answer(&snap, asked, &self.msg, None, &mut resp);
        pipeline::forwarded_done(
            &snap,
            &w.metrics,
            &w.shared,
            &pipeline::Forwarded {
                transport: Transport::Tcp,
                client: self.peer,
                query: &self.query,
                packet: &self.msg,
                received: self.received,
                report: self.report,
                path,
            },
            &resp,
            server,
        );
        let _ = tx.send(resp).await;
        drop(permit);
    }
}

/// After our FIN: discards what the client still sends, briefly, so the close is not an RST.
async fn linger(rd: &mut tokio::net::tcp::OwnedReadHalf) {
    // Our FIN is out. Discard what the client sent that we will not answer (pipelined queries
    // after a stop or a query cap) until it closes too, briefly: closing with unread data makes
    // the kernel send RST, and an RST can destroy answers the client has not read yet.
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// One TCP client's own connections to PowerDNS (one per server, pipelined), each opened with
/// a PROXY header naming the client: a header speaks for a whole connection, so connections
/// shared by many clients cannot carry one. Dropped, and closed, with the client connection.
struct ClientPools {
    header: Vec<u8>,
    pools: RefCell<Vec<(SocketAddr, Rc<TcpPool>)>>,
}

impl ClientPools {
    fn new(peer: SocketAddr, local: SocketAddr) -> ClientPools {
        let mut header = Vec::with_capacity(dns::proxy::MAX_LEN);
        dns::proxy::header(peer, local, false, &mut header);
        ClientPools {
            header,
            pools: RefCell::new(Vec::new()),
        }
    }

    fn pool(&self, server: SocketAddr) -> Rc<TcpPool> {
        let mut pools = self.pools.borrow_mut();
        if let Some((_, p)) = pools.iter().find(|(a, _)| *a == server) {
            return p.clone();
        }
        let p = Rc::new(TcpPool::with_preamble(server, 1, self.header.clone()));
        pools.push((server, p.clone()));
        p
    }
}

/// Forwards a TCP client's query over the pooled TCP connections, trying up to `attempts`
/// servers; returns the client's response (stale or SERVFAIL if every attempt failed), the
/// server that answered, and the path that made the response.
async fn forward_tcp(
    w: &Worker,
    ups: &WorkerUpstreams,
    own: &ClientPools,
    msg: &[u8],
    q: &dns::Query,
    peer: SocketAddr,
) -> (Vec<u8>, Option<SocketAddr>, AnswerPath) {
    let mut tried = 0u64;
    let mut buf = Vec::with_capacity(msg.len() + 32);
    let mut out = Vec::with_capacity(512);
    for _ in 0..ups.set.config.attempts {
        let Some(idx) = ups.pick(tried) else { break };
        tried |= 1 << idx;
        let ws = &ups.servers[idx];
        // ID 0 here: the pool sets one that is free on the connection it picks.
        let added =
            dns::rewrite_for_upstream(msg, q, 0, ups.ecs_for(peer.ip().to_canonical()), &mut buf);
        let Some(resp) = ask_tcp(w, ups, own, ws, &buf, q).await else {
            continue;
        };
        if dns::restore_response(&resp, q.id, added, None, &mut out).is_ok() {
            let snap = w.snapshot();
            cache_answer(w, &snap, q, peer.ip(), &resp, added, Instant::now());
            return (out, Some(ws.server.addr), AnswerPath::Forwarded);
        }
        w.metrics.malformed(Malformed::BadUpstreamResponse);
        ws.counters.errors.inc();
    }
    let (out, path) = unanswered_tcp(w, msg, q, peer, out);
    (out, None, path)
}

/// One attempt on server `ws` with the rewritten query `buf`: PowerDNS's answer to it, or
/// None (counted against the server) when none that matches `q` came in time.
async fn ask_tcp(
    w: &Worker,
    ups: &WorkerUpstreams,
    own: &ClientPools,
    ws: &WorkerServer,
    buf: &[u8],
    q: &dns::Query,
) -> Option<Vec<u8>> {
    ws.counters.requests.inc();
    let sent = Instant::now();
    let timeout = ups.set.config.timeout;
    // Dropped at the end of the attempt, whatever its outcome: that frees its ID.
    let proxied = match ups.set.config.client_address {
        ClientAddress::Proxy => Some(own.pool(ws.server.addr)),
        _ => None,
    };
    let pool = proxied.as_deref().unwrap_or(&ws.tcp);
    let Ok(mut waiter) = pool.send(buf.to_vec(), timeout) else {
        ws.counters.errors.inc();
        return None;
    };
    match tokio::time::timeout(timeout, waiter.answer()).await {
        Ok(Ok(resp)) if dns::response_matches(&resp, waiter.id(), q) => {
            ws.counters.responses.inc();
            ws.counters
                .latency
                .observe_ns(sent.elapsed().as_nanos() as u64);
            return Some(resp);
        }
        Ok(Ok(_)) => {
            w.metrics.malformed(Malformed::MismatchedUpstreamResponse);
            ws.counters.errors.inc();
        }
        Ok(Err(_)) => ws.counters.errors.inc(),
        Err(_) => {
            ws.counters.timeouts.inc();
            w.shared.log.event(Event::UpstreamTimeout {
                server: ws.server.addr,
                qname: q.qname,
                qtype: q.qtype,
            });
        }
    }
    None
}

/// The answer to a TCP query no server answered: its stale cache entry if there is one,
/// else SERVFAIL (counted and logged). Written into `out`, which it returns with its path.
fn unanswered_tcp(
    w: &Worker,
    msg: &[u8],
    q: &dns::Query,
    peer: SocketAddr,
    mut out: Vec<u8>,
) -> (Vec<u8>, AnswerPath) {
    let snap = w.snapshot();
    let cache = w.shared.cache.as_ref();
    let asked = (q, peer.ip());
    if let Some(path) = pipeline::stale_answer(cache, &snap, &w.metrics, asked, msg, None, &mut out)
    {
        return (out, path);
    }
    w.metrics.dropped(DropReason::UpstreamUnavailable);
    w.shared.log.event(Event::ServFail {
        client: peer.ip(),
        qname: q.qname,
        qtype: q.qtype,
        reason: "upstream",
    });
    out.clear();
    dns::write_error(msg, rcode::SERVFAIL, &mut out);
    (out, AnswerPath::Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn mtu_discover(s: &std::net::UdpSocket) -> libc::c_int {
        udp_batch::ip_mtu_discover(s.as_raw_fd()).unwrap()
    }

    #[test]
    fn ipv4_udp_answers_leave_with_dont_fragment_only_when_asked() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let df = bind_all(&[any], 2, 0, true, UdpSteering::Hash).unwrap();
        assert_eq!(df.udp[0].len(), 2);
        for s in &df.udp[0] {
            assert_eq!(mtu_discover(s), libc::IP_PMTUDISC_PROBE);
        }
        let plain = bind_all(&[any], 1, 0, false, UdpSteering::Hash).unwrap();
        assert_ne!(mtu_discover(&plain.udp[0][0]), libc::IP_PMTUDISC_PROBE);
    }

    /// `udp_steering = "cpu"`: a datagram lands on socket (receiving CPU mod workers). On
    /// loopback the receiving CPU is the sender's, so a sender pinned to CPU c reaches socket
    /// c mod 2 every time (with the hash, one fixed source reaches one socket whatever its CPU).
    #[test]
    fn cpu_steering_sends_each_cpu_to_its_socket() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if cpus < 2 {
            eprintln!("one CPU: nothing to steer");
            return;
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = bind_all(&[any], 2, 0, false, UdpSteering::Cpu).unwrap();
        let to = bound.addrs[0];
        let socks = &bound.udp[0];
        for cpu in 0..2 {
            std::thread::spawn(move || {
                udp_batch::pin_to_cpu(cpu).unwrap();
                // One source port for both CPUs' rounds would hash to one socket; here each
                // round has its own, and the CPU decides.
                let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..20 {
                    tx.send_to(b"x", to).unwrap();
                }
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let mut got = [0usize; 2];
            let mut buf = [0u8; 16];
            for (i, s) in socks.iter().enumerate() {
                while s.recv_from(&mut buf).is_ok() {
                    got[i] += 1;
                }
            }
            assert_eq!(got[cpu], 20, "sent from CPU {cpu}: {got:?}");
        }
    }
}

//! One UDP front thread's forwarding state: a connected socket per PowerDNS server, the
//! pending table of each, and the deadline queue of their attempts. The thread's event loop
//! owns it (plain `&mut`: no lock, no runtime) and does the I/O in batches; this type decides
//! which server, which ID, and what is still in flight.
//!
//! A reload that replaces the pool keeps the sockets and pending queries of the servers that
//! stay. Servers it removed stay here, after the pool's, until their last query is answered
//! or expired; then their sockets close.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::ClientAddress;
use crate::dns;
use crate::forward::upstream::{
    ForwardError, Pending, ServerCounters, UpstreamServer, UpstreamSet, pick_server,
};

/// In-flight UDP queries per server and front thread; beyond this a query gets SERVFAIL
/// (counted as `pending_full`): a dead server cannot grow the table without bound.
pub(crate) const MAX_PENDING_PER_SERVER: usize = 16_384;

type PendingTable = HashMap<u16, Pending, foldhash::fast::RandomState>;

/// One server as one front thread sees it.
pub(crate) struct UdpServer {
    pub server: Arc<UpstreamServer>,
    pub counters: Arc<ServerCounters>,
    /// Connected: the kernel only delivers datagrams from the server's address and port.
    sock: std::net::UdpSocket,
    pending: PendingTable,
}

impl UdpServer {
    fn open(server: Arc<UpstreamServer>, buffer: usize) -> std::io::Result<UdpServer> {
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
            // Answers from PowerDNS queue here while the thread is busy: the kernel default
            // (~208 KiB) overflows within a short pause at high rates. Capped by rmem_max.
            let _ = sock.set_recv_buffer_size(buffer);
            let _ = sock.set_send_buffer_size(buffer);
        }
        sock.set_nonblocking(true)?;
        sock.bind(&bind.into())?;
        sock.connect(&server.addr.into())?;
        Ok(UdpServer {
            counters: server.register(),
            server,
            sock: sock.into(),
            pending: PendingTable::default(),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// A front thread's view of the pool.
pub(crate) struct UdpUpstreams {
    set: Arc<UpstreamSet>,
    /// The set's servers in its order (`active` of them), then servers a reload removed that
    /// still have queries in flight. Indices are stable between `update`s.
    servers: Vec<UdpServer>,
    active: usize,
    rr: usize,
    /// (send time, server index, id) of attempts, in send order: every attempt has the same
    /// timeout, so the front is the next to expire (a reload changing the timeout applies it
    /// to the attempts in flight too).
    sent: VecDeque<(Instant, usize, u16)>,
    rng: fastrand::Rng,
    /// Scratch for a PROXY header (`client_address = "proxy"`).
    header: Vec<u8>,
    max_pending: usize,
    /// SO_RCVBUF/SO_SNDBUF for new sockets (`[server].socket_buffer`).
    buffer: usize,
}

impl UdpUpstreams {
    /// Opens a socket per server of `set`. `max_pending`: see [`MAX_PENDING_PER_SERVER`].
    pub(crate) fn build(
        set: Arc<UpstreamSet>,
        max_pending: usize,
        buffer: usize,
    ) -> std::io::Result<UdpUpstreams> {
        let servers = set
            .servers
            .iter()
            .map(|s| UdpServer::open(s.clone(), buffer))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(UdpUpstreams {
            active: servers.len(),
            servers,
            set,
            rr: 0,
            sent: VecDeque::new(),
            rng: fastrand::Rng::new(),
            header: Vec::with_capacity(dns::proxy::MAX_LEN),
            max_pending,
            buffer,
        })
    }

    /// Caps the queries in flight per server (see [`MAX_PENDING_PER_SERVER`]).
    pub(crate) fn set_max_pending(&mut self, max: usize) {
        self.max_pending = max;
    }

    pub(crate) fn set(&self) -> &Arc<UpstreamSet> {
        &self.set
    }

    /// Every server still polled (the pool's and those draining), by index.
    pub(crate) fn servers(&self) -> &[UdpServer] {
        &self.servers
    }

    /// Queries in flight on every server.
    pub(crate) fn in_flight(&self) -> usize {
        self.servers.iter().map(|s| s.pending.len()).sum()
    }

    /// Follows a reload: when `set` is not the pool in use, rebuilds the list keeping the
    /// sockets and pending queries of servers that stay and of removed ones still in flight
    /// (their attempts keep their deadlines). Also closes removed servers once drained.
    /// Returns whether indices changed; on a socket error nothing changed.
    pub(crate) fn update(&mut self, set: &Arc<UpstreamSet>) -> std::io::Result<bool> {
        let drained = self.servers[self.active..]
            .iter()
            .any(|s| s.pending.is_empty());
        if Arc::ptr_eq(set, &self.set) && !drained {
            return Ok(false);
        }
        // New servers' sockets first, so a failure leaves everything as it was.
        let mut fresh = Vec::with_capacity(set.servers.len());
        for s in &set.servers {
            let known = self.servers.iter().any(|w| Arc::ptr_eq(&w.server, s));
            fresh.push(if known {
                None
            } else {
                Some(UdpServer::open(s.clone(), self.buffer)?)
            });
        }
        let mut old: Vec<Option<UdpServer>> = std::mem::take(&mut self.servers)
            .into_iter()
            .map(Some)
            .collect();
        // Old index → new index.
        let mut moved: Vec<Option<usize>> = vec![None; old.len()];
        let mut servers = Vec::with_capacity(set.servers.len());
        for (s, new) in set.servers.iter().zip(fresh) {
            let kept = old
                .iter()
                .position(|o| o.as_ref().is_some_and(|w| Arc::ptr_eq(&w.server, s)));
            let ws = match (kept, new) {
                (Some(i), _) => {
                    moved[i] = Some(servers.len());
                    old[i].take().expect("present")
                }
                (None, Some(ws)) => ws,
                (None, None) => unreachable!("a known server is in the old list"),
            };
            servers.push(ws);
        }
        let active = servers.len();
        for (i, o) in old.iter_mut().enumerate() {
            if let Some(ws) = o.take()
                && !ws.pending.is_empty()
            {
                moved[i] = Some(servers.len());
                servers.push(ws);
            }
            // Else dropped here: a removed server with nothing in flight, socket closed.
        }
        let remap = |mask: u64| {
            (0..64)
                .filter(|&i| mask & (1 << i) != 0)
                .filter_map(|i| moved.get(i).copied().flatten())
                .filter(|&j| j < active)
                .fold(0u64, |m, j| m | (1 << j))
        };
        for ws in &mut servers {
            for p in ws.pending.values_mut() {
                p.tried = remap(p.tried);
            }
        }
        self.sent = std::mem::take(&mut self.sent)
            .into_iter()
            .filter_map(|(d, i, id)| Some((d, moved.get(i).copied().flatten()?, id)))
            .collect();
        self.servers = servers;
        self.active = active;
        self.set = set.clone();
        Ok(true)
    }

    /// Picks a server of the pool for an attempt (see [`pick_server`]).
    pub(crate) fn pick(&mut self, tried: u64) -> Option<usize> {
        let servers = &self.servers[..self.active];
        pick_server(
            self.set.config.policy,
            &mut self.rr,
            servers.len(),
            tried,
            |i| servers[i].server.is_healthy(),
            |i| servers[i].pending.len(),
        )
    }

    /// Records `p` as in flight on server `idx` (from `pick`) under a fresh ID and writes the
    /// query to send into `out` (after a PROXY header naming the client, in proxy mode). Returns the ID; the caller sends `out` on that server's
    /// socket and reports a failed send with `send_failed`.
    pub(crate) fn start_attempt(
        &mut self,
        idx: usize,
        mut p: Pending,
        out: &mut Vec<u8>,
    ) -> Result<u16, Box<(ForwardError, Pending)>> {
        let ecs = self.set.ecs_for(p.client.addr.ip().to_canonical());
        let ws = &mut self.servers[idx];
        if ws.pending.len() >= self.max_pending {
            return Err(Box::new((ForwardError::PendingFull, p)));
        }
        let id = loop {
            let id = self.rng.u16(..);
            if !ws.pending.contains_key(&id) {
                break id;
            }
        };
        p.added = dns::rewrite_for_upstream(&p.packet, &p.query, id, ecs, out);
        if self.set.config.client_address == ClientAddress::Proxy {
            // PowerDNS reads the client from the header and answers without one.
            dns::proxy::header(p.client.addr, p.client.local, true, &mut self.header);
            out.splice(0..0, self.header.iter().copied());
        }
        ws.counters.requests.inc();
        p.tried |= 1 << idx;
        p.attempt += 1;
        p.sent_at = Instant::now();
        self.sent.push_back((p.sent_at, idx, id));
        ws.pending.insert(id, p);
        Ok(id)
    }

    /// Attempt `id` on server `idx` did not leave the socket: it is no longer in flight.
    pub(crate) fn send_failed(&mut self, idx: usize, id: u16) -> Option<Pending> {
        let ws = self.servers.get_mut(idx)?;
        let p = ws.pending.remove(&id)?;
        ws.counters.errors.inc();
        Some(p)
    }

    /// Removes and returns the pending query of server `idx` that `resp` answers: the ID it
    /// carries, with the same question. Anything else is left alone (None).
    pub(crate) fn take_matching(&mut self, idx: usize, resp: &[u8]) -> Option<Pending> {
        if resp.len() < dns::HEADER_LEN {
            return None;
        }
        let id = u16::from_be_bytes([resp[0], resp[1]]);
        let ws = self.servers.get_mut(idx)?;
        match ws.pending.get(&id) {
            Some(p) if dns::response_matches(resp, id, &p.query) => {}
            _ => return None,
        }
        let p = ws.pending.remove(&id)?;
        ws.counters.responses.inc();
        ws.counters
            .latency
            .observe_ns(p.sent_at.elapsed().as_nanos() as u64);
        Some(p)
    }

    /// Pops every attempt whose deadline passed and is still pending, with the index of the
    /// server that attempt went to (the one that timed out, not the first one tried).
    pub(crate) fn expired(&mut self, now: Instant, out: &mut Vec<(usize, Pending)>) {
        let timeout = self.set.config.timeout;
        while let Some(&(sent_at, idx, id)) = self.sent.front() {
            if sent_at + timeout > now {
                break;
            }
            self.sent.pop_front();
            let Some(ws) = self.servers.get_mut(idx) else {
                continue;
            };
            // The slot may hold a newer query that reused the ID: only expire this attempt.
            if ws.pending.get(&id).is_some_and(|p| p.sent_at == sent_at) {
                let p = ws.pending.remove(&id).expect("present");
                ws.counters.timeouts.inc();
                out.push((idx, p));
            }
        }
    }

    /// When the next attempt in flight runs out; attempts already settled are dropped from
    /// the front of the queue on the way, so an idle thread does not wake up for them.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        let timeout = self.set.config.timeout;
        while let Some(&(sent_at, idx, id)) = self.sent.front() {
            let live = self
                .servers
                .get(idx)
                .is_some_and(|ws| ws.pending.get(&id).is_some_and(|p| p.sent_at == sent_at));
            if live {
                return Some(sent_at + timeout);
            }
            self.sent.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Added;
    use crate::forward::upstream::UdpClient;
    use std::time::Duration;

    fn set(servers: &[SocketAddr], previous: Option<&UpstreamSet>) -> Arc<UpstreamSet> {
        let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "[upstream]\nservers = [{}]\ntimeout = \"100ms\"\nadd_ecs = true\n",
            list.join(", ")
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        UpstreamSet::new(&cfg.upstream, previous)
    }

    fn pending(name: &str) -> Pending {
        let name = dns::name_from_text(name).unwrap();
        let packet = dns::build_query(0x4242, &name, dns::TYPE_SOA, None);
        let query = dns::parse_query(&packet).unwrap();
        Pending {
            client: UdpClient {
                addr: "192.0.2.1:53000".parse().unwrap(),
                local: "127.0.0.1:53".parse().unwrap(),
            },
            orig_id: query.id,
            added: Added::Nothing,
            query,
            packet,
            attempt: 0,
            tried: 0,
            sent_at: Instant::now(),
            received_at: Instant::now(),
            report: crate::telemetry::Report {
                sampled: false,
                tapped: false,
                zone: crate::telemetry::dns_metrics::ZoneSlot::OTHER,
            },
        }
    }

    /// A server's reply to `got` (the query as forwarded): QR set, same ID and question.
    fn answer(got: &[u8]) -> Vec<u8> {
        let mut a = got.to_vec();
        a[2] |= 0x80;
        a
    }

    fn bound() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    #[test]
    fn an_attempt_is_matched_by_id_and_question_then_expires_with_its_server() {
        let target = bound();
        let mut ups =
            UdpUpstreams::build(set(&[target.local_addr().unwrap()], None), 8, 0).unwrap();
        let idx = ups.pick(0).unwrap();
        let mut out = Vec::new();
        let id = ups
            .start_attempt(idx, pending("a.test."), &mut out)
            .unwrap_or_else(|_| panic!("started"));
        assert_eq!(u16::from_be_bytes([out[0], out[1]]), id);
        ups.servers()[idx].sock.send(&out).unwrap();
        let mut got = [0u8; 512];
        let n = target.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &out[..], "sent as rewritten (new ID, ECS added)");
        assert_eq!(ups.in_flight(), 1);

        let mut wrong = answer(&got[..n]);
        wrong[12 + 1] = b'b';
        assert!(ups.take_matching(idx, &wrong).is_none(), "other question");
        let mut wrong = answer(&got[..n]);
        wrong[0] ^= 1;
        assert!(ups.take_matching(idx, &wrong).is_none(), "other ID");
        let p = ups.take_matching(idx, &answer(&got[..n])).expect("matches");
        assert_eq!((p.attempt, p.tried, p.added), (1, 1, Added::OptRecord));
        assert_eq!(ups.in_flight(), 0);
        assert_eq!(
            ups.next_deadline(),
            None,
            "an answered attempt is no deadline"
        );

        // Unanswered: expires after the timeout, naming the server.
        ups.start_attempt(idx, pending("b.test."), &mut out)
            .unwrap_or_else(|_| panic!("started"));
        let deadline = ups.next_deadline().expect("one in flight");
        let mut expired = Vec::new();
        ups.expired(deadline - Duration::from_millis(1), &mut expired);
        assert!(expired.is_empty());
        ups.expired(deadline, &mut expired);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, idx);
        assert_eq!(ups.servers()[idx].counters.timeouts.get(), 1);
        assert_eq!(ups.in_flight(), 0);
    }

    #[test]
    fn the_pending_table_is_bounded_and_failed_sends_leave_it() {
        let target = bound();
        let mut ups =
            UdpUpstreams::build(set(&[target.local_addr().unwrap()], None), 2, 0).unwrap();
        let mut out = Vec::new();
        let a = ups
            .start_attempt(0, pending("a.test."), &mut out)
            .ok()
            .unwrap();
        ups.start_attempt(0, pending("b.test."), &mut out)
            .ok()
            .unwrap();
        let full = ups.start_attempt(0, pending("c.test."), &mut out);
        assert!(matches!(full, Err(e) if matches!(e.0, ForwardError::PendingFull)));
        assert!(ups.send_failed(0, a).is_some());
        assert_eq!(ups.in_flight(), 1);
        assert_eq!(ups.servers()[0].counters.errors.get(), 1);
        assert!(ups.start_attempt(0, pending("c.test."), &mut out).is_ok());
    }

    #[test]
    fn a_reload_keeps_sockets_and_queries_of_servers_that_stay_and_drains_removed_ones() {
        let (a, b, c) = (bound(), bound(), bound());
        let (a, b, c) = (
            a.local_addr().unwrap(),
            b.local_addr().unwrap(),
            c.local_addr().unwrap(),
        );
        let first = set(&[a, b], None);
        let mut ups = UdpUpstreams::build(first.clone(), 8, 0).unwrap();
        let fd_b = ups.servers()[1].fd();
        let mut out = Vec::new();
        ups.start_attempt(0, pending("on-a.test."), &mut out)
            .ok()
            .unwrap();
        let id_b = ups
            .start_attempt(1, pending("on-b.test."), &mut out)
            .ok()
            .unwrap();
        let forwarded_b = out.clone();

        // a removed, c added, b stays (now first).
        let second = set(&[b, c], Some(&first));
        first.retire_missing(&second);
        assert!(ups.update(&second).unwrap());
        let addrs: Vec<_> = ups.servers().iter().map(|s| s.server.addr).collect();
        assert_eq!(addrs, [b, c, a], "a drains after the pool");
        assert_eq!(ups.servers()[0].fd(), fd_b, "b keeps its socket");
        assert_eq!(ups.in_flight(), 2);
        assert_eq!(ups.pick(0b01), Some(1), "a draining server is never picked");
        let p = ups
            .take_matching(0, &answer(&forwarded_b))
            .expect("b's query kept");
        assert_eq!(p.tried, 0b01, "the tried mask follows b to its new index");
        assert_eq!(u16::from_be_bytes([forwarded_b[0], forwarded_b[1]]), id_b);

        // a's query expires (reported on a), then a is closed.
        let mut expired = Vec::new();
        ups.expired(Instant::now() + Duration::from_secs(1), &mut expired);
        assert_eq!(expired.len(), 1);
        assert_eq!(ups.servers()[expired[0].0].server.addr, a);
        assert_eq!(expired[0].1.tried, 0, "a is no longer in the pool");
        assert!(ups.update(&second).unwrap());
        let addrs: Vec<_> = ups.servers().iter().map(|s| s.server.addr).collect();
        assert_eq!(addrs, [b, c]);
        assert!(!ups.update(&second).unwrap(), "nothing to do");
    }

    #[test]
    fn in_proxy_mode_each_query_follows_a_proxy_header_naming_the_client() {
        let text = "[upstream]\nservers = [\"127.0.0.1:9\"]\nclient_address = \"proxy\"\n";
        let cfg = crate::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let mut ups = UdpUpstreams::build(UpstreamSet::new(&cfg.upstream, None), 8, 0).unwrap();
        let p = pending("a.test.");
        let mut header = Vec::new();
        dns::proxy::header(p.client.addr, p.client.local, true, &mut header);
        let packet = p.packet.clone();
        let mut out = Vec::new();
        let id = ups.start_attempt(0, p, &mut out).ok().unwrap();
        assert_eq!(&out[..header.len()], &header[..]);
        let query = &out[header.len()..];
        assert_eq!(u16::from_be_bytes([query[0], query[1]]), id);
        assert_eq!(&query[2..], &packet[2..], "no ECS with a PROXY header");
    }
}

//! Test support shared by the integration tests (`mod support;`): free loopback ports, a real
//! PowerDNS Authoritative on 127.0.0.1 (`Pdns`), and a small blocking DNS client (`dns_query`).
//!
//! Deliberately independent of the dnsteer library, so a test failure here points at the
//! harness or at PowerDNS, never at the code under test. Every process started here (use
//! [`spawn_guarded`] for your own, e.g. the dnsteer binary) is killed by PID when its handle is
//! dropped (test passed, failed or panicked), and by the kernel if the test binary dies without
//! unwinding (`PR_SET_PDEATHSIG`).

#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;

/// DNSSEC peers: signed PowerDNS, validating Unbound, dnspython check.
pub mod signed;

/// The demo zone (`config/demo/demo.test.zone`), for tests that want realistic content.
pub const DEMO_ZONE: &str = include_str!("../../config/demo/demo.test.zone");
pub const DEMO_ZONE_NAME: &str = "demo.test.";

const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts to find a port PowerDNS can bind: another process may take a free port between
/// `free_port()` and PowerDNS's bind.
const START_ATTEMPTS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A port on 127.0.0.1 that is free for both UDP and TCP right now (DNS servers bind both).
/// Racy by nature: bind it soon, and retry on `AddrInUse`.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Same as [`free_port`] on another loopback address (127.0.0.x or ::1).
pub fn free_port_on(ip: IpAddr) -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind an ephemeral UDP port");
        let port = udp.local_addr().expect("local_addr").port();
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip} after 100 tries");
}

/// A free UDP+TCP socket address on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port())
}

// ---------------------------------------------------------------------------------------------
// DNS client
// ---------------------------------------------------------------------------------------------

/// How [`dns_query`] asks. `Default` = UDP, RD=0, no EDNS, 2 s timeout.
#[derive(Clone, Debug)]
pub struct QueryOpts {
    pub tcp: bool,
    /// Client subnet to send; host bits are cleared (RFC 7871 §6). Implies EDNS.
    pub ecs: Option<IpNet>,
    /// DNSSEC OK bit. Implies EDNS.
    pub dnssec_ok: bool,
    /// EDNS UDP payload size; `Some` turns EDNS on. Defaults to 1232 when EDNS is implied.
    pub edns_payload: Option<u16>,
    pub recursion_desired: bool,
    pub timeout: Duration,
}

impl Default for QueryOpts {
    fn default() -> Self {
        QueryOpts {
            tcp: false,
            ecs: None,
            dnssec_ok: false,
            edns_payload: None,
            recursion_desired: false,
            timeout: Duration::from_secs(2),
        }
    }
}

impl QueryOpts {
    pub fn udp() -> Self {
        Self::default()
    }
    pub fn tcp() -> Self {
        QueryOpts {
            tcp: true,
            ..Self::default()
        }
    }
    /// Adds an ECS option, e.g. `.ecs("198.51.100.0/24")`.
    pub fn ecs(mut self, subnet: &str) -> Self {
        self.ecs = Some(subnet.parse().expect("ECS subnet like 198.51.100.0/24"));
        self
    }
    pub fn dnssec_ok(mut self) -> Self {
        self.dnssec_ok = true;
        self
    }
    pub fn edns(mut self, payload: u16) -> Self {
        self.edns_payload = Some(payload);
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Builds the wire form of a query for `name`/`qtype` with `opts`, and returns its ID too.
pub fn build_query(name: &str, qtype: RecordType, opts: &QueryOpts) -> (u16, Vec<u8>) {
    let id = fastrand::u16(..);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = opts.recursion_desired;
    let name = Name::from_ascii(name).expect("query name");
    msg.add_query(Query::query(name, qtype));
    if opts.ecs.is_some() || opts.dnssec_ok || opts.edns_payload.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(opts.edns_payload.unwrap_or(1232));
        edns.set_dnssec_ok(opts.dnssec_ok);
        if let Some(net) = opts.ecs {
            // hickory does not clear host bits itself (rust-stack.md pitfall 6).
            let net = net.trunc();
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(
                    net.addr(),
                    net.prefix_len(),
                    0,
                )));
        }
        msg.set_edns(edns);
    }
    (id, msg.to_vec().expect("encode query"))
}

/// Sends one query to `server` and decodes the answer. Errors: timeout (`TimedOut`), socket
/// errors, or an undecodable/mismatched reply (`InvalidData`).
pub fn dns_query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    opts: &QueryOpts,
) -> io::Result<Message> {
    let (id, wire) = build_query(name, qtype, opts);
    let reply = if opts.tcp {
        tcp_exchange(server, &wire, opts.timeout)?
    } else {
        udp_exchange(server, &wire, opts.timeout)?
    };
    let msg = Message::from_vec(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {e}")))?;
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "reply id {} / type {:?} does not match query id {id}",
                msg.metadata.id, msg.metadata.message_type
            ),
        ));
    }
    Ok(msg)
}

/// [`dns_query`] for tests that expect an answer: panics with the server and question on error.
pub fn dns_ask(server: SocketAddr, name: &str, qtype: RecordType, opts: &QueryOpts) -> Message {
    dns_query(server, name, qtype, opts)
        .unwrap_or_else(|e| panic!("{name} {qtype} to {server} ({opts:?}): {e}"))
}

/// Sends raw bytes over UDP and returns the first datagram that carries the same ID (the first
/// two bytes), or any datagram when `wire` is shorter than 2 bytes.
pub fn udp_exchange(server: SocketAddr, wire: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().expect("literal")
    } else {
        "[::1]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    sock.send(wire)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no UDP reply from {server}"),
            ));
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                if wire.len() < 2 || (n >= 2 && buf[..2] == wire[..2]) {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no UDP reply from {server}"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends raw bytes as one length-prefixed TCP frame and reads one framed reply.
pub fn tcp_exchange(server: SocketAddr, wire: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let len = u16::try_from(wire.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query longer than 65535"))?;
    let mut frame = Vec::with_capacity(wire.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(wire);
    stream.write_all(&frame)?;
    read_tcp_frame(&mut stream)
}

/// Reads one 2-byte-length-prefixed DNS message from a stream.
pub fn read_tcp_frame(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// The answer section as sorted presentation-format rdata strings (e.g. `["192.0.2.1"]`), for
/// comparing answers as sets (PowerDNS shuffles UDP answers).
pub fn answer_rdata(msg: &Message) -> Vec<String> {
    let mut v: Vec<String> = msg.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// The ECS option echoed in a reply, if any.
pub fn reply_ecs(msg: &Message) -> Option<ClientSubnet> {
    let edns = msg.edns.as_ref()?;
    match edns.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => Some(*s),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// PowerDNS
// ---------------------------------------------------------------------------------------------

/// A private PowerDNS Authoritative (bind backend, optionally geoip) on 127.0.0.1:<free port>,
/// UDP and TCP, in its own temporary directory. Killed by PID on drop.
///
/// Defaults chosen for tests: packet/query caches off (so zone edits show at once after
/// [`Pdns::reload_zones`]), LUA records on, ECS processing on, AXFR allowed from 127.0.0.0/8.
/// `extra_conf` lines are appended and override these (a later pdns.conf line wins).
///
/// Do not keep a `Pdns` in a `static`: a static is never dropped, so only the kernel's
/// PR_SET_PDEATHSIG would end the server, at process exit.
pub struct Pdns {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    zones: Vec<String>,
    /// Started with `proxy-protocol-from`: it drops queries from 127.0.0.1 that lack a PROXY
    /// header, so the readiness checks send one (v2 LOCAL).
    proxied: bool,
}

/// A PROXY protocol v2 header with command LOCAL (no addresses): PowerDNS answers the query
/// that follows as from the connection's own source.
pub const PROXY_V2_LOCAL: [u8; 16] = *b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00";

impl Pdns {
    /// Starts PowerDNS serving `zones` (`(zone name, zone file text)`; the zone file may use
    /// `$ORIGIN` or rely on the zone name) and waits until each zone answers its SOA over UDP
    /// and TCP. Panics with PowerDNS's log when it does not come up.
    pub fn start(zones: &[(&str, &str)], extra_conf: &[&str]) -> Pdns {
        Self::start_inner(zones, None, extra_conf)
    }

    /// Like [`Pdns::start`] with the geoip backend too (`launch=bind,geoip`), so `pickclosest`,
    /// `country()` etc. work in LUA records. `mmdb` is a City-format database.
    pub fn start_geo(zones: &[(&str, &str)], mmdb: &Path, extra_conf: &[&str]) -> Pdns {
        Self::start_inner(zones, Some(mmdb), extra_conf)
    }

    fn start_inner(zones: &[(&str, &str)], mmdb: Option<&Path>, extra_conf: &[&str]) -> Pdns {
        let binary = pdns_server_path();
        let dir = tempfile::Builder::new()
            .prefix("dnsteer-pdns-")
            .tempdir()
            .expect("create temp dir for PowerDNS");
        let mut zone_names = Vec::new();
        for (name, text) in zones {
            let name = canonical_zone(name);
            fs::write(zone_path(dir.path(), &name), text).expect("write zone file");
            zone_names.push(name);
        }
        write_named_conf(dir.path(), &zone_names);

        let mut pdns = Pdns {
            child: None,
            dir,
            addr: free_addr(),
            zones: zone_names,
            proxied: extra_conf
                .iter()
                .any(|l| l.starts_with("proxy-protocol-from")),
        };
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            write_pdns_conf(pdns.dir(), pdns.addr.port(), mmdb, extra_conf);
            match pdns.spawn_and_wait(&binary) {
                Ok(()) => return pdns,
                // Another process took the port after free_addr(): try a new one.
                Err(log) if log.contains("Address already in use") => {
                    last_log = log;
                    pdns.addr = free_addr();
                }
                Err(log) => panic!("PowerDNS did not start on {}:\n{log}", pdns.addr),
            }
        }
        panic!("PowerDNS could not bind a free port in {START_ATTEMPTS} attempts:\n{last_log}");
    }

    /// The DNS address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PID of the running server, `None` after [`Pdns::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// The run directory (pdns.conf, named.conf, zone files, pdns.log, control socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PowerDNS's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pdns.log")).unwrap_or_default()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        // Dropping the guard terminates and reaps the process.
        self.child.take();
    }

    /// Stops and starts the server again on the same port and directory (zone files as they
    /// are now). Panics if it does not come back.
    pub fn restart(&mut self) {
        self.stop();
        let binary = pdns_server_path();
        // The port was ours a moment ago; TIME_WAIT does not block a listening bind on Linux
        // with SO_REUSEADDR (PowerDNS sets it), but allow a few tries anyway.
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn_and_wait(&binary) {
                Ok(()) => return,
                Err(log) => {
                    last = log;
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("PowerDNS did not restart on {}:\n{last}", self.addr);
    }

    /// Replaces (or adds) a zone's file. Call [`Pdns::reload_zones`] to make PowerDNS read it.
    pub fn write_zone(&mut self, zone: &str, text: &str) {
        let zone = canonical_zone(zone);
        fs::write(zone_path(self.dir.path(), &zone), text).expect("write zone file");
        if !self.zones.contains(&zone) {
            self.zones.push(zone);
            write_named_conf(self.dir.path(), &self.zones);
        }
    }

    /// Makes PowerDNS re-read named.conf (new zones) and every zone file now, and purges its
    /// caches. Panics when pdns_control fails.
    pub fn reload_zones(&self) {
        self.control(&["rediscover"]);
        for zone in &self.zones {
            self.control(&["bind-reload-now", zone.trim_end_matches('.')]);
        }
        self.control(&["purge"]);
    }

    /// Runs `pdns_control --config-dir=<dir> <args>` and returns its output.
    pub fn control(&self, args: &[&str]) -> String {
        let out = Command::new(pdns_control_path())
            .arg(format!("--config-dir={}", self.dir.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pdns_control");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pdns_control {args:?} failed: {text}");
        text
    }

    /// Starts pdns_server and waits until every zone answers its SOA (UDP, then TCP once).
    /// On failure the server is stopped and the log lines written by this attempt returned.
    fn spawn_and_wait(&mut self, binary: &Path) -> Result<(), String> {
        let dir = self.dir.path().to_path_buf();
        let log_path = dir.join("pdns.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open pdns.log");
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let this_attempt = |p: &Pdns| p.log().get(log_start..).unwrap_or_default().to_string();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config-dir={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let child =
            spawn_guarded(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut pending: Vec<String> = if self.zones.is_empty() {
            vec![".".to_string()]
        } else {
            self.zones.clone()
        };
        let first = pending[0].clone();
        while !pending.is_empty() {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                self.child = None;
                return Err(format!(
                    "pdns_server exited with {status}\n{}",
                    this_attempt(self)
                ));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "pdns_server on {} did not answer SOA for {pending:?} within {START_TIMEOUT:?}\n{}",
                    self.addr,
                    this_attempt(self)
                ));
            }
            pending.retain(|zone| !self.answers_soa(zone));
            if !pending.is_empty() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        // Tests rely on both transports: check TCP once too.
        let tcp = QueryOpts::tcp().timeout(Duration::from_secs(2));
        if let Err(e) = self.query(&first, &tcp) {
            self.stop();
            return Err(format!(
                "pdns_server TCP on {} not answering: {e}\n{}",
                self.addr,
                this_attempt(self)
            ));
        }
        Ok(())
    }

    /// With zones: the zone is loaded (NOERROR with its SOA). Without: any non-SERVFAIL reply
    /// (an authoritative-only server REFUSEs ".").
    fn answers_soa(&self, zone: &str) -> bool {
        let quick = QueryOpts::udp().timeout(Duration::from_millis(200));
        match self.query(zone, &quick) {
            Ok(m) if zone == "." => m.metadata.response_code != ResponseCode::ServFail,
            Ok(m) => m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty(),
            Err(_) => false,
        }
    }
}

impl Pdns {
    /// A SOA query for `zone`, behind a LOCAL PROXY header when the server requires one.
    fn query(&self, zone: &str, opts: &QueryOpts) -> io::Result<Message> {
        if !self.proxied {
            return dns_query(self.addr, zone, RecordType::SOA, opts);
        }
        let (id, wire) = build_query(zone, RecordType::SOA, opts);
        let reply = if opts.tcp {
            let mut stream = TcpStream::connect_timeout(&self.addr, opts.timeout)?;
            stream.set_read_timeout(Some(opts.timeout))?;
            let mut frame = PROXY_V2_LOCAL.to_vec();
            frame.extend_from_slice(&(wire.len() as u16).to_be_bytes());
            frame.extend_from_slice(&wire);
            stream.write_all(&frame)?;
            read_tcp_frame(&mut stream)?
        } else {
            let mut datagram = PROXY_V2_LOCAL.to_vec();
            datagram.extend_from_slice(&wire);
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            sock.set_read_timeout(Some(opts.timeout))?;
            sock.send_to(&datagram, self.addr)?;
            let mut buf = vec![0u8; 65535];
            let n = sock.recv(&mut buf)?;
            buf.truncate(n);
            buf
        };
        let msg = Message::from_vec(&reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {e}")))?;
        if msg.metadata.id != id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply ID mismatch",
            ));
        }
        Ok(msg)
    }
}

impl Drop for Pdns {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process that is terminated (SIGTERM, SIGKILL after 5 s) and reaped when dropped,
/// so no test leaves a process behind, pass, fail or panic.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the process has already exited (it is reaped then).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. `libc::SIGHUP` to make dnsteer reload).
    #[allow(unsafe_code, reason = "kill(2)")]
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        {
            // SAFETY: kill(2) on our own child, which is not reaped while we hold it.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Terminates and reaps the process now; returns its exit status.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(terminate)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Spawns `cmd` so that it cannot outlive the test process: besides the [`ChildGuard`] drop,
/// the kernel sends it SIGKILL when the test binary dies without unwinding (abort, SIGKILL).
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits, and test threads (or tokio's
/// blocking pool) come and go; so every spawn happens on one helper thread that lives as long
/// as the process.
#[allow(unsafe_code, reason = "a pre_exec hook")]
pub fn spawn_guarded(mut cmd: Command) -> io::Result<ChildGuard> {
    use std::sync::OnceLock;
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> = OnceLock::new();

    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))??;
    Ok(ChildGuard { child: Some(child) })
}

/// SIGTERM, wait up to 5 s, then SIGKILL; always reaps the child so its PID is gone.
#[allow(unsafe_code, reason = "kill(2)")]
fn terminate(mut child: Child) -> Option<std::process::ExitStatus> {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own, not yet reaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

fn canonical_zone(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

fn zone_path(dir: &Path, zone: &str) -> PathBuf {
    let file: String = zone
        .trim_end_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{file}.zone"))
}

fn write_named_conf(dir: &Path, zones: &[String]) {
    let mut text = format!("options {{ directory \"{}\"; }};\n", dir.display());
    for zone in zones {
        text.push_str(&format!(
            "zone \"{}\" {{ type master; file \"{}\"; }};\n",
            zone.trim_end_matches('.'),
            zone_path(dir, zone).display()
        ));
    }
    fs::write(dir.join("named.conf"), text).expect("write named.conf");
}

fn write_pdns_conf(dir: &Path, port: u16, mmdb: Option<&Path>, extra: &[&str]) {
    let d = dir.display();
    let mut conf = String::new();
    match mmdb {
        Some(db) => {
            let db = db
                .canonicalize()
                .unwrap_or_else(|e| panic!("GeoIP database {}: {e}", db.display()));
            conf.push_str(&format!(
                "launch=bind,geoip\ngeoip-database-files={}\n",
                db.display()
            ));
        }
        None => conf.push_str("launch=bind\n"),
    }
    conf.push_str(&format!(
        "bind-config={d}/named.conf
local-address=127.0.0.1
local-port={port}
socket-dir={d}
daemon=no
guardian=no
disable-syslog=yes
loglevel=6
security-poll-suffix=
api=no
webserver=no
enable-lua-records=yes
edns-subnet-processing=yes
allow-axfr-ips=127.0.0.0/8
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
zone-cache-refresh-interval=0
receiver-threads=1
distributor-threads=1
"
    ));
    for line in extra {
        conf.push_str(line);
        conf.push('\n');
    }
    fs::write(dir.join("pdns.conf"), conf).expect("write pdns.conf");
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn pdns_server_path() -> PathBuf {
    find_binary("pdns_server").expect("pdns_server not installed: run scripts/install-deps.sh")
}

fn pdns_control_path() -> PathBuf {
    find_binary("pdns_control").expect("pdns_control not installed: run scripts/install-deps.sh")
}

/// True while a process with this PID exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

// ---------------------------------------------------------------------------------------------
// Metrics text
// ---------------------------------------------------------------------------------------------

/// Sum of the samples of metric `name` in Prometheus text whose labels include every
/// `(label, value)` in `labels` (other labels may differ); 0 when there are none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let has = |(k, v): &(&str, &str)| {
                label_text
                    .split(',')
                    .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
            };
            labels
                .iter()
                .all(has)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// HTTP (admin endpoints)
// ---------------------------------------------------------------------------------------------

/// A minimal blocking HTTP/1.1 GET (for /metrics, /healthz, /readyz, /status): returns the
/// status code and the body (chunked transfer decoded).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: servers may read the request head in one go.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP {what}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("chunk size"))?;
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// The dnsteer binary
// ---------------------------------------------------------------------------------------------

/// The real `dnsteer` binary (`CARGO_BIN_EXE_dnsteer`) running on a config written to a temp
/// directory (relative paths in it resolve there; see [`Dnsteer::dir`] to place files first
/// with [`Dnsteer::start_in`]). Killed by PID on drop.
///
/// The config must set `[server].listen` and `[metrics].listen` explicitly (use
/// [`free_addr`]); the first listen address is the one [`Dnsteer::dns_addr`] returns.
pub struct Dnsteer {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    dns: SocketAddr,
    metrics: SocketAddr,
}

impl Dnsteer {
    /// Writes `config` as dnsteer.toml in a fresh temp dir, starts the binary and waits up to
    /// 30 s for `GET /readyz` = 200. Panics with the process log otherwise.
    pub fn start(config: &str) -> Dnsteer {
        let dir = tempfile::Builder::new()
            .prefix("dnsteer-bin-")
            .tempdir()
            .expect("create temp dir for dnsteer");
        Self::start_in(dir, config)
    }

    /// Like [`Dnsteer::start`], with the config built by `config(dns, metrics)` from two free
    /// addresses; retried with new addresses when another process took one of them first
    /// (free ports are racy).
    pub fn start_on_free_ports(config: impl Fn(SocketAddr, SocketAddr) -> String) -> Dnsteer {
        for _ in 0..START_ATTEMPTS {
            let dns = free_addr();
            let metrics = loop {
                let m = free_addr();
                if m != dns {
                    break m;
                }
            };
            let text = config(dns, metrics);
            let started = std::panic::catch_unwind(|| Self::start(&text));
            match started {
                Ok(d) => return d,
                Err(e) => {
                    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                    if !msg.contains("Address already in use") {
                        std::panic::resume_unwind(e);
                    }
                }
            }
        }
        panic!("dnsteer could not bind free ports in {START_ATTEMPTS} attempts");
    }

    /// Like [`Dnsteer::start`] in a directory prepared by the caller (e.g. holding an mmdb).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Dnsteer {
        let path = dir.path().join("dnsteer.toml");
        fs::write(&path, config).expect("write dnsteer.toml");
        Self::start_file(dir, &path)
    }

    /// Starts on a config file the caller placed (it may be a symlink, as in a mounted
    /// ConfigMap); dnsteer.log goes to `dir`.
    pub fn start_file(dir: tempfile::TempDir, path: &Path) -> Dnsteer {
        let config = fs::read_to_string(path).expect("read the test config");
        let table: toml::Table = toml::from_str(&config).expect("test config is valid TOML");
        let addr_at = |section: &str| -> SocketAddr {
            let text = match table.get(section).and_then(|t| t.get("listen")) {
                Some(toml::Value::String(s)) => Some(s.as_str()),
                Some(toml::Value::Array(a)) => a.first().and_then(toml::Value::as_str),
                _ => None,
            };
            text.and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                panic!("[{section}].listen must be set to a free 127.0.0.1 address in test configs")
            })
        };
        let dns = addr_at("server");
        let metrics = addr_at("metrics");
        let log = fs::File::create(dir.path().join("dnsteer.log")).expect("create dnsteer.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dnsteer"));
        cmd.arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let child = spawn_guarded(cmd).expect("spawn dnsteer");
        let mut me = Dnsteer {
            child: Some(child),
            dir,
            dns,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.child.as_mut().and_then(ChildGuard::exited) {
                panic!(
                    "dnsteer exited during start-up with {status}:\n{}",
                    me.log()
                );
            }
            if let Ok((200, _)) = http_get(me.metrics, "/readyz", Duration::from_millis(500)) {
                return me;
            }
            if Instant::now() > deadline {
                panic!("dnsteer not ready (/readyz) within 30 s:\n{}", me.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first `[server].listen` address (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// The `[metrics].listen` address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// The directory holding dnsteer.toml and dnsteer.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// dnsteer's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dnsteer.log")).unwrap_or_default()
    }

    /// GET on the metrics listener; panics on connection errors.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("GET {path} from dnsteer: {e}\n{}", self.log()))
    }

    /// The sum of `name`'s samples matching `labels` in a fresh `/metrics` scrape (which must
    /// answer 200).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics");
        metric_sum(&body, name, labels)
    }

    /// Replaces dnsteer.toml (the file dnsteer watches) with `config`; add `self.signal_hup()` to
    /// force a reload at once.
    pub fn rewrite_config(&self, config: &str) {
        // Write-then-rename, as a ConfigMap update does, so a reader never sees half a file.
        let tmp = self.dir.path().join(".dnsteer.toml.tmp");
        fs::write(&tmp, config).expect("write config");
        fs::rename(&tmp, self.dir.path().join("dnsteer.toml")).expect("swap config");
    }

    pub fn signal_hup(&self) {
        if let Some(c) = &self.child {
            c.signal(libc::SIGHUP);
        }
    }

    /// Sends any signal (e.g. `libc::SIGTERM` to watch the shutdown from outside).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            c.signal(sig);
        }
    }

    /// The exit status once the process has exited (it is reaped then), else None.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(ChildGuard::exited)
    }

    /// Sends SIGTERM and waits (up to 5 s, then SIGKILL) for the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(ChildGuard::stop)
    }
}

/// Prometheus text → `name{labels}` → value (comments and blank lines skipped).
pub fn parse_metrics(body: &str) -> std::collections::HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// One series of a parsed scrape; panics if it is missing.
pub fn series(m: &std::collections::HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

/// How much a series grew between two scrapes.
pub fn series_delta(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    name: &str,
) -> f64 {
    series(after, name) - series(before, name)
}

//! Probe pool: health checks behind `ifurlup` / `ifportup` / `ifurlextup`, shared between records.
//!
//! One task per unique [`ProbeSpec`] (however many records use it) probes on its own jittered
//! interval, under a pool-wide concurrency cap, and publishes the result through a lock-free
//! [`Health`] flag that the packet path reads. The control plane hands the pool the desired set
//! with [`ProbePool::sync`]; the first round of new targets is done before `sync` returns, so
//! records are never answered from a state nobody has probed (unlike PowerDNS, which registers
//! checks lazily on the first query).
//!
//! State machine (see [`Tracker`]): `Unknown` until a result is known; a success makes it `Up`
//! at once; failures make it `Down` after `fall` consecutive ones — also for a brand-new target,
//! which stays `Unknown` (answered as UP) until it has failed `fall` times in a row. `Down` goes
//! back `Up` after `rise` consecutive successes. `Unknown` counts as UP everywhere.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant};
use tokio_rustls::TlsConnector;
use tracing::{debug, info};

use crate::config::ProbeDefaults;

/// What is checked. Part of a probe's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// `ifurlup`: HTTP(S) GET of `url`, connection pinned to the candidate address
    /// (Host header and SNI from the URL).
    Http { url: String },
    /// `ifurlextup`: HTTP(S) GET of `url` resolved normally (not pinned); `addr` is only answered.
    HttpExternal { url: String },
    /// `ifportup`: TCP connect to candidate:port.
    Tcp { port: u16 },
}

/// Options that change how a target is probed. Part of a probe's identity (selectors are not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckOptions {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before DOWN (`minimumFailures`).
    pub fall: u32,
    /// Consecutive successes before UP again.
    pub rise: u32,
    pub stringmatch: Option<String>,
    pub useragent: String,
    /// 0 = no limit beyond `[probes].body_limit`.
    pub byteslimit: u64,
    /// Final status that means UP.
    pub httpcode: u16,
    pub headers: Vec<(String, String)>,
    /// Local address to probe from.
    pub source: Option<IpAddr>,
}

/// One probe: a candidate address and how it is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    pub addr: IpAddr,
    pub check: Check,
    pub options: CheckOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum HealthState {
    /// Not probed to completion yet: counts as UP (documented).
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

/// Lock-free health flag read by the packet path and written by the probe task.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    pub fn state(&self) -> HealthState {
        match self.0.load(Ordering::Relaxed) {
            1 => HealthState::Up,
            2 => HealthState::Down,
            _ => HealthState::Unknown,
        }
    }

    /// Unknown counts as UP: dnsteer never answers from an unknown state on purpose, see README.
    pub fn is_up(&self) -> bool {
        self.state() != HealthState::Down
    }

    pub fn set(&self, s: HealthState) {
        self.0.store(s as u8, Ordering::Relaxed);
    }
}

pub type HealthRef = Arc<Health>;

/// How long `sync` waits beyond the largest new timeout for first probes to report.
const SYNC_MARGIN: Duration = Duration::from_millis(200);
/// Floor on a target's period, so a zero interval cannot spin a task.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Why one probe failed. Every variant maps to a static label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection refused")]
    Refused,
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("status {got}, want {want}")]
    Status { got: u16, want: u16 },
    #[error("body does not contain the stringmatch text")]
    StringMatch,
    #[error("redirect: {0}")]
    Redirect(String),
    #[error("bad URL: {0}")]
    BadUrl(String),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

/// Every label [`ProbeError::kind`] can return, in the order of [`ProbeCounters::failures`].
pub const ERROR_KINDS: [&str; 10] = [
    "timeout",
    "refused",
    "connect",
    "tls",
    "http",
    "status",
    "stringmatch",
    "redirect",
    "bad_url",
    "resolve",
];

impl ProbeError {
    pub fn kind(&self) -> &'static str {
        ERROR_KINDS[self.kind_index()]
    }

    fn kind_index(&self) -> usize {
        match self {
            ProbeError::Timeout(_) => 0,
            ProbeError::Refused => 1,
            ProbeError::Connect(_) => 2,
            ProbeError::Tls(_) => 3,
            ProbeError::Http(_) => 4,
            ProbeError::Status { .. } => 5,
            ProbeError::StringMatch => 6,
            ProbeError::Redirect(_) => 7,
            ProbeError::BadUrl(_) => 8,
            ProbeError::Resolve { .. } => 9,
        }
    }
}

/// Pool-wide totals for the metrics collector (monotonic counters).
#[derive(Debug, Default)]
pub struct ProbeCounters {
    probes_run: AtomicU64,
    state_changes: AtomicU64,
    failures: [AtomicU64; ERROR_KINDS.len()],
}

impl ProbeCounters {
    pub fn probes_run(&self) -> u64 {
        self.probes_run.load(Ordering::Relaxed)
    }

    pub fn state_changes(&self) -> u64 {
        self.state_changes.load(Ordering::Relaxed)
    }

    /// Failed probes by error kind, every kind listed (zero included).
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ERROR_KINDS
            .iter()
            .zip(&self.failures)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
    }
}

/// One target as shown by `/status` and exported as metrics.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// `http` (ifurlup), `http_external` (ifurlextup) or `tcp` (ifportup).
    pub kind: &'static str,
    pub addr: IpAddr,
    pub url: Option<String>,
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub state: HealthState,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Duration of the most recent probe (connect to verdict).
    pub last_latency_ms: Option<f64>,
    /// Error kind of the most recent probe; None when it succeeded or none ran yet.
    pub last_error: Option<&'static str>,
    /// Unix time (seconds) of the last state change.
    pub last_change_unix: Option<u64>,
    pub state_changes: u64,
    pub probes_run: u64,
}

/// Per-target fall/rise state machine, fed one probe result at a time.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: HealthState,
    fall: u32,
    rise: u32,
    failures: u32,
    successes: u32,
}

impl Tracker {
    /// `fall` and `rise` below 1 are taken as 1.
    pub fn new(fall: u32, rise: u32) -> Self {
        Tracker {
            state: HealthState::Unknown,
            fall: fall.max(1),
            rise: rise.max(1),
            failures: 0,
            successes: 0,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Records one result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<HealthState> {
        let next = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            match self.state {
                HealthState::Unknown => HealthState::Up,
                HealthState::Down if self.successes >= self.rise => HealthState::Up,
                s => s,
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.fall {
                HealthState::Down
            } else {
                self.state
            }
        };
        let changed = next != self.state;
        self.state = next;
        changed.then_some(next)
    }
}

/// `interval` spread by `±jitter` (a fraction); `u` is uniform in [0, 1).
pub fn jittered(interval: Duration, jitter: f64, u: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (2.0 * u.clamp(0.0, 1.0) - 1.0);
    interval.mul_f64(factor).max(MIN_INTERVAL)
}

/// Pool settings that reload may change; swapped as a whole.
struct Settings {
    jitter: f64,
    max_redirects: u32,
    body_limit: usize,
    max_concurrent: usize,
    tls: Arc<ClientConfig>,
    /// Replaced (not resized) when `max_concurrent` changes: probes holding a permit of the old
    /// one finish under the old cap, so the cap may be briefly exceeded during a reload.
    slots: Arc<Semaphore>,
}

type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send + 'a>>;

/// Runs one probe; the pool applies the timeout. Abstract so the scheduler can be tested on
/// paused time without sockets.
trait Prober: Send + Sync + 'static {
    fn probe<'a>(&'a self, target: &'a TargetCore, settings: &'a Settings) -> ProbeFuture<'a>;
}

struct Shared {
    settings: ArcSwap<Settings>,
    counters: ProbeCounters,
    prober: Box<dyn Prober>,
    tls_verified: Arc<ClientConfig>,
    tls_any: Arc<ClientConfig>,
}

impl Shared {
    fn settings_for(&self, d: &ProbeDefaults, previous: Option<&Settings>) -> Settings {
        let slots = match previous {
            Some(p) if p.max_concurrent == d.max_concurrent => p.slots.clone(),
            _ => Arc::new(Semaphore::new(d.max_concurrent.max(1))),
        };
        Settings {
            jitter: d.jitter,
            max_redirects: d.max_redirects,
            body_limit: d.body_limit,
            max_concurrent: d.max_concurrent,
            tls: if d.tls_verify {
                self.tls_verified.clone()
            } else {
                self.tls_any.clone()
            },
            slots,
        }
    }
}

/// The set of probe targets and their tasks. Lives on the control-plane runtime.
pub struct ProbePool {
    shared: Arc<Shared>,
    targets: Mutex<HashMap<ProbeSpec, Target>>,
    /// Serialises `sync` calls so two reloads cannot interleave their diffs.
    sync_lock: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
}

impl ProbePool {
    pub fn new(defaults: &ProbeDefaults) -> Arc<ProbePool> {
        Self::with_prober(defaults, Box::new(NetProber))
    }

    fn with_prober(defaults: &ProbeDefaults, prober: Box<dyn Prober>) -> Arc<ProbePool> {
        let (tls_verified, tls_any) = tls_configs();
        let placeholder = Arc::new(Settings {
            jitter: 0.0,
            max_redirects: 0,
            body_limit: 0,
            max_concurrent: 0,
            tls: tls_any.clone(),
            slots: Arc::new(Semaphore::new(1)),
        });
        let shared = Arc::new(Shared {
            settings: ArcSwap::new(placeholder),
            counters: ProbeCounters::default(),
            prober,
            tls_verified,
            tls_any,
        });
        shared
            .settings
            .store(Arc::new(shared.settings_for(defaults, None)));
        Arc::new(ProbePool {
            shared,
            targets: Mutex::new(HashMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
        })
    }

    /// Makes `specs` the probed set and returns the health flag of each.
    ///
    /// Targets already probed keep their state and flag; targets not in `specs` stop; new ones
    /// are probed once before this returns, but it waits at most the largest new timeout plus
    /// a small margin (a probe queued behind the concurrency cap past that stays `Unknown`,
    /// which answers as UP). Must run inside the control-plane runtime.
    pub async fn sync(&self, specs: &[ProbeSpec]) -> HashMap<ProbeSpec, HealthRef> {
        let _serial = self.sync_lock.lock().await;
        let stopped = self.stopped.load(Ordering::Relaxed);
        let mut first_rounds = Vec::new();
        let mut bound = Duration::ZERO;
        let (out, removed, total) = {
            let mut targets = lock(&self.targets);
            let wanted: HashSet<&ProbeSpec> = specs.iter().collect();
            let before = targets.len();
            // Dropping a Target aborts its task.
            targets.retain(|spec, _| wanted.contains(spec));
            let removed = before - targets.len();
            let mut out = HashMap::with_capacity(wanted.len());
            for spec in wanted {
                let target = targets.entry(spec.clone()).or_insert_with(|| {
                    let (tx, rx) = oneshot::channel();
                    if !stopped {
                        first_rounds.push(rx);
                        bound = bound.max(spec.options.timeout);
                    }
                    Target::start(&self.shared, spec.clone(), (!stopped).then_some(tx))
                });
                out.insert(spec.clone(), target.core.health.clone());
            }
            (out, removed, targets.len())
        };
        let added = first_rounds.len();
        if !first_rounds.is_empty() {
            let all_first = async {
                for rx in first_rounds {
                    let _ = rx.await;
                }
            };
            if time::timeout(bound + SYNC_MARGIN, all_first).await.is_err() {
                debug!("some first probes still pending; their targets stay unknown (= up)");
            }
        }
        if added > 0 || removed > 0 {
            info!(targets = total, added, removed, "probe set updated");
        }
        out
    }

    /// Applies reloaded `[probes]` settings (cap, TLS verification, redirects, body limit,
    /// jitter) to the probes that start from now on.
    pub fn set_defaults(&self, defaults: &ProbeDefaults) {
        let current = self.shared.settings.load();
        let next = self.shared.settings_for(defaults, Some(&current));
        self.shared.settings.store(Arc::new(next));
    }

    /// Per-target state, sorted by address then check, for `/status` and metrics.
    pub fn status(&self) -> Vec<ProbeStatus> {
        let targets = lock(&self.targets);
        let mut out: Vec<ProbeStatus> = targets.values().map(|t| t.core.status()).collect();
        drop(targets);
        out.sort_by(|a, b| {
            (a.addr, a.kind, &a.url, a.port, a.interval_ms, a.timeout_ms).cmp(&(
                b.addr,
                b.kind,
                &b.url,
                b.port,
                b.interval_ms,
                b.timeout_ms,
            ))
        });
        out
    }

    /// Pool-wide counters for the metrics collector.
    pub fn counters(&self) -> &ProbeCounters {
        &self.shared.counters
    }

    /// Stops every probe task. Health flags keep their last value; a later `sync` only hands
    /// out flags (`Unknown` for new targets) and starts no probe.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let drained: Vec<Target> = lock(&self.targets).drain().map(|(_, t)| t).collect();
        drop(drained);
    }
}

impl Drop for ProbePool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a target's check is carried out, derived once from its spec at `sync`.
enum Plan {
    Tcp(SocketAddr),
    Http {
        url: Result<Url, String>,
        headers: Result<HeaderMap, String>,
        /// The candidate for `ifurlup`; None for `ifurlextup` (URL host resolved normally).
        pinned: Option<IpAddr>,
    },
}

impl Plan {
    fn new(spec: &ProbeSpec) -> Plan {
        match &spec.check {
            Check::Tcp { port } => Plan::Tcp(SocketAddr::new(spec.addr, *port)),
            Check::Http { url } | Check::HttpExternal { url } => Plan::Http {
                url: Url::parse(url),
                headers: request_headers(&spec.options),
                pinned: matches!(spec.check, Check::Http { .. }).then_some(spec.addr),
            },
        }
    }
}

struct TargetCore {
    spec: ProbeSpec,
    plan: Plan,
    health: HealthRef,
    stats: Mutex<TargetStats>,
}

struct TargetStats {
    tracker: Tracker,
    probes_run: u64,
    last_latency: Option<Duration>,
    last_error: Option<&'static str>,
    last_change: Option<SystemTime>,
    changes: u64,
}

impl TargetCore {
    fn record(&self, result: Result<(), ProbeError>, latency: Duration, counters: &ProbeCounters) {
        counters.probes_run.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            counters.failures[e.kind_index()].fetch_add(1, Ordering::Relaxed);
            debug!(target = %self.describe(), error = %e, "probe failed");
        }
        let mut st = lock(&self.stats);
        st.probes_run += 1;
        st.last_latency = Some(latency);
        st.last_error = result.as_ref().err().map(ProbeError::kind);
        let Some(state) = st.tracker.observe(result.is_ok()) else {
            return;
        };
        self.health.set(state);
        st.changes += 1;
        st.last_change = Some(SystemTime::now());
        drop(st);
        counters.state_changes.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(()) => info!(
                target = %self.describe(),
                state = "UP",
                "probe monitoring declaring {} UP",
                self.spec.addr
            ),
            Err(e) => info!(
                target = %self.describe(),
                state = "DOWN",
                error = %e,
                "probe monitoring declaring {} DOWN",
                self.spec.addr
            ),
        }
    }

    fn describe(&self) -> String {
        match &self.spec.check {
            Check::Http { url } => format!("{} via {}", url, self.spec.addr),
            Check::HttpExternal { url } => format!("{} for {}", url, self.spec.addr),
            Check::Tcp { port } => format!("tcp {}", SocketAddr::new(self.spec.addr, *port)),
        }
    }

    fn status(&self) -> ProbeStatus {
        let (kind, url, port) = match &self.spec.check {
            Check::Http { url } => ("http", Some(url.clone()), None),
            Check::HttpExternal { url } => ("http_external", Some(url.clone()), None),
            Check::Tcp { port } => ("tcp", None, Some(*port)),
        };
        let st = lock(&self.stats);
        ProbeStatus {
            kind,
            addr: self.spec.addr,
            url,
            port,
            interval_ms: duration_ms(self.spec.options.interval),
            timeout_ms: duration_ms(self.spec.options.timeout),
            state: st.tracker.state(),
            consecutive_failures: st.tracker.failures,
            consecutive_successes: st.tracker.successes,
            last_latency_ms: st.last_latency.map(|d| d.as_secs_f64() * 1000.0),
            last_error: st.last_error,
            last_change_unix: st
                .last_change
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            state_changes: st.changes,
            probes_run: st.probes_run,
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Target {
    core: Arc<TargetCore>,
    task: Option<JoinHandle<()>>,
}

impl Target {
    /// `first_done` fires after the first probe; None starts no task (pool shut down).
    fn start(
        shared: &Arc<Shared>,
        spec: ProbeSpec,
        first_done: Option<oneshot::Sender<()>>,
    ) -> Target {
        let core = Arc::new(TargetCore {
            plan: Plan::new(&spec),
            health: Arc::new(Health::default()),
            stats: Mutex::new(TargetStats {
                tracker: Tracker::new(spec.options.fall, spec.options.rise),
                probes_run: 0,
                last_latency: None,
                last_error: None,
                last_change: None,
                changes: 0,
            }),
            spec,
        });
        let task = first_done.map(|tx| tokio::spawn(run_target(shared.clone(), core.clone(), tx)));
        Target { core, task }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The probe loop of one target: probe, record, sleep a jittered interval measured from the
/// start of the probe. At most one probe of a target is in flight, and a slow probe or a wait
/// for a concurrency slot delays the next one instead of causing a burst to catch up.
async fn run_target(shared: Arc<Shared>, core: Arc<TargetCore>, first_done: oneshot::Sender<()>) {
    let mut first_done = Some(first_done);
    let interval = core.spec.options.interval.max(MIN_INTERVAL);
    let timeout = core.spec.options.timeout;
    loop {
        let settings = shared.settings.load_full();
        let permit: OwnedSemaphorePermit = match settings.slots.clone().acquire_owned().await {
            Ok(p) => p,
            // Semaphores are never closed; nothing sensible to probe under if one were.
            Err(_) => return,
        };
        let started = Instant::now();
        let result = match time::timeout(timeout, shared.prober.probe(&core, &settings)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(timeout)),
        };
        let latency = started.elapsed();
        drop(permit);
        core.record(result, latency, &shared.counters);
        if let Some(tx) = first_done.take() {
            let _ = tx.send(());
        }
        time::sleep_until(started + jittered(interval, settings.jitter, fastrand::f64())).await;
    }
}

/// The real prober: sockets, TLS and HTTP/1.1.
struct NetProber;

impl Prober for NetProber {
    fn probe<'a>(&'a self, target: &'a TargetCore, settings: &'a Settings) -> ProbeFuture<'a> {
        Box::pin(async move {
            let source = target.spec.options.source;
            match &target.plan {
                Plan::Tcp(addr) => connect(*addr, source).await.map(drop),
                Plan::Http {
                    url,
                    headers,
                    pinned,
                } => {
                    let url = url.as_ref().map_err(|e| ProbeError::BadUrl(e.clone()))?;
                    let headers = headers.as_ref().map_err(|e| ProbeError::Http(e.clone()))?;
                    http_probe(url, headers, *pinned, &target.spec.options, settings).await
                }
            }
        })
    }
}

/// An `http`/`https` URL split into what the probe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    /// Host without IPv6 brackets (for resolving, SNI and comparing).
    host: String,
    port: u16,
    /// `Host` header: the host, plus `:port` when the URL spells one out.
    host_header: String,
    /// Request target: path and query, at least `/`.
    path: String,
}

impl Url {
    fn parse(text: &str) -> Result<Url, String> {
        let text = text.split('#').next().unwrap_or_default().trim();
        let uri: Uri = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            _ => return Err(format!("{text:?}: scheme must be http or https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?}: no host"))?;
        let written = authority.host();
        let host = written.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let port = match authority.port() {
            Some(p) if p.as_u16() == 0 => return Err(format!("{text:?}: port 0")),
            Some(p) => p.as_u16(),
            None if https => 443,
            None => 80,
        };
        let host_header = match authority.port() {
            Some(p) => format!("{written}:{}", p.as_str()),
            None => written.to_owned(),
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            Some(p) if !p.is_empty() => p.to_owned(),
            _ => "/".to_owned(),
        };
        Ok(Url {
            https,
            host: host.to_owned(),
            port,
            host_header,
            path,
        })
    }

    /// Resolves a `Location` header against this URL (absolute, scheme-relative, absolute-path
    /// or relative-path reference).
    fn join(&self, location: &str) -> Result<Url, String> {
        let location = location.split('#').next().unwrap_or_default().trim();
        let scheme = if self.https { "https" } else { "http" };
        if location.starts_with("//") {
            return Url::parse(&format!("{scheme}:{location}"));
        }
        if has_scheme(location) {
            return Url::parse(location);
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = base.rfind('/').map_or("/", |i| &base[..=i]);
            format!("{dir}{location}")
        };
        Ok(Url {
            path,
            ..self.clone()
        })
    }
}

fn has_scheme(reference: &str) -> bool {
    reference.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

fn request_headers(options: &CheckOptions) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    let ua = HeaderValue::from_str(&options.useragent)
        .map_err(|_| format!("bad useragent {:?}", options.useragent))?;
    map.insert(hyper::header::USER_AGENT, ua);
    map.insert(hyper::header::ACCEPT, HeaderValue::from_static("*/*"));
    for (name, value) in &options.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let v = HeaderValue::from_str(value).map_err(|_| format!("bad header value {value:?}"))?;
        map.append(n, v);
    }
    Ok(map)
}

async fn http_probe(
    start: &Url,
    headers: &HeaderMap,
    pinned: Option<IpAddr>,
    options: &CheckOptions,
    settings: &Settings,
) -> Result<(), ProbeError> {
    let mut url = start.clone();
    let mut redirects = 0u32;
    loop {
        // A redirect to the same host stays on the candidate, as PowerDNS's curl resolve map does.
        let pin = pinned.filter(|_| url.host.eq_ignore_ascii_case(&start.host));
        let (response, _conn) = exchange(&url, headers, pin, options.source, settings).await?;
        let status = response.status();
        if status.is_redirection()
            && status != hyper::StatusCode::NOT_MODIFIED
            && let Some(location) = response.headers().get(hyper::header::LOCATION)
        {
            if redirects >= settings.max_redirects {
                return Err(ProbeError::Redirect(format!(
                    "more than {} redirects",
                    settings.max_redirects
                )));
            }
            let location = location
                .to_str()
                .map_err(|_| ProbeError::Redirect("unreadable Location header".into()))?;
            url = url.join(location).map_err(ProbeError::Redirect)?;
            redirects += 1;
            continue;
        }
        if status.as_u16() != options.httpcode {
            return Err(ProbeError::Status {
                got: status.as_u16(),
                want: options.httpcode,
            });
        }
        let Some(needle) = &options.stringmatch else {
            return Ok(());
        };
        let mut limit = settings.body_limit;
        if options.byteslimit > 0 {
            limit = limit.min(usize::try_from(options.byteslimit).unwrap_or(usize::MAX));
        }
        let body = read_prefix(response.into_body(), limit).await?;
        // A body cut by the limit still counts: search what was read (PowerDNS byteslimit).
        return if contains(&body, needle.as_bytes()) {
            Ok(())
        } else {
            Err(ProbeError::StringMatch)
        };
    }
}

/// Aborts the spawned connection driver when the probe is done (or dropped on timeout).
struct ConnGuard(JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request/response on a fresh connection. The returned guard keeps the connection alive
/// while the body is read.
async fn exchange(
    url: &Url,
    headers: &HeaderMap,
    pinned: Option<IpAddr>,
    source: Option<IpAddr>,
    settings: &Settings,
) -> Result<(Response<Incoming>, ConnGuard), ProbeError> {
    let tcp = match pinned {
        Some(ip) => connect(SocketAddr::new(ip, url.port), source).await?,
        None => connect_resolved(&url.host, url.port, source).await?,
    };
    if !url.https {
        return send(tcp, url, headers).await;
    }
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| ProbeError::BadUrl(format!("{:?} is not a valid TLS server name", url.host)))?;
    let tls = TlsConnector::from(settings.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(ProbeError::Tls)?;
    send(tls, url, headers).await
}

async fn send<S>(
    io: S,
    url: &Url,
    headers: &HeaderMap,
) -> Result<(Response<Incoming>, ConnGuard), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let guard = ConnGuard(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut builder = Request::get(url.path.as_str()).header(hyper::header::HOST, &url.host_header);
    if let Some(h) = builder.headers_mut() {
        h.extend(headers.clone());
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(format!("request for {:?}: {e}", url.path)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    Ok((response, guard))
}

async fn read_prefix(mut body: Incoming, limit: usize) -> Result<Vec<u8>, ProbeError> {
    let mut buf = Vec::new();
    while buf.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| ProbeError::Http(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let take = data.len().min(limit - buf.len());
            buf.extend_from_slice(&data[..take]);
        }
    }
    Ok(buf)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ProbeError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ProbeError::Connect)?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(ProbeError::Connect)?;
    }
    socket.connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ProbeError::Refused
        } else {
            ProbeError::Connect(e)
        }
    })
}

/// Connects to the first reachable address of `host` (system resolver), trying them in order.
async fn connect_resolved(
    host: &str,
    port: u16,
    source: Option<IpAddr>,
) -> Result<TcpStream, ProbeError> {
    let resolve_err = |reason: String| ProbeError::Resolve {
        host: host.to_owned(),
        reason,
    };
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| resolve_err(e.to_string()))?;
    let mut last = None;
    for addr in addrs {
        // A source address only fits candidates of its own family.
        if source.is_some_and(|s| s.is_ipv4() != addr.is_ipv4()) {
            continue;
        }
        match connect(addr, source).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| resolve_err("no usable address".into())))
}

/// TLS client configurations (verifying and not), both on the ring provider explicitly so
/// the process-wide default provider never matters.
fn tls_configs() -> (Arc<ClientConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let verified = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let any = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    (Arc::new(verified), Arc::new(any))
}

/// PowerDNS does not verify probe certificates (self-signed is UP); with `tls_verify = false`
/// neither do we. Handshake signatures are still checked: that only proves the server holds
/// the key of the certificate it sent, which any working TLS server does.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

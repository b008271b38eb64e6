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
//!
//! Schedule: the first probe runs at creation; each next one starts `interval × (1 ± jitter)`
//! after the previous one started (never earlier, no catch-up after a slow probe or a wait for
//! a concurrency slot), so a target is probed at most once per `interval × (1 − jitter)` and on
//! average once per interval. Each probe, redirects included, is bounded by its `timeout`.
//!
//! HTTP follows PowerDNS's `ifurlup` (lua-records.md §3.4): pinned to the candidate, Host and
//! SNI from the URL, certificates not verified unless `[probes].tls_verify`, UP iff the final
//! status equals `httpcode` and, with `stringmatch`, the first `min(byteslimit, body_limit)`
//! body bytes contain it (a cut body still counts). Without `stringmatch` the body is not read.
//! More than `max_redirects` redirects is a failure (`redirect`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use prometheus::proto::{MetricFamily, MetricType};
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
use crate::telemetry::metrics::{family, scalar};

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
    /// `pickselfweighted` (PowerDNS 5.0+): like `Http`, and the body's leading integer is the
    /// candidate's weight.
    HttpWeighted { url: String },
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
pub struct Health(AtomicU8, AtomicU32);

impl Health {
    /// The weight the last successful `HttpWeighted` probe read (0: none).
    pub(crate) fn weight(&self) -> u32 {
        self.1.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, w: u32) {
        self.1.store(w, Ordering::Relaxed);
    }

    pub fn state(&self) -> HealthState {
        match self.0.load(Ordering::Relaxed) {
            1 => HealthState::Up,
            2 => HealthState::Down,
            _ => HealthState::Unknown,
        }
    }

    /// Unknown counts as UP: dnsteer never answers from an unknown state on purpose, see README.
    pub(crate) fn is_up(&self) -> bool {
        self.state() != HealthState::Down
    }

    pub(crate) fn set(&self, s: HealthState) {
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
pub(crate) enum ProbeError {
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
pub(crate) const ERROR_KINDS: [&str; 10] = [
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
    pub(crate) fn kind(&self) -> &'static str {
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
    pub(crate) consecutive_failures: u32,
    pub(crate) consecutive_successes: u32,
    /// Duration of the most recent probe (connect to verdict).
    pub(crate) last_latency_ms: Option<f64>,
    /// Error kind of the most recent probe; None when it succeeded or none ran yet.
    pub last_error: Option<&'static str>,
    /// Unix time (seconds) the most recent probe finished.
    pub(crate) last_check_unix: Option<u64>,
    /// Unix time (seconds) of the last state change.
    pub last_change_unix: Option<u64>,
    pub state_changes: u64,
    pub probes_run: u64,
}

impl ProbeStatus {
    /// The target's metric labels: kind, address, and the URL or port checked (from the
    /// config, so bounded).
    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("kind", self.kind.to_string()),
            ("target", self.addr.to_string()),
            (
                "check",
                self.url
                    .clone()
                    .unwrap_or_else(|| self.port.map_or_else(String::new, |port| port.to_string())),
            ),
        ]
    }
}

/// Per target: up, consecutive failures, last latency, state changes, last error.
fn target_families(table: &[ProbeStatus]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    out.push(family(
        "dnsteer_probe_up",
        "1 if the target is UP, 0 if DOWN or not probed to completion yet.",
        MetricType::GAUGE,
        table
            .iter()
            .map(|p| (p.labels(), f64::from(u8::from(p.state == HealthState::Up))))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_consecutive_failures",
        "Consecutive failed probes of the target.",
        MetricType::GAUGE,
        table
            .iter()
            .map(|p| (p.labels(), f64::from(p.consecutive_failures)))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_last_latency_seconds",
        "Duration of the target's most recent probe.",
        MetricType::GAUGE,
        table
            .iter()
            .map(|p| (p.labels(), p.last_latency_ms.unwrap_or(0.0) / 1000.0))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_state_changes_total",
        "State changes of the target (UP/DOWN transitions).",
        MetricType::COUNTER,
        table
            .iter()
            .map(|p| (p.labels(), p.state_changes as f64))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_last_error",
        "1 for the error kind of the target's most recent failed probe.",
        MetricType::GAUGE,
        table
            .iter()
            .filter_map(|p| {
                p.last_error.map(|e| {
                    let mut l = p.labels();
                    l.push(("error", e.to_string()));
                    (l, 1.0)
                })
            })
            .collect(),
    ));
    out
}

/// Per-target fall/rise state machine, fed one probe result at a time.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    state: HealthState,
    fall: u32,
    rise: u32,
    failures: u32,
    successes: u32,
}

impl Tracker {
    /// `fall` and `rise` below 1 are taken as 1.
    pub(crate) fn new(fall: u32, rise: u32) -> Self {
        Tracker {
            state: HealthState::Unknown,
            fall: fall.max(1),
            rise: rise.max(1),
            failures: 0,
            successes: 0,
        }
    }

    pub(crate) fn state(&self) -> HealthState {
        self.state
    }

    /// Records one result; returns the new state when it changed.
    pub(crate) fn observe(&mut self, ok: bool) -> Option<HealthState> {
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
fn jittered(interval: Duration, jitter: f64, u: f64) -> Duration {
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

impl Settings {
    /// Keeps `previous`'s semaphore when the cap is unchanged, so a reload does not reset it.
    fn new(d: &ProbeDefaults, tls: &TlsConfigs, previous: Option<&Settings>) -> Settings {
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
                tls.verified.clone()
            } else {
                tls.any.clone()
            },
            slots,
        }
    }
}

struct Shared {
    settings: ArcSwap<Settings>,
    counters: ProbeCounters,
    prober: Box<dyn Prober>,
    tls: TlsConfigs,
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
        let tls = TlsConfigs::new();
        let shared = Arc::new(Shared {
            settings: ArcSwap::from_pointee(Settings::new(defaults, &tls, None)),
            counters: ProbeCounters::default(),
            prober,
            tls,
        });
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
        let shared = &self.shared;
        let next = Settings::new(defaults, &shared.tls, Some(&shared.settings.load()));
        shared.settings.store(Arc::new(next));
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

    /// The status of one target, if it is in the probed set.
    pub fn target_status(&self, spec: &ProbeSpec) -> Option<ProbeStatus> {
        lock(&self.targets).get(spec).map(|t| t.core.status())
    }

    /// Pool-wide counters for the metrics collector.
    pub fn counters(&self) -> &ProbeCounters {
        &self.shared.counters
    }

    /// Probe targets by state, state changes and probe latency, from the pool's status table.
    /// Target labels come from the config (address and URL or port), so they stay bounded.
    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let table = self.status();
        let by_state = [HealthState::Up, HealthState::Down, HealthState::Unknown]
            .iter()
            .map(|s| {
                let n = table.iter().filter(|p| p.state == *s).count();
                (vec![("state", s.as_str().to_string())], n as f64)
            })
            .collect();
        out.push(family(
            "dnsteer_probe_targets",
            "Probe targets by health state.",
            MetricType::GAUGE,
            by_state,
        ));
        out.extend(target_families(&table));
        let c = self.counters();
        out.push(scalar(
            "dnsteer_probes_total",
            "Probes run.",
            MetricType::COUNTER,
            c.probes_run() as f64,
        ));
        out.push(family(
            "dnsteer_probe_failures_total",
            "Failed probes, by error kind.",
            MetricType::COUNTER,
            c.failures()
                .map(|(k, n)| (vec![("error", k.to_string())], n as f64))
                .collect(),
        ));
        out
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
        /// Read the body's weight (`pickselfweighted`).
        weighted: bool,
    },
}

impl Plan {
    fn new(spec: &ProbeSpec) -> Plan {
        match &spec.check {
            Check::Tcp { port } => Plan::Tcp(SocketAddr::new(spec.addr, *port)),
            Check::Http { url } | Check::HttpExternal { url } | Check::HttpWeighted { url } => {
                Plan::Http {
                    url: Url::parse(url),
                    headers: request_headers(&spec.options),
                    pinned: (!matches!(spec.check, Check::HttpExternal { .. }))
                        .then_some(spec.addr),
                    weighted: matches!(spec.check, Check::HttpWeighted { .. }),
                }
            }
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
    last_check: Option<SystemTime>,
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
        st.last_check = Some(SystemTime::now());
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
            Check::Http { url } | Check::HttpWeighted { url } => {
                format!("{} via {}", url, self.spec.addr)
            }
            Check::HttpExternal { url } => format!("{} for {}", url, self.spec.addr),
            Check::Tcp { port } => format!("tcp {}", SocketAddr::new(self.spec.addr, *port)),
        }
    }

    fn status(&self) -> ProbeStatus {
        let (kind, url, port) = match &self.spec.check {
            Check::Http { url } => ("http", Some(url.clone()), None),
            Check::HttpWeighted { url } => ("http_weighted", Some(url.clone()), None),
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
            last_check_unix: st.last_check.and_then(unix_secs),
            last_change_unix: st.last_change.and_then(unix_secs),
            state_changes: st.changes,
            probes_run: st.probes_run,
        }
    }
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
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
                last_check: None,
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
                    weighted,
                } => {
                    let url = url.as_ref().map_err(|e| ProbeError::BadUrl(e.clone()))?;
                    let headers = headers.as_ref().map_err(|e| ProbeError::Http(e.clone()))?;
                    let weight = weighted.then_some(&*target.health);
                    let r = http_probe(
                        url,
                        headers,
                        *pinned,
                        &target.spec.options,
                        settings,
                        weight,
                    )
                    .await;
                    // A failed check has no weight (PowerDNS sets 0), even before it is DOWN.
                    if let (Err(_), Some(h)) = (&r, weight) {
                        h.set_weight(0);
                    }
                    r
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
        let path = match uri
            .path_and_query()
            .map(hyper::http::uri::PathAndQuery::as_str)
        {
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
    weight: Option<&Health>,
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
        if options.stringmatch.is_none() && weight.is_none() {
            return Ok(());
        }
        let mut limit = settings.body_limit;
        if options.byteslimit > 0 {
            limit = limit.min(usize::try_from(options.byteslimit).unwrap_or(usize::MAX));
        }
        let body = read_prefix(response.into_body(), limit).await?;
        // A body cut by the limit still counts: search what was read (PowerDNS byteslimit).
        if let Some(needle) = &options.stringmatch
            && !contains(&body, needle.as_bytes())
        {
            return Err(ProbeError::StringMatch);
        }
        if let Some(h) = weight {
            h.set_weight(body_weight(&body));
        }
        return Ok(());
    }
}

/// PowerDNS 5.0 `stoi(body)`: leading whitespace, a sign, decimal digits; 0 when there are none
/// or it overflows an int (a non-positive weight then counts as 1 while UP).
fn body_weight(body: &[u8]) -> u32 {
    let s = body.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &c in digits.iter().take_while(|c| c.is_ascii_digit()) {
        v = v * 10 + i64::from(c - b'0');
        if v > i64::from(i32::MAX) + 1 {
            return 0;
        }
    }
    if neg || v > i64::from(i32::MAX) {
        return 0;
    }
    v as u32
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
    let name = ServerName::try_from(url.host.clone()).map_err(|_| {
        ProbeError::BadUrl(format!("{:?} is not a valid TLS server name", url.host))
    })?;
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

/// The two TLS client configurations a probe may use, built once per pool.
struct TlsConfigs {
    /// Chain and name checked against the webpki roots (`tls_verify = true`).
    verified: Arc<ClientConfig>,
    /// Any certificate accepted, as PowerDNS does (`tls_verify = false`).
    any: Arc<ClientConfig>,
}

impl TlsConfigs {
    /// Both on the ring provider explicitly, so the process-wide default provider never matters.
    fn new() -> TlsConfigs {
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
        TlsConfigs {
            verified: Arc::new(verified),
            any: Arc::new(any),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicUsize;

    fn defaults() -> ProbeDefaults {
        ProbeDefaults {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            minimum_failures: 1,
            rise: 1,
            max_concurrent: 256,
            jitter: 0.0,
            tls_verify: false,
            max_redirects: 5,
            body_limit: 65536,
        }
    }

    fn options(interval_ms: u64, timeout_ms: u64, fall: u32, rise: u32) -> CheckOptions {
        CheckOptions {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            fall,
            rise,
            stringmatch: None,
            useragent: "dnsteer".into(),
            byteslimit: 0,
            httpcode: 200,
            headers: Vec::new(),
            source: None,
        }
    }

    fn tcp_spec(last_octet: u8, opts: CheckOptions) -> ProbeSpec {
        ProbeSpec {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last_octet)),
            check: Check::Tcp { port: 80 },
            options: opts,
        }
    }

    enum Behave {
        Ok,
        Fail,
        /// Takes this long, then succeeds.
        Slow(Duration),
        Hang,
    }

    /// Scripted prober: the result of the n-th probe of an address, plus a call log.
    struct Fake {
        script: Box<dyn Fn(IpAddr, usize) -> Behave + Send + Sync>,
        calls: Mutex<Vec<(IpAddr, Instant)>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl Fake {
        fn new(script: impl Fn(IpAddr, usize) -> Behave + Send + Sync + 'static) -> Arc<Fake> {
            Arc::new(Fake {
                script: Box::new(script),
                calls: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            })
        }

        fn times(&self, addr: IpAddr) -> Vec<Instant> {
            lock(&self.calls)
                .iter()
                .filter(|(a, _)| *a == addr)
                .map(|(_, t)| *t)
                .collect()
        }
    }

    struct InFlight<'a>(&'a AtomicUsize);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    struct FakeHandle(Arc<Fake>);

    impl Prober for FakeHandle {
        fn probe<'a>(&'a self, target: &'a TargetCore, _: &'a Settings) -> ProbeFuture<'a> {
            Box::pin(async move {
                let fake = &self.0;
                let addr = target.spec.addr;
                let n = {
                    let mut calls = lock(&fake.calls);
                    calls.push((addr, Instant::now()));
                    calls.iter().filter(|(a, _)| *a == addr).count() - 1
                };
                let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let _guard = InFlight(&fake.in_flight);
                match (fake.script)(addr, n) {
                    Behave::Ok => Ok(()),
                    Behave::Fail => Err(ProbeError::Refused),
                    Behave::Slow(d) => {
                        time::sleep(d).await;
                        Ok(())
                    }
                    Behave::Hang => std::future::pending().await,
                }
            })
        }
    }

    fn pool(d: &ProbeDefaults, fake: &Arc<Fake>) -> Arc<ProbePool> {
        ProbePool::with_prober(d, Box::new(FakeHandle(fake.clone())))
    }

    #[test]
    fn tracker_new_target_fall_one_goes_down_on_first_failure() {
        let mut t = Tracker::new(1, 1);
        assert_eq!(t.observe(false), Some(HealthState::Down));
        assert_eq!(t.observe(true), Some(HealthState::Up));
    }

    #[test]
    fn tracker_new_target_stays_unknown_until_fall_failures() {
        let mut t = Tracker::new(3, 1);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.state(), HealthState::Unknown);
        assert_eq!(t.observe(false), Some(HealthState::Down));
    }

    #[test]
    fn tracker_first_success_is_up_without_rise() {
        let mut t = Tracker::new(1, 5);
        assert_eq!(t.observe(true), Some(HealthState::Up));
    }

    #[test]
    fn tracker_fall_and_rise_from_steady_state() {
        let mut t = Tracker::new(2, 3);
        t.observe(true);
        assert_eq!(t.observe(false), None, "one failure is below fall");
        assert_eq!(t.observe(true), None, "a success resets the failure count");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(HealthState::Down));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(HealthState::Up));
    }

    #[test]
    fn tracker_does_not_flap_with_rise_two_on_alternating_results() {
        let mut t = Tracker::new(1, 2);
        t.observe(true);
        assert_eq!(t.observe(false), Some(HealthState::Down));
        for i in 0..20 {
            assert_eq!(t.observe(i % 2 == 0), None);
        }
        assert_eq!(t.state(), HealthState::Down);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let i = Duration::from_secs(10);
        for k in 0..=100 {
            let u = f64::from(k) / 100.0;
            let d = jittered(i, 0.1, u);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
            assert_eq!(jittered(i, 0.0, u), i);
        }
        assert_eq!(jittered(i, 0.1, 0.0), Duration::from_secs(9));
        assert_eq!(jittered(i, 0.1, 1.0), Duration::from_secs(11));
    }

    #[test]
    fn error_kinds_are_distinct_and_indexed() {
        let errs = [
            ProbeError::Timeout(Duration::ZERO),
            ProbeError::Refused,
            ProbeError::Connect(std::io::Error::other("x")),
            ProbeError::Tls(std::io::Error::other("x")),
            ProbeError::Http("x".into()),
            ProbeError::Status { got: 1, want: 2 },
            ProbeError::StringMatch,
            ProbeError::Redirect("x".into()),
            ProbeError::BadUrl("x".into()),
            ProbeError::Resolve {
                host: "h".into(),
                reason: "r".into(),
            },
        ];
        let kinds: Vec<&str> = errs.iter().map(ProbeError::kind).collect();
        assert_eq!(kinds, ERROR_KINDS);
    }

    #[test]
    fn url_parsing() {
        let u = Url::parse("http://hc.test:8080/ok?x=1#frag").unwrap();
        assert_eq!(
            u,
            Url {
                https: false,
                host: "hc.test".into(),
                port: 8080,
                host_header: "hc.test:8080".into(),
                path: "/ok?x=1".into(),
            }
        );
        let u = Url::parse("HTTPS://[2001:db8::1]").unwrap();
        assert!(u.https);
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.host_header, "[2001:db8::1]");
        assert_eq!((u.port, u.path.as_str()), (443, "/"));
        for bad in [
            "ftp://x/",
            "/just/a/path",
            "http://",
            "not a url",
            "http://h:0/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_locations_resolve_against_the_current_url() {
        let base = Url::parse("https://a.test:8443/dir/page?q=1").unwrap();
        let j = |l: &str| base.join(l).unwrap();
        assert_eq!(j("/ok").path, "/ok");
        assert_eq!(j("/ok").host_header, "a.test:8443");
        assert_eq!(j("next?x").path, "/dir/next?x");
        let other = j("//b.test/x");
        assert_eq!(
            (other.https, other.host.as_str(), other.port),
            (true, "b.test", 443)
        );
        let abs = j("http://c.test:81/y");
        assert_eq!(
            (abs.https, abs.host.as_str(), abs.port),
            (false, "c.test", 81)
        );
        assert!(base.join("gopher://x/").is_err());
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"hello world", b"o w"));
        assert!(!contains(b"hello", b"world"));
        assert!(contains(b"", b""));
        assert!(!contains(b"ab", b"abc"));
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_respects_interval_and_jitter() {
        let fake = Fake::new(|_, _| Behave::Ok);
        let mut d = defaults();
        d.jitter = 0.1;
        let pool = pool(&d, &fake);
        let spec = tcp_spec(1, options(1000, 500, 1, 1));
        let start = Instant::now();
        let health = pool.sync(std::slice::from_ref(&spec)).await;
        assert_eq!(health[&spec].state(), HealthState::Up);
        time::sleep(Duration::from_secs(30)).await;
        let times = fake.times(spec.addr);
        assert_eq!(times[0], start, "first probe at creation");
        assert!(
            (28..=34).contains(&times.len()),
            "{} probes in 30 s",
            times.len()
        );
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(900) && gap <= Duration::from_millis(1100),
                "{gap:?}"
            );
        }
        assert!(
            times
                .windows(2)
                .any(|w| w[1] - w[0] != Duration::from_secs(1)),
            "jitter spreads the schedule"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_shared_by_many_records_is_probed_once_per_interval() {
        let fake = Fake::new(|_, _| Behave::Ok);
        let pool = pool(&defaults(), &fake);
        let spec = tcp_spec(1, options(1000, 500, 1, 1));
        let specs = vec![spec.clone(); 50];
        let first = pool.sync(&specs).await;
        assert_eq!(first.len(), 1);
        time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(fake.times(spec.addr).len(), 11);
        // A re-sync keeps the flag and does not probe again out of schedule.
        let again = pool.sync(&specs).await;
        assert!(Arc::ptr_eq(&first[&spec], &again[&spec]));
        assert_eq!(fake.times(spec.addr).len(), 11);
        assert_eq!(pool.status().len(), 1);
        assert_eq!(pool.counters().probes_run(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn different_options_are_different_targets() {
        let fake = Fake::new(|_, _| Behave::Ok);
        let pool = pool(&defaults(), &fake);
        let a = tcp_spec(1, options(1000, 500, 1, 1));
        let mut b = a.clone();
        b.options.fall = 3;
        let health = pool.sync(&[a.clone(), b.clone()]).await;
        assert!(!Arc::ptr_eq(&health[&a], &health[&b]));
        assert_eq!(fake.times(a.addr).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_targets_stop_and_kept_ones_keep_their_state() {
        let fake = Fake::new(|addr, _| match addr {
            IpAddr::V4(v4) if v4.octets()[3] == 1 => Behave::Fail,
            _ => Behave::Ok,
        });
        let pool = pool(&defaults(), &fake);
        let a = tcp_spec(1, options(1000, 500, 1, 1));
        let b = tcp_spec(2, options(1000, 500, 1, 1));
        let first = pool.sync(&[a.clone(), b.clone()]).await;
        assert_eq!(first[&a].state(), HealthState::Down);
        time::sleep(Duration::from_millis(2500)).await;
        let kept = pool.sync(std::slice::from_ref(&a)).await;
        assert!(Arc::ptr_eq(&first[&a], &kept[&a]));
        assert_eq!(kept[&a].state(), HealthState::Down);
        let b_calls = fake.times(b.addr).len();
        time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            fake.times(b.addr).len(),
            b_calls,
            "removed target still probed"
        );
        assert!(fake.times(a.addr).len() >= 8);
        assert_eq!(pool.status().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_times_out_and_does_not_stall_others() {
        let fake = Fake::new(|addr, _| match addr {
            IpAddr::V4(v4) if v4.octets()[3] == 1 => Behave::Hang,
            _ => Behave::Ok,
        });
        let pool = pool(&defaults(), &fake);
        let hang = tcp_spec(1, options(1000, 2500, 1, 1));
        let fine = tcp_spec(2, options(1000, 500, 1, 1));
        let start = Instant::now();
        let health = pool.sync(&[hang.clone(), fine.clone()]).await;
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
        assert_eq!(health[&hang].state(), HealthState::Down);
        assert_eq!(health[&fine].state(), HealthState::Up);
        assert_eq!(fake.times(fine.addr).len(), 3, "probed at 0, 1 and 2 s");
        let st = pool.status();
        let hung = st.iter().find(|s| s.addr == hang.addr).unwrap();
        assert_eq!(hung.last_error, Some("timeout"));
        let timeouts = pool.counters().failures().find(|(k, _)| *k == "timeout");
        assert_eq!(timeouts, Some(("timeout", 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn sync_is_bounded_when_a_first_probe_waits_for_a_slot() {
        let fake = Fake::new(|addr, _| match addr {
            IpAddr::V4(v4) if v4.octets()[3] == 1 => Behave::Hang,
            _ => Behave::Ok,
        });
        let mut d = defaults();
        d.max_concurrent = 1;
        let pool = pool(&d, &fake);
        let hog = tcp_spec(1, options(10_000, 10_000, 1, 1));
        pool.sync(std::slice::from_ref(&hog)).await;
        // The hog probes again from 20 s to 30 s, holding the only slot.
        time::sleep_until(fake.times(hog.addr)[0] + Duration::from_secs(21)).await;
        let late = tcp_spec(2, options(1000, 1000, 1, 1));
        let start = Instant::now();
        let health = pool.sync(&[hog.clone(), late.clone()]).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1) + SYNC_MARGIN);
        assert_eq!(health[&late].state(), HealthState::Unknown);
        assert!(health[&late].is_up(), "unknown answers as up");
        time::sleep(Duration::from_secs(10)).await;
        assert_eq!(health[&late].state(), HealthState::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_cap_holds_across_targets() {
        let fake = Fake::new(|_, _| Behave::Slow(Duration::from_millis(400)));
        let mut d = defaults();
        d.max_concurrent = 3;
        let pool = pool(&d, &fake);
        let specs: Vec<ProbeSpec> = (1..=12)
            .map(|i| tcp_spec(i, options(1000, 2000, 1, 1)))
            .collect();
        pool.sync(&specs).await;
        time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 3);
        // Slots are the bottleneck (12 × 0.4 s / 3 = 1.6 s per round): no target goes faster
        // than its interval, and each is still probed.
        for s in &specs {
            let t = fake.times(s.addr);
            assert!(t.len() >= 3, "{}", t.len());
            assert!(t.windows(2).all(|w| w[1] - w[0] >= Duration::from_secs(1)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fall_and_rise_drive_the_health_flag() {
        // Probe n: up for 0..3, down for 3..8, up from 8.
        let fake = Fake::new(|_, n| {
            if (3..8).contains(&n) {
                Behave::Fail
            } else {
                Behave::Ok
            }
        });
        let pool = pool(&defaults(), &fake);
        let spec = tcp_spec(1, options(1000, 500, 3, 2));
        let start = Instant::now();
        let h = pool.sync(std::slice::from_ref(&spec)).await[&spec].clone();
        let at = |ms: u64| time::sleep_until(start + Duration::from_millis(ms));
        let mut seen = Vec::new();
        for ms in (100..=11_100).step_by(1000) {
            at(ms).await;
            seen.push(h.state());
        }
        use HealthState::{Down, Up};
        // Probes 3,4 fail (still up), 5 is the third failure, 8 and 9 succeed (up after 9).
        assert_eq!(
            seen,
            [Up, Up, Up, Up, Up, Down, Down, Down, Down, Up, Up, Up]
        );
        let st = &pool.status()[0];
        assert_eq!(st.state_changes, 3);
        assert_eq!(st.consecutive_successes, 4, "probes 8 to 11");
        assert_eq!(pool.counters().state_changes(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_probing() {
        let fake = Fake::new(|_, _| Behave::Ok);
        let pool = pool(&defaults(), &fake);
        let spec = tcp_spec(1, options(1000, 500, 1, 1));
        pool.sync(std::slice::from_ref(&spec)).await;
        pool.shutdown();
        time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.times(spec.addr).len(), 1);
        let again = pool.sync(std::slice::from_ref(&spec)).await;
        assert_eq!(again[&spec].state(), HealthState::Unknown);
        time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.times(spec.addr).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn set_defaults_resizes_the_cap() {
        let fake = Fake::new(|_, _| Behave::Slow(Duration::from_millis(400)));
        let mut d = defaults();
        d.max_concurrent = 1;
        let pool = pool(&d, &fake);
        let specs: Vec<ProbeSpec> = (1..=6)
            .map(|i| tcp_spec(i, options(1000, 2000, 1, 1)))
            .collect();
        pool.sync(&specs).await;
        assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 1);
        d.max_concurrent = 6;
        pool.set_defaults(&d);
        time::sleep(Duration::from_secs(5)).await;
        assert!(fake.max_in_flight.load(Ordering::SeqCst) > 1);
    }
}

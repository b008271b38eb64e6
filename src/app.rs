//! The whole proxy in one process: builds the first snapshot, binds, starts the workers and
//! the control plane, and stops them. Tests and benches start it in-process on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, RestartSettings};
use crate::geo::{GeoDb, GeoError};
use crate::listener::{self, TcpCounts};
use crate::metrics::Metrics;
use crate::probes::ProbePool;
use crate::querylog::{self, QueryLog};
use crate::ratelimit::RateLimiter;
use crate::records::{self, RecordTable, Zones};
use crate::upstream::{self, UpstreamSet};

/// What the packet path reads for one query: swapped whole by reloads.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub records: RecordTable,
    pub geo: Option<Arc<GeoDb>>,
    /// Zone facts the records were linked with (reused when a refresh fails).
    pub zones: Zones,
    pub upstream: Arc<UpstreamSet>,
    pub sample_threshold: u64,
    /// Transferred LUA records left to PowerDNS because they do not compile here, and why.
    pub rejected: Vec<records::Rejected>,
    /// Owner names of the in-process records (their zones' facts are refreshed on SOA TTL).
    pub record_names: Vec<String>,
}

/// Control-plane facts for `/status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ControlStatus {
    pub config_file: String,
    pub config_hash: String,
    pub last_reload_unix: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_unix: Option<u64>,
    /// Settings changed in the file that only take effect after a restart.
    pub restart_required: Vec<String>,
    pub geoip_build_epoch: Option<u64>,
}

/// State shared by workers and the control plane.
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub upstream_set: Arc<ArcSwap<UpstreamSet>>,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    pub log: Arc<QueryLog>,
    pub probes: Arc<ProbePool>,
    pub restart: RestartSettings,
    pub tcp_counts: TcpCounts,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Reloads never overlap.
    pub reload_lock: tokio::sync::Mutex<()>,
    pub control: Mutex<ControlStatus>,
    pub listen_addrs: Mutex<Vec<SocketAddr>>,
    pub started_unix: u64,
    /// `[zones].transfer` data.
    pub transfers: Arc<crate::zones::Transfers>,
    /// NOTIFYs from the packet path to the transfer loop (bounded; full = dropped).
    pub notify_tx: tokio::sync::mpsc::Sender<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("geoip: {0}")]
    Geo(#[from] GeoError),
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl StartError {
    pub fn kind(&self) -> &'static str {
        match self {
            StartError::Config(_) => "config",
            StartError::Geo(_) => "geoip",
            StartError::Bind { .. } => "bind",
            StartError::Runtime(_) => "runtime",
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads the GeoIP database of `config`, reusing `previous` when the path and file are unchanged.
pub fn load_geo(
    config: &Config,
    previous: Option<&Snapshot>,
) -> Result<Option<Arc<GeoDb>>, GeoError> {
    let Some(g) = &config.geoip else {
        return Ok(None);
    };
    if let Some(prev) = previous
        && let (Some(pg), Some(pdb)) = (&prev.config.geoip, &prev.geo)
        && pg.database == g.database
    {
        // Same path: keep it. A replaced file is noticed by the reload loop, which forces a
        // reopen (`force_geo_reload`).
        return Ok(Some(pdb.clone()));
    }
    Ok(Some(Arc::new(GeoDb::open(&g.database)?)))
}

/// Builds a complete snapshot: compile, open GeoIP, probe new targets once, learn zone SOAs,
/// link. Nothing shared changes if this fails, except that the probe pool now holds the new
/// targets (their state is kept for the next attempt).
pub async fn build_snapshot(
    config: Config,
    probes: &ProbePool,
    previous: Option<&Snapshot>,
    force_geo_reload: bool,
    transferred: &[crate::config::RecordSpec],
) -> Result<Snapshot, StartError> {
    // A name/type defined in the TOML wins over the same name/type from a zone.
    let transferred: Vec<_> = transferred
        .iter()
        .filter(|t| {
            let overridden = config.records.iter().any(|c| c.name == t.name && c.rtype == t.rtype);
            if overridden {
                tracing::warn!(name = %t.name, rtype = t.rtype.name(), "record defined in the config and in a transferred zone: the config wins");
            }
            !overridden
        })
        .cloned()
        .collect();
    let (compiled, rejected) = records::compile_with(&config, &transferred)?;
    for r in &rejected {
        tracing::info!(name = %r.spec.name, rtype = r.spec.rtype.name(), reason = %r.reason, "transferred LUA record left to PowerDNS");
    }
    let geo = if force_geo_reload {
        match &config.geoip {
            Some(g) => Some(Arc::new(GeoDb::open(&g.database)?)),
            None => None,
        }
    } else {
        load_geo(&config, previous)?
    };
    // New probe targets are probed once before the records that use them go live.
    let health = probes.sync(&compiled.probe_specs()).await;
    let previous_zones = previous.map(|p| p.zones.clone()).unwrap_or_default();
    let record_names = compiled.names();
    let zones = crate::zones::learn_all(
        &config.upstream.servers,
        &record_names,
        config.upstream.timeout,
        &previous_zones,
    )
    .await;
    let locate = geo.clone().map(|g| g as Arc<dyn records::Locate>);
    let mut records = RecordTable::link(&compiled, &health, locate, &zones);
    if let Some(prev) = previous {
        records.adopt_stats(&prev.records);
    }
    // An unchanged [upstream] keeps its pool, so workers keep their sockets and pending tables.
    let upstream = match previous {
        Some(p) if p.upstream.config == config.upstream => p.upstream.clone(),
        _ => UpstreamSet::new(&config.upstream, previous.map(|p| p.upstream.as_ref())),
    };
    Ok(Snapshot {
        sample_threshold: querylog::threshold(config.logging.query_sample_rate),
        config: Arc::new(config),
        records,
        geo,
        zones,
        upstream,
        rejected,
        record_names,
    })
}

/// A running proxy.
pub struct App {
    pub shared: Arc<Shared>,
    /// Bound DNS addresses (UDP and TCP on the same port), in `[server].listen` order.
    pub dns_addrs: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
    control: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<std::io::Result<()>>>,
    config_path: PathBuf,
}

impl App {
    /// Starts everything from a validated config; returns once the first probe round is done
    /// and the sockets are bound (`/readyz` is ready).
    pub fn start(config: Config) -> Result<App, StartError> {
        let control = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dnsteer-control")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let config_path = config.path.clone();
        let restart = config.restart.clone();
        let log = QueryLog::start(config.logging.event_rate_limit);
        let probes = control.block_on(async { ProbePool::new(&config.probes) });
        let limiter = RateLimiter::new(&config.ratelimit);
        // Zones to transfer are read before the first table is built, so their records are
        // answered in-process from the start (a failure here is retried by the zone loop).
        let transfers = Arc::new(crate::zones::Transfers::default());
        control.block_on(async {
            for zone in &config.zones.transfer {
                let _ = transfers
                    .refresh(&config.upstream.servers, zone, true)
                    .await;
            }
        });
        let snap = control.block_on(build_snapshot(
            config,
            &probes,
            None,
            false,
            &transfers.specs(),
        ))?;
        let (notify_tx, notify_rx) = tokio::sync::mpsc::channel(crate::zones::NOTIFY_QUEUE);
        let status = ControlStatus {
            config_file: config_path.display().to_string(),
            config_hash: snap.config.hash.clone(),
            last_reload_unix: Some(unix_now()),
            geoip_build_epoch: snap.geo.as_ref().map(|g| g.build_epoch()),
            ..ControlStatus::default()
        };
        let upstream_set = Arc::new(ArcSwap::from(snap.upstream.clone()));
        let shared = Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            upstream_set,
            limiter,
            metrics: Metrics::default(),
            log,
            probes,
            restart: restart.clone(),
            tcp_counts: TcpCounts::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
            control: Mutex::new(status),
            listen_addrs: Mutex::new(Vec::new()),
            started_unix: unix_now(),
            transfers,
            notify_tx,
        });

        let metrics_listener = control
            .block_on(tokio::net::TcpListener::bind(restart.metrics_listen))
            .map_err(|source| StartError::Bind {
                what: format!("metrics listener {}", restart.metrics_listen),
                source,
            })?;
        let metrics_addr = metrics_listener.local_addr().map_err(StartError::Runtime)?;
        let mut bound = listener::bind_all(
            &restart.listen,
            restart.workers,
            restart.socket_buffer,
            restart.max_udp_payload <= listener::DONT_FRAGMENT_MAX_PAYLOAD,
        )
        .map_err(|source| StartError::Bind {
            what: format!("DNS listeners {:?}", restart.listen),
            source,
        })?;
        *shared
            .listen_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bound.addrs.clone();

        let (stop, stop_rx) = watch::channel(false);
        let mut workers = Vec::with_capacity(restart.workers);
        for i in 0..restart.workers {
            let udp: Vec<_> = bound.udp.iter_mut().map(|v| v.remove(0)).collect();
            let tcp: Vec<_> = bound.tcp.iter_mut().map(|v| v.remove(0)).collect();
            let shared = shared.clone();
            let stop_rx = stop_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("dnsteer-worker-{i}"))
                .spawn(move || {
                    let r = listener::run_worker(i, shared, udp, tcp, stop_rx);
                    if let Err(e) = &r {
                        tracing::error!(worker = i, error = %e, "worker failed");
                    }
                    r
                })
                .map_err(StartError::Runtime)?;
            workers.push(handle);
        }

        control.spawn(crate::admin::serve(metrics_listener, shared.clone()));
        for s in shared.upstream_set.load().servers.iter() {
            control.spawn(upstream::health_check_loop(
                s.clone(),
                shared.upstream_set.clone(),
            ));
        }
        // Installed before ready: a SIGHUP from then on reloads (its default action is exit).
        let reloads = {
            let _rt = control.enter();
            crate::reload::start(shared.clone(), config_path.clone())
        };
        control.spawn(reloads);
        control.spawn(crate::zones::run(shared.clone(), notify_rx));
        control.spawn(log_block_ends(shared.clone()));
        shared.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            listen = ?bound.addrs,
            metrics = %metrics_addr,
            workers = restart.workers,
            "dnsteer ready"
        );
        Ok(App {
            shared,
            dns_addrs: bound.addrs,
            metrics_addr,
            control: Some(control),
            stop,
            workers,
            config_path,
        })
    }

    /// Runs a reload now (as SIGHUP does) and waits for it: Ok(true) applied, Ok(false) no
    /// change, Err with the reason when the file was rejected.
    pub fn reload(&self) -> Result<bool, String> {
        let rt = self.control.as_ref().expect("running");
        let shared = self.shared.clone();
        let path = self.config_path.clone();
        rt.block_on(async move { rt_spawn_reload(shared, path).await })
    }

    /// Graceful stop: unready at once, keep answering for `drain`, then stop accepting, let
    /// in-flight queries finish, and return.
    pub fn shutdown(mut self, drain: Duration) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.ready.store(false, Ordering::Relaxed);
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "shutting down: draining"
        );
        std::thread::sleep(drain);
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(rt) = self.control.take() {
            self.shared.probes.shutdown();
            rt.shutdown_background();
        }
    }

    /// The config file this app reloads from.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }
}

/// Logs the end of each block (the limiter learns of it lazily, so the control plane watches
/// the blocked set once a second; it covers the most recent 1024 blocks started).
async fn log_block_ends(shared: Arc<Shared>) {
    let mut active: std::collections::HashSet<ipnet::IpNet> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now: std::collections::HashSet<ipnet::IpNet> = shared
            .limiter
            .top_blocked(1024)
            .into_iter()
            .map(|b| b.prefix)
            .collect();
        let dry_run = shared.snapshot.load().config.ratelimit.dry_run;
        for ended in active.difference(&now) {
            tracing::info!(target: "dnsteer::ratelimit", source = %ended, dry_run, "block ended");
        }
        active = now;
    }
}

async fn rt_spawn_reload(shared: Arc<Shared>, path: PathBuf) -> Result<bool, String> {
    // Reloads run as tasks on the control runtime, serialised by the reload module.
    tokio::spawn(async move { crate::reload::reload_once(&shared, &path, false).await })
        .await
        .map_err(|e| e.to_string())?
}

impl Drop for App {
    fn drop(&mut self) {
        if self.control.is_some() {
            self.stop_now();
        }
    }
}

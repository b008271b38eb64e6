//! The whole proxy in one process: builds the first snapshot, binds, starts the workers and
//! the control plane, and stops them. Tests and benches start it in-process on port 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, RestartSettings};
use crate::control::build::{self, BuildError};
use crate::control::{Control, ControlStatus, admin, reload, unix_now, zones};
use crate::forward::cache::PacketCache;
use crate::forward::upstream;
use crate::ratelimit::RateLimiter;
use crate::server::listener;
use crate::state::{Shared, TcpCounts};
use crate::steer::probes::ProbePool;
use crate::telemetry::dnstap::Dnstap;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::querylog::QueryLog;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
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
            StartError::Build(e) => e.kind(),
            StartError::Bind { .. } => "bind",
            StartError::Runtime(_) => "runtime",
        }
    }
}

/// A running proxy.
pub struct App {
    /// The control plane (and, through `control.data`, the handles the workers share).
    pub(crate) control_plane: Arc<Control>,
    /// Bound DNS addresses (UDP and TCP on the same port), in `[server].listen` order.
    pub dns_addrs: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
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
        let (ctl, notify_rx) = first_state(&control, config)?;
        let shared = ctl.data.clone();

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
            restart.udp_steering,
        )
        .map_err(|source| StartError::Bind {
            what: format!("DNS listeners {:?}", restart.listen),
            source,
        })?;

        *ctl.listen_addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = bound.addrs.clone();

        let (stop, stop_rx) = watch::channel(false);
        let workers = spawn_workers(&restart, &shared, &mut bound, &stop_rx)?;
        spawn_control_tasks(&control, &ctl, metrics_listener, &config_path, notify_rx);
        ctl.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            listen = ?bound.addrs,
            metrics = %metrics_addr,
            workers = restart.workers,
            "dnsteer ready"
        );
        Ok(App {
            control_plane: ctl,
            dns_addrs: bound.addrs,
            metrics_addr,
            runtime: Some(control),
            stop,
            workers,
            config_path,
        })
    }

    /// Runs a reload now (as SIGHUP does) and waits for it: Ok(true) applied, Ok(false) no
    /// change, Err with the reason when the file was rejected.
    pub fn reload(&self) -> Result<bool, String> {
        let rt = self.runtime.as_ref().expect("running");
        let ctl = self.control_plane.clone();
        let path = self.config_path.clone();
        rt.block_on(async move { rt_spawn_reload(ctl, path).await })
    }

    /// Graceful stop: unready at once, keep answering for `drain`, then stop accepting, let
    /// in-flight queries finish, and return.
    pub fn shutdown(mut self, drain: Duration) {
        self.control_plane.draining.store(true, Ordering::Relaxed);
        self.control_plane.ready.store(false, Ordering::Relaxed);
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
        // After the workers: nothing is queued any more, so STOP follows the last frame.
        if let Some(tap) = &self.control_plane.data.dnstap {
            tap.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            self.control_plane.probes.shutdown();
            rt.shutdown_background();
        }
    }

    /// The handles the workers share (snapshot, limiter, metrics, query log).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.control_plane.data
    }
}

/// The first snapshot (zones to transfer read first) and the state the workers and the
/// control plane share, before anything is bound.
fn first_state(
    control: &tokio::runtime::Runtime,
    config: Config,
) -> Result<(Arc<Control>, mpsc::Receiver<String>), StartError> {
    let config_path = config.path.clone();
    let restart = config.restart.clone();
    let log = QueryLog::start(config.logging.event_rate_limit);
    let probes = control.block_on(async { ProbePool::new(&config.probes) });
    let limiter = RateLimiter::new(&config.ratelimit);
    // Zones to transfer are read before the first table is built, so their records are
    // answered in-process from the start (a failure here is retried by the zone loop).
    let transfers = Arc::new(zones::Transfers::default());
    control.block_on(async {
        for zone in &config.zones.transfer {
            let _ = transfers
                .refresh(
                    &config.upstream.servers,
                    config.upstream.proxies_own_queries(),
                    zone,
                    true,
                )
                .await;
        }
    });
    let snap = control.block_on(build::build_snapshot(
        config,
        &probes,
        None,
        false,
        &transfers.specs(),
    ))?;
    let (notify_tx, notify_rx) = tokio::sync::mpsc::channel(zones::NOTIFY_QUEUE);
    let snap_zones = snap.config.zones.transfer.clone();
    let status = ControlStatus {
        config_file: config_path.display().to_string(),
        config_hash: snap.config.hash.clone(),
        last_reload_unix: Some(unix_now()),
        geoip_build_epoch: snap.geo.as_ref().map(|g| g.build_epoch()),
        ..ControlStatus::default()
    };
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snap)),
        limiter,
        metrics: Metrics::default(),
        log,
        restart: restart.clone(),
        tcp_counts: TcpCounts::default(),
        notify_tx,
        cache: restart
            .cache
            .enabled
            .then(|| PacketCache::new(&restart.cache, &snap_zones)),
        dnstap: restart
            .dnstap
            .as_ref()
            .map(Dnstap::start)
            .transpose()
            .map_err(StartError::Runtime)?,
        blocks: Arc::default(),
    });
    let ctl = Arc::new(Control {
        data: shared.clone(),
        probes,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        reload_lock: tokio::sync::Mutex::new(()),
        status: Mutex::new(status),
        started_unix: unix_now(),
        listen_addrs: Mutex::new(Vec::new()),
        transfers,
        own_keys: crate::control::own_key::OwnKeys::default(),
        history: crate::control::history::History::default(),
        flood: crate::control::flood::Flood::default(),
    });
    Ok((ctl, notify_rx))
}

/// One thread per worker, each taking its share of the bound sockets.
fn spawn_workers(
    restart: &RestartSettings,
    shared: &Arc<Shared>,
    bound: &mut listener::BoundSockets,
    stop_rx: &watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<std::io::Result<()>>>, StartError> {
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
    Ok(workers)
}

/// The control plane's tasks: admin HTTP, upstream health checks, reloads (SIGHUP and file
/// changes), zone transfers, own keys, block-end logging.
fn spawn_control_tasks(
    control: &tokio::runtime::Runtime,
    ctl: &Arc<Control>,
    metrics_listener: tokio::net::TcpListener,
    config_path: &Path,
    notify_rx: mpsc::Receiver<String>,
) {
    let shared = &ctl.data;
    control.spawn(admin::serve(metrics_listener, ctl.clone()));
    for s in shared.snapshot.load().upstream.servers.iter() {
        control.spawn(upstream::health_check_loop(
            s.clone(),
            reload::current_upstreams(shared),
        ));
    }
    // Installed before ready: a SIGHUP from then on reloads (its default action is exit).
    let reloads = {
        let _rt = control.enter();
        reload::start(ctl.clone(), config_path.to_path_buf())
    };
    control.spawn(reloads);
    control.spawn(zones::run(ctl.clone(), notify_rx));
    control.spawn(crate::control::own_key_loop::run(ctl.clone()));
    control.spawn(crate::control::log_block_ends(shared.clone()));
    control.spawn(crate::control::history::run(ctl.clone()));
    control.spawn(crate::control::flood::run(ctl.clone()));
}

async fn rt_spawn_reload(ctl: Arc<Control>, path: PathBuf) -> Result<bool, String> {
    // Reloads run as tasks on the control runtime, serialised by the reload module.
    tokio::spawn(async move { reload::reload_once(&ctl, &path, false).await })
        .await
        .map_err(|e| e.to_string())?
}

impl Drop for App {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            self.stop_now();
        }
    }
}

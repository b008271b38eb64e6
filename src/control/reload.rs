//! Hot reload of the mounted config (and of the GeoIP file, cookie secrets and admin token it
//! names).
//!
//! Triggers: SIGHUP; an inotify event in the config's directory (a ConfigMap update is an
//! atomic `..data` symlink swap, so the directory is watched, not the file), debounced; and a
//! content-hash poll as a fallback for missed events. A reload validates and builds the whole
//! new snapshot first; a bad file changes nothing and is reported in the log, `/status` and a
//! metric.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::sync::mpsc;

use super::build::{self, build_snapshot};
use super::{Control, unix_now};
use crate::config::{Config, RestartSettings};
use crate::forward::upstream::{self, UpstreamSet};
use crate::state::{Shared, Snapshot};

/// Quiet time after the last file event before reloading (a ConfigMap swap is several events).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Old snapshots are dropped here, not on a worker, after this delay.
const RETIRE_AFTER: Duration = Duration::from_secs(2);

/// What asked for a reload.
enum Trigger {
    /// Something changed in the config's directory.
    Files,
    /// An operator: reload even if nothing seems to have changed, GeoIP file included.
    Hangup,
}

/// Installs the triggers now, in the calling runtime's context: the SIGHUP handler (so a
/// SIGHUP that arrives once this returns reloads instead of killing the process) and the watch
/// on the config's directory. Returns the loop to spawn.
pub(crate) fn start(ctl: Arc<Control>, path: PathBuf) -> impl Future<Output = ()> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel::<Trigger>();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let watcher_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reading the file (our own reload does) raises access events: reacting to those would
        // reload forever.
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = watcher_tx.send(Trigger::Files);
        }
    })
    .and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(target: "dnsteer::control::reload", dir = %dir.display(), error = %e, "cannot watch the config directory; relying on polling and SIGHUP");
            None
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!(target: "dnsteer::control::reload", "SIGHUP: reloading");
                    let _ = tx.send(Trigger::Hangup);
                }
            });
        }
        Err(e) => {
            tracing::warn!(target: "dnsteer::control::reload", error = %e, "cannot handle SIGHUP");
        }
    }
    triggers_loop(ctl, path, rx, watcher)
}

async fn triggers_loop(
    ctl: Arc<Control>,
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
    _watcher: Option<notify::RecommendedWatcher>,
) {
    // The inputs of the last attempt: an unchanged file is not tried again (a bad one would
    // otherwise be rejected and counted on every poll), and a changed GeoIP file forces the
    // database to be reopened.
    let mut seen_config: Option<Result<Vec<u8>, std::io::ErrorKind>> = None;
    let mut seen_geo = geo_stamp(&ctl.data.snapshot.load());
    let mut seen_secrets = secrets_stamp(&ctl.data.snapshot.load());
    // Fallback poll of the config file, the GeoIP file and the secret files, every
    // `[reload].poll_interval` of the running config.
    let poll_every = || ctl.data.snapshot.load().config.reload_poll;
    let mut next_poll = tokio::time::Instant::now() + poll_every();
    loop {
        let forced = tokio::select! {
            Some(trigger) = rx.recv() => {
                let mut forced = matches!(trigger, Trigger::Hangup);
                if !forced {
                    // Debounce: wait for quiet, then drop the queued events.
                    loop {
                        tokio::time::sleep(DEBOUNCE).await;
                        let mut more = false;
                        while let Ok(t) = rx.try_recv() {
                            more = true;
                            forced |= matches!(t, Trigger::Hangup);
                        }
                        if !more || forced {
                            break;
                        }
                    }
                }
                forced
            }
            _ = tokio::time::sleep_until(next_poll) => {
                next_poll = tokio::time::Instant::now() + poll_every();
                false
            }
        };
        let config = std::fs::read(&path).map_err(|e| e.kind());
        let geo = geo_stamp(&ctl.data.snapshot.load());
        let geo_replaced = match (&geo, &seen_geo) {
            (Some(now), Some(before)) => now.0 == before.0 && now != before,
            _ => false,
        };
        // A rotated cookie secret or admin token (another directory: the poll or SIGHUP
        // notices it).
        let secrets = secrets_stamp(&ctl.data.snapshot.load());
        let secrets_replaced = secrets != seen_secrets;
        if !forced && !geo_replaced && !secrets_replaced && seen_config.as_ref() == Some(&config) {
            continue;
        }
        if geo_replaced {
            tracing::info!(target: "dnsteer::control::reload", "GeoIP database file changed: reloading it");
        }
        let _ = reload_once(&ctl, &path, forced || geo_replaced).await;
        seen_config = Some(config);
        seen_geo = geo;
        seen_secrets = secrets;
    }
}

/// The contents of the `[cookies]` secret files and of `[metrics].admin_token_file` of the
/// running config (small: a few dozen bytes each).
fn secrets_stamp(snap: &Snapshot) -> Vec<Option<Vec<u8>>> {
    let cookies = snap
        .config
        .cookies
        .iter()
        .flat_map(|c| std::iter::once(&c.secret_file).chain(&c.previous_secret_file));
    cookies
        .chain(&snap.config.admin.token_file)
        .map(|f| std::fs::read(f).ok())
        .collect()
}

/// Path, mtime and size of the GeoIP file in use, and mtime and size of the ASN file, to
/// notice replacements.
type GeoStamp = (PathBuf, SystemTime, u64, Option<(SystemTime, u64)>);

fn geo_stamp(snap: &Snapshot) -> Option<GeoStamp> {
    let g = snap.config.geoip.as_ref()?;
    let m = std::fs::metadata(&g.database).ok()?;
    let asn = g.asn_database.as_ref().and_then(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    });
    Some((g.database.clone(), m.modified().ok()?, m.len(), asn))
}

/// Loads, validates and applies the config at `path`. Ok(false) when nothing changed.
pub(crate) async fn reload_once(
    ctl: &Arc<Control>,
    path: &Path,
    force_geo: bool,
) -> Result<bool, String> {
    let _guard = ctl.reload_lock.lock().await;
    let current = ctl.data.snapshot.load_full();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return Err(fail(ctl, e.to_string())),
    };
    // Unreadable secrets count as changed: the build below reports them. The admin token was
    // read by Config::load: an unreadable or short one failed the load above, so the running
    // token stays (as a bad cookie secret does) rather than the write endpoints closing: the
    // file is one input of the config like any other, a bad one changes nothing and is reported
    // (log, /status, the failed-reload metric), and an operator in the middle of a flood keeps
    // the API to lift or add blocks. Revoking a token is replacing it, which the poll applies.
    let same_secrets = build::cookie_secrets(&config).is_ok_and(|s| s == current.cookies)
        && config.admin.token == current.config.admin.token;
    if config.hash == current.config.hash && same_secrets && !force_geo {
        return Ok(false);
    }
    let restart_changes = restart_diff(&ctl.data.restart, &config.restart);
    for key in &restart_changes {
        tracing::warn!(target: "dnsteer::control::reload", key, "setting changed in the file but needs a restart; keeping the running value");
    }
    let next = match build_snapshot(
        config,
        &ctl.probes,
        Some(&current),
        force_geo,
        &ctl.transfers.specs(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return Err(fail(ctl, e.to_string())),
    };
    apply(ctl, &current, next, restart_changes);
    Ok(true)
}

/// Rebuilds the record table from the running config and the current transferred zones (after
/// a zone changed). Probes for new targets run before the new table is published.
pub(crate) async fn rebuild(ctl: &Arc<Control>) -> Result<(), String> {
    let _guard = ctl.reload_lock.lock().await;
    let current = ctl.data.snapshot.load_full();
    let config = (*current.config).clone();
    let next = build_snapshot(
        config,
        &ctl.probes,
        Some(&current),
        false,
        &ctl.transfers.specs(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let restart = ctl
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .restart_required
        .clone();
    apply(ctl, &current, next, restart);
    Ok(())
}

fn apply(
    ctl: &Arc<Control>,
    current: &Arc<Snapshot>,
    next: Snapshot,
    restart_changes: Vec<String>,
) {
    let cfg = next.config.clone();
    ctl.data.limiter.reconfigure(&cfg.ratelimit);
    ctl.data.log.set_event_limit(cfg.logging.event_rate_limit);
    ctl.probes.set_defaults(&cfg.probes);
    let geo_epoch = next.geo.as_ref().map(|g| g.build_epoch());
    let next_upstream = next.upstream.clone();
    let old = ctl.data.snapshot.swap(Arc::new(next));
    // After the swap, so new servers' health loops read the new pool from the start.
    swap_upstreams(ctl, &current.upstream, &next_upstream);
    // Free the old snapshot (possibly a large GeoIP database) here rather than on a worker.
    tokio::spawn(async move {
        tokio::time::sleep(RETIRE_AFTER).await;
        drop(old);
    });
    ctl.reloads_ok.fetch_add(1, Ordering::Relaxed);
    let mut st = ctl
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    st.config_hash = cfg.hash.clone();
    st.last_reload_unix = Some(unix_now());
    st.restart_required = restart_changes;
    st.geoip_build_epoch = geo_epoch;
    tracing::info!(target: "dnsteer::control::reload", hash = %cfg.hash, records = cfg.records.len(), "config reloaded");
}

fn swap_upstreams(ctl: &Arc<Control>, old: &Arc<UpstreamSet>, new: &Arc<UpstreamSet>) {
    if Arc::ptr_eq(old, new) {
        return;
    }
    old.retire_missing(new);
    for s in &new.servers {
        if !old.servers.iter().any(|o| Arc::ptr_eq(o, s)) {
            tokio::spawn(upstream::health_check_loop(
                s.clone(),
                current_upstreams(&ctl.data),
            ));
        }
    }
}

/// How a health-check loop reads the current pool (and its settings): from the snapshot.
pub(crate) fn current_upstreams(
    shared: &Arc<Shared>,
) -> impl Fn() -> Arc<UpstreamSet> + Send + Sync + 'static {
    let snapshot = shared.snapshot.clone();
    move || snapshot.load().upstream.clone()
}

fn fail(ctl: &Control, message: String) -> String {
    tracing::error!(target: "dnsteer::control::reload", error = %message, "config rejected; the running config is unchanged");
    ctl.reloads_failed.fetch_add(1, Ordering::Relaxed);
    let mut st = ctl
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    st.last_error = Some(message.clone());
    st.last_error_unix = Some(unix_now());
    message
}

/// Names of restart-only settings that differ.
pub(crate) fn restart_diff(running: &RestartSettings, file: &RestartSettings) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, differs: bool| {
        if differs {
            out.push(key.to_string());
        }
    };
    check("server.listen", running.listen != file.listen);
    check("server.workers", running.workers != file.workers);
    check(
        "metrics.listen",
        running.metrics_listen != file.metrics_listen,
    );
    check("server.tcp_*", running.tcp != file.tcp);
    check(
        "server.max_udp_payload",
        running.max_udp_payload != file.max_udp_payload,
    );
    check(
        "server.socket_buffer",
        running.socket_buffer != file.socket_buffer,
    );
    check(
        "server.udp_steering",
        running.udp_steering != file.udp_steering,
    );
    check(
        "server.shutdown_*",
        running.shutdown_drain != file.shutdown_drain
            || running.shutdown_grace != file.shutdown_grace,
    );
    check("cache.*", running.cache != file.cache);
    // The sample rate reloads; where frames go and what they say do not.
    check(
        "dnstap.socket/queue/identity/version",
        running.dnstap != file.dnstap,
    );
    out
}

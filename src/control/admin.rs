//! Operator HTTP endpoints on `[metrics].listen`: `/` (the status page, `status_page`),
//! `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (first probe round done,
//! sockets bound, not draining), `/status` (JSON) and `/blocks` (flood blocks, `flood_api`).
//! Runs on the control-plane runtime, never on a worker.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::proto::{MetricFamily, MetricType};
use tokio::net::TcpListener;

use super::{Control, status_page, unix_now};
use crate::forward;
use crate::server::signing;
use crate::telemetry::metrics::{encode, family, scalar};

/// Serves until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, ctl: Arc<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ctl = ctl.clone();
                async move { Ok::<_, Infallible>(route(&req, &ctl)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, ctl: &Control) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/blocks" || path.starts_with("/blocks/") {
        let (code, ctype, body) = super::flood_api::handle(req, ctl);
        let mut r = reply(code, ctype, body);
        if code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        return r;
    }
    match path {
        "/" => status_page::reply(),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            encode(&gather(ctl)),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if ctl.ready.load(Ordering::Relaxed) && !ctl.draining.load(Ordering::Relaxed) {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/status" => {
            let mut r = reply(StatusCode::OK, "application/json", status_json(ctl));
            r.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            r
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Every metric family, read at scrape time: each area's (built next to its code), then the
/// control plane's own.
pub(crate) fn gather(ctl: &Control) -> Vec<MetricFamily> {
    let data = &ctl.data;
    let snap = data.snapshot.load();
    let mut out = data.metrics.families();
    out.extend(data.metrics.dns_families(&snap.dns_zones));
    out.extend(data.limiter.families(&data.metrics));
    out.extend(signing::families(&data.metrics));
    out.extend(forward::metrics::families(&snap.upstream.servers));
    out.extend(forward::cache::families(data.cache.as_ref(), &data.metrics));
    out.extend(ctl.probes.families());
    out.extend(ctl.transfers.families(&snap.rejected));
    out.extend(ctl.own_keys.families(snap.config.dnssec.own_key.as_ref()));
    out.extend(snap.records.families());
    out.extend(data.log.families());
    out.extend(crate::telemetry::dnstap::families(data.dnstap.as_ref()));
    out.extend(ctl.flood.families(data));
    out.extend(control_families(ctl));
    out
}

/// Reloads, restart-required settings, the GeoIP build in use, open TCP connections, readiness.
fn control_families(ctl: &Control) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    out.push(family(
        "dnsteer_config_reloads_total",
        "Config reloads, by result.",
        MetricType::COUNTER,
        vec![
            (
                vec![("result", "ok".into())],
                ctl.reloads_ok.load(Ordering::Relaxed) as f64,
            ),
            (
                vec![("result", "failed".into())],
                ctl.reloads_failed.load(Ordering::Relaxed) as f64,
            ),
        ],
    ));
    let st = ctl
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    out.push(scalar(
        "dnsteer_config_last_reload_timestamp_seconds",
        "Unix time of the last successful (re)load.",
        MetricType::GAUGE,
        st.last_reload_unix.unwrap_or(0) as f64,
    ));
    out.push(scalar(
        "dnsteer_config_restart_required",
        "1 if the file changes settings that only apply after a restart.",
        MetricType::GAUGE,
        f64::from(u8::from(!st.restart_required.is_empty())),
    ));
    out.push(scalar(
        "dnsteer_geoip_build_timestamp_seconds",
        "Build time of the GeoIP database in use (0: none).",
        MetricType::GAUGE,
        st.geoip_build_epoch.unwrap_or(0) as f64,
    ));
    out.push(scalar(
        "dnsteer_tcp_connections",
        "TCP client connections open now.",
        MetricType::GAUGE,
        ctl.data.tcp_counts.total.load(Ordering::Relaxed) as f64,
    ));
    out.push(scalar(
        "dnsteer_ready",
        "1 when /readyz reports ready.",
        MetricType::GAUGE,
        f64::from(u8::from(
            ctl.ready.load(Ordering::Relaxed) && !ctl.draining.load(Ordering::Relaxed),
        )),
    ));
    out
}

fn status_json(ctl: &Control) -> String {
    let snap = ctl.data.snapshot.load();
    let st = ctl
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let listeners: Vec<String> = ctl
        .listen_addrs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(ToString::to_string)
        .collect();
    let v = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": ctl.started_unix,
        "ready": ctl.ready.load(Ordering::Relaxed) && !ctl.draining.load(Ordering::Relaxed),
        "draining": ctl.draining.load(Ordering::Relaxed),
        "config": st,
        "listeners": listeners,
        "workers": ctl.data.restart.workers,
        "upstreams": upstreams_status(ctl, &snap),
        "probes": probes_status(ctl),
        "records_in_process": records_status(&snap),
        "zones": ctl.transfers.status(),
        "dnssec": dnssec_status(&snap, &ctl.own_keys),
        "left_to_powerdns": left_to_powerdns(ctl),
        "ratelimit": ratelimit_status(&snap, &ctl.data.limiter),
        "flood": ctl.flood.status(&snap.config.flood),
        "logging": {
            "query_sample_rate": snap.config.logging.query_sample_rate,
            "event_rate_limit": snap.config.logging.event_rate_limit,
        },
        "queries_total": ctl.data.metrics.total_queries(),
        "queries_by_decision": ctl
            .data
            .metrics
            .queries_by_decision()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n.into()))
            .collect::<serde_json::Map<_, _>>(),
        "reloads": {
            "ok": ctl.reloads_ok.load(Ordering::Relaxed),
            "failed": ctl.reloads_failed.load(Ordering::Relaxed),
        },
        "now_unix": unix_now(),
        "history": ctl.history.status(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Each PowerDNS server: health, counters, and response time (mean since start, and over the
/// most recent second it answered in).
fn upstreams_status(ctl: &Control, snap: &crate::state::Snapshot) -> Vec<serde_json::Value> {
    snap.upstream
        .servers
        .iter()
        .map(|s| {
            let (requests, responses, timeouts, errors) = s.totals();
            let mut counts = vec![0u64; crate::telemetry::metrics::LATENCY_BUCKETS.len() + 1];
            let mut sum_ns = 0u64;
            s.latency(&mut counts, &mut sum_ns);
            let answered: u64 = counts.iter().sum();
            let mean_ms = (answered > 0).then(|| sum_ns as f64 / answered as f64 / 1e6);
            serde_json::json!({
                "address": s.addr.to_string(),
                "healthy": s.is_healthy(),
                "consecutive_failures": s.consecutive_failures.load(Ordering::Relaxed),
                "requests": requests,
                "responses": responses,
                "timeouts": timeouts,
                "errors": errors,
                "latency_mean_ms": mean_ms,
                "latency_recent_ms": ctl.history.upstream_recent_ms(s.addr),
            })
        })
        .collect()
}

/// The probe table, each target with a stable `key` (kind, address, and port or URL) that the
/// status page uses as its row id.
fn probes_status(ctl: &Control) -> Vec<serde_json::Value> {
    ctl.probes
        .status()
        .into_iter()
        .map(|p| {
            let key = match (&p.url, p.port) {
                (Some(url), _) => format!("{} {} {url}", p.kind, p.addr),
                (None, Some(port)) => {
                    format!("{} {}", p.kind, std::net::SocketAddr::new(p.addr, port))
                }
                (None, None) => format!("{} {}", p.kind, p.addr),
            };
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("key".into(), key.into());
            }
            v
        })
        .collect()
}

/// Each in-process record set with its answers by outcome.
fn records_status(snap: &crate::state::Snapshot) -> Vec<serde_json::Value> {
    snap.records
        .sets()
        .map(|set| {
            let t = set.stats.totals();
            serde_json::json!({
                "name": set.name,
                "type": set.type_name,
                "ttl": set.ttl,
                "answers": {"primary": t[0], "backup": t[1], "empty": t[2], "error": t[3]},
            })
        })
        .collect()
}

/// The limiter's settings and table, with the 20 blocked sources that have the most time left.
fn ratelimit_status(
    snap: &crate::state::Snapshot,
    limiter: &crate::ratelimit::RateLimiter,
) -> serde_json::Value {
    let rl = &snap.config.ratelimit;
    serde_json::json!({
        "enabled": rl.enabled,
        "dry_run": rl.dry_run,
        "qps": rl.qps,
        "burst": rl.burst,
        "block_for_ms": rl.block_for.as_millis() as u64,
        "action": rl.action.label(),
        "tracked_sources": limiter.tracked(),
        "blocked_now": limiter.blocked_now(),
        "top_blocked": limiter.top_blocked(20),
    })
}

/// Transferred LUA records dnsteer does not answer (PowerDNS does), with the reason.
/// Per zone of in-process records: signed or not, and whether DO=1 answers are signed here
/// (and if not, why). Key tags only: never key material.
/// `[dnssec.own_key]` zones also show their own key's state (and API errors, never the API key).
fn dnssec_status(
    snap: &crate::state::Snapshot,
    own_keys: &crate::control::own_key::OwnKeys,
) -> Vec<serde_json::Value> {
    use crate::dnssec::SignerState;
    let mut own = own_keys.status();
    let mut zones: Vec<_> = snap.zones.iter().collect();
    zones.sort_by(|a, b| a.0.cmp(b.0));
    let mut out: Vec<serde_json::Value> = zones
        .into_iter()
        .map(|(apex, z)| {
            let mut v = serde_json::json!({
                "zone": apex,
                "signed": z.signed,
                "state": if z.signed { z.signer.label() } else { "unsigned" },
                "dnskeys": z.dnskeys.len(),
                "powerdns_signing_key_tags": z.signing_tags,
            });
            match &z.signer {
                SignerState::Live(s) => v["key_tag"] = s.key_tag.into(),
                SignerState::Waiting {
                    key_tag,
                    usable_at_unix,
                } => {
                    v["key_tag"] = (*key_tag).into();
                    v["usable_at_unix"] = (*usable_at_unix).into();
                }
                SignerState::NotPublished { key_tags } => {
                    v["configured_key_tags"] = key_tags.clone().into();
                }
                SignerState::NoKey => {}
            }
            if let Some(o) = own.remove(apex.as_str()) {
                v["own_key"] = serde_json::json!(o);
            }
            v
        })
        .collect();
    // Own-key zones without in-process records (no signing facts learned for them).
    out.extend(
        own.into_iter()
            .map(|(zone, o)| serde_json::json!({"zone": zone, "own_key": o})),
    );
    out
}

fn left_to_powerdns(ctl: &Control) -> Vec<serde_json::Value> {
    let snap = ctl.data.snapshot.load();
    let mut v: Vec<serde_json::Value> = snap
        .rejected
        .iter()
        .map(|r| {
            serde_json::json!({"zone": r.zone(), "name": r.spec.name, "type": r.spec.rtype.name(), "reason": r.reason})
        })
        .collect();
    for z in ctl.transfers.status() {
        for u in z.unsupported {
            v.push(serde_json::json!({"zone": z.zone, "name": u.name, "type": u.rtype, "reason": u.reason}));
        }
    }
    v
}

//! Operator HTTP endpoints on `[metrics].listen`: `/metrics` (Prometheus text), `/healthz`
//! (process alive), `/readyz` (first probe round done, sockets bound, not draining) and
//! `/status` (JSON). Runs on the control-plane runtime, never on a worker.

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

use super::Control;
use crate::telemetry::metrics::{LATENCY_BUCKETS, encode, family, histogram_metric, scalar};

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
    match req.uri().path() {
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
        "/status" => reply(StatusCode::OK, "application/json", status_json(ctl)),
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

/// Every metric family: hot-path counters plus control-plane state read at scrape time.
pub(crate) fn gather(ctl: &Control) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    ctl.data.metrics.gather(&mut out);
    let snap = ctl.data.snapshot.load();

    let servers = &snap.upstream.servers;
    let lbl = |s: &crate::forward::upstream::UpstreamServer| vec![("server", s.addr.to_string())];
    out.push(family(
        "dnsteer_upstream_healthy",
        "1 if the PowerDNS server passes its health checks.",
        MetricType::GAUGE,
        servers
            .iter()
            .map(|s| (lbl(s), f64::from(u8::from(s.is_healthy()))))
            .collect(),
    ));
    let mut req = Vec::new();
    let mut errs = Vec::new();
    for s in servers {
        let (r, resp, timeouts, errors) = s.totals();
        req.push((lbl(s), r as f64));
        errs.push((
            vec![("server", s.addr.to_string()), ("kind", "timeout".into())],
            timeouts as f64,
        ));
        errs.push((
            vec![("server", s.addr.to_string()), ("kind", "error".into())],
            errors as f64,
        ));
        let _ = resp;
    }
    out.push(family(
        "dnsteer_upstream_requests_total",
        "Queries sent to each PowerDNS server (every attempt counts).",
        MetricType::COUNTER,
        req,
    ));
    out.push(family(
        "dnsteer_upstream_errors_total",
        "Failed attempts per PowerDNS server, by kind.",
        MetricType::COUNTER,
        errs,
    ));
    out.push(upstream_latency(servers));
    out.push(family(
        "dnsteer_upstream_health_checks_total",
        "Health checks run per PowerDNS server, by result.",
        MetricType::COUNTER,
        servers
            .iter()
            .flat_map(|s| {
                let all = s.checks.load(Ordering::Relaxed);
                let bad = s.check_failures.load(Ordering::Relaxed);
                [
                    (
                        vec![("server", s.addr.to_string()), ("result", "ok".into())],
                        (all - bad.min(all)) as f64,
                    ),
                    (
                        vec![("server", s.addr.to_string()), ("result", "failed".into())],
                        bad as f64,
                    ),
                ]
            })
            .collect(),
    ));

    let rl = &ctl.data.limiter;
    out.push(scalar(
        "dnsteer_ratelimit_checks_total",
        "Rate-limit checks made while the limiter is enabled, exempt sources included.",
        MetricType::COUNTER,
        rl.stats().checks as f64,
    ));
    out.push(scalar(
        "dnsteer_ratelimit_blocks_total",
        "Blocks started (a source went over its rate).",
        MetricType::COUNTER,
        rl.stats().blocks_started as f64,
    ));
    out.push(scalar(
        "dnsteer_ratelimit_blocked_sources",
        "Source prefixes blocked right now.",
        MetricType::GAUGE,
        rl.blocked_now() as f64,
    ));
    out.push(scalar(
        "dnsteer_ratelimit_tracked_sources",
        "Source prefixes in the rate-limit table (bounded by max_tracked_sources).",
        MetricType::GAUGE,
        rl.tracked() as f64,
    ));
    out.push(scalar(
        "dnsteer_ratelimit_evictions_total",
        "Table entries replaced to make room for new sources.",
        MetricType::COUNTER,
        rl.stats().evictions as f64,
    ));

    probe_metrics(ctl, &mut out);

    zone_metrics(ctl, &mut out);
    let mut answers: Vec<_> = snap
        .records
        .sets()
        .flat_map(|set| {
            let totals = set.stats.totals();
            crate::steer::records::AnswerKind::ALL.iter().map(move |k| {
                (
                    vec![
                        ("name", set.name.clone()),
                        ("type", set.type_name.to_string()),
                        ("outcome", k.label().to_string()),
                    ],
                    totals[*k as usize] as f64,
                )
            })
        })
        .collect();
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(family(
        "dnsteer_record_answers_total",
        "In-process answers per record (name and type from the config or a transferred zone), by outcome; kept across reloads.",
        MetricType::COUNTER,
        answers,
    ));

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
        "dnsteer_log_lines_dropped_total",
        "Log lines dropped because the log queue was full.",
        MetricType::COUNTER,
        ctl.data.log.dropped() as f64,
    ));
    out.push(scalar(
        "dnsteer_log_events_suppressed_total",
        "Always-logged events not logged because of the per-second cap.",
        MetricType::COUNTER,
        ctl.data.log.suppressed() as f64,
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

fn upstream_latency(servers: &[Arc<crate::forward::upstream::UpstreamServer>]) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name("dnsteer_upstream_latency_seconds".into());
    f.set_help("Time from sending a query to a PowerDNS server to its answer.".into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(
        servers
            .iter()
            .map(|s| {
                let mut counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
                let mut sum = 0u64;
                s.latency(&mut counts, &mut sum);
                histogram_metric(
                    vec![("server", s.addr.to_string())],
                    &counts,
                    sum as f64 * 1e-9,
                )
            })
            .collect(),
    );
    f
}

fn status_json(ctl: &Control) -> String {
    let snap = ctl.data.snapshot.load();
    let st = ctl
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let upstreams: Vec<_> = snap
        .upstream
        .servers
        .iter()
        .map(|s| {
            let (requests, responses, timeouts, errors) = s.totals();
            serde_json::json!({
                "address": s.addr.to_string(),
                "healthy": s.is_healthy(),
                "consecutive_failures": s.consecutive_failures.load(Ordering::Relaxed),
                "requests": requests,
                "responses": responses,
                "timeouts": timeouts,
                "errors": errors,
            })
        })
        .collect();
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
        "upstreams": upstreams,
        "probes": ctl.probes.status(),
        "records_in_process": snap.records.sets().map(|set| {
            let t = set.stats.totals();
            serde_json::json!({
                "name": set.name,
                "type": set.type_name,
                "ttl": set.ttl,
                "answers": {"primary": t[0], "backup": t[1], "empty": t[2], "error": t[3]},
            })
        }).collect::<Vec<_>>(),
        "zones": ctl.transfers.status(),
        "dnssec": dnssec_status(&snap),
        "left_to_powerdns": left_to_powerdns(ctl),
        "ratelimit": {
            "enabled": snap.config.ratelimit.enabled,
            "dry_run": snap.config.ratelimit.dry_run,
            "qps": snap.config.ratelimit.qps,
            "burst": snap.config.ratelimit.burst,
            "block_for_ms": snap.config.ratelimit.block_for.as_millis() as u64,
            "action": snap.config.ratelimit.action.label(),
            "tracked_sources": ctl.data.limiter.tracked(),
            "blocked_now": ctl.data.limiter.blocked_now(),
            "top_blocked": ctl.data.limiter.top_blocked(20),
        },
        "logging": {
            "query_sample_rate": snap.config.logging.query_sample_rate,
            "event_rate_limit": snap.config.logging.event_rate_limit,
        },
        "queries_total": ctl.data.metrics.total_queries(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Probe targets by state, state changes and probe latency, from the pool's status table.
/// Target labels come from the config (address and URL or port), so they stay bounded.
fn probe_metrics(ctl: &Control, out: &mut Vec<MetricFamily>) {
    use crate::steer::probes::HealthState;
    let table = ctl.probes.status();
    let target = |p: &crate::steer::probes::ProbeStatus| {
        vec![
            ("kind", p.kind.to_string()),
            ("target", p.addr.to_string()),
            (
                "check",
                p.url
                    .clone()
                    .unwrap_or_else(|| p.port.map_or_else(String::new, |port| port.to_string())),
            ),
        ]
    };
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
    out.push(family(
        "dnsteer_probe_up",
        "1 if the target is UP, 0 if DOWN or not probed to completion yet.",
        MetricType::GAUGE,
        table
            .iter()
            .map(|p| (target(p), f64::from(u8::from(p.state == HealthState::Up))))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_consecutive_failures",
        "Consecutive failed probes of the target.",
        MetricType::GAUGE,
        table
            .iter()
            .map(|p| (target(p), f64::from(p.consecutive_failures)))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_last_latency_seconds",
        "Duration of the target's most recent probe.",
        MetricType::GAUGE,
        table
            .iter()
            .map(|p| (target(p), p.last_latency_ms.unwrap_or(0.0) / 1000.0))
            .collect(),
    ));
    out.push(family(
        "dnsteer_probe_state_changes_total",
        "State changes of the target (UP/DOWN transitions).",
        MetricType::COUNTER,
        table
            .iter()
            .map(|p| (target(p), p.state_changes as f64))
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
                    let mut l = target(p);
                    l.push(("error", e.to_string()));
                    (l, 1.0)
                })
            })
            .collect(),
    ));
    let c = ctl.probes.counters();
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
}

/// Transferred LUA records dnsteer does not answer (PowerDNS does), with the reason.
/// Per zone of in-process records: signed or not, and whether DO=1 answers are signed here
/// (and if not, why). Key tags only: never key material.
fn dnssec_status(snap: &crate::state::Snapshot) -> Vec<serde_json::Value> {
    use crate::dnssec::SignerState;
    let mut zones: Vec<_> = snap.zones.iter().collect();
    zones.sort_by(|a, b| a.0.cmp(b.0));
    zones
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
            v
        })
        .collect()
}

fn left_to_powerdns(ctl: &Control) -> Vec<serde_json::Value> {
    let snap = ctl.data.snapshot.load();
    let mut v: Vec<serde_json::Value> = snap
        .rejected
        .iter()
        .map(|r| {
            let zone = match &r.spec.origin {
                crate::config::RecordOrigin::Zone { zone } => zone.clone(),
                crate::config::RecordOrigin::Config { .. } => String::new(),
            };
            serde_json::json!({"zone": zone, "name": r.spec.name, "type": r.spec.rtype.name(), "reason": r.reason})
        })
        .collect();
    for z in ctl.transfers.status() {
        for u in z.unsupported {
            v.push(serde_json::json!({"zone": z.zone, "name": u.name, "type": u.rtype, "reason": u.reason}));
        }
    }
    v
}

/// Per transferred zone: serial, transfers by result, records answered here vs by PowerDNS.
fn zone_metrics(ctl: &Control, out: &mut Vec<MetricFamily>) {
    let snap = ctl.data.snapshot.load();
    let status = ctl.transfers.status();
    let zone_of = |r: &crate::steer::records::Rejected| match &r.spec.origin {
        crate::config::RecordOrigin::Zone { zone } => zone.clone(),
        crate::config::RecordOrigin::Config { .. } => String::new(),
    };
    out.push(family(
        "dnsteer_zone_serial",
        "SOA serial of the transferred zone data in use.",
        MetricType::GAUGE,
        status
            .iter()
            .map(|z| {
                (
                    vec![("zone", z.zone.clone())],
                    f64::from(z.serial.unwrap_or(0)),
                )
            })
            .collect(),
    ));
    out.push(family(
        "dnsteer_zone_transfers_total",
        "Zone transfers from PowerDNS, by result.",
        MetricType::COUNTER,
        status
            .iter()
            .flat_map(|z| {
                [
                    (
                        vec![("zone", z.zone.clone()), ("result", "ok".into())],
                        z.transfers_ok as f64,
                    ),
                    (
                        vec![("zone", z.zone.clone()), ("result", "failed".into())],
                        z.transfers_failed as f64,
                    ),
                ]
            })
            .collect(),
    ));
    out.push(family(
        "dnsteer_zone_lua_records",
        "LUA records of transferred zones, by who answers them (dnsteer, or PowerDNS because dnsteer cannot compile them).",
        MetricType::GAUGE,
        status
            .iter()
            .flat_map(|z| {
                let rejected = snap.rejected.iter().filter(|r| zone_of(r) == z.zone).count();
                let left = rejected + z.unsupported.len();
                [
                    (vec![("zone", z.zone.clone()), ("answered_by", "dnsteer".into())], z.records.saturating_sub(rejected) as f64),
                    (vec![("zone", z.zone.clone()), ("answered_by", "powerdns".into())], left as f64),
                ]
            })
            .collect(),
    ));
}

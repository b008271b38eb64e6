//! The PowerDNS pool's metric families, read from the servers' counters at scrape time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::proto::{MetricFamily, MetricType};

use crate::forward::upstream::UpstreamServer;
use crate::telemetry::metrics::{LATENCY_BUCKETS, family, histogram_family, histogram_metric};

/// Per server: health, requests, errors by kind, latency and health checks by result.
pub(crate) fn families(servers: &[Arc<UpstreamServer>]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let lbl = |s: &UpstreamServer| vec![("server", s.addr.to_string())];
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
    out.push(latency(servers));
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
    out
}

fn latency(servers: &[Arc<UpstreamServer>]) -> MetricFamily {
    histogram_family(
        "dnsteer_upstream_latency_seconds",
        "Time from sending a query to a PowerDNS server to its answer.",
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
    )
}

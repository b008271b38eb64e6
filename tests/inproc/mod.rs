//! dnsteer started in-process (`App::start`) for integration tests, and its HTTP endpoints.
//! Kept apart from `support`, which stays independent of the library under test.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use dnsteer::app::App;

/// Config prelude for tests: DNS and metrics on free ports, two workers, limiter off, short
/// upstream timeouts. Append tables the prelude does not open (`[[records]]`, `[zones]`,
/// `[geoip]`) or keys of `[upstream]` right after it.
pub fn prelude(upstreams: &[SocketAddr]) -> String {
    let servers: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [ratelimit]\nenabled = false\n[upstream]\nservers = [{}]\ntimeout = \"500ms\"\n\
         health_check_interval = \"200ms\"\n",
        servers.join(", ")
    )
}

/// Starts dnsteer from a whole config text (written to a temp dir that must outlive the app).
pub fn start(text: &str) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dnsteer.toml");
    std::fs::write(&path, text).unwrap();
    let config = dnsteer::config::Config::load(&path).expect("test config");
    (App::start(config).expect("dnsteer starts"), dir)
}

/// `prelude(upstreams)` + `extra`, started.
pub fn start_with(upstreams: &[SocketAddr], extra: &str) -> (App, tempfile::TempDir) {
    start(&(prelude(upstreams) + extra))
}

/// GET `path` from the admin listener; the whole HTTP response as text.
pub fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Sum of the samples whose line starts with `prefix` (e.g. `name{label="x"}`).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` of `app`.
pub fn scrape(app: &App) -> String {
    get(app.metrics_addr, "/metrics")
}

//! Hot reload against a real PowerDNS: valid changes applied, bad files ignored and reported,
//! the Kubernetes ConfigMap `..data` symlink swap, SIGHUP, restart-only settings, swaps under
//! load without a lost or wrong answer, and the GeoIP file replaced underneath.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dnsteer::app::App;
use dnsteer::config::Config;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{
    DEMO_ZONE, DEMO_ZONE_NAME, Dnsteer, Pdns, QueryOpts, answer_rdata, build_query, dns_ask,
    dns_query, free_addr, http_get, metric_sum,
};

const TEST_MMDB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/test-city.mmdb");
/// Build epoch of geoip/test-city.mmdb (geoip/README.md).
const TEST_MMDB_EPOCH: u64 = 1_767_225_600;

fn demo_pdns() -> Pdns {
    Pdns::start(&[(DEMO_ZONE_NAME, DEMO_ZONE)], &[])
}

/// `[server]`..`[upstream]` for an in-process App on port 0 in front of `pdns`; `ratelimit`
/// and `logging` are the bodies of those tables; `extra` is appended (records, geoip, …).
fn config_text(
    pdns: SocketAddr,
    workers: usize,
    ratelimit: &str,
    logging: &str,
    extra: &str,
) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [logging]\n{logging}\n\n\
         [ratelimit]\n{ratelimit}\n\n\
         [upstream]\nservers = [\"{pdns}\"]\ntimeout = \"500ms\"\nhealth_check_interval = \"200ms\"\n\n\
         {extra}\n"
    )
}

fn record(name: &str, content: &[&str]) -> String {
    let list: Vec<String> = content.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[[records]]\nname = \"{name}\"\ntype = \"A\"\nttl = 60\ncontent = [{}]\n\n",
        list.join(", ")
    )
}

/// Replaces a file the way a careful writer does (new inode, renamed over the old one), so a
/// reload never reads half a file.
fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the old file");
}

/// An in-process dnsteer whose config file lives in its own temp dir.
struct Front {
    app: App,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Front {
    fn start(text: &str) -> Front {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dnsteer.toml");
        std::fs::write(&path, text).expect("write config");
        Self::start_at(dir, path)
    }

    /// Starts on a config at `path` inside `dir` (prepared by the caller).
    fn start_at(dir: tempfile::TempDir, path: PathBuf) -> Front {
        let config = Config::load(&path).expect("test config is valid");
        let app = App::start(config).expect("dnsteer starts");
        Front {
            app,
            path,
            _dir: dir,
        }
    }

    fn dns(&self) -> SocketAddr {
        self.app.dns_addrs[0]
    }

    fn ask(&self, name: &str) -> Message {
        dns_ask(self.dns(), name, RecordType::A, &QueryOpts::udp())
    }

    fn rewrite(&self, text: &str) {
        write_atomic(&self.path, text.as_bytes());
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.app.metrics_addr, "/status", Duration::from_secs(5))
            .expect("GET /status");
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    fn metrics(&self) -> String {
        let (code, body) = http_get(self.app.metrics_addr, "/metrics", Duration::from_secs(5))
            .expect("GET /metrics");
        assert_eq!(code, 200);
        body
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }
}

/// Polls `f` every 20 ms until it returns Some or `limit` passes; returns the value and when.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The answer rdata from a UDP client bound to `src` (the source decides where GeoIP puts it).
fn ask_from(server: SocketAddr, src: &str, name: &str) -> Vec<String> {
    let sock =
        UdpSocket::bind((src.parse::<IpAddr>().expect("source ip"), 0)).expect("bind source");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let (id, wire) = build_query(name, RecordType::A, &QueryOpts::udp());
    sock.send_to(&wire, server).expect("send");
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{name} from {src}: {e}"));
        let msg = Message::from_vec(&buf[..n]).expect("decodable reply");
        if msg.metadata.id == id {
            return answer_rdata(&msg);
        }
    }
}

#[test]
fn valid_changes_are_applied() {
    let pdns = demo_pdns();
    let limits_v1 = "enabled = true\nqps = 1000\nburst = 1000\naction = \"refused\"";
    let limits_v2 = "enabled = true\nqps = 5\nburst = 5\nblock_for = \"1s\"\naction = \"refused\"";
    let v1 = config_text(
        pdns.addr(),
        2,
        limits_v1,
        "query_sample_rate = 0.0",
        &record("static.demo.test.", &["192.0.2.99"]),
    );
    let front = Front::start(&v1);

    // Before: added.demo.test is not in dnsteer's file, so PowerDNS answers (NXDOMAIN);
    // static.demo.test is answered in-process with the file's content.
    let before = front.ask("added.demo.test.");
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        answer_rdata(&front.ask("static.demo.test.")),
        ["192.0.2.99"]
    );
    // 30 quick queries from one source stay far below qps = 1000.
    let refused = burst_from(front.dns(), "127.0.0.77", 30);
    assert_eq!(refused, 0, "limited under qps = 1000");

    let v2 = config_text(
        pdns.addr(),
        2,
        limits_v2,
        "query_sample_rate = 0.5",
        &record("added.demo.test.", &["192.0.2.123"]),
    );
    front.rewrite(&v2);
    front.app.reload().expect("valid file applied");

    let rule_before = front.metric("dnsteer_queries_total", &[("decision", "rule")]);
    let added = front.ask("added.demo.test.");
    assert_eq!(added.metadata.response_code, ResponseCode::NoError);
    assert!(
        added.metadata.authoritative,
        "in-process answers are authoritative"
    );
    assert_eq!(answer_rdata(&added), ["192.0.2.123"]);
    assert_eq!(added.answers[0].ttl, 60);
    let rule_after = front.metric("dnsteer_queries_total", &[("decision", "rule")]);
    assert_eq!(rule_after, rule_before + 1.0, "answered by the new rule");

    // The removed record goes back to PowerDNS: its answer, not the old in-process one.
    let fwd_before = front.metric("dnsteer_queries_total", &[("decision", "forwarded")]);
    let via_front = answer_rdata(&front.ask("static.demo.test."));
    let direct = answer_rdata(&dns_ask(
        pdns.addr(),
        "static.demo.test.",
        RecordType::A,
        &QueryOpts::udp(),
    ));
    assert_eq!(via_front, direct);
    assert_eq!(via_front, ["192.0.2.10", "192.0.2.11"]);
    let fwd_after = front.metric("dnsteer_queries_total", &[("decision", "forwarded")]);
    assert_eq!(
        fwd_after,
        fwd_before + 1.0,
        "forwarded after the record was removed"
    );

    // New limits and sample rate: shown in /status and in effect.
    let st = front.status();
    assert_eq!(st["ratelimit"]["qps"], 5, "{st}");
    assert_eq!(st["ratelimit"]["burst"], 5, "{st}");
    assert_eq!(st["logging"]["query_sample_rate"], 0.5, "{st}");
    assert_eq!(st["config"]["last_error"], serde_json::Value::Null, "{st}");
    let refused = burst_from(front.dns(), "127.0.0.78", 30);
    assert!(
        refused >= 15,
        "qps = 5, burst = 5: only {refused} of 30 refused"
    );
    assert!(front.metric("dnsteer_config_reloads_total", &[("result", "ok")]) >= 1.0);
}

/// Sends `n` queries back to back from `src` (waiting for each answer); returns how many were
/// REFUSED.
fn burst_from(server: SocketAddr, src: &str, n: usize) -> usize {
    let sock = UdpSocket::bind((src.parse::<IpAddr>().expect("source ip"), 0)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut refused = 0;
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        let (id, wire) = build_query("www.demo.test.", RecordType::A, &QueryOpts::udp());
        sock.send_to(&wire, server).expect("send");
        loop {
            let (len, _) = sock
                .recv_from(&mut buf)
                .expect("every query is answered (action refused)");
            let msg = Message::from_vec(&buf[..len]).expect("decodable");
            if msg.metadata.id == id {
                refused += usize::from(msg.metadata.response_code == ResponseCode::Refused);
                break;
            }
        }
    }
    refused
}

/// A fallback poll short enough for tests to see several of them.
const POLL: Duration = Duration::from_millis(200);

fn short_poll() -> String {
    format!("[reload]\npoll_interval = \"{}ms\"\n\n", POLL.as_millis())
}

#[test]
fn bad_files_are_ignored_reported_and_then_replaced() {
    let pdns = demo_pdns();
    let good = config_text(
        pdns.addr(),
        1,
        "enabled = false",
        "query_sample_rate = 0.0",
        &(short_poll() + &record("keep.demo.test.", &["192.0.2.55"])),
    );
    let front = Front::start(&good);
    let good_lines = good.lines().count();
    let file = front.path.display().to_string();

    let bad_files = [
        (
            "syntax error",
            format!("{good}this is = = not toml\n"),
            format!("{file}:{}:", good_lines + 1),
        ),
        (
            "unknown key",
            format!("{good}[probes]\nbogus_knob = 1\n"),
            format!("{file}:{}:1: bogus_knob", good_lines + 2),
        ),
        (
            "unsupported LUA function",
            format!(
                "{good}[[records]]\nname = \"first.demo.test.\"\ntype = \"A\"\nlua = \"pickfirst({{'192.0.2.1'}})\"\n"
            ),
            format!("{file}:{}:7: records[1]", good_lines + 4),
        ),
    ];
    for (what, text, location) in &bad_files {
        let failed_before = front.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
        // The watcher (inotify on the directory) notices the file; no explicit reload.
        front.rewrite(text);
        let (error, took) = wait_for(Duration::from_secs(3), || {
            let st = front.status();
            let e = st["config"]["last_error"].as_str()?.to_string();
            e.starts_with(location).then_some(e)
        })
        .unwrap_or_else(|| panic!("{what}: no last_error at {location}: {}", front.status()));
        assert!(
            took < Duration::from_secs(2),
            "{what}: reported after {took:?}"
        );
        if *what == "unsupported LUA function" {
            assert!(
                error.contains("unsupported function 'pickfirst'"),
                "{error}"
            );
        }
        let failed_after = front.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
        assert_eq!(failed_after, failed_before + 1.0, "{what}: counted once");
        // The old config keeps serving.
        assert_eq!(
            answer_rdata(&front.ask("keep.demo.test.")),
            ["192.0.2.55"],
            "{what}"
        );
        assert_eq!(
            front.ask("first.demo.test.").metadata.response_code,
            ResponseCode::NXDomain,
            "{what}: nothing of the bad file applied"
        );
    }
    // The explicit path reports the same error.
    let err = front.app.reload().expect_err("bad file rejected");
    assert!(err.contains("unsupported function 'pickfirst'"), "{err}");

    // Past several polls: the same bad file is not retried and counted again and again.
    let failed = front.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
    thread::sleep(POLL * 4);
    assert_eq!(
        front.metric("dnsteer_config_reloads_total", &[("result", "failed")]),
        failed,
        "an unchanged bad file is counted once"
    );

    // A good file is applied again.
    let fixed = format!("{good}{}", record("first.demo.test.", &["192.0.2.1"]));
    front.rewrite(&fixed);
    let applied = wait_for(Duration::from_secs(3), || {
        let r = front.ask("first.demo.test.");
        (answer_rdata(&r) == ["192.0.2.1"]).then_some(())
    });
    assert!(
        applied.is_some(),
        "good file not applied: {}",
        front.status()
    );
    assert_eq!(answer_rdata(&front.ask("keep.demo.test.")), ["192.0.2.55"]);
}

/// A config directory laid out as kubelet mounts a ConfigMap.
struct ConfigMapDir {
    dir: PathBuf,
    current: String,
    version: u32,
}

impl ConfigMapDir {
    fn create(dir: &Path, text: &str) -> ConfigMapDir {
        let first = "..2026_11_22_00_00_00.000".to_string();
        std::fs::create_dir(dir.join(&first)).expect("timestamped dir");
        std::fs::write(dir.join(&first).join("dnsteer.toml"), text).expect("write config");
        std::os::unix::fs::symlink(&first, dir.join("..data")).expect("..data link");
        std::os::unix::fs::symlink("..data/dnsteer.toml", dir.join("dnsteer.toml"))
            .expect("file link");
        ConfigMapDir {
            dir: dir.to_path_buf(),
            current: first,
            version: 0,
        }
    }

    /// kubelet's AtomicWriter: new timestamped dir, `..data_tmp` link, rename over `..data`,
    /// remove the old dir.
    fn update(&mut self, text: &str) {
        self.version += 1;
        let next = format!("..2026_11_22_00_00_{:02}.{:03}", self.version, self.version);
        std::fs::create_dir(self.dir.join(&next)).expect("new timestamped dir");
        std::fs::write(self.dir.join(&next).join("dnsteer.toml"), text).expect("write config");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&next, &tmp).expect("..data_tmp link");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("atomic swap of ..data");
        std::fs::remove_dir_all(self.dir.join(&self.current)).expect("remove old dir");
        self.current = next;
    }
}

#[test]
fn configmap_symlink_swap_is_picked_up_quickly_twice() {
    let pdns = demo_pdns();
    let text = |addr: &str| {
        config_text(
            pdns.addr(),
            1,
            "enabled = false",
            "query_sample_rate = 0.0",
            &record("cm.demo.test.", &[addr]),
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cm = ConfigMapDir::create(dir.path(), &text("192.0.2.1"));
    let path = dir.path().join("dnsteer.toml");
    let front = Front::start_at(dir, path);
    assert_eq!(answer_rdata(&front.ask("cm.demo.test.")), ["192.0.2.1"]);

    for (round, addr) in ["192.0.2.2", "192.0.2.3"].iter().enumerate() {
        cm.update(&text(addr));
        let seen = wait_for(Duration::from_secs(4), || {
            (answer_rdata(&front.ask("cm.demo.test.")) == [*addr]).then_some(())
        });
        let (_, took) =
            seen.unwrap_or_else(|| panic!("swap {round} to {addr} not seen: {}", front.status()));
        assert!(
            took < Duration::from_secs(2),
            "swap {round} seen after {took:?}"
        );
    }
}

#[test]
fn restart_only_settings_are_reported_not_applied() {
    let pdns = demo_pdns();
    let with = |workers: usize, extra: &str| {
        config_text(
            pdns.addr(),
            workers,
            "enabled = false",
            "query_sample_rate = 0.0",
            extra,
        )
    };
    let front = Front::start(&with(2, ""));
    assert_eq!(front.metric("dnsteer_config_restart_required", &[]), 0.0);

    front.rewrite(&with(3, &record("later.demo.test.", &["192.0.2.44"])));
    front.app.reload().expect("the rest of the file applies");
    let st = front.status();
    assert_eq!(
        st["config"]["restart_required"],
        serde_json::json!(["server.workers"]),
        "{st}"
    );
    assert_eq!(st["workers"], 2, "worker count unchanged until restart");
    assert_eq!(front.metric("dnsteer_config_restart_required", &[]), 1.0);
    assert_eq!(answer_rdata(&front.ask("later.demo.test.")), ["192.0.2.44"]);

    // Back to the running value: nothing pending any more.
    front.rewrite(&with(2, &record("later.demo.test.", &["192.0.2.45"])));
    front.app.reload().expect("applied");
    assert_eq!(
        front.status()["config"]["restart_required"],
        serde_json::json!([])
    );
    assert_eq!(front.metric("dnsteer_config_restart_required", &[]), 0.0);
    assert_eq!(answer_rdata(&front.ask("later.demo.test.")), ["192.0.2.45"]);
}

/// What the load clients saw.
#[derive(Default)]
struct LoadReport {
    sent: usize,
    answered: usize,
    wrong: Vec<String>,
    /// Answers later than 1 s.
    late: usize,
    slowest: Duration,
    /// SERVFAILs for the forwarded name.
    servfail: usize,
    sender_stall: Duration,
    versions: HashSet<String>,
}

/// One client socket: a sender paced at `qps` until `stop` (at most 8 s), a receiver checking
/// every answer. Even sequence numbers ask `flip.demo.test` (in-process, one of `flip_ok`),
/// odd ones `www.demo.test` (forwarded, PowerDNS's 192.0.2.80). Nothing is re-sent.
fn load_client(
    server: SocketAddr,
    qps: u32,
    stop: Arc<AtomicBool>,
    flip_ok: [&'static str; 2],
) -> thread::JoinHandle<LoadReport> {
    thread::spawn(move || {
        let sock = Arc::new(big_buffer_udp());
        sock.connect(server).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let receiver = {
            let (sock, sent_at, done, answered) = (
                sock.clone(),
                sent_at.clone(),
                done.clone(),
                answered.clone(),
            );
            thread::spawn(move || {
                let mut r = LoadReport::default();
                let mut latencies = Vec::new();
                let mut seen = HashSet::new();
                let mut buf = [0u8; 4096];
                while !done.load(Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    let now = Instant::now();
                    let Ok(msg) = Message::from_vec(&buf[..n]) else {
                        r.wrong.push("undecodable reply".into());
                        continue;
                    };
                    let id = usize::from(msg.metadata.id);
                    let Some(t) = sent_at.lock().expect("lock").get(id).copied() else {
                        r.wrong.push(format!("reply to unknown id {id}"));
                        continue;
                    };
                    if !seen.insert(id) {
                        r.wrong.push(format!("second reply to id {id}"));
                        continue;
                    }
                    r.answered += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                    latencies.push(now - t);
                    let rdata = answer_rdata(&msg);
                    let rcode = msg.metadata.response_code;
                    let ok = if id % 2 == 0 {
                        rcode == ResponseCode::NoError
                            && rdata.len() == 1
                            && flip_ok.contains(&rdata[0].as_str())
                    } else if rcode == ResponseCode::ServFail && rdata.is_empty() {
                        // PowerDNS did not answer in time: checked against the timeout count.
                        r.servfail += 1;
                        true
                    } else {
                        rcode == ResponseCode::NoError && rdata == ["192.0.2.80"]
                    };
                    if !ok {
                        r.wrong.push(format!(
                            "id {id}: {:?} {rdata:?}",
                            msg.metadata.response_code
                        ));
                    } else if id % 2 == 0 {
                        r.versions.insert(rdata[0].clone());
                    }
                }
                (r, latencies)
            })
        };
        let wires = ["flip.demo.test.", "www.demo.test."]
            .map(|name| build_query(name, RecordType::A, &QueryOpts::udp()).1);
        let start = Instant::now();
        let mut seq = 0usize;
        let mut stall = Duration::ZERO;
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(8)
            && seq < 65_536
        {
            let due = (start.elapsed().as_secs_f64() * f64::from(qps)) as usize;
            while seq < due.min(65_536) {
                let mut wire = wires[seq % 2].clone();
                wire[..2].copy_from_slice(&(seq as u16).to_be_bytes());
                sent_at.lock().expect("lock").push(Instant::now());
                sock.send(&wire).expect("send query");
                seq += 1;
            }
            thread::sleep(Duration::from_millis(1));
            stall = stall.max(last.elapsed());
            last = Instant::now();
        }
        // Wait for the last answers (due within 1 s; a little longer to tell late from lost).
        let end = Instant::now();
        while end.elapsed() < Duration::from_secs(3) && answered.load(Ordering::Relaxed) < seq {
            thread::sleep(Duration::from_millis(50));
        }
        done.store(true, Ordering::Relaxed);
        let (mut r, latencies) = receiver.join().expect("receiver thread");
        r.sent = seq;
        r.sender_stall = stall;
        r.slowest = latencies.iter().copied().max().unwrap_or_default();
        r.late = latencies
            .iter()
            .filter(|l| **l > Duration::from_secs(1))
            .count();
        r
    })
}

/// A client socket with a 4 MiB receive buffer: a receiving thread descheduled for a while on
/// a busy machine must not lose answers in its own socket (the default ~200 KB holds ~200).
fn big_buffer_udp() -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.into()
}

#[test]
fn swaps_under_load_lose_and_corrupt_nothing() {
    let pdns = demo_pdns();
    // An upstream timeout under the 1 s answer deadline: when PowerDNS itself stalls (a loaded
    // test machine), dnsteer must still answer in time, with SERVFAIL, counted as a timeout.
    let version = |addr: &str| {
        let text = config_text(
            pdns.addr(),
            2,
            "enabled = false",
            "query_sample_rate = 0.0",
            &record("flip.demo.test.", &[addr]),
        );
        text.replace("timeout = \"500ms\"", "timeout = \"800ms\"")
    };
    let front = Front::start(&version("192.0.2.201"));
    let ok_before = front.metric("dnsteer_config_reloads_total", &[("result", "ok")]);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            load_client(
                front.dns(),
                667,
                stop.clone(),
                ["192.0.2.201", "192.0.2.202"],
            )
        })
        .collect();
    let swaps = 10;
    thread::sleep(Duration::from_millis(300));
    for swap in 1..=swaps {
        let addr = if swap % 2 == 1 {
            "192.0.2.202"
        } else {
            "192.0.2.201"
        };
        front.rewrite(&version(addr));
        front.app.reload().expect("valid file");
        thread::sleep(Duration::from_millis(350));
    }
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();

    let m = front.metrics();
    let diag: Vec<&str> = m
        .lines()
        .filter(|l| {
            (l.starts_with("dnsteer_dropped_total") || l.starts_with("dnsteer_upstream_errors"))
                && !l.ends_with(" 0")
        })
        .collect();
    let timeouts = metric_sum(&m, "dnsteer_upstream_errors_total", &[("kind", "timeout")]);
    let servfails: usize = reports.iter().map(|r| r.servfail).sum();
    assert!(
        servfails as f64 <= timeouts,
        "{servfails} SERVFAILs for the forwarded name, only {timeouts} upstream timeouts"
    );
    let mut versions = HashSet::new();
    for (i, r) in reports.iter().enumerate() {
        assert!(r.sent > 1000, "client {i} sent only {}", r.sent);
        assert!(
            r.wrong.is_empty(),
            "client {i}: {} wrong answers: {:?}; {diag:?}",
            r.wrong.len(),
            &r.wrong[..r.wrong.len().min(10)]
        );
        assert_eq!(
            r.answered,
            r.sent,
            "client {i}: {} of {} unanswered; {diag:?}",
            r.sent - r.answered,
            r.sent
        );
        // What the client sees includes its own threads' scheduling on a busy machine; the
        // time dnsteer takes is judged below, from its own histogram.
        if r.late > 0 {
            eprintln!(
                "client {i}: {} answers later than 1 s (slowest {:?}; client thread stalled {:?})",
                r.late, r.slowest, r.sender_stall
            );
        }
        versions.extend(r.versions.iter().cloned());
    }
    // Every answer, forwarded or in-process, left dnsteer within 1 s of its arrival (the
    // upstream timeout is 800 ms), across every swap.
    for path in ["forwarded", "in_process"] {
        let count = metric_sum(
            &m,
            "dnsteer_query_duration_seconds_count",
            &[("path", path)],
        );
        let within = metric_sum(
            &m,
            "dnsteer_query_duration_seconds_bucket",
            &[("path", path), ("le", "1")],
        );
        assert!(count > 0.0, "{path}: no answers measured");
        assert_eq!(
            within,
            count,
            "{path}: {} answers took dnsteer over 1 s",
            count - within
        );
    }
    let applied = front.metric("dnsteer_config_reloads_total", &[("result", "ok")]) - ok_before;
    assert!(
        applied >= f64::from(swaps),
        "{applied} reloads applied for {swaps} swaps"
    );
    assert_eq!(versions.len(), 2, "both versions served: {versions:?}");
}

#[test]
fn forwarding_retries_still_time_out_and_fail_over_after_a_reload() {
    let pdns = demo_pdns();
    // Never answers: the first attempt of every forwarded query times out there.
    let black_hole = UdpSocket::bind("127.0.0.1:0").expect("bind black hole");
    // `ecs` differs between versions so that each reload builds a new upstream pool.
    let text = |ecs: u8, extra: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
             [ratelimit]\nenabled = false\n\n\
             [upstream]\nservers = [\"{}\", \"{}\"]\npolicy = \"first-available\"\nattempts = 2\n\
             timeout = \"300ms\"\nhealth_check_interval = \"1h\"\necs_ipv4_prefix = {ecs}\n\n{extra}",
            black_hole.local_addr().expect("addr"),
            pdns.addr()
        )
    };
    let front = Front::start(&text(24, ""));
    let slow = QueryOpts::udp().timeout(Duration::from_secs(3));
    let www = dns_query(front.dns(), "www.demo.test.", RecordType::A, &slow).expect("answered");
    assert_eq!(answer_rdata(&www), ["192.0.2.80"]);

    for round in 0..2 {
        front.rewrite(&text(
            23 - round as u8,
            &record("r.demo.test.", &["192.0.2.1"]),
        ));
        front.app.reload().expect("applied");
        let t = Instant::now();
        let www = dns_query(front.dns(), "www.demo.test.", RecordType::A, &slow)
            .unwrap_or_else(|e| panic!("after reload {round}: forwarded query lost: {e}"));
        assert_eq!(answer_rdata(&www), ["192.0.2.80"]);
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "first attempt went to the black hole"
        );
    }
    drop(black_hole);
}

/// A City database like geoip/test-city.mmdb but with 127.0.2.0/24 in Amsterdam (it is in
/// Tokyo there), and another build epoch.
fn moved_mmdb() -> Vec<u8> {
    use serde_json::json;
    let epoch = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut w = mmdb_writer::Writer::builder("GeoIP2-City")
        .build_epoch(epoch)
        .build();
    let place = |cc: &str, cont: &str, lat: f64, lon: f64| {
        json!({
            "country": {"iso_code": cc},
            "continent": {"code": cont},
            "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20},
        })
    };
    for (net, value) in [
        ("127.0.1.0/24", place("NL", "EU", 52.3676, 4.9041)),
        ("127.0.2.0/24", place("NL", "EU", 52.3676, 4.9041)),
        ("127.0.3.0/24", place("US", "NA", 40.7128, -74.006)),
    ] {
        w.insert(net.parse::<ipnet::IpNet>().expect("net"), &value)
            .expect("insert");
    }
    w.to_bytes().expect("mmdb bytes")
}

const CLOSEST: &str = "[[records]]\nname = \"closest.demo.test.\"\ntype = \"A\"\nttl = 30\n\
                       lua = \"pickclosest({'193.0.6.139','210.140.92.1'})\"\n";

#[test]
fn geoip_file_garbage_is_ignored_and_a_valid_replacement_is_picked_up() {
    let pdns = demo_pdns();
    let dir = tempfile::tempdir().expect("temp dir");
    // Outside the watched config directory, as a separately mounted database would be: only
    // the poll (or SIGHUP) notices it.
    std::fs::create_dir(dir.path().join("geo")).expect("geo dir");
    let mmdb = dir.path().join("geo/city.mmdb");
    std::fs::copy(TEST_MMDB, &mmdb).expect("copy test mmdb");
    let text = config_text(
        pdns.addr(),
        1,
        "enabled = false",
        "query_sample_rate = 0.0",
        &format!(
            "{}[geoip]\ndatabase = \"geo/city.mmdb\"\n\n{CLOSEST}",
            short_poll()
        ),
    );
    let path = dir.path().join("dnsteer.toml");
    std::fs::write(&path, text).expect("write config");
    let front = Front::start_at(dir, path);
    let tokyo = || ask_from(front.dns(), "127.0.2.1", "closest.demo.test.");
    assert_eq!(tokyo(), ["210.140.92.1"]);
    assert_eq!(
        front.status()["config"]["geoip_build_epoch"],
        TEST_MMDB_EPOCH
    );

    let failed = front.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
    write_atomic(&mmdb, b"this is not a MaxMind database");
    let noticed = wait_for(Duration::from_secs(7), || {
        (front.metric("dnsteer_config_reloads_total", &[("result", "failed")]) > failed)
            .then_some(())
    });
    assert!(
        noticed.is_some(),
        "garbage GeoIP file not noticed: {}",
        front.status()
    );
    let st = front.status();
    let err = st["config"]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("city.mmdb"), "{st}");
    assert_eq!(tokyo(), ["210.140.92.1"], "old database kept");
    assert_eq!(st["config"]["geoip_build_epoch"], TEST_MMDB_EPOCH);

    write_atomic(&mmdb, &moved_mmdb());
    let moved = wait_for(Duration::from_secs(7), || {
        (tokyo() == ["193.0.6.139"]).then_some(())
    });
    assert!(
        moved.is_some(),
        "new GeoIP database not picked up: {}",
        front.status()
    );
    assert_eq!(
        front.status()["config"]["geoip_build_epoch"],
        1_800_000_000u64
    );
    assert_eq!(
        front.metric("dnsteer_config_reloads_total", &[("result", "failed")]),
        failed + 1.0,
        "the garbage file was counted once"
    );
}

#[test]
fn sighup_reloads_config_and_geoip_in_the_real_binary() {
    let pdns = demo_pdns();
    let dir = tempfile::tempdir().expect("temp dir");
    // dnsteer.toml is a link into real/, a directory dnsteer does not watch, and the mmdb is in
    // geo/: a change there is seen at once only through SIGHUP (otherwise by the 5 s poll).
    std::fs::create_dir(dir.path().join("real")).expect("real dir");
    std::fs::create_dir(dir.path().join("geo")).expect("geo dir");
    let mmdb = dir.path().join("geo/city.mmdb");
    std::fs::copy(TEST_MMDB, &mmdb).expect("copy test mmdb");
    let (dns, metrics) = (free_addr(), free_addr());
    let text = |sample: f64, extra: &str| {
        format!(
            "[server]\nlisten = [\"{dns}\"]\nworkers = 1\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
             [logging]\nformat = \"json\"\nquery_sample_rate = {sample}\n\n\
             [ratelimit]\nenabled = false\n\n\
             [upstream]\nservers = [\"{}\"]\ntimeout = \"500ms\"\n\n\
             [geoip]\ndatabase = \"{}\"\n\n{CLOSEST}\n{extra}",
            pdns.addr(),
            mmdb.display()
        )
    };
    let real = dir.path().join("real/dnsteer.toml");
    std::fs::write(&real, text(0.0, "")).expect("write config");
    let link = dir.path().join("dnsteer.toml");
    std::os::unix::fs::symlink(&real, &link).expect("link");
    let mut bin = Dnsteer::start_file(dir, &link);

    // A SIGHUP right after /readyz must reload, not kill the process.
    bin.signal_hup();
    let first = wait_for(Duration::from_secs(3), || {
        bin.log().contains("SIGHUP").then_some(())
    });
    assert!(
        bin.exited().is_none(),
        "SIGHUP killed dnsteer:\n{}",
        bin.log()
    );
    assert!(first.is_some(), "SIGHUP not handled:\n{}", bin.log());

    // Config: in place in the unwatched directory, then SIGHUP.
    std::fs::write(&real, text(1.0, &record("hup.demo.test.", &["192.0.2.66"]))).expect("rewrite");
    bin.signal_hup();
    let seen = wait_for(Duration::from_secs(3), || {
        let r = dns_query(
            bin.dns_addr(),
            "hup.demo.test.",
            RecordType::A,
            &QueryOpts::udp(),
        )
        .ok()?;
        (answer_rdata(&r) == ["192.0.2.66"]).then_some(())
    });
    let (_, took) = seen.unwrap_or_else(|| panic!("SIGHUP reload not applied:\n{}", bin.log()));
    assert!(took < Duration::from_secs(2), "applied after {took:?}");
    // query_sample_rate = 1.0 now: every query is logged.
    dns_ask(
        bin.dns_addr(),
        "sampled.demo.test.",
        RecordType::A,
        &QueryOpts::udp(),
    );
    let logged = wait_for(Duration::from_secs(2), || {
        bin.log().contains("sampled.demo.test").then_some(())
    });
    assert!(
        logged.is_some(),
        "sample rate 1.0 not applied:\n{}",
        bin.log()
    );

    // GeoIP: replaced, then SIGHUP; the Tokyo client is now placed in Amsterdam.
    let tokyo = |b: &Dnsteer| ask_from(b.dns_addr(), "127.0.2.1", "closest.demo.test.");
    assert_eq!(tokyo(&bin), ["210.140.92.1"]);
    write_atomic(&mmdb, &moved_mmdb());
    bin.signal_hup();
    let moved = wait_for(Duration::from_secs(3), || {
        (tokyo(&bin) == ["193.0.6.139"]).then_some(())
    });
    let (_, took) = moved.unwrap_or_else(|| panic!("SIGHUP did not reload GeoIP:\n{}", bin.log()));
    assert!(
        took < Duration::from_secs(2),
        "GeoIP reloaded after {took:?}"
    );
    assert_eq!(bin.exited(), None, "still running");
}

const TEST_ASN_MMDB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/test-asn.mmdb");

/// An ASN database with 127.0.2.0/24 in AS 64500 (64503 in geoip/test-asn.mmdb).
fn moved_asn_mmdb() -> Vec<u8> {
    let mut w = mmdb_writer::Writer::builder("GeoLite2-ASN").build();
    let value = serde_json::json!({"autonomous_system_number": 64_500u32});
    w.insert("127.0.2.0/24".parse::<ipnet::IpNet>().expect("net"), &value)
        .expect("insert");
    w.to_bytes().expect("mmdb bytes")
}

#[test]
fn asn_database_replacement_is_picked_up_and_garbage_ignored() {
    let pdns = demo_pdns();
    let dir = tempfile::tempdir().expect("temp dir");
    // Outside the watched config directory: only the poll notices it.
    std::fs::create_dir(dir.path().join("geo")).expect("geo dir");
    let asn = dir.path().join("geo/asn.mmdb");
    std::fs::copy(TEST_ASN_MMDB, &asn).expect("copy test asn mmdb");
    let record = "[[records]]\nname = \"asn.demo.test.\"\ntype = \"A\"\nttl = 30\n\
                  lua = \";if asnum(64503) then return '192.0.2.3' end return '192.0.2.4'\"\n";
    let text = config_text(
        pdns.addr(),
        1,
        "enabled = false",
        "query_sample_rate = 0.0",
        &format!(
            "{}[geoip]\ndatabase = \"{TEST_MMDB}\"\nasn_database = \"geo/asn.mmdb\"\n\n{record}",
            short_poll()
        ),
    );
    let path = dir.path().join("dnsteer.toml");
    std::fs::write(&path, text).expect("write config");
    let front = Front::start_at(dir, path);
    let tokyo = || ask_from(front.dns(), "127.0.2.1", "asn.demo.test.");
    assert_eq!(tokyo(), ["192.0.2.3"]);

    let failed = front.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
    write_atomic(&asn, b"this is not a MaxMind database");
    let noticed = wait_for(Duration::from_secs(7), || {
        (front.metric("dnsteer_config_reloads_total", &[("result", "failed")]) > failed)
            .then_some(())
    });
    assert!(
        noticed.is_some(),
        "garbage ASN file not noticed: {}",
        front.status()
    );
    let st = front.status();
    let err = st["config"]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("asn.mmdb"), "{st}");
    assert_eq!(tokyo(), ["192.0.2.3"], "old database kept");

    write_atomic(&asn, &moved_asn_mmdb());
    let moved = wait_for(Duration::from_secs(7), || {
        (tokyo() == ["192.0.2.4"]).then_some(())
    });
    assert!(
        moved.is_some(),
        "new ASN database not picked up: {}",
        front.status()
    );
}

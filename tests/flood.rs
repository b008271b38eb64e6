//! Flood rules (`[flood]`) and the block control API (`/blocks`) in front of a real PowerDNS:
//! a random-subdomain flood is held at the zone while its real names keep being answered,
//! per-prefix rules (NXDOMAIN, ANY, bytes) block their source and spare excluded ones, blocks
//! expire, and the API needs the bearer token.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{Dnsteer, Pdns, QueryOpts};

const ZONE: &str = "$ORIGIN flood.test.
$TTL 300
@      IN SOA ns1 hostmaster 2024010101 3600 600 86400 60
@      IN NS  ns1
ns1    IN A   127.0.0.1
www    IN A   192.0.2.80
mail   IN A   192.0.2.25
big    IN TXT ( \"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\"
                \"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\"
                \"01234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\" )
";

/// dnsteer's config: DNS and admin on `dns`/`admin`, PowerDNS behind, the packet cache on, one
/// in-process record in the zone (so the zone is known), `metrics_extra` in `[metrics]` and
/// `flood` appended.
fn config(
    dns: SocketAddr,
    admin: SocketAddr,
    pdns: SocketAddr,
    metrics_extra: &str,
    flood: &str,
) -> String {
    format!(
        "[server]\nlisten = [\"{dns}\"]\nworkers = 2\n\
         [metrics]\nlisten = \"{admin}\"\n{metrics_extra}\n\
         [ratelimit]\nenabled = false\n\
         [upstream]\nservers = [\"{pdns}\"]\ntimeout = \"500ms\"\nhealth_check_interval = \"1s\"\n\
         [cache]\nenabled = true\n\
         [[records]]\nname = \"static.flood.test.\"\ntype = \"A\"\nttl = 60\ncontent = [\"192.0.2.10\"]\n\
         {flood}"
    )
}

/// One UDP query from `src` (any 127.x address); None on timeout.
fn ask_from(src: IpAddr, server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind a loopback source");
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let (id, wire) = support::build_query(name, qtype, &QueryOpts::udp().edns(1232));
    sock.send_to(&wire, server).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).ok()?;
        let m = Message::from_vec(&buf[..n]).ok()?;
        if m.metadata.id == id {
            return Some(m);
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends `per_source` queries from each source socket, spread over `dur`, never waiting for
/// answers (they are read and thrown away as they come).
fn blast(
    socks: &[UdpSocket],
    server: SocketAddr,
    dur: Duration,
    mut query: impl FnMut(usize) -> (String, RecordType),
    per_second: u32,
) {
    let start = Instant::now();
    let gap = Duration::from_secs(1) / per_second;
    let mut n = 0usize;
    let mut buf = [0u8; 4096];
    while start.elapsed() < dur {
        let (name, qtype) = query(n);
        let s = &socks[n % socks.len()];
        let (_, wire) = support::build_query(&name, qtype, &QueryOpts::udp().edns(1232));
        let _ = s.send_to(&wire, server);
        if n.is_multiple_of(32) {
            for s in socks {
                while s.recv(&mut buf).is_ok() {}
            }
        }
        n += 1;
        let next = gap * n as u32;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn sockets(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<UdpSocket> {
    addrs
        .into_iter()
        .map(|a| {
            let s = UdpSocket::bind(SocketAddr::new(a, 0)).expect("bind a loopback source");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

/// UDP queries PowerDNS has received (its own counter).
fn pdns_udp_queries(pdns: &Pdns) -> u64 {
    let out = pdns.control(&["show", "udp-queries"]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("pdns_control show udp-queries: {out}"))
}

/// An HTTP request to the admin listener: status and body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn blocks(admin: SocketAddr, token: Option<&str>) -> Vec<serde_json::Value> {
    let (code, body) = http(admin, "GET", "/blocks", token);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["blocks"].as_array().cloned().unwrap_or_default()
}

fn rcode(m: &Option<Message>) -> Option<ResponseCode> {
    m.as_ref().map(|m| m.metadata.response_code)
}

#[test]
fn a_random_subdomain_flood_is_held_at_the_zone_while_real_names_answer() {
    let pdns = Pdns::start(&[("flood.test.", ZONE)], &[]);
    let bound = 40.0;
    let d = Dnsteer::start_on_free_ports(|dns, admin| {
        config(
            dns,
            admin,
            pdns.addr(),
            "blocks_read_open = true",
            &format!(
                "[flood]\ninterval = \"200ms\"\n\
                 [[flood.rules]]\nname = \"random-subdomain\"\nkind = \"zone_nxdomain\"\n\
                 threshold = {bound}\nwindow = \"1s\"\naction = \"refused\"\nduration = \"60s\"\n"
            ),
        )
    });
    let front = d.dns_addr();
    let client = ip("127.0.0.1");
    // Cache www (the flood must not evict its service).
    let www = ask_from(client, front, "www.flood.test.", RecordType::A).expect("answer");
    assert_eq!(www.metadata.response_code, ResponseCode::NoError);

    // Random labels from 64 sources, 400 queries/s, for 1.5 s: the block goes up.
    let socks = sockets((0..64u8).map(|i| IpAddr::from([127, 0, 2 + i / 32, 1 + i % 32])));
    let random = |n: usize| {
        (
            format!("r{n:x}q{}.flood.test.", n * 7919 % 10007),
            RecordType::A,
        )
    };
    blast(&socks, front, Duration::from_millis(1500), random, 400);
    let listed = blocks(d.metrics_addr(), None);
    assert!(
        listed.iter().any(|b| b["target"] == "flood.test."
            && b["scope"] == "uncached"
            && b["origin"] == "rule:random-subdomain"),
        "a zone block: {listed:?}"
    );

    // 2 s more of the flood: PowerDNS sees at most the rule's bound (plus health checks).
    let before = pdns_udp_queries(&pdns);
    let random2 = |n: usize| {
        (
            format!("s{n:x}t{}.flood.test.", n * 7919 % 10007),
            RecordType::A,
        )
    };
    blast(&socks, front, Duration::from_secs(2), random2, 400);
    let reached = pdns_udp_queries(&pdns) - before;
    eprintln!(
        "random-subdomain flood, 400 q/s from 64 sources for 2 s after the block: {reached} queries reached PowerDNS (bound {bound}/s)"
    );
    assert!(
        (reached as f64) <= bound * 2.0,
        "{reached} flood queries reached PowerDNS in 2 s (bound {bound}/s)"
    );

    // Real names keep being answered: cached, in-process, and uncached ones over TCP.
    let www = ask_from(client, front, "www.flood.test.", RecordType::A);
    assert_eq!(rcode(&www), Some(ResponseCode::NoError));
    assert_eq!(www.unwrap().answers.len(), 1);
    let st = ask_from(client, front, "static.flood.test.", RecordType::A);
    assert_eq!(rcode(&st), Some(ResponseCode::NoError));
    assert_eq!(st.unwrap().answers.len(), 1);
    let mail = support::dns_ask(front, "mail.flood.test.", RecordType::A, &QueryOpts::tcp());
    assert_eq!(mail.metadata.response_code, ResponseCode::NoError);
    // The cost: an uncached name over UDP is refused while the block lasts.
    let mail = ask_from(client, front, "mail.flood.test.", RecordType::A);
    assert_eq!(rcode(&mail), Some(ResponseCode::Refused));
    assert!(
        d.metric(
            "dnsteer_flood_blocked_queries_total",
            &[("action", "refused")]
        ) > 100.0
    );
    assert_eq!(
        d.metric(
            "dnsteer_flood_block_changes_total",
            &[("change", "rule_added")]
        ),
        1.0
    );
    // Without a token file the write endpoints do not exist.
    let (code, _) = http(
        d.metrics_addr(),
        "POST",
        "/blocks?prefix=127.0.9.0/24&duration=1m",
        None,
    );
    assert_eq!(code, 404);
    let (_, status) = d.get("/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["flood"]["blocks_active"], 1);
}

#[test]
fn per_prefix_rules_block_their_source_spare_excluded_ones_and_expire() {
    let pdns = Pdns::start(&[("flood.test.", ZONE)], &[]);
    let d = Dnsteer::start_on_free_ports(|dns, admin| {
        config(
            dns,
            admin,
            pdns.addr(),
            "blocks_read_open = true",
            "[flood]\ninterval = \"200ms\"\nipv4_prefix = 24\nexclude = [\"127.0.40.0/24\"]\n\
                 [[flood.rules]]\nkind = \"nxdomain\"\nthreshold = 20\nwindow = \"1s\"\n\
                 action = \"refused\"\nduration = \"3s\"\n\
                 [[flood.rules]]\nname = \"any\"\nkind = \"qtype\"\nqtype = \"ANY\"\nthreshold = 20\n\
                 window = \"1s\"\naction = \"drop\"\nduration = \"3s\"\n\
                 [[flood.rules]]\nkind = \"bytes\"\nthreshold = 30000\nwindow = \"1s\"\n\
                 action = \"truncate\"\nduration = \"3s\"\n",
        )
    });
    let front = d.dns_addr();
    // Each offender: 100 queries/s for 1.5 s. The bytes offender asks for a ~700-byte TXT
    // (70 kB/s); the others' answers stay under 30 kB/s.
    let nx = sockets([ip("127.0.10.1"), ip("127.0.10.2")]);
    let any = sockets([ip("127.0.20.1")]);
    let big = sockets([ip("127.0.30.1")]);
    let excluded = sockets([ip("127.0.40.1")]);
    let all: Vec<UdpSocket> = [nx, any, big, excluded].into_iter().flatten().collect();
    blast(
        &all,
        front,
        Duration::from_millis(1500),
        |n| match n % 5 {
            0 | 1 => (format!("nx{n}.flood.test."), RecordType::A),
            2 => ("www.flood.test.".into(), RecordType::ANY),
            3 => ("big.flood.test.".into(), RecordType::TXT),
            _ => (format!("ex{n}.flood.test."), RecordType::A),
        },
        500,
    );
    let listed = blocks(d.metrics_addr(), None);
    let origin_of = |net: &str| {
        listed
            .iter()
            .find(|b| b["target"] == net)
            .map(|b| b["origin"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        origin_of("127.0.10.0/24").as_deref(),
        Some("rule:nxdomain"),
        "{listed:?}"
    );
    assert_eq!(
        origin_of("127.0.20.0/24").as_deref(),
        Some("rule:any"),
        "{listed:?}"
    );
    assert_eq!(
        origin_of("127.0.30.0/24").as_deref(),
        Some("rule:bytes"),
        "{listed:?}"
    );
    assert_eq!(origin_of("127.0.40.0/24"), None, "excluded: {listed:?}");
    assert_eq!(listed.len(), 3, "{listed:?}");

    // Each action, on a real name; an innocent source is answered.
    let www = |src: &str| ask_from(ip(src), front, "www.flood.test.", RecordType::A);
    assert_eq!(rcode(&www("127.0.10.9")), Some(ResponseCode::Refused));
    assert!(www("127.0.20.9").is_none(), "dropped");
    let tc = www("127.0.30.9").expect("truncated answer");
    assert!(tc.metadata.truncation && tc.answers.is_empty());
    assert_eq!(rcode(&www("127.0.50.1")), Some(ResponseCode::NoError));
    assert_eq!(rcode(&www("127.0.40.1")), Some(ResponseCode::NoError));
    // TCP is a proven source: never blocked.
    let m = support::dns_ask(front, "www.flood.test.", RecordType::A, &QueryOpts::tcp());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    // The blocks expire (3 s) once the traffic stopped.
    let deadline = Instant::now() + Duration::from_secs(8);
    while !blocks(d.metrics_addr(), None).is_empty() {
        assert!(Instant::now() < deadline, "blocks did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rcode(&www("127.0.10.9")), Some(ResponseCode::NoError));
    assert!(www("127.0.20.9").is_some());
    assert_eq!(
        d.metric(
            "dnsteer_flood_block_changes_total",
            &[("change", "expired")]
        ),
        3.0
    );
    assert!(d.log().contains("flood block changed"));
}

#[test]
fn the_control_api_needs_the_token_and_its_blocks_take_effect() {
    let pdns = Pdns::start(&[("flood.test.", ZONE)], &[]);
    let secret_dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-0123456789abcdef";
    let token_file = secret_dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let d = Dnsteer::start_on_free_ports(|dns, admin| {
        config(
            dns,
            admin,
            pdns.addr(),
            &format!("admin_token_file = \"{}\"", token_file.display()),
            "",
        )
    });
    let (front, admin) = (d.dns_addr(), d.metrics_addr());
    for bad in [
        None,
        Some("wrong-token-0123456789abcdef"),
        Some("s3cret-token-0123456789abcde"),
    ] {
        assert_eq!(http(admin, "GET", "/blocks", bad).0, 401);
        assert_eq!(
            http(
                admin,
                "POST",
                "/blocks?prefix=127.0.60.0/24&duration=1m",
                bad
            )
            .0,
            401
        );
        assert_eq!(http(admin, "DELETE", "/blocks/1", bad).0, 401);
    }
    assert!(blocks(admin, Some(token)).is_empty());

    // A prefix block: REFUSED over UDP, answered over TCP, lifted on DELETE.
    let (code, body) = http(
        admin,
        "POST",
        "/blocks?prefix=127.0.60.0%2F24&duration=10m&action=refused&reason=test",
        Some(token),
    );
    assert_eq!(code, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    let www = |src: &str, name: &str| ask_from(ip(src), front, name, RecordType::A);
    assert_eq!(
        rcode(&www("127.0.60.7", "www.flood.test.")),
        Some(ResponseCode::Refused)
    );
    assert_eq!(
        rcode(&www("127.0.61.7", "www.flood.test.")),
        Some(ResponseCode::NoError)
    );
    let m = support::dns_ask(front, "www.flood.test.", RecordType::A, &QueryOpts::tcp());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let listed = blocks(admin, Some(token));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["origin"], "operator");
    assert_eq!(listed[0]["reason"], "test");
    assert_eq!(listed[0]["hits"], 1);
    assert_eq!(
        http(admin, "DELETE", &format!("/blocks/{id}"), Some(token)).0,
        200
    );
    assert_eq!(
        http(admin, "DELETE", &format!("/blocks/{id}"), Some(token)).0,
        404
    );
    assert_eq!(
        rcode(&www("127.0.60.7", "www.flood.test.")),
        Some(ResponseCode::NoError)
    );

    // A suffix block covers the name and everything under it, nothing beside it.
    let (code, _) = http(
        admin,
        "POST",
        "/blocks?suffix=mail.flood.test&duration=1m&action=refused",
        Some(token),
    );
    assert_eq!(code, 201);
    assert_eq!(
        rcode(&www("127.0.0.1", "mail.flood.test.")),
        Some(ResponseCode::Refused)
    );
    assert_eq!(
        rcode(&www("127.0.0.1", "x.mail.flood.test.")),
        Some(ResponseCode::Refused)
    );
    assert_eq!(
        rcode(&www("127.0.0.1", "www.flood.test.")),
        Some(ResponseCode::NoError)
    );

    // cache_only: what the cache holds is answered, the rest refused.
    let (code, _) = http(
        admin,
        "POST",
        "/blocks?prefix=127.0.62.0/24&duration=1m&action=cache_only",
        Some(token),
    );
    assert_eq!(code, 201);
    let cached = www("127.0.62.1", "www.flood.test.");
    assert_eq!(rcode(&cached), Some(ResponseCode::NoError));
    assert_eq!(cached.unwrap().answers.len(), 1);
    assert_eq!(
        rcode(&www("127.0.62.1", "ns1.flood.test.")),
        Some(ResponseCode::Refused)
    );

    assert_eq!(
        http(
            admin,
            "POST",
            "/blocks?prefix=nope&duration=1m",
            Some(token)
        )
        .0,
        400
    );
    assert_eq!(d.metric("dnsteer_admin_auth_failures_total", &[]), 9.0);
    assert_eq!(
        d.metric(
            "dnsteer_flood_block_changes_total",
            &[("change", "operator_added")]
        ),
        3.0
    );
    assert_eq!(
        d.metric(
            "dnsteer_flood_block_changes_total",
            &[("change", "operator_removed")]
        ),
        1.0
    );
    let (_, status) = d.get("/status");
    assert!(status.contains("\"blocks_active\": 2"), "{status}");
    let log = d.log();
    assert!(log.contains("operator_added") && log.contains("operator_removed"));
    assert!(
        !log.contains(token) && !status.contains(token),
        "the token is never shown"
    );

    // A new token in the file takes over on reload (the config text itself is unchanged).
    let rotated = "rotated-token-0123456789abcdef";
    std::fs::write(&token_file, rotated).unwrap();
    d.signal_hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(admin, "GET", "/blocks", Some(rotated)).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated token was not picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(admin, "GET", "/blocks", Some(token)).0, 401);
}

/// Writes `text` the way a Kubernetes Secret update does: a new file renamed over the old one.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_rotated_token_file_takes_effect_on_the_poll_and_a_broken_one_keeps_the_running_token() {
    let pdns = Pdns::start(&[("flood.test.", ZONE)], &[]);
    // Another directory than the config's: only the [reload] poll can notice the change.
    let secret_dir = tempfile::tempdir().unwrap();
    let token_file = secret_dir.path().join("token");
    let first = "first-token-0123456789abcdef";
    std::fs::write(&token_file, first).unwrap();
    let d = Dnsteer::start_on_free_ports(|dns, admin| {
        config(
            dns,
            admin,
            pdns.addr(),
            &format!("admin_token_file = \"{}\"", token_file.display()),
            "[reload]\npoll_interval = \"500ms\"\n",
        )
    });
    let admin = d.metrics_addr();
    assert_eq!(http(admin, "GET", "/blocks", Some(first)).0, 200);
    // Within a few poll intervals, without SIGHUP (a busy machine gets some slack).
    let within_polls = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let second = "second-token-0123456789abcdef";
    replace_file(&token_file, &format!("{second}\n"));
    within_polls("the rotated token was not picked up by the poll", &|| {
        http(admin, "GET", "/blocks", Some(second)).0 == 200
    });
    assert_eq!(http(admin, "GET", "/blocks", Some(first)).0, 401);
    assert!(!d.log().contains("SIGHUP"), "no SIGHUP was sent");

    // An emptied token file fails the reload; the running token keeps working.
    let failed = d.metric("dnsteer_config_reloads_total", &[("result", "failed")]);
    replace_file(&token_file, "");
    within_polls("the empty token file was not reported", &|| {
        d.metric("dnsteer_config_reloads_total", &[("result", "failed")]) > failed
    });
    let (_, status) = d.get("/status");
    assert!(status.contains("metrics.admin_token_file"), "{status}");
    assert_eq!(http(admin, "GET", "/blocks", Some(second)).0, 200);
    assert_eq!(http(admin, "GET", "/blocks", Some(first)).0, 401);
    // Not retried on every poll while unchanged.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.metric("dnsteer_config_reloads_total", &[("result", "failed")]),
        failed + 1.0
    );

    // A good token again is picked up; the one before it is refused.
    let third = "third-token-0123456789abcdef";
    replace_file(&token_file, third);
    within_polls("the third token was not picked up by the poll", &|| {
        http(admin, "GET", "/blocks", Some(third)).0 == 200
    });
    assert_eq!(http(admin, "GET", "/blocks", Some(second)).0, 401);
    let (_, status) = d.get("/status");
    let log = d.log();
    for t in [first, second, third] {
        assert!(!log.contains(t) && !status.contains(t), "a token was shown");
    }
}

#[test]
fn check_config_reads_the_admin_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dnsteer.toml");
    // Relative to the config file.
    std::fs::write(
        &cfg,
        "[upstream]\nservers = [\"127.0.0.1:5353\"]\n[metrics]\nadmin_token_file = \"token\"\n",
    )
    .unwrap();
    let token_file = dir.path().join("token");
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dnsteer"))
            .arg("check-config")
            .arg(&cfg)
            .output()
            .expect("run dnsteer check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let names_it = |text: &str| {
        text.contains("metrics.admin_token_file") && text.contains(&*token_file.to_string_lossy())
    };

    let (ok, text) = check();
    assert!(
        !ok && names_it(&text) && text.contains("cannot read"),
        "{text}"
    );

    std::fs::write(&token_file, " \n").unwrap();
    let (ok, text) = check();
    assert!(!ok && text.contains("metrics.admin_token_file"), "{text}");

    let short = "Zq7-short-tok";
    std::fs::write(&token_file, short).unwrap();
    let (ok, text) = check();
    assert!(!ok && text.contains("at least 16 bytes"), "{text}");
    assert!(!text.contains(short), "the token is never printed: {text}");

    std::fs::remove_file(&token_file).unwrap();
    std::fs::create_dir(&token_file).unwrap();
    let (ok, text) = check();
    assert!(!ok && names_it(&text), "{text}");
    std::fs::remove_dir(&token_file).unwrap();

    let good = "Zq7-good-token-0123456789abcdef";
    std::fs::write(&token_file, format!("{good}\n")).unwrap();
    let (ok, text) = check();
    assert!(ok && text.contains("admin token read"), "{text}");
    assert!(!text.contains(good), "the token is never printed: {text}");
}

//! `pickselfweighted` (PowerDNS 5.0 semantics) against real HTTP listeners on loopback: the
//! weight is the leading integer of each candidate's probe body, the pick is
//! `hash(bestwho) % sum` over the written order, a DOWN candidate weighs 0, a body without a
//! positive number weighs 1, and all DOWN is SERVFAIL.

mod inproc;
mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::{QueryOpts, dns_query};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);

/// (status, body) each listener answers; changed by the test.
type Bodies = Arc<Mutex<HashMap<Ipv4Addr, (u16, String)>>>;

/// HTTP listeners on A and B with one port; each answers from `bodies`.
fn listeners(bodies: &Bodies) -> u16 {
    'retry: for _ in 0..20 {
        let first = TcpListener::bind((A, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let Ok(second) = TcpListener::bind((B, port)) else {
            continue 'retry;
        };
        for (ip, l) in [(A, first), (B, second)] {
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                for mut s in l.incoming().flatten() {
                    let mut buf = [0u8; 2048];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ = s.read(&mut buf);
                    let (status, body) = bodies.lock().unwrap()[&ip].clone();
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
        return port;
    }
    panic!("no common free port on 127.0.0.21 and 127.0.0.22");
}

/// Bob Jenkins' lookup2 (an independent copy of the hash PowerDNS applies to `bestwho`).
fn lookup2(key: &[u8]) -> u32 {
    fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
        a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 13);
        b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 8);
        c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 13);
        a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 12);
        b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 16);
        c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 5);
        a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 3);
        b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 10);
        c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 15);
        (a, b, c)
    }
    assert!(key.len() < 12);
    let (mut a, mut b, mut c) = (0x9e37_79b9u32, 0x9e37_79b9u32, key.len() as u32);
    for (i, &x) in key.iter().enumerate() {
        let x = u32::from(x);
        match i {
            0..=3 => a = a.wrapping_add(x << (8 * i)),
            4..=7 => b = b.wrapping_add(x << (8 * (i - 4))),
            _ => c = c.wrapping_add(x << (8 * (i - 7))),
        }
    }
    mix(a, b, c).2
}

/// What dnsteer answers for a client in `net`/24 (ECS), and what 5.0 would pick for weights.
fn check(front: SocketAddr, weights: [u64; 2]) -> Result<(), String> {
    for i in 0..40u8 {
        let net = Ipv4Addr::new(198, 51, i, 0);
        let m = dns_query(
            front,
            "sw.example.test.",
            RecordType::A,
            &QueryOpts::udp().ecs(&format!("{net}/24")),
        )
        .unwrap();
        let got = support::answer_rdata(&m);
        let r = u64::from(lookup2(&net.octets())) % (weights[0] + weights[1]);
        let want = if r < weights[0] { A } else { B };
        if got != vec![want.to_string()] {
            return Err(format!(
                "{net}/24 with weights {weights:?}: got {got:?}, want {want}"
            ));
        }
    }
    Ok(())
}

fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn weights_come_from_the_probe_body() {
    let bodies: Bodies = Arc::new(Mutex::new(HashMap::from([
        (A, (200, "1\n".to_string())),
        (B, (200, " 30 requests".to_string())),
    ])));
    let port = listeners(&bodies);
    let nobody = SocketAddr::from((IpAddr::V4(Ipv4Addr::LOCALHOST), support::free_port()));
    let config = format!(
        "[probes]\ninterval = \"100ms\"\ntimeout = \"500ms\"\n[[records]]\nname = \"sw.example.test\"\n\
         type = \"A\"\nlua = \"pickselfweighted('http://sw.example.test:{port}/w', {{'{A}', '{B}'}})\"\n"
    );
    let (app, _dir) = inproc::start_with(&[nobody], &config);
    let front = app.dns_addrs[0];
    eventually("weights 1 and 30", || check(front, [1, 30]));

    // A body without a positive number weighs 1 while UP.
    bodies.lock().unwrap().insert(B, (200, "-4".into()));
    eventually("weights 1 and 1", || check(front, [1, 1]));

    // DOWN weighs 0.
    bodies.lock().unwrap().insert(A, (503, "7".into()));
    eventually("A down", || check(front, [0, 1]));

    // Everything DOWN: PowerDNS 5.0 raises, SERVFAIL.
    bodies.lock().unwrap().insert(B, (500, "7".into()));
    eventually("all down", || {
        let m = dns_query(front, "sw.example.test.", RecordType::A, &QueryOpts::udp()).unwrap();
        match m.metadata.response_code {
            ResponseCode::ServFail => Ok(()),
            rc => Err(format!("{rc:?}")),
        }
    });
}

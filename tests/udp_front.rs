//! The UDP front-end thread on its own: a full pending table answers SERVFAIL at once,
//! in-process answers need nothing but the thread, forwarded queries get SERVFAIL within
//! `timeout × attempts`, and the thread stops by itself, after what is in flight. (End to
//! end, every UDP test in the other files goes through it as well.)

mod inproc;
mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use dnsteer::server::udp_front::UdpFront;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{QueryOpts, build_query, udp_exchange};

/// A front-end thread on a fresh socket, sharing a running App's state, with at most
/// `max_pending` queries in flight per server.
struct Front {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    fn start(app: &dnsteer::app::App, max_pending: usize) -> Front {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let front = UdpFront::new(0, 0, app.shared().clone(), sock, stop_rx)
            .unwrap()
            .with_max_pending(max_pending);
        Front {
            addr,
            stop: Some(stop),
            thread: Some(std::thread::spawn(move || front.run())),
        }
    }

    /// Sets the stop flag and waits for the thread; how long that took.
    fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        self.stop.as_ref().unwrap().send(true).unwrap();
        self.thread.take().unwrap().join().unwrap();
        t0.elapsed()
    }
}

/// A client socket that sent `name` to `to` and has not read the answer yet; with its ID.
fn send(to: std::net::SocketAddr, name: &str) -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (id, wire) = build_query(name, RecordType::A, &QueryOpts::udp());
    s.send_to(&wire, to).unwrap();
    (s, id)
}

fn read_answer(s: &UdpSocket) -> Message {
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("an answer");
    Message::from_vec(&buf[..n]).unwrap()
}

fn pending_full(app: &dnsteer::app::App) -> f64 {
    let text = inproc::get(app.metrics_addr, "/metrics");
    inproc::metric(&text, "dnsteer_dropped_total{reason=\"pending_full\"}")
}

#[test]
fn a_full_pending_table_answers_servfail_at_once_and_counts_it() {
    // The upstream is a socket that never answers: nothing may depend on it.
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (app, _dir) = inproc::start_with(
        &[blackhole.local_addr().unwrap()],
        "[[records]]\nname = \"local.test.\"\ntype = \"A\"\ncontent = [\"192.0.2.7\"]\n",
    );
    let mut f = Front::start(&app, 2);

    // Two forwarded queries fill the table (500 ms × 2 attempts at the black hole).
    let t_in_flight = Instant::now();
    let in_flight = [send(f.addr, "one.test."), send(f.addr, "two.test.")];
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pending_full(&app), 0.0);

    // The next one: SERVFAIL at once (not after the upstream timeout), same ID.
    let (id, wire) = build_query("elsewhere.test.", RecordType::A, &QueryOpts::udp());
    let t0 = Instant::now();
    let reply = udp_exchange(f.addr, &wire, Duration::from_secs(2)).expect("an answer");
    let msg = Message::from_vec(&reply).unwrap();
    assert_eq!(msg.metadata.id, id);
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(pending_full(&app), 1.0);

    // In-process answers need nothing but this thread.
    let (_, wire) = build_query("local.test.", RecordType::A, &QueryOpts::udp());
    let msg =
        Message::from_vec(&udp_exchange(f.addr, &wire, Duration::from_secs(2)).unwrap()).unwrap();
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::answer_rdata(&msg), vec!["192.0.2.7".to_string()]);

    // The two in flight: SERVFAIL once both attempts timed out (retried on the same, only
    // server), not before and not much after.
    for (s, id) in &in_flight {
        let msg = read_answer(s);
        assert_eq!(msg.metadata.id, *id);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    }
    let took = t_in_flight.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1600),
        "{took:?}"
    );
    let mut buf = [0u8; 512];
    blackhole.set_nonblocking(true).unwrap();
    let mut attempts = 0;
    while let Ok(n) = blackhole.recv(&mut buf) {
        // Health checks (SOA) reach it too; count the forwards.
        let q = &buf[12..n];
        attempts +=
            usize::from(q.starts_with(b"\x03one\x04test\0") || q.starts_with(b"\x03two\x04test\0"));
    }
    assert_eq!(attempts, 4, "two attempts each reached the server");
    // Room again: the table was freed.
    let (s, _) = send(f.addr, "three.test.");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pending_full(&app), 1.0);

    // Stop with one query in flight: the thread answers it (SERVFAIL) before it ends.
    let took = f.stop();
    assert_eq!(
        read_answer(&s).metadata.response_code,
        ResponseCode::ServFail
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1600),
        "{took:?}"
    );
}

#[test]
fn an_idle_thread_stops_at_once_and_when_its_stop_sender_is_gone() {
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (app, _dir) = inproc::start_with(&[blackhole.local_addr().unwrap()], "");
    let mut f = Front::start(&app, 16);
    let took = f.stop();
    assert!(took < Duration::from_millis(400), "{took:?}");

    // The sender goes away (the app is gone): the thread notices within its poll timeout.
    let mut f = Front::start(&app, 16);
    let t0 = Instant::now();
    drop(f.stop.take());
    f.thread.take().unwrap().join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
}

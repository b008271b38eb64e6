//! The UDP front-end thread on its own: what it does when the worker cannot take forwarded
//! queries, and that it stops by itself. (End to end, every UDP test in the other files goes
//! through it as well.)

mod inproc;
mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use dnsteer::server::udp_front::UdpFront;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use support::{QueryOpts, build_query, udp_exchange};

/// A front-end thread on a fresh socket, sharing a running App's state, with a handoff queue
/// of one batch that is already full (the receiver is kept but never read).
struct Front {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _rx: tokio::sync::mpsc::Receiver<dnsteer::server::udp_front::ForwardBatch>,
}

fn front_with_full_queue(app: &dnsteer::app::App) -> Front {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(Vec::new()).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let front = UdpFront {
        worker: 0,
        listener: 0,
        shared: app.shared().clone(),
        sock,
        forward: tx,
        stop: stop_rx,
    };
    Front {
        addr,
        stop,
        thread: Some(std::thread::spawn(move || front.run())),
        _rx: rx,
    }
}

#[test]
fn a_full_handoff_queue_answers_servfail_at_once_and_counts_it() {
    // The upstream is a socket that never answers: nothing may depend on it.
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (app, _dir) = inproc::start_with(
        &[blackhole.local_addr().unwrap()],
        "[[records]]\nname = \"local.test.\"\ntype = \"A\"\ncontent = [\"192.0.2.7\"]\n",
    );
    let mut f = front_with_full_queue(&app);

    // A forwarded name: SERVFAIL at once (not after the upstream timeout), same ID.
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
    let text = inproc::get(app.metrics_addr, "/metrics");
    assert_eq!(
        inproc::metric(&text, "dnsteer_dropped_total{reason=\"pending_full\"}"),
        1.0,
        "{text}"
    );

    // In-process answers do not need the worker at all.
    let (_, wire) = build_query("local.test.", RecordType::A, &QueryOpts::udp());
    let msg =
        Message::from_vec(&udp_exchange(f.addr, &wire, Duration::from_secs(2)).unwrap()).unwrap();
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(support::answer_rdata(&msg), vec!["192.0.2.7".to_string()]);

    // Stop with no traffic: the thread notices within its receive timeout.
    let t0 = Instant::now();
    f.stop.send(true).unwrap();
    f.thread.take().unwrap().join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

#[test]
fn the_thread_ends_when_its_worker_is_gone() {
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (app, _dir) = inproc::start_with(&[blackhole.local_addr().unwrap()], "");
    let mut f = front_with_full_queue(&app);
    // The worker's end of the queue goes away (start-up failed half way, or it stopped).
    drop(f._rx);
    let t0 = Instant::now();
    f.thread.take().unwrap().join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

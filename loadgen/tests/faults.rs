//! A server that refuses, closes, answers errors, stalls for a while or never answers: the
//! loadgen counts errors by kind, reconnects with backoff, keeps its open-loop schedule (a
//! stall is latency, not fewer samples), and ends on time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{small_plan, start_redis};
use repram_loadgen::run::run;
use repram_loadgen::schedule::Pace;
use repram_loadgen::target::TargetKind;

/// A fake server on 127.0.0.1 that hands each accepted connection to `serve` on its own
/// thread, until dropped.
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl FakeServer {
    fn start(serve: fn(std::net::TcpStream, &AtomicBool)) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(30);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || serve(stream, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeServer {
            addr,
            stop,
            accepted,
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads and discards until told to stop; never answers.
fn never_answer(mut stream: std::net::TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    let give_up = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        if let Ok(0) = stream.read(&mut buf) {
            return;
        }
    }
}

/// Answers every RESP command (each starts with `*`; the loadgen's keys and values hold
/// none) with `-ERR go away`.
fn answer_errors(mut stream: std::net::TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    let give_up = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let commands = buf[..n].iter().filter(|&&b| b == b'*').count();
                if stream
                    .write_all(&b"-ERR go away\r\n".repeat(commands))
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => {}
        }
    }
}

fn close_at_once(stream: std::net::TcpStream, _stop: &AtomicBool) {
    drop(stream);
}

/// Every test run is 1 s with 200 ms timeouts: it must be over well within 3 s.
const RUN_WALL_MAX: Duration = Duration::from_secs(3);

#[test]
fn refused_connections_are_counted_and_the_run_ends_on_time() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    }; // nothing listens there any more
    for kind in [TargetKind::Redis, TargetKind::Repram] {
        let started = Instant::now();
        let output = run(&small_plan(kind, port)).expect("run");
        assert!(
            started.elapsed() < RUN_WALL_MAX,
            "{kind}: {:?}",
            started.elapsed()
        );
        let report = output.report;
        assert_eq!(report.ops, 0);
        let refused = report.errors.get("connect refused").copied().unwrap_or(0);
        // Two connections retried with backoff 10, 20, 40… ms: several attempts, not thousands.
        assert!((4..200).contains(&refused), "{kind}: {:?}", report.errors);
    }
}

#[test]
fn a_server_closing_every_connection_is_reconnected_with_backoff() {
    let server = FakeServer::start(close_at_once);
    let started = Instant::now();
    let report = run(&small_plan(TargetKind::Redis, server.addr))
        .expect("run")
        .report;
    assert!(started.elapsed() < RUN_WALL_MAX, "{:?}", started.elapsed());
    assert_eq!(report.ops, 0);
    assert!(report.errors_total > 0, "{:?}", report.errors);
    let closed_or_io: u64 = ["closed", "io"]
        .iter()
        .filter_map(|k| report.errors.get(*k))
        .sum();
    assert!(closed_or_io > 0, "{:?}", report.errors);
    let accepted = server.accepted.load(Ordering::Relaxed);
    assert!(
        (4..200).contains(&accepted),
        "{accepted} connections in 1 s"
    );
}

#[test]
fn error_replies_are_counted_by_kind_and_the_connection_kept() {
    let server = FakeServer::start(answer_errors);
    let report = run(&small_plan(TargetKind::Redis, server.addr))
        .expect("run")
        .report;
    assert_eq!(report.ops, 0);
    let refusals = report.errors.get("server ERR").copied().unwrap_or(0);
    assert!(refusals > 100, "{:?}", report.errors);
    assert_eq!(report.errors_total, refusals, "{:?}", report.errors);
    // A server error does not break the connection: the two connections were enough.
    assert_eq!(server.accepted.load(Ordering::Relaxed), 2);
}

#[test]
fn a_server_that_never_answers_times_out_and_the_run_ends_on_time() {
    let server = FakeServer::start(never_answer);
    for kind in [TargetKind::Redis, TargetKind::Memcached, TargetKind::Repram] {
        let started = Instant::now();
        let report = run(&small_plan(kind, server.addr)).expect("run").report;
        assert!(
            started.elapsed() < RUN_WALL_MAX,
            "{kind}: {:?}",
            started.elapsed()
        );
        assert_eq!(report.ops, 0);
        // REPRAM's Hello goes unanswered too: the connect itself times out.
        let timeouts = report.errors.get("timeout").copied().unwrap_or(0);
        assert!(timeouts > 0, "{kind}: {:?}", report.errors);
    }
}

#[test]
fn open_loop_shows_a_stalled_server_as_latency_not_fewer_samples() {
    let redis = start_redis();
    let pid = redis.pid() as libc::pid_t;
    let mut plan = small_plan(TargetKind::Redis, redis.addr);
    plan.pace = Pace::Open {
        rate_per_second: 2000,
    };
    plan.duration = Duration::from_millis(1500);
    plan.connections_per_thread = 4;
    plan.pipeline_depth = 1;
    plan.request_timeout = Duration::from_secs(2);
    // Stop redis for 300 ms, from 0.4 s into the run.
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        // SAFETY: kill only sends a signal to the redis-server this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
    let output = run(&plan).expect("run");
    stopper.join().expect("stopper thread");
    let report = output.report;
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    // Every request due in 1.5 s at 2000/s is accounted for: 3000, measured or (the few a
    // worker still waiting on an answer at the end could not send) reported unsent.
    assert_eq!(report.ops + report.unsent, 3000);
    assert!(report.unsent <= 30, "{} unsent", report.unsent);
    // The requests due during the stall waited for it: about 600 of them, from up to 300 ms.
    let all = report.histogram("all").expect("histogram");
    let slow = all.count_between(100_000, 10_000_000);
    assert!(slow >= 300, "{slow} requests over 100 ms");
    assert!(all.max() >= 250_000, "max {} µs", all.max());
    assert!(
        report.latency["all"].p90_us >= 50_000,
        "{:?}",
        report.latency["all"]
    );
}

#[test]
fn closed_loop_hides_the_same_stall_in_a_few_samples() {
    // The contrast that makes open loop necessary: with 4 closed-loop workers, a 300 ms stall
    // delays only the 4 requests in flight.
    let redis = start_redis();
    let pid = redis.pid() as libc::pid_t;
    let mut plan = small_plan(TargetKind::Redis, redis.addr);
    plan.connections_per_thread = 4;
    plan.pipeline_depth = 1;
    plan.request_timeout = Duration::from_secs(2);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        // SAFETY: kill only sends a signal to the redis-server this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
    let report = run(&plan).expect("run").report;
    stopper.join().expect("stopper thread");
    let all = report.histogram("all").expect("histogram");
    assert!(all.max() >= 250_000, "max {} µs", all.max());
    assert!(all.count_between(100_000, 10_000_000) <= 4);
}

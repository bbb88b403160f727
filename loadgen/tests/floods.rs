//! Connection floods against a real node: ten thousand silent connections, connections that
//! trickle a byte a second on every front end, each flood run by `repram-loadgen flood` in a
//! process of its own while a well-behaved client keeps using the node.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use repram::client::{BlockingClient, ClientOptions};
use repram::config::ServeArgs;
use repram::node::RunningNode;
use repram_loadgen::flood::FloodReport;

fn start_node(args: ServeArgs) -> RunningNode {
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        memory_budget: Some("64MiB".into()),
        peer_listen: Some("127.0.0.1:0".into()),
        ..args
    }
    .resolve()
    .expect("node config");
    repram::node::start(config).expect("start node")
}

/// Runs `repram-loadgen flood` with `args` in its own process and reads its report.
fn flood(addr: std::net::SocketAddr, args: &[&str]) -> FloodReport {
    let output = Command::new(env!("CARGO_BIN_EXE_repram-loadgen"))
        .arg("flood")
        .args(["--addr", &addr.to_string()])
        .args(args)
        .output()
        .expect("run repram-loadgen flood");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "flood failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    FloodReport::parse(stdout.trim()).unwrap_or_else(|| panic!("unreadable report: {stdout}"))
}

/// Latencies of a client doing a write and a read every few ms, until told to stop.
struct SteadyClient {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Duration>>,
}

impl SteadyClient {
    fn start(addr: std::net::SocketAddr) -> SteadyClient {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (connected, ready) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let client = BlockingClient::connect(&addr.to_string(), &ClientOptions::default())
                .expect("steady client connects");
            let _ = connected.send(());
            let mut latencies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0u64;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("steady-{}", i % 100);
                let started = Instant::now();
                client
                    .put(key.as_bytes(), b"steady", Duration::from_secs(60))
                    .expect("a steady client's write is served during the flood");
                let read = client.get(key.as_bytes()).expect("its read is served");
                latencies.push(started.elapsed());
                assert_eq!(read.map(|v| v.bytes), Some(b"steady".to_vec()));
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            latencies
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("steady client connected");
        SteadyClient { stop, handle }
    }

    fn finish(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = self.handle.join().expect("steady client");
        latencies.sort_unstable();
        latencies
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

#[test]
fn ten_thousand_silent_connections_are_capped_then_closed_while_a_client_is_served() {
    let node = start_node(ServeArgs {
        shards: Some(2),
        max_connections: Some(4_000),
        idle_timeout: Some("3s".into()),
        ..Default::default()
    });
    let steady = SteadyClient::start(node.client_addr);
    std::thread::sleep(Duration::from_millis(500));

    let report = flood(
        node.client_addr,
        &[
            "--mode",
            "idle",
            "--connections",
            "10000",
            "--duration",
            "30s",
        ],
    );
    let latencies = steady.finish();
    eprintln!("{report}");
    eprintln!(
        "steady client during the flood: {} round trips, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0)
    );

    assert_eq!(report.opened + report.connect_failed, 10_000);
    assert_eq!(
        report.open_at_end, 0,
        "every connection was closed: {report}"
    );
    // Past the cap (less the steady client's), each connection is told why and closed.
    assert!(
        report.answered_then_closed >= 5_900,
        "refused with a reason: {report}"
    );
    // Those let in are closed by the idle timeout, no sooner.
    assert!(
        (3_000..=4_000).contains(&report.closed_silently),
        "closed by the idle timeout: {report}"
    );
    assert!(
        report.silent_close_after_ms[0] >= 2_900,
        "not before the idle timeout: {report}"
    );
    let stats = BlockingClient::connect(&node.client_addr.to_string(), &ClientOptions::default())
        .expect("a client connects once the flood is gone")
        .stats()
        .expect("stats");
    assert_eq!(
        stats.total.connections_refused as usize, report.answered_then_closed,
        "the node counted each refusal"
    );
    // The steady client never stalled: a stall of the shard would show as a round trip of
    // seconds (its figures are printed above; the flood's cost is in docs/robustness.md).
    assert!(latencies.len() > 100);
    assert!(quantile(&latencies, 1.0) < Duration::from_secs(2));
    node.stop();
}

#[test]
fn connections_trickling_a_byte_a_second_are_closed_after_the_idle_timeout_on_every_front_end() {
    let node = start_node(ServeArgs {
        shards: Some(2),
        idle_timeout: Some("2s".into()),
        resp_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    });
    let steady = SteadyClient::start(node.client_addr);
    let fronts = [
        ("native", node.client_addr),
        ("resp", node.resp_addr.expect("resp")),
        ("http", node.http_addr.expect("http")),
    ];
    let floods: Vec<_> = fronts
        .iter()
        .map(|&(protocol, addr)| {
            std::thread::spawn(move || {
                let report = flood(
                    addr,
                    &[
                        "--mode",
                        "trickle",
                        "--protocol",
                        protocol,
                        "--connections",
                        "300",
                        "--duration",
                        "15s",
                    ],
                );
                (protocol, report)
            })
        })
        .collect();
    for handle in floods {
        let (protocol, report) = handle.join().expect("flood");
        eprintln!("{protocol}: {report}");
        assert_eq!(report.opened, 300, "{protocol}: {report}");
        // Each connection sent a byte a second, so no single read ever waited out the idle
        // timeout: only the time since its request began closes it.
        assert_eq!(report.open_at_end, 0, "{protocol}: {report}");
        assert_eq!(report.closed_silently, 300, "{protocol}: {report}");
        assert!(report.bytes_sent >= 300, "{protocol}: {report}");
        let [first, _, last] = report.silent_close_after_ms;
        assert!(
            first >= 1_900 && last < 8_000,
            "{protocol}: closed about the idle timeout after the first byte: {report}"
        );
    }
    let latencies = steady.finish();
    assert!(latencies.len() > 100);
    assert!(quantile(&latencies, 1.0) < Duration::from_secs(2));
    node.stop();
}

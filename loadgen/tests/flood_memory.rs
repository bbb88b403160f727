//! What floods cost a node in memory. The node runs in this test process and the floods in
//! processes of their own, so this process's resident memory is the node's (plus the test's
//! small share); the tests here take turns, so one's memory never shows in another's figure.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use repram::client::{BlockingClient, ClientOptions};
use repram::config::ServeArgs;
use repram::node::RunningNode;
use repram::wire::ErrorCode;
use repram_loadgen::flood::FloodReport;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const MIB: u64 = 1024 * 1024;

fn start_node(args: ServeArgs) -> RunningNode {
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        peer_listen: Some("127.0.0.1:0".into()),
        ..args
    }
    .resolve()
    .expect("node config");
    repram::node::start(config).expect("start node")
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// This process's address space, in bytes: memory reserved, touched or not.
fn reserved_bytes() -> u64 {
    status_bytes("VmSize:")
}

fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Starts `repram-loadgen flood` with `args` against `addr`.
fn spawn_flood(addr: std::net::SocketAddr, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_repram-loadgen"))
        .arg("flood")
        .args(["--addr", &addr.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run repram-loadgen flood")
}

fn report_of(child: std::process::Child) -> FloodReport {
    let output = child.wait_with_output().expect("flood ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "flood failed: {stdout}");
    FloodReport::parse(stdout.trim()).unwrap_or_else(|| panic!("unreadable report: {stdout}"))
}

/// The most resident memory seen while `children` run (sampled every 50 ms, at most 60 s).
fn peak_resident_while(children: &mut [std::process::Child]) -> u64 {
    let mut peak = resident_bytes();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        peak = peak.max(resident_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

#[test]
fn clients_pipelining_reads_without_reading_answers_hold_bounded_memory_until_closed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let node = start_node(ServeArgs {
        shards: Some(1),
        memory_budget: Some("64MiB".into()),
        idle_timeout: Some("3s".into()),
        resp_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    });
    let client = BlockingClient::connect(&node.client_addr.to_string(), &ClientOptions::default())
        .expect("connect");
    client
        .put(b"flood", &[7u8; 16 * 1024], Duration::from_secs(120))
        .expect("put the value the flood reads");
    let before = resident_bytes();

    let fronts = [
        ("native", node.client_addr),
        ("resp", node.resp_addr.expect("resp")),
        ("http", node.http_addr.expect("http")),
    ];
    let mut children: Vec<_> = fronts
        .iter()
        .map(|&(protocol, addr)| {
            let args = [
                "--mode",
                "no-read",
                "--protocol",
                protocol,
                "--connections",
                "10",
                "--duration",
                "15s",
            ];
            spawn_flood(addr, &args)
        })
        .collect();
    let peak = peak_resident_while(&mut children);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "30 connections reading 16 KiB values, never reading answers: peak growth {:.1} MiB",
        growth as f64 / MIB as f64
    );
    for (child, (protocol, _)) in children.into_iter().zip(fronts) {
        let report = report_of(child);
        eprintln!("{protocol}: {report}");
        // Each sent far more requests than the node answered into memory...
        assert!(report.bytes_sent > 1024 * 1024, "{protocol}: {report}");
        // ...and the node dropped it once its answers went unread for the idle timeout.
        assert_eq!(report.open_at_end, 0, "{protocol}: {report}");
        assert!(
            report.elapsed_ms >= 2_900 && report.elapsed_ms < 12_000,
            "{protocol}: {report}"
        );
    }
    // 30 connections × (256 KiB of answers held + one answer + buffers): a few MiB. Answering
    // every request read (64 KiB of requests per read) would hold tens of MiB per connection.
    assert!(growth < 64 * MIB, "memory grew by {} MiB", growth / MIB);
    // (The first client idled out meanwhile.)
    let client = BlockingClient::connect(&node.client_addr.to_string(), &ClientOptions::default())
        .expect("connect");
    assert_eq!(
        client.get(b"flood").expect("read").map(|v| v.bytes.len()),
        Some(16 * 1024),
        "the node still serves"
    );
    node.stop();
}

#[test]
fn headers_announcing_large_frames_cost_only_the_bytes_that_arrive() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let node = start_node(ServeArgs {
        shards: Some(1),
        memory_budget: Some("64MiB".into()),
        idle_timeout: Some("10s".into()),
        ..Default::default()
    });
    let (before, reserved_before) = (resident_bytes(), reserved_bytes());
    // Each connection's first bytes announce a frame of about 1 MB, then one byte a second.
    let mut children = vec![spawn_flood(
        node.client_addr,
        &[
            "--mode",
            "trickle",
            "--connections",
            "2000",
            "--duration",
            "4s",
        ],
    )];
    let (mut peak, mut reserved_peak) = (before, reserved_before);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(children[0].try_wait(), Ok(None)) {
        peak = peak.max(resident_bytes());
        reserved_peak = reserved_peak.max(reserved_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = report_of(children.pop().expect("flood"));
    let growth = peak.saturating_sub(before);
    let reserved_growth = reserved_peak.saturating_sub(reserved_before);
    eprintln!(
        "{report}\n2,000 connections announcing 1 MB frames: peak growth {:.1} MiB resident, \
         {:.1} MiB reserved",
        growth as f64 / MIB as f64,
        reserved_growth as f64 / MIB as f64
    );
    assert_eq!(report.opened, 2_000, "{report}");
    assert!(
        report.bytes_sent >= 2_000 * 16,
        "every header was sent: {report}"
    );
    // Reserving what the headers announce would take 2 GB of address space (untouched, so
    // not resident, until the bytes come or the buffer is wiped).
    assert!(growth < 128 * MIB, "memory grew by {} MiB", growth / MIB);
    assert!(
        reserved_growth < 512 * MIB,
        "address space grew by {} MiB",
        reserved_growth / MIB
    );
    node.stop();
}

#[test]
fn a_write_flood_past_the_budget_is_refused_while_reads_work_and_memory_stays_near_the_budget() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const BUDGET: u64 = 128 * MIB;
    let node = start_node(ServeArgs {
        shards: Some(2),
        memory_budget: Some("128MiB".into()),
        ..Default::default()
    });
    let addr = node.client_addr.to_string();
    let value = vec![0x5au8; 16 * 1024];
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, value) = (addr.clone(), value.clone());
            std::thread::spawn(move || {
                let client =
                    BlockingClient::connect(&addr, &ClientOptions::default()).expect("connect");
                let (mut stored, mut full) = (Vec::new(), 0u64);
                // 4 writers × 5,000 × 16 KiB = 2.5 times the budget.
                for i in 0..5_000u32 {
                    let key = format!("w{w}-{i}").into_bytes();
                    match client.put(&key, &value, Duration::from_secs(300)) {
                        Ok(_) => stored.push(key),
                        Err(e) if e.code() == Some(ErrorCode::StoreFull) => full += 1,
                        Err(e) => panic!("a write gets stored or `store full`, not {e}"),
                    }
                }
                (stored, full)
            })
        })
        .collect();
    let mut peak = resident_bytes();
    while writers.iter().any(|w| !w.is_finished()) {
        peak = peak.max(resident_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    peak = peak.max(resident_bytes());
    let (mut stored, mut full) = (Vec::new(), 0);
    for writer in writers {
        let (s, f) = writer.join().expect("writer");
        stored.extend(s);
        full += f;
    }
    eprintln!(
        "{} writes stored, {full} refused `store full`; peak resident {:.1} MiB for a {} MiB budget",
        stored.len(),
        peak as f64 / MIB as f64,
        BUDGET / MIB
    );
    assert!(full > 10_000, "most of the flood is refused: {full}");
    assert!(
        stored.len() as u64 * 16 * 1024 > BUDGET / 2,
        "the budget is used"
    );
    let reader = BlockingClient::connect(&addr, &ClientOptions::default()).expect("connect");
    for key in stored.iter().step_by(97) {
        let read = reader
            .get(key)
            .expect("reads keep working when the store is full");
        assert_eq!(read.map(|v| v.bytes), Some(value.clone()));
    }
    let limit = BUDGET * 12 / 10 + 64 * MIB;
    assert!(
        peak <= limit,
        "peak resident {} MiB is over 1.2 × budget + 64 MiB = {} MiB",
        peak / MIB,
        limit / MIB
    );
    node.stop();
}

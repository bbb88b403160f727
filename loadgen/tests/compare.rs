//! `repram-loadgen compare` on two saved runs: the table side by side with ratios to the
//! first, and the plot written as SVG and PNG.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::scratch_dir;
use repram_loadgen::histograms::{format_latency_us, new_latency_histogram, record_latency};
use repram_loadgen::report::{RunReport, RunSettings};
use repram_loadgen::schedule::Pace;
use repram_loadgen::target::TargetKind;
use repram_loadgen::workload::{KeyDistribution, ValueSize, Workload};

/// A saved run whose every latency is `scale` × 1..=10_000 µs (gets) and whose throughput
/// and server CPU are given.
fn saved_run(label: &str, scale: u64, ops_per_second: f64) -> RunReport {
    let mut get = new_latency_histogram();
    for us in 1..=10_000u64 {
        record_latency(&mut get, Duration::from_micros(us * scale));
    }
    let settings = RunSettings {
        target: TargetKind::Redis,
        addr: "127.0.0.1:6379".into(),
        shard_aware: true,
        workload: Workload {
            keys: 100,
            distribution: KeyDistribution::Uniform,
            read_ratio: 1.0,
            value_size: ValueSize {
                min_bytes: 100,
                max_bytes: 100,
            },
            ttl: Duration::from_secs(60),
        },
        threads: 1,
        connections_per_thread: 1,
        pipeline_depth: 1,
        pace: Pace::Closed,
        duration: Duration::from_secs(1),
        requests_max: None,
        request_timeout: Duration::from_secs(1),
        server_pid: Some(1),
    };
    let elapsed = 10_000.0 / ops_per_second;
    let mut report = RunReport::new(
        settings,
        SystemTime::now(),
        elapsed,
        &[get, new_latency_histogram()],
        10_000,
        0,
        BTreeMap::from([("timeout".to_string(), 3)]),
        0,
        Some(elapsed / 2.0),
        None,
    );
    report.label = label.to_string();
    report
}

#[test]
fn compare_prints_runs_side_by_side_with_ratios_and_writes_the_plot() {
    let dir = scratch_dir("compare");
    let a = dir.join("a.json");
    let b = dir.join("b.json");
    let fast = saved_run("fast server", 1, 10_000.0);
    let slow = saved_run("slow server", 2, 5_000.0);
    for (path, report) in [(&a, &fast), (&b, &slow)] {
        std::fs::write(path, serde_json::to_string(report).expect("json")).expect("write");
    }
    let plot = dir.join("plot");
    let output = Command::new(env!("CARGO_BIN_EXE_repram-loadgen"))
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run repram-loadgen compare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let row = |name: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.split("  ").next() == Some(name) || l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{stdout}"));
        line[17..].split_whitespace().map(str::to_string).collect()
    };
    let header = stdout.lines().next().expect("header");
    assert!(
        header.contains("A: fast server") && header.contains("B: slow server"),
        "{header}"
    );
    assert_eq!(row("ops/s"), ["10000", "5000", "(0.50x)"]);
    // Server CPU is half the elapsed time for both: twice the ops per CPU-second.
    assert_eq!(row("ops/server-CPU-s"), ["20000", "10000", "(0.50x)"]);
    // Latencies twice as long, to the histograms' three significant digits.
    let (f, s) = (&fast.latency["all"], &slow.latency["all"]);
    for (name, fast_us, slow_us, expected_fast) in [
        ("p50", f.p50_us, s.p50_us, "5.00ms"),
        ("p99", f.p99_us, s.p99_us, "9.90ms"),
        ("max", f.max_us, s.max_us, "10.01ms"), // the top of 10 ms's bucket
    ] {
        assert_eq!(
            row(name),
            [
                expected_fast.to_string(),
                format_latency_us(slow_us),
                format!("({:.2}x)", slow_us as f64 / fast_us as f64)
            ]
        );
        assert!(
            (slow_us as f64 / fast_us as f64 - 2.0).abs() < 0.005,
            "{name}"
        );
    }
    assert_eq!(row("errors"), ["3", "3", "(1.00x)"]);
    assert_eq!(row("hit ratio"), ["100.0%", "100.0%", "(1.00x)"]);

    let svg = std::fs::read_to_string(dir.join("plot.svg")).expect("svg written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.contains("fast server") && svg.contains("slow server"));
    assert!(
        svg.contains("99.9%"),
        "the percentile axis is labelled in nines"
    );
    let png = std::fs::read(dir.join("plot.png")).expect("png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a drawn plot, not a blank image ({} bytes)",
        png.len()
    );

    // A file that is not a run is refused with its name.
    std::fs::write(dir.join("junk.json"), "{}").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_repram-loadgen"))
        .arg("compare")
        .arg(&a)
        .arg(dir.join("junk.json"))
        .output()
        .expect("run repram-loadgen compare");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("junk.json is not a loadgen run"));
}

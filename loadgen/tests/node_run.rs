//! A short real run against a REPRAM node started in this process: preload, closed and open
//! loop, shard-aware and through the shared port, a request bound, and the saved files
//! (JSON, .hgrm, interval log) read back.

mod common;

use std::time::Duration;

use common::{scratch_dir, small_plan};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use repram::config::ServeArgs;
use repram_loadgen::report::RunReport;
use repram_loadgen::run::run;
use repram_loadgen::schedule::Pace;
use repram_loadgen::target::TargetKind;

#[test]
fn short_runs_against_an_in_process_node_measure_and_save() {
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        shards: Some(2),
        memory_budget: Some("64MiB".into()),
        ..Default::default()
    }
    .resolve()
    .expect("node config");
    let node = repram::node::start(config).expect("start node");
    let addr = node.client_addr;

    // Closed loop, shard-aware, after a preload: every read hits.
    let mut plan = small_plan(TargetKind::Repram, addr);
    plan.preload = true;
    plan.connections_per_thread = 4;
    plan.pipeline_depth = 4;
    plan.request_timeout = Duration::from_secs(2);
    plan.server_pid = Some(std::process::id());
    let output = run(&plan).expect("run");
    let report = &output.report;
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    assert_eq!(report.preload.as_ref().map(|p| p.keys_written), Some(1000));
    assert!(report.ops > 1000, "{} ops", report.ops);
    assert_eq!(report.hit_ratio, Some(1.0));
    assert!(report.latency["get"].count > report.latency["set"].count);
    assert!(report.latency["all"].p50_us > 0);
    assert!(report.ops_per_server_cpu_second.is_some());
    assert!(
        (0.9..1.5).contains(&report.elapsed_seconds),
        "{}",
        report.elapsed_seconds
    );

    let dir = scratch_dir("node-run");
    // The prefix's directory is made if missing.
    let dir = dir.join("runs");
    let written = output.save(&dir.join("run")).expect("save");
    assert_eq!(written.len(), 5);
    let back = RunReport::load(&dir.join("run.json")).expect("load");
    assert_eq!(&back, report);
    assert_eq!(back.histogram("all").expect("all").len(), report.ops);
    let hgrm = std::fs::read_to_string(dir.join("run.get.hgrm")).expect("hgrm");
    assert!(hgrm.contains(&format!(
        "Total count    = {:>12}]",
        report.latency["get"].count
    )));
    let hlog = std::fs::read(dir.join("run.hlog")).expect("hlog");
    let mut logged = 0;
    for entry in IntervalLogIterator::new(&hlog) {
        if let LogEntry::Interval(interval) = entry.expect("interval log entry") {
            let tag = interval.tag().expect("tagged").as_str().to_string();
            assert!(tag == "get" || tag == "set");
            logged += repram_loadgen::histograms::decode_base64(interval.encoded_histogram())
                .expect("interval histogram")
                .len();
        }
    }
    assert_eq!(logged, report.ops, "the interval log holds every sample");

    // Open loop through the shared port, bounded by a request count before the duration.
    let mut plan = small_plan(TargetKind::Repram, addr);
    plan.target.shard_aware = false;
    plan.pace = Pace::Open {
        rate_per_second: 2000,
    };
    plan.requests_max = Some(500);
    let report = run(&plan).expect("run").report;
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    assert_eq!(report.ops, 500);
    assert!(report.elapsed_seconds < 0.5, "{}", report.elapsed_seconds);

    node.stop();
    node.wait().expect("node stops cleanly");
}

//! What a run reports: `RunReport` (saved as JSON, read back by `compare`), the summary a
//! person reads at the end of a run, and the files written beside the JSON (`.hgrm`
//! percentile text per op kind and for all ops, `.hlog` interval log).
//!
//! Owns the report's schema and its files. It never measures and never talks to a server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::histograms::{
    decode_base64, encode_base64, format_latency_us, merge, new_latency_histogram, write_hgrm,
    write_interval_log, IntervalHistogram, LatencyHistogram, LatencySummary,
};
use crate::run::{RunOutput, RunPlan};
use crate::schedule::Pace;
use crate::target::TargetKind;
use crate::workload::{OpKind, Workload};

/// Bumped when a field changes meaning; `compare` refuses other versions.
pub const REPORT_FORMAT: u32 = 1;
/// The name of the histogram of every op kind together.
pub const ALL_OPS: &str = "all";

/// The run's settings, as the report records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub target: TargetKind,
    pub addr: String,
    pub shard_aware: bool,
    pub workload: Workload,
    pub threads: usize,
    pub connections_per_thread: usize,
    pub pipeline_depth: usize,
    pub pace: Pace,
    #[serde(with = "crate::workload::duration_ms")]
    pub duration: Duration,
    pub requests_max: Option<u64>,
    #[serde(with = "crate::workload::duration_ms")]
    pub request_timeout: Duration,
    pub server_pid: Option<u32>,
}

impl RunSettings {
    pub fn of(plan: &RunPlan) -> RunSettings {
        RunSettings {
            target: plan.target.kind,
            addr: plan.target.addr.to_string(),
            shard_aware: plan.target.shard_aware,
            workload: plan.workload.clone(),
            threads: plan.threads,
            connections_per_thread: plan.connections_per_thread,
            pipeline_depth: plan.pipeline_depth,
            pace: plan.pace,
            duration: plan.duration,
            requests_max: plan.requests_max,
            request_timeout: plan.request_timeout,
            server_pid: plan.server_pid,
        }
    }

    /// `closed p16` or `open 20000/s p1`.
    pub fn mode(&self) -> String {
        match self.pace {
            Pace::Closed => format!("closed p{}", self.pipeline_depth),
            Pace::Open { rate_per_second } => {
                format!("open {rate_per_second}/s p{}", self.pipeline_depth)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreloadSummary {
    pub keys_written: u64,
    pub seconds: f64,
    pub errors: BTreeMap<String, u64>,
}

/// A run's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub format: u32,
    pub label: String,
    pub settings: RunSettings,
    /// Unix time of the start, in milliseconds.
    pub started_unix_ms: u64,
    pub elapsed_seconds: f64,
    pub ops: u64,
    pub ops_per_second: f64,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses), when there were reads.
    pub hit_ratio: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// Open loop: requests due before the end that were never sent.
    pub unsent: u64,
    pub server_cpu_seconds: Option<f64>,
    pub ops_per_server_cpu_second: Option<f64>,
    /// CPU seconds this loadgen used measuring (near its threads x elapsed: the loadgen, not
    /// the server, may have been the limit).
    #[serde(default)]
    pub loadgen_cpu_seconds: Option<f64>,
    /// Per op kind and `all`, in microseconds.
    pub latency: BTreeMap<String, LatencySummary>,
    pub preload: Option<PreloadSummary>,
    /// Per op kind and `all`: HdrHistogram V2 compressed, base64 (microseconds).
    pub histograms: BTreeMap<String, String>,
}

impl RunReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: RunSettings,
        started: SystemTime,
        elapsed_seconds: f64,
        latencies: &[LatencyHistogram; 2],
        hits: u64,
        misses: u64,
        errors: BTreeMap<String, u64>,
        unsent: u64,
        server_cpu_seconds: Option<f64>,
        preload: Option<PreloadSummary>,
    ) -> RunReport {
        let label = format!("{} {}", settings.target, settings.mode());
        let mut all = new_latency_histogram();
        let mut latency = BTreeMap::new();
        let mut histograms = BTreeMap::new();
        for kind in OpKind::ALL {
            let h = &latencies[kind.index()];
            merge(&mut all, h);
            latency.insert(kind.name().to_string(), LatencySummary::of(h));
            if let Ok(encoded) = encode_base64(h) {
                histograms.insert(kind.name().to_string(), encoded);
            }
        }
        latency.insert(ALL_OPS.to_string(), LatencySummary::of(&all));
        if let Ok(encoded) = encode_base64(&all) {
            histograms.insert(ALL_OPS.to_string(), encoded);
        }
        let ops = all.len();
        let ops_per_second = if elapsed_seconds > 0.0 {
            ops as f64 / elapsed_seconds
        } else {
            0.0
        };
        RunReport {
            format: REPORT_FORMAT,
            label,
            settings,
            started_unix_ms: started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            elapsed_seconds,
            ops,
            ops_per_second,
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            errors_total: errors.values().sum(),
            errors,
            unsent,
            server_cpu_seconds,
            ops_per_server_cpu_second: server_cpu_seconds
                .filter(|&s| s > 0.0)
                .map(|s| ops as f64 / s),
            loadgen_cpu_seconds: None,
            latency,
            preload,
            histograms,
        }
    }

    /// The histogram of `name` (`get`, `set` or `all`).
    pub fn histogram(&self, name: &str) -> Result<LatencyHistogram, String> {
        let encoded = self
            .histograms
            .get(name)
            .ok_or_else(|| format!("run {:?} has no {name} histogram", self.label))?;
        decode_base64(encoded)
    }

    pub fn load(path: &Path) -> Result<RunReport, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let report: RunReport = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a loadgen run: {e}", path.display()))?;
        if report.format != REPORT_FORMAT {
            return Err(format!(
                "{} is format {}; this loadgen reads format {REPORT_FORMAT}",
                path.display(),
                report.format
            ));
        }
        Ok(report)
    }

    /// The end-of-run summary for a person.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let _ = writeln!(
            out,
            "{} at {}: {} threads x {} connections, pipeline {}, {} keys ({}), {}% reads, values {} B",
            self.label,
            s.addr,
            s.threads,
            s.connections_per_thread,
            s.pipeline_depth,
            s.workload.keys,
            s.workload.distribution,
            (s.workload.read_ratio * 100.0).round(),
            s.workload.value_size
        );
        if let Some(p) = &self.preload {
            let _ = writeln!(
                out,
                "preload: {} keys in {:.1} s",
                p.keys_written, p.seconds
            );
        }
        let _ = writeln!(
            out,
            "{} ops in {:.2} s = {:.0} ops/s",
            self.ops, self.elapsed_seconds, self.ops_per_second
        );
        if let (Some(cpu), Some(per)) = (self.server_cpu_seconds, self.ops_per_server_cpu_second) {
            let _ = writeln!(
                out,
                "server CPU {cpu:.2} s = {per:.0} ops per server CPU-second"
            );
        }
        if let Some(cpu) = self.loadgen_cpu_seconds {
            let _ = writeln!(
                out,
                "loadgen CPU {cpu:.2} s ({:.0}% of its {} thread(s))",
                100.0 * cpu / (self.elapsed_seconds * self.settings.threads as f64).max(1e-9),
                self.settings.threads
            );
        }
        match self.hit_ratio {
            Some(ratio) => {
                let _ = writeln!(
                    out,
                    "hit ratio {:.2}% ({} hits, {} misses)",
                    ratio * 100.0,
                    self.hits,
                    self.misses
                );
            }
            None => {
                let _ = writeln!(out, "hit ratio: no reads");
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "errors: {} ({})", self.errors_total, kinds.join(", "));
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "unsent: {} requests were due before the end but never sent",
                self.unsent
            );
        }
        let _ = writeln!(
            out,
            "{:<5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "op", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for name in ["get", "set", ALL_OPS] {
            let Some(l) = self.latency.get(name) else {
                continue;
            };
            let mut row = format!("{name:<5} {:>10}", l.count);
            for (_, us) in l.figures() {
                let _ = write!(row, " {:>10}", format_latency_us(us));
            }
            let _ = writeln!(out, "{row}");
        }
        out
    }
}

impl RunOutput {
    /// Writes `PREFIX.json`, `PREFIX.hgrm` (all ops), `PREFIX.get.hgrm`, `PREFIX.set.hgrm`
    /// and `PREFIX.hlog`; returns the paths written.
    pub fn save(&self, prefix: &Path) -> Result<Vec<PathBuf>, String> {
        let with = |suffix: &str| {
            let mut name = prefix.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut written = Vec::new();
        let json = with(".json");
        let text = serde_json::to_string_pretty(&self.report)
            .map_err(|e| format!("cannot encode the report: {e}"))?;
        std::fs::write(&json, text + "\n").map_err(|e| write_error(&json, e))?;
        written.push(json);
        for (name, suffix) in [
            (ALL_OPS, ".hgrm"),
            ("get", ".get.hgrm"),
            ("set", ".set.hgrm"),
        ] {
            let path = with(suffix);
            let histogram = self.report.histogram(name)?;
            let mut out = Vec::new();
            write_hgrm(&mut out, &histogram).map_err(|e| write_error(&path, e))?;
            std::fs::write(&path, out).map_err(|e| write_error(&path, e))?;
            written.push(path);
        }
        let hlog = with(".hlog");
        let mut out = Vec::new();
        write_interval_log(&mut out, self.started, &self.intervals)?;
        std::fs::write(&hlog, out).map_err(|e| write_error(&hlog, e))?;
        written.push(hlog);
        Ok(written)
    }

    pub fn intervals(&self) -> &[IntervalHistogram] {
        &self.intervals
    }
}

fn write_error(path: &Path, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", path.display())
}

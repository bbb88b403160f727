//! A whole run: one pinned glommio executor per thread, the preload phase, the measured
//! phase, the live progress line, the server's CPU time, and the `RunReport` at the end.
//!
//! Owns threads and the main thread's bookkeeping (merging intervals, timing the phases).
//! It never opens a socket itself (each thread's `driver` does) and never writes files
//! (`report` does).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use glommio::{LocalExecutorBuilder, Placement};

use crate::cpu::process_cpu_seconds;
use crate::driver::{run_thread, IntervalSample, PhaseTask, ThreadEvent, ThreadTask, ThreadTotals};
use crate::histograms::{
    format_latency_us, merge, new_latency_histogram, IntervalHistogram, LatencyHistogram,
};
use crate::report::{PreloadSummary, RunReport, RunSettings};
use crate::schedule::Pace;
use crate::target::TargetSpec;
use crate::workload::{OpKind, Workload};

/// io_uring memory of each loadgen executor (as the node's): the locked-memory limit is
/// often 8 MiB and glommio's default wants 10 MiB.
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 64 * 1024;
/// How long the main thread waits for threads to connect before starting anyway.
const READY_WAIT_MAX: Duration = Duration::from_secs(120);

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Name of the run in reports and plots; empty: target and mode.
    pub label: String,
    pub target: TargetSpec,
    pub workload: Workload,
    pub threads: usize,
    /// Thread i is pinned to `cpus[i % len]`; empty: not pinned.
    pub cpus: Vec<usize>,
    pub connections_per_thread: usize,
    pub pipeline_depth: usize,
    pub pace: Pace,
    pub duration: Duration,
    pub requests_max: Option<u64>,
    pub preload: bool,
    pub preload_time_limit: Duration,
    pub request_timeout: Duration,
    pub server_pid: Option<u32>,
    /// Print the progress line (stderr) once a second.
    pub progress: bool,
    pub seed: u64,
}

/// A finished run: its report and what the files are written from.
pub struct RunOutput {
    pub report: RunReport,
    pub started: SystemTime,
    pub intervals: Vec<IntervalHistogram>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bad plan: {0}")]
    Plan(String),
    #[error("cannot start a loadgen thread: {0}")]
    Thread(String),
}

/// Runs the plan: preload (if asked), then the measured phase. Ends within the duration
/// plus one request timeout, whatever the server does.
pub fn run(plan: &RunPlan) -> Result<RunOutput, RunError> {
    check(plan)?;
    let preload = if plan.preload {
        Some(run_preload(plan)?)
    } else {
        None
    };
    let cpu_before = plan.server_pid.and_then(process_cpu_seconds);
    let own_cpu_before = process_cpu_seconds(std::process::id());
    let started = SystemTime::now();
    let mut progress = Progress::new(plan.threads, plan.progress);
    let per_thread_requests = |t: usize| {
        plan.requests_max.map(|n| {
            let threads = plan.threads as u64;
            n / threads + u64::from((t as u64) < n % threads)
        })
    };
    let (totals, start) = run_phase(
        plan,
        |t| PhaseTask::Measure {
            pace: plan.pace,
            duration: plan.duration,
            requests_max: per_thread_requests(t),
        },
        &mut |sample| progress.add(sample),
    )?;
    progress.finish();
    let server_cpu_seconds = match (cpu_before, plan.server_pid.and_then(process_cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let loadgen_cpu_seconds = match (own_cpu_before, process_cpu_seconds(std::process::id())) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let mut report = build_report(plan, &totals, start, started, server_cpu_seconds, preload);
    report.loadgen_cpu_seconds = loadgen_cpu_seconds;
    Ok(RunOutput {
        report,
        started,
        intervals: progress.intervals,
    })
}

fn check(plan: &RunPlan) -> Result<(), RunError> {
    let bad = |m: &str| Err(RunError::Plan(m.to_string()));
    if plan.threads == 0 || plan.connections_per_thread == 0 || plan.pipeline_depth == 0 {
        return bad("threads, connections and pipeline depth must be at least 1");
    }
    if plan.duration.is_zero() {
        return bad("the duration must be above 0");
    }
    if !(0.0..=1.0).contains(&plan.workload.read_ratio) {
        return bad("the read ratio must be within 0..=1");
    }
    if plan.workload.keys == 0 {
        return bad("the key space must hold at least one key");
    }
    if let Pace::Open { rate_per_second: 0 } = plan.pace {
        return bad("an open-loop rate must be above 0");
    }
    Ok(())
}

fn run_preload(plan: &RunPlan) -> Result<PreloadSummary, RunError> {
    let keys = plan.workload.keys;
    let threads = plan.threads as u64;
    let (totals, start) = run_phase(
        plan,
        |t| PhaseTask::Preload {
            first: keys * t as u64 / threads,
            end: keys * (t as u64 + 1) / threads,
            time_limit: plan.preload_time_limit,
        },
        &mut |_| {},
    )?;
    let finished = totals.iter().map(|t| t.finished_at).max().unwrap_or(start);
    let summary = PreloadSummary {
        keys_written: totals.iter().map(|t| t.keys_written).sum(),
        seconds: finished.saturating_duration_since(start).as_secs_f64(),
        errors: sum_errors(&totals),
    };
    if plan.progress {
        eprintln!(
            "preloaded {} of {} keys in {:.1} s ({} errors)",
            summary.keys_written,
            keys,
            summary.seconds,
            summary.errors.values().sum::<u64>()
        );
    }
    Ok(summary)
}

/// Starts one executor per thread, lets each connect, starts them together, and collects
/// their totals; `on_interval` sees each interval sample as it arrives.
fn run_phase(
    plan: &RunPlan,
    phase_of: impl Fn(usize) -> PhaseTask,
    on_interval: &mut dyn FnMut(IntervalSample),
) -> Result<(Vec<ThreadTotals>, Instant), RunError> {
    let (events_tx, events_rx) = mpsc::channel();
    let mut starts = Vec::with_capacity(plan.threads);
    let mut handles = Vec::with_capacity(plan.threads);
    let workers_total = (plan.threads * plan.connections_per_thread * plan.pipeline_depth) as u64;
    for t in 0..plan.threads {
        let task = ThreadTask {
            thread_index: t,
            target: plan.target.clone(),
            workload: plan.workload.clone(),
            connections: plan.connections_per_thread,
            pipeline_depth: plan.pipeline_depth,
            workers_total,
            phase: phase_of(t),
            request_timeout: plan.request_timeout,
            seed: plan
                .seed
                .wrapping_add(t as u64)
                .wrapping_mul(0x2545_F491_4F6C_DD1D),
        };
        let placement = match plan.cpus.is_empty() {
            true => Placement::Unbound,
            false => Placement::Fixed(plan.cpus[t % plan.cpus.len()]),
        };
        let (start_tx, start_rx) = mpsc::channel();
        starts.push(start_tx);
        let events = events_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || -> Result<ThreadTotals, String> {
                let made = LocalExecutorBuilder::new(placement)
                    .io_memory(EXECUTOR_IO_MEMORY_BYTES)
                    .name(&format!("loadgen-{t}"))
                    .make();
                match made {
                    Ok(executor) => Ok(executor.run(run_thread(task, events, start_rx))),
                    Err(e) => {
                        let _ = events.send(ThreadEvent::Failed(t));
                        Err(format!("loadgen thread {t} cannot start its executor: {e}"))
                    }
                }
            })
            .map_err(|e| RunError::Thread(e.to_string()))?;
        handles.push(handle);
    }
    drop(events_tx);

    // Wait until every thread has connected (or given up), then start them together.
    let mut ready = 0;
    let ready_by = Instant::now() + READY_WAIT_MAX;
    while ready < plan.threads {
        match events_rx.recv_timeout(ready_by.saturating_duration_since(Instant::now())) {
            Ok(ThreadEvent::Ready(_)) => ready += 1,
            Ok(ThreadEvent::Interval(sample)) => on_interval(*sample),
            // A thread could not start: the others are called off below.
            Ok(ThreadEvent::Failed(_)) | Err(_) => break,
        }
    }
    let start = Instant::now() + Duration::from_millis(5);
    let go = (ready == plan.threads).then_some(start);
    for start_tx in &starts {
        let _ = start_tx.send(go);
    }
    // Threads' detached tasks may outlive them holding a sender, so watch the threads, not
    // the channel, to know when the phase is over.
    loop {
        match events_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(ThreadEvent::Interval(sample)) => on_interval(*sample),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if handles.iter().all(|h| h.is_finished()) {
                    break;
                }
            }
        }
    }
    while let Ok(event) = events_rx.try_recv() {
        if let ThreadEvent::Interval(sample) = event {
            on_interval(*sample);
        }
    }
    let mut totals = Vec::with_capacity(plan.threads);
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(t)) => totals.push(t),
            Ok(Err(message)) => failure = Some(message),
            Err(_) => failure = Some("a loadgen thread panicked".to_string()),
        }
    }
    match failure {
        Some(message) => Err(RunError::Thread(message)),
        None => Ok((totals, start)),
    }
}

/// Merges each second's samples from every thread; prints the progress line; keeps the
/// merged intervals for the interval log.
struct Progress {
    threads: usize,
    print: bool,
    pending: BTreeMap<u64, PendingInterval>,
    intervals: Vec<IntervalHistogram>,
}

struct PendingInterval {
    samples: usize,
    start_offset: Duration,
    duration: Duration,
    latencies: [LatencyHistogram; 2],
    errors: u64,
}

impl Progress {
    fn new(threads: usize, print: bool) -> Progress {
        Progress {
            threads,
            print,
            pending: BTreeMap::new(),
            intervals: Vec::new(),
        }
    }

    fn add(&mut self, sample: IntervalSample) {
        let entry = self
            .pending
            .entry(sample.index)
            .or_insert_with(|| PendingInterval {
                samples: 0,
                start_offset: sample.start_offset,
                duration: Duration::ZERO,
                latencies: [new_latency_histogram(), new_latency_histogram()],
                errors: 0,
            });
        entry.samples += 1;
        entry.duration = entry.duration.max(sample.duration);
        entry.errors += sample.errors;
        for kind in OpKind::ALL {
            merge(
                &mut entry.latencies[kind.index()],
                &sample.latencies[kind.index()],
            );
        }
        if entry.samples == self.threads {
            if let Some(done) = self.pending.remove(&sample.index) {
                self.emit(done);
            }
        }
    }

    fn finish(&mut self) {
        while let Some((_, interval)) = self.pending.pop_first() {
            self.emit(interval);
        }
    }

    fn emit(&mut self, interval: PendingInterval) {
        if interval.duration.is_zero() {
            return;
        }
        // A tail of a few milliseconds (answers drained after the end) is logged, not shown.
        if self.print && interval.duration >= Duration::from_millis(100) {
            let ops: u64 = interval.latencies.iter().map(|h| h.len()).sum();
            let mut line = format!(
                "[{:>5.1}s] {:>10.0} ops/s",
                (interval.start_offset + interval.duration).as_secs_f64(),
                ops as f64 / interval.duration.as_secs_f64()
            );
            for kind in OpKind::ALL {
                let h = &interval.latencies[kind.index()];
                if !h.is_empty() {
                    line.push_str(&format!(
                        " | {} p50 {} p99 {}",
                        kind.name(),
                        format_latency_us(h.value_at_quantile(0.5)),
                        format_latency_us(h.value_at_quantile(0.99))
                    ));
                }
            }
            line.push_str(&format!(" | errors {}", interval.errors));
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{line}");
        }
        let [get, set] = interval.latencies;
        for (kind, histogram) in [(OpKind::Get, get), (OpKind::Set, set)] {
            self.intervals.push(IntervalHistogram {
                start_offset: interval.start_offset,
                duration: interval.duration,
                tag: kind.name(),
                histogram,
            });
        }
    }
}

fn sum_errors(totals: &[ThreadTotals]) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    for t in totals {
        for (kind, n) in &t.errors {
            *errors.entry(kind.clone()).or_insert(0) += n;
        }
    }
    errors
}

fn build_report(
    plan: &RunPlan,
    totals: &[ThreadTotals],
    start: Instant,
    started: SystemTime,
    server_cpu_seconds: Option<f64>,
    preload: Option<PreloadSummary>,
) -> RunReport {
    let mut latencies = [new_latency_histogram(), new_latency_histogram()];
    for t in totals {
        for kind in OpKind::ALL {
            merge(&mut latencies[kind.index()], &t.latencies[kind.index()]);
        }
    }
    let finished = totals.iter().map(|t| t.finished_at).max().unwrap_or(start);
    let elapsed_seconds = finished.saturating_duration_since(start).as_secs_f64();
    let mut report = RunReport::new(
        RunSettings::of(plan),
        started,
        elapsed_seconds,
        &latencies,
        totals.iter().map(|t| t.hits).sum(),
        totals.iter().map(|t| t.misses).sum(),
        sum_errors(totals),
        totals.iter().map(|t| t.unsent).sum(),
        server_cpu_seconds,
        preload,
    );
    if !plan.label.is_empty() {
        report.label = plan.label.clone();
    }
    report
}

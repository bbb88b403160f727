//! A long run over time: latency per window (merged from the interval logs of one or more
//! runs, every op kind together) and servers' resident memory (sampled into a CSV beside the
//! run), with the soak's two checks: memory steady once warm, and no window's p99 far from the
//! median window's. Plots both as SVG and PNG.
//!
//! Owns reading `.hlog` files and memory CSVs back; it never drives a server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use crate::histograms::{decode_base64, merge, new_latency_histogram, LatencyHistogram};

/// Latency of one window of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyWindow {
    /// Seconds from the run's start to the window's start.
    pub start_s: f64,
    pub ops: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Merges the interval histograms of every log into windows of `window` from the runs' start
/// (each log's offsets count from its own start; runs started together line up).
pub fn latency_windows(logs: &[PathBuf], window: Duration) -> Result<Vec<LatencyWindow>, String> {
    let window_s = window.as_secs_f64().max(0.001);
    let mut merged: Vec<LatencyHistogram> = Vec::new();
    for path in logs {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in IntervalLogIterator::new(&bytes) {
            let entry = entry.map_err(|e| format!("{}: {e:?}", path.display()))?;
            let LogEntry::Interval(interval) = entry else {
                continue;
            };
            let at = interval.start_timestamp().as_secs_f64();
            let slot = (at / window_s) as usize;
            if merged.len() <= slot {
                merged.resize_with(slot + 1, new_latency_histogram);
            }
            let histogram = decode_base64(interval.encoded_histogram())?;
            merge(&mut merged[slot], &histogram);
        }
    }
    Ok(merged
        .iter()
        .enumerate()
        .map(|(i, h)| LatencyWindow {
            start_s: i as f64 * window_s,
            ops: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        })
        .collect())
}

/// One server's resident memory over time: (seconds from the start, bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySeries {
    pub label: String,
    pub samples: Vec<(f64, u64)>,
}

/// Reads `seconds,label,bytes` lines (a header line, if any, is skipped).
pub fn read_memory_csv(path: &Path) -> Result<Vec<MemorySeries>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut series: Vec<MemorySeries> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [at, label, bytes] = fields[..] else {
            continue;
        };
        let (Ok(at), Ok(bytes)) = (at.parse::<f64>(), bytes.parse::<u64>()) else {
            continue;
        };
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.samples.push((at, bytes)),
            None => series.push(MemorySeries {
                label: label.to_string(),
                samples: vec![(at, bytes)],
            }),
        }
    }
    Ok(series)
}

/// How far each server's memory moved once warm: (label, least, most, (most - least) / least).
pub fn memory_spread(series: &[MemorySeries], warm_s: f64) -> Vec<(String, u64, u64, f64)> {
    series
        .iter()
        .filter_map(|s| {
            let warm = s.samples.iter().filter(|(at, _)| *at >= warm_s);
            let least = warm.clone().map(|(_, b)| *b).min()?;
            let most = warm.map(|(_, b)| *b).max()?;
            Some((
                s.label.clone(),
                least,
                most,
                (most - least) as f64 / least.max(1) as f64,
            ))
        })
        .collect()
}

/// The median window's p99.
pub fn median_p99_us(windows: &[LatencyWindow]) -> u64 {
    let mut p99s: Vec<u64> = windows.iter().map(|w| w.p99_us).collect();
    p99s.sort_unstable();
    p99s.get(p99s.len() / 2).copied().unwrap_or(0)
}

/// Prints the table and the checks; writes `PREFIX-p99` and `PREFIX-memory` plots.
pub fn report(
    windows: &[LatencyWindow],
    memory: &[MemorySeries],
    warm_s: f64,
    plot: Option<&Path>,
) -> Result<String, String> {
    use std::fmt::Write;
    let mut out = String::new();
    // A run's last window is usually cut short: only windows with at least half the busiest
    // window's ops count.
    let busiest = windows.iter().map(|w| w.ops).max().unwrap_or(0);
    let windows: Vec<LatencyWindow> = windows
        .iter()
        .filter(|w| w.ops * 2 >= busiest)
        .cloned()
        .collect();
    let windows = &windows[..];
    let median = median_p99_us(windows);
    let _ = writeln!(
        out,
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "from s", "ops", "p50 ms", "p99 ms", "max ms", "p99/med"
    );
    for w in windows {
        let _ = writeln!(
            out,
            "{:>8.0} {:>10} {:>10.3} {:>10.3} {:>10.3} {:>8.2}",
            w.start_s,
            w.ops,
            w.p50_us as f64 / 1e3,
            w.p99_us as f64 / 1e3,
            w.max_us as f64 / 1e3,
            w.p99_us as f64 / median.max(1) as f64
        );
    }
    let worst = windows
        .iter()
        .map(|w| w.p99_us as f64 / median.max(1) as f64)
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "median window p99 {:.3} ms; worst window p99 / median = {worst:.2}",
        median as f64 / 1e3
    );
    for (label, least, most, spread) in memory_spread(memory, warm_s) {
        let _ = writeln!(
            out,
            "{label}: resident {:.1}..{:.1} MiB after {warm_s:.0} s: varies by {:.1}%",
            least as f64 / 1048576.0,
            most as f64 / 1048576.0,
            spread * 100.0
        );
    }
    if let Some(prefix) = plot {
        let with = |suffix: &str| {
            let mut name = prefix.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let p99: Vec<(f64, f64)> = windows
            .iter()
            .map(|w| (w.start_s / 60.0, w.p99_us as f64 / 1e3))
            .collect();
        let p50: Vec<(f64, f64)> = windows
            .iter()
            .map(|w| (w.start_s / 60.0, w.p50_us as f64 / 1e3))
            .collect();
        let written = crate::plot::write_time_plot(
            &[("p99".to_string(), p99), ("p50".to_string(), p50)],
            &with("-latency"),
            "latency per window, all clients",
            "latency (ms)",
        )?;
        for path in written {
            let _ = writeln!(out, "wrote {}", path.display());
        }
        let curves: Vec<(String, Vec<(f64, f64)>)> = memory
            .iter()
            .map(|s| {
                let points = s
                    .samples
                    .iter()
                    .map(|(at, bytes)| (at / 60.0, *bytes as f64 / 1048576.0))
                    .collect();
                (s.label.clone(), points)
            })
            .collect();
        let written = crate::plot::write_time_plot(
            &curves,
            &with("-memory"),
            "resident memory of each node",
            "resident (MiB)",
        )?;
        for path in written {
            let _ = writeln!(out, "wrote {}", path.display());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_csv_reads_back_by_label_and_spread_ignores_the_warm_up() {
        let dir = std::env::temp_dir().join(format!("repram-timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem.csv");
        std::fs::write(
            &path,
            "seconds,node,bytes\n0,a,100\n0,b,50\n60,a,1000\n60,b,500\n120,a,1100\n120,b,500\n",
        )
        .unwrap();
        let series = read_memory_csv(&path).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[0].samples,
            vec![(0.0, 100), (60.0, 1000), (120.0, 1100)]
        );
        let spread = memory_spread(&series, 60.0);
        assert_eq!(spread[0], ("a".to_string(), 1000, 1100, 0.1));
        assert_eq!(spread[1], ("b".to_string(), 500, 500, 0.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_median_window_is_the_middle_p99() {
        let window = |p99_us| LatencyWindow {
            start_s: 0.0,
            ops: 1,
            p50_us: 1,
            p99_us,
            max_us: p99_us,
        };
        let windows: Vec<_> = [5, 1, 9, 3, 7].into_iter().map(window).collect();
        assert_eq!(median_p99_us(&windows), 5);
    }
}

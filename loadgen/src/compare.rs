//! `repram-loadgen compare A.json B.json …`: the runs side by side (throughput, ops per
//! server CPU-second, errors, hit ratio, each percentile of all ops), each with its ratio to
//! the first run, and the latency-by-percentile plot of them.
//!
//! Owns reading saved runs and laying out the table. It never runs load; drawing is `plot`'s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::histograms::format_latency_us;
use crate::plot::{write_percentile_plot, PlotSeries};
use crate::report::{RunReport, ALL_OPS};

/// Loads every run, prints nothing, returns the table; writes `PREFIX.svg` and `PREFIX.png`
/// when a plot prefix is given (and returns their paths).
pub fn compare_files(
    paths: &[PathBuf],
    plot_prefix: Option<&Path>,
) -> Result<(String, Vec<PathBuf>), String> {
    if paths.len() < 2 {
        return Err("compare needs at least two runs".into());
    }
    let reports = paths
        .iter()
        .map(|p| RunReport::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let table = compare_table(&reports);
    let mut written = Vec::new();
    if let Some(prefix) = plot_prefix {
        let series = reports
            .iter()
            .map(|r| {
                Ok(PlotSeries {
                    label: r.label.clone(),
                    histogram: r.histogram(ALL_OPS)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let title = "Latency by percentile (all ops, coordinated-omission corrected in open loop)";
        written = write_percentile_plot(&series, prefix, title)?;
    }
    Ok((table, written))
}

/// One row: its name, each run's value (for the ratio) and how to print it.
struct Row {
    name: &'static str,
    values: Vec<Option<f64>>,
    show: fn(f64) -> String,
}

/// The runs as columns, figures as rows; every run after the first carries its ratio to it.
pub fn compare_table(reports: &[RunReport]) -> String {
    let latency = |pick: fn(&crate::histograms::LatencySummary) -> u64| -> Vec<Option<f64>> {
        reports
            .iter()
            .map(|r| r.latency.get(ALL_OPS).map(|l| pick(l) as f64))
            .collect()
    };
    let rows = vec![
        Row {
            name: "ops/s",
            values: reports.iter().map(|r| Some(r.ops_per_second)).collect(),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "ops/server-CPU-s",
            values: reports
                .iter()
                .map(|r| r.ops_per_server_cpu_second)
                .collect(),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "loadgen CPU-s",
            values: reports.iter().map(|r| r.loadgen_cpu_seconds).collect(),
            show: |v| format!("{v:.2}"),
        },
        Row {
            name: "p50",
            values: latency(|l| l.p50_us),
            show: show_us,
        },
        Row {
            name: "p90",
            values: latency(|l| l.p90_us),
            show: show_us,
        },
        Row {
            name: "p99",
            values: latency(|l| l.p99_us),
            show: show_us,
        },
        Row {
            name: "p99.9",
            values: latency(|l| l.p99_9_us),
            show: show_us,
        },
        Row {
            name: "p99.99",
            values: latency(|l| l.p99_99_us),
            show: show_us,
        },
        Row {
            name: "max",
            values: latency(|l| l.max_us),
            show: show_us,
        },
        Row {
            name: "errors",
            values: reports
                .iter()
                .map(|r| Some(r.errors_total as f64))
                .collect(),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "hit ratio",
            values: reports
                .iter()
                .map(|r| r.hit_ratio.map(|h| h * 100.0))
                .collect(),
            show: |v| format!("{v:.1}%"),
        },
    ];
    let headers: Vec<String> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}: {}", letter(i), r.label))
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.values
                .iter()
                .enumerate()
                .map(|(i, v)| cell(*v, row.values[0], i, row.show))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    const NAME_WIDTH: usize = 17;
    let mut out = String::new();
    let mut line = format!("{:<NAME_WIDTH$}", "");
    for (header, width) in headers.iter().zip(&widths) {
        let _ = write!(line, "  {header:>width$}");
    }
    let _ = writeln!(out, "{}", line.trim_end());
    for (row, row_cells) in rows.iter().zip(&cells) {
        let mut line = format!("{:<NAME_WIDTH$}", row.name);
        for (c, width) in row_cells.iter().zip(&widths) {
            let _ = write!(line, "  {c:>width$}");
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "(percentiles of all ops; (x) = ratio to {}; ops/server-CPU-s needs --server-pid)",
        letter(0)
    );
    out
}

fn letter(i: usize) -> String {
    match u8::try_from(i) {
        Ok(i) if i < 26 => char::from(b'A' + i).to_string(),
        _ => format!("#{}", i + 1),
    }
}

fn show_us(v: f64) -> String {
    format_latency_us(v as u64)
}

fn cell(value: Option<f64>, first: Option<f64>, index: usize, show: fn(f64) -> String) -> String {
    match (value, first) {
        (None, _) => "-".to_string(),
        (Some(v), _) if index == 0 => show(v),
        (Some(v), Some(f)) if f > 0.0 => format!("{} ({:.2}x)", show(v), v / f),
        (Some(v), _) => show(v),
    }
}

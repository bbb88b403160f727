//! Latency histograms (HdrHistogram, microseconds): how they are made, summarised into the
//! percentiles a run reports, and written in HdrHistogram's formats: the `.hgrm` percentile
//! text, the interval log, and a base64 V2-deflate blob for the JSON report.
//!
//! Owns the encoding of latency data; it never measures time or touches a socket.

use std::io;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds.
pub type LatencyHistogram = Histogram<u64>;

/// Highest latency a histogram holds exactly; longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_latency_histogram() -> LatencyHistogram {
    // Bounds are constants that the crate accepts (1 <= low, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records one latency, rounding up to a whole microsecond (so nothing is recorded as 0).
pub fn record_latency(histogram: &mut LatencyHistogram, latency: Duration) {
    let micros = latency.as_nanos().div_ceil(1000).max(1);
    histogram.saturating_record(u64::try_from(micros).unwrap_or(LATENCY_US_MAX));
}

/// Adds `source` into `into`; both come from `new_latency_histogram`, so this cannot fail.
pub fn merge(into: &mut LatencyHistogram, source: &LatencyHistogram) {
    if let Err(e) = into.add(source) {
        debug_assert!(false, "latency histograms share bounds: {e:?}");
    }
}

/// The percentiles every report and comparison shows, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
}

/// The percentiles of the summary, as (name, quantile).
pub const SUMMARY_QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

impl LatencySummary {
    pub fn of(histogram: &LatencyHistogram) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let q = |q: f64| histogram.value_at_quantile(q);
        LatencySummary {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p99_9_us: q(0.999),
            p99_99_us: q(0.9999),
            max_us: histogram.max(),
        }
    }

    /// (name, value) of each reported figure after the count, in display order.
    pub fn figures(&self) -> [(&'static str, u64); 6] {
        [
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99.9", self.p99_9_us),
            ("p99.99", self.p99_99_us),
            ("max", self.max_us),
        ]
    }
}

/// A latency in µs for a person: `850µs`, `1.25ms`, `2.10s`.
pub fn format_latency_us(micros: u64) -> String {
    if micros < 1000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.2}ms", micros as f64 / 1000.0)
    } else {
        format!("{:.2}s", micros as f64 / 1_000_000.0)
    }
}

/// Encodes a histogram as HdrHistogram's V2 compressed format, in base64 (what Java's
/// `HistogramLogReader` and `hdr-plot` read).
pub fn encode_base64(histogram: &LatencyHistogram) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| format!("cannot encode histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Decodes what `encode_base64` wrote (or any V2 histogram in base64).
pub fn decode_base64(text: &str) -> Result<LatencyHistogram, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut io::Cursor::new(bytes))
        .map_err(|e| format!("histogram cannot be decoded: {e:?}"))
}

/// Writes the percentile distribution as HdrHistogram's `outputPercentileDistribution` does
/// (the `.hgrm` text its plotter reads), with values in milliseconds. The Rust crate has no
/// writer for this format; the quantile steps are its own `iter_quantiles(5)`, as Java's.
pub fn write_hgrm(out: &mut impl io::Write, histogram: &LatencyHistogram) -> io::Result<()> {
    const US_PER_MS: f64 = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let value = histogram.highest_equivalent(step.value_iterated_to()) as f64 / US_PER_MS;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:12.3} {quantile:2.12} {total:10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / US_PER_MS,
        histogram.stdev() / US_PER_MS
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / US_PER_MS,
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        histogram.distinct_values()
    )
}

/// One second (or the last, shorter interval) of a run, for the interval log.
#[derive(Debug, Clone)]
pub struct IntervalHistogram {
    /// From the run's start.
    pub start_offset: Duration,
    pub duration: Duration,
    pub tag: &'static str,
    pub histogram: LatencyHistogram,
}

/// Writes HdrHistogram's interval log (`.hlog`): one V2-compressed histogram per interval and
/// op kind (tagged), with the run's start as the log's StartTime, in milliseconds
/// (max value divisor 1000), as `HistogramLogProcessor` expects.
pub fn write_interval_log(
    out: &mut impl io::Write,
    started: std::time::SystemTime,
    intervals: &[IntervalHistogram],
) -> Result<(), String> {
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment("repram-loadgen interval log; values in microseconds")
        .with_start_time(started)
        .with_base_time(started)
        .with_max_value_divisor(1000.0)
        .begin_log_with(out, &mut serializer)
        .map_err(|e| format!("cannot write interval log: {e}"))?;
    for interval in intervals {
        writer
            .write_histogram(
                &interval.histogram,
                interval.start_offset,
                interval.duration,
                Tag::new(interval.tag),
            )
            .map_err(|e| format!("cannot write interval log: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    /// 1..=100_000 µs, once each: the q-quantile is q * 100_000 µs.
    fn uniform_histogram() -> LatencyHistogram {
        let mut h = new_latency_histogram();
        for us in 1..=100_000u64 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        h
    }

    fn assert_close(name: &str, got: u64, expected: u64) {
        // Three significant digits: within 0.1% of the true value.
        let error = got.abs_diff(expected) as f64 / expected as f64;
        assert!(error <= 0.001, "{name}: {got} µs, expected {expected} µs");
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_where_they_belong() {
        let summary = LatencySummary::of(&uniform_histogram());
        assert_eq!(summary.count, 100_000);
        assert_close("p50", summary.p50_us, 50_000);
        assert_close("p90", summary.p90_us, 90_000);
        assert_close("p99", summary.p99_us, 99_000);
        assert_close("p99.9", summary.p99_9_us, 99_900);
        assert_close("p99.99", summary.p99_99_us, 99_990);
        assert_close("max", summary.max_us, 100_000);
        assert!(
            (summary.mean_us - 50_000.5).abs() < 50.0,
            "{}",
            summary.mean_us
        );
    }

    #[test]
    fn percentiles_of_a_bimodal_distribution_show_the_tail() {
        // 99% at 100 µs, 1% at 50 ms: p99 is still fast, p99.9 is the slow mode.
        let mut h = new_latency_histogram();
        for i in 0..100_000 {
            let us = if i % 100 == 0 { 50_000 } else { 100 };
            record_latency(&mut h, Duration::from_micros(us));
        }
        let summary = LatencySummary::of(&h);
        assert_close("p50", summary.p50_us, 100);
        assert_close("p99", summary.p99_us, 100);
        assert_close("p99.9", summary.p99_9_us, 50_000);
        assert_close("max", summary.max_us, 50_000);
    }

    #[test]
    fn sub_microsecond_latencies_are_recorded_as_one() {
        let mut h = new_latency_histogram();
        record_latency(&mut h, Duration::from_nanos(10));
        assert_eq!(h.min(), 1);
    }

    #[test]
    fn base64_round_trip_keeps_every_count() {
        let h = uniform_histogram();
        let back = decode_base64(&encode_base64(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert!(decode_base64("not base64!").is_err());
        assert!(decode_base64("aGVsbG8=").is_err());
    }

    #[test]
    fn hgrm_text_has_the_hdrhistogram_layout() {
        let mut out = Vec::new();
        write_hgrm(&mut out, &uniform_histogram()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().contains("1/(1-Percentile)"));
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
            .collect();
        // The median row: 50 ms at quantile 0.5, half the samples.
        let median = rows.iter().find(|r| r[1] == 0.5).unwrap();
        assert!((median[0] - 50.0).abs() < 0.05, "{median:?}");
        // The count runs to the end of the median's bucket (32 µs wide there).
        assert!((50_000.0..50_032.0).contains(&median[2]), "{median:?}");
        assert_eq!(rows.last().unwrap()[1], 1.0);
        assert_eq!(rows.last().unwrap()[2], 100_000.0);
        assert!(text.contains("Total count    =       100000]"));
    }

    #[test]
    fn interval_log_is_read_back_by_the_crates_reader() {
        let h = uniform_histogram();
        let intervals = vec![
            IntervalHistogram {
                start_offset: Duration::from_secs(0),
                duration: Duration::from_secs(1),
                tag: "get",
                histogram: h.clone(),
            },
            IntervalHistogram {
                start_offset: Duration::from_secs(1),
                duration: Duration::from_millis(500),
                tag: "set",
                histogram: h.clone(),
            },
        ];
        let mut out = Vec::new();
        write_interval_log(&mut out, std::time::SystemTime::now(), &intervals).unwrap();
        let entries: Vec<_> = IntervalLogIterator::new(&out)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].tag().unwrap().as_str(), "get");
        assert_eq!(entries[1].duration(), Duration::from_millis(500));
        assert!((entries[0].max() - 100.0).abs() < 0.1, "max in ms");
        let back = decode_base64(entries[1].encoded_histogram()).unwrap();
        assert_eq!(back.len(), 100_000);
    }
}

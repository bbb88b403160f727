//! The latency-by-percentile plot of one or more runs, as HdrHistogram's plotter draws it:
//! the percentile axis is log-scaled in 1/(1-p) (so 90%, 99%, 99.9%… are evenly spaced),
//! latency on a linear axis; and curves over time (a soak's latency and memory). Written as
//! SVG and PNG.
//!
//! Owns drawing only. The font is compiled in (Hack, from `epaint_default_fonts`), so the
//! PNG renders on a machine with no fonts installed; nothing is read from the system.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::histograms::LatencyHistogram;

const FONT_FAMILY: &str = "sans-serif";
const WIDTH_PX: u32 = 1200;
const HEIGHT_PX: u32 = 700;
/// The last percentile drawn: 99.9999%.
const NINES_MAX: f64 = 6.0;
/// Curve colours, in run order (then repeated): dark enough to read on white.
const CURVE_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(0, 0, 0),
];

/// One curve: a run's label and its histogram (µs).
pub struct PlotSeries {
    pub label: String,
    pub histogram: LatencyHistogram,
}

fn register_embedded_font() -> Result<(), String> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if register_font(FONT_FAMILY, style, epaint_default_fonts::HACK_REGULAR).is_err() {
                result = Err("the embedded font cannot be read".to_string());
            }
        }
    });
    result
}

/// Points (nines, latency ms) of a histogram: nines = log10(1 / (1 - quantile)).
pub fn percentile_curve(histogram: &LatencyHistogram) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    if histogram.is_empty() {
        return points;
    }
    for step in histogram.iter_quantiles(5) {
        let q = step.quantile_iterated_to();
        let nines = if q >= 1.0 {
            // The max: drawn at the rightmost percentile the sample count can show.
            (histogram.len() as f64).log10().clamp(1.0, NINES_MAX)
        } else {
            (1.0 / (1.0 - q)).log10()
        };
        if nines > NINES_MAX {
            continue;
        }
        let ms = histogram.highest_equivalent(step.value_iterated_to()) as f64 / 1000.0;
        points.push((nines, ms));
    }
    points
}

/// Writes `PREFIX.svg` and `PREFIX.png`; returns their paths.
pub fn write_percentile_plot(
    series: &[PlotSeries],
    prefix: &Path,
    title: &str,
) -> Result<Vec<PathBuf>, String> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.label.clone(), percentile_curve(&s.histogram)))
        .collect();
    write_plot(&curves, prefix, title, Axes::Percentile)
}

/// Curves over time (x in minutes), e.g. latency per window or memory per node; written as
/// PREFIX.svg and PREFIX.png.
pub fn write_time_plot(
    curves: &[(String, Vec<(f64, f64)>)],
    prefix: &Path,
    title: &str,
    y_desc: &str,
) -> Result<Vec<PathBuf>, String> {
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_plot(curves, prefix, title, Axes::Minutes { y_desc })
}

/// What a plot's x axis is, and how its y axis is named.
#[derive(Clone, Copy)]
enum Axes<'a> {
    /// Percentiles on HdrHistogram's log scale; latency in ms.
    Percentile,
    /// Minutes from the start, linear.
    Minutes { y_desc: &'a str },
}

fn write_plot(
    curves: &[(String, Vec<(f64, f64)>)],
    prefix: &Path,
    title: &str,
    axes: Axes<'_>,
) -> Result<Vec<PathBuf>, String> {
    register_embedded_font()?;
    let with = |suffix: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (svg, png) = (with(".svg"), with(".png"));
    {
        let root = SVGBackend::new(&svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        draw(&root, curves, title, axes)
            .map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
        root.present()
            .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        draw(&root, curves, title, axes)
            .map_err(|e| format!("cannot draw {}: {e}", png.display()))?;
        root.present()
            .map_err(|e| format!("cannot write {}: {e}", png.display()))?;
    }
    Ok(vec![svg, png])
}

fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[(String, Vec<(f64, f64)>)],
    title: &str,
    axes: Axes<'_>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let points = || curves.iter().flat_map(|(_, p)| p.iter());
    let x_max = match axes {
        Axes::Percentile => points()
            .map(|p| p.0)
            .fold(2.0f64, f64::max)
            .ceil()
            .min(NINES_MAX),
        Axes::Minutes { .. } => points().map(|p| p.0).fold(1.0f64, f64::max).ceil(),
    };
    let headroom = match axes {
        Axes::Percentile => 1.05,
        Axes::Minutes { .. } => 1.1,
    };
    let y_max = points().map(|p| p.1).fold(0.01f64, f64::max) * headroom;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_FAMILY, 20))
        .margin(20)
        .margin_right(50)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    let mut mesh = chart.configure_mesh();
    let legend_at = match axes {
        Axes::Percentile => {
            mesh.x_labels(x_max as usize + 1)
                .x_label_formatter(&|x| percentile_label(*x))
                .x_desc("percentile")
                .y_desc("latency (ms)");
            SeriesLabelPosition::UpperLeft
        }
        Axes::Minutes { y_desc } => {
            mesh.x_desc("minutes").y_desc(y_desc);
            SeriesLabelPosition::LowerRight
        }
    };
    mesh.label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 16))
        .draw()?;
    for (i, (label, points)) in curves.iter().enumerate() {
        let color = CURVE_COLORS[i % CURVE_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT_FAMILY, 14))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histograms::{new_latency_histogram, record_latency};
    use std::time::Duration;

    #[test]
    fn curve_is_log_spaced_and_rises() {
        let mut h = new_latency_histogram();
        for us in 1..=10_000u64 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        let curve = percentile_curve(&h);
        assert!(
            curve.windows(2).all(|w| w[0].1 <= w[1].1),
            "latency never falls"
        );
        // The first point at or past 99%: 9.9 ms (and not far past it).
        let at_99 = curve.iter().find(|p| p.0 >= 2.0).unwrap();
        assert!(at_99.0 < 2.1 && (9.9..10.0).contains(&at_99.1), "{at_99:?}");
        assert!(curve.last().unwrap().1 >= 10.0);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
    }
}

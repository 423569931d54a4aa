//! `memlink bench ... --svg FILE`: the latency percentiles of a benchmark as an SVG chart, drawn
//! with plotters' SVG backend alone (text is written as SVG `<text>` for the viewer to render:
//! no font files, no fontconfig).
//!
//! Three panels side by side, p50, p99 and the tail (p99.9 where at least
//! [`P999_SAMPLES`](crate::bench::P999_SAMPLES) samples back it, a hollow marker for the maximum
//! where they do not), each with message size across (one column per size measured) and latency
//! up (µs, logarithmic), one coloured line per transport; the legend is under the panels.

use std::io;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::bench::{Latency, human_size};

/// One transport's latency at each size it was measured at.
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) points: Vec<(usize, Latency)>,
}

const WIDTH: u32 = 1350;
const PANELS_HEIGHT: u32 = 430;
const LEGEND_ROW: u32 = 22;
const LEGEND_COLUMNS: usize = 4;
/// Ten colours told apart on screen and in print (Tableau 10).
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn colour(index: usize) -> RGBColor {
    let (r, g, b) = COLOURS[index % COLOURS.len()];
    RGBColor(r, g, b)
}

fn failed(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("drawing the chart: {e}"))
}

/// Writes the chart of `series` to `path` under `title`; `what` names the measured latency
/// ("round trip", "one-way").
pub(crate) fn write_svg(path: &Path, title: &str, what: &str, series: &[Series]) -> io::Result<()> {
    let mut sizes: Vec<usize> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(size, _)| size))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let values = series
        .iter()
        .flat_map(|s| s.points.iter())
        .flat_map(|(_, l)| [l.p50, l.p99, l.tail()]);
    let (low, high) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if sizes.is_empty() || high == 0 {
        return Err(io::Error::other("nothing to chart"));
    }
    // In µs, with some room above and below, on whole decades.
    let low = 10f64.powf((low.max(1) as f64 / 1000.0).log10().floor());
    let high = 10f64
        .powf((high as f64 / 1000.0).log10().ceil())
        .max(low * 10.0);
    let legend_rows = series.len().div_ceil(LEGEND_COLUMNS) as u32;
    let height = PANELS_HEIGHT + 40 + legend_rows * LEGEND_ROW + 20;

    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(failed)?;
    let (upper, legend) = root.split_vertically(PANELS_HEIGHT);
    let panels = upper.split_evenly((1, 3));
    type Pick = fn(&Latency) -> u64;
    let metrics: [(String, Pick, bool); 3] = [
        (format!("p50 {what} (µs)"), |l| l.p50, false),
        (format!("p99 {what} (µs)"), |l| l.p99, false),
        (
            format!("p99.9 {what} (µs; hollow: max, < 10,000 samples)"),
            Latency::tail,
            true,
        ),
    ];
    let last = sizes.len() as i32 - 1;
    let column = |size: usize| {
        SegmentValue::CenterOf(sizes.iter().position(|&s| s == size).unwrap_or(0) as i32)
    };
    for (panel, (caption, pick, is_tail)) in panels.iter().zip(&metrics) {
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((0..last).into_segmented(), (low..high).log_scale())
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(sizes.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => sizes
                    .get(*i as usize)
                    .map_or_else(String::new, |&s| human_size(s)),
                _ => String::new(),
            })
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            })
            .draw()
            .map_err(failed)?;
        for (index, s) in series.iter().enumerate() {
            let color = colour(index);
            let at = |&(size, l): &(usize, Latency)| (column(size), (pick(&l) as f64 / 1000.0));
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(at),
                    color.stroke_width(2),
                ))
                .map_err(failed)?;
            chart
                .draw_series(s.points.iter().map(|p| {
                    let hollow = *is_tail && !p.1.has_p999();
                    let style = if hollow {
                        color.stroke_width(2)
                    } else {
                        color.filled()
                    };
                    Circle::new(at(p), 4, style)
                }))
                .map_err(failed)?;
        }
    }
    let column_width = WIDTH as i32 / LEGEND_COLUMNS as i32;
    for (index, s) in series.iter().enumerate() {
        let color = colour(index);
        let x = 60 + (index % LEGEND_COLUMNS) as i32 * column_width;
        let y = 30 + (index / LEGEND_COLUMNS) as i32 * LEGEND_ROW as i32;
        legend
            .draw(&PathElement::new(
                vec![(x, y), (x + 30, y)],
                color.stroke_width(3),
            ))
            .map_err(failed)?;
        legend
            .draw(&Text::new(
                s.label.clone(),
                (x + 40, y - 8),
                ("sans-serif", 15),
            ))
            .map_err(failed)?;
    }
    root.present().map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p50: u64, samples: u64) -> Latency {
        Latency {
            p50,
            p99: p50 * 2,
            p999: p50 * 3,
            mean: p50 as f64,
            max: p50 * 5,
            samples,
        }
    }

    /// A chart of two series is one SVG document naming each series and size.
    #[test]
    fn writes_an_svg_naming_series_and_sizes() {
        let dir = std::env::temp_dir().join(format!("memlink-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let series = vec![
            Series {
                label: "memlink".into(),
                points: vec![(64, latency(200, 20_000)), (4096, latency(900, 20_000))],
            },
            Series {
                label: "unix socket".into(),
                points: vec![(64, latency(30_000, 500)), (4096, latency(40_000, 500))],
            },
        ];
        write_svg(&path, "test chart", "round trip", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for needle in [
            "memlink",
            "unix socket",
            "64 B",
            "4 KiB",
            "test chart",
            "p99.9",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
    }
}

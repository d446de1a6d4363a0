//! A PNG of a serving run's latency distributions: one empirical CDF panel each for TTFT,
//! TPOT, ITL and end-to-end latency (x in milliseconds, y the fraction of samples at or
//! below x), with the p50 and p99 marked. CDFs of two runs (ferrum vs llama.cpp) compare
//! at a glance, and tails show as the curve's slow approach to 1.
//!
//! Text needs a TrueType font: `FERRUM_PLOT_FONT`, else a common system font (DejaVu Sans,
//! Liberation Sans). Without one the chart is drawn without labels rather than failing.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use super::stats::{percentile, RequestRecord};
use crate::{BenchError, Result};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a font once; `true` when text can be drawn.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let from_env = std::env::var("FERRUM_PLOT_FONT").ok();
        let candidates = from_env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered fonts live for the process (the API wants 'static); this is
                // one file, once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn ecdf(mut xs: Vec<f64>) -> Vec<(f64, f64)> {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    xs.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

fn fmt_ms(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// The four metrics' samples in milliseconds: TTFT, TPOT, ITL, E2E (completed requests).
pub fn samples_ms(records: &[RequestRecord]) -> [(&'static str, Vec<f64>); 4] {
    let ok = || records.iter().filter(|r| r.error.is_none());
    [
        (
            "TTFT",
            ok().filter_map(|r| r.ttft_s).map(|x| 1e3 * x).collect(),
        ),
        (
            "TPOT",
            ok().filter_map(RequestRecord::tpot_s)
                .map(|x| 1e3 * x)
                .collect(),
        ),
        (
            "ITL",
            ok().flat_map(|r| r.itl_s.iter().map(|x| 1e3 * x)).collect(),
        ),
        ("E2E", ok().map(|r| 1e3 * r.e2e_s).collect()),
    ]
}

/// Writes the chart for `records` to `path` (PNG, 1200x900). `title` heads the image.
pub fn latency_chart(records: &[RequestRecord], title: &str, path: &Path) -> Result<()> {
    let text = font_ready();
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = if text {
        root.titled(title, ("sans-serif", 26)).map_err(err)?
    } else {
        root
    };
    let panels = root.split_evenly((2, 2));
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for ((area, (name, xs)), color) in panels.iter().zip(samples_ms(records)).zip(colors) {
        let mut sorted = xs.clone();
        sorted.retain(|x| x.is_finite());
        sorted.sort_by(f64::total_cmp);
        let xmax = sorted.last().copied().unwrap_or(1.0).max(1e-3) * 1.05;
        let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
        let mut b = ChartBuilder::on(area);
        b.margin(12);
        if text {
            let caption = if sorted.is_empty() {
                format!("{name}: no samples")
            } else {
                format!(
                    "{name} (n={}): p50 {} ms, p99 {} ms",
                    sorted.len(),
                    fmt_ms(p50),
                    fmt_ms(p99)
                )
            };
            b.caption(caption, ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(50);
        }
        let mut chart = b
            .build_cartesian_2d(0f64..xmax, 0f64..1.0f64)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("milliseconds").y_desc("fraction <= x");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        if sorted.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(ecdf(xs), color.stroke_width(2)))
            .map_err(err)?;
        for (q, style) in [
            (p50, BLACK.stroke_width(1)),
            (p99, BLACK.mix(0.5).stroke_width(1)),
        ] {
            chart
                .draw_series(LineSeries::new([(q, 0.0), (q, 1.0)], style))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2e: f64) -> RequestRecord {
        RequestRecord {
            sent_s: 0.0,
            ttft_s: Some(ttft),
            e2e_s: e2e,
            itl_s: vec![0.01, 0.02, 0.015],
            input_tokens: 5,
            output_tokens: 4,
            expected_output_tokens: 4,
            error: None,
        }
    }

    #[test]
    fn ecdf_is_sorted_and_ends_at_one() {
        let c = ecdf(vec![3.0, 1.0, f64::NAN, 2.0]);
        assert_eq!(c, vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
        assert!(ecdf(vec![]).is_empty());
    }

    #[test]
    fn chart_is_a_png_even_with_an_empty_metric() {
        let dir = std::env::temp_dir().join(format!("ferrum-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lat.png");
        let mut recs: Vec<RequestRecord> = (0..20)
            .map(|i| rec(0.1 + 0.01 * f64::from(i), 0.5))
            .collect();
        recs.push(RequestRecord {
            error: Some("x".into()),
            ..rec(9.0, 9.0)
        });
        latency_chart(&recs, "test run", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 1000);
        // No records at all: four empty panels, still a valid file.
        latency_chart(&[], "empty", &path).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..4], b"\x89PNG");
        let [ttft, _, itl, _] = samples_ms(&recs);
        assert_eq!(ttft.1.len(), 20, "failed request excluded");
        assert_eq!(itl.1.len(), 60);
        std::fs::remove_dir_all(&dir).ok();
    }
}

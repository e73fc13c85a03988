//! SVG line charts (plotters): pktgen's latency distribution and the
//! benchmark's pages. SVG needs no fonts on the machine that draws it.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use plotters::prelude::*;

/// One named line.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What the axes say.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// How an x value reads on the axis.
    pub x_format: &'a dyn Fn(f64) -> String,
    /// A logarithmic y axis (latencies that span decades).
    pub y_log: bool,
}

/// Draws `series` into an SVG file at `path`.
pub fn draw(path: &Path, chart: &Chart, series: &[Series]) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!(
            "{}: plots are written as SVG: give a file name ending in .svg",
            path.display()
        );
    }
    let points = || series.iter().flat_map(|s| s.points.iter());
    if points().next().is_none() {
        bail!("nothing to plot: no answers were measured");
    }
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(*x), hi.max(*x))
    });
    let (y_min, y_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| {
        (lo.min(*y), hi.max(*y))
    });
    let x_range = x_min..if x_max > x_min { x_max } else { x_min + 1.0 };
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let draw_error =
        |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(draw_error)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    // The two axis kinds are different types in plotters; the rest is shared.
    macro_rules! finish {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .x_label_formatter(&|x| (chart.x_format)(*x))
                .y_label_formatter(&|y| format!("{y}"))
                .draw()
                .map_err(draw_error)?;
            for (k, s) in series.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                ctx.draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_error)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
            ctx.configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(draw_error)?;
        }};
    }
    if chart.y_log {
        let y_range = (y_min.max(1e-3) * 0.8)..(y_max.max(1e-3) * 1.25);
        finish!(builder
            .build_cartesian_2d(x_range, y_range.log_scale())
            .map_err(draw_error)?);
    } else {
        finish!(builder
            .build_cartesian_2d(x_range, 0.0..y_max * 1.1)
            .map_err(draw_error)?);
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The x position of quantile `q` on a latency-distribution plot: its
/// "nines" (0.9 -> 1, 0.99 -> 2), so the tail gets the room it deserves.
pub fn nines(q: f64) -> f64 {
    -(1.0 - q.min(0.999_999)).log10()
}

/// The axis label of a `nines` position: 1 -> "90%", 3 -> "99.9%"; only
/// whole nines are labelled.
pub fn percentile_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        return String::new();
    }
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{q:.4}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(0.5), "");
    }

    #[test]
    fn writes_an_svg_and_refuses_other_names() {
        let dir = std::env::temp_dir().join(format!("plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chart = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            x_format: &|x| format!("{x}"),
            y_log: true,
        };
        let series = [Series {
            name: "a".into(),
            points: vec![(0.0, 10.0), (1.0, 20.0), (2.0, 400.0)],
        }];
        draw(&dir.join("a.svg"), &chart, &series).unwrap();
        let svg = std::fs::read_to_string(dir.join("a.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
        assert!(format!(
            "{:#}",
            draw(&dir.join("a.png"), &chart, &series).unwrap_err()
        )
        .contains(".svg"));
        assert!(draw(&dir.join("b.svg"), &chart, &[]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

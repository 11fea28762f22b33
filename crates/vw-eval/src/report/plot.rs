//! Line plots (step-wise success curves, loss curves) as PNG with `plotters`.

use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One named line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Curve {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points in x order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `curves` into a 640×400 PNG at `path`. `y_range` fixes the y axis (e.g. 0..1 for rates);
/// `log_y` plots log10(y) (for losses). The text uses the built-in font
/// ([`vw_dldm::train::run::register_plot_font`]); should it fail to draw, the lines are drawn
/// without text rather than failing, so a report never dies for a font.
pub fn plot_curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    curves: &[Curve],
    y_range: Option<(f64, f64)>,
    log_y: bool,
) -> Result<()> {
    let tmp = super::tmp_path(path).with_extension("png");
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let curves: Vec<Curve> = curves
        .iter()
        .map(|c| Curve {
            name: c.name.clone(),
            points: c
                .points
                .iter()
                .filter(|(_, y)| y.is_finite() && (!log_y || *y > 0.0))
                .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                .collect(),
        })
        .collect();
    vw_dldm::train::run::register_plot_font();
    let with_text = draw(&tmp, title, x_label, y_label, &curves, y_range, log_y, true);
    if with_text.is_err() {
        tracing::warn!(
            "plot {}: drawing text failed ({:?}); writing the plot without labels",
            path.display(),
            with_text
        );
        draw(&tmp, title, x_label, y_label, &curves, y_range, log_y, false)
            .map_err(|e| Error::Invalid(format!("plot {}: {e}", path.display())))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[allow(clippy::too_many_arguments)]
fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    curves: &[Curve],
    y_range: Option<(f64, f64)>,
    log_y: bool,
    text: bool,
) -> std::result::Result<(), String> {
    let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let all = curves.iter().flat_map(|c| c.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some((a, b)) = y_range {
        (y0, y1) = (a, b);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder.caption(title, ("sans-serif", 20)).x_label_area_size(36).y_label_area_size(52);
    } else {
        builder.x_label_area_size(4).y_label_area_size(4);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)).map_err(|e| e.to_string())?;
    let y_desc = if log_y { format!("log10 {y_label}") } else { y_label.to_string() };
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_label).y_desc(y_desc.as_str());
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let series = chart
            .draw_series(LineSeries::new(c.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if text {
            series
                .label(c.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        if c.points.len() <= 20 {
            chart
                .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    if text && !curves.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads one numeric series (`key`, against the `step` field or the line number) from a training
/// run's `metrics.jsonl` (one JSON object per line); lines without `key` are skipped.
pub fn read_metrics_jsonl(path: &Path, key: &str) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if let Some(y) = v.get(key).and_then(|y| y.as_f64()) {
            let x = v.get("step").and_then(|s| s.as_f64()).unwrap_or(i as f64);
            out.push((x, y));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_and_reads_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("metrics.jsonl");
        std::fs::write(
            &j,
            "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 2, \"lr\": 0.1}\n\n{\"step\": 3, \"loss\": 0.5}\n",
        )
        .unwrap();
        let pts = read_metrics_jsonl(&j, "loss").unwrap();
        assert_eq!(pts, vec![(1.0, 2.0), (3.0, 0.5)]);
        std::fs::write(&j, "{oops\n").unwrap();
        assert!(read_metrics_jsonl(&j, "loss").is_err());
        let p = dir.path().join("curve.png");
        let c = Curve { name: "a".into(), points: pts };
        plot_curves(&p, "t", "step", "loss", &[c], None, true).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (640, 400));
    }

    #[test]
    fn the_built_in_font_draws_the_labels_without_system_fonts() {
        vw_dldm::train::run::register_plot_font();
        let dir = tempfile::tempdir().unwrap();
        let c = Curve { name: "dLDM".into(), points: vec![(1.0, 0.5), (2.0, 0.25), (3.0, 0.1)] };
        let (with, without) = (dir.path().join("with.png"), dir.path().join("without.png"));
        draw(&with, "success", "step", "rate", std::slice::from_ref(&c), Some((0.0, 1.0)), false, true).unwrap();
        draw(&without, "success", "step", "rate", &[c], Some((0.0, 1.0)), false, false).unwrap();
        let (a, b) = (image::open(&with).unwrap().to_rgb8(), image::open(&without).unwrap().to_rgb8());
        let differ = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
        assert!(differ > 500, "the labels changed only {differ} pixels");
    }
}

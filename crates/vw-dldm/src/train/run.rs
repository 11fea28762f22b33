//! The run folder: `metrics.jsonl` (one JSON object per logged step), `loss.png` (the loss curve)
//! and a progress bar showing loss, steps/s and ETA.

use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the metrics log inside a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the loss curve inside a run folder.
pub const LOSS_PNG: &str = "loss.png";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsRecord {
    /// Optimizer steps completed, this one included.
    pub step: u64,
    /// Training loss of this step.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds since the (re)start of the process, for throughput.
    pub elapsed_s: f64,
    /// Extra named scalars (loss terms, accuracies).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A run folder being written.
pub struct RunDir {
    dir: PathBuf,
    history: Vec<(u64, f64)>,
    /// `None` on ranks other than 0 of a data-parallel run: they write nothing.
    metrics: Option<std::fs::File>,
    bar: ProgressBar,
    started: std::time::Instant,
}

impl RunDir {
    /// Opens (creating) `dir`. With `resume_step = Some(s)`, keeps the logged history up to step `s`
    /// and drops later lines (steps a crashed run logged after its last checkpoint); otherwise starts
    /// a fresh log. `total_steps` sizes the progress bar; `show_progress = false` hides it (tests).
    pub fn open(dir: &Path, resume_step: Option<u64>, total_steps: u64, show_progress: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(METRICS_FILE);
        let mut kept = Vec::new();
        if let Some(upto) = resume_step {
            if path.exists() {
                let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    // A torn last line (crash mid-write) is skipped rather than fatal.
                    if let Ok(r) = serde_json::from_str::<MetricsRecord>(line) {
                        if r.step <= upto {
                            kept.push(r);
                        }
                    }
                }
            }
        }
        let mut body = String::new();
        for r in &kept {
            body.push_str(&serde_json::to_string(r).map_err(|e| Error::Invalid(e.to_string()))?);
            body.push('\n');
        }
        super::checkpoint::write_atomic(&path, body.as_bytes())?;
        let metrics = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let bar = vw_data::progress::bar(total_steps, show_progress);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} loss {msg} | {per_sec} | ETA {eta}")
                .map_err(|e| Error::Invalid(e.to_string()))?,
        );
        bar.set_prefix(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        bar.set_position(resume_step.unwrap_or(0));
        bar.reset_eta();
        Ok(Self {
            dir: dir.to_path_buf(),
            history: kept.iter().map(|r| (r.step, r.loss)).collect(),
            metrics: Some(metrics),
            bar,
            started: std::time::Instant::now(),
        })
    }

    /// The run folder as seen by a rank other than 0 of a data-parallel run: it logs, plots and
    /// shows nothing, and leaves the folder to rank 0.
    pub fn follower(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            history: Vec::new(),
            metrics: None,
            bar: ProgressBar::hidden(),
            started: std::time::Instant::now(),
        }
    }

    /// [`RunDir::open`] on the main process, [`RunDir::follower`] on the others.
    pub fn open_as(
        is_main: bool,
        dir: &Path,
        resume_step: Option<u64>,
        total_steps: u64,
        show_progress: bool,
    ) -> Result<Self> {
        if is_main {
            Self::open(dir, resume_step, total_steps, show_progress)
        } else {
            Ok(Self::follower(dir))
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (step, loss) pairs logged so far, resumed history included.
    pub fn history(&self) -> &[(u64, f64)] {
        &self.history
    }

    /// Seconds since this process opened the run.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Appends one record and advances the bar.
    pub fn log(&mut self, mut rec: MetricsRecord) -> Result<()> {
        let Some(metrics) = &mut self.metrics else { return Ok(()) };
        rec.elapsed_s = self.started.elapsed().as_secs_f64();
        let line = serde_json::to_string(&rec).map_err(|e| Error::Invalid(e.to_string()))?;
        let path = self.dir.join(METRICS_FILE);
        writeln!(metrics, "{line}").map_err(|e| Error::io(&path, e))?;
        self.history.push((rec.step, rec.loss));
        self.bar.set_position(rec.step);
        self.bar.set_message(format!("{:.4}", rec.loss));
        Ok(())
    }

    /// Draws the loss curve to `loss.png` (log-scale y when the loss is positive throughout).
    pub fn plot(&self) -> Result<()> {
        if self.metrics.is_none() {
            return Ok(());
        }
        plot_loss(&self.dir.join(LOSS_PNG), &self.history)
    }

    /// Prints a line above the bar without breaking it.
    pub fn println(&self, msg: impl AsRef<str>) {
        self.bar.println(msg);
    }

    /// Ends the progress bar.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// DejaVu Sans Mono (Bitstream Vera license, `assets/DejaVu-LICENSE.txt`): the plots' one font,
/// built in, so they need no system fonts or fontconfig (a bare GPU machine has neither).
static PLOT_FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");

/// Makes the built-in font every family the plots ask for ("sans-serif", "serif", "monospace"),
/// once per process; plotters finds no other font. Every function here and in vw-eval that draws
/// text calls it first.
pub fn register_plot_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            if plotters::style::register_font(family, plotters::style::FontStyle::Normal, PLOT_FONT).is_err() {
                tracing::warn!("the built-in plot font did not load; plots are drawn without text");
            }
        }
    });
}

/// Draws `(step, loss)` points as a line chart PNG. Should the text fail to draw, the chart is
/// drawn without its caption and axis labels instead of failing the run that asked for it.
pub fn plot_loss(path: &Path, points: &[(u64, f64)]) -> Result<()> {
    register_plot_font();
    let pts: Vec<(f64, f64)> = points.iter().filter(|(_, l)| l.is_finite()).map(|&(s, l)| (s as f64, l)).collect();
    draw_loss(path, &pts, true).or_else(|_| draw_loss(path, &pts, false))
}

fn draw_loss(path: &Path, pts: &[(f64, f64)], text: bool) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| Error::Invalid(format!("plotting {}: {e}", path.display()));
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    if pts.is_empty() {
        return root.present().map_err(|e| err(e.to_string()));
    }
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let positive = pts.iter().all(|p| p.1 > 0.0);
    let y_lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(12);
    if text {
        builder.caption("training loss", ("sans-serif", 22)).x_label_area_size(36).y_label_area_size(64);
    }
    let line = LineSeries::new(pts.iter().copied(), &BLUE);
    if positive {
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, (y_lo * 0.9..y_hi * 1.1).log_scale())
            .map_err(|e| err(e.to_string()))?;
        if text {
            chart.configure_mesh().x_desc("step").y_desc("loss (log)").draw().map_err(|e| err(e.to_string()))?;
        }
        chart.draw_series(line).map_err(|e| err(e.to_string()))?;
    } else {
        let pad = ((y_hi - y_lo) * 0.05).max(1e-6);
        let mut chart =
            builder.build_cartesian_2d(0f64..x_max, y_lo - pad..y_hi + pad).map_err(|e| err(e.to_string()))?;
        if text {
            chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(e.to_string()))?;
        }
        chart.draw_series(line).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

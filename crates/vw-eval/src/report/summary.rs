//! The evaluation report of a run: every method's step-wise success beside the judge's sanity
//! rows (expert video, first frame repeated), plus whatever else was measured, written as
//! `report.md`, `metrics.json` and `success.png`.

use super::{markdown_table, pct, plot_curves, write_atomic, write_json, Curve};
use crate::{ChainResult, CodebookUsage, ProbeReport, Result, StepSuccess, VideoQuality};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Everything measured for one method (or one sanity row).
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    /// Short name, the table row label.
    pub name: String,
    /// One sentence saying what the method is.
    pub description: String,
    /// Step-wise success of its execution videos.
    pub success: StepSuccess,
    /// PSNR / SSIM of its video against the expert's, frame by frame.
    pub quality: Option<VideoQuality>,
    /// Usage of its code vocabulary on the evaluation episodes.
    pub codebook: Option<CodebookUsage>,
    /// Linear probe from its codes to the ground-truth actions.
    pub probe: Option<ProbeReport>,
    /// Closed-loop chained evaluation.
    pub chain: Option<ChainResult>,
}

/// A whole evaluation run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Heading of report.md.
    pub title: String,
    /// Free-form lines under the heading (setup, seed, commands).
    pub notes: Vec<String>,
    /// Sanity rows: the expert video and the first frame repeated (judge checks), then any
    /// diagnostic rows (e.g. the expert's own codes re-rendered by a latent dynamics model).
    pub sanity: Vec<MethodResult>,
    /// The compared methods.
    pub methods: Vec<MethodResult>,
    /// Training loss curves: (name, `(step, loss)` points).
    pub loss_curves: Vec<Curve>,
    /// GIF strips written into the run folder (file names relative to it), with captions.
    pub gifs: Vec<(String, String)>,
    /// Wall-clock seconds of each stage.
    pub timings: Vec<(String, f64)>,
    /// Extra machine-readable values (configs, seeds).
    pub extra: serde_json::Value,
}

/// Where [`EvalReport::write`] put things.
#[derive(Debug, Clone)]
pub struct ReportPaths {
    /// `report.md`.
    pub report: PathBuf,
    /// `metrics.json`.
    pub metrics: PathBuf,
    /// `success.png`.
    pub success_plot: PathBuf,
    /// `loss.png`, when loss curves were given.
    pub loss_plot: Option<PathBuf>,
}

impl EvalReport {
    /// The headline table: success at every step and on the whole task, one row per method.
    pub fn headline_table(&self) -> String {
        let rows_of = self.sanity.iter().chain(&self.methods);
        let max = rows_of.clone().map(|m| m.success.rate.len()).max().unwrap_or(0);
        let mut header = vec!["method".to_string()];
        header.extend((1..=max).map(|k| format!("step {k}")));
        header.push("full task".into());
        header.push("mean steps".into());
        let rows: Vec<Vec<String>> = rows_of
            .map(|m| {
                let mut r = vec![m.name.clone()];
                r.extend((1..=max).map(|k| m.success.at(k).map_or("-".into(), pct)));
                r.push(pct(m.success.full_task));
                r.push(format!("{:.2}", m.success.mean_completed));
                r
            })
            .collect();
        markdown_table(&header, &rows)
    }

    /// Writes report.md, metrics.json, success.png and loss.png into `dir`.
    pub fn write(&self, dir: &Path) -> Result<ReportPaths> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        let success_plot = dir.join("success.png");
        let curves: Vec<Curve> = self
            .sanity
            .iter()
            .chain(&self.methods)
            .map(|m| Curve {
                name: m.name.clone(),
                points: std::iter::once((0.0, 1.0))
                    .chain(m.success.rate.iter().enumerate().map(|(i, &r)| ((i + 1) as f64, r)))
                    .collect(),
            })
            .collect();
        plot_curves(
            &success_plot,
            "Step-wise task success (held-out appearance)",
            "recipe step k",
            "first k steps complete",
            &curves,
            Some((0.0, 1.0)),
            false,
        )?;
        let loss_plot = if self.loss_curves.iter().any(|c| !c.points.is_empty()) {
            let p = dir.join("loss.png");
            plot_curves(&p, "Training loss", "step", "loss", &self.loss_curves, None, true)?;
            Some(p)
        } else {
            None
        };
        let metrics = dir.join("metrics.json");
        write_json(&metrics, self)?;
        let report = dir.join("report.md");
        write_atomic(&report, self.markdown(loss_plot.is_some()).as_bytes())?;
        Ok(ReportPaths { report, metrics, success_plot, loss_plot })
    }

    fn markdown(&self, has_loss: bool) -> String {
        let mut s = format!("# {}\n\n", self.title);
        for n in &self.notes {
            s.push_str(&format!("{n}\n"));
        }
        s.push_str("\n## Step-wise task success\n\nSuccess at step k: among episodes whose recipe has at least k steps, the fraction whose first k steps are complete in the video, as the CraftWorld pixel judge reads it.\n\n");
        s.push_str(&self.headline_table());
        s.push_str("\n![success](success.png)\n\n");
        s.push_str("| method | what it is |\n|---|---|\n");
        for m in self.sanity.iter().chain(&self.methods) {
            s.push_str(&format!("| {} | {} |\n", m.name, m.description));
        }
        let with = |f: &dyn Fn(&MethodResult) -> Option<Vec<String>>, header: &[&str]| -> Option<String> {
            let rows: Vec<Vec<String>> = self
                .methods
                .iter()
                .filter_map(|m| {
                    f(m).map(|mut r| {
                        r.insert(0, m.name.clone());
                        r
                    })
                })
                .collect();
            (!rows.is_empty()).then(|| markdown_table(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>(), &rows))
        };
        if let Some(t) = with(
            &|m| m.quality.map(|q| vec![format!("{:.2}", q.psnr), format!("{:.4}", q.ssim), q.frames.to_string()]),
            &["method", "PSNR (dB)", "SSIM", "frames"],
        ) {
            s.push_str("\n## Video quality against the expert video\n\n");
            s.push_str(&t);
        }
        if let Some(t) = with(
            &|m| {
                m.codebook.as_ref().map(|c| {
                    vec![format!("{}/{}", c.used, c.vocab), format!("{:.1}", c.perplexity), c.total.to_string()]
                })
            },
            &["method", "codes used", "perplexity", "codes seen"],
        ) {
            s.push_str("\n## Codebook usage\n\n");
            s.push_str(&t);
        }
        if let Some(t) = with(
            &|m| {
                m.probe.map(|p| {
                    vec![
                        pct(p.train_accuracy),
                        pct(p.test_accuracy),
                        pct(p.majority_baseline),
                        format!("{}/{}", p.train_examples, p.test_examples),
                    ]
                })
            },
            &["method", "probe train acc", "probe held-out acc", "majority class", "train/test examples"],
        ) {
            s.push_str("\n## Linear probe: codes -> ground-truth action\n\n");
            s.push_str(&t);
        }
        if let Some(t) = with(
            &|m| {
                m.chain.as_ref().map(|c| {
                    let mut r: Vec<String> = c.success_at.iter().map(|&x| pct(x)).collect();
                    r.push(format!("{:.2}", c.average_length));
                    r
                })
            },
            &["method", "1", "2", "3", "4", "5", "avg. length"],
        ) {
            s.push_str("\n## Closed-loop chained evaluation (CALVIN-style, 5 subtasks)\n\n");
            s.push_str(&t);
        }
        if has_loss {
            s.push_str("\n## Training\n\n![loss](loss.png)\n");
        }
        if !self.gifs.is_empty() {
            s.push_str("\n## Executions\n\n");
            for (file, caption) in &self.gifs {
                s.push_str(&format!("{caption}\n\n![{file}]({file})\n\n"));
            }
        }
        if !self.timings.is_empty() {
            s.push_str("\n## Timings\n\n");
            let rows: Vec<Vec<String>> = self.timings.iter().map(|(n, t)| vec![n.clone(), format!("{t:.1}")]).collect();
            s.push_str(&markdown_table(&["stage".into(), "seconds".into()], &rows));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EpisodeOutcome;

    fn method(name: &str, done: &[usize]) -> MethodResult {
        let o: Vec<EpisodeOutcome> = done.iter().map(|&c| EpisodeOutcome { steps: 3, completed: c }).collect();
        MethodResult {
            name: name.into(),
            description: "d".into(),
            success: StepSuccess::from_outcomes(&o).unwrap(),
            quality: None,
            codebook: None,
            probe: None,
            chain: None,
        }
    }

    #[test]
    fn writes_all_files() {
        let r = EvalReport {
            title: "t".into(),
            notes: vec!["seed 1".into()],
            sanity: vec![method("expert", &[3, 3])],
            methods: vec![method("a", &[1, 3])],
            loss_curves: vec![Curve { name: "a".into(), points: vec![(1.0, 1.0), (2.0, 0.5)] }],
            gifs: vec![],
            timings: vec![("eval".into(), 1.5)],
            extra: serde_json::json!({"seed": 1}),
        };
        assert!(r.headline_table().contains("| a | 100.0% | 50.0% | 50.0% | 50.0% | 2.00 |"), "{}", r.headline_table());
        let dir = tempfile::tempdir().unwrap();
        let p = r.write(dir.path()).unwrap();
        let md = std::fs::read_to_string(&p.report).unwrap();
        assert!(md.contains("| expert | 100.0% | 100.0% | 100.0% | 100.0% | 3.00 |"), "{md}");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p.metrics).unwrap()).unwrap();
        assert_eq!(j["methods"][0]["success"]["rate"][1], 0.5);
        assert!(p.success_plot.exists() && p.loss_plot.unwrap().exists());
    }
}

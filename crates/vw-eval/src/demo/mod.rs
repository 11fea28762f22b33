//! The end-to-end VideoWorld 2 demo on CraftWorld, as library code so `vw demo`, `vw eval` and the
//! integration test share one implementation:
//!
//! 1. data: expert episodes of training appearance (training) and held-out appearance (evaluation);
//! 2. (retrain only) the dLDM and the VW1-style plain LDM are trained on clips (stage 1, pixel
//!    decoder), their codes of every training episode feed an AR policy each, an action decoder
//!    learns (frame, step codes) -> actions, and the no-codes frame predictor is trained;
//! 3. every method predicts the execution video from each held-out first frame, the CraftWorld
//!    judge scores each step, and the report (tables, plots, GIFs, metrics.json) is written.

pub mod evaluate;
pub mod ldm;
pub mod methods;
pub mod train;

pub use evaluate::{score_method, ExpertVideo, RepeatFirstFrame, Scored, VideoPredictor};

use crate::baseline::FramePredictorConfig;
use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use vw_data::craftworld::{generate_episode, CraftConfig, Episode, Split};
use vw_dldm::train::craft::Augment;

/// Every size and seed of a demo run; written beside the checkpoints so evaluation matches training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    /// The CraftWorld episodes.
    pub craft: CraftConfig,
    /// Training episodes (training appearance).
    pub train_episodes: usize,
    /// Evaluation episodes (held-out appearance).
    pub test_episodes: usize,
    /// Master seed: episode seeds, weight inits and batch orders derive from it.
    pub seed: u64,
    /// Latent dynamics models (dLDM and VW1-style) stage-1 training.
    pub ldm: ldm::LdmTrainConfig,
    /// The dLDM's clip renderer; `None`: the dLDM renders with its stage-1 pixel decoder, frame by
    /// frame (a config written before the clip renderer existed reads as `None`).
    #[serde(default)]
    pub clip: Option<ldm::ClipStageConfig>,
    /// AR policy training steps.
    pub policy_steps: u64,
    /// AR policy batch size (episodes).
    pub policy_batch: usize,
    /// AR policy peak learning rate.
    pub policy_lr: f64,
    /// Augmentation of the AR policies' first frames (both LDMs' alike): the policy sees only the
    /// training look and must plan from a held-out one (a config written before it reads as off).
    #[serde(default)]
    pub policy_augment: Augment,
    /// Action decoder training steps.
    pub decoder_steps: u64,
    /// Action decoder peak learning rate.
    pub decoder_lr: f64,
    /// The no-codes baseline.
    pub baseline: FramePredictorConfig,
    /// No-codes baseline training steps.
    pub baseline_steps: u64,
    /// No-codes baseline batch size (frames).
    pub baseline_batch: usize,
    /// No-codes baseline peak learning rate.
    pub baseline_lr: f64,
    /// Episodes shown as GIF strips.
    pub gif_episodes: usize,
    /// Closed-loop chains (CALVIN-style) run per method with an action decoder.
    pub chain_episodes: usize,
    /// Training episodes whose codes fit the linear probe (held-out episodes test it).
    pub probe_train_episodes: usize,
}

/// The policies' augmentation in the demo: a tinted, textured light and a camera a little moved,
/// nearer or farther and turned, about as much as the held-out look changes them (its camera is
/// scaled by 0.92-1.04, turned by up to 3 degrees and moved by up to 2 px; its light tinted by up
/// to 15%).
pub fn policy_augment() -> Augment {
    Augment {
        color_jitter: 0.15,
        static_noise: 0.05,
        grating: 0.15,
        shift: 2,
        zoom: 0.06,
        rotate: 0.06,
        background_only: false,
    }
}

impl DemoConfig {
    /// The default CPU demo: trains from scratch in well under 20 minutes on 2 cores.
    pub fn cpu() -> Self {
        Self {
            craft: CraftConfig {
                image_size: 64,
                frames_per_step: 8,
                min_steps: 3,
                max_steps: 6,
                ..CraftConfig::default()
            },
            train_episodes: 96,
            test_episodes: 64,
            seed: 0,
            ldm: ldm::LdmTrainConfig::cpu(),
            clip: Some(ldm::ClipStageConfig::cpu()),
            policy_steps: 700,
            policy_batch: 16,
            policy_lr: 3e-3,
            policy_augment: policy_augment(),
            decoder_steps: 400,
            decoder_lr: 1e-3,
            baseline: FramePredictorConfig::tiny(),
            baseline_steps: 300,
            baseline_batch: 16,
            baseline_lr: 2e-3,
            gif_episodes: 3,
            chain_episodes: 16,
            probe_train_episodes: 48,
        }
    }

    /// A bigger run for a GPU (`--large`).
    pub fn gpu() -> Self {
        let c = Self::cpu();
        Self {
            train_episodes: 512,
            test_episodes: 128,
            ldm: ldm::LdmTrainConfig::gpu(),
            clip: Some(ldm::ClipStageConfig::gpu()),
            policy_steps: 3000,
            decoder_steps: 2000,
            baseline_steps: 2000,
            chain_episodes: 64,
            probe_train_episodes: 256,
            craft: CraftConfig { max_steps: 8, ..c.craft.clone() },
            ..c
        }
    }

    /// The integration test's run: a handful of episodes and a few training steps each.
    pub fn test() -> Self {
        Self {
            craft: CraftConfig {
                image_size: 32,
                frames_per_step: 8,
                min_steps: 3,
                max_steps: 4,
                ..CraftConfig::default()
            },
            train_episodes: 6,
            test_episodes: 3,
            seed: 0,
            ldm: ldm::LdmTrainConfig::test(),
            clip: Some(ldm::ClipStageConfig::test()),
            policy_steps: 6,
            policy_batch: 4,
            policy_lr: 1e-3,
            policy_augment: policy_augment(),
            decoder_steps: 4,
            decoder_lr: 1e-3,
            baseline: FramePredictorConfig { hidden: 4, frames_out: 4 },
            baseline_steps: 4,
            baseline_batch: 4,
            baseline_lr: 1e-3,
            gif_episodes: 1,
            chain_episodes: 2,
            probe_train_episodes: 4,
        }
    }

    /// Seed of training episode `i` (training appearance).
    pub fn train_seed(&self, i: usize) -> u64 {
        self.seed.wrapping_mul(1_000_003).wrapping_add(i as u64)
    }

    /// Seed of evaluation episode `i`: a different range, so its layouts are unseen as well as its look.
    pub fn test_seed(&self, i: usize) -> u64 {
        self.train_seed(i).wrapping_add(500_000_000)
    }
}

/// Generates episodes `0..n` of one split.
pub fn episodes(cfg: &DemoConfig, split: Split, n: usize, progress: bool) -> Result<Vec<Episode>> {
    let bar = progress_bar(n as u64, &format!("CraftWorld {split} episodes"), progress);
    // Each episode from its own seed: the same episodes on any number of threads.
    let out = (0..n)
        .into_par_iter()
        .map(|i| {
            let seed = if split == Split::Train { cfg.train_seed(i) } else { cfg.test_seed(i) };
            let ep = generate_episode(&cfg.craft, split, seed).map_err(evaluate::data_err);
            bar.inc(1);
            ep
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    Ok(out)
}

/// A progress bar (hidden when `show` is false).
pub fn progress_bar(len: u64, msg: &str, show: bool) -> indicatif::ProgressBar {
    let bar = vw_data::progress::bar(len, show);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg.to_string());
    bar
}

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Report folder.
    pub out: PathBuf,
    /// Checkpoint folder: read (default) or written (`retrain`).
    pub checkpoints: PathBuf,
    /// Train every stage from scratch into `checkpoints` first.
    pub retrain: bool,
    /// Where to compute.
    pub device: candle_core::Device,
    /// Progress bars and stage lines on stderr.
    pub progress: bool,
    /// Overrides the number of evaluation episodes of the stored config.
    pub test_episodes: Option<usize>,
}

/// What the demo produced.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// Everything measured.
    pub report: crate::report::EvalReport,
    /// Where report.md, metrics.json and the plots are.
    pub paths: crate::report::ReportPaths,
    /// GIF strips written.
    pub gifs: Vec<PathBuf>,
}

/// Name of the stored demo config inside a checkpoint folder.
pub const DEMO_CONFIG_FILE: &str = "demo.json";

/// Reads the demo config stored beside checkpoints.
pub fn read_config(checkpoints: &Path) -> Result<DemoConfig> {
    let p = checkpoints.join(DEMO_CONFIG_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
}

/// Runs the demo: optionally trains every stage with `cfg` into `opts.checkpoints`, then evaluates
/// the checkpoints on held-out-appearance episodes and writes the report into `opts.out`.
/// Without `retrain`, `cfg` is ignored in favour of the config stored with the checkpoints.
pub fn run_demo(cfg: &DemoConfig, opts: &DemoOptions) -> Result<DemoOutcome> {
    let mut timings = Vec::new();
    let cfg = if opts.retrain {
        let t = std::time::Instant::now();
        train::train_all(cfg, &opts.checkpoints, &opts.device, opts.progress)?;
        timings.push(("training (all stages)".to_string(), t.elapsed().as_secs_f64()));
        cfg.clone()
    } else {
        read_config(&opts.checkpoints)?
    };
    let mut cfg = cfg;
    if let Some(n) = opts.test_episodes {
        cfg.test_episodes = n;
    }
    train::evaluate_checkpoints(&cfg, &opts.checkpoints, &opts.out, &opts.device, opts.progress, timings)
}

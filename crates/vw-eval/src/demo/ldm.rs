//! The two latent dynamics models of the demo — the dLDM (frame-conditioned renderer) and the
//! VideoWorld-1-style plain LDM (codes-only renderer) — trained by vw-dldm's own stage-1 code
//! (`vw_dldm::train::stage1`) and loaded behind [`LatentDynamics`].

use super::methods::dldm_err;
use crate::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;
use vw_data::craftworld::CraftConfig;
use vw_dldm::baseline::{RendererKind, TinyLdmConfig};
use vw_dldm::train::craft::CraftData;
use vw_dldm::train::stage1::{load_stage1, train_stage1, Stage1Config};
use vw_dldm::LatentDynamics;

/// Which latent dynamics model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LdmKind {
    /// The dynamic-enhanced LDM of VideoWorld 2 (its renderer sees the current frame).
    Dldm,
    /// The VideoWorld-1-style plain LDM (its renderer sees only the codes).
    Vw1,
}

impl LdmKind {
    /// Folder name under the checkpoint root.
    pub fn dir_name(self) -> &'static str {
        match self {
            LdmKind::Dldm => "dldm",
            LdmKind::Vw1 => "vw1-ldm",
        }
    }

    /// Table label.
    pub fn label(self) -> &'static str {
        match self {
            LdmKind::Dldm => "dLDM codes (VideoWorld 2)",
            LdmKind::Vw1 => "VW1-style LDM codes",
        }
    }

    /// The vw-dldm model config of this kind: the play recipe's model
    /// (`Stage1Config::tiny_play`), with the codes-only renderer for the VW1-style baseline.
    pub fn model(self, image_size: usize) -> TinyLdmConfig {
        let renderer = match self {
            LdmKind::Dldm => RendererKind::FrameConditioned,
            LdmKind::Vw1 => RendererKind::CodesOnly,
        };
        TinyLdmConfig { image_size, renderer, ..Stage1Config::tiny_play().model }
    }
}

/// Stage-1 training of a latent dynamics model in the demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LdmTrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Transitions (frame pairs) per batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Frames of each play episode the models train on (the demo's training episodes re-rendered
    /// as play, `vw_data::craftworld::generate_play_episode`; docs/results.md: codes trained on the
    /// scripted expert's videos collapse). 0 = the expert episodes themselves.
    #[serde(default)]
    pub play_frames: usize,
}

impl LdmTrainConfig {
    /// CPU demo size.
    pub fn cpu() -> Self {
        Self { steps: 1200, batch: 32, lr: 2e-3, warmup: 50, play_frames: 48 }
    }
    /// GPU size.
    pub fn gpu() -> Self {
        Self { steps: 6000, batch: 128, lr: 1e-3, warmup: 200, play_frames: 48 }
    }
    /// Integration-test size.
    pub fn test() -> Self {
        Self { steps: 3, batch: 4, lr: 1e-3, warmup: 1, play_frames: 6 }
    }
}

/// A trained model behind the trait the policy and the evaluation use.
pub type BoxedLdm = Box<dyn LatentDynamics>;

/// The stage-1 config of `kind` for the demo's CraftWorld training episodes `first_seed + i`.
pub fn stage1_config(
    kind: LdmKind,
    tc: &LdmTrainConfig,
    world: &CraftConfig,
    episodes: usize,
    first_seed: u64,
    seed: u64,
) -> Stage1Config {
    let mut s = Stage1Config::tiny_play();
    s.model = kind.model(world.image_size);
    s.data = CraftData { world: world.clone(), episodes, first_seed, play_frames: tc.play_frames };
    s.train.total_steps = tc.steps;
    s.train.warmup_steps = tc.warmup.min(tc.steps);
    s.train.batch_size = tc.batch;
    s.train.optim.lr = tc.lr;
    s.train.seed = seed;
    s.train.checkpoint_every = tc.steps.max(1);
    // The early-collapse check runs before the first checkpoint; a run too short for it has none.
    s.restart_on_collapse = s.restart_on_collapse.filter(|r| r.step < s.train.checkpoint_every);
    // The recipe's logging interval (see `Stage1Config::tiny_play`), shortened only for runs
    // shorter than it.
    s.train.log_every = s.train.log_every.min(tc.steps).max(1);
    s.init_seed = seed;
    s
}

/// Trains with vw-dldm's stage 1 into the run folder `run_dir`.
pub fn train_ldm(cfg: &Stage1Config, run_dir: &Path, device: &Device, progress: bool) -> Result<BoxedLdm> {
    let _ = std::fs::remove_dir_all(run_dir);
    Ok(Box::new(train_stage1(cfg, run_dir, false, device, progress).map_err(dldm_err)?))
}

/// Loads a stage-1 run folder.
pub fn load_ldm(dir: &Path, device: &Device) -> Result<BoxedLdm> {
    Ok(Box::new(load_stage1(dir, device).map_err(dldm_err)?.1))
}

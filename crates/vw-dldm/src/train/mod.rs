//! Training machinery shared by every model of the workspace (the dLDM here, the AR policy in
//! `vw-ar-policy`): AdamW with linear warm-up + cosine/constant schedule, global-norm gradient
//! clipping, optional EMA, NaN/Inf detection naming the step and tensor, atomic resumable
//! checkpoints, and a run folder with `metrics.jsonl`, `loss.png` and a progress bar.
//!
//! Nothing here knows about the dLDM: a model only has to keep its weights in `Var`s (a
//! `candle_nn::VarMap`) and build a scalar loss.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use candle_nn::{Module, VarBuilder, VarMap};
//! use vw_dldm::train::{fit, RunDir, TrainConfig, Trainer};
//!
//! # fn main() -> vw_dldm::Result<()> {
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let lin = candle_nn::linear(4, 1, vb.pp("lin"))?;
//! let cfg = TrainConfig { total_steps: 100, warmup_steps: 10, ..Default::default() };
//! let mut trainer = Trainer::from_varmap(&varmap, cfg.clone())?;
//! let run_dir = std::path::Path::new("runs/toy");
//! let resumed = trainer.resume(run_dir)?; // None on a fresh folder
//! let mut run = RunDir::open(run_dir, resumed.map(|_| trainer.step), cfg.total_steps, true)?;
//! let config = serde_json::to_value(&cfg).map_err(|e| vw_dldm::Error::Invalid(e.to_string()))?;
//! fit(&mut trainer, &mut run, &config, None, |ctx| {
//!     // Draw all randomness from ctx.rng so that --resume replays it exactly.
//!     let x = vw_dldm::train::randn_from(ctx.rng, (8, 4), &Device::Cpu)?;
//!     Ok(lin.forward(&x)?.sqr()?.mean_all()?)
//! })?;
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod clip;
pub mod codes;
pub mod craft;
pub mod ema;
pub mod grad;
pub mod init;
pub mod optim;
pub mod rollout;
pub mod run;
pub mod stage1;
pub mod stage2;
pub mod trainer;

#[cfg(test)]
mod tests;

pub use checkpoint::{committed_tensors_path, RngState, TrainState};
pub use init::seeded_var_builder;
pub use optim::{AdamW, AdamWConfig, Decay, LrSchedule};
pub use run::{MetricsRecord, RunDir};
pub use trainer::{fit, named_vars, StepCtx, StepStats, StopSignal, TrainConfig, Trainer};

use candle_core::{Device, Tensor};
use rand::Rng;

/// A standard-normal tensor drawn from `rng` (candle's own `randn` uses a global generator, which a
/// resumed run could not replay).
pub fn randn_from(rng: &mut impl Rng, shape: impl Into<candle_core::Shape>, device: &Device) -> crate::Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        // Box-Muller: two normals per two uniforms.
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f32::consts::PI * u2;
        v.push(r * th.cos());
        if v.len() < n {
            v.push(r * th.sin());
        }
    }
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// A tensor of uniform values in `[lo, hi)` drawn from `rng`.
pub fn rand_from(
    rng: &mut impl Rng,
    lo: f32,
    hi: f32,
    shape: impl Into<candle_core::Shape>,
    device: &Device,
) -> crate::Result<Tensor> {
    let shape = shape.into();
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| lo + (hi - lo) * rng.random::<f32>()).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Loads any model trained by `vw train-dldm` (stage 1, stage 2 or the vw1 baseline) from its run
/// folder, with the CraftWorld data section it was trained on.
pub fn load_latent_dynamics(
    run_dir: &std::path::Path,
    device: &Device,
) -> crate::Result<(Box<dyn crate::LatentDynamics>, craft::CraftData)> {
    let state = checkpoint::read_state(run_dir)?.ok_or_else(|| crate::Error::Checkpoint {
        path: run_dir.join(checkpoint::STATE_FILE),
        reason: "no checkpoint in this run folder (run `vw train-dldm` first)".into(),
    })?;
    if state.config.get("vdm_train").is_some() {
        let (cfg, m) = stage2::load_stage2(run_dir, device)?;
        Ok((Box::new(m), cfg.data))
    } else {
        let (cfg, m) = stage1::load_stage1(run_dir, device)?;
        Ok((Box::new(m), cfg.data))
    }
}

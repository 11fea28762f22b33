//! Stage 1b: the renderer trained on its own multi-step rollouts.
//!
//! Stage 1 teaches the frame-conditioned renderer one transition at a time, always from the true
//! frame x_t. A rollout feeds the renderer its own output, whose small errors it has never seen, and
//! they compound: the demo's expert codes rendered from the first frame complete no recipe step
//! (docs/results.md). Here the encoder is frozen (the codes stay those of stage 1, so the AR policy
//! and the probe are unchanged), and the renderer alone learns from chains of `horizon` transitions:
//! the first from the true frame, each next one from the renderer's previous output, under the codes
//! the frozen encoder reads from the true frames; the loss is stage 1's reconstruction loss
//! ([`crate::baseline::TinyLdm::render_error`]) averaged over the chain, with gradients through
//! the whole chain.
//!
//! The run folder is a normal training run (atomic checkpoints, `--resume`, `metrics.jsonl`) whose
//! checkpoint holds the whole model, so [`super::stage1::load_stage1`] loads it like a stage-1 run.

use super::craft::Transitions;
use super::stage1::Stage1Config;
use super::{fit, RunDir, TrainConfig, Trainer};
use crate::baseline::TinyLdm;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Prefix of the renderer's variables in a [`TinyLdm`] (see [`TinyLdm::new`]).
pub const RENDERER_PREFIX: &str = "renderer.";

/// How the renderer is tuned on rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutTune {
    /// Transitions per chain (>= 1; 1 is stage 1's single-step loss on the frozen codes).
    pub horizon: usize,
    /// Optimizer settings; `batch_size` counts chains, so a step renders `batch_size * horizon` frames.
    pub train: TrainConfig,
    /// Train a fresh renderer of another kind (initialised from `train.seed`) on the frozen codes
    /// instead of tuning the stage-1 one. Stage 1 itself cannot use these: with them the codes
    /// collapse (docs/results.md); with the codes frozen they cannot. `None` tunes the stage-1
    /// renderer.
    #[serde(default)]
    pub fresh_renderer: Option<FreshRenderer>,
    /// Train on the source run's episodes rendered with this many play frames instead of the
    /// source's own setting (`CraftData::play_frames`; 0 = the scripted expert's episodes, the kind
    /// of video the demo renders). `None` keeps the source's.
    #[serde(default)]
    pub play_frames: Option<usize>,
    /// The reconstruction loss of the chains instead of the source model's (`TinyLdmConfig::loss`).
    #[serde(default)]
    pub loss: Option<crate::baseline::ReconLoss>,
    /// The weight of the moving pixels instead of the source model's (`TinyLdmConfig::motion_weight`).
    #[serde(default)]
    pub motion_weight: Option<f64>,
    /// Sprite renderers only: in training, the moving layer is cut out of x_t by a teacher's mask
    /// instead of the renderer's own opacity — the pixels of the true x_t that are foreground
    /// (differ from their episode's median frame) and change in the true next frame — and the
    /// renderer's opacity learns that mask by a binary cross-entropy of this weight. At inference
    /// the renderer's own opacity cuts. Without it the sprite layer is stuck: its translation only
    /// pays once the opacity marks what moves, and the opacity only gets a gradient once the layer
    /// is translated (docs/results.md). `None` = off.
    #[serde(default)]
    pub alpha_teacher: Option<f64>,
}

/// A renderer trained from scratch on frozen codes ([`RolloutTune::fresh_renderer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FreshRenderer {
    /// The motion U-Net compositing over x_t (`TinyLdmConfig::composite`).
    Composite,
    /// The sprite layer (`LdmArch::Sprite`: what moves is cut out of x_t and translated by the codes).
    Sprite,
    /// The sprite layer over a composited background, cut out of it: where the layer was, the
    /// renderer paints what was behind it.
    SpriteComposite,
}

impl FreshRenderer {
    /// `model` with this renderer (the encoder, and so the codes, unchanged).
    pub fn apply(self, model: &mut crate::baseline::TinyLdmConfig) {
        use crate::baseline::LdmArch;
        match self {
            Self::Composite => model.composite = true,
            Self::Sprite => model.arch = LdmArch::Sprite,
            Self::SpriteComposite => {
                model.arch = LdmArch::Sprite;
                model.composite = true;
            }
        }
    }
}

impl RolloutTune {
    /// The CPU size: 200 steps of 4 chains of 8 transitions (one CraftWorld recipe step) at lr 5e-4.
    pub fn tiny() -> Self {
        let mut train = Stage1Config::tiny_play().train;
        train.total_steps = 200;
        train.warmup_steps = 20;
        train.batch_size = 4;
        train.log_every = 10;
        train.checkpoint_every = 100;
        train.optim.lr = 5e-4;
        Self {
            horizon: 8,
            train,
            fresh_renderer: None,
            play_frames: None,
            loss: None,
            motion_weight: None,
            alpha_teacher: None,
        }
    }
}

/// The config recorded in a stage-1b run folder: the stage-1 run it started from and the tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRunConfig {
    /// The stage-1 config of the source run with the model and data this run trains: the
    /// source's, changed by the overrides of the tuning (`fresh_renderer`, `loss`,
    /// `motion_weight`, `play_frames`).
    pub stage1: Stage1Config,
    /// The tuning.
    pub rollout: RolloutTune,
}

/// Whether a run folder's recorded config (`TrainState::config`) is a stage-1b one. Checked by key:
/// every field of `Stage1Config` has a default, so a stage-1b config would also parse as one.
pub fn is_stage_1b(recorded: &serde_json::Value) -> bool {
    recorded.get("rollout").is_some()
}

/// The transitions that can start a chain of `horizon` transitions inside their episode.
fn chain_starts(data: &Transitions, horizon: usize) -> Vec<usize> {
    (0..data.len())
        .filter(|&i| {
            let fpe = data.frames_per_episode[data.episode[i] as usize];
            data.index_in_episode[i] as usize + horizon < fpe
        })
        .collect()
}

/// Frames `starts[i] .. starts[i] + horizon` of each chain start `i`: (horizon + 1) tensors of
/// (N, 3, H, W), frame k of every chain in entry k.
fn chain_frames(data: &Transitions, ids: &[usize], horizon: usize) -> Result<Vec<Tensor>> {
    let dev = data.frames.device();
    (0..=horizon)
        .map(|k| {
            let rows: Vec<u32> = ids.iter().map(|&i| data.starts[i] + k as u32).collect();
            Ok(data.frames.index_select(&Tensor::from_vec(rows, ids.len(), dev)?, 0)?)
        })
        .collect()
}

/// The rollout loss of chains whose true frames are `frames` (from `chain_frames`): codes from
/// the (frozen) encoder on the true pairs, renders chained from `frames[0]`, each next input the
/// previous render clamped to [-1, 1] as in [`crate::LatentDynamics::render`]. Returns the loss
/// averaged over the chain and the per-transition losses (detached scalar tensors, read only when
/// logged: on a GPU each read is a synchronisation).
pub fn rollout_loss(model: &TinyLdm, frames: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
    rollout_loss_with(model, frames, None)
}

/// [`rollout_loss`] with a teacher's opacity for the sprite renderer
/// ([`RolloutTune::alpha_teacher`]): `(masks, weight)`, one (N, 1, H, W) mask per transition.
pub fn rollout_loss_with(
    model: &TinyLdm,
    frames: &[Tensor],
    teacher: Option<(&[Tensor], f64)>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let horizon = frames
        .len()
        .checked_sub(1)
        .filter(|&h| h > 0)
        .ok_or_else(|| Error::Invalid(format!("a rollout chain needs at least 2 frames, got {}", frames.len())))?;
    let n = frames[0].dim(0)?;
    let (x_t, x_next) = (Tensor::cat(&frames[..horizon], 0)?, Tensor::cat(&frames[1..], 0)?);
    let (codes, _) = model.quantize_pairs(&x_t, &x_next)?;
    let codes = codes.detach();
    let mut cur = frames[0].clone();
    let mut total: Option<Tensor> = None;
    let mut per_step = Vec::with_capacity(horizon);
    for k in 0..horizon {
        let code = codes.narrow(0, k * n, n)?;
        let (pred, l) = match teacher {
            None => {
                let pred = model.render_pairs(&cur, &code)?;
                let l = model.render_error(&pred, &frames[k + 1], &frames[k])?;
                (pred, l)
            }
            Some((masks, weight)) => {
                let mask = masks.get(k).ok_or_else(|| Error::Invalid(format!("no teacher mask for transition {k}")))?;
                let (pred, logits) = model.render_pairs_with_alpha(&cur, &code, mask)?;
                // Binary cross-entropy from logits: softplus(l) - l * mask, softplus computed stably.
                let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                let bce = (softplus - (&logits * mask)?)?.mean_all()?;
                let l = (model.render_error(&pred, &frames[k + 1], &frames[k])? + (bce * weight)?)?;
                (pred, l)
            }
        };
        per_step.push(l.detach());
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
        cur = pred.clamp(-1f32, 1f32)?;
    }
    let total = total.ok_or_else(|| Error::Invalid("empty rollout".into()))?;
    Ok(((total / horizon as f64)?, per_step))
}

/// The teacher's opacity of every transition of chains `ids` (see [`RolloutTune::alpha_teacher`]):
/// foreground in the true frame k and changing between the true frames k and k + 1.
fn teacher_masks(data: &Transitions, backgrounds: &Tensor, ids: &[usize], frames: &[Tensor]) -> Result<Vec<Tensor>> {
    frames
        .windows(2)
        .map(|w| {
            let (fg, _) = data.foreground(backgrounds, ids, (&w[0], &w[1]), super::craft::FOREGROUND_THRESHOLD)?;
            Ok((fg * crate::baseline::moving_mask(&(&w[1] - &w[0])?.abs()?)?)?)
        })
        .collect()
}

/// Loads the stage-1 (or stage-1b) run `source` into a fresh `VarMap` on `device`, with the model
/// changes of `tune` (a fresh renderer, initialised from `train.seed`, replaces the source's).
fn load_into_varmap(source: &Path, tune: &RolloutTune, device: &Device) -> Result<(Stage1Config, VarMap, TinyLdm)> {
    let state = super::checkpoint::read_state(source)?.ok_or_else(|| Error::Checkpoint {
        path: source.join(super::checkpoint::STATE_FILE),
        reason: "no checkpoint in this run folder".into(),
    })?;
    let mut cfg = super::stage1::stage1_config_of(&state.config, source)?;
    let (fresh, seed) = (tune.fresh_renderer, tune.train.seed);
    if let Some(f) = fresh {
        f.apply(&mut cfg.model);
    }
    if let Some(l) = tune.loss {
        cfg.model.loss = l;
    }
    if let Some(w) = tune.motion_weight {
        cfg.model.motion_weight = w;
    }
    if let Some(p) = tune.play_frames {
        cfg.data.play_frames = p;
    }
    let varmap = VarMap::new();
    let model = TinyLdm::new(&cfg.model, super::seeded_var_builder(&varmap, seed, DType::F32, device))?;
    let tensors = super::checkpoint::load_tensors(source, &state, device)?;
    // A fresh renderer keeps its seeded initialisation; everything else comes from the source.
    let loaded: Vec<_> = super::named_vars(&varmap)
        .into_iter()
        .filter(|(name, _)| fresh.is_none() || !name.starts_with(RENDERER_PREFIX))
        .collect();
    super::checkpoint::assign_vars(&loaded, &tensors, &source.join(&state.tensors_file))?;
    Ok((cfg, varmap, model))
}

/// Tunes the renderer of the stage-1 run `source` on rollouts into the run folder `run_dir`
/// (resumable with `resume`), on the source run's training episodes. Returns the tuned model.
pub fn train_rollout(
    source: &Path,
    tune: &RolloutTune,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    progress: bool,
) -> Result<TinyLdm> {
    if tune.horizon == 0 {
        return Err(Error::Invalid("rollout tuning: horizon must be at least 1".into()));
    }
    let (stage1, varmap, model) = load_into_varmap(source, tune, device)?;
    let (params, frozen): (Vec<_>, Vec<_>) =
        super::named_vars(&varmap).into_iter().partition(|(n, _)| n.starts_with(RENDERER_PREFIX));
    let mut trainer = Trainer::new(params, frozen, tune.train.clone())?;
    let cfg = RolloutRunConfig { stage1, rollout: tune.clone() };
    let config = serde_json::to_value(&cfg).map_err(|e| Error::Invalid(e.to_string()))?;
    let resumed = if resume { trainer.resume(run_dir)? } else { None };
    if let Some(saved) = &resumed {
        // The model, its data and the chains must match; optimisation settings may change (e.g. more steps).
        let same = serde_json::from_value::<RolloutRunConfig>(saved.clone())
            .is_ok_and(|s| s.stage1 == cfg.stage1 && s.rollout.horizon == cfg.rollout.horizon);
        if !same {
            return Err(Error::Checkpoint {
                path: run_dir.join(super::checkpoint::STATE_FILE),
                reason: "was written from another source run or horizon; resume with the same ones or use a new --out"
                    .into(),
            });
        }
    }
    let data = Transitions::render(&cfg.stage1.data, vw_data::craftworld::Split::Train, device)?;
    let starts = chain_starts(&data, tune.horizon);
    if starts.is_empty() {
        return Err(Error::Invalid(format!("rollout tuning: no training episode has {} transitions", tune.horizon)));
    }
    let backgrounds = match tune.alpha_teacher {
        Some(w) if !(w.is_finite() && w >= 0.0) || cfg.stage1.model.arch != crate::baseline::LdmArch::Sprite => {
            return Err(Error::Invalid(format!(
                "rollout tuning: alpha_teacher {w} needs a finite weight >= 0 and a sprite renderer"
            )))
        }
        Some(_) => Some(data.backgrounds()?),
        None => None,
    };
    let mut run = RunDir::open(run_dir, resumed.map(|_| trainer.step), tune.train.total_steps, progress)?;
    let bs = tune.train.batch_size;
    fit(&mut trainer, &mut run, &config, None, |ctx| {
        let ids: Vec<usize> = (0..bs).map(|_| starts[ctx.rng.random_range(0..starts.len())]).collect();
        let ids = &ids[ctx.shard.range(bs)?];
        *ctx.data_pos += bs as u64;
        let frames = chain_frames(&data, ids, tune.horizon)?;
        let masks = match &backgrounds {
            Some(bg) => Some(teacher_masks(&data, bg, ids, &frames)?),
            None => None,
        };
        let teacher = masks.as_deref().zip(tune.alpha_teacher);
        let (loss, per_step) = rollout_loss_with(&model, &frames, teacher)?;
        // At the steps `fit` logs, the first and the last transition of the chains: how much the chain compounds.
        let logged =
            (ctx.step + 1).is_multiple_of(tune.train.log_every.max(1)) || ctx.step + 1 == tune.train.total_steps;
        if logged {
            let value = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
            ctx.extra.insert("first_step_loss".into(), value(&per_step[0])?.into());
            ctx.extra.insert("last_step_loss".into(), value(&per_step[per_step.len() - 1])?.into());
        }
        Ok(loss)
    })?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::LdmArch;
    use crate::train::stage1::load_stage1;
    use crate::train::tests::weights;
    use crate::LatentDynamics;

    /// A stage-1 run of the motion architecture on tiny CraftWorld episodes, in `stage1/` of a
    /// fresh temporary folder: (the folder, the run, its config).
    fn source() -> Result<(tempfile::TempDir, std::path::PathBuf, Stage1Config)> {
        crate::train::tests::tiny_stage1_source(|cfg| {
            cfg.model.arch = LdmArch::Motion;
            cfg.train.total_steps = 3;
        })
    }

    fn tune(steps: u64) -> RolloutTune {
        let mut t = RolloutTune::tiny();
        t.horizon = 3;
        t.train = crate::train::tests::tiny_train_config(steps);
        t
    }

    #[test]
    fn stage_1b_trains_the_renderer_alone_reloads_and_resumes_exactly() -> Result<()> {
        let (tmp, src, cfg) = source()?;
        let dev = Device::Cpu;
        let straight = tmp.path().join("straight");
        let tuned = train_rollout(&src, &tune(4), &straight, false, &dev, false)?;
        let (before, after) = (weights(&src)?, weights(&straight)?);
        let (mut renderer_moved, mut encoder_vars) = (false, 0);
        for (k, v) in &before {
            let w = after.get(k).ok_or_else(|| Error::Invalid(format!("{k} not saved")))?;
            if k.starts_with(RENDERER_PREFIX) {
                renderer_moved |= w != v;
            } else {
                encoder_vars += 1;
                assert_eq!(w, v, "{k}: the encoder must stay frozen");
            }
        }
        assert!(renderer_moved && encoder_vars > 0);
        // The run folder loads as a stage-1 run, with the source's config, into the same renders.
        let (loaded_cfg, loaded) = load_stage1(&straight, &dev)?;
        assert_eq!(loaded_cfg, cfg);
        let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, &dev)?;
        let clip = data.episode_clip(0)?;
        let codes = tuned.encode_codes(&clip)?;
        let context = clip.narrow(2, 0, 1)?;
        let (a, b) = (tuned.render(&context, &codes)?, loaded.render(&context, &codes)?);
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
        // 2 steps, then --resume with 4: the same weights as 4 straight (constant learning rate
        // after a 1-step warm-up, so the schedule does not depend on the total).
        let constant = |steps| {
            let mut t = tune(steps);
            t.train.decay = crate::train::Decay::Constant;
            t
        };
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        train_rollout(&src, &constant(4), &a, false, &dev, false)?;
        train_rollout(&src, &constant(2), &b, false, &dev, false)?;
        assert_ne!(weights(&a)?, weights(&b)?, "2 steps and 4 steps must differ for the check to mean anything");
        train_rollout(&src, &constant(4), &b, true, &dev, false)?;
        assert_eq!(weights(&a)?, weights(&b)?, "the resumed run differs from the straight one");
        // A fresh compositing renderer on the frozen codes: the encoder is the source's, the run
        // loads as a composite model, and its codes are the source's codes.
        let mut fresh = tune(2);
        fresh.fresh_renderer = Some(FreshRenderer::Composite);
        fresh.loss = Some(crate::baseline::ReconLoss::L1);
        fresh.motion_weight = Some(3.0);
        let f = tmp.path().join("fresh");
        let fresh_model = train_rollout(&src, &fresh, &f, false, &dev, false)?;
        let (fresh_cfg, fresh_loaded) = load_stage1(&f, &dev)?;
        // The run records the model it trained: the new renderer and the chains' loss.
        assert!(fresh_cfg.model.composite);
        assert_eq!((fresh_cfg.model.loss, fresh_cfg.model.motion_weight), (crate::baseline::ReconLoss::L1, 3.0));
        assert_ne!(
            cfg.model.loss,
            crate::baseline::ReconLoss::L1,
            "the source must differ for the check to mean anything"
        );
        assert_eq!(Stage1Config { model: cfg.model.clone(), ..fresh_cfg.clone() }, cfg);
        let (_, source_model) = load_stage1(&src, &dev)?;
        assert_eq!(
            source_model.encode_codes(&clip)?.to_vec3::<u32>()?,
            fresh_loaded.encode_codes(&clip)?.to_vec3::<u32>()?
        );
        let (x, y) = (fresh_model.render(&context, &codes)?, fresh_loaded.render(&context, &codes)?);
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, y.flatten_all()?.to_vec1::<f32>()?);
        // Another horizon does not resume.
        let mut other = constant(4);
        other.horizon = 2;
        let err = train_rollout(&src, &other, &b, true, &dev, false);
        assert!(matches!(err, Err(Error::Checkpoint { .. })), "{:?}", err.err());
        Ok(())
    }

    #[test]
    fn a_one_step_chain_is_the_stage_1_loss_and_longer_chains_feed_the_render_back() -> Result<()> {
        let (_tmp, src, cfg) = source()?;
        let dev = Device::Cpu;
        let (_, model) = load_stage1(&src, &dev)?;
        let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, &dev)?;
        let ids = chain_starts(&data, 3);
        assert!(ids
            .iter()
            .all(|&i| data.index_in_episode[i] as usize + 3 < data.frames_per_episode[data.episode[i] as usize]));
        let frames = chain_frames(&data, &ids[..2], 3)?;
        // Horizon 1: stage 1's reconstruction loss from the true frame with the exact codes.
        let (one, per) = rollout_loss(&model, &frames[..2])?;
        let (codes, _) = model.quantize_pairs(&frames[0], &frames[1])?;
        let want = model.render_error(&model.render_pairs(&frames[0], &codes)?, &frames[1], &frames[0])?;
        let (one, want) = (one.to_scalar::<f32>()?, want.to_scalar::<f32>()?);
        assert!((one - want).abs() <= 1e-6 * want.abs().max(1e-6), "{one} vs {want}");
        assert_eq!(per.len(), 1);
        // Horizon 3: the third transition is rendered from the second render, not the true frame.
        let (_, per) = rollout_loss(&model, &frames)?;
        let per2 = per[2].to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (c, _) = model.quantize_pairs(&Tensor::cat(&frames[..3], 0)?, &Tensor::cat(&frames[1..], 0)?)?;
        let mut cur = frames[0].clone();
        for k in 0..2 {
            cur = model.render_pairs(&cur, &c.narrow(0, 2 * k, 2)?)?.clamp(-1f32, 1f32)?;
        }
        let last = model.render_pairs(&cur, &c.narrow(0, 4, 2)?)?;
        let last = model.render_error(&last, &frames[3], &frames[2])?.to_scalar::<f32>()? as f64;
        assert!((per2 - last).abs() <= 1e-6 * last.max(1e-6), "{per2} vs {last}");
        let from_truth = model.render_pairs(&frames[2], &c.narrow(0, 4, 2)?)?;
        let from_truth = model.render_error(&from_truth, &frames[3], &frames[2])?.to_scalar::<f32>()? as f64;
        assert!((per2 - from_truth).abs() > 1e-9, "the chain must not restart from the true frame");
        assert!(rollout_loss(&model, &frames[..1]).is_err(), "one frame is no chain");
        Ok(())
    }

    #[test]
    fn the_teacher_mask_marks_moving_foreground_and_needs_a_sprite_renderer() -> Result<()> {
        let (tmp, src, cfg) = source()?;
        let dev = Device::Cpu;
        let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, &dev)?;
        let bg = data.backgrounds()?;
        let ids = chain_starts(&data, 3);
        let frames = chain_frames(&data, &ids, 3)?;
        let masks = teacher_masks(&data, &bg, &ids, &frames)?;
        assert_eq!(masks.len(), 3);
        let (mut on, mut total) = (0.0f32, 0usize);
        for (k, m) in masks.iter().enumerate() {
            let moving = (&frames[k + 1] - &frames[k])?.abs()?.max_keepdim(1)?.gt(crate::baseline::DIFF_THRESHOLD)?;
            let v = m.flatten_all()?.to_vec1::<f32>()?;
            let mv = moving.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
            assert!(v.iter().zip(&mv).all(|(&a, &b)| a <= b), "the mask marks only pixels that change");
            on += v.iter().sum::<f32>();
            total += v.len();
        }
        assert!(on > 0.0 && (on as usize) < total / 4, "{on} of {total}: the gripper moves, the scene does not");
        // A fresh sprite renderer cutting out nothing is the copy of x_t; its own opacity comes back.
        let mut sprite_cfg = cfg.model.clone();
        FreshRenderer::Sprite.apply(&mut sprite_cfg);
        let vm = VarMap::new();
        let m = TinyLdm::new(&sprite_cfg, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let (codes, _) = m.quantize_pairs(&frames[0], &frames[1])?;
        let (y, logits) = m.render_pairs_with_alpha(&frames[0], &codes, &masks[0].zeros_like()?)?;
        assert_eq!((y - &frames[0])?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert_eq!(logits.dims(), masks[0].dims());
        // Not a sprite renderer: refused, by the model and by stage 1b.
        let (_, residual) = load_stage1(&src, &dev)?;
        assert!(residual.render_pairs_with_alpha(&frames[0], &codes, &masks[0]).is_err());
        let mut t = tune(1);
        t.alpha_teacher = Some(1.0);
        assert!(train_rollout(&src, &t, &tmp.path().join("refused"), false, &dev, false).is_err());
        t.fresh_renderer = Some(FreshRenderer::Sprite);
        train_rollout(&src, &t, &tmp.path().join("sprite"), false, &dev, false)?;
        Ok(())
    }
}

//! Stage 1 (warm-up): train an LDM to reconstruct the next frame through its codes (L1 loss, FSQ
//! straight-through) on CraftWorld transitions. No perceptual loss: there is no pretrained
//! perceptual network available offline on CPU, so the L1 term is used alone.

use super::craft::{CraftData, Transitions};
use super::{fit, RunDir, TrainConfig, Trainer};
use crate::baseline::{AuxTargets, TinyLdm, TinyLdmConfig};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use vw_tensor_kernels::dist::{Collective, Solo};

/// Everything a stage-1 run needs; serialised into its checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stage1Config {
    /// The model.
    pub model: TinyLdmConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// The training episodes (CraftWorld train split).
    pub data: CraftData,
    /// Seed of the weight initialisation.
    pub init_seed: u64,
    /// Appearance augmentation of the training pairs (off by default).
    pub augment: super::craft::Augment,
    /// Restart from a fresh initialisation when the codebook has collapsed early (off by default).
    pub restart_on_collapse: Option<CollapseRestart>,
}

/// A label-free check for the early codebook collapse of docs/results.md: if the training batches
/// of steps `step - window + 1 ..= step` together used at most `max_codes` distinct codes, the run
/// is abandoned and started again with `init_seed` and `train.seed` one higher, up to
/// `max_restarts` times; the last allowed start trains to the end without the check (a model that
/// collapsed is still a result: the codes-only baseline is expected to). The abandoned attempts'
/// logs are kept as `metrics.collapsed-seed<S>.jsonl`, and the checkpoint records the seeds that
/// were used, so the run repeats exactly from its config. A run stopped inside the window (a
/// checkpoint there comes only from a [`super::StopSignal`]) and resumed counts the codes of the
/// steps after the resume alone, so the check can then see fewer codes than a run never stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollapseRestart {
    /// The step (1-based, as logged) at which the check runs; before the first checkpoint.
    pub step: u64,
    /// How many steps, ending at `step`, the distinct codes are counted over.
    pub window: u64,
    /// At most this many distinct codes in the window counts as collapsed.
    pub max_codes: usize,
    /// How many fresh starts to try; the last one is not checked.
    pub max_restarts: u32,
}

impl Default for CollapseRestart {
    fn default() -> Self {
        Self { step: 150, window: 50, max_codes: 2, max_restarts: 5 }
    }
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self::tiny()
    }
}

impl Stage1Config {
    /// The CPU config of the dLDM side of the probe.
    pub fn tiny() -> Self {
        let mut data = CraftData::default();
        data.world.image_size = 64;
        Self {
            model: TinyLdmConfig::tiny(),
            train: TrainConfig {
                optim: super::AdamWConfig { lr: 2e-3, weight_decay: 0.0, ..Default::default() },
                warmup_steps: 50,
                total_steps: 1500,
                decay: super::Decay::Cosine { min_ratio: 0.05 },
                grad_clip: Some(1.0),
                ema_decay: None,
                seed: 0,
                checkpoint_every: 500,
                log_every: 10,
                batch_size: 32,
            },
            data,
            init_seed: 0,
            augment: Default::default(),
            restart_on_collapse: None,
        }
    }

    /// The CPU recipe of docs/results.md (sixth and seventh passes): [`Self::tiny`] trained on 48
    /// CraftWorld play episodes of 48 frames for 1200 steps (9-10 minutes on 2 cores), with the
    /// motion architecture reading only where and which way each channel changes between the frames
    /// (the ternary difference, [`crate::baseline::DiffNorm::Ternary`]), gated by where things move,
    /// an MSE that weights the moving pixels 11x, quantisation noise, pairs shifted by up to 4 px
    /// with a grating of amplitude up to 0.05, a fresh start when the batches of steps 71-100
    /// used at most 6 distinct codes (a start stuck on a handful of codes rarely recovers), and
    /// the extent head at weight 0.1 (the codes must also say how much of the frame moves, which
    /// puts the grip into them; docs/results.md, eighth pass).
    pub fn tiny_play() -> Self {
        let mut cfg = Self::tiny();
        cfg.model.arch = crate::baseline::LdmArch::Motion;
        cfg.model.loss = crate::baseline::ReconLoss::Mse;
        cfg.model.quant_noise = true;
        cfg.model.diff_only = true;
        cfg.model.motion_gate_tau = 0.02;
        cfg.model.motion_weight = 10.0;
        cfg.model.diff_norm = crate::baseline::DiffNorm::Ternary;
        cfg.model.extent_weight = 0.1;
        cfg.data.play_frames = 48;
        cfg.augment.shift = 4;
        cfg.augment.grating = 0.05;
        cfg.train.total_steps = 1200;
        // Every logged step also renders the batch 3 more times (`loss_breakdown`), and the
        // collapse check at step 100 must fall on a logged step to log its count.
        cfg.train.log_every = 25;
        cfg.restart_on_collapse = Some(CollapseRestart { step: 100, window: 30, max_codes: 6, max_restarts: 5 });
        cfg
    }

    /// The same with the VideoWorld-1-style codes-only renderer.
    pub fn tiny_vw1() -> Self {
        Self { model: TinyLdmConfig::tiny_vw1(), ..Self::tiny() }
    }

    /// As a JSON value (for checkpoints).
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::Invalid(format!("serialising the run config: {e}")))
    }
}

/// Builds the model with seeded weights (see [`super::init`]): same seed, same model.
pub fn build_model(cfg: &TinyLdmConfig, init_seed: u64, device: &Device) -> Result<(VarMap, TinyLdm)> {
    let varmap = VarMap::new();
    let model = TinyLdm::new(cfg, super::seeded_var_builder(&varmap, init_seed, DType::F32, device))?;
    Ok((varmap, model))
}

/// Trains (or resumes) a stage-1 run in `run_dir`. Returns the trained model.
pub fn train_stage1(
    cfg: &Stage1Config,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    progress: bool,
) -> Result<TinyLdm> {
    train_stage1_in(cfg, run_dir, resume, device, progress, Arc::new(Solo))
}

/// [`train_stage1`] as one rank of a data-parallel group: every rank draws the same global batch of
/// `batch_size` transitions and computes its shard; gradients are averaged in `comm`, so the run
/// follows the single-process one (within float rounding). Rank 0 writes the run folder
/// (`codes_used` then counts rank 0's shard only).
pub fn train_stage1_in(
    cfg: &Stage1Config,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    progress: bool,
    comm: Arc<dyn Collective>,
) -> Result<TinyLdm> {
    if let Some(r) = cfg.restart_on_collapse {
        if r.window == 0 || r.window > r.step || r.step >= cfg.train.checkpoint_every {
            return Err(Error::Invalid(format!(
                "restart_on_collapse: need 0 < window <= step < checkpoint_every ({}), got {r:?}",
                cfg.train.checkpoint_every
            )));
        }
    }
    // Rendered once: a restart changes the seeds, not the data.
    let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, device)?;
    // The displacement head's label-free targets, read once from the frames.
    let motions = match cfg.model.displacement_weight > 0.0 {
        true => Some(data.teacher_motions(&data.backgrounds()?, &crate::clip::MotionTeacher::default())?),
        false => None,
    };
    let mut cfg = cfg.clone();
    let mut restarts = 0;
    loop {
        // The last allowed start runs to the end whatever its codes do, so the run always returns a
        // model (a codes-only baseline is expected to collapse) and says so in the log.
        let last = cfg.restart_on_collapse.is_some_and(|r| restarts == r.max_restarts);
        let attempt_cfg = match last {
            true => Stage1Config { restart_on_collapse: None, ..cfg.clone() },
            false => cfg.clone(),
        };
        if last && comm.is_main() {
            tracing::warn!(
                "stage 1: the last allowed start (init seed {}) trains to the end without the collapse check",
                cfg.init_seed
            );
        }
        match train_stage1_attempt(
            &attempt_cfg,
            &data,
            motions.as_deref(),
            run_dir,
            resume,
            device,
            progress,
            comm.clone(),
        ) {
            // Only a checked attempt returns this, and the last allowed one is not checked.
            Err(Error::Collapsed { step, from, codes }) => {
                if comm.is_main() {
                    let log = run_dir.join(super::run::METRICS_FILE);
                    let kept = run_dir.join(format!("metrics.collapsed-seed{}.jsonl", cfg.init_seed));
                    std::fs::rename(&log, &kept).map_err(|e| Error::io(&log, e))?;
                    tracing::warn!(
                        "stage 1: {codes} distinct code(s) in steps {from}..={step} with init seed {}: \
                         restarting with the next seed",
                        cfg.init_seed
                    );
                }
                restarts += 1;
                cfg.init_seed += 1;
                cfg.train.seed += 1;
            }
            other => return other,
        }
    }
}

/// One start of [`train_stage1_in`] on its already rendered training transitions.
#[allow(clippy::too_many_arguments)]
fn train_stage1_attempt(
    cfg: &Stage1Config,
    data: &Transitions,
    motions: Option<&[crate::clip::TransitionMotion]>,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    progress: bool,
    comm: Arc<dyn Collective>,
) -> Result<TinyLdm> {
    let (varmap, model) = build_model(&cfg.model, cfg.init_seed, device)?;
    let mut trainer = Trainer::from_varmap(&varmap, cfg.train.clone())?.with_collective(comm.clone())?;
    let resumed = if resume { trainer.resume(run_dir)? } else { None };
    if let Some(saved) = &resumed {
        // Model and data must match; optimisation settings may be changed on resume (e.g. more steps).
        // Compared as parsed configs, so a checkpoint written before a `#[serde(default)]` field
        // existed still resumes when the field keeps its default.
        let same = serde_json::from_value::<Stage1Config>(saved.clone())
            .is_ok_and(|s| s.model == cfg.model && s.data == cfg.data);
        if !same {
            return Err(Error::Checkpoint {
                path: run_dir.join(super::checkpoint::STATE_FILE),
                reason: "was written with a different config; resume with the same config or use a new --out".into(),
            });
        }
    }
    let mut run =
        RunDir::open_as(trainer.is_main(), run_dir, resumed.map(|_| trainer.step), cfg.train.total_steps, progress)?;
    let bs = cfg.train.batch_size;
    let vocab: usize = cfg.model.levels.iter().product();
    let mut seen = vec![0f32; vocab];
    let backgrounds = if cfg.augment.background_only { Some(data.backgrounds()?) } else { None };
    fit(&mut trainer, &mut run, &cfg.to_json()?, None, |ctx| {
        let ids = data.sample_ids(ctx.rng, bs);
        let rows = ctx.shard.range(bs)?;
        let (x_t, x_next) = data.pairs(&ids[rows.clone()])?;
        let fg = match &backgrounds {
            Some(b) => {
                Some(data.foreground(b, &ids[rows.clone()], (&x_t, &x_next), super::craft::FOREGROUND_THRESHOLD)?)
            }
            None => None,
        };
        let fg = fg.as_ref().map(|(a, b)| (a, b));
        // The extent head's target is the move in the frames before augmentation.
        let clean = (x_t.clone(), x_next.clone());
        let (x_t, x_next, warps) = cfg.augment.apply(&x_t, &x_next, fg, ctx.rng, bs, rows.clone())?;
        *ctx.data_pos += bs as u64;
        // The quantisation noise of `quant_noise` comes from the trainer's generator, which the
        // checkpoint carries: seeded runs repeat and resume exactly. Drawn for the whole batch, so
        // every data-parallel rank stays in step, then cut to this rank's rows.
        let noise = if cfg.model.quant_noise {
            let (q, d) = (cfg.model.act_embedding_num, cfg.model.levels.len());
            Some(super::rand_from(ctx.rng, -0.5, 0.5, (bs, q, d), device)?.narrow(0, rows.start, rows.len())?)
        } else {
            None
        };
        // The displacement as it shows in the augmented pair: zoomed and turned with the frames.
        let displacement = match motions {
            Some(m) => {
                let seen: Vec<crate::clip::TransitionMotion> = ids[rows.clone()]
                    .iter()
                    .zip(&warps)
                    .map(|(&i, w)| {
                        let (dx, dy) = w.displacement(m[i].dx, m[i].dy);
                        crate::clip::TransitionMotion { dx, dy, ..m[i] }
                    })
                    .collect();
                let all: Vec<usize> = (0..seen.len()).collect();
                Some(crate::clip::motion_targets(&seen, &all, crate::baseline::MOTION_SCALE, device)?)
            }
            None => None,
        };
        let aux = AuxTargets { extent_pair: Some((&clean.0, &clean.1)), displacement: displacement.as_ref() };
        let (loss, idx) = model.pair_loss_and_codes_with(&x_t, &x_next, noise.as_ref(), &aux)?;
        // Distinct codes in this batch: the early warning of a collapsing codebook (docs/results.md).
        let used: std::collections::HashSet<u32> = idx.flatten_all()?.to_vec1::<u32>()?.into_iter().collect();
        ctx.extra.insert("codes_used".into(), used.len().into());
        if let Some(r) = cfg.restart_on_collapse {
            let step = ctx.step + 1;
            if step + r.window > r.step && step <= r.step {
                for &c in &used {
                    seen[c as usize] = 1.0;
                }
            }
            if step == r.step {
                // Every rank counts its own shard; summed, all ranks decide alike.
                let all = comm.all_reduce_sum(&Tensor::from_vec(seen.clone(), vocab, device)?)?;
                let codes = all.to_vec1::<f32>()?.iter().filter(|&&v| v > 0.0).count();
                if codes <= r.max_codes {
                    return Err(Error::Collapsed { step, from: step + 1 - r.window, codes });
                }
                // A start that passed logs its count, to set `max_codes` from (docs/results.md).
                ctx.extra.insert("collapse_check_codes".into(), codes.into());
            }
        }
        // At log steps: does the renderer use the codes (L1 with own vs centre vs another
        // transition's codes), and how far is it from copying x_t? (docs/results.md, collapse.)
        if (ctx.step + 1).is_multiple_of(cfg.train.log_every.max(1)) {
            let b = model.loss_breakdown(&x_t, &x_next)?;
            if let serde_json::Value::Object(m) = serde_json::to_value(b).map_err(|e| Error::Invalid(e.to_string()))? {
                ctx.extra.extend(m);
            }
        }
        Ok(loss)
    })?;
    Ok(model)
}

/// The stage-1 config recorded in the run folder `run_dir`: a stage-1 run's own, or for a stage-1b
/// run ([`super::rollout::RolloutRunConfig`]) the source run's with the model and data that run
/// trained.
pub fn stage1_config_of(recorded: &serde_json::Value, run_dir: &Path) -> Result<Stage1Config> {
    let bad = |e: serde_json::Error| Error::Checkpoint {
        path: run_dir.join(super::checkpoint::STATE_FILE),
        reason: format!("config is not a stage-1 or stage-1b config: {e}"),
    };
    if super::rollout::is_stage_1b(recorded) {
        let r: super::rollout::RolloutRunConfig = serde_json::from_value(recorded.clone()).map_err(bad)?;
        return Ok(r.stage1);
    }
    serde_json::from_value(recorded.clone()).map_err(bad)
}

/// Loads a trained stage-1 model from a run folder (its committed checkpoint and recorded config).
pub fn load_stage1(run_dir: &Path, device: &Device) -> Result<(Stage1Config, TinyLdm)> {
    let (state, vb) = super::checkpoint::committed_checkpoint(run_dir, device)?;
    let cfg = stage1_config_of(&state.config, run_dir)?;
    let model = TinyLdm::new(&cfg.model, vb)?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_cfg(steps: u64, batch: usize) -> Stage1Config {
        let mut cfg = Stage1Config::tiny();
        cfg.model.image_size = 32;
        cfg.model.channels = [8, 16, 16];
        cfg.model.dim = 32;
        cfg.data.world = vw_data::craftworld::CraftConfig::tiny();
        cfg.data.episodes = 3;
        cfg.train.total_steps = steps;
        cfg.train.warmup_steps = 2;
        cfg.train.log_every = 1;
        cfg.train.batch_size = batch;
        cfg
    }

    /// The records rank 0 (or the only process) logged in `dir`.
    fn records(dir: &Path) -> Result<Vec<super::super::MetricsRecord>> {
        let text = std::fs::read_to_string(dir.join(super::super::run::METRICS_FILE)).map_err(|e| Error::io(dir, e))?;
        text.lines().map(|l| serde_json::from_str(l).map_err(|e| Error::Invalid(format!("{l}: {e}")))).collect()
    }

    /// Trains `cfg` in `dir` on `n` data-parallel ranks (threads standing in for GPUs).
    fn train_ranks(cfg: &Stage1Config, dir: &Path, n: usize) -> Result<Vec<TinyLdm>> {
        let ranks: Vec<_> = vw_tensor_kernels::dist::ThreadGroup::new(n)
            .into_iter()
            .map(|g| {
                let (cfg, dir) = (cfg.clone(), dir.to_path_buf());
                std::thread::spawn(move || train_stage1_in(&cfg, &dir, false, &Device::Cpu, false, Arc::new(g)))
            })
            .collect();
        ranks.into_iter().map(|r| r.join().map_err(|_| Error::Invalid("a rank panicked".into()))?).collect()
    }

    fn losses(dir: &Path) -> Result<Vec<f64>> {
        Ok(records(dir)?.iter().map(|r| r.loss).collect())
    }

    #[test]
    fn a_few_craftworld_steps_reduce_the_reconstruction_loss_and_reload() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let mut cfg = tiny_cfg(40, 8);
        cfg.train.warmup_steps = 5;
        let dev = Device::Cpu;
        let model = train_stage1(&cfg, dir.path(), false, &dev, false)?;
        let records = records(dir.path())?;
        assert_eq!(records.len(), 40);
        // Every record counts the distinct codes of its batch (8 transitions x 2 queries).
        for r in &records {
            let used = r.extra.get("codes_used").and_then(|v| v.as_u64());
            assert!(used.is_some_and(|u| (1..=16).contains(&u)), "{r:?}");
        }
        let losses: Vec<f64> = records.iter().map(|r| r.loss).collect();
        let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
        let tail: f64 = losses[35..].iter().sum::<f64>() / 5.0;
        assert!(tail < 0.7 * head, "L1 {head:.4} -> {tail:.4}");
        // The committed checkpoint reloads into the same codes.
        let (_, loaded) = load_stage1(dir.path(), &dev)?;
        let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, &dev)?;
        let clip = data.episode_clip(0)?;
        use crate::LatentDynamics;
        assert_eq!(model.encode_codes(&clip)?.to_vec3::<u32>()?, loaded.encode_codes(&clip)?.to_vec3::<u32>()?);
        Ok(())
    }

    /// Data parallelism changes nothing but the speed: 3 ranks (threads standing in for GPUs) on
    /// the same global batch follow the single-process run step for step.
    #[test]
    fn data_parallel_ranks_follow_the_single_process_run() -> Result<()> {
        use vw_tensor_kernels::dist::ThreadGroup;
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let cfg = tiny_cfg(6, 6);
        let dev = Device::Cpu;
        let solo = train_stage1(&cfg, &tmp.path().join("solo"), false, &dev, false)?;
        let dp_dir = tmp.path().join("dp");
        let models = train_ranks(&cfg, &dp_dir, 3)?;
        let (a, b) = (losses(&tmp.path().join("solo"))?, losses(&dp_dir)?);
        assert_eq!(a.len(), 6);
        assert_eq!(b.len(), 6, "rank 0 alone logs");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "loss {x} vs {y}: {a:?} vs {b:?}");
        }
        // Same weights on every rank, and the same as the single process's.
        let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, &dev)?;
        let clip = data.episode_clip(0)?;
        use crate::LatentDynamics;
        let want = solo.encode_codes(&clip)?.to_vec3::<u32>()?;
        for m in &models {
            assert_eq!(m.encode_codes(&clip)?.to_vec3::<u32>()?, want);
        }
        // A global batch that does not split over the ranks is refused up front.
        let g = ThreadGroup::new(4).into_iter().next().ok_or_else(|| Error::Invalid("no rank".into()))?;
        let err = train_stage1_in(&cfg, &tmp.path().join("bad"), false, &dev, false, Arc::new(g)).err();
        assert!(err.is_some_and(|e| e.to_string().contains("split evenly")));
        Ok(())
    }

    #[test]
    fn a_collapsed_start_is_restarted_with_the_next_seed_and_its_log_kept() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let dev = Device::Cpu;
        let mut cfg = tiny_cfg(4, 4);
        // Every start counts as collapsed (at most all 1000 codes): one restart, and that last
        // allowed start trains to the end without the check.
        cfg.restart_on_collapse = Some(CollapseRestart { step: 3, window: 2, max_codes: 1000, max_restarts: 1 });
        train_stage1(&cfg, tmp.path(), false, &dev, false)?;
        let first = std::fs::read_to_string(tmp.path().join("metrics.collapsed-seed0.jsonl"))
            .map_err(|e| Error::io("collapsed log", e))?;
        assert_eq!(first.lines().count(), 2, "the first attempt logged steps 1 and 2");
        assert!(!tmp.path().join("metrics.collapsed-seed1.jsonl").exists(), "the last attempt is not renamed");
        assert_eq!(losses(tmp.path())?.len(), 4, "the last attempt ran all 4 steps");
        // Its checkpoint records the seed it used, so the run repeats from its config.
        let (saved, _) = load_stage1(tmp.path(), &dev)?;
        assert_eq!((saved.init_seed, saved.train.seed), (cfg.init_seed + 1, cfg.train.seed + 1));
        // Never collapsed (at most 0 codes): trains to the end as without the check.
        cfg.restart_on_collapse = Some(CollapseRestart { step: 3, window: 2, max_codes: 0, max_restarts: 1 });
        let dir = tmp.path().join("ok");
        train_stage1(&cfg, &dir, false, &dev, false)?;
        assert_eq!(losses(&dir)?.len(), 4);
        // A check after the first checkpoint could not restart cleanly: refused.
        cfg.restart_on_collapse = Some(CollapseRestart { step: 600, window: 50, max_codes: 1, max_restarts: 1 });
        assert!(matches!(train_stage1(&cfg, &tmp.path().join("bad"), false, &dev, false), Err(Error::Invalid(_))));
        Ok(())
    }

    #[test]
    fn the_play_recipe_builds_and_its_collapse_check_is_valid() -> Result<()> {
        let cfg = Stage1Config::tiny_play();
        build_model(&cfg.model, 0, &Device::Cpu)?;
        let r = cfg.restart_on_collapse.expect("the play recipe restarts collapsed starts");
        assert!(r.window <= r.step && r.step < cfg.train.checkpoint_every);
        assert!(cfg.data.play_frames > 0 && cfg.model.diff_only && cfg.model.motion_gate_tau > 0.0);
        assert_eq!(cfg.model.extent_weight, 0.1);
        let back: Stage1Config = serde_json::from_value(cfg.to_json()?).map_err(|e| Error::Invalid(e.to_string()))?;
        assert_eq!(back, cfg);
        Ok(())
    }

    /// The play recipe's random parts (quantisation noise, shifted and zoomed pairs, background
    /// gratings) come from the trainer's generator: the same seed gives the same run, another seed
    /// another, and 2 data-parallel ranks follow the single process.
    #[test]
    fn quant_noise_and_shift_are_seeded_and_shard_like_one_process() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        // The play recipe's model and augmentation at the test's size, plus zoom and background-only
        // gratings.
        let mut cfg = tiny_cfg(4, 4);
        let play = Stage1Config::tiny_play();
        let (image_size, channels, dim) = (cfg.model.image_size, cfg.model.channels, cfg.model.dim);
        cfg.model = crate::baseline::TinyLdmConfig { image_size, channels, dim, ..play.model };
        cfg.augment =
            super::super::craft::Augment { shift: 2, zoom: 0.05, grating: 0.1, background_only: true, ..play.augment };
        let dev = Device::Cpu;
        train_stage1(&cfg, &tmp.path().join("a"), false, &dev, false)?;
        train_stage1(&cfg, &tmp.path().join("b"), false, &dev, false)?;
        let a = losses(&tmp.path().join("a"))?;
        assert_eq!(a, losses(&tmp.path().join("b"))?);
        let mut other = cfg.clone();
        other.train.seed += 1;
        train_stage1(&other, &tmp.path().join("c"), false, &dev, false)?;
        assert_ne!(a, losses(&tmp.path().join("c"))?);
        let dp = tmp.path().join("dp");
        train_ranks(&cfg, &dp, 2)?;
        for (x, y) in a.iter().zip(&losses(&dp)?) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "loss {x} vs {y}");
        }
        Ok(())
    }
}

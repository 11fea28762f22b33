//! Training of the policy and the action decoder on top of the workspace's shared machinery
//! (`vw_dldm::train`: AdamW + warm-up + clipping, NaN checks, atomic resumable checkpoints, run
//! folder with progress bar, `metrics.jsonl` and `loss.png`), and loading trained checkpoints.

use crate::action_decoder::ActionDecoder;
use crate::config::{ActionDecoderConfig, PolicyConfig};
use crate::dataset::{ActionDataset, CodeDataset};
use crate::policy::Policy;
use crate::transformer::Mode;
use crate::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use vw_dldm::train::craft::Augment;
use vw_dldm::train::{checkpoint, fit, RunDir, TrainConfig, Trainer};
use vw_tensor_kernels::dist::{Collective, Solo};

/// What a policy run records in its checkpoint: enough to rebuild the model for inference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRunConfig {
    /// The model.
    pub policy: PolicyConfig,
    /// The optimisation.
    pub train: TrainConfig,
    /// Appearance and camera augmentation of the observation ([`train_policy_augmented`]).
    #[serde(default)]
    pub augment: Augment,
}

/// What an action-decoder run records in its checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRunConfig {
    /// The model.
    pub action_decoder: ActionDecoderConfig,
    /// The optimisation.
    pub train: TrainConfig,
}

/// Options shared by both training entry points.
#[derive(Clone)]
pub struct TrainOptions {
    /// Where the model computes.
    pub device: Device,
    /// Dtype of weights and activations (f32 on CPU; bf16 on GPU).
    pub dtype: DType,
    /// Continue from the run folder's checkpoint instead of refusing a non-empty folder.
    pub resume: bool,
    /// Stop after this many steps in this call (the run stays resumable); `None`: run to the end.
    pub max_steps_now: Option<u64>,
    /// Show the progress bar.
    pub progress: bool,
    /// Data-parallel group: each rank computes its shard of every global batch and gradients are
    /// averaged, as PyTorch DDP does (each rank's mean loss weighs the same, so with sequences of
    /// different lengths the average is not exactly the global per-token mean). `Solo` by default.
    pub comm: Arc<dyn Collective>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            resume: false,
            max_steps_now: None,
            progress: true,
            comm: Arc::new(Solo),
        }
    }
}

impl std::fmt::Debug for TrainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("resume", &self.resume)
            .field("max_steps_now", &self.max_steps_now)
            .field("progress", &self.progress)
            .field("rank", &self.comm.rank())
            .field("world_size", &self.comm.world_size())
            .finish()
    }
}

/// Re-draws every variable of `varmap` from a generator seeded with `seed`, at the scales candle's
/// own initialisers use (its CPU generator cannot be seeded): RMSNorm gains stay 1, biases 0,
/// embeddings N(0, 1), `obs_pos` N(0, 0.02), other weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
/// Same seed, same model, so runs and tests are reproducible.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in vw_dldm::train::named_vars(varmap) {
        let (dims, n) = (var.dims().to_vec(), var.elem_count());
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            continue;
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else if name.contains("embed") || name == "obs_pos" {
            let std = if name == "obs_pos" { 0.02 } else { 1.0 };
            let t = vw_dldm::train::randn_from(&mut rng, n, &Device::Cpu)?;
            (t * std)?.to_vec1::<f32>()?
        } else {
            let fan_in = n / dims.first().copied().unwrap_or(1).max(1);
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let t = candle_core::Tensor::from_vec(values, dims, &Device::Cpu)?;
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Invalid(e.to_string()))
}

fn open_run(trainer: &mut Trainer, run_dir: &Path, opts: &TrainOptions, total: u64) -> Result<RunDir> {
    let has_ckpt = checkpoint::read_state(run_dir)?.is_some();
    if has_ckpt && !opts.resume {
        return Err(Error::Invalid(format!(
            "{} already holds a checkpoint; pass --resume to continue it or choose another folder",
            run_dir.display()
        )));
    }
    let resumed = if opts.resume { trainer.resume(run_dir)?.map(|_| trainer.step) } else { None };
    Ok(RunDir::open_as(trainer.is_main(), run_dir, resumed, total, opts.progress)?)
}

/// Trains the policy with teacher forcing on `data` into `run_dir` and returns the trained model.
/// Every batch is drawn from the trainer's RNG, so `--resume` replays the same batches.
pub fn train_policy(
    cfg: &PolicyConfig,
    train: &TrainConfig,
    data: &CodeDataset,
    run_dir: &Path,
    opts: &TrainOptions,
) -> Result<Policy> {
    train_policy_augmented(cfg, train, &Augment::default(), data, run_dir, opts)
}

/// [`train_policy`] with each observation augmented by `augment` (its texture and colour on the
/// whole frame, and a camera shift, zoom and turn; the codes stay the video's): the policy plans from
/// one frame, so a new look of the scene must not change its plan. The augmentation is recorded in
/// the checkpoint.
pub fn train_policy_augmented(
    cfg: &PolicyConfig,
    train: &TrainConfig,
    augment: &Augment,
    data: &CodeDataset,
    run_dir: &Path,
    opts: &TrainOptions,
) -> Result<Policy> {
    if augment.background_only {
        return Err(Error::Invalid(
            "policy augmentation: background_only needs foreground masks, which a first frame alone does not give"
                .into(),
        ));
    }
    if data.is_empty() {
        return Err(Error::Invalid("the code dataset is empty".into()));
    }
    if data.codes_per_step != cfg.codes_per_step() || data.code_vocab_size != cfg.code_vocab_size {
        return Err(Error::Invalid(format!(
            "dataset has {} codes per step from a vocabulary of {}; the policy config expects {} and {}",
            data.codes_per_step,
            data.code_vocab_size,
            cfg.codes_per_step(),
            cfg.code_vocab_size
        )));
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, opts.dtype, &opts.device);
    let policy = Policy::new(cfg, vb)?;
    seeded_init(&varmap, train.seed)?;
    let mut trainer = Trainer::from_varmap(&varmap, train.clone())?.with_collective(opts.comm.clone())?;
    let mut run = open_run(&mut trainer, run_dir, opts, train.total_steps)?;
    let record = to_json(&PolicyRunConfig { policy: cfg.clone(), train: train.clone(), augment: *augment })?;
    let bs = train.batch_size.max(1);
    fit(&mut trainer, &mut run, &record, opts.max_steps_now, |ctx| {
        let idx = data.sample_indices(ctx.rng, bs);
        let rows = ctx.shard.range(bs)?;
        let mut batch = data.batch(&idx[rows.clone()], &opts.device, opts.dtype).map_err(to_dldm)?;
        if !augment.is_off() {
            batch.obs = augment.apply_frames(&batch.obs, ctx.rng, bs, rows)?.0;
        }
        policy.loss(&batch, Mode::Train).map_err(to_dldm)
    })?;
    Ok(policy)
}

/// Trains the action decoder on `data` into `run_dir` and returns it.
pub fn train_action_decoder(
    cfg: &ActionDecoderConfig,
    train: &TrainConfig,
    data: &ActionDataset,
    run_dir: &Path,
    opts: &TrainOptions,
) -> Result<ActionDecoder> {
    if data.is_empty() {
        return Err(Error::Invalid("the action dataset is empty".into()));
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, opts.dtype, &opts.device);
    let model = ActionDecoder::new(cfg, vb)?;
    seeded_init(&varmap, train.seed)?;
    let bs = train.batch_size.max(1).min(data.len());
    // The batch actually drawn is what must split over the ranks.
    let train = TrainConfig { batch_size: bs, ..train.clone() };
    let mut trainer = Trainer::from_varmap(&varmap, train.clone())?.with_collective(opts.comm.clone())?;
    let mut run = open_run(&mut trainer, run_dir, opts, train.total_steps)?;
    let record = to_json(&ActionRunConfig { action_decoder: cfg.clone(), train: train.clone() })?;
    let mut order = replayed_order(data.len(), &train, &trainer)?;
    fit(&mut trainer, &mut run, &record, opts.max_steps_now, |ctx| {
        order.shuffle(ctx.rng);
        let (o, c, a) = data.batch(&order[ctx.shard.range(bs)?], &opts.device, opts.dtype).map_err(to_dldm)?;
        model.loss(&o, &c, &a).map_err(to_dldm)
    })?;
    Ok(model)
}

/// The action decoder's batch order at the trainer's step: each step shuffles the order left by
/// the one before, so a resumed run replays the shuffles of the steps already taken from the
/// training seed (nothing else draws from the trainer's generator here), and must arrive at the
/// generator state its checkpoint restored.
fn replayed_order(n: usize, train: &TrainConfig, trainer: &Trainer) -> Result<Vec<usize>> {
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    if trainer.step == 0 {
        return Ok(order);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(train.seed);
    for _ in 0..trainer.step {
        order.shuffle(&mut rng);
    }
    if checkpoint::RngState::capture(&rng) != checkpoint::RngState::capture(&trainer.rng) {
        return Err(Error::Invalid(format!(
            "cannot resume the action decoder at step {}: replaying its batch order does not reach the \
             checkpoint's generator state (was the run trained with another seed or dataset?)",
            trainer.step
        )));
    }
    Ok(order)
}

/// Errors inside the shared training loop travel as its own error type.
fn to_dldm(e: Error) -> vw_dldm::Error {
    match e {
        Error::Dldm(d) => d,
        other => vw_dldm::Error::Invalid(other.to_string()),
    }
}

fn load_run(run_dir: &Path, device: &Device, dtype: DType) -> Result<(serde_json::Value, VarBuilder<'static>)> {
    let state = checkpoint::read_state(run_dir)?.ok_or_else(|| Error::Checkpoint {
        path: run_dir.to_path_buf(),
        reason: "no checkpoint.json in this folder (train first)".into(),
    })?;
    let tensors = checkpoint::load_tensors(run_dir, &state, device)?;
    Ok((state.config, VarBuilder::from_tensors(tensors, dtype, device)))
}

/// Loads a trained policy from its run folder.
pub fn load_policy(run_dir: &Path, device: &Device, dtype: DType) -> Result<Policy> {
    let (config, vb) = load_run(run_dir, device, dtype)?;
    let rc: PolicyRunConfig = serde_json::from_value(config).map_err(|e| Error::Checkpoint {
        path: run_dir.to_path_buf(),
        reason: format!("checkpoint.json does not describe a policy run: {e}"),
    })?;
    Policy::new(&rc.policy, vb).map_err(|e| Error::Checkpoint { path: run_dir.to_path_buf(), reason: e.to_string() })
}

/// Loads a trained action decoder from its run folder.
pub fn load_action_decoder(run_dir: &Path, device: &Device, dtype: DType) -> Result<ActionDecoder> {
    let (config, vb) = load_run(run_dir, device, dtype)?;
    let rc: ActionRunConfig = serde_json::from_value(config).map_err(|e| Error::Checkpoint {
        path: run_dir.to_path_buf(),
        reason: format!("checkpoint.json does not describe an action-decoder run: {e}"),
    })?;
    ActionDecoder::new(&rc.action_decoder, vb)
        .map_err(|e| Error::Checkpoint { path: run_dir.to_path_buf(), reason: e.to_string() })
}

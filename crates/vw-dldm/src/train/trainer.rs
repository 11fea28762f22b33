//! The [`Trainer`]: optimizer + schedule + clipping + EMA + NaN checks + checkpoints around any
//! model whose parameters live in `candle_core::Var`s, and [`fit`], the loop that drives it.

use super::checkpoint::{self, RngState, TrainState, EMA_PREFIX, OPTIM_PREFIX};
use super::ema::Ema;
use super::grad;
use super::optim::{AdamW, AdamWConfig, Decay, LrSchedule};
use super::run::{MetricsRecord, RunDir};
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use vw_tensor_kernels::dist::{Collective, Shard, Solo};

/// Asks [`fit`] loops to stop cleanly: each loop checks it before every step and, once it is
/// raised, writes the checkpoint of the step reached and returns [`Error::Interrupted`], so the
/// run resumes from there. Clones share one flag. Trainers watch [`StopSignal::process`] (what a
/// Ctrl-C / SIGTERM handler raises) unless [`Trainer::with_stop`] gives them another.
#[derive(Clone, Debug)]
pub struct StopSignal(Arc<AtomicU64>);

/// The count meaning "not raised".
const NOT_RAISED: u64 = u64::MAX;

impl Default for StopSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl StopSignal {
    /// A signal not raised.
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(NOT_RAISED)))
    }

    /// The process-wide signal every trainer watches by default.
    pub fn process() -> &'static StopSignal {
        static SIGNAL: OnceLock<StopSignal> = OnceLock::new();
        SIGNAL.get_or_init(StopSignal::new)
    }

    /// Stops every loop watching it before its next step.
    pub fn raise(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    /// Lets `steps` more steps run, counted over every loop watching it, then stops them all (an
    /// interruption at a chosen point, for tests and partial runs).
    pub fn raise_after(&self, steps: u64) {
        self.0.store(steps, Ordering::SeqCst);
    }

    /// Lowers it again (a later run goes on).
    pub fn clear(&self) {
        self.0.store(NOT_RAISED, Ordering::SeqCst);
    }

    /// Whether it is raised (no more steps are let through).
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }

    /// Called once before each step: `true` if the step must not be taken; otherwise counts it.
    fn stops_next_step(&self) -> bool {
        let counted = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
            0 | NOT_RAISED => None,
            n => Some(n - 1),
        });
        counted.is_err_and(|left| left == 0)
    }
}

/// Training hyperparameters shared by every model trained with [`Trainer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// AdamW hyperparameters (`optim.lr` is the peak of the schedule).
    pub optim: AdamWConfig,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// Decay after the warm-up.
    pub decay: Decay,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay.
    pub ema_decay: Option<f64>,
    /// Seed of the training RNG (data order, noise, timesteps).
    pub seed: u64,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// Append to `metrics.jsonl` every this many steps.
    pub log_every: u64,
    /// Batch size (used by the caller's data code; kept here so a run records it).
    pub batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optim: AdamWConfig::default(),
            warmup_steps: 100,
            total_steps: 1000,
            decay: Decay::Cosine { min_ratio: 0.1 },
            grad_clip: Some(1.0),
            ema_decay: None,
            seed: 0,
            checkpoint_every: 500,
            log_every: 1,
            batch_size: 8,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule this config describes.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.optim.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
            decay: self.decay,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The loss value.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Drives the optimisation of named trainable variables; frozen variables ride along in checkpoints.
pub struct Trainer {
    cfg: TrainConfig,
    params: Vec<(String, Var)>,
    frozen: Vec<(String, Var)>,
    opt: AdamW,
    ema: Option<Ema>,
    /// Optimizer steps completed.
    pub step: u64,
    /// The training RNG: draw all randomness (batches, noise) from it so resume is exact.
    pub rng: ChaCha8Rng,
    /// The caller's data cursor, saved and restored with the checkpoint.
    pub data_pos: u64,
    /// The data-parallel group ([`Solo`] unless [`Trainer::with_collective`] set one).
    comm: Arc<dyn Collective>,
    /// What asks [`fit`] to stop ([`StopSignal::process`] unless [`Trainer::with_stop`] set one).
    stop: StopSignal,
}

/// All variables of a `VarMap`, sorted by name (sorted so optimizer state lines up across runs).
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Trainer {
    /// A trainer over `params` (trained) and `frozen` (saved, never updated).
    pub fn new(params: Vec<(String, Var)>, frozen: Vec<(String, Var)>, cfg: TrainConfig) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::Invalid("Trainer: no trainable parameters".into()));
        }
        let opt = AdamW::new(&params, cfg.optim)?;
        let ema = cfg.ema_decay.map(|d| Ema::new(&params, d)).transpose()?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let stop = StopSignal::process().clone();
        Ok(Self { cfg, params, frozen, opt, ema, step: 0, rng, data_pos: 0, comm: Arc::new(Solo), stop })
    }

    /// Trains data-parallel in `comm`: rank 0's initial weights are broadcast to every rank, each
    /// step's gradients (and loss) are averaged over the ranks before clipping and the update, so
    /// every rank takes the same step; only rank 0 writes checkpoints and logs. Each rank computes
    /// its [`Trainer::shard`] of the global `batch_size` batch, which must split evenly.
    pub fn with_collective(mut self, comm: Arc<dyn Collective>) -> Result<Self> {
        Shard::of(comm.as_ref()).range(self.cfg.batch_size)?;
        if comm.world_size() > 1 {
            for (_, v) in &self.params {
                v.set(&comm.broadcast(v.as_tensor(), 0)?)?;
            }
            self.ema = self.cfg.ema_decay.map(|d| Ema::new(&self.params, d)).transpose()?;
        }
        self.comm = comm;
        Ok(self)
    }

    /// Watches `stop` instead of the process-wide [`StopSignal::process`].
    pub fn with_stop(mut self, stop: StopSignal) -> Self {
        self.stop = stop;
        self
    }

    /// Whether [`fit`] must stop before the next step. Ranks of a data-parallel group decide
    /// together (one raised rank stops all), so none waits in a collective the others left.
    fn stop_before_step(&self) -> Result<bool> {
        let mine = self.stop.stops_next_step();
        if self.comm.world_size() == 1 {
            return Ok(mine);
        }
        let device = self.params[0].1.device();
        let flag = Tensor::new(&[mine as u8 as f32], device)?;
        Ok(self.comm.all_reduce_sum(&flag)?.to_vec1::<f32>()?[0] > 0.0)
    }

    /// This rank's part of each global batch.
    pub fn shard(&self) -> Shard {
        Shard::of(self.comm.as_ref())
    }

    /// Whether this process writes checkpoints, logs and plots (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.comm.is_main()
    }

    /// A trainer over every variable of `varmap`.
    pub fn from_varmap(varmap: &VarMap, cfg: TrainConfig) -> Result<Self> {
        Self::new(named_vars(varmap), Vec::new(), cfg)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The trainable parameters.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The EMA, when enabled.
    pub fn ema(&self) -> Option<&Ema> {
        self.ema.as_ref()
    }

    /// Whether the run has reached `total_steps`.
    pub fn done(&self) -> bool {
        self.step >= self.cfg.total_steps
    }

    /// Backward pass of a scalar `loss`, NaN/Inf checks (loss, then each gradient), clipping, AdamW
    /// update, EMA update, then checks the updated parameters too. Errors with [`Error::NonFinite`]
    /// naming the step (1-based, the step being taken) and the tensor, leaving the parameters as they
    /// were before the step when the loss or a gradient is at fault.
    pub fn step(&mut self, loss: &Tensor) -> Result<StepStats> {
        let step_no = self.step + 1;
        let (loss_val, grads) = if self.comm.world_size() == 1 {
            let loss_val = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            grad::check_loss(loss_val, "the loss", step_no)?;
            (loss_val, grad::collect(&self.params, &loss.backward()?))
        } else {
            // Checked after the average: a NaN on one rank reaches every rank, so all stop together
            // instead of the others waiting in the next collective.
            let grads = grad::collect(&self.params, &loss.backward()?);
            let (loss_val, grads) = grad::average(self.comm.as_ref(), &self.params, loss, grads)?;
            grad::check_loss(loss_val, "the loss (averaged over ranks)", step_no)?;
            (loss_val, grads)
        };
        let grad_norm = grad::global_norm(&self.params, &grads, step_no)?;
        let lr = self.cfg.schedule().lr(self.step);
        self.opt.step(&grads, lr, grad::clip_scale(grad_norm, self.cfg.grad_clip))?;
        self.check_params(step_no)?;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.params)?;
        }
        self.step += 1;
        Ok(StepStats { loss: loss_val, grad_norm, lr })
    }

    fn check_params(&self, step: u64) -> Result<()> {
        let sums = self
            .params
            .iter()
            .map(|(_, v)| v.as_tensor().to_dtype(candle_core::DType::F32)?.abs()?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sums = Tensor::stack(&sums, 0)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<f32>()?;
        match sums.iter().zip(&self.params).find(|(s, _)| !s.is_finite()) {
            Some((_, (name, _))) => {
                Err(Error::NonFinite { step, tensor: format!("parameter '{name}' after the update") })
            }
            None => Ok(()),
        }
    }

    /// Writes an atomic checkpoint into `run_dir` (see [`checkpoint`]); `config` is the full run
    /// configuration to record. Keeps only the newest tensor file. Ranks other than 0 write nothing.
    pub fn save(&self, run_dir: &Path, config: &serde_json::Value) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let previous = checkpoint::read_state(run_dir).ok().flatten().map(|s| s.tensors_file);
        let file = format!("ckpt-{:08}.safetensors", self.step);
        let mut tensors: Vec<(String, Tensor)> =
            self.params.iter().chain(&self.frozen).map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        tensors.extend(self.opt.state_tensors(OPTIM_PREFIX));
        if let Some(ema) = &self.ema {
            tensors.extend(ema.tensors().iter().map(|(n, t)| (format!("{EMA_PREFIX}{n}"), t.clone())));
        }
        checkpoint::save_tensors_atomic(&run_dir.join(&file), &tensors)?;
        let state = TrainState {
            step: self.step,
            rng: RngState::capture(&self.rng),
            data_pos: self.data_pos,
            optim_t: self.opt.steps_taken(),
            tensors_file: file.clone(),
            config: config.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
        checkpoint::write_atomic(&run_dir.join(checkpoint::STATE_FILE), &json)?;
        if let Some(prev) = previous.filter(|p| *p != file) {
            let _ = std::fs::remove_file(run_dir.join(prev));
        }
        Ok(())
    }

    /// Restores parameters (trainable and frozen), moments, EMA, step, RNG and data position from the
    /// committed checkpoint of `run_dir`. Returns the recorded configuration, or `None` when the
    /// folder has no checkpoint (a fresh start).
    pub fn resume(&mut self, run_dir: &Path) -> Result<Option<serde_json::Value>> {
        let Some(state) = checkpoint::read_state(run_dir)? else { return Ok(None) };
        let path = run_dir.join(&state.tensors_file);
        let device = self.params[0].1.device().clone();
        let tensors = checkpoint::load_tensors(run_dir, &state, &device)?;
        checkpoint::assign_vars(self.params.iter().chain(&self.frozen), &tensors, &path)?;
        self.opt.load_state(&tensors, OPTIM_PREFIX, state.optim_t, &path)?;
        if let Some(ema) = &mut self.ema {
            ema.load(&tensors, EMA_PREFIX, &path)?;
        }
        self.step = state.step;
        self.rng = state.rng.restore()?;
        self.data_pos = state.data_pos;
        Ok(Some(state.config))
    }
}

/// What [`fit`] hands the loss closure each step.
pub struct StepCtx<'a> {
    /// The step about to be taken (0-based).
    pub step: u64,
    /// The training RNG (restored exactly on resume).
    pub rng: &'a mut ChaCha8Rng,
    /// The caller's data cursor (restored exactly on resume).
    pub data_pos: &'a mut u64,
    /// Extra scalars to log with this step.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// This rank's rows of the global batch: draw the whole batch from `rng` (the same on every
    /// rank), keep `shard.range(batch)?`.
    pub shard: Shard,
}

/// Runs `trainer` until `total_steps` (or `max_steps_now` more steps, for a partial run), logging
/// to `run`, checkpointing every `checkpoint_every` steps and at the end, and drawing the loss curve.
/// `loss_fn` builds the loss of one step from the context. When the trainer's [`StopSignal`] is
/// raised, it checkpoints the step reached and returns [`Error::Interrupted`].
pub fn fit<F>(
    trainer: &mut Trainer,
    run: &mut RunDir,
    config: &serde_json::Value,
    max_steps_now: Option<u64>,
    mut loss_fn: F,
) -> Result<()>
where
    F: FnMut(&mut StepCtx) -> Result<Tensor>,
{
    let stop_at = match max_steps_now {
        Some(n) => (trainer.step + n).min(trainer.cfg.total_steps),
        None => trainer.cfg.total_steps,
    };
    let mut stopped = false;
    while trainer.step < stop_at {
        if trainer.stop_before_step()? {
            stopped = true;
            break;
        }
        let shard = trainer.shard();
        let mut ctx = StepCtx {
            step: trainer.step,
            rng: &mut trainer.rng,
            data_pos: &mut trainer.data_pos,
            extra: serde_json::Map::new(),
            shard,
        };
        let loss = loss_fn(&mut ctx)?;
        let extra = std::mem::take(&mut ctx.extra);
        let stats = trainer.step(&loss)?;
        let s = trainer.step;
        if s.is_multiple_of(trainer.cfg.log_every.max(1)) || s == stop_at {
            run.log(MetricsRecord {
                step: s,
                loss: stats.loss,
                lr: stats.lr,
                grad_norm: stats.grad_norm,
                elapsed_s: 0.0,
                extra,
            })?;
        }
        if s.is_multiple_of(trainer.cfg.checkpoint_every.max(1)) && s != stop_at {
            trainer.save(run.dir(), config)?;
            run.plot()?;
        }
    }
    // The step reached is checkpointed whether the run ended or was stopped.
    trainer.save(run.dir(), config)?;
    run.plot()?;
    run.finish();
    match stopped {
        true => Err(Error::Interrupted { step: trainer.step, dir: run.dir().to_path_buf() }),
        false => Ok(()),
    }
}

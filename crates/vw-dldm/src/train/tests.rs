//! Tests of the training machinery on a toy regression model.

use super::*;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder, VarMap};

/// The weights (not the optimizer state) of the checkpoint in `run_dir`, by name.
pub(crate) fn weights(run_dir: &std::path::Path) -> crate::Result<std::collections::HashMap<String, Vec<f32>>> {
    let state = checkpoint::read_state(run_dir)?.ok_or_else(|| crate::Error::Invalid("no ckpt".into()))?;
    checkpoint::load_tensors(run_dir, &state, &Device::Cpu)?
        .into_iter()
        .filter(|(k, _)| !k.starts_with(checkpoint::OPTIM_PREFIX))
        .map(|(k, t)| Ok((k, t.flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

/// The optimisation of the tiny training tests: `total` steps, 1 warm-up step, batches of 2, a
/// checkpoint every 2 steps, lr 1e-2 (cosine: callers that resume set `Decay::Constant`).
pub(crate) fn tiny_train_config(total: u64) -> TrainConfig {
    TrainConfig {
        total_steps: total,
        warmup_steps: 1,
        batch_size: 2,
        log_every: 1,
        checkpoint_every: 2,
        optim: AdamWConfig { lr: 1e-2, ..Default::default() },
        ..Default::default()
    }
}

/// A tiny stage-1 run (the play recipe at 32 px on two 10-frame play episodes, 4 transitions a
/// batch, no collapse restarts), changed by `adjust`, trained in `stage1/` of a fresh temporary
/// folder: (the folder, the run, its config).
pub(crate) fn tiny_stage1_source(
    adjust: impl FnOnce(&mut stage1::Stage1Config),
) -> crate::Result<(tempfile::TempDir, std::path::PathBuf, stage1::Stage1Config)> {
    let tmp = tempfile::tempdir().map_err(|e| crate::Error::io("tempdir", e))?;
    let dir = tmp.path().join("stage1");
    let mut cfg = stage1::Stage1Config::tiny_play();
    cfg.model.image_size = 32;
    cfg.model.channels = [8, 16, 16];
    cfg.model.dim = 32;
    cfg.data.world = vw_data::craftworld::CraftConfig::tiny();
    cfg.data.episodes = 2;
    cfg.data.play_frames = 10;
    cfg.train.warmup_steps = 1;
    cfg.train.batch_size = 4;
    cfg.train.log_every = 1;
    cfg.restart_on_collapse = None;
    adjust(&mut cfg);
    stage1::train_stage1(&cfg, &dir, false, &Device::Cpu, false)?;
    Ok((tmp, dir, cfg))
}

/// A two-layer MLP fitting y = 0.5 x0 - x1 + sin(x2).
struct Toy {
    l1: candle_nn::Linear,
    l2: candle_nn::Linear,
}

impl Toy {
    fn new(vb: VarBuilder) -> crate::Result<Self> {
        Ok(Self { l1: candle_nn::linear(3, 16, vb.pp("l1"))?, l2: candle_nn::linear(16, 1, vb.pp("l2"))? })
    }
    fn loss(&self, ctx: &mut StepCtx) -> crate::Result<Tensor> {
        let x = randn_from(ctx.rng, (32, 3), &Device::Cpu)?;
        *ctx.data_pos += 32;
        let y = (((x.narrow(1, 0, 1)? * 0.5)? - x.narrow(1, 1, 1)?)? + x.narrow(1, 2, 1)?.sin()?)?;
        let pred = self.l2.forward(&self.l1.forward(&x)?.tanh()?)?;
        Ok((pred - y)?.sqr()?.mean_all()?)
    }
}

fn toy_cfg(total: u64) -> TrainConfig {
    TrainConfig {
        optim: AdamWConfig { lr: 1e-2, ..Default::default() },
        warmup_steps: 3,
        total_steps: total,
        decay: Decay::Cosine { min_ratio: 0.1 },
        grad_clip: Some(1.0),
        ema_decay: Some(0.9),
        seed: 11,
        checkpoint_every: 1000,
        log_every: 1,
        batch_size: 32,
    }
}

/// Builds a fresh toy model + trainer (the model's init is seeded through a fixed VarMap fill).
fn toy(total: u64) -> crate::Result<(VarMap, Toy, Trainer)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Toy::new(vb)?;
    // candle's init uses a global RNG: overwrite every weight from a seeded stream instead.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    for (_, v) in named_vars(&varmap) {
        v.set(&(randn_from(&mut rng, v.shape().clone(), &Device::Cpu)? * 0.3)?)?;
    }
    let trainer = Trainer::from_varmap(&varmap, toy_cfg(total))?;
    Ok((varmap, model, trainer))
}

fn params_of(varmap: &VarMap) -> crate::Result<Vec<(String, Vec<f32>)>> {
    named_vars(varmap).into_iter().map(|(n, v)| Ok((n, v.as_tensor().flatten_all()?.to_vec1::<f32>()?))).collect()
}

fn cfg_json(c: &TrainConfig) -> serde_json::Value {
    serde_json::to_value(c).expect("TrainConfig serialises")
}

#[test]
fn a_few_steps_reduce_the_loss() -> crate::Result<()> {
    let (_vm, model, mut trainer) = toy(60)?;
    let mut losses = Vec::new();
    while !trainer.done() {
        let mut ctx = StepCtx {
            step: trainer.step,
            rng: &mut trainer.rng,
            data_pos: &mut trainer.data_pos,
            extra: Default::default(),
            shard: Default::default(),
        };
        let loss = model.loss(&mut ctx)?;
        losses.push(trainer.step(&loss)?.loss);
    }
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "loss {first:.4} -> {last:.4}");
    Ok(())
}

/// The toy trained `n` steps straight into `dir`: what a stopped and resumed run must equal.
fn straight_toy_run(dir: &std::path::Path, n: u64) -> crate::Result<(VarMap, Trainer, RunDir)> {
    let (vm, model, mut tr) = toy(n)?;
    let mut run = RunDir::open(dir, None, n, false)?;
    fit(&mut tr, &mut run, &cfg_json(&toy_cfg(n)), None, |ctx| model.loss(ctx))?;
    Ok((vm, tr, run))
}

#[test]
fn resume_continues_exactly() -> crate::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io("tempdir", e))?;
    let n = 12;
    let (vm_a, tr_a, run_a) = straight_toy_run(&dir.path().join("a"), n)?;
    // Half, stop, then a fresh process-like trainer resumes from the folder.
    let b = dir.path().join("b");
    {
        let (_vm, model, mut tr) = toy(n)?;
        let mut run = RunDir::open(&b, None, n, false)?;
        fit(&mut tr, &mut run, &cfg_json(&toy_cfg(n)), Some(n / 2), |ctx| model.loss(ctx))?;
        assert_eq!(tr.step, n / 2);
    }
    let (vm_b, model_b, mut tr_b) = toy(n)?;
    // The fresh model starts from the same init as the straight run, so a no-op resume would pass
    // nothing; perturb it to prove the checkpoint really overwrites the weights.
    for (_, v) in named_vars(&vm_b) {
        v.set(&(v.as_tensor() + 1.0)?)?;
    }
    let cfg = tr_b.resume(&b)?.expect("checkpoint written by the first half");
    assert_eq!(cfg["total_steps"], cfg_json(&toy_cfg(n))["total_steps"]);
    assert_eq!(tr_b.step, n / 2);
    assert_eq!(tr_b.data_pos, 32 * n / 2);
    let mut run_b = RunDir::open(&b, Some(tr_b.step), n, false)?;
    fit(&mut tr_b, &mut run_b, &cfg_json(&toy_cfg(n)), None, |ctx| model_b.loss(ctx))?;
    assert_eq!(params_of(&vm_a)?, params_of(&vm_b)?, "resumed parameters differ from the straight run");
    // The EMA and the logged losses agree too.
    let ema_a = tr_a.ema().expect("ema on").tensors().to_vec();
    let ema_b = tr_b.ema().expect("ema on").tensors().to_vec();
    for ((na, a), (nb, b)) in ema_a.iter().zip(&ema_b) {
        assert_eq!(na, nb);
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    }
    assert_eq!(run_a.history(), run_b.history());
    assert!(b.join(run::LOSS_PNG).exists() && b.join(run::METRICS_FILE).exists());
    Ok(())
}

#[test]
fn a_raised_stop_signal_checkpoints_and_the_run_resumes_exactly() -> crate::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io("tempdir", e))?;
    let n = 12;
    let (vm_a, _, run_a) = straight_toy_run(&dir.path().join("a"), n)?;
    // Stopped after 5 steps (between the checkpoints every 2), then stopped again before any step
    // of the next start, then finished.
    let b = dir.path().join("b");
    let stop = StopSignal::new();
    for (allowed, reached) in [(5, 5), (0, 5)] {
        stop.raise_after(allowed);
        let (_vm, model, tr) = toy(n)?;
        let mut tr = tr.with_stop(stop.clone());
        let resumed = tr.resume(&b)?.map(|_| tr.step);
        let mut run = RunDir::open(&b, resumed, n, false)?;
        match fit(&mut tr, &mut run, &cfg_json(&toy_cfg(n)), None, |ctx| model.loss(ctx)) {
            Err(crate::Error::Interrupted { step, dir }) => assert_eq!((step, dir.as_path()), (reached, b.as_path())),
            other => panic!("expected an interruption at step {reached}, got {other:?}"),
        }
        assert!(stop.is_raised());
        assert_eq!(checkpoint::read_state(&b)?.map(|s| s.step), Some(reached), "the step reached is saved");
    }
    stop.clear();
    let (vm_b, model_b, tr_b) = toy(n)?;
    let mut tr_b = tr_b.with_stop(stop.clone());
    assert_eq!(tr_b.resume(&b)?.map(|_| tr_b.step), Some(5));
    let mut run_b = RunDir::open(&b, Some(5), n, false)?;
    fit(&mut tr_b, &mut run_b, &cfg_json(&toy_cfg(n)), None, |ctx| model_b.loss(ctx))?;
    assert_eq!(params_of(&vm_a)?, params_of(&vm_b)?, "stopped and resumed differs from the straight run");
    assert_eq!(run_a.history(), run_b.history());
    // The process-wide signal was never raised by any of this.
    assert!(!StopSignal::process().is_raised());
    Ok(())
}

#[test]
fn checkpoint_round_trip_gives_the_same_outputs() -> crate::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io("tempdir", e))?;
    let (_vm, model, mut tr) = toy(5)?;
    let mut run = RunDir::open(dir.path(), None, 5, false)?;
    fit(&mut tr, &mut run, &serde_json::json!({"model": "toy"}), None, |ctx| model.loss(ctx))?;
    let x = Tensor::new(&[[0.1f32, -0.4, 0.7], [1.0, 2.0, -3.0]], &Device::Cpu)?;
    let y = model.l2.forward(&model.l1.forward(&x)?.tanh()?)?.flatten_all()?.to_vec1::<f32>()?;
    // Inference path: a VarBuilder straight on the committed tensors (extra optimizer keys ignored).
    let path = committed_tensors_path(dir.path())?;
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)? };
    let loaded = Toy::new(vb)?;
    let y2 = loaded.l2.forward(&loaded.l1.forward(&x)?.tanh()?)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(y, y2);
    // No temporary files are left behind, and only one tensor file is kept.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .map_err(|e| crate::Error::io(dir.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".safetensors")).count(), 1, "{names:?}");
    Ok(())
}

#[test]
fn nan_loss_stops_with_step_and_tensor() -> crate::Result<()> {
    let (vm, model, mut tr) = toy(10)?;
    let before = params_of(&vm)?;
    for _ in 0..3 {
        let mut ctx = StepCtx {
            step: tr.step,
            rng: &mut tr.rng,
            data_pos: &mut tr.data_pos,
            extra: Default::default(),
            shard: Default::default(),
        };
        let loss = model.loss(&mut ctx)?;
        tr.step(&loss)?;
    }
    let after3 = params_of(&vm)?;
    assert_ne!(before, after3);
    // A NaN in the input poisons the loss of step 4.
    let x = Tensor::new(&[[f32::NAN, 0.0, 1.0]], &Device::Cpu)?;
    let loss = model.l2.forward(&model.l1.forward(&x)?)?.sqr()?.mean_all()?;
    let err = tr.step(&loss).unwrap_err();
    assert!(matches!(err, crate::Error::NonFinite { step: 4, .. }), "{err}");
    assert!(err.to_string().contains("loss"), "{err}");
    assert_eq!(params_of(&vm)?, after3, "a rejected step must not touch the weights");
    // A finite loss (sqrt(0^2) = 0) whose gradient is not: d sqrt(u)/du = inf at u = 0, times 2 * 0.
    let w = &named_vars(&vm)[0].1;
    let d = (w.as_tensor() - w.as_tensor().detach())?;
    let big = d.sqr()?.sqrt()?.sum_all()?;
    match tr.step(&big) {
        Err(crate::Error::NonFinite { step: 4, tensor }) => assert!(tensor.contains(&named_vars(&vm)[0].0), "{tensor}"),
        other => panic!("expected a non-finite gradient error, got {other:?}"),
    }
    Ok(())
}

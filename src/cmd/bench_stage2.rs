//! `vw bench-stage2`: time full stage-2 training steps of the dLDM control branch against the
//! frozen Cosmos-Predict2 2B DiT at video size (random weights); tools/bench_torch_stage2.py is the
//! PyTorch (diffusers) equivalent.
//!
//! One step is what the stage-2 trainer does with `recompute_dit`: the control branch (a trainable
//! copy of the DiT's first `--control-blocks` blocks, hint embedding + MLP, zero-initialised output
//! linears) makes residuals from the hint; the frozen DiT runs with them and its backward goes block
//! by block with recomputation (`vw_dldm::control::flow_matching_loss_recompute`); then
//! `Trainer::step` backpropagates through the branch, checks for NaN/Inf, clips and applies AdamW.
//! The dLDM side is a stand-in: random code vectors (4 queries x 4 FSQ dims per transition) through
//! the trainable code-to-hint projection, not the full dLDM encoder on pixels.

use super::bench_dit::sync;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Args;
use std::time::Instant;
use vw_diffusion::dit::{CosmosTransformer3DModel, DitInput};
use vw_diffusion::weights::build_random;
use vw_dldm::control::{codes_to_hint, flow_matching_loss_recompute, ControlBranch, ControlConfig};
use vw_dldm::train::{named_vars, AdamWConfig, TrainConfig, Trainer};

/// Arguments of `vw bench-stage2`.
#[derive(Debug, Args)]
pub struct BenchStage2Args {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub shape: super::bench_dit::DitShapeArgs,
    /// DiT blocks copied into the control branch (official `layer_mask`: the first 3).
    #[arg(long, default_value_t = 3)]
    pub control_blocks: usize,
    /// Hint channels (official `hint_channels=128`).
    #[arg(long, default_value_t = 128)]
    pub hint_channels: usize,
    /// Random weights (the only mode: no checkpoint download needed).
    #[arg(long, default_value_t = true)]
    pub random_weights: bool,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Allow TF32 for f32 matmuls (the f32 recomputation inside the attention backward).
    #[arg(long)]
    pub tf32: bool,
    /// Diagnostic: instead of training steps, report device memory around one flash-attention
    /// backward and one DiT block backward at this shape.
    #[arg(long)]
    pub probe: bool,
}

/// Samples the device's used memory (total - free, so it includes the CUDA context and whatever
/// the allocator holds) every 5 ms on a side thread, keeping the highest reading.
struct MemSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl MemSampler {
    #[cfg(feature = "cuda")]
    fn used_bytes(device: &Device) -> Option<Box<dyn Fn() -> Option<usize> + Send>> {
        let Device::Cuda(d) = device else { return None };
        let ctx = d.cuda_stream().context().clone();
        Some(Box::new(move || ctx.mem_get_info().ok().map(|(free, total)| total - free)))
    }

    #[cfg(not(feature = "cuda"))]
    fn used_bytes(_: &Device) -> Option<Box<dyn Fn() -> Option<usize> + Send>> {
        None
    }

    fn start(device: &Device) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let handle = Self::used_bytes(device).map(|used| {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(u) = used() {
                        peak.fetch_max(u, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        });
        Self { stop, peak, handle }
    }

    /// Highest reading so far, GiB (None without CUDA).
    fn peak_gib(&self) -> Option<f64> {
        self.handle.as_ref().map(|_| self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1u64 << 30) as f64)
    }
}

impl Drop for MemSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The device's used memory now, GiB (0 without CUDA).
fn used_gib(device: &Device) -> f64 {
    MemSampler::used_bytes(device).and_then(|used| used()).map_or(0.0, |b| b as f64 / (1u64 << 30) as f64)
}

fn probe(
    args: &BenchStage2Args,
    dit: &CosmosTransformer3DModel,
    mem: &MemSampler,
    device: &Device,
) -> anyhow::Result<()> {
    let dtype = args.device.dtype.dtype();
    let cfg = dit.config();
    let (t, h8, w8) = args.shape.latent_shape();
    let n = t * (h8 / 2) * (w8 / 2);
    let (h, hd) = (cfg.num_attention_heads, cfg.attention_head_dim);
    let mark = |what: &str| -> anyhow::Result<()> {
        sync(device)?;
        eprintln!("{what}: used {:.2} GiB, peak {:.2} GiB", used_gib(device), mem.peak_gib().unwrap_or(0.0));
        Ok(())
    };
    mark("built")?;
    for rows in [n / 4, n] {
        let v = |s| -> anyhow::Result<candle_core::Var> {
            Ok(candle_core::Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (1, h, rows, hd), device)?.to_dtype(dtype)?.affine(s, 0.0)?,
            )?)
        };
        let (q, k, vv) = (v(1.0)?, v(1.0)?, v(1.0)?);
        let o =
            vw_tensor_kernels::attention::flash_attn(q.as_tensor(), k.as_tensor(), vv.as_tensor(), 0.088, false, None)?;
        mark(&format!("flash fwd {rows}"))?;
        let g = o.randn_like(0.0, 1.0)?;
        let grads = (o * g)?.sum_all()?.backward()?;
        mark(&format!("flash bwd {rows}"))?;
        drop(grads);
        let x = candle_core::Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (1, rows, cfg.hidden_size()), device)?.to_dtype(dtype)?,
        )?;
        let lat = Tensor::zeros((1, cfg.in_channels - 1, 1, 2, 2), dtype, device)?;
        let text = Tensor::randn(0f32, 1.0, (1, args.shape.text_len, cfg.text_embed_dim), device)?.to_dtype(dtype)?;
        let ts = Tensor::new(&[0.5f32], device)?;
        let cond = Tensor::zeros((1, 1, 1, 2, 2), dtype, device)?;
        let inp = DitInput {
            latents: &lat,
            timestep: &ts,
            text: &text,
            text_mask: None,
            condition_mask: Some(&cond),
            padding_mask: None,
            fps: None,
        };
        let (_, mut st) = dit.prepare(&inp)?;
        st.grid = [1, 1, rows];
        st.rope =
            (Tensor::zeros((rows, hd / 2), DType::F32, device)?, Tensor::zeros((rows, hd / 2), DType::F32, device)?);
        let out = dit.blocks()[0].forward(x.as_tensor(), &st)?;
        mark(&format!("block fwd {rows}"))?;
        let g = out.randn_like(0.0, 1.0)?;
        let grads = (out * g)?.sum_all()?.backward()?;
        mark(&format!("block bwd {rows}"))?;
        drop(grads);
        mark("dropped")?;
    }
    Ok(())
}

/// Runs `vw bench-stage2`.
pub fn run(args: BenchStage2Args) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.device.dtype.dtype();
    if args.tf32 {
        #[cfg(feature = "cuda")]
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(true);
    }
    let mem = MemSampler::start(&device);
    let dcfg = args.shape.dit_config()?;
    // Frozen main DiT: plain tensors, so no gradient is ever computed for its weights.
    let dit = build_random(0, dtype, &device, |vb| CosmosTransformer3DModel::new(&dcfg, vb))?;
    if args.probe {
        return probe(&args, &dit, &mem, &device);
    }
    let ccfg = ControlConfig {
        num_control_blocks: args.control_blocks,
        hint_channels: args.hint_channels,
        ..ControlConfig::default()
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &device);
    let branch = ControlBranch::new(&ccfg, &dcfg, vb.pp("control"))?;
    let code_dim = 4 * 4; // act_embedding_num x FSQ levels, the official dLDM
    let hint_proj = candle_nn::linear(code_dim, ccfg.hint_channels, vb.pp("hint_proj"))?;
    let params = named_vars(&varmap);
    let trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let train_cfg = TrainConfig {
        optim: AdamWConfig { lr: 1e-5, ..Default::default() },
        warmup_steps: 0,
        total_steps: (args.warmup + args.iters) as u64,
        grad_clip: Some(1.0),
        batch_size: 1,
        ..Default::default()
    };
    let mut trainer = Trainer::new(params, Vec::new(), train_cfg)?;

    let (t, h, w) = args.shape.latent_shape();
    let c = dcfg.out_channels;
    let x0 = Tensor::randn(0f32, 1.0, (1, c, t, h, w), &device)?;
    let eps = Tensor::randn(0f32, 1.0, (1, c, t, h, w), &device)?;
    let sigma = Tensor::new(&[0.5f32], &device)?;
    let text = Tensor::randn(0f32, 1.0, (1, args.shape.text_len, dcfg.text_embed_dim), &device)?.to_dtype(dtype)?;
    let codes = Tensor::randn(0f32, 1.0, (1, t - 1, code_dim), &device)?.to_dtype(dtype)?;
    sync(&device)?;
    let after_build = mem.peak_gib();

    // One forward without gradients, for scale: control residuals + the DiT with them.
    let fwd_ms = {
        let mask = Tensor::zeros((1, 1, t, h, w), dtype, &device)?;
        let inp = DitInput {
            latents: &x0,
            timestep: &sigma,
            text: &text,
            text_mask: None,
            condition_mask: Some(&mask),
            padding_mask: None,
            fps: None,
        };
        let mut times = Vec::new();
        for _ in 0..2 {
            sync(&device)?;
            let t0 = Instant::now();
            let hint = codes_to_hint(&codes.detach(), &hint_proj, h, w)?.detach();
            let res: Vec<(usize, Tensor)> =
                branch.residuals(&inp, &hint)?.into_iter().map(|(i, r)| (i, r.detach())).collect();
            let out = dit.forward_with_residuals(&inp, &res)?;
            sync(&device)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            drop(out);
        }
        times[1]
    };

    let mut times = Vec::new();
    let mut last = None;
    for i in 0..args.warmup + args.iters {
        sync(&device)?;
        let t0 = Instant::now();
        let hint = codes_to_hint(&codes, &hint_proj, h, w)?;
        let loss = flow_matching_loss_recompute(&dit, &branch, &hint, &x0, &sigma, &eps, &text)?;
        let stats = trainer.step(&loss)?;
        drop(loss);
        sync(&device)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        eprintln!("step {}: {ms:.1} ms, loss {:.5}, grad norm {:.4e}", i + 1, stats.loss, stats.grad_norm);
        if i >= args.warmup {
            times.push(ms);
        }
        last = Some(stats);
    }
    let tokens = t * (h / dcfg.patch_size[1]) * (w / dcfg.patch_size[2]);
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let v = serde_json::json!({
        "impl": "vw-candle-stage2",
        "config": args.shape.config,
        "latent": [t, h, w],
        "tokens": tokens,
        "dtype": format!("{dtype:?}"),
        "control_blocks": args.control_blocks,
        "hint_channels": args.hint_channels,
        "trainable_params": trainable,
        "tf32": args.tf32,
        "step_median_ms": median(times.clone()),
        "step_min_ms": min,
        "step_times_ms": times,
        "forward_no_grad_ms": fwd_ms,
        "mem_after_build_gib": after_build,
        "peak_mem_used_gib": mem.peak_gib(),
        "mem_measure": "max over 5 ms samples of cuMemGetInfo total-free (device-wide, incl. CUDA context)",
        "last_loss": last.map(|s| s.loss),
        "last_grad_norm": last.map(|s| s.grad_norm),
    });
    println!("{v}");
    Ok(())
}

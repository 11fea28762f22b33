//! `vw bench-dit` / `vw bench-vae-decode`: time one DiT forward (or one VAE decode) at the real
//! Cosmos-Predict2 2B config with random weights; tools/bench_torch_dit.py is the diffusers baseline.

use clap::Args;
use std::time::Instant;
use vw_diffusion::dit::{CosmosTransformer3DModel, CosmosTransformerConfig, DitInput};
use vw_diffusion::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};
use vw_diffusion::weights::build_random;

/// The DiT and video shape of a benchmark (`vw bench-dit`, `vw bench-stage2`).
#[derive(Debug, Args)]
pub struct DitShapeArgs {
    /// DiT config: `2b` (Cosmos-Predict2-2B-Video2World) or `tiny`.
    #[arg(long, default_value = "2b")]
    pub config: String,
    /// Video frames (latent frames = (frames - 1) / 4 + 1).
    #[arg(long, default_value_t = 93)]
    pub frames: usize,
    /// Video height in pixels.
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    /// Video width in pixels.
    #[arg(long, default_value_t = 832)]
    pub width: usize,
    /// Text tokens.
    #[arg(long, default_value_t = 512)]
    pub text_len: usize,
}

impl DitShapeArgs {
    /// The DiT config `--config` names.
    pub fn dit_config(&self) -> anyhow::Result<CosmosTransformerConfig> {
        Ok(match self.config.as_str() {
            "2b" => CosmosTransformerConfig::predict2_2b_video2world(),
            "tiny" => CosmosTransformerConfig::tiny(),
            o => anyhow::bail!("unknown --config `{o}` (2b or tiny)"),
        })
    }

    /// Latent frames, height and width of the video (4x temporal, 8x spatial compression).
    pub fn latent_shape(&self) -> (usize, usize, usize) {
        ((self.frames - 1) / 4 + 1, self.height / 8, self.width / 8)
    }
}

/// Arguments of `vw bench-dit`.
#[derive(Debug, Args)]
pub struct BenchDitArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub shape: DitShapeArgs,
    /// Random weights (the only mode: no checkpoint download needed).
    #[arg(long, default_value_t = true)]
    pub random_weights: bool,
    /// Untimed warm-up forwards.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed forwards.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
}

/// Waits for the device's queued work (timing boundaries of the benchmarks).
pub(super) fn sync(d: &candle_core::Device) -> anyhow::Result<()> {
    d.synchronize()?;
    Ok(())
}

fn report(name: &str, mut times: Vec<f64>, extra: serde_json::Value) {
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let min = times.first().copied().unwrap_or(f64::NAN);
    let mut v = serde_json::json!({"impl": name, "median_ms": median, "min_ms": min});
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    println!("{v}");
}

/// Runs `vw bench-dit`.
pub fn run(args: BenchDitArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.device.dtype.dtype();
    let cfg = args.shape.dit_config()?;
    let model = build_random(0, dtype, &device, |vb| CosmosTransformer3DModel::new(&cfg, vb))?;
    let (t, h, w) = args.shape.latent_shape();
    let lat_c = cfg.in_channels - 1;
    let x = candle_core::Tensor::randn(0f32, 1.0, (1, lat_c, t, h, w), &device)?.to_dtype(dtype)?;
    let mut cm = vec![0f32; t];
    cm[0] = 1.0;
    let cond =
        candle_core::Tensor::from_vec(cm, (1, 1, t, 1, 1), &device)?.broadcast_as((1, 1, t, h, w))?.contiguous()?;
    let ts = candle_core::Tensor::full(0.5f32, (1, t), &device)?;
    let text = candle_core::Tensor::randn(0f32, 1.0, (1, args.shape.text_len, cfg.text_embed_dim), &device)?
        .to_dtype(dtype)?;
    let pad = candle_core::Tensor::zeros((1, 1, args.shape.height, args.shape.width), dtype, &device)?;
    let inp = DitInput {
        latents: &x,
        timestep: &ts,
        text: &text,
        text_mask: None,
        condition_mask: Some(&cond),
        padding_mask: Some(&pad),
        fps: Some(16.0),
    };
    let mut times = vec![];
    for i in 0..args.warmup + args.iters {
        sync(&device)?;
        let t0 = Instant::now();
        let out = model.forward(&inp)?;
        sync(&device)?;
        if i >= args.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        drop(out);
    }
    let tokens = t * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
    report(
        "vw-candle",
        times,
        serde_json::json!({"latent": [t, h, w], "tokens": tokens, "dtype": format!("{dtype:?}"), "config": args.shape.config}),
    );
    Ok(())
}

/// Arguments of `vw bench-vae-decode`.
#[derive(Debug, Args)]
pub struct BenchVaeArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Video frames to decode to.
    #[arg(long, default_value_t = 93)]
    pub frames: usize,
    /// Video height in pixels.
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    /// Video width in pixels.
    #[arg(long, default_value_t = 832)]
    pub width: usize,
    /// Timed decodes.
    #[arg(long, default_value_t = 2)]
    pub iters: usize,
}

/// Runs `vw bench-vae-decode` (Wan2.1 config, random weights, one warm-up).
pub fn run_vae(args: BenchVaeArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.device.dtype.dtype();
    let cfg = AutoencoderKLWanConfig::default();
    let vae = build_random(0, dtype, &device, |vb| AutoencoderKLWan::new(&cfg, vb))?;
    let t = (args.frames - 1) / 4 + 1;
    let z = candle_core::Tensor::randn(0f32, 1.0, (1, cfg.z_dim, t, args.height / 8, args.width / 8), &device)?
        .to_dtype(dtype)?;
    let mut times = vec![];
    for i in 0..1 + args.iters {
        sync(&device)?;
        let t0 = Instant::now();
        let v = vae.decode(&z)?;
        sync(&device)?;
        if i >= 1 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        drop(v);
    }
    report("vw-candle-vae-decode", times, serde_json::json!({"latent": [t, args.height / 8, args.width / 8]}));
    Ok(())
}

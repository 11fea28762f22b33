//! `vw bench-ar`: decode tokens/s of the AR policy transformer with its KV cache (random weights),
//! the Rust side of the comparison with `tools/bench_torch_ar.py` (HF `LlamaForCausalLM.generate`).

use clap::Args;
use std::path::PathBuf;
use vw_ar_policy::bench::{decode_throughput, DecodeBench};
use vw_ar_policy::{Policy, PolicyConfig};

/// Arguments of `vw bench-ar`.
#[derive(Debug, Args)]
pub struct BenchArArgs {
    /// Model config: `tiny`, `300m` or a JSON file.
    #[arg(long, default_value = "300m")]
    pub config: String,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Prompt tokens prefilled before decoding.
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 512)]
    pub new_tokens: usize,
    /// Timed repetitions (after one untimed warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw bench-ar`.
pub fn run(args: BenchArArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.device.dtype.dtype();
    let cfg = PolicyConfig::from_name_or_file(&args.config)?;
    let varmap = candle_nn::VarMap::new();
    let policy = Policy::new(&cfg, candle_nn::VarBuilder::from_varmap(&varmap, dtype, &device))?;
    let shape = DecodeBench { batch: args.batch, prompt_len: args.prompt_len, new_tokens: args.new_tokens };
    decode_throughput(&policy, shape, &device, 0)?; // warm-up: kernel loading, allocator
    let mut runs = Vec::new();
    for r in 0..args.repeats.max(1) {
        let t = decode_throughput(&policy, shape, &device, r as u64)?;
        println!(
            "run {r}: prefill {:.2} ms, decode {} tokens in {:.3} s = {:.1} tokens/s",
            t.prefill_s * 1e3,
            shape.batch * shape.new_tokens,
            t.decode_s,
            t.decode_tokens_per_s
        );
        runs.push(t);
    }
    let mut tps: Vec<f64> = runs.iter().map(|t| t.decode_tokens_per_s).collect();
    tps.sort_by(f64::total_cmp);
    let median = tps[tps.len() / 2];
    println!(
        "vw bench-ar: config {} ({} transformer params), {} {:?}, batch {}, prompt {}, new {}: median {:.1} decode tokens/s",
        args.config,
        cfg.num_transformer_params(),
        args.device.device,
        dtype,
        shape.batch,
        shape.prompt_len,
        shape.new_tokens,
        median
    );
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "impl": "vw (candle)", "config": args.config, "params": cfg.num_transformer_params(),
            "device": args.device.device.to_string(), "dtype": format!("{dtype:?}"), "shape": shape,
            "decode_tokens_per_s": tps, "median_decode_tokens_per_s": median,
            "prefill_ms": runs.iter().map(|t| t.prefill_s * 1e3).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

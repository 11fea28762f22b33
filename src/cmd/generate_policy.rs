//! The policy branch of `vw generate`: plan the codes of a whole task from one image with a trained
//! policy, and write them (and, given a latent dynamics model, the rendered long video).

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use vw_ar_policy::train::load_policy;
use vw_ar_policy::{GenerateOptions, SamplingConfig};

/// Options of `vw generate --policy RUN --image IMG`.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Run folder of a trained policy (`vw train-policy --out`): plan codes from --image with it.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Most steps the policy may plan.
    #[arg(long, default_value_t = 16)]
    pub policy_max_steps: usize,
    /// Sampling temperature of the policy (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub policy_temperature: f64,
    /// Keep only the k most likely codes.
    #[arg(long)]
    pub policy_top_k: Option<usize>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub policy_top_p: Option<f64>,
    /// Seed of the policy's sampler.
    #[arg(long, default_value_t = 0)]
    pub policy_seed: u64,
}

/// Plans from `image` with the policy of `args.policy` and writes `plan.json` (codes of each step)
/// into `out`.
pub fn run(args: &PolicyArgs, image: &Path, out: &Path, device: &super::DeviceArgs) -> anyhow::Result<()> {
    let run_dir = args.policy.as_ref().context("--policy is required for a policy rollout")?;
    let dev = device.open()?;
    let policy = load_policy(run_dir, &dev, device.dtype.dtype())?;
    let (_, _, side) = policy.config().obs_encoder.input_chw();
    let frame = vw_ar_policy::rollout::load_frame(image, side, &dev)?.to_dtype(device.dtype.dtype())?;
    let opts = GenerateOptions {
        sampling: SamplingConfig {
            temperature: args.policy_temperature,
            top_k: args.policy_top_k,
            top_p: args.policy_top_p,
            seed: args.policy_seed,
        },
        max_steps: args.policy_max_steps,
    };
    let plan = policy.generate(&frame, None, &opts)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("plan.json");
    let json = serde_json::json!({
        "policy": run_dir, "image": image, "sampling": opts.sampling, "max_steps": opts.max_steps,
        "codes_per_transition": policy.config().codes_per_transition,
        "transitions_per_step": policy.config().transitions_per_step,
        "steps": plan.steps[0],
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("planned {} steps from {}; codes written to {}", plan.steps[0].len(), image.display(), path.display());
    Ok(())
}

//! `vw eval`: evaluate a demo checkpoint folder and write a report folder.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use vw_eval::demo::{read_config, train::evaluate_checkpoints};

/// Arguments of `vw eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Checkpoint folder written by `vw demo --retrain` (holds demo.json).
    #[arg(long, default_value = super::demo::COMMITTED_CHECKPOINTS)]
    pub checkpoints: PathBuf,
    /// Held-out-appearance episodes to evaluate (default: as configured in demo.json).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Report folder: report.md, metrics.json, PNG plots, GIF strips.
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
}

/// Runs `vw eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let mut cfg = read_config(&args.checkpoints).context("reading the checkpoint folder")?;
    if let Some(n) = args.episodes {
        cfg.test_episodes = n;
    }
    let outcome = evaluate_checkpoints(&cfg, &args.checkpoints, &args.out, &device, true, Vec::new())?;
    print!("{}", outcome.report.headline_table());
    println!("report: {}", outcome.paths.report.display());
    Ok(())
}

//! `vw train-dldm`: stage 1 (warm-up through the pixel decoder) or stage 2 (control branch into
//! the diffusion model) of the dLDM, or the VideoWorld-1-style baseline, on CraftWorld.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use vw_dldm::train::stage1::{train_stage1_in, Stage1Config};
use vw_dldm::train::stage2::{train_stage2, Stage2Config};

/// Arguments of `vw train-dldm`.
#[derive(Debug, Args)]
pub struct TrainDldmArgs {
    /// `tiny` (the CPU CraftWorld config) or a JSON run config (the `config` of a checkpoint.json).
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Training data: `craftworld` (rendered on the fly from the config's `data` section).
    #[arg(long, default_value = "craftworld")]
    pub data: String,
    /// Run folder: checkpoints, metrics.jsonl, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the checkpoint in --out exactly (same config required).
    #[arg(long)]
    pub resume: bool,
    /// 1: warm-up with the pixel decoder; 2: control branch into a video2world DiT.
    #[arg(long, default_value_t = 1)]
    pub stage: u8,
    /// `vw1`: train the VideoWorld-1-style plain LDM (codes-only renderer) instead of the dLDM.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Stage 2: the stage-1 run whose encoder initialises the dLDM.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override the training seed (data order, noise).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Data parallel on this host: run as this many processes, one per GPU (rank i on cuda:i),
    /// over NCCL (`--features nccl`). The global batch (`batch_size`) is split over the ranks.
    #[arg(long)]
    pub nproc: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

fn read_text(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading config {path}"))
}

/// Runs `vw train-dldm`.
pub fn run(args: TrainDldmArgs) -> anyhow::Result<()> {
    if let Some(n) = args.nproc.filter(|n| *n > 1) {
        return super::launch::spawn_ranks(n);
    }
    super::stop_training_on_ctrl_c();
    let (env, device) = super::launch::rank_device(args.device.device)?;
    let comm = super::launch::join(env.as_ref(), &device)?;
    if args.device.dtype != vw_tensor_kernels::DtypeSpec::F32 {
        bail!("the CraftWorld dLDM trains in f32 only (got --dtype {:?})", args.device.dtype);
    }
    if args.data != "craftworld" {
        bail!("--data {}: only the built-in `craftworld` is supported by train-dldm so far", args.data);
    }
    let vw1 = match args.baseline.as_deref() {
        None => false,
        Some("vw1") => true,
        Some(other) => bail!("unknown --baseline {other} (expected vw1)"),
    };
    match args.stage {
        1 => {
            let mut cfg = match (args.config.as_str(), vw1) {
                ("tiny", false) => Stage1Config::tiny(),
                ("tiny", true) => Stage1Config::tiny_vw1(),
                (path, _) => {
                    serde_json::from_str(&read_text(path)?).with_context(|| format!("parsing stage-1 config {path}"))?
                }
            };
            if let Some(s) = args.steps {
                cfg.train.total_steps = s;
            }
            if let Some(s) = args.seed {
                cfg.train.seed = s;
            }
            train_stage1_in(&cfg, &args.out, args.resume, &device, comm.is_main(), comm.clone())?;
        }
        2 => {
            if comm.world_size() > 1 {
                bail!("stage 2 trains in one process so far (data parallel: stage 1)");
            }
            if vw1 {
                bail!("--baseline vw1 has no stage 2 (it has no diffusion renderer)");
            }
            let mut cfg = match args.config.as_str() {
                "tiny" => Stage2Config::tiny(),
                path => {
                    serde_json::from_str(&read_text(path)?).with_context(|| format!("parsing stage-2 config {path}"))?
                }
            };
            if let Some(s) = args.steps {
                cfg.train.total_steps = s;
            }
            if let Some(s) = args.seed {
                cfg.train.seed = s;
            }
            train_stage2(&cfg, args.init.as_deref(), &args.out, args.resume, &device, true)?;
        }
        s => bail!("--stage {s}: expected 1 or 2"),
    }
    if !comm.is_main() {
        return Ok(());
    }
    eprintln!("run written to {} (metrics.jsonl, loss.png, checkpoint.json)", args.out.display());
    Ok(())
}

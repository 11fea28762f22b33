//! `vw train-policy`: teacher-forced training of the AR policy on a codes file, or of the action
//! decoder on an (observation, codes, actions) file.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use vw_ar_policy::dataset::{ActionDataset, CodeDataset};
use vw_ar_policy::train::{train_action_decoder, train_policy, TrainOptions};
use vw_ar_policy::{ActionDecoderConfig, PolicyConfig};
use vw_dldm::train::TrainConfig;

/// Arguments of `vw train-policy`.
#[derive(Debug, Args)]
pub struct TrainPolicyArgs {
    /// Codes file (`CodeDataset` safetensors: first frames + codes of each step) to train the policy on.
    #[arg(long, conflicts_with = "actions", required_unless_present = "actions")]
    pub codes: Option<PathBuf>,
    /// (observation, codes, actions) file (`ActionDataset` safetensors) to train the action decoder on.
    #[arg(long)]
    pub actions: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.jsonl, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Model config: `tiny`, `300m` (policy only) or a JSON file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Episodes (or action chunks) per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Seed of weights and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data parallel on this host: run as this many processes, one per GPU, over NCCL
    /// (`--features nccl`); the batch is split over the ranks.
    #[arg(long)]
    pub nproc: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw train-policy`.
pub fn run(args: TrainPolicyArgs) -> anyhow::Result<()> {
    if let Some(n) = args.nproc.filter(|n| *n > 1) {
        return super::launch::spawn_ranks(n);
    }
    super::stop_training_on_ctrl_c();
    let (env, device) = super::launch::rank_device(args.device.device)?;
    let comm = super::launch::join(env.as_ref(), &device)?;
    let main = comm.is_main();
    let mut train = TrainConfig {
        total_steps: args.steps,
        warmup_steps: args.warmup,
        batch_size: args.batch_size,
        seed: args.seed,
        checkpoint_every: (args.steps / 10).max(50),
        ..Default::default()
    };
    train.optim.lr = args.lr;
    let opts = TrainOptions {
        device,
        dtype: args.device.dtype.dtype(),
        resume: args.resume,
        max_steps_now: None,
        progress: main,
        comm,
    };
    if let Some(path) = &args.actions {
        let data = ActionDataset::load(path)?;
        let cfg = match args.config.as_str() {
            "tiny" => ActionDecoderConfig::tiny(),
            file => serde_json::from_str(&std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?)
                .with_context(|| format!("parsing {file} as an action decoder config"))?,
        };
        train_action_decoder(&cfg, &train, &data, &args.out, &opts)?;
    } else if let Some(path) = &args.codes {
        let data = CodeDataset::load(path)?;
        let cfg = PolicyConfig::from_name_or_file(&args.config)?;
        tracing::info!(episodes = data.len(), params = cfg.num_transformer_params(), "training the policy");
        train_policy(&cfg, &train, &data, &args.out, &opts)?;
    }
    if main {
        println!("checkpoint written to {}", args.out.display());
    }
    Ok(())
}

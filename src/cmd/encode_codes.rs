//! `vw encode-codes`: the codes of every CraftWorld episode under a trained dLDM (or baseline), with
//! episode ids and per-transition ground-truth action labels (the official `latent_code_infos.pt`).

use anyhow::bail;
use clap::Args;
use std::path::PathBuf;
use vw_dldm::train::codes::encode_transitions;
use vw_dldm::train::craft::Transitions;
use vw_dldm::train::load_latent_dynamics;

/// Arguments of `vw encode-codes`.
#[derive(Debug, Args)]
pub struct EncodeCodesArgs {
    /// Run folder of `vw train-dldm` (stage 1, stage 2 or the vw1 baseline).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// `craftworld` (train split) or `craftworld:test-appearance`.
    #[arg(long, default_value = "craftworld")]
    pub data: String,
    /// Episodes to encode (default: the run's training episodes).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Seed of the first episode (default: the run's).
    #[arg(long)]
    pub first_seed: Option<u64>,
    /// Output file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw encode-codes`.
pub fn run(args: EncodeCodesArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let split = match args.data.as_str() {
        "craftworld" | "craftworld:train" => vw_data::craftworld::Split::Train,
        "craftworld:test-appearance" | "craftworld:test" => vw_data::craftworld::Split::TestAppearance,
        other => bail!("--data {other}: expected craftworld[:train|:test-appearance]"),
    };
    let (model, mut data_cfg) = load_latent_dynamics(&args.ckpt, &device)?;
    if let Some(n) = args.episodes {
        data_cfg.episodes = n;
    }
    if let Some(s) = args.first_seed {
        data_cfg.first_seed = s;
    }
    let data = Transitions::render(&data_cfg, split, &device)?;
    let codes = encode_transitions(model.as_ref(), &data)?;
    codes.save(&args.out)?;
    eprintln!(
        "{} transitions of {} episodes ({split}) -> {}",
        codes.codes.len(),
        codes.transitions_per_episode.len(),
        args.out.display()
    );
    Ok(())
}

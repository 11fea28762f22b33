//! `vw train-policy`.

use clap::Args;

/// Arguments of `vw train-policy`.
#[derive(Debug, Args)]
pub struct TrainPolicyArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw train-policy`.
pub fn run(args: TrainPolicyArgs) -> anyhow::Result<()> {
    let _ = args.device.open()?;
    Err(super::not_yet("train-policy", 6))
}

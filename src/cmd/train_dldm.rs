//! `vw train-dldm`.

use clap::Args;

/// Arguments of `vw train-dldm`.
#[derive(Debug, Args)]
pub struct TrainDldmArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw train-dldm`.
pub fn run(args: TrainDldmArgs) -> anyhow::Result<()> {
    let _ = args.device.open()?;
    Err(super::not_yet("train-dldm", 5))
}

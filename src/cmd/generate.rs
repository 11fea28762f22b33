//! `vw generate`.

use clap::Args;

/// Arguments of `vw generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let _ = args.device.open()?;
    Err(super::not_yet("generate", 3))
}

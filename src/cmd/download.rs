//! `vw download`.

use clap::Args;

/// Arguments of `vw download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw download`.
pub fn run(args: DownloadArgs) -> anyhow::Result<()> {
    let _ = args.device.open()?;
    Err(super::not_yet("download", 3))
}

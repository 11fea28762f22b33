//! `vw eval`.

use clap::Args;

/// Arguments of `vw eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Runs `vw eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let _ = args.device.open()?;
    Err(super::not_yet("eval", 7))
}

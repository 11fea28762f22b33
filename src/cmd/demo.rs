//! `vw demo`: the embedded default, the whole VideoWorld 2 loop on CraftWorld.

use clap::Args;

/// Arguments of `vw demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Regenerate the data and train every stage from scratch instead of using the committed checkpoints.
    #[arg(long)]
    pub retrain: bool,
    /// Where the report, plots and GIFs go.
    #[arg(long, default_value = "runs/demo")]
    pub out: std::path::PathBuf,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    println!("VideoWorld 2 demo on {device:?} (report folder: {})", args.out.display());
    println!("plan:");
    println!("  1. render held-out-appearance CraftWorld episodes");
    println!("  2. predict latent-code sequences from each first frame with the AR policy");
    println!("  3. render them through the dLDM, judge every step by pixels");
    println!("  4. compare dLDM vs VW1-style LDM vs no-codes baseline in report.md");
    println!("(the end-to-end loop lands with issue #7; nothing was run)");
    Ok(())
}

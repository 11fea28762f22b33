//! `vw demo`: the embedded default, the whole VideoWorld 2 loop on CraftWorld.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use vw_eval::demo::{run_demo, DemoConfig, DemoOptions};

/// The committed small checkpoints the default demo evaluates.
pub const COMMITTED_CHECKPOINTS: &str = "checkpoints/craftworld";

/// Arguments of `vw demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Regenerate the data and train every stage from scratch instead of using the committed checkpoints.
    #[arg(long)]
    pub retrain: bool,
    /// With --retrain: the bigger configuration (for a GPU).
    #[arg(long, requires = "retrain")]
    pub large: bool,
    /// With --retrain: master seed of data, weights and batches.
    #[arg(long, default_value_t = 0, requires = "retrain")]
    pub seed: u64,
    /// Checkpoint folder: read by default (the committed one), written by --retrain (default `<out>/checkpoints`).
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// Held-out-appearance episodes to evaluate (default: as the checkpoints were configured).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Where the report, plots and GIFs go.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
}

/// `--retrain` trains the two latent dynamics models' chains at the same time on the CPU
/// (`vw_eval::demo::train::train_all`): unless the user chose, each gets half the cores. Called
/// before any other thread of the process starts, as the environment must only change then.
fn share_cores_between_chains() {
    const VAR: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(VAR).is_none() {
        let half = (candle_core::utils::get_num_threads() / 2).max(1);
        std::env::set_var(VAR, half.to_string());
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.retrain {
        share_cores_between_chains();
        super::stop_training_on_ctrl_c();
    }
    let device = args.device.open()?;
    let checkpoints = match (&args.checkpoints, args.retrain) {
        (Some(c), _) => c.clone(),
        (None, true) => args.out.join("checkpoints"),
        (None, false) => PathBuf::from(COMMITTED_CHECKPOINTS),
    };
    if !args.retrain && !checkpoints.join(vw_eval::demo::DEMO_CONFIG_FILE).exists() {
        if args.checkpoints.is_some() {
            anyhow::bail!("no demo checkpoints in {} (`vw demo --retrain` trains them)", checkpoints.display());
        }
        anyhow::bail!(
            "the committed demo checkpoints are not in {COMMITTED_CHECKPOINTS} (run `vw demo` from the repository root, \
             or `vw demo --retrain` to train them)"
        );
    }
    let mut cfg = if args.large { DemoConfig::gpu() } else { DemoConfig::cpu() };
    cfg.seed = args.seed;
    let opts = DemoOptions {
        out: args.out.clone(),
        checkpoints: checkpoints.clone(),
        retrain: args.retrain,
        device,
        progress: true,
        test_episodes: args.episodes,
    };
    let started = std::time::Instant::now();
    let outcome = match run_demo(&cfg, &opts) {
        Err(e @ vw_eval::Error::Interrupted(_)) => {
            return Err(anyhow::Error::new(e)
                .context(format!("the retrain stopped; the same command continues it from {}", checkpoints.display())))
        }
        other => other.context("the demo failed")?,
    };
    println!();
    println!("Step-wise task success on held-out-appearance CraftWorld episodes:");
    println!();
    print!("{}", outcome.report.headline_table());
    println!();
    println!("report:  {}", outcome.paths.report.display());
    println!("metrics: {}", outcome.paths.metrics.display());
    println!("plots:   {}", outcome.paths.success_plot.display());
    for g in &outcome.gifs {
        println!("gif:     {}", g.display());
    }
    if args.retrain {
        println!("checkpoints: {}", checkpoints.display());
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

//! `vw data`: write datasets to disk. `vw data craftworld` renders CraftWorld expert (or, with
//! `--play N`, play) episodes as
//! image-sequence clips (numbered PNGs + an `episode.json` ground-truth sidecar per episode).

use clap::{Args, Subcommand};
use vw_data::craftworld::{write_dataset, CraftConfig, Split};

/// Arguments of `vw data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

/// The datasets `vw data` can write.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Render CraftWorld expert (or play) episodes into DIR/episode_NNNNN/{frame_NNNNN.png, episode.json}.
    Craftworld(CraftworldArgs),
}

/// Arguments of `vw data craftworld`.
#[derive(Debug, Args)]
pub struct CraftworldArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Number of episodes; episode i uses seed SEED + i.
    #[arg(long, default_value_t = 100)]
    pub episodes: usize,
    /// Appearance split: train or test-appearance.
    #[arg(long, default_value = "train")]
    pub split: Split,
    /// Seed of the first episode.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frame side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Frames rendered per recipe step.
    #[arg(long, default_value_t = 8)]
    pub frames_per_step: usize,
    /// Fewest recipe steps (3..=8).
    #[arg(long, default_value_t = 3)]
    pub min_steps: usize,
    /// Most recipe steps (3..=8).
    #[arg(long, default_value_t = 8)]
    pub max_steps: usize,
    /// Draw each recipe's blocks at random instead of the structure's canonical colours.
    #[arg(long)]
    pub shuffle_colours: bool,
    /// Write play episodes of this many frames (the gripper moves random blocks to random columns
    /// through random detours; what the dLDM trains on) instead of the scripted expert's.
    #[arg(long, value_name = "FRAMES")]
    pub play: Option<usize>,
}

/// Runs `vw data`.
pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Craftworld(a) => craftworld(a),
    }
}

fn craftworld(a: CraftworldArgs) -> anyhow::Result<()> {
    let cfg = CraftConfig {
        image_size: a.size,
        frames_per_step: a.frames_per_step,
        min_steps: a.min_steps,
        max_steps: a.max_steps,
        shuffle_colours: a.shuffle_colours,
        ..CraftConfig::default()
    };
    let start = std::time::Instant::now();
    let summary = write_dataset(&a.out, &cfg, a.split, a.episodes, a.seed, a.play, true)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {} {} {} episodes ({} frames, {}x{}) to {} in {secs:.1} s ({:.0} frames/s)",
        summary.episodes.len(),
        if a.play.is_some() { "play" } else { "expert" },
        a.split,
        summary.frames,
        a.size,
        a.size,
        a.out.display(),
        summary.frames as f64 / secs.max(1e-9)
    );
    Ok(())
}

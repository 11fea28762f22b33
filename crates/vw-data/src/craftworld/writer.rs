//! The dataset writer: one folder per episode with numbered PNG frames (`frame_00000.png`, ...) and an
//! `episode.json` ground-truth sidecar — the image-sequence layout the folder readers read, so generated
//! and real clips go through one path.

use super::{generate_episode, CraftConfig, Episode, FrameTruth, Recipe, Split, StepSpan};
use super::{Appearance, NUM_ACTION_CLASSES};
use crate::image_tensor::write_png;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `format` field of every `episode.json`, bumped when the layout changes.
pub const EPISODE_FORMAT: &str = "craftworld-episode-v1";

/// The JSON sidecar of one episode.
#[derive(Debug, Serialize, Deserialize)]
pub struct EpisodeMeta {
    /// Always [`EPISODE_FORMAT`].
    pub format: String,
    /// The episode's seed.
    pub seed: u64,
    /// Its appearance split.
    pub split: Split,
    /// Frame side in pixels.
    pub image_size: usize,
    /// Number of frames (PNG files).
    pub num_frames: usize,
    /// Nominal frame rate: one recipe step per second (`frames_per_step` fps), for readers that resample.
    pub fps: f32,
    /// The recipe, step by step.
    pub recipe: Recipe,
    /// Frames of each step.
    pub steps: Vec<StepSpan>,
    /// How the scene looks, with the camera the judge needs.
    pub appearance: Appearance,
    /// Number of discrete action classes (`label = direction_bucket * 2 + grip`).
    pub num_action_classes: usize,
    /// Ground truth of every frame.
    pub truth: Vec<FrameTruth>,
}

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetSummary {
    /// The episode folders, in order.
    pub episodes: Vec<PathBuf>,
    /// Frames written in total.
    pub frames: usize,
}

/// Writes one episode into `dir` (created if missing): `frame_%05d.png` and `episode.json`.
pub fn write_episode(dir: &Path, ep: &Episode) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (t, f) in ep.frames.iter().enumerate() {
        write_png(&dir.join(format!("frame_{t:05}.png")), f)?;
    }
    let meta = EpisodeMeta {
        format: EPISODE_FORMAT.to_string(),
        seed: ep.seed,
        split: ep.split,
        image_size: ep.frames.first().map_or(0, |f| f.width() as usize),
        num_frames: ep.frames.len(),
        fps: ep.steps.first().map_or(1, |s| s.end_frame + 1 - s.start_frame) as f32,
        recipe: ep.recipe.clone(),
        steps: ep.steps.clone(),
        appearance: ep.appearance.clone(),
        num_action_classes: NUM_ACTION_CLASSES,
        truth: ep.truth.clone(),
    };
    let path = dir.join("episode.json");
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    // Written beside and renamed, so a reader never sees half a sidecar.
    let tmp = dir.join("episode.json.tmp");
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Reads an `episode.json` sidecar.
pub fn read_episode_meta(path: &Path) -> Result<EpisodeMeta> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let meta: EpisodeMeta =
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if meta.format != EPISODE_FORMAT {
        return Err(Error::Invalid(format!(
            "{}: format {:?}, expected {EPISODE_FORMAT:?}",
            path.display(),
            meta.format
        )));
    }
    Ok(meta)
}

/// Generates and writes `episodes` episodes of `split` into `out/episode_%05d/`; episode `i` uses seed
/// `seed + i`. The scripted expert's episodes, or with `play_frames = Some(n)` play episodes of `n`
/// frames ([`super::generate_play_episode`]). Also writes `out/craftworld.json` (config, split, seeds,
/// play frames). Shows a progress bar if `progress`.
pub fn write_dataset(
    out: &Path,
    cfg: &CraftConfig,
    split: Split,
    episodes: usize,
    seed: u64,
    play_frames: Option<usize>,
    progress: bool,
) -> Result<DatasetSummary> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let manifest = serde_json::json!({
        "format": "craftworld-dataset-v1",
        "split": split,
        "episodes": episodes,
        "first_seed": seed,
        "play_frames": play_frames,
        "config": cfg,
    });
    let mpath = out.join("craftworld.json");
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(format!("{}: {e}", mpath.display())))?;
    std::fs::write(&mpath, text).map_err(|e| Error::io(&mpath, e))?;
    let bar = crate::progress::bar(episodes as u64, progress);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} episodes ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("craftworld {split}"));
    let mut summary = DatasetSummary { episodes: Vec::with_capacity(episodes), frames: 0 };
    for i in 0..episodes {
        let ep_seed = seed.wrapping_add(i as u64);
        let ep = match play_frames {
            None => generate_episode(cfg, split, ep_seed)?,
            Some(n) => super::generate_play_episode(cfg, split, ep_seed, n)?,
        };
        let dir = out.join(format!("episode_{i:05}"));
        write_episode(&dir, &ep)?;
        summary.frames += ep.frames.len();
        summary.episodes.push(dir);
        bar.inc(1);
    }
    bar.finish();
    Ok(summary)
}

/// Reads back an episode folder written by [`write_episode`]: frames and ground truth.
pub fn load_episode(dir: &Path) -> Result<Episode> {
    let meta = read_episode_meta(&dir.join("episode.json"))?;
    let mut frames = Vec::with_capacity(meta.num_frames);
    for t in 0..meta.num_frames {
        let path = dir.join(format!("frame_{t:05}.png"));
        let img = image::open(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        frames.push(img.to_rgb8());
    }
    if meta.truth.len() != frames.len() {
        return Err(Error::Invalid(format!(
            "{}: {} truth entries for {} frames",
            dir.display(),
            meta.truth.len(),
            frames.len()
        )));
    }
    Ok(Episode {
        seed: meta.seed,
        split: meta.split,
        recipe: meta.recipe,
        appearance: meta.appearance,
        frames,
        truth: meta.truth,
        steps: meta.steps,
    })
}

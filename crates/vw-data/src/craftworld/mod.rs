//! CraftWorld: the built-in miniature Video-CraftBench. A tabletop seen from a fixed camera, a gripper,
//! up to 8 blocks of distinct colours and glyphs, and a recipe (an ordered build of 3 to 8 placements:
//! tower, wall, arch, pyramid, stairs, horse, bridge, ...) that a scripted expert executes with smooth
//! reach / grasp / carry / place motion. The recipe is drawn on a blueprint card in the top-left corner of
//! every frame, so a policy must read the first frame to know what to build.
//!
//! Everything is procedural and seeded: the same `(config, split, seed)` always gives the same pixels.
//! The two [`Split`]s share recipes and dynamics but differ in table and wall texture, light, block
//! texture, viewpoint and distractor objects. The [`Judge`] reads a frame (rendered or generated, blurred
//! or noisy) and says how many recipe steps are complete. See `docs/craftworld.md` for the layout, the
//! action labels and the judge's tolerance.
//!
//! ```
//! use vw_data::craftworld::{generate_episode, CraftConfig, Judge, Split};
//!
//! let cfg = CraftConfig { image_size: 32, frames_per_step: 2, ..CraftConfig::default() };
//! let ep = generate_episode(&cfg, Split::TestAppearance, 7)?;
//! assert_eq!(ep.frames.len(), 1 + ep.num_steps() * 2);
//! let judge = Judge::for_episode(&ep);
//! assert_eq!(judge.steps_completed(&ep.frames[0], &ep.recipe), 0);
//! let last = ep.frames.last().unwrap();
//! assert_eq!(judge.steps_completed(last, &ep.recipe), ep.num_steps());
//! let video = ep.frames_tensor(&candle_core::Device::Cpu)?; // (3, T, H, W) in [-1, 1]
//! assert_eq!(video.dims(), &[3, ep.frames.len(), 32, 32]);
//! # Ok::<(), vw_data::Error>(())
//! ```

mod expert;
mod judge;
mod play;
mod recipe;
mod render;
mod scene;
mod writer;

pub use expert::{Action, FrameTruth, Phase, StepSpan, NUM_ACTION_CLASSES, STAY_EPS};
pub use judge::Judge;
pub use play::generate_play_episode;
pub use recipe::{BlockId, Cell, Placement, Recipe, Structure, BLOCK_NAMES, GLYPH_NAMES, NUM_BLOCKS, PALETTE_HSV};
pub use render::{render, Renderer};
pub use scene::{
    cell_top_left, source_top_left, Appearance, Camera, Distractor, SceneState, TableTexture, WallTexture, CELL,
    SOURCE_PITCH, SOURCE_STACKS, SOURCE_U0, TABLE_V,
};
pub use writer::{
    load_episode, read_episode_meta, write_dataset, write_episode, DatasetSummary, EpisodeMeta, EPISODE_FORMAT,
};

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which appearance family a scene is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Training scenes: wood table, plain wall, neutral light, flat blocks, the fixed camera.
    Train,
    /// Held-out scenes: other table/wall textures, tinted light, speckled blocks, a moved camera, distractors.
    TestAppearance,
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "test-appearance" | "test" => Ok(Split::TestAppearance),
            _ => Err(Error::Invalid(format!("unknown split {s:?} (expected train or test-appearance)"))),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::TestAppearance => "test-appearance",
        })
    }
}

/// What to generate. `Default` is the demo size: 64×64 frames, 8 frames per step, 3 to 8 steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CraftConfig {
    /// Side of the square frames in pixels (16..=512; the judge wants at least 32, better 64).
    pub image_size: usize,
    /// Frames rendered per recipe step (the episode has `1 + steps * frames_per_step` frames).
    pub frames_per_step: usize,
    /// Fewest placements in a recipe (>= 3).
    pub min_steps: usize,
    /// Most placements in a recipe (<= 8).
    pub max_steps: usize,
    /// Structures to draw from; empty means every structure whose size is within the step range.
    pub structures: Vec<Structure>,
    /// Give each recipe a random choice of blocks instead of the structure's canonical colours.
    pub shuffle_colours: bool,
    /// At most this many unused blocks (0..=4) are added to the source stacks as decoys.
    pub max_extra_blocks: usize,
}

impl Default for CraftConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            frames_per_step: 8,
            min_steps: 3,
            max_steps: 8,
            structures: Vec::new(),
            shuffle_colours: false,
            max_extra_blocks: 2,
        }
    }
}

impl CraftConfig {
    /// A small config for tests: 32×32, 2 frames per step, 3 to 4 steps.
    pub fn tiny() -> Self {
        Self { image_size: 32, frames_per_step: 2, min_steps: 3, max_steps: 4, ..Self::default() }
    }

    /// The structures this config draws from, or an error if none fits.
    pub fn candidate_structures(&self) -> Result<Vec<Structure>> {
        let pool: &[Structure] = if self.structures.is_empty() { &Structure::ALL } else { &self.structures };
        let out: Vec<Structure> =
            pool.iter().copied().filter(|s| (self.min_steps..=self.max_steps).contains(&s.num_steps())).collect();
        if out.is_empty() {
            return Err(Error::Invalid(format!(
                "no CraftWorld structure has between {} and {} steps",
                self.min_steps, self.max_steps
            )));
        }
        Ok(out)
    }

    fn validate(&self) -> Result<()> {
        if !(16..=512).contains(&self.image_size) {
            return Err(Error::Invalid(format!("image_size {} is outside 16..=512", self.image_size)));
        }
        if self.frames_per_step == 0 {
            return Err(Error::Invalid("frames_per_step must be at least 1".into()));
        }
        if self.max_extra_blocks > 4 {
            return Err(Error::Invalid(format!("max_extra_blocks {} is above 4", self.max_extra_blocks)));
        }
        self.candidate_structures().map(|_| ())
    }
}

/// One rendered expert demonstration with its ground truth.
#[derive(Debug, Clone)]
pub struct Episode {
    /// The seed it was generated from.
    pub seed: u64,
    /// The appearance family.
    pub split: Split,
    /// What is built, step by step.
    pub recipe: Recipe,
    /// How the scene looks, including the camera the judge needs.
    pub appearance: Appearance,
    /// `1 + num_steps * frames_per_step` frames; frame 0 is the untouched scene.
    pub frames: Vec<RgbImage>,
    /// Ground truth of every frame.
    pub truth: Vec<FrameTruth>,
    /// The frames of every step.
    pub steps: Vec<StepSpan>,
}

impl Episode {
    /// Number of recipe steps.
    pub fn num_steps(&self) -> usize {
        self.recipe.num_steps()
    }

    /// The frames as a tensor (3, T, H, W), f32 in [-1, 1].
    pub fn frames_tensor(&self, device: &Device) -> Result<Tensor> {
        crate::image_tensor::frames_to_tensor(&self.frames, device)
    }

    /// The discrete action label of every frame (`FrameTruth::action_label`, `0..NUM_ACTION_CLASSES`).
    pub fn action_labels(&self) -> Vec<usize> {
        self.truth.iter().map(|t| t.action_label).collect()
    }

    /// The low-level action of every frame as `[dx, dy, grip]` (world units; see [`Action`]).
    pub fn actions(&self) -> Vec<[f32; 3]> {
        self.truth.iter().map(|t| [t.action.dx, t.action.dy, t.action.grip as f32]).collect()
    }

    /// The last frame of every step (what the judge scores step by step).
    pub fn step_end_frames(&self) -> Vec<RgbImage> {
        self.steps.iter().map(|s| self.frames[s.end_frame].clone()).collect()
    }

    /// Writes the episode as a looping GIF, `delay_ms` per frame.
    pub fn write_gif(&self, path: &std::path::Path, delay_ms: u32) -> Result<()> {
        crate::image_tensor::write_gif(path, &self.frames, delay_ms)
    }

    /// The camera of this scene.
    pub fn camera(&self) -> Camera {
        self.appearance.camera
    }

    /// Renders another state of this scene (same recipe, look and size), e.g. a counterfactual.
    pub fn render_state(&self, state: &SceneState) -> RgbImage {
        let size = self.frames.first().map_or(64, |f| f.width() as usize);
        render(state, &self.recipe, &self.appearance, size)
    }
}

/// Draws the recipe and the initial block layout of `seed` (the same in both splits).
pub fn sample_task(cfg: &CraftConfig, seed: u64) -> Result<(Recipe, SceneState)> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pool = cfg.candidate_structures()?;
    let structure = pool[rng.random_range(0..pool.len())];
    let k = structure.num_steps();
    let mut ids: Vec<BlockId> = (0..NUM_BLOCKS).collect();
    let blocks = if cfg.shuffle_colours {
        ids.shuffle(&mut rng);
        ids[..k].to_vec()
    } else {
        structure.canonical_blocks()
    };
    let recipe = Recipe::new(structure, &blocks)?;
    let unused: Vec<BlockId> = (0..NUM_BLOCKS).filter(|b| !blocks.contains(b)).collect();
    let extra_max = cfg.max_extra_blocks.min(unused.len()).min(4);
    let extra_n = rng.random_range(0..=extra_max);
    let mut extras = unused;
    extras.shuffle(&mut rng);
    extras.truncate(extra_n);
    // Source stacks: up to 4 columns of at most 2. Blocks needed first go on top, so every block is
    // uncovered by the time the expert needs it.
    let n = k + extra_n;
    let columns = n.min(scene::SOURCE_STACKS);
    let tops = n - columns;
    let mut stacks: Vec<usize> = (0..scene::SOURCE_STACKS).collect();
    stacks.shuffle(&mut rng);
    stacks.truncate(columns);
    let mut bottoms: Vec<BlockId> = blocks[tops..].iter().copied().chain(extras).collect();
    bottoms.shuffle(&mut rng);
    let mut placed: Vec<(BlockId, f32, f32)> = Vec::with_capacity(n);
    for (&stack, &b) in stacks.iter().zip(&bottoms) {
        let (u, v) = source_top_left(stack, 0);
        placed.push((b, u, v));
    }
    let mut top_stacks = stacks.clone();
    top_stacks.shuffle(&mut rng);
    for (&stack, &b) in top_stacks.iter().zip(&blocks[..tops]) {
        let (u, v) = source_top_left(stack, 1);
        placed.push((b, u, v));
    }
    placed.sort_by_key(|b| b.0);
    let state = SceneState { blocks: placed, hand: scene::REST, closed: false, held: None };
    Ok((recipe, state))
}

/// Generates one expert episode. The task (recipe, layout) depends only on `seed` and the config; the
/// split changes only the appearance.
pub fn generate_episode(cfg: &CraftConfig, split: Split, seed: u64) -> Result<Episode> {
    let (recipe, initial) = sample_task(cfg, seed)?;
    let appearance = Appearance::sample(split, seed);
    let (states, truth, steps) = expert::rollout(&initial, &recipe, cfg.frames_per_step);
    let renderer = Renderer::new(&recipe, &appearance, cfg.image_size);
    let frames = states.iter().map(|s| renderer.render(s)).collect();
    Ok(Episode { seed, split, recipe, appearance, frames, truth, steps })
}

/// One factor of an episode's look: its name and how to copy it from one [`Appearance`] into another.
pub type LookFactor = (&'static str, fn(&mut Appearance, &Appearance));

/// The factors in which the test-appearance split differs from the training one, for finding which
/// of them a model's transfer fails on (docs/results.md).
pub const LOOK_FACTORS: [LookFactor; 5] = [
    ("camera", |a, t| a.camera = t.camera),
    ("table", |a, t| (a.table, a.table_rgb) = (t.table, t.table_rgb)),
    ("wall", |a, t| (a.wall, a.wall_rgb) = (t.wall, t.wall_rgb)),
    ("light", |a, t| (a.light_gain, a.spot) = (t.light_gain, t.spot)),
    ("blocks+distractors", |a, t| (a.speckled_blocks, a.distractors) = (t.speckled_blocks, t.distractors.clone())),
];

/// The expert episode of `seed` in the training look with one factor of its test-appearance look
/// swapped in (`factor.1`, one of [`LOOK_FACTORS`]).
pub fn generate_episode_with_factor(cfg: &CraftConfig, seed: u64, factor: &LookFactor) -> Result<Episode> {
    let mut ep = generate_episode(cfg, Split::Train, seed)?;
    (factor.1)(&mut ep.appearance, &Appearance::sample(Split::TestAppearance, seed));
    let renderer = Renderer::new(&ep.recipe, &ep.appearance, cfg.image_size);
    ep.frames = ep.truth.iter().map(|t| renderer.render(&t.scene)).collect();
    Ok(ep)
}

#[cfg(test)]
mod tests;

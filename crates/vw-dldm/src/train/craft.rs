//! CraftWorld transitions for dLDM training and probing: episodes rendered by `vw_data::craftworld`,
//! every adjacent frame pair with its ground-truth action label.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use vw_data::craftworld::{generate_episode, CraftConfig, Episode, Split};

/// Which episodes to render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CraftData {
    /// The world's config (image size, frames per step, recipe lengths).
    pub world: CraftConfig,
    /// Number of episodes.
    pub episodes: usize,
    /// Seed of the first episode; episode i has seed `first_seed + i`.
    pub first_seed: u64,
}

impl Default for CraftData {
    fn default() -> Self {
        Self { world: CraftConfig::default(), episodes: 48, first_seed: 0 }
    }
}

/// All frames of a set of episodes plus the index of every transition.
pub struct Transitions {
    /// Every frame of every episode: (N_frames, 3, H, W) in [-1, 1].
    pub frames: Tensor,
    /// Frame index of x_t of each transition (x_{t+1} is the next row).
    pub starts: Vec<u32>,
    /// Episode of each transition.
    pub episode: Vec<u32>,
    /// Index of each transition inside its episode.
    pub index_in_episode: Vec<u32>,
    /// Recipe step of each transition (the step of frame t).
    pub recipe_step: Vec<u32>,
    /// Ground-truth action label (`Action::label`, `0..NUM_ACTION_CLASSES`) of each transition.
    pub labels: Vec<u32>,
    /// Seed of each episode.
    pub seeds: Vec<u64>,
    /// Frames of each episode.
    pub frames_per_episode: Vec<usize>,
}

impl Transitions {
    /// Renders `data.episodes` episodes of `split` and indexes their transitions.
    pub fn render(data: &CraftData, split: Split, device: &Device) -> Result<Self> {
        let eps = (0..data.episodes)
            .map(|i| {
                generate_episode(&data.world, split, data.first_seed + i as u64)
                    .map_err(|e| Error::Invalid(format!("CraftWorld episode {}: {e}", data.first_seed + i as u64)))
            })
            .collect::<Result<Vec<Episode>>>()?;
        Self::from_episodes(&eps, device)
    }

    /// Indexes the transitions of already rendered episodes.
    pub fn from_episodes(eps: &[Episode], device: &Device) -> Result<Self> {
        let mut frames = Vec::new();
        let mut out = Self {
            frames: Tensor::zeros(1, candle_core::DType::F32, device)?,
            starts: Vec::new(),
            episode: Vec::new(),
            index_in_episode: Vec::new(),
            recipe_step: Vec::new(),
            labels: Vec::new(),
            seeds: Vec::new(),
            frames_per_episode: Vec::new(),
        };
        let mut offset = 0u32;
        for (e, ep) in eps.iter().enumerate() {
            // (3, T, H, W) -> (T, 3, H, W)
            let f = ep.frames_tensor(device).map_err(|err| Error::Invalid(err.to_string()))?.transpose(0, 1)?;
            let t = f.dim(0)?;
            for i in 0..t - 1 {
                out.starts.push(offset + i as u32);
                out.episode.push(e as u32);
                out.index_in_episode.push(i as u32);
                out.recipe_step.push(ep.truth[i].step as u32);
                out.labels.push(ep.truth[i].action.label() as u32);
            }
            out.seeds.push(ep.seed);
            out.frames_per_episode.push(t);
            offset += t as u32;
            frames.push(f);
        }
        if frames.is_empty() {
            return Err(Error::Invalid("no episodes".into()));
        }
        out.frames = Tensor::cat(&frames, 0)?.contiguous()?;
        Ok(out)
    }

    /// Number of transitions.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The transitions `ids`: (x_t, x_{t+1}), each (N, 3, H, W).
    pub fn pairs(&self, ids: &[usize]) -> Result<(Tensor, Tensor)> {
        let dev = self.frames.device();
        let a: Vec<u32> = ids.iter().map(|&i| self.starts[i]).collect();
        let b: Vec<u32> = a.iter().map(|s| s + 1).collect();
        let a = Tensor::from_vec(a, ids.len(), dev)?;
        let b = Tensor::from_vec(b, ids.len(), dev)?;
        Ok((self.frames.index_select(&a, 0)?, self.frames.index_select(&b, 0)?))
    }

    /// A batch of `n` transitions drawn uniformly from `rng`.
    pub fn sample(&self, rng: &mut impl Rng, n: usize) -> Result<(Tensor, Tensor)> {
        self.pairs(&self.sample_ids(rng, n))
    }

    /// The ids of a batch of `n` transitions drawn uniformly from `rng` (what [`Transitions::sample`]
    /// draws; a data-parallel rank keeps its shard of them).
    pub fn sample_ids(&self, rng: &mut impl Rng, n: usize) -> Vec<usize> {
        (0..n).map(|_| rng.random_range(0..self.len())).collect()
    }

    /// The frames of episode `e` as a clip (1, 3, T, H, W).
    pub fn episode_clip(&self, e: usize) -> Result<Tensor> {
        let start: usize = self.frames_per_episode[..e].iter().sum();
        let t = self.frames_per_episode[e];
        Ok(self.frames.narrow(0, start, t)?.transpose(0, 1)?.unsqueeze(0)?)
    }
}

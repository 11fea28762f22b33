//! The codes of every clip of a dataset, with episode ids and per-transition ground-truth action
//! labels — the role of the official `latent_code_infos.pt`, read by the AR policy and the probes.
//!
//! File layout (`codes.safetensors`, all u32 unless noted):
//! - `codes` (N, Q): the code indices of every transition, episodes concatenated in order;
//! - `episode` (N), `index_in_episode` (N), `recipe_step` (N), `action_label` (N);
//! - `episode_seed` (E) as u32 pairs (E, 2) = (low, high) words, `transitions_per_episode` (E);
//! - `first_frames` (E, 3, H, W) f32 in [-1, 1];
//! - `layout` (3): codes per transition Q, vocabulary size, frames per code step.

use super::craft::Transitions;
use crate::{Error, LatentDynamics, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Codes of a dataset in memory; see the module doc for the file layout.
#[derive(Debug, Clone)]
pub struct CodesFile {
    /// Code indices per transition, `codes[i]` of length `codes_per_step`.
    pub codes: Vec<Vec<u32>>,
    /// Episode of each transition.
    pub episode: Vec<u32>,
    /// Index of each transition in its episode.
    pub index_in_episode: Vec<u32>,
    /// Recipe step of each transition.
    pub recipe_step: Vec<u32>,
    /// Ground-truth action label of each transition.
    pub action_label: Vec<u32>,
    /// Seed of each episode.
    pub episode_seed: Vec<u64>,
    /// Transitions of each episode.
    pub transitions_per_episode: Vec<u32>,
    /// First frame of each episode (E, 3, H, W).
    pub first_frames: Tensor,
    /// Codes per transition.
    pub codes_per_step: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Frames per code step.
    pub frames_per_code_step: usize,
}

/// Encodes every episode of `data` with `model` (episode by episode, so memory stays bounded).
pub fn encode_transitions(model: &dyn LatentDynamics, data: &Transitions) -> Result<CodesFile> {
    let q = model.codes_per_step();
    let mut codes = Vec::with_capacity(data.len());
    let mut firsts = Vec::new();
    let mut per_ep = Vec::new();
    for e in 0..data.frames_per_episode.len() {
        let clip = data.episode_clip(e)?;
        let c = model.encode_codes(&clip)?; // (1, S, Q)
        let c = c.squeeze(0)?.to_dtype(DType::U32)?.to_device(&Device::Cpu)?.to_vec2::<u32>()?;
        if c.iter().any(|r| r.len() != q) {
            return Err(Error::Invalid(format!("model returned codes of width != codes_per_step {q}")));
        }
        per_ep.push(c.len() as u32);
        codes.extend(c);
        firsts.push(clip.narrow(2, 0, 1)?.squeeze(2)?.squeeze(0)?);
    }
    if codes.len() != data.len() {
        return Err(Error::Invalid(format!(
            "model returned {} transitions for {} frame pairs (frames_per_code_step must be 1 for per-frame labels)",
            codes.len(),
            data.len()
        )));
    }
    Ok(CodesFile {
        codes,
        episode: data.episode.clone(),
        index_in_episode: data.index_in_episode.clone(),
        recipe_step: data.recipe_step.clone(),
        action_label: data.labels.clone(),
        episode_seed: data.seeds.clone(),
        transitions_per_episode: per_ep,
        first_frames: Tensor::stack(&firsts, 0)?.to_device(&Device::Cpu)?,
        codes_per_step: q,
        vocab_size: model.vocab_size(),
        frames_per_code_step: model.frames_per_code_step(),
    })
}

impl CodesFile {
    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dev = Device::Cpu;
        let n = self.codes.len();
        let q = self.codes_per_step;
        let u = |v: &[u32]| Tensor::from_vec(v.to_vec(), v.len(), &dev);
        let seeds: Vec<u32> = self.episode_seed.iter().flat_map(|s| [*s as u32, (*s >> 32) as u32]).collect();
        let tensors = vec![
            (
                "codes".to_string(),
                Tensor::from_vec(self.codes.iter().flatten().copied().collect::<Vec<_>>(), (n, q), &dev)?,
            ),
            ("episode".to_string(), u(&self.episode)?),
            ("index_in_episode".to_string(), u(&self.index_in_episode)?),
            ("recipe_step".to_string(), u(&self.recipe_step)?),
            ("action_label".to_string(), u(&self.action_label)?),
            ("episode_seed".to_string(), Tensor::from_vec(seeds, (self.episode_seed.len(), 2), &dev)?),
            ("transitions_per_episode".to_string(), u(&self.transitions_per_episode)?),
            ("first_frames".to_string(), self.first_frames.to_dtype(DType::F32)?),
            ("layout".to_string(), u(&[q as u32, self.vocab_size as u32, self.frames_per_code_step as u32])?),
        ];
        super::checkpoint::save_tensors_atomic(path, &tensors)
    }

    /// Reads a file written by [`CodesFile::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)?;
        let get = |k: &str| {
            t.get(k)
                .ok_or_else(|| Error::Checkpoint { path: path.to_path_buf(), reason: format!("missing tensor '{k}'") })
        };
        let v1 = |k: &str| -> Result<Vec<u32>> { Ok(get(k)?.to_vec1::<u32>()?) };
        let layout = v1("layout")?;
        if layout.len() != 3 {
            return Err(Error::Checkpoint { path: path.to_path_buf(), reason: "layout must hold 3 values".into() });
        }
        let seeds = get("episode_seed")?.to_vec2::<u32>()?;
        Ok(Self {
            codes: get("codes")?.to_vec2::<u32>()?,
            episode: v1("episode")?,
            index_in_episode: v1("index_in_episode")?,
            recipe_step: v1("recipe_step")?,
            action_label: v1("action_label")?,
            episode_seed: seeds.iter().map(|p| p[0] as u64 | ((p[1] as u64) << 32)).collect(),
            transitions_per_episode: v1("transitions_per_episode")?,
            first_frames: get("first_frames")?.clone(),
            codes_per_step: layout[0] as usize,
            vocab_size: layout[1] as usize,
            frames_per_code_step: layout[2] as usize,
        })
    }

    /// The codes of episode `e`, one row per transition.
    pub fn episode_codes(&self, e: usize) -> Vec<Vec<u32>> {
        self.codes.iter().zip(&self.episode).filter(|(_, &ep)| ep as usize == e).map(|(c, _)| c.clone()).collect()
    }
}

//! Training data of the policy and the action decoder: first frames + code sequences (the output of
//! `vw encode-codes`, regrouped into policy steps), and (observation, codes, action chunk) triples.

use crate::policy::PolicyBatch;
use crate::tokens::Vocab;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;

/// Episodes for the policy: the first frame of each, optional task text, and the codes of each step.
#[derive(Debug, Clone)]
pub struct CodeDataset {
    /// `(N, C, H, W)` f32 first frames in `[-1, 1]` (or VAE latents), on the CPU.
    pub frames: Tensor,
    /// Task text ids per episode (empty when there is no text; equal lengths within a batch).
    pub text: Vec<Vec<u32>>,
    /// `steps[e][k]`: the `codes_per_step` codes of step `k` of episode `e`.
    pub steps: Vec<Vec<Vec<u32>>>,
    /// Codes per step (transitions per step x codes per transition).
    pub codes_per_step: usize,
    /// Size of the code vocabulary.
    pub code_vocab_size: usize,
}

impl CodeDataset {
    /// Builds and validates a dataset; `text` may be empty (no task text at all).
    pub fn new(
        frames: Tensor,
        text: Vec<Vec<u32>>,
        steps: Vec<Vec<Vec<u32>>>,
        codes_per_step: usize,
        code_vocab_size: usize,
    ) -> Result<Self> {
        let n = frames
            .dims4()
            .map_err(|_| Error::Invalid(format!("frames must be (N, C, H, W), found {:?}", frames.shape())))?
            .0;
        let text = if text.is_empty() { vec![Vec::new(); n] } else { text };
        if steps.len() != n || text.len() != n {
            return Err(Error::Invalid(format!(
                "{n} frames but {} step lists and {} text lists",
                steps.len(),
                text.len()
            )));
        }
        let ds = Self {
            frames: frames.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            text,
            steps,
            codes_per_step,
            code_vocab_size,
        };
        let vocab = Vocab::new(code_vocab_size);
        for (e, s) in ds.steps.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::Invalid(format!("episode {e} has no steps")));
            }
            vocab.encode_task(s, codes_per_step).map_err(|err| Error::Invalid(format!("episode {e}: {err}")))?;
        }
        Ok(ds)
    }

    /// Regroups per-episode transition codes `(S, Q)` into steps of `transitions_per_step`
    /// transitions (the layout `LatentDynamics::encode_codes` returns for a whole episode). A
    /// trailing partial step is dropped.
    pub fn from_transition_codes(
        frames: Tensor,
        codes: &[Vec<Vec<u32>>],
        transitions_per_step: usize,
        code_vocab_size: usize,
    ) -> Result<Self> {
        let q = codes.iter().flat_map(|e| e.first()).map(|t| t.len()).next().unwrap_or(0);
        let steps = codes
            .iter()
            .map(|e| {
                e.chunks_exact(transitions_per_step)
                    .map(|c| c.iter().flatten().copied().collect::<Vec<u32>>())
                    .collect()
            })
            .collect();
        Self::new(frames, Vec::new(), steps, q * transitions_per_step, code_vocab_size)
    }

    /// Number of episodes.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no episodes.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Most steps of any episode.
    pub fn max_steps(&self) -> usize {
        self.steps.iter().map(|s| s.len()).max().unwrap_or(0)
    }

    /// The batch of episodes `idx` on `device` in `dtype`: token sequences right-padded.
    pub fn batch(&self, idx: &[usize], device: &Device, dtype: DType) -> Result<PolicyBatch> {
        let vocab = Vocab::new(self.code_vocab_size);
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!("episode index {i} out of range 0..{}", self.len())));
        }
        let seqs =
            idx.iter().map(|&i| vocab.encode_task(&self.steps[i], self.codes_per_step)).collect::<Result<Vec<_>>>()?;
        let n = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let flat: Vec<u32> =
            seqs.iter().flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(vocab.pad(), n - s.len()))).collect();
        let tokens = Tensor::from_vec(flat, (idx.len(), n), device)?;
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &Device::Cpu)?;
        let obs = self.frames.index_select(&ids, 0)?.to_device(device)?.to_dtype(dtype)?;
        let text_len = self.text[idx[0]].len();
        let text = if text_len == 0 {
            None
        } else {
            if idx.iter().any(|&i| self.text[i].len() != text_len) {
                return Err(Error::Invalid("task texts of one batch must have equal lengths".into()));
            }
            let flat: Vec<u32> = idx.iter().flat_map(|&i| self.text[i].iter().copied()).collect();
            Some(Tensor::from_vec(flat, (idx.len(), text_len), device)?)
        };
        Ok(PolicyBatch { obs, text, tokens })
    }

    /// `batch_size` episode indices drawn without replacement from `rng` (with replacement when the
    /// dataset is smaller than the batch).
    pub fn sample_indices(&self, rng: &mut impl Rng, batch_size: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.len()).collect();
        if batch_size <= all.len() {
            all.shuffle(rng);
            all.truncate(batch_size);
            all
        } else {
            (0..batch_size).map(|_| rng.random_range(0..self.len())).collect()
        }
    }

    /// Writes the dataset as one safetensors file (`frames`, `codes`, `steps_per_episode`,
    /// `text`, `text_len`, `layout` = [codes_per_step, code_vocab_size]), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu = Device::Cpu;
        let codes: Vec<u32> = self.steps.iter().flatten().flatten().copied().collect();
        let n_codes = codes.len();
        let counts: Vec<u32> = self.steps.iter().map(|s| s.len() as u32).collect();
        let text: Vec<u32> = self.text.iter().flatten().copied().collect();
        let n_text = text.len();
        let text_len: Vec<u32> = self.text.iter().map(|t| t.len() as u32).collect();
        let tensors = vec![
            ("frames".to_string(), self.frames.clone()),
            ("codes".to_string(), Tensor::from_vec(codes, n_codes, &cpu)?),
            ("steps_per_episode".to_string(), Tensor::from_vec(counts, self.len(), &cpu)?),
            ("text".to_string(), Tensor::from_vec(text, n_text, &cpu)?),
            ("text_len".to_string(), Tensor::from_vec(text_len, self.len(), &cpu)?),
            ("layout".to_string(), Tensor::new(&[self.codes_per_step as u32, self.code_vocab_size as u32], &cpu)?),
        ];
        vw_dldm::train::checkpoint::save_tensors_atomic(path, &tensors)?;
        Ok(())
    }

    /// Reads a file written by [`CodeDataset::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let t = load_file(path)?;
        let get = |k: &str| get_u32(&t, path, k);
        let layout = get("layout")?;
        if layout.len() != 2 {
            return Err(Error::Invalid(format!("{}: 'layout' must hold 2 values", path.display())));
        }
        let (cps, vocab) = (layout[0] as usize, layout[1] as usize);
        let codes = get("codes")?;
        let counts = get("steps_per_episode")?;
        let text = get("text")?;
        let text_len = get("text_len")?;
        let bad = |m: &str| Error::Invalid(format!("{}: {m}", path.display()));
        let total: usize = counts.iter().map(|&c| c as usize * cps).sum();
        if total != codes.len() || text_len.iter().map(|&l| l as usize).sum::<usize>() != text.len() {
            return Err(bad("code / text counts do not add up to the stored lengths"));
        }
        let (mut c, mut x) = (0, 0);
        let mut steps = Vec::with_capacity(counts.len());
        let mut texts = Vec::with_capacity(counts.len());
        for (&n, &l) in counts.iter().zip(&text_len) {
            steps.push((0..n as usize).map(|k| codes[c + k * cps..c + (k + 1) * cps].to_vec()).collect());
            c += n as usize * cps;
            texts.push(text[x..x + l as usize].to_vec());
            x += l as usize;
        }
        let frames = t.get("frames").ok_or_else(|| bad("missing tensor 'frames'"))?.clone();
        Self::new(frames, texts, steps, cps, vocab).map_err(|e| bad(&e.to_string()))
    }
}

/// Training triples of the action decoder: observation at the start of a step, the step's codes, and
/// the low-level actions of the step.
#[derive(Debug, Clone)]
pub struct ActionDataset {
    /// `(N, C, H, W)` f32 observations.
    pub obs: Tensor,
    /// `(N, L)` u32 codes of each step.
    pub codes: Tensor,
    /// `(N, T, A)` f32 action chunks.
    pub actions: Tensor,
}

impl ActionDataset {
    /// Builds and validates the triple set (all on the CPU).
    pub fn new(obs: Tensor, codes: Tensor, actions: Tensor) -> Result<Self> {
        let n =
            obs.dims4().map_err(|_| Error::Invalid(format!("obs must be (N, C, H, W), found {:?}", obs.shape())))?.0;
        let (nc, _) =
            codes.dims2().map_err(|_| Error::Invalid(format!("codes must be (N, L), found {:?}", codes.shape())))?;
        let (na, _, _) = actions
            .dims3()
            .map_err(|_| Error::Invalid(format!("actions must be (N, T, A), found {:?}", actions.shape())))?;
        if nc != n || na != n {
            return Err(Error::Invalid(format!("{n} observations, {nc} code rows, {na} action chunks")));
        }
        let cpu = Device::Cpu;
        Ok(Self {
            obs: obs.to_dtype(DType::F32)?.to_device(&cpu)?,
            codes: codes.to_dtype(DType::U32)?.to_device(&cpu)?,
            actions: actions.to_dtype(DType::F32)?.to_device(&cpu)?,
        })
    }

    /// Number of triples.
    pub fn len(&self) -> usize {
        self.obs.dim(0).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `idx` as `(obs, codes, actions)` on `device` (floats in `dtype`).
    pub fn batch(&self, idx: &[usize], device: &Device, dtype: DType) -> Result<(Tensor, Tensor, Tensor)> {
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!("row {i} out of range 0..{}", self.len())));
        }
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &Device::Cpu)?;
        let pick = |t: &Tensor| t.index_select(&ids, 0)?.to_device(device);
        Ok((pick(&self.obs)?.to_dtype(dtype)?, pick(&self.codes)?, pick(&self.actions)?.to_dtype(dtype)?))
    }

    /// Writes `obs`, `codes`, `actions` as one safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = vec![
            ("obs".to_string(), self.obs.clone()),
            ("codes".to_string(), self.codes.clone()),
            ("actions".to_string(), self.actions.clone()),
        ];
        vw_dldm::train::checkpoint::save_tensors_atomic(path, &tensors)?;
        Ok(())
    }

    /// Reads a file written by [`ActionDataset::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let t = load_file(path)?;
        let get = |k: &str| {
            t.get(k).cloned().ok_or_else(|| Error::Invalid(format!("{}: missing tensor '{k}'", path.display())))
        };
        Self::new(get("obs")?, get("codes")?, get("actions")?)
    }
}

fn load_file(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::Invalid(format!("{}: not a readable safetensors file: {e}", path.display())))
}

fn get_u32(t: &HashMap<String, Tensor>, path: &Path, key: &str) -> Result<Vec<u32>> {
    let x = t.get(key).ok_or_else(|| Error::Invalid(format!("{}: missing tensor '{key}'", path.display())))?;
    if x.dtype() != DType::U32 || x.rank() != 1 {
        return Err(Error::Invalid(format!(
            "{}: tensor '{key}' must be 1-D u32, found {:?} {:?}",
            path.display(),
            x.dtype(),
            x.shape()
        )));
    }
    Ok(x.to_vec1::<u32>()?)
}

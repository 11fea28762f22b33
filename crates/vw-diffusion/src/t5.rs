//! The T5 text encoder of Cosmos-Predict2 (`text_encoder/` + `tokenizer/`), reusing candle's T5,
//! with the prompt handling of diffusers' Cosmos pipelines: pad to `max_sequence_length`, encode
//! with the padding masked out, and zero the embeddings past each prompt's length.
//!
//! candle's T5 encoder has no attention mask, so each prompt is encoded over its own valid tokens
//! only; with T5's relative position bias this equals masking the padded keys.

use crate::weights::{self, WeightStore};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::t5;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default `max_sequence_length` of the Cosmos pipelines.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// T5 encoder + tokenizer.
pub struct T5TextEncoder {
    model: t5::T5EncoderModel,
    tokenizer: Option<tokenizers::Tokenizer>,
    tokenizer_path: PathBuf,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for T5TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5TextEncoder").field("tokenizer", &self.tokenizer_path).finish()
    }
}

impl T5TextEncoder {
    /// Loads `text_encoder/` (config.json + safetensors) and, if present, `tokenizer/tokenizer.json`.
    pub fn load(text_encoder_dir: &Path, tokenizer_dir: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: t5::Config = weights::read_config(&text_encoder_dir.join("config.json"))?;
        let store = weights::open(text_encoder_dir)?;
        Self::from_store(&cfg, &store, tokenizer_dir, dtype, device)
    }

    /// Builds from an opened weight store.
    pub fn from_store(
        cfg: &t5::Config,
        store: &Arc<WeightStore>,
        tokenizer_dir: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let model = weights::build(store, dtype, device, |vb| Ok(t5::T5EncoderModel::load(vb, cfg)?))?;
        let (tokenizer, tokenizer_path) = match tokenizer_dir {
            Some(d) => {
                let p = d.join("tokenizer.json");
                let tok = tokenizers::Tokenizer::from_file(&p)
                    .map_err(|e| Error::Tokenizer { path: p.clone(), reason: e.to_string() })?;
                (Some(tok), p)
            }
            None => (None, PathBuf::new()),
        };
        Ok(Self { model, tokenizer, tokenizer_path, device: device.clone(), dtype })
    }

    /// Token ids of a prompt (with the tokenizer's special tokens, e.g. T5's `</s>`), truncated to `max_len`.
    pub fn tokenize(&self, prompt: &str, max_len: usize) -> Result<Vec<u32>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.tokenizer_path.clone(),
            reason: "no tokenizer loaded; pass token ids or precomputed embeddings".into(),
        })?;
        let enc = tok
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > max_len {
            tracing::warn!("prompt truncated from {} to {max_len} tokens", ids.len());
            // Keep the final special token (`</s>`) the way HF truncation does.
            let last = *ids.last().unwrap_or(&0);
            ids.truncate(max_len);
            if let Some(l) = ids.last_mut() {
                *l = last;
            }
        }
        Ok(ids)
    }

    /// Embeds token ids: (1, max_len, d_model), zero past the prompt.
    pub fn encode_ids(&mut self, ids: &[u32], max_len: usize) -> Result<Tensor> {
        if ids.is_empty() || ids.len() > max_len {
            return Err(Error::Invalid(format!("T5: {} token ids for a max length of {max_len}", ids.len())));
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let h = self.model.forward_dt(&input, Some(self.dtype))?;
        Ok(h.pad_with_zeros(1, 0, max_len - ids.len())?)
    }

    /// Embeds prompts: (B, max_len, d_model).
    pub fn encode(&mut self, prompts: &[&str], max_len: usize) -> Result<Tensor> {
        let mut outs = vec![];
        for p in prompts {
            let ids = self.tokenize(p, max_len)?;
            outs.push(self.encode_ids(&ids, max_len)?);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }
}

/// Embeds a batch of padded token ids (B, L) with a 0/1 attention mask (B, L), as the Cosmos
/// pipelines do: each row encoded over its valid prefix, zeros elsewhere.
pub fn encode_padded(enc: &mut T5TextEncoder, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, l) = ids.dims2()?;
    let ids = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let mask = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut outs = vec![];
    for r in 0..b {
        let n = mask[r].iter().filter(|m| **m > 0.5).count().max(1);
        outs.push(enc.encode_ids(&ids[r][..n], l)?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

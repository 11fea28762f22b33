//! The policy: observation encoder + task text + code-token decoder, with teacher-forced loss and
//! KV-cached, grammar-constrained sampling.

use crate::config::PolicyConfig;
use crate::obs_encoder::ObsEncoder;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokens::{Allowed, Vocab};
use crate::transformer::{last_position, KvCache, Mode, Transformer};
use crate::{Error, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{embedding, linear_no_bias, Embedding, Linear, VarBuilder};

/// The autoregressive policy over dLDM codes.
///
/// Checkpoint keys: `obs_encoder.*`, `obs_pos`, `text_embed.weight` (when `text_vocab_size > 0`),
/// `model.embed_tokens.weight`, `model.layers.N.*`, `model.norm.weight`, `lm_head.weight`.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    obs_encoder: ObsEncoder,
    obs_pos: Tensor,
    text_embed: Option<Embedding>,
    embed_tokens: Embedding,
    model: Transformer,
    lm_head: Linear,
}

/// A training batch: observations, optional task text, and the token sequences of the tasks.
#[derive(Debug, Clone)]
pub struct PolicyBatch {
    /// `(B, C, H, W)` first frames (or VAE latents).
    pub obs: Tensor,
    /// `(B, L_text)` u32 task text ids, when the policy takes text.
    pub text: Option<Tensor>,
    /// `(B, N)` u32 task tokens ([`Vocab::encode_task`]), right-padded with [`Vocab::pad`].
    pub tokens: Tensor,
}

/// Options of [`Policy::generate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// How tokens are drawn.
    pub sampling: SamplingConfig,
    /// Most steps per task; at this many the sequence is closed with end-of-task.
    pub max_steps: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { sampling: SamplingConfig::greedy(), max_steps: 16 }
    }
}

/// What [`Policy::generate`] returns for each batch row.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The generated task tokens of each row, up to and including end-of-task when it came.
    pub tokens: Vec<Vec<u32>>,
    /// The codes of each step of each row: `steps[b][k]` holds `codes_per_step` codes.
    pub steps: Vec<Vec<Vec<u32>>>,
}

impl Policy {
    /// Builds the policy; `vb` is the checkpoint root.
    pub fn new(cfg: &PolicyConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let n_obs = cfg.obs_encoder.num_tokens();
        let obs_encoder = ObsEncoder::new(&cfg.obs_encoder, h, vb.pp("obs_encoder"))?;
        let obs_pos = vb.get_with_hints((n_obs, h), "obs_pos", candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 })?;
        let text_embed =
            if cfg.text_vocab_size > 0 { Some(embedding(cfg.text_vocab_size, h, vb.pp("text_embed"))?) } else { None };
        let embed_tokens = embedding(cfg.vocab_size(), h, vb.pp("model.embed_tokens"))?;
        let model = Transformer::new(cfg, vb.pp("model"))?;
        let lm_head = linear_no_bias(h, cfg.vocab_size(), vb.pp("lm_head"))?;
        Ok(Self { cfg: cfg.clone(), obs_encoder, obs_pos, text_embed, embed_tokens, model, lm_head })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// The token layout.
    pub fn vocab(&self) -> Vocab {
        self.cfg.vocab()
    }

    /// Embeddings of the prefix: obs `(B, C, H, W)`, text `(B, L)` u32 -> `(B, N_obs + L, hidden)`.
    pub fn prefix_embeddings(&self, obs: &Tensor, text: Option<&Tensor>) -> Result<Tensor> {
        let o = self.obs_encoder.forward(obs)?.broadcast_add(&self.obs_pos)?;
        match (text, &self.text_embed) {
            (None, _) => Ok(o),
            (Some(t), Some(e)) => Ok(Tensor::cat(&[&o, &e.forward(t)?], 1)?),
            (Some(_), None) => {
                Err(Error::Invalid("task text given but the policy has no text embedding (text_vocab_size = 0)".into()))
            }
        }
    }

    /// Embeddings of task tokens: `(B, N)` u32 -> `(B, N, hidden)`.
    pub fn token_embeddings(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(tokens)?)
    }

    /// Teacher-forced logits of every task token: position `i` of the result predicts `tokens[i]`
    /// from the prefix and `tokens[..i]`. Returns `(B, N, vocab)`.
    pub fn forward(&self, batch: &PolicyBatch, mode: Mode) -> Result<Tensor> {
        let prefix = self.prefix_embeddings(&batch.obs, batch.text.as_ref())?;
        let p = prefix.dim(1)?;
        let n = batch.tokens.dim(1)?;
        // The last task token is only ever a target, never an input.
        let inputs = if n > 1 {
            let t = self.token_embeddings(&batch.tokens.narrow(1, 0, n - 1)?)?;
            Tensor::cat(&[&prefix, &t], 1)?
        } else {
            prefix
        };
        let hidden = self.model.forward(&inputs, None, mode)?;
        let hidden = hidden.narrow(1, p - 1, n)?;
        Ok(self.lm_head.forward(&hidden)?)
    }

    /// Mean next-token cross-entropy over the task tokens (codes and step/task markers; padding
    /// and the prefix never count). Returns a scalar, differentiable in [`Mode::Train`].
    pub fn loss(&self, batch: &PolicyBatch, mode: Mode) -> Result<Tensor> {
        let logits = self.forward(batch, mode)?.to_dtype(DType::F32)?;
        masked_cross_entropy(&logits, &batch.tokens, self.vocab().pad())
    }

    /// Logits of the next token after feeding `embeds` `(B, T, hidden)` into `cache`: `(B, vocab)`.
    pub fn step(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.model.forward(embeds, Some(cache), Mode::Inference)?;
        Ok(self.lm_head.forward(&last_position(&h)?)?.to_dtype(DType::F32)?)
    }

    /// A cache sized for a prefix and `max_steps` steps.
    pub fn new_cache(&self, prefix_len: usize, max_steps: usize) -> KvCache {
        let cap = (prefix_len + max_steps * (self.cfg.codes_per_step() + 2) + 1).min(self.cfg.max_position_embeddings);
        self.model.new_cache(cap)
    }

    /// Generates the task tokens of every row from its first frame: the prefix is encoded once
    /// (prefill), then one token per step through the KV cache. The grammar is enforced (codes
    /// inside steps, markers at fixed places), so every row parses into whole steps; rows stop at
    /// end-of-task or after `max_steps` steps.
    ///
    /// obs: `(B, C, H, W)`; text: `(B, L)` u32.
    pub fn generate(&self, obs: &Tensor, text: Option<&Tensor>, opts: &GenerateOptions) -> Result<Generated> {
        let mut sampler = Sampler::new(opts.sampling)?;
        let vocab = self.vocab();
        let cps = self.cfg.codes_per_step();
        let prefix = self.prefix_embeddings(obs, text)?;
        let (b, p, _) = prefix.dims3()?;
        let budget = opts.max_steps * (cps + 2) + 1;
        if p + budget > self.cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "prefix {p} + {} steps of {} tokens exceeds max_position_embeddings {}",
                opts.max_steps,
                cps + 2,
                self.cfg.max_position_embeddings
            )));
        }
        let codes: Vec<u32> = (0..self.cfg.code_vocab_size as u32).collect();
        let bos_eot = [vocab.bos_step(), vocab.eot()];
        let mut cache = self.new_cache(p, opts.max_steps);
        let mut logits = self.step(&prefix, &mut cache)?;
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for generated in 0..budget {
            let rows = logits.to_vec2::<f32>()?;
            let allowed = vocab.allowed_next(generated, cps, opts.max_steps);
            let mut next = Vec::with_capacity(b);
            for (r, row) in rows.iter().enumerate() {
                let t = if done[r] {
                    vocab.eot()
                } else {
                    match allowed {
                        Allowed::Only(t) => t,
                        Allowed::Codes => sampler.sample(row, &codes)?,
                        Allowed::BosOrEot => sampler.sample(row, &bos_eot)?,
                    }
                };
                if !done[r] {
                    tokens[r].push(t);
                    done[r] = t == vocab.eot();
                }
                next.push(t);
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let ids = Tensor::from_vec(next, (b, 1), obs.device())?;
            logits = self.step(&self.token_embeddings(&ids)?, &mut cache)?;
        }
        let steps = tokens.iter().map(|t| vocab.decode_task(t, cps)).collect();
        Ok(Generated { tokens, steps })
    }
}

/// Mean cross-entropy of `logits` `(B, N, V)` against `targets` `(B, N)` u32, skipping `pad`.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, pad: u32) -> Result<Tensor> {
    let (b, n, v) = logits.dims3()?;
    let flat = targets.flatten_all()?;
    let mask = flat.ne(pad)?.to_dtype(DType::F32)?;
    // Pad is a real vocabulary entry, so every target is in range; the mask removes it.
    let nll = vw_tensor_kernels::nll::token_nll(&logits.reshape((b * n, v))?, &flat)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?;
    if count == 0.0 {
        return Err(Error::Invalid("batch has no target tokens (all padding)".into()));
    }
    Ok(((nll * mask)?.sum_all()? / count as f64)?)
}

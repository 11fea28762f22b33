//! The action decoder (inverse dynamics): maps the observation at the start of a step and the codes
//! of that step to the step's chunk of low-level actions.
//!
//! Codes say *what changes*; the observation says *where things are*, which the action needs
//! (the same code "move the held block onto the tower" is a different (dx, dy) in every scene).

use crate::config::ActionDecoderConfig;
use crate::{Error, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{embedding, linear, Conv2dConfig, Embedding, Linear, VarBuilder};
use vw_tensor_kernels::conv2d::{conv2d, Conv2d};

/// Conv frame encoder + code embeddings -> MLP -> `(chunk_len, action_dim)`.
///
/// Checkpoint keys: `convs.N`, `obs_proj`, `code_embed`, `code_proj`, `hidden`, `head`.
#[derive(Debug, Clone)]
pub struct ActionDecoder {
    cfg: ActionDecoderConfig,
    convs: Vec<Conv2d>,
    obs_proj: Linear,
    code_embed: Embedding,
    code_proj: Linear,
    hidden: Linear,
    head: Linear,
}

impl ActionDecoder {
    /// Builds the decoder; `vb` is the checkpoint root.
    pub fn new(cfg: &ActionDecoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let cc = Conv2dConfig { stride: 2, padding: 1, ..Default::default() };
        let mut convs = Vec::new();
        let mut cin = cfg.in_channels;
        for (i, &c) in cfg.channels.iter().enumerate() {
            convs.push(conv2d(cin, c, 4, cc, vb.pp(format!("convs.{i}")))?);
            cin = c;
        }
        let side = cfg.image_size >> cfg.channels.len();
        let h = cfg.hidden_size;
        Ok(Self {
            cfg: cfg.clone(),
            convs,
            obs_proj: linear(cin * side * side, h, vb.pp("obs_proj"))?,
            code_embed: embedding(cfg.code_vocab_size, cfg.code_embed_dim, vb.pp("code_embed"))?,
            code_proj: linear(cfg.codes_per_step * cfg.code_embed_dim, h, vb.pp("code_proj"))?,
            hidden: linear(h, h, vb.pp("hidden"))?,
            head: linear(h, cfg.chunk_len * cfg.action_dim, vb.pp("head"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ActionDecoderConfig {
        &self.cfg
    }

    /// obs: `(B, C, H, W)`, codes: `(B, codes_per_step)` u32 -> actions `(B, chunk_len, action_dim)`.
    pub fn forward(&self, obs: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, ch, h, w) =
            obs.dims4().map_err(|_| Error::Invalid(format!("obs must be 4-D, found {:?}", obs.shape())))?;
        if (ch, h, w) != (c.in_channels, c.image_size, c.image_size) {
            return Err(Error::Invalid(format!(
                "obs must be (B, {}, {}, {}), found {:?}",
                c.in_channels,
                c.image_size,
                c.image_size,
                obs.shape()
            )));
        }
        if codes.dims() != [b, c.codes_per_step] {
            return Err(Error::Invalid(format!(
                "codes must be ({b}, {}), found {:?}",
                c.codes_per_step,
                codes.shape()
            )));
        }
        let mut x = obs.clone();
        for conv in &self.convs {
            x = conv.forward(&x)?.silu()?;
        }
        let o = self.obs_proj.forward(&x.flatten_from(1)?)?;
        let e = self.code_embed.forward(&codes.to_dtype(DType::U32)?)?.flatten_from(1)?;
        let z = (o + self.code_proj.forward(&e)?)?.silu()?;
        let z = self.hidden.forward(&z)?.silu()?;
        Ok(self.head.forward(&z)?.reshape((b, c.chunk_len, c.action_dim))?)
    }

    /// Mean squared error against the true action chunk `(B, chunk_len, action_dim)`.
    pub fn loss(&self, obs: &Tensor, codes: &Tensor, actions: &Tensor) -> Result<Tensor> {
        let pred = self.forward(obs, codes)?;
        if pred.dims() != actions.dims() {
            return Err(Error::Invalid(format!("actions must be {:?}, found {:?}", pred.shape(), actions.shape())));
        }
        Ok((pred - actions)?.to_dtype(DType::F32)?.sqr()?.mean_all()?)
    }
}

//! The Llama-style decoder stack: pre-RMSNorm blocks of rotary multi-head attention and a SwiGLU
//! MLP, with an incremental key/value cache.
//!
//! Weights follow the Hugging Face Llama key names (`layers.N.self_attn.q_proj.weight`,
//! `layers.N.mlp.gate_proj.weight`, `norm.weight`), so a `LlamaForCausalLM` of the same shape maps
//! one to one.

use crate::attention::causal_attention;
use crate::config::PolicyConfig;
use crate::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear_no_bias, Linear, VarBuilder};

/// How a forward pass computes. Attention and rotary embeddings are differentiable either way;
/// the difference is RMSNorm, whose fused candle op has no backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused ops where they exist; no gradients.
    Inference,
    /// Ops with a backward pass everywhere, so `backward` reaches every weight.
    Train,
}

/// RMSNorm with a learned per-channel gain.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `vb` holds `weight` `(dim,)`, initialised to ones.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    /// x: `(.., dim)` -> `(.., dim)`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match mode {
            Mode::Inference => candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?,
            Mode::Train => candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps as f32)?,
        })
    }
}

/// Rotary tables `(max_pos, head_dim / 2)` (f32) in the "rotate half" layout of Llama.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Tables for positions `0..max_pos`.
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64) as f32).collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, max_pos as u32, device)?.to_dtype(DType::F32)?.reshape((max_pos, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// x: `(B, H, T, D)` at absolute positions `offset..offset + T`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let max = self.cos.dim(0)?;
        if offset + t > max {
            return Err(crate::Error::Invalid(format!(
                "sequence reaches position {} but max_position_embeddings is {max}",
                offset + t
            )));
        }
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        Ok(vw_tensor_kernels::rope::apply_rope_half(x, &cos, &sin)?)
    }
}

/// Multi-head self-attention with rotary queries and keys.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// `vb` holds `q_proj`, `k_proj`, `v_proj`, `o_proj` (no biases).
    pub fn new(cfg: &PolicyConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: linear_no_bias(h, h, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(h, h, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(h, h, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(h, h, vb.pp("o_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// x: `(B, T, hidden)` at positions `offset..offset + T`; with a cache, keys and values of
    /// earlier positions come from it and this call's are appended. Returns `(B, T, hidden)`.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let split = |y: Tensor| y.reshape((b, t, self.num_heads, self.head_dim))?.transpose(1, 2);
        let q = rotary.apply(&split(self.q_proj.forward(x)?)?, offset)?;
        let k = rotary.apply(&split(self.k_proj.forward(x)?)?, offset)?;
        let v = split(self.v_proj.forward(x)?)?.contiguous()?;
        let (k, v) = match cache {
            Some(c) => c.append(&k.contiguous()?, &v)?,
            None => (k, v),
        };
        let y = causal_attention(&q, &k, &v)?;
        let y = y.transpose(1, 2)?.reshape((b, t, h))?;
        Ok(self.o_proj.forward(&y)?)
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// `vb` holds `gate_proj`, `up_proj`, `down_proj`.
    pub fn new(cfg: &PolicyConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }

    /// x: `(B, T, hidden)` -> `(B, T, hidden)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate_proj.forward(x)?.silu()?;
        Ok(self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)?)
    }
}

/// One pre-norm decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// `vb` is `layers.N`.
    pub fn new(cfg: &PolicyConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// x: `(B, T, hidden)` -> `(B, T, hidden)`.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward(&self.input_layernorm.forward(x, mode)?, rotary, offset, cache)?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.post_attention_layernorm.forward(&x, mode)?)?;
        Ok((x + m)?)
    }
}

/// Keys and values of every layer for the positions decoded so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache that preallocates `capacity` positions per layer (it grows if exceeded).
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| candle_nn::kv_cache::KvCache::new(2, capacity)).collect(), len: 0 }
    }
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The decoder stack and final norm: embeddings in, normalised hidden states out.
#[derive(Debug, Clone)]
pub struct Transformer {
    layers: Vec<Block>,
    norm: RmsNorm,
    rotary: Rotary,
    num_layers: usize,
}

impl Transformer {
    /// `vb` holds `layers.N.*` and `norm`.
    pub fn new(cfg: &PolicyConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        let rotary = Rotary::new(cfg.head_dim(), cfg.max_position_embeddings, cfg.rope_theta, vb.device())?;
        Ok(Self { layers, norm, rotary, num_layers: cfg.num_hidden_layers })
    }

    /// A fresh cache for this stack.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.num_layers, capacity)
    }

    /// x: `(B, T, hidden)` embeddings of the positions after those already in `cache` (all of them
    /// when `cache` is `None`) -> `(B, T, hidden)`.
    pub fn forward(&self, x: &Tensor, cache: Option<&mut KvCache>, mode: Mode) -> Result<Tensor> {
        let t = x.dim(1)?;
        let mut x = x.clone();
        match cache {
            Some(c) => {
                let offset = c.len;
                for (block, lc) in self.layers.iter().zip(c.layers.iter_mut()) {
                    x = block.forward(&x, &self.rotary, offset, Some(lc), mode)?;
                }
                c.len += t;
            }
            None => {
                for block in &self.layers {
                    x = block.forward(&x, &self.rotary, 0, None, mode)?;
                }
            }
        }
        self.norm.forward(&x, mode)
    }
}

/// Hidden states at the last position: `(B, T, hidden)` -> `(B, hidden)`.
pub fn last_position(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(1)?;
    Ok(x.narrow(1, t - 1, 1)?.squeeze(1)?)
}

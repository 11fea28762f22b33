//! The Q-Former of the official `modules/qformer_ldm.py`: `QFormerAdjacentFSingleQ` runs one shared
//! `QFormer` (SAM-style two-way-less transformer: learned queries cross-attend to image tokens, the
//! image tokens are never updated) over each pair of adjacent latent frames, so each transition's
//! `act_embedding_num` queries summarise the change between its two frames. Also the random-Fourier
//! `PositionEmbeddingRandom` used for the keys.

use crate::layers3d::linear;
use crate::Result;
use candle_core::{Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder};
use vw_tensor_kernels::attention::flash_attn;

/// A `torch.nn.LayerNorm` (eps 1e-5) through composed ops, so candle can differentiate it.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// Over the last dim of size `dim`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
        })
    }

    /// x: (..., dim) -> same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, 1e-5)?)
    }
}

/// `PositionEmbeddingRandom`: sin/cos of random projections of normalised pixel coordinates.
/// Key: `positional_encoding_gaussian_matrix` (2, dim / 2), a buffer (never trained here either).
#[derive(Debug, Clone)]
pub struct PositionEmbeddingRandom {
    gaussian: Tensor,
}

impl PositionEmbeddingRandom {
    /// `num_pos_feats` = half the embedding width.
    pub fn new(num_pos_feats: usize, vb: VarBuilder) -> Result<Self> {
        let gaussian = vb.get_with_hints(
            (2, num_pos_feats),
            "positional_encoding_gaussian_matrix",
            Init::Randn { mean: 0.0, stdev: 1.0 },
        )?;
        Ok(Self { gaussian })
    }

    /// The (2 * num_pos_feats, h, w) encoding of an h x w grid.
    pub fn forward(&self, h: usize, w: usize) -> Result<Tensor> {
        let mut coords = Vec::with_capacity(h * w * 2);
        for i in 0..h {
            for j in 0..w {
                // [x, y] in [0, 1] at pixel centres, then mapped to [-1, 1]
                coords.push(2.0 * (j as f32 + 0.5) / w as f32 - 1.0);
                coords.push(2.0 * (i as f32 + 0.5) / h as f32 - 1.0);
            }
        }
        let g = self.gaussian.detach();
        let c = Tensor::from_vec(coords, (h * w, 2), g.device())?.to_dtype(g.dtype())?;
        let proj = (c.matmul(&g)? * (2.0 * std::f64::consts::PI))?;
        let pe = Tensor::cat(&[proj.sin()?, proj.cos()?], 1)?; // (h*w, D)
        Ok(pe.t()?.reshape(((), h, w))?)
    }
}

/// `Attention` with `downsample_rate` 2: q/k/v project to dim / 2, split into heads, back to dim.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    /// Width `dim`, `num_heads` heads over the internal width dim / downsample_rate.
    pub fn new(dim: usize, num_heads: usize, downsample_rate: usize, vb: VarBuilder) -> Result<Self> {
        let inner = dim / downsample_rate;
        Ok(Self {
            q_proj: linear(dim, inner, vb.pp("q_proj"))?,
            k_proj: linear(dim, inner, vb.pp("k_proj"))?,
            v_proj: linear(dim, inner, vb.pp("v_proj"))?,
            out_proj: linear(inner, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        Ok(x.reshape((b, n, self.num_heads, c / self.num_heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// q: (B, Nq, dim), k, v: (B, Nk, dim) -> (B, Nq, dim).
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.heads(&self.q_proj.forward(q)?)?;
        let k = self.heads(&self.k_proj.forward(k)?)?;
        let v = self.heads(&self.v_proj.forward(v)?)?;
        let scale = 1.0 / (q.dim(D::Minus1)? as f32).sqrt();
        let o = flash_attn(&q, &k, &v, scale, false, None)?;
        let (b, h, n, c) = o.dims4()?;
        let o = o.transpose(1, 2)?.reshape((b, n, h * c))?;
        Ok(self.out_proj.forward(&o)?)
    }
}

/// `AttentionBlock`: queries cross-attend to the keys (+ position), then a ReLU MLP; post-norms.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
}

impl AttentionBlock {
    /// Width `dim`, MLP hidden width `mlp_dim`.
    pub fn new(dim: usize, num_heads: usize, mlp_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cross_attn_token_to_image: Attention::new(dim, num_heads, 2, vb.pp("cross_attn_token_to_image"))?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            lin1: linear(dim, mlp_dim, vb.pp("mlp").pp("lin1"))?,
            lin2: linear(mlp_dim, dim, vb.pp("mlp").pp("lin2"))?,
            norm3: LayerNorm::new(dim, vb.pp("norm3"))?,
        })
    }

    /// queries: (B, Q, dim), keys and key_pe: (B, N, dim) -> queries (B, Q, dim).
    pub fn forward(&self, queries: &Tensor, keys: &Tensor, key_pe: &Tensor) -> Result<Tensor> {
        let k = (keys + key_pe)?;
        let a = self.cross_attn_token_to_image.forward(queries, &k, keys)?;
        let q = self.norm2.forward(&(queries + a)?)?;
        let m = self.lin2.forward(&self.lin1.forward(&q)?.relu()?)?;
        self.norm3.forward(&(q + m)?)
    }
}

/// `QFormer`: `depth` attention blocks and a final query-to-image attention.
#[derive(Debug, Clone)]
pub struct QFormer {
    layers: Vec<AttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl QFormer {
    /// Width `dim` (the MLP is as wide, as officially).
    pub fn new(depth: usize, dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| AttentionBlock::new(dim, num_heads, dim, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(dim, num_heads, 2, vb.pp("final_attn_token_to_image"))?,
            norm_final_attn: LayerNorm::new(dim, vb.pp("norm_final_attn"))?,
        })
    }

    /// image, image_pe: (B, C, T, H, W); queries: (B, Q, C) -> (B, Q, C).
    pub fn forward(&self, image: &Tensor, image_pe: &Tensor, queries: &Tensor) -> Result<Tensor> {
        let keys = image.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let pe = image_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mut q = queries.clone();
        for layer in &self.layers {
            q = layer.forward(&q, &keys, &pe)?;
        }
        // the reference feeds `queries + queries` as the final attention's query
        let a = self.final_attn_token_to_image.forward(&(&q + &q)?, &(&keys + &pe)?, &keys)?;
        self.norm_final_attn.forward(&(q + a)?)
    }
}

/// `QFormerAdjacentFSingleQ`: the shared [`QFormer`] over each pair of adjacent frames.
#[derive(Debug, Clone)]
pub struct QFormerAdjacentFSingleQ {
    qformer: QFormer,
}

impl QFormerAdjacentFSingleQ {
    /// Keys: `qformer.*`.
    pub fn new(depth: usize, dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { qformer: QFormer::new(depth, dim, num_heads, vb.pp("qformer"))? })
    }

    /// image, image_pe: (B, C, T, H, W) with T >= 2; queries (B, Q, C) -> (B, (T-1) * Q, C), the
    /// queries of transition i (frames i, i+1) at rows i*Q..(i+1)*Q.
    pub fn forward(&self, image: &Tensor, image_pe: &Tensor, queries: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = image.dims5()?;
        let s = t.saturating_sub(1);
        if s == 0 {
            return Err(crate::Error::Invalid(format!("Q-Former needs at least 2 latent frames, got {t}")));
        }
        // all transitions at once: windows stacked along the batch, (B*S, C, 2, H, W)
        let windows = (0..s).map(|i| image.narrow(2, i, 2)).collect::<candle_core::Result<Vec<_>>>()?;
        let img = Tensor::stack(&windows, 1)?.reshape((b * s, c, 2, h, w))?;
        let pe_w = (0..s).map(|i| image_pe.narrow(2, i, 2)).collect::<candle_core::Result<Vec<_>>>()?;
        let pe = Tensor::stack(&pe_w, 1)?.reshape((b * s, c, 2, h, w))?;
        let q = queries.unsqueeze(1)?.broadcast_as((b, s, queries.dim(1)?, c))?.reshape((b * s, (), c))?;
        let out = self.qformer.forward(&img, &pe, &q)?;
        Ok(out.reshape((b, (), c))?)
    }
}

//! The code quantizer: FSQ (`FSQuantizer` of the official `modules/quantizers.py`, levels `[8,5,5,5]`,
//! no projections since `dim == len(levels)`) or a VQ codebook (our option; the official
//! `VectorQuantizer` expects 4D input and cannot run inside this tokenizer). Both go through the
//! vw-tensor-kernels ops and pass gradients straight through.

use crate::config::Config;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use vw_tensor_kernels::{fsq, vq};

/// What a quantizer returns for z (B, D, N, 1, 1).
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Code indices (B, N, 1, 1), u32.
    pub indices: Tensor,
    /// Quantized vectors (B, D, N, 1, 1), straight-through w.r.t. z.
    pub codes: Tensor,
    /// The quantizer's own loss (scalar; zero for FSQ, commitment + codebook for VQ).
    pub loss: Tensor,
}

/// FSQ (official) or VQ.
#[derive(Debug, Clone)]
pub enum Quantizer {
    /// Finite scalar quantization over `levels`.
    Fsq {
        /// Levels per code dimension.
        levels: Vec<usize>,
    },
    /// Nearest-codebook-row quantization with the VQ-VAE losses (beta 0.25).
    Vq {
        /// Codebook (K, D), key `quantizer.embedding.weight`.
        embedding: Tensor,
    },
}

/// (B, D, N...) -> (B, N..., D), the layout the kernels quantize over.
fn channels_last(z: &Tensor) -> Result<Tensor> {
    let r = z.rank();
    let mut perm: Vec<usize> = vec![0];
    perm.extend(2..r);
    perm.push(1);
    Ok(z.permute(perm)?.contiguous()?)
}

/// (B, N..., D) -> (B, D, N...).
fn channels_first(z: &Tensor) -> Result<Tensor> {
    let r = z.rank();
    let mut perm: Vec<usize> = vec![0, r - 1];
    perm.extend(1..r - 1);
    Ok(z.permute(perm)?.contiguous()?)
}

impl Quantizer {
    /// The quantizer of `cfg` (keys under `quantizer.`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        match cfg.quantizer.as_str() {
            "FSQ" => Ok(Self::Fsq { levels: cfg.levels.clone() }),
            "VQ" => {
                let k = cfg.num_embeddings.unwrap_or(0);
                let b = 1.0 / k.max(1) as f64;
                let embedding = vb.pp("embedding").get_with_hints(
                    (k, cfg.embedding_dim),
                    "weight",
                    Init::Uniform { lo: -b, up: b },
                )?;
                Ok(Self::Vq { embedding })
            }
            q => Err(Error::Invalid(format!("quantizer {q:?} not implemented (FSQ or VQ)"))),
        }
    }

    /// z: (B, D, N...) -> indices (B, N...), codes (B, D, N...) and the quantizer loss.
    pub fn forward(&self, z: &Tensor) -> Result<Quantized> {
        let zl = channels_last(z)?;
        match self {
            Self::Fsq { levels } => {
                let (codes, indices) = fsq::fsq_quantize(&zl, levels)?;
                let loss = Tensor::zeros((), z.dtype(), z.device())?;
                Ok(Quantized { indices, codes: channels_first(&codes)?, loss })
            }
            Self::Vq { embedding } => {
                let d = zl.dim(candle_core::D::Minus1)?;
                let flat = zl.reshape(((), d))?;
                let idx = vq::nearest_code(&flat, embedding)?;
                let zq = embedding.index_select(&idx, 0)?.to_dtype(z.dtype())?;
                // legacy VQ-VAE loss: ||sg[z] - e||^2 + beta ||z - sg[e]||^2
                let codebook = (zq.clone() - flat.detach())?.sqr()?.mean_all()?;
                let commit = (zq.detach() - &flat)?.sqr()?.mean_all()?;
                let loss = (codebook + (commit * 0.25)?)?;
                let st = (&flat + (zq - &flat)?.detach())?;
                let codes = channels_first(&st.reshape(zl.shape())?)?;
                let mut ishape = zl.dims().to_vec();
                ishape.pop();
                Ok(Quantized { indices: idx.reshape(ishape)?, codes, loss })
            }
        }
    }

    /// indices (B, N...) -> code vectors (B, D, N...) in `dtype`.
    pub fn indices_to_codes(&self, indices: &Tensor, dtype: DType) -> Result<Tensor> {
        let codes = match self {
            Self::Fsq { levels } => fsq::fsq_indices_to_codes(indices, levels)?,
            Self::Vq { embedding } => {
                let flat = indices.flatten_all()?.to_dtype(DType::U32)?;
                let d = embedding.dim(1)?;
                let mut shape = indices.dims().to_vec();
                shape.push(d);
                embedding.index_select(&flat, 0)?.reshape(shape)?
            }
        };
        channels_first(&codes.to_dtype(dtype)?)
    }

    /// Number of distinct codes.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Fsq { levels } => fsq::codebook_size(levels),
            Self::Vq { embedding } => embedding.dim(0).unwrap_or(0),
        }
    }
}

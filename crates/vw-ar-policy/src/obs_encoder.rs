//! Observation encoders: the first frame (or its VAE latents) becomes a short row of tokens.

use crate::config::ObsEncoderConfig;
use crate::{Error, Result};
use candle_core::{Module, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use vw_tensor_kernels::conv2d::{conv2d, Conv2d};

/// A stride-2 conv stack or a latent patchifier, followed by a projection to the model width.
#[derive(Debug, Clone)]
pub enum ObsEncoder {
    /// `convs.N` (4x4, stride 2, SiLU between) then `proj` per cell.
    Conv {
        /// The conv stack.
        convs: Vec<Conv2d>,
        /// Per-cell projection to the model width.
        proj: Linear,
        /// Expected `(C, H, W)`.
        chw: (usize, usize, usize),
    },
    /// `proj` over flattened `patch x patch x C` latent patches.
    Patch {
        /// Patch projection.
        proj: Linear,
        /// Side of a patch.
        patch: usize,
        /// Expected `(C, H, W)`.
        chw: (usize, usize, usize),
    },
}

impl ObsEncoder {
    /// Builds the encoder for `cfg` with output width `hidden`.
    pub fn new(cfg: &ObsEncoderConfig, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let chw = cfg.input_chw();
        match cfg {
            ObsEncoderConfig::Conv { in_channels, channels, .. } => {
                let cc = Conv2dConfig { stride: 2, padding: 1, ..Default::default() };
                let mut convs = Vec::with_capacity(channels.len());
                let mut cin = *in_channels;
                for (i, &cout) in channels.iter().enumerate() {
                    convs.push(conv2d(cin, cout, 4, cc, vb.pp(format!("convs.{i}")))?);
                    cin = cout;
                }
                Ok(Self::Conv { convs, proj: linear(cin, hidden, vb.pp("proj"))?, chw })
            }
            ObsEncoderConfig::Patch { in_channels, patch_size, .. } => Ok(Self::Patch {
                proj: linear(in_channels * patch_size * patch_size, hidden, vb.pp("proj"))?,
                patch: *patch_size,
                chw,
            }),
        }
    }

    /// obs: `(B, C, H, W)` (an RGB frame in `[-1, 1]`, or VAE latents) -> `(B, N, hidden)`.
    pub fn forward(&self, obs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = obs.dims4().map_err(|_| self.shape_err(obs))?;
        let chw = match self {
            Self::Conv { chw, .. } | Self::Patch { chw, .. } => *chw,
        };
        if (c, h, w) != chw {
            return Err(self.shape_err(obs));
        }
        match self {
            Self::Conv { convs, proj, .. } => {
                let mut x = obs.clone();
                for (i, conv) in convs.iter().enumerate() {
                    x = conv.forward(&x)?;
                    if i + 1 < convs.len() {
                        x = x.silu()?;
                    }
                }
                let x = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
                Ok(proj.forward(&x)?)
            }
            Self::Patch { proj, patch, .. } => {
                let p = *patch;
                let x = obs.reshape((b, c, h / p, p, w / p, p))?.permute([0, 2, 4, 1, 3, 5])?.reshape((
                    b,
                    (h / p) * (w / p),
                    c * p * p,
                ))?;
                Ok(proj.forward(&x)?)
            }
        }
    }

    fn shape_err(&self, obs: &Tensor) -> Error {
        let (c, h, w) = match self {
            Self::Conv { chw, .. } | Self::Patch { chw, .. } => *chw,
        };
        Error::Invalid(format!("observation must be (B, {c}, {h}, {w}), found {:?}", obs.shape()))
    }
}

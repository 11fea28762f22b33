//! `LDMDecoderFactorizedV2` of the official `modules/layers3d.py`, the dLDM's pixel decoder of the
//! warm-up stage: the first latent frame of the clip is repeated once per transition (+1), and the
//! code tokens enter through block-causal cross attention (latent frame i sees the codes of
//! transitions 0..i) in the middle block and the lowest-resolution up blocks; causal factorized
//! res blocks and hybrid upsampling then render (B, 3, 1 + tc * S, H, W).

use crate::config::Config;
use crate::haar;
use crate::layers3d::{
    silu, AttnBlock, CausalNormalize, CrossAttention, FactorizedConv, HybridUpsample, ResnetBlockFactorized,
    TemporalAttnBlock,
};
use crate::{Error, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;

/// The official decoder places its attention at this (hard-wired) resolution.
const DECODER_ATTN_RESOLUTION: usize = 64;

/// Cross attention to the codes, then spatial and temporal self-attention (keys `0`, `1`, `2`);
/// the first latent frame (the context) is left out of the cross attention.
#[derive(Debug, Clone)]
pub struct CodeAttn {
    cross: CrossAttention,
    spatial: AttnBlock,
    temporal: TemporalAttnBlock,
}

impl CodeAttn {
    /// Over `c` channels, codes of width `c`.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cross: CrossAttention::new(c, c, vb.pp("0"))?,
            spatial: AttnBlock::new(c, vb.pp("1"))?,
            temporal: TemporalAttnBlock::new(c, vb.pp("2"))?,
        })
    }

    /// h: (B, C, 1 + S, H, W), z: (B, S * Q, C) -> same shape as h.
    pub fn forward(&self, h: &Tensor, z: &Tensor) -> Result<Tensor> {
        let t = h.dim(2)?;
        let first = h.narrow(2, 0, 1)?;
        let rest = self.cross.forward(&h.narrow(2, 1, t - 1)?, z)?;
        let h = Tensor::cat(&[&first, &rest], 2)?;
        self.temporal.forward(&self.spatial.forward(&h)?)
    }
}

#[derive(Debug, Clone)]
struct UpLevel {
    blocks: Vec<ResnetBlockFactorized>,
    attn: Vec<CodeAttn>,
    upsample: Option<HybridUpsample>,
}

/// The official LDM_V2 decoder (keys under `decoder.`).
#[derive(Debug, Clone)]
pub struct LdmDecoderV2 {
    patch_size: usize,
    act_embedding_num: usize,
    conv_in: FactorizedConv,
    mid_block_1: ResnetBlockFactorized,
    mid_attn_1: CodeAttn,
    mid_block_2: ResnetBlockFactorized,
    /// indexed by level (0 = full resolution), run from the last level down
    up: Vec<UpLevel>,
    norm_out: CausalNormalize,
    conv_out: FactorizedConv,
}

impl LdmDecoderV2 {
    /// Builds the decoder of `cfg` (validated by the caller).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let levels = cfg.channels_mult.len();
        let out_ch = cfg.out_channels * p * p * p;
        let num_spatial_ups = (cfg.spatial_compression.ilog2() - p.ilog2()) as usize;
        let num_temporal_ups = (cfg.temporal_compression.ilog2() - p.ilog2()) as usize;
        let mut block_in = cfg.encoder_out_channels();
        let mut curr_res = (cfg.resolution / p) >> (levels - 1);
        let conv_in = FactorizedConv::new(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let vm = vb.pp("mid");
        let mid_block_1 = ResnetBlockFactorized::new(block_in, block_in, vm.pp("block_1"))?;
        let mid_attn_1 = CodeAttn::new(block_in, vm.pp("attn_1"))?;
        let mid_block_2 = ResnetBlockFactorized::new(block_in, block_in, vm.pp("block_2"))?;
        let mut up: Vec<Option<UpLevel>> = (0..levels).map(|_| None).collect();
        for i in (0..levels).rev() {
            let vl = vb.pp("up").pp(i);
            let block_out = cfg.channels * cfg.channels_mult[i];
            let mut blocks = Vec::new();
            let mut attn = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlockFactorized::new(block_in, block_out, vl.pp("block").pp(j))?);
                block_in = block_out;
                if curr_res == DECODER_ATTN_RESOLUTION {
                    attn.push(CodeAttn::new(block_in, vl.pp("attn").pp(j))?);
                }
            }
            let upsample = if i != 0 {
                let rev = levels - i - 1;
                let temporal =
                    if cfg.legacy_mode { rev < num_temporal_ups } else { 0 < rev && rev < num_temporal_ups + 1 };
                let spatial = temporal || (rev < num_spatial_ups && num_spatial_ups > num_temporal_ups);
                curr_res *= 2;
                Some(HybridUpsample::new(block_in, spatial, temporal, vl.pp("upsample"))?)
            } else {
                None
            };
            up[i] = Some(UpLevel { blocks, attn, upsample });
        }
        let up = up
            .into_iter()
            .map(|l| l.ok_or_else(|| Error::Invalid("decoder level not built".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_size: p,
            act_embedding_num: cfg.act_embedding_num,
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            up,
            norm_out: CausalNormalize::new(block_in, vb.pp("norm_out"))?,
            conv_out: FactorizedConv::new(block_in, out_ch, vb.pp("conv_out"))?,
        })
    }

    /// encoded: (B, C, T', h, w) encoder features (only the first latent frame is used);
    /// z: (B, z_channels, S * Q, 1, 1) code embeddings -> video (B, 3, 1 + tc * S, H, W).
    pub fn forward(&self, encoded: &Tensor, z: &Tensor) -> Result<Tensor> {
        let z = self.conv_in.forward(z)?;
        let (b, c, n, _, _) = z.dims5()?;
        let z = z.reshape((b, c, ()))?.transpose(1, 2)?.contiguous()?; // (B, S*Q, C)
        if n % self.act_embedding_num != 0 {
            return Err(Error::Invalid(format!(
                "{n} code tokens is not a multiple of {} per step",
                self.act_embedding_num
            )));
        }
        let frames = n / self.act_embedding_num + 1;
        let (eb, ec, _, eh, ew) = encoded.dims5()?;
        let mut h = encoded.narrow(2, 0, 1)?.broadcast_as((eb, ec, frames, eh, ew))?.contiguous()?;
        h = self.mid_block_1.forward(&h)?;
        h = self.mid_attn_1.forward(&h, &z)?;
        h = self.mid_block_2.forward(&h)?;
        for level in self.up.iter().rev() {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attn) = level.attn.get(j) {
                    h = attn.forward(&h, &z)?;
                }
            }
            if let Some(us) = &level.upsample {
                h = us.forward(&h)?;
            }
        }
        let h = self.conv_out.forward(&silu(&self.norm_out.forward(&h)?)?)?;
        haar::unpatch3d(&h, self.patch_size)
    }
}

//! `LDMEncoderFactorized` of the official `modules/layers3d.py`: Haar patching, a causal factorized
//! 3D conv encoder (res blocks, attention at `attn_resolutions`, hybrid downsampling, a middle block
//! with spatial + temporal attention), then the Q-Former that turns each pair of adjacent latent
//! frames into `act_embedding_num` query vectors, projected to `z_channels`.

use crate::config::Config;
use crate::haar;
use crate::layers3d::{
    silu, AttnBlock, CausalConv3d, CausalNormalize, FactorizedConv, HybridDownsample, ResnetBlockFactorized,
    TemporalAttnBlock,
};
use crate::qformer::{PositionEmbeddingRandom, QFormerAdjacentFSingleQ};
use crate::{Error, Result};
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

/// Spatial attention then causal temporal attention (`nn.Sequential` keys `0`, `1`).
#[derive(Debug, Clone)]
pub struct SpaceTimeAttn {
    spatial: AttnBlock,
    temporal: TemporalAttnBlock,
}

impl SpaceTimeAttn {
    /// Over `c` channels.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { spatial: AttnBlock::new(c, vb.pp("0"))?, temporal: TemporalAttnBlock::new(c, vb.pp("1"))? })
    }

    /// x: (B, C, T, H, W) -> same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.temporal.forward(&self.spatial.forward(x)?)
    }
}

#[derive(Debug, Clone)]
struct DownLevel {
    blocks: Vec<ResnetBlockFactorized>,
    attn: Vec<SpaceTimeAttn>,
    downsample: Option<HybridDownsample>,
}

/// The official LDM encoder (keys under `encoder.`).
#[derive(Debug, Clone)]
pub struct LdmEncoder {
    patch_size: usize,
    conv_in: FactorizedConv,
    down: Vec<DownLevel>,
    mid_block_1: ResnetBlockFactorized,
    mid_attn_1: SpaceTimeAttn,
    mid_block_2: ResnetBlockFactorized,
    norm_out: CausalNormalize,
    pos_embedding: PositionEmbeddingRandom,
    act: Tensor,
    qformer_ldm: QFormerAdjacentFSingleQ,
    outproj_ldm: CausalConv3d,
}

impl LdmEncoder {
    /// Builds the encoder of `cfg` (validated by the caller).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let in_ch = cfg.in_channels * p * p * p;
        let levels = cfg.channels_mult.len();
        let num_spatial_downs = (cfg.spatial_compression.ilog2() - p.ilog2()) as usize;
        let num_temporal_downs = (cfg.temporal_compression.ilog2() - p.ilog2()) as usize;
        let conv_in = FactorizedConv::new(in_ch, cfg.channels, vb.pp("conv_in"))?;
        let mut curr_res = cfg.resolution / p;
        let mut block_in = cfg.channels;
        let mut down = Vec::with_capacity(levels);
        for (i, &mult) in cfg.channels_mult.iter().enumerate() {
            let vl = vb.pp("down").pp(i);
            let block_out = cfg.channels * mult;
            let mut blocks = Vec::new();
            let mut attn = Vec::new();
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlockFactorized::new(block_in, block_out, vl.pp("block").pp(j))?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&curr_res) {
                    attn.push(SpaceTimeAttn::new(block_in, vl.pp("attn").pp(j))?);
                }
            }
            let downsample = if i + 1 != levels {
                let ds = HybridDownsample::new(
                    block_in,
                    i < num_spatial_downs,
                    i < num_temporal_downs,
                    vl.pp("downsample"),
                )?;
                curr_res /= 2;
                Some(ds)
            } else {
                None
            };
            down.push(DownLevel { blocks, attn, downsample });
        }
        let vm = vb.pp("mid");
        let dim = cfg.qformer_dim;
        Ok(Self {
            patch_size: p,
            conv_in,
            down,
            mid_block_1: ResnetBlockFactorized::new(block_in, block_in, vm.pp("block_1"))?,
            mid_attn_1: SpaceTimeAttn::new(block_in, vm.pp("attn_1"))?,
            mid_block_2: ResnetBlockFactorized::new(block_in, block_in, vm.pp("block_2"))?,
            norm_out: CausalNormalize::new(block_in, vb.pp("norm_out"))?,
            pos_embedding: PositionEmbeddingRandom::new(dim / 2, vb.pp("pos_embedding"))?,
            act: vb.pp("act").get_with_hints(
                (cfg.act_embedding_num, dim),
                "weight",
                Init::Randn { mean: 0.0, stdev: 1.0 },
            )?,
            qformer_ldm: QFormerAdjacentFSingleQ::new(cfg.qformer_depth, dim, cfg.qformer_heads, vb.pp("qformer_ldm"))?,
            outproj_ldm: CausalConv3d::pointwise(dim, cfg.z_channels * cfg.z_factor, vb.pp("outproj_ldm"))?,
        })
    }

    /// The conv trunk: x (B, C, T, H, W) -> features (B, qformer_dim, 1 + (T-1)/tc, H/sc, W/sc).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(&haar::patch3d(x, self.patch_size)?)?;
        for level in &self.down {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attn) = level.attn.get(j) {
                    h = attn.forward(&h)?;
                }
            }
            if let Some(ds) = &level.downsample {
                h = ds.forward(&h)?;
            }
        }
        let h = self.mid_block_1.forward(&h)?;
        let h = self.mid_attn_1.forward(&h)?;
        let h = self.mid_block_2.forward(&h)?;
        silu(&self.norm_out.forward(&h)?)
    }

    /// The Q-Former queries of features h (B, C, T', h, w), T' >= 2 -> (B, z_channels, (T'-1) * Q, 1, 1).
    pub fn queries(&self, h: &Tensor) -> Result<Tensor> {
        let (b, c, t, hh, ww) = h.dims5()?;
        let pe = self.pos_embedding.forward(hh, ww)?.to_dtype(h.dtype())?; // (C, h, w)
        if pe.dim(0)? != c {
            return Err(Error::Invalid(format!(
                "encoder features have {c} channels, the Q-Former expects {}",
                pe.dim(0)?
            )));
        }
        let pe = pe.unsqueeze(1)?.unsqueeze(0)?.broadcast_as((b, c, t, hh, ww))?;
        let q = self.act.unsqueeze(0)?.broadcast_as((b, self.act.dim(0)?, c))?;
        let out = self.qformer_ldm.forward(h, &pe, &q)?; // (B, S*Q, C)
        let out = out.transpose(1, 2)?.unsqueeze(3)?.unsqueeze(4)?;
        self.outproj_ldm.forward(&out)
    }

    /// x: (B, C, T, H, W) -> (features, queries); queries is `None` for a one-latent-frame clip.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let h = self.features(x)?;
        let q = if h.dim(2)? > 1 { Some(self.queries(&h)?) } else { None };
        Ok((h, q))
    }
}

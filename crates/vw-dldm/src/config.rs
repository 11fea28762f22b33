//! The tokenizer's hyperparameters, named as the kwargs of the official
//! `CausalDiscreteVideoLatentDynamicTokenizer` (`configs/base/config_ldm.py` + `experiment/openx.py`),
//! so an official network config deserialises as is. Fields the official code hard-wires are ours
//! (`qformer_dim`, `qformer_depth`, `qformer_heads`, `connector_dim`), defaulting to its constants.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Configuration of [`crate::tokenizer::CausalDiscreteVideoLatentDynamicTokenizer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Encoder levels whose resolution (input / patch / 2^level) is listed get spatial+temporal attention.
    pub attn_resolutions: Vec<usize>,
    /// Base channel width of the encoder and decoder.
    pub channels: usize,
    /// Channel multiplier of each resolution level.
    pub channels_mult: Vec<usize>,
    /// Dropout inside res blocks (the official runs use 0; we do not apply dropout).
    pub dropout: f64,
    /// Input video channels.
    pub in_channels: usize,
    /// Res blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Output video channels.
    pub out_channels: usize,
    /// Nominal resolution; only places attention (encoder `attn_resolutions`, decoder at 64).
    pub resolution: usize,
    /// Haar wavelet patch size (space and time).
    pub patch_size: usize,
    /// Patching method; only "haar" is implemented.
    pub patch_method: String,
    /// Channels of the Q-Former output projection and of the decoder's code input.
    pub z_channels: usize,
    /// Multiplier of `z_channels` on the encoder side (1 in every official config).
    pub z_factor: usize,
    /// GroupNorm groups (the LDM encoder / decoder always use 1).
    pub num_groups: usize,
    /// Mirrored (false) or legacy (true) temporal upsampling in the decoder.
    pub legacy_mode: bool,
    /// Total spatial downsampling (patch included).
    pub spatial_compression: usize,
    /// Total temporal downsampling (patch included).
    pub temporal_compression: usize,
    /// "FSQ" (official) or "VQ".
    pub quantizer: String,
    /// Dimension of a code vector (= number of FSQ levels).
    pub embedding_dim: usize,
    /// FSQ levels per code dimension.
    pub levels: Vec<usize>,
    /// VQ codebook size (only with `quantizer = "VQ"`).
    pub num_embeddings: Option<usize>,
    /// Encoder class; only "LDM" (`LDMEncoderFactorized`) is implemented.
    pub encoder: String,
    /// Decoder class; only "LDM_V2" (`LDMDecoderFactorizedV2`) is implemented.
    pub decoder: String,
    /// DiT connector; only "conv" (a factorized res block) is implemented.
    pub connector_type: String,
    /// Learned queries (codes) per transition.
    pub act_embedding_num: usize,
    /// Q-Former class; only "QFormerAdjacentFSingleQ" is implemented.
    pub qformer_type: String,
    /// Q-Former width (hard-wired 512 officially); must equal `channels * channels_mult.last()`.
    pub qformer_dim: usize,
    /// Q-Former blocks (2 officially).
    pub qformer_depth: usize,
    /// Q-Former heads (4 officially).
    pub qformer_heads: usize,
    /// Output width of `quant_to_dit_dim`, the DiT's cross-attention width (1024 officially).
    pub connector_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::openx()
    }
}

impl Config {
    /// The official dLDM of `experiment/openx.py` (142.6 M parameters).
    pub fn openx() -> Self {
        Self {
            attn_resolutions: vec![32],
            channels: 128,
            channels_mult: vec![2, 4, 4],
            dropout: 0.0,
            in_channels: 3,
            num_res_blocks: 2,
            out_channels: 3,
            resolution: 1024,
            patch_size: 4,
            patch_method: "haar".into(),
            z_channels: 256,
            z_factor: 1,
            num_groups: 1,
            legacy_mode: false,
            spatial_compression: 16,
            temporal_compression: 4,
            quantizer: "FSQ".into(),
            embedding_dim: 4,
            levels: vec![8, 5, 5, 5],
            num_embeddings: None,
            encoder: "LDM".into(),
            decoder: "LDM_V2".into(),
            connector_type: "conv".into(),
            act_embedding_num: 4,
            qformer_type: "QFormerAdjacentFSingleQ".into(),
            qformer_dim: 512,
            qformer_depth: 2,
            qformer_heads: 4,
            connector_dim: 1024,
        }
    }

    /// A small model with the official layout that trains on 32x32 or 64x64 clips on a 2-core CPU
    /// (widths 8/16/32, one res block per level; 64x64 clips give 4x4 latents, 32x32 give 2x2).
    pub fn tiny() -> Self {
        Self {
            channels: 8,
            channels_mult: vec![1, 2, 4],
            num_res_blocks: 1,
            z_channels: 16,
            qformer_dim: 32,
            connector_dim: 32,
            ..Self::openx()
        }
    }

    /// Number of codes (FSQ: product of the levels; VQ: codebook size).
    pub fn vocab_size(&self) -> usize {
        match self.quantizer.as_str() {
            "VQ" => self.num_embeddings.unwrap_or(0),
            _ => self.levels.iter().product(),
        }
    }

    /// Width of the encoder's last level (the Q-Former's keys).
    pub fn encoder_out_channels(&self) -> usize {
        self.channels * self.channels_mult.last().copied().unwrap_or(0)
    }

    /// Checks that this config describes a model we implement, with a message naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("dLDM config: {m}")));
        let is_pow2 = |n: usize| n > 0 && n.is_power_of_two();
        if self.encoder != "LDM" {
            return bad(format!("encoder {:?} not implemented (only \"LDM\")", self.encoder));
        }
        if self.decoder != "LDM_V2" {
            return bad(format!("decoder {:?} not implemented (only \"LDM_V2\")", self.decoder));
        }
        if self.qformer_type != "QFormerAdjacentFSingleQ" {
            return bad(format!("qformer_type {:?} not implemented", self.qformer_type));
        }
        if self.patch_method != "haar" {
            return bad(format!("patch_method {:?} not implemented (only \"haar\")", self.patch_method));
        }
        if self.connector_type != "conv" {
            return bad(format!("connector_type {:?} not implemented (only \"conv\")", self.connector_type));
        }
        if self.channels_mult.is_empty() || self.channels == 0 || self.num_res_blocks == 0 {
            return bad("channels, channels_mult and num_res_blocks must be non-zero".into());
        }
        if self.qformer_dim != self.encoder_out_channels() {
            return bad(format!(
                "qformer_dim {} must equal channels * channels_mult[-1] = {}",
                self.qformer_dim,
                self.encoder_out_channels()
            ));
        }
        if self.qformer_heads == 0 || !(self.qformer_dim / 2).is_multiple_of(self.qformer_heads) {
            return bad(format!(
                "qformer_heads {} must divide qformer_dim / 2 = {}",
                self.qformer_heads,
                self.qformer_dim / 2
            ));
        }
        if !self.qformer_dim.is_multiple_of(4) {
            return bad(format!("qformer_dim {} must be a multiple of 4", self.qformer_dim));
        }
        for (name, v) in [
            ("patch_size", self.patch_size),
            ("spatial_compression", self.spatial_compression),
            ("temporal_compression", self.temporal_compression),
        ] {
            if !is_pow2(v) {
                return bad(format!("{name} {v} must be a power of two"));
            }
        }
        let (p, s, t) = (self.patch_size.ilog2(), self.spatial_compression.ilog2(), self.temporal_compression.ilog2());
        let levels = self.channels_mult.len() as u32;
        if s < p || t < p || s - p > levels || t - p > levels {
            return bad(format!(
                "compression (spatial {}, temporal {}) must be >= patch_size {} and at most {} levels beyond it",
                self.spatial_compression, self.temporal_compression, self.patch_size, levels
            ));
        }
        match self.quantizer.as_str() {
            "FSQ" => {
                if self.levels.len() != self.embedding_dim || self.levels.iter().any(|&l| l < 2) {
                    return bad(format!(
                        "FSQ levels {:?} must have embedding_dim {} entries >= 2",
                        self.levels, self.embedding_dim
                    ));
                }
            }
            "VQ" => {
                if self.num_embeddings.unwrap_or(0) == 0 {
                    return bad("quantizer VQ needs num_embeddings".into());
                }
            }
            q => return bad(format!("quantizer {q:?} not implemented (FSQ or VQ)")),
        }
        if self.act_embedding_num == 0 || self.z_channels == 0 || self.embedding_dim == 0 {
            return bad("act_embedding_num, z_channels and embedding_dim must be non-zero".into());
        }
        Ok(())
    }

    /// Reads a config from JSON (an official network kwargs dict, or one of ours).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not a dLDM config: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        Config::openx().validate().unwrap();
        Config::tiny().validate().unwrap();
        assert_eq!(Config::openx().vocab_size(), 1000);
    }

    #[test]
    fn official_kwargs_deserialise() {
        let json = r#"{"decoder": "LDM_V2", "levels": [8,5,5,5], "embedding_dim": 4, "persistent_quantizer": false,
            "z_channels": 256, "channels_mult": [2, 4, 4], "patch_size": 4, "legacy_mode": false,
            "temporal_compression": 4, "spatial_compression": 16, "act_embedding_num": 4,
            "qformer_type": "QFormerAdjacentFSingleQ", "name": "CausalDiscreteFactorizedVideoLatentDynamicTokenizer"}"#;
        let cfg: Config = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, Config::openx());
    }

    #[test]
    fn width_mismatch_is_rejected() {
        let cfg = Config { qformer_dim: 64, ..Config::tiny() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("qformer_dim 64"), "{err}");
    }
}

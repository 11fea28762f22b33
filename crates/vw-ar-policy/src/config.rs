//! Configurations of the policy transformer, its observation encoder and the action decoder.
//!
//! The transformer fields use the Llama names of Hugging Face `config.json` (`hidden_size`,
//! `num_hidden_layers`, ...), so the same numbers build the PyTorch `LlamaForCausalLM` that the
//! benchmark compares against.

use crate::tokens::Vocab;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}

/// How the first frame becomes observation tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObsEncoderConfig {
    /// A small stride-2 conv stack over an RGB frame `(B, in_channels, image_size, image_size)`; one
    /// token per cell of the final feature map (`(image_size >> channels.len())^2` tokens).
    Conv {
        /// Input channels (3 for RGB).
        in_channels: usize,
        /// Output channels of each 4x4 stride-2 conv; each halves the resolution.
        channels: Vec<usize>,
        /// Side of the square input frame in pixels.
        image_size: usize,
    },
    /// Patchified VAE latents `(B, in_channels, latent_size, latent_size)`: one linear token per
    /// `patch_size x patch_size` patch.
    Patch {
        /// Latent channels (16 for the Wan2.1 VAE).
        in_channels: usize,
        /// Side of a square patch in latent cells.
        patch_size: usize,
        /// Side of the square latent grid.
        latent_size: usize,
    },
}

impl ObsEncoderConfig {
    /// Number of observation tokens one frame becomes.
    pub fn num_tokens(&self) -> usize {
        match self {
            Self::Conv { channels, image_size, .. } => {
                let side = image_size >> channels.len();
                side * side
            }
            Self::Patch { patch_size, latent_size, .. } => {
                let side = latent_size / patch_size;
                side * side
            }
        }
    }

    /// Expected input shape `(C, H, W)` of one observation.
    pub fn input_chw(&self) -> (usize, usize, usize) {
        match self {
            Self::Conv { in_channels, image_size, .. } => (*in_channels, *image_size, *image_size),
            Self::Patch { in_channels, latent_size, .. } => (*in_channels, *latent_size, *latent_size),
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Self::Conv { in_channels, channels, image_size } => {
                if *in_channels == 0 || channels.is_empty() || channels.contains(&0) {
                    return Err(Error::Invalid(format!(
                        "obs_encoder conv: bad channels {in_channels} -> {channels:?}"
                    )));
                }
                if *image_size == 0 || !image_size.is_multiple_of(1 << channels.len()) {
                    return Err(Error::Invalid(format!(
                        "obs_encoder conv: image_size {image_size} must be a positive multiple of 2^{}",
                        channels.len()
                    )));
                }
            }
            Self::Patch { in_channels, patch_size, latent_size } => {
                if *in_channels == 0
                    || *patch_size == 0
                    || *latent_size == 0
                    || !latent_size.is_multiple_of(*patch_size)
                {
                    return Err(Error::Invalid(format!(
                        "obs_encoder patch: latent_size {latent_size} must be a positive multiple of patch_size \
                         {patch_size} (in_channels {in_channels})"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The autoregressive policy: a Llama-style decoder over
/// `[observation tokens | task text tokens | BOS codes.. EOS | BOS codes.. EOS | ... | EOT]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Attention heads (multi-head; keys and values have as many heads as queries).
    pub num_attention_heads: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding frequencies.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence (prefix + code tokens) the rotary tables and caches are built for.
    pub max_position_embeddings: usize,
    /// Size of the dLDM code vocabulary (1000 for FSQ [8,5,5,5]).
    pub code_vocab_size: usize,
    /// Codes per transition (`LatentDynamics::codes_per_step`, the Q-Former queries).
    pub codes_per_transition: usize,
    /// Transitions per policy step: one step is one rendered clip of this many transitions.
    pub transitions_per_step: usize,
    /// Size of the task-text vocabulary; 0 means the policy takes no text.
    #[serde(default)]
    pub text_vocab_size: usize,
    /// How the first frame becomes tokens.
    pub obs_encoder: ObsEncoderConfig,
}

impl PolicyConfig {
    /// A configuration that trains on 2 CPU cores in minutes (CraftWorld 64x64 frames,
    /// FSQ [8,5,5,5] codes, 2 transitions x 4 codes per step).
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 176,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            code_vocab_size: 1000,
            codes_per_transition: 4,
            transitions_per_step: 2,
            text_vocab_size: 0,
            obs_encoder: ObsEncoderConfig::Conv { in_channels: 3, channels: vec![16, 32, 64, 64], image_size: 64 },
        }
    }

    /// About 310 M parameters (1024 wide, 24 layers, 16 heads, SwiGLU 2816): the benchmark shape.
    pub fn m300() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 2816,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 4096,
            code_vocab_size: 1000,
            codes_per_transition: 4,
            transitions_per_step: 2,
            text_vocab_size: 0,
            obs_encoder: ObsEncoderConfig::Conv { in_channels: 3, channels: vec![64, 128, 256, 512], image_size: 64 },
        }
    }

    /// `tiny`, `300m`, or a path to a JSON file with these fields.
    pub fn from_name_or_file(s: &str) -> Result<Self> {
        let cfg = match s {
            "tiny" => Self::tiny(),
            "300m" | "m300" => Self::m300(),
            path => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{path}: {e}")))?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The token layout (codes, then the special tokens).
    pub fn vocab(&self) -> Vocab {
        Vocab::new(self.code_vocab_size)
    }

    /// Size of the output vocabulary: codes plus the special tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab().size()
    }

    /// Code tokens between the begin- and end-of-step markers of one step.
    pub fn codes_per_step(&self) -> usize {
        self.codes_per_transition * self.transitions_per_step
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the numbers fit together, so a bad config fails here and not deep in a matmul.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for rotary embeddings", self.head_dim()));
        }
        if self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad("intermediate_size and num_hidden_layers must be positive".into());
        }
        if self.code_vocab_size == 0 || self.codes_per_transition == 0 || self.transitions_per_step == 0 {
            return bad("code_vocab_size, codes_per_transition and transitions_per_step must be positive".into());
        }
        self.obs_encoder.validate()?;
        if self.max_position_embeddings <= self.obs_encoder.num_tokens() + self.codes_per_step() + 3 {
            return bad(format!(
                "max_position_embeddings {} leaves no room for one step after {} observation tokens",
                self.max_position_embeddings,
                self.obs_encoder.num_tokens()
            ));
        }
        Ok(())
    }

    /// Transformer parameters (without the observation encoder), for reports.
    pub fn num_transformer_params(&self) -> usize {
        let h = self.hidden_size;
        let per_layer = 4 * h * h + 3 * h * self.intermediate_size + 2 * h;
        2 * self.vocab_size() * h + self.num_hidden_layers * per_layer + h + self.text_vocab_size * h
    }
}

/// The action decoder (inverse dynamics): `(observation, codes of a step) -> action chunk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionDecoderConfig {
    /// Input channels of the observation frame.
    pub in_channels: usize,
    /// Side of the square observation frame.
    pub image_size: usize,
    /// Output channels of each 4x4 stride-2 conv of the frame encoder.
    pub channels: Vec<usize>,
    /// Size of the code vocabulary.
    pub code_vocab_size: usize,
    /// Codes of one step fed to the decoder.
    pub codes_per_step: usize,
    /// Width of each code embedding.
    pub code_embed_dim: usize,
    /// Width of the hidden MLP layers.
    pub hidden_size: usize,
    /// Low-level actions predicted per step (frames of the chunk).
    pub chunk_len: usize,
    /// Dimensions of one action (3 for CraftWorld: dx, dy, grip).
    pub action_dim: usize,
}

impl ActionDecoderConfig {
    /// A CraftWorld-sized decoder: 64x64 RGB, 8 codes per step, chunks of 8 actions of (dx, dy, grip).
    pub fn tiny() -> Self {
        Self {
            in_channels: 3,
            image_size: 64,
            channels: vec![16, 32, 32, 32],
            code_vocab_size: 1000,
            codes_per_step: 8,
            code_embed_dim: 16,
            hidden_size: 128,
            chunk_len: 8,
            action_dim: 3,
        }
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        let ok = self.in_channels > 0
            && !self.channels.is_empty()
            && !self.channels.contains(&0)
            && self.image_size > 0
            && self.image_size.is_multiple_of(1 << self.channels.len())
            && self.code_vocab_size > 0
            && self.code_embed_dim > 0
            && self.hidden_size > 0
            && self.chunk_len > 0
            && self.action_dim > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!("invalid action decoder config {self:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m300_is_about_300m_and_json_round_trips() {
        let c = PolicyConfig::m300();
        c.validate().unwrap();
        let n = c.num_transformer_params();
        assert!((290_000_000..330_000_000).contains(&n), "{n}");
        let back: PolicyConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(PolicyConfig::tiny().obs_encoder.num_tokens(), 16);
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut c = PolicyConfig::tiny();
        c.num_attention_heads = 5;
        assert!(c.validate().is_err());
        let mut c = PolicyConfig::tiny();
        c.obs_encoder = ObsEncoderConfig::Patch { in_channels: 16, patch_size: 3, latent_size: 8 };
        assert!(c.validate().is_err());
    }
}

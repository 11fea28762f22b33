//! The whole dLDM tokenizer, `CausalDiscreteVideoLatentDynamicTokenizer` of the official
//! `latent_dynamics/discrete_video_latent_dynamic.py`: encoder + Q-Former -> `quant_conv` -> FSQ
//! codes; codes -> `post_quant_conv` -> LDM_V2 pixel decoder (warm-up stage), or -> the
//! `quant_to_dit_dim` connector that feeds the video diffusion model.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use vw_dldm::{config::Config, tokenizer::Tokenizer, LatentDynamics};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let tok = Tokenizer::new(&Config::tiny(), vb)?;
//! // 1 context frame + 2 transitions of 4 frames, 32x32
//! let clip = Tensor::rand(-1f32, 1., (1, 3, 9, 32, 32), &Device::Cpu)?;
//! let codes = tok.encode_codes(&clip)?; // (1, 2, 4) indices in 0..1000
//! assert_eq!(codes.dims(), &[1, 2, 4]);
//! let future = tok.render(&clip.narrow(2, 0, 1)?, &codes)?; // (1, 3, 8, 32, 32)
//! assert_eq!(future.dims(), &[1, 3, 8, 32, 32]);
//! # Ok::<(), vw_dldm::Error>(())
//! ```

use crate::config::Config;
use crate::decoder::LdmDecoderV2;
use crate::encoder::LdmEncoder;
use crate::layers3d::{CausalConv3d, ResnetBlockFactorized};
use crate::quantizer::Quantizer;
use crate::{Error, LatentDynamics, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

/// Short name of [`CausalDiscreteVideoLatentDynamicTokenizer`].
pub type Tokenizer = CausalDiscreteVideoLatentDynamicTokenizer;

/// Everything `encode` computes for a clip of `1 + tc * S` frames.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Encoder features (B, qformer_dim, 1 + S, H / sc, W / sc).
    pub features: Tensor,
    /// Pre-quantization code vectors, after `quant_conv` (B, embedding_dim, S * Q, 1, 1).
    pub query: Tensor,
    /// Code indices (B, S * Q, 1, 1), u32; transition s owns rows s*Q..(s+1)*Q.
    pub indices: Tensor,
    /// Quantized code vectors (B, embedding_dim, S * Q, 1, 1), straight-through w.r.t. `query`.
    pub codes: Tensor,
    /// The quantizer's loss (zero for FSQ).
    pub quant_loss: Tensor,
}

/// The dLDM tokenizer (keys as the official `network.*` state dict, without the prefix).
#[derive(Debug, Clone)]
pub struct CausalDiscreteVideoLatentDynamicTokenizer {
    cfg: Config,
    encoder: LdmEncoder,
    decoder: LdmDecoderV2,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    quant_to_dit_dim: ResnetBlockFactorized,
    quantizer: Quantizer,
}

impl CausalDiscreteVideoLatentDynamicTokenizer {
    /// Builds the tokenizer of `cfg`; `vb` is a VarMap builder (training) or loaded weights.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let zc = cfg.z_channels * cfg.z_factor;
        Ok(Self {
            cfg: cfg.clone(),
            encoder: LdmEncoder::new(cfg, vb.pp("encoder"))?,
            decoder: LdmDecoderV2::new(cfg, vb.pp("decoder"))?,
            quant_conv: CausalConv3d::pointwise(zc, cfg.embedding_dim, vb.pp("quant_conv"))?,
            post_quant_conv: CausalConv3d::pointwise(cfg.embedding_dim, cfg.z_channels, vb.pp("post_quant_conv"))?,
            quant_to_dit_dim: ResnetBlockFactorized::new(cfg.z_channels, cfg.connector_dim, vb.pp("quant_to_dit_dim"))?,
            quantizer: Quantizer::new(cfg, vb.pp("quantizer"))?,
        })
    }

    /// The config this model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The encoder (for its features alone, e.g. of a single context frame).
    pub fn encoder(&self) -> &LdmEncoder {
        &self.encoder
    }

    /// The quantizer.
    pub fn quantizer(&self) -> &Quantizer {
        &self.quantizer
    }

    /// Checks a clip (B, in_channels, 1 + tc * S, H, W) with H, W multiples of the spatial compression.
    pub fn check_clip(&self, x: &Tensor, min_steps: usize) -> Result<()> {
        let c = &self.cfg;
        let dims = x.dims();
        let ok = dims.len() == 5
            && dims[1] == c.in_channels
            && dims[2] > c.temporal_compression * min_steps
            && (dims[2] - 1).is_multiple_of(c.temporal_compression)
            && dims[3].is_multiple_of(c.spatial_compression)
            && dims[4].is_multiple_of(c.spatial_compression);
        if !ok {
            return Err(Error::Invalid(format!(
                "dLDM clip {:?}: expected (B, {}, 1 + {}*S with S >= {min_steps}, H, W) with H and W multiples of {}",
                x.shape(),
                c.in_channels,
                c.temporal_compression,
                c.spatial_compression
            )));
        }
        Ok(())
    }

    /// Encodes a clip x (B, C, 1 + tc * S, H, W), S >= 1, in [-1, 1].
    pub fn encode(&self, x: &Tensor) -> Result<Encoded> {
        self.check_clip(x, 1)?;
        let (features, query) = self.encoder.forward(x)?;
        let query =
            query.ok_or_else(|| Error::Invalid("clip has a single latent frame: no transition to encode".into()))?;
        let query = self.quant_conv.forward(&query)?;
        let q = self.quantizer.forward(&query)?;
        Ok(Encoded { features, query, indices: q.indices, codes: q.codes, quant_loss: q.loss })
    }

    /// Renders (B, out_channels, 1 + tc * S, H, W) from encoder features (first latent frame used)
    /// and quantized codes (B, embedding_dim, S * Q, 1, 1).
    pub fn decode(&self, features: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let z = self.post_quant_conv.forward(codes)?;
        self.decoder.forward(features, &z)
    }

    /// [`Self::decode`] from code indices (B, S * Q, 1, 1) or (B, S, Q).
    pub fn decode_code(&self, features: &Tensor, indices: &Tensor) -> Result<Tensor> {
        let b = indices.dim(0)?;
        let flat = indices.reshape((b, (), 1, 1))?;
        let codes = self.quantizer.indices_to_codes(&flat, features.dtype())?;
        self.decode(features, &codes)
    }

    /// Encode then decode: the warm-up stage's reconstruction (B, C, T, H, W) and the encoding.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Encoded)> {
        let enc = self.encode(x)?;
        let recon = self.decode(&enc.features, &enc.codes)?;
        Ok((recon, enc))
    }

    /// The DiT conditioning of quantized codes (B, embedding_dim, S * Q, 1, 1):
    /// `quant_to_dit_dim(post_quant_conv(codes))` as tokens (B, S * Q, connector_dim).
    pub fn connector(&self, codes: &Tensor) -> Result<Tensor> {
        let h = self.quant_to_dit_dim.forward(&self.post_quant_conv.forward(codes)?)?;
        let (b, c, _, _, _) = h.dims5()?;
        Ok(h.reshape((b, c, ()))?.transpose(1, 2)?.contiguous()?)
    }

    /// Indices (B, S * Q, 1, 1) -> (B, S, Q).
    pub fn indices_to_steps(&self, indices: &Tensor) -> Result<Tensor> {
        let b = indices.dim(0)?;
        Ok(indices.reshape((b, (), self.cfg.act_embedding_num))?)
    }
}

impl LatentDynamics for CausalDiscreteVideoLatentDynamicTokenizer {
    fn encode_codes(&self, frames: &Tensor) -> Result<Tensor> {
        let enc = self.encode(frames)?;
        self.indices_to_steps(&enc.indices)
    }

    fn render(&self, context: &Tensor, codes: &Tensor) -> Result<Tensor> {
        if context.rank() != 5 || codes.rank() != 3 || codes.dim(2)? != self.cfg.act_embedding_num {
            return Err(Error::Invalid(format!(
                "render: context {:?} must be (B, C, T, H, W) and codes {:?} (B, S, {})",
                context.shape(),
                codes.shape(),
                self.cfg.act_embedding_num
            )));
        }
        let t = context.dim(2)?;
        let current = context.narrow(2, t - 1, 1)?;
        self.check_clip(&current, 0)?;
        let features = self.encoder.features(&current)?;
        let video = self.decode_code(&features, &codes.to_dtype(DType::U32)?)?;
        let n = video.dim(2)?;
        Ok(video.narrow(2, 1, n - 1)?)
    }

    fn codes_per_step(&self) -> usize {
        self.cfg.act_embedding_num
    }

    fn vocab_size(&self) -> usize {
        self.quantizer.vocab_size()
    }

    fn frames_per_code_step(&self) -> usize {
        self.cfg.temporal_compression
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn tiny() -> (Tokenizer, VarMap) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let tok = Tokenizer::new(&Config::tiny(), vb).unwrap();
        (tok, varmap)
    }

    /// A deterministic clip (B, 3, T, H, W) in [-1, 1] with structure in space and time.
    fn clip(b: usize, t: usize, h: usize, w: usize, phase: f32) -> Tensor {
        let mut v = Vec::with_capacity(b * 3 * t * h * w);
        for bi in 0..b {
            for c in 0..3 {
                for ti in 0..t {
                    for y in 0..h {
                        for x in 0..w {
                            let a =
                                0.3 * x as f32 * (1 + bi) as f32 + 0.2 * y as f32 * (1 + c) as f32 + phase * ti as f32;
                            v.push((2.0 * a.sin()).tanh());
                        }
                    }
                }
            }
        }
        Tensor::from_vec(v, (b, 3, t, h, w), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn shapes() {
        let (tok, _) = tiny();
        let x = clip(2, 9, 32, 32, 0.9);
        let enc = tok.encode(&x).unwrap();
        assert_eq!(enc.features.dims(), &[2, 32, 3, 2, 2]);
        assert_eq!(enc.query.dims(), &[2, 4, 8, 1, 1]);
        assert_eq!(enc.indices.dims(), &[2, 8, 1, 1]);
        assert_eq!(enc.indices.dtype(), DType::U32);
        assert_eq!(enc.codes.dims(), &[2, 4, 8, 1, 1]);
        let recon = tok.decode(&enc.features, &enc.codes).unwrap();
        assert_eq!(recon.dims(), x.dims());
        assert_eq!(tok.connector(&enc.codes).unwrap().dims(), &[2, 8, 32]);
        let codes = tok.encode_codes(&x).unwrap();
        assert_eq!(codes.dims(), &[2, 2, 4]);
        let max = codes.flatten_all().unwrap().max(0).unwrap().to_scalar::<u32>().unwrap();
        assert!((max as usize) < tok.vocab_size());
        let future = tok.render(&x.narrow(2, 0, 3).unwrap(), &codes).unwrap();
        assert_eq!(future.dims(), &[2, 3, 8, 32, 32]);
        // 64x64 clips give 4x4 latents
        let enc = tok.encode(&clip(1, 5, 64, 64, 0.5)).unwrap();
        assert_eq!(enc.features.dims(), &[1, 32, 2, 4, 4]);
        // bad clip lengths and sizes are errors, not panics
        assert!(tok.encode(&clip(1, 8, 32, 32, 0.5)).is_err());
        assert!(tok.encode(&clip(1, 5, 24, 32, 0.5)).is_err());
        assert!(tok.encode(&clip(1, 1, 32, 32, 0.5)).is_err());
    }

    #[test]
    fn future_frames_never_change_earlier_codes() {
        let (tok, _) = tiny();
        let x = clip(1, 13, 32, 32, 0.7); // 3 transitions
        let enc = tok.encode(&x).unwrap();
        // perturb frames 5.. (transitions 1 and 2); transition 0 sees frames 0..=4 only
        let head = x.narrow(2, 0, 5).unwrap();
        let tail = (x.narrow(2, 5, 8).unwrap() * -0.8).unwrap();
        let y = Tensor::cat(&[&head, &tail], 2).unwrap();
        let enc2 = tok.encode(&y).unwrap();
        let q = 4;
        let step = |t: &Tensor, s: usize| t.narrow(2, s * q, q).unwrap();
        assert!(max_abs_diff(&step(&enc.query, 0), &step(&enc2.query, 0)) < 1e-7);
        assert_eq!(
            enc.indices.narrow(1, 0, q).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            enc2.indices.narrow(1, 0, q).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap()
        );
        // the perturbation does reach the later transitions (so the check above can fail): at this
        // tiny random init transition 0 moves by exactly 0, transitions 1 and 2 by 1.6e-4 and 4.1e-4
        assert!(max_abs_diff(&step(&enc.query, 1), &step(&enc2.query, 1)) > 1e-5);
        assert!(max_abs_diff(&step(&enc.query, 2), &step(&enc2.query, 2)) > 1e-5);
        // the decoder is causal in the codes: changing the codes of step 1 leaves frames 1..=4 alone
        let codes = tok.encode_codes(&x).unwrap(); // (1, 3, 4)
        let mut v: Vec<u32> = codes.flatten_all().unwrap().to_vec1().unwrap();
        for c in v.iter_mut().skip(4) {
            *c = (*c + 37) % 1000;
        }
        let codes2 = Tensor::from_vec(v, codes.dims(), &Device::Cpu).unwrap();
        let ctx = x.narrow(2, 0, 1).unwrap();
        let r1 = tok.render(&ctx, &codes).unwrap();
        let r2 = tok.render(&ctx, &codes2).unwrap();
        assert!(max_abs_diff(&r1.narrow(2, 0, 4).unwrap(), &r2.narrow(2, 0, 4).unwrap()) < 1e-5);
        assert!(max_abs_diff(&r1.narrow(2, 4, 8).unwrap(), &r2.narrow(2, 4, 8).unwrap()) > 1e-4);
    }

    #[test]
    fn fsq_round_trip() {
        let (tok, _) = tiny();
        let enc = tok.encode(&clip(2, 9, 32, 32, 1.1)).unwrap();
        let back = tok.quantizer().indices_to_codes(&enc.indices, DType::F32).unwrap();
        assert_eq!(max_abs_diff(&back, &enc.codes), 0.0);
        // every index -> code vector -> index, with the official index formula sum((c*hw + hw) * basis)
        let all = Tensor::arange(0u32, 1000, &Device::Cpu).unwrap().reshape((1, 1000, 1, 1)).unwrap();
        let codes = tok.quantizer().indices_to_codes(&all, DType::F32).unwrap(); // (1, 4, 1000, 1, 1)
        let codes: Vec<Vec<f32>> =
            codes.squeeze(4).unwrap().squeeze(3).unwrap().squeeze(0).unwrap().t().unwrap().to_vec2().unwrap();
        let (levels, basis) = ([8usize, 5, 5, 5], [1usize, 8, 40, 200]);
        for (i, c) in codes.iter().enumerate() {
            let idx: usize = (0..4)
                .map(|d| {
                    let hw = (levels[d] / 2) as f32;
                    (c[d] * hw + hw).round() as usize * basis[d]
                })
                .sum();
            assert_eq!(idx, i, "code {c:?}");
        }
        // decoding from indices equals decoding from the quantized vectors
        let a = tok.decode(&enc.features, &enc.codes).unwrap();
        let b = tok.decode_code(&enc.features, &enc.indices).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }

    #[test]
    fn save_load_same_outputs() {
        let (tok, varmap) = tiny();
        let x = clip(1, 5, 32, 32, 0.8);
        let (recon, enc) = tok.forward(&x).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dldm.safetensors");
        varmap.save(&path).unwrap();
        let mut varmap2 = VarMap::new();
        let tok2 =
            Tokenizer::new(&Config::tiny(), VarBuilder::from_varmap(&varmap2, DType::F32, &Device::Cpu)).unwrap();
        let (recon_fresh, _) = tok2.forward(&x).unwrap();
        assert!(max_abs_diff(&recon, &recon_fresh) > 1e-4, "a fresh init should differ");
        varmap2.load(&path).unwrap();
        let (recon2, enc2) = tok2.forward(&x).unwrap();
        assert_eq!(max_abs_diff(&recon, &recon2), 0.0);
        assert_eq!(max_abs_diff(&enc.query, &enc2.query), 0.0);
    }

    #[test]
    fn gradients_reach_every_module() {
        let (tok, varmap) = tiny();
        let x = clip(1, 5, 32, 32, 0.6);
        let (recon, enc) = tok.forward(&x).unwrap();
        let loss = ((recon - &x).unwrap().abs().unwrap().mean_all().unwrap() + enc.quant_loss).unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for key in [
            "encoder.conv_in.0.conv3d.weight",
            "encoder.act.weight",
            "encoder.qformer_ldm.qformer.layers.0.cross_attn_token_to_image.k_proj.weight",
            "encoder.outproj_ldm.conv3d.weight",
            "quant_conv.conv3d.weight",
            "decoder.mid.attn_1.0.kv_proj.weight",
            "decoder.conv_out.1.conv3d.weight",
        ] {
            let g = grads.get(data[key].as_tensor()).unwrap_or_else(|| panic!("no gradient for {key}"));
            let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0 && n.is_finite(), "{key}: grad norm^2 {n}");
        }
        // the random-Fourier buffer is not trained
        assert!(grads.get(data["encoder.pos_embedding.positional_encoding_gaussian_matrix"].as_tensor()).is_none());
    }
}

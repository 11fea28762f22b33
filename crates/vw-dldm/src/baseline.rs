//! A small latent dynamics model for CPU experiments, with two renderers — the ablation the paper's
//! claim rests on:
//!
//! - [`RendererKind::CodesOnly`] is the **VideoWorld-1-style plain LDM**: the pixel decoder rebuilds
//!   the next frame from the codes alone, so the codes must carry appearance (scene, textures) as
//!   well as dynamics.
//! - [`RendererKind::FrameConditioned`] is the dLDM's warm-up renderer in miniature: the decoder sees
//!   the current frame (a strong appearance model, as the VDM is in stage 2), so the codes only need
//!   to carry the change.
//!
//! Both share the same encoder and quantizer: a patch-conv encoder of the frame pair
//! `(x_t, x_{t+1}, x_{t+1} - x_t)`, a one-layer Q-Former (`act_embedding_num` learned queries
//! cross-attending to the spatial tokens, as the official `QFormerAdjacentFSingleQ` attends to
//! adjacent latent frames) and FSQ with straight-through rounding. One code step = one frame
//! transition (temporal compression 1), so every code step has exactly one ground-truth action.
//!
//! This is not the official tokenizer (that is `tokenizer.rs`, 142 M parameters at the official
//! size); it exists because the official architecture does not train on 2 CPU cores in minutes.

use crate::{LatentDynamics, Result};
use candle_core::{Module, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use vw_tensor_kernels::conv2d::{conv2d, depth_to_space, Conv2d};
use vw_tensor_kernels::fsq;

/// Which renderer turns codes back into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RendererKind {
    /// Next frame from the current frame + codes (dLDM warm-up renderer).
    FrameConditioned,
    /// Next frame from the codes alone (VideoWorld-1-style plain LDM).
    CodesOnly,
}

/// Hyperparameters of [`TinyLdm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TinyLdmConfig {
    /// Side of the square frames (divisible by 8).
    pub image_size: usize,
    /// Channels of the three stride-2 conv stages.
    pub channels: [usize; 3],
    /// Width of the Q-Former.
    pub dim: usize,
    /// Learned queries = codes per transition.
    pub act_embedding_num: usize,
    /// FSQ levels (the code dim is their count, the vocabulary their product).
    pub levels: Vec<usize>,
    /// The renderer.
    pub renderer: RendererKind,
    /// Extra stage-1 loss weight on pixels that change between the two frames (|x_{t+1} - x_t| >
    /// 0.05 in any channel): the loss of pixel p is `|pred - x_{t+1}| * (1 + motion_weight * moving(p))`.
    /// The moving gripper and block cover a few percent of a CraftWorld frame; with a plain L1 the
    /// static background dominates and the codes carry little of the motion. 0 = plain L1.
    pub motion_weight: f64,
}

impl Default for TinyLdmConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            channels: [16, 32, 48],
            dim: 64,
            act_embedding_num: 2,
            levels: vec![8, 5, 5, 5],
            renderer: RendererKind::FrameConditioned,
            motion_weight: 0.0,
        }
    }
}

impl TinyLdmConfig {
    /// The CPU CraftWorld config of the dLDM side of the probe.
    pub fn tiny() -> Self {
        Self::default()
    }

    /// The same with the VideoWorld-1-style codes-only renderer.
    pub fn tiny_vw1() -> Self {
        Self { renderer: RendererKind::CodesOnly, ..Self::default() }
    }

    fn validate(&self) -> Result<()> {
        if self.image_size == 0 || !self.image_size.is_multiple_of(8) {
            return Err(crate::Error::Invalid(format!(
                "TinyLdm: image_size {} must be a multiple of 8",
                self.image_size
            )));
        }
        if self.levels.is_empty() || self.act_embedding_num == 0 {
            return Err(crate::Error::Invalid("TinyLdm: need FSQ levels and at least one query".into()));
        }
        Ok(())
    }
}

/// Kernel-crate errors carry their own context; keep their message.
pub(crate) fn kernel_err(e: vw_tensor_kernels::Error) -> crate::Error {
    crate::Error::Invalid(e.to_string())
}

/// A patch convolution: kernel = stride = `k`, no padding (k = 1 is a per-pixel linear map). These
/// run as reshape + matmul (see `vw_tensor_kernels::conv2d`): a 3x3 conv stack trained at ~1.5 s per
/// step of 32 transitions on 2 CPU cores, the patch version in a fraction of that.
fn patch_conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    Ok(conv2d(cin, cout, k, Conv2dConfig { stride: k, ..Default::default() }, vb)?)
}

/// Three 2x2 stride-2 patch convs with SiLU; returns the features of every scale (finest first).
struct Pyramid {
    convs: Vec<Conv2d>,
}

impl Pyramid {
    fn new(cin: usize, ch: [usize; 3], vb: VarBuilder) -> Result<Self> {
        let ins = [cin, ch[0], ch[1]];
        let convs = (0..3).map(|i| patch_conv(ins[i], ch[i], 2, vb.pp(i))).collect::<Result<_>>()?;
        Ok(Self { convs })
    }

    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(3);
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward(&h)?.silu()?;
            out.push(h.clone());
        }
        Ok(out)
    }
}

/// Encoder + Q-Former + FSQ.
struct Encoder {
    pyramid: Pyramid,
    to_tokens: Linear,
    pos: Tensor,
    queries: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    mlp_in: Linear,
    mlp_out: Linear,
    to_code: Linear,
    dim: usize,
}

impl Encoder {
    fn new(cfg: &TinyLdmConfig, vb: VarBuilder) -> Result<Self> {
        let n = (cfg.image_size / 8).pow(2);
        let d = cfg.dim;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self {
            pyramid: Pyramid::new(9, cfg.channels, vb.pp("conv"))?,
            to_tokens: linear(cfg.channels[2], d, vb.pp("to_tokens"))?,
            pos: vb.get_with_hints((n, d), "pos_embed", init)?,
            queries: vb.get_with_hints((cfg.act_embedding_num, d), "queries", init)?,
            q: linear(d, d, vb.pp("qformer.q"))?,
            k: linear(d, d, vb.pp("qformer.k"))?,
            v: linear(d, d, vb.pp("qformer.v"))?,
            mlp_in: linear(d, 2 * d, vb.pp("qformer.mlp_in"))?,
            mlp_out: linear(2 * d, d, vb.pp("qformer.mlp_out"))?,
            to_code: linear(d, cfg.levels.len(), vb.pp("to_code"))?,
            dim: d,
        })
    }

    /// x_t, x_next: (N, 3, H, W) -> pre-quantisation latents (N, Q, code_dim).
    fn forward(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        let diff = (x_next - x_t)?;
        let inp = Tensor::cat(&[x_t, x_next, &diff], 1)?;
        let f = self.pyramid.forward(&inp)?.pop().ok_or_else(|| crate::Error::Invalid("empty pyramid".into()))?;
        let (n, c, h, w) = f.dims4()?;
        // Contiguous before the Linear: candle 0.11's CPU matmul folds a batch against a broadcast
        // weight into one (N*HW, C) gemm whenever the batch stride is HW*C, which is wrong for this
        // transposed view (huggingface/candle#3744, fix proposed in #3758): every code depended on
        // the rest of its batch (test `each_transition_is_encoded_on_its_own`).
        let tokens = f.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let tokens = self.to_tokens.forward(&tokens)?.broadcast_add(&self.pos)?;
        let q = self
            .q
            .forward(&self.queries)?
            .unsqueeze(0)?
            .broadcast_as((n, self.queries.dim(0)?, self.dim))?
            .contiguous()?;
        let k = self.k.forward(&tokens)?;
        let v = self.v.forward(&tokens)?;
        let att = (q.matmul(&k.transpose(1, 2)?)? / (self.dim as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let z = (self.queries.unsqueeze(0)?.broadcast_add(&att.matmul(&v)?))?;
        let z = (&z + self.mlp_out.forward(&self.mlp_in.forward(&z)?.gelu_erf()?)?)?;
        Ok(self.to_code.forward(&z)?)
    }
}

/// Renders x_{t+1} from codes (and x_t for the frame-conditioned kind).
struct Renderer {
    kind: RendererKind,
    ctx: Option<Pyramid>,
    code_map: Linear,
    film: Linear,
    up: Vec<Conv2d>,
    out: Conv2d,
    ch: [usize; 3],
    side: usize,
}

impl Renderer {
    fn new(cfg: &TinyLdmConfig, vb: VarBuilder) -> Result<Self> {
        let ch = cfg.channels;
        let side = cfg.image_size / 8;
        let code_in = cfg.act_embedding_num * cfg.levels.len();
        let ctx = match cfg.renderer {
            RendererKind::FrameConditioned => Some(Pyramid::new(3, ch, vb.pp("ctx"))?),
            RendererKind::CodesOnly => None,
        };
        Ok(Self {
            kind: cfg.renderer,
            ctx,
            code_map: linear(code_in, ch[2] * side * side, vb.pp("code_map"))?,
            film: linear(code_in, 2 * ch[2], vb.pp("film"))?,
            up: vec![patch_conv(ch[2], 4 * ch[1], 1, vb.pp("up.0"))?, patch_conv(ch[1], 4 * ch[0], 1, vb.pp("up.1"))?],
            out: patch_conv(ch[0], 4 * 3, 1, vb.pp("out"))?,
            ch,
            side,
        })
    }

    /// x_t: (N, 3, H, W), codes: (N, Q, code_dim) -> x_{t+1} (N, 3, H, W).
    fn forward(&self, x_t: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let n = codes.dim(0)?;
        let c = codes.flatten_from(1)?;
        let map = self.code_map.forward(&c)?.reshape((n, self.ch[2], self.side, self.side))?;
        let film = self.film.forward(&c)?.reshape((n, 2 * self.ch[2], 1, 1))?;
        let (scale, shift) = (film.narrow(1, 0, self.ch[2])?, film.narrow(1, self.ch[2], self.ch[2])?);
        let skips = match &self.ctx {
            Some(p) => Some(p.forward(x_t)?),
            None => None,
        };
        let mut h = match &skips {
            Some(s) => s[2].broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?.add(&map)?,
            None => map.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?,
        };
        // Each upsampling stage is a 1x1 conv to 4x the channels + pixel shuffle (a 2x2 stride-2
        // transposed conv).
        for (i, up) in self.up.iter().enumerate() {
            h = depth_to_space(&up.forward(&h)?, 2).map_err(kernel_err)?.silu()?;
            if let Some(s) = &skips {
                h = (h + &s[1 - i])?;
            }
        }
        let y = depth_to_space(&self.out.forward(&h)?, 2).map_err(kernel_err)?;
        Ok(match self.kind {
            RendererKind::FrameConditioned => (x_t + y)?,
            RendererKind::CodesOnly => y.tanh()?,
        })
    }
}

/// Encoder + quantizer + renderer; see the module doc.
pub struct TinyLdm {
    cfg: TinyLdmConfig,
    encoder: Encoder,
    renderer: Renderer,
}

/// Frames `t` and `t + 1` of every transition of a clip, flattened: (B*(T-1), C, H, W) each.
pub fn transition_pairs(frames: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, c, t, h, w) = frames.dims5()?;
    if t < 2 {
        return Err(crate::Error::Invalid(format!("a clip needs at least 2 frames, got {t}")));
    }
    let flat = |x: Tensor| -> Result<Tensor> { Ok(x.permute((0, 2, 1, 3, 4))?.reshape((b * (t - 1), c, h, w))?) };
    Ok((flat(frames.narrow(2, 0, t - 1)?)?, flat(frames.narrow(2, 1, t - 1)?)?))
}

impl TinyLdm {
    /// Builds under `vb` (`encoder.*`, `renderer.*`).
    pub fn new(cfg: &TinyLdmConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            renderer: Renderer::new(cfg, vb.pp("renderer"))?,
        })
    }

    /// The config.
    pub fn config(&self) -> &TinyLdmConfig {
        &self.cfg
    }

    /// Quantised codes of transitions: x_t, x_next (N, 3, H, W) -> (straight-through code vectors
    /// (N, Q, code_dim), indices (N, Q) u32).
    pub fn quantize_pairs(&self, x_t: &Tensor, x_next: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.encoder.forward(x_t, x_next)?;
        fsq::fsq_quantize(&z, &self.cfg.levels).map_err(kernel_err)
    }

    /// Renders x_{t+1} (N, 3, H, W) from x_t and code vectors (N, Q, code_dim).
    pub fn render_pairs(&self, x_t: &Tensor, codes: &Tensor) -> Result<Tensor> {
        self.renderer.forward(x_t, codes)
    }

    /// Stage-1 loss of transitions: mean L1 between the rendered and the true next frames.
    pub fn pair_loss(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        Ok(self.pair_loss_and_codes(x_t, x_next)?.0)
    }

    /// [`TinyLdm::pair_loss`] and the code indices (N, Q) it quantised to, for code-usage logging.
    pub fn pair_loss_and_codes(&self, x_t: &Tensor, x_next: &Tensor) -> Result<(Tensor, Tensor)> {
        let (codes, idx) = self.quantize_pairs(x_t, x_next)?;
        Ok((self.reconstruction_loss(x_t, x_next, &codes)?, idx))
    }

    fn reconstruction_loss(&self, x_t: &Tensor, x_next: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let pred = self.render_pairs(x_t, codes)?;
        let err = (pred - x_next)?.abs()?;
        if self.cfg.motion_weight == 0.0 {
            return Ok(err.mean_all()?);
        }
        let moving = (x_next - x_t)?.abs()?.max_keepdim(1)?.gt(0.05)?.to_dtype(err.dtype())?;
        let weight = ((moving * self.cfg.motion_weight)? + 1.0)?;
        Ok(err.broadcast_mul(&weight)?.mean_all()?)
    }
}

impl LatentDynamics for TinyLdm {
    fn encode_codes(&self, frames: &Tensor) -> Result<Tensor> {
        let (b, _, t, _, _) = frames.dims5()?;
        let (x_t, x_next) = transition_pairs(frames)?;
        let (_, idx) = self.quantize_pairs(&x_t, &x_next)?;
        Ok(idx.reshape((b, t - 1, self.cfg.act_embedding_num))?)
    }

    fn render(&self, context: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let tc = context.dim(2)?;
        let mut cur = context.narrow(2, tc - 1, 1)?.squeeze(2)?;
        let (_, s, _) = codes.dims3()?;
        let mut out = Vec::with_capacity(s);
        for i in 0..s {
            let idx = codes.narrow(1, i, 1)?.squeeze(1)?;
            let vecs = fsq::fsq_indices_to_codes(&idx, &self.cfg.levels).map_err(kernel_err)?.to_dtype(cur.dtype())?;
            cur = self.render_pairs(&cur, &vecs)?.clamp(-1f32, 1f32)?;
            out.push(cur.unsqueeze(2)?);
        }
        Ok(Tensor::cat(&out, 2)?)
    }

    fn codes_per_step(&self) -> usize {
        self.cfg.act_embedding_num
    }

    fn vocab_size(&self) -> usize {
        fsq::codebook_size(&self.cfg.levels)
    }

    fn frames_per_code_step(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn clip(t: usize, seed: u64) -> Result<Tensor> {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        crate::train::rand_from(&mut rng, -1.0, 1.0, (2, 3, t, 16, 16), &Device::Cpu)
    }

    fn small(kind: RendererKind) -> TinyLdmConfig {
        TinyLdmConfig { image_size: 16, channels: [4, 8, 8], dim: 16, renderer: kind, ..Default::default() }
    }

    #[test]
    fn shapes_and_causality() -> Result<()> {
        for kind in [RendererKind::FrameConditioned, RendererKind::CodesOnly] {
            let vm = VarMap::new();
            let m = TinyLdm::new(&small(kind), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
            let x = clip(4, 1)?;
            let codes = m.encode_codes(&x)?;
            assert_eq!(codes.dims(), &[2, 3, 2]);
            let max = codes.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            assert!((max as usize) < m.vocab_size());
            // Changing the last frame changes only the last transition's codes.
            let x2 = Tensor::cat(&[x.narrow(2, 0, 3)?, clip(1, 9)?], 2)?;
            let c2 = m.encode_codes(&x2)?;
            assert_eq!(codes.narrow(1, 0, 2)?.to_vec3::<u32>()?, c2.narrow(1, 0, 2)?.to_vec3::<u32>()?);
            let r = m.render(&x.narrow(2, 0, 1)?, &codes)?;
            assert_eq!(r.dims(), &[2, 3, 3, 16, 16]);
        }
        Ok(())
    }

    #[test]
    fn motion_weight_scales_only_the_loss_of_changing_pixels() -> Result<()> {
        let vm = VarMap::new();
        let plain = small(RendererKind::FrameConditioned);
        let m = TinyLdm::new(&plain, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
        let weighted = TinyLdm::new(
            &TinyLdmConfig { motion_weight: 10.0, ..plain },
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )?;
        let x = clip(2, 3)?;
        let (x_t, x_next) = transition_pairs(&x)?;
        let l0 = m.pair_loss(&x_t, &x_next)?.to_scalar::<f32>()?;
        let l1 = weighted.pair_loss(&x_t, &x_next)?.to_scalar::<f32>()?;
        assert!(l1 > 2.0 * l0, "random frames change almost everywhere: {l1} vs {l0}");
        // A pair with no change has no moving pixel: both losses agree.
        let (s0, s1) =
            (m.pair_loss(&x_t, &x_t)?.to_scalar::<f32>()?, weighted.pair_loss(&x_t, &x_t)?.to_scalar::<f32>()?);
        assert_eq!(s0, s1);
        Ok(())
    }

    /// A transition's codes and rendering may not depend on the other transitions of its batch
    /// (they did, through a candle matmul of a transposed batch: see `Encoder::forward`).
    #[test]
    fn each_transition_is_encoded_on_its_own() -> Result<()> {
        for kind in [RendererKind::FrameConditioned, RendererKind::CodesOnly] {
            let vm = VarMap::new();
            let m = TinyLdm::new(&small(kind), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
            let (x_t, x_next) = transition_pairs(&clip(6, 4)?)?; // 10 transitions
            let z = m.encoder.forward(&x_t, &x_next)?;
            let (codes, _) = m.quantize_pairs(&x_t, &x_next)?;
            let r = m.render_pairs(&x_t, &codes)?;
            for i in 0..x_t.dim(0)? {
                let (a, b) = (x_t.narrow(0, i, 1)?, x_next.narrow(0, i, 1)?);
                let zi = m.encoder.forward(&a, &b)?;
                let dz = (zi - z.narrow(0, i, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(dz < 1e-5, "{kind:?} transition {i}: z differs by {dz} inside a batch");
                let ri = m.render_pairs(&a, &codes.narrow(0, i, 1)?)?;
                let dr = (ri - r.narrow(0, i, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(dr < 1e-5, "{kind:?} transition {i}: rendering differs by {dr} inside a batch");
            }
        }
        Ok(())
    }
}

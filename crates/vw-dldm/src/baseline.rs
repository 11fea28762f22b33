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
use candle_core::{DType, Module, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use vw_tensor_kernels::conv2d::{conv2d, depth_to_space, Conv2d};
use vw_tensor_kernels::fsq;

mod motion;

/// Which encoder/renderer architecture a [`TinyLdm`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LdmArch {
    /// Patch-conv encoder with a position-embedded Q-Former; patch renderer with an 8x8 code map.
    /// What configs without an `arch` field were trained with.
    #[default]
    Patch,
    /// Translation-equivariant: convolutional encoder with content-only Q-Former pooling + max-pool +
    /// LayerNorm; U-Net renderer modulated by the codes through FiLM at every level (see
    /// `baseline/motion.rs` for why).
    Motion,
    /// [`LdmArch::Motion`] whose frame-conditioned renderer also has a sprite layer: the codes
    /// choose a translation of what the U-Net marks as moving in x_t (`baseline/motion.rs`). The
    /// codes-only renderer is the same as `Motion`'s.
    Sprite,
}

/// How the motion encoder sees the frame difference x_{t+1} - x_t (its contrast depends on the
/// colours of what moves and of what it uncovers, which a held-out look changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffNorm {
    /// As it is (what configs without a `diff_norm` field were trained with).
    #[default]
    None,
    /// Divided by the sample's largest |difference| (at least [`DIFF_THRESHOLD`]): the shape of
    /// the change at a fixed contrast.
    UnitMax,
    /// Its sign where |difference| > [`DIFF_THRESHOLD`], else 0: only where, and which way, each
    /// channel changes.
    Ternary,
}

/// The |x_{t+1} - x_t| above which a pixel counts as changed ([`DiffNorm`], and the moving pixels
/// of `motion_weight`).
pub const DIFF_THRESHOLD: f64 = 0.05;

/// The pixels that change: 1 where any channel of `abs_diff` = |x_{t+1} - x_t| (N, C, H, W) is above
/// [`DIFF_THRESHOLD`], else 0; (N, 1, H, W) in `abs_diff`'s dtype.
pub fn moving_mask(abs_diff: &Tensor) -> Result<Tensor> {
    Ok(abs_diff.max_keepdim(1)?.gt(DIFF_THRESHOLD)?.to_dtype(abs_diff.dtype())?)
}

/// The per-pixel reconstruction loss of stage 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconLoss {
    /// Mean absolute error (what configs without a `loss` field were trained with).
    #[default]
    L1,
    /// Mean squared error. On CraftWorld, where ~3.5% of the pixels move, L1's constant-magnitude
    /// gradient on the static pixels pins a frame-conditioned renderer to the identity copy: given
    /// the true action it stays at 1.02x the copy's L1 after 300 steps, while with MSE it reaches
    /// 0.51x the copy's MSE (`examples/oracle_renderer.rs`, docs/results.md).
    Mse,
}

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
    /// Self-attention blocks over the renderer's coarsest token grid (after the codes are injected).
    /// Without them every 8x8 output block sees only its own input block and the global codes, so
    /// the renderer cannot move the gripper across blocks (it moves 16-30 px per frame at 64x64).
    /// Measured (docs/results.md, codebook collapse): not enough on its own — the codes still do not
    /// lower the renderer's loss in 400 steps. 0 = none (the original patch-local renderer, and what
    /// configs without this field were trained with).
    pub renderer_mix_layers: usize,
    /// Zero-initialise the frame-conditioned renderer's last layer (ignored by the codes-only
    /// renderer, which has no residual), so it starts as the identity copy of x_t instead of adding
    /// a random residual it first has to unlearn (initial L1 ~1.3, 70x the copy error). Only
    /// affects training from scratch.
    pub zero_init_residual: bool,
    /// Weight of the code-usage regulariser [`fsq_entropy_terms`]: `weight * (mean per-sample
    /// entropy - batch entropy)` of the soft assignments of z to each FSQ dimension's levels. 0 = off.
    pub entropy_weight: f64,
    /// Temperature (in squared level units) of those soft assignments.
    pub entropy_temperature: f64,
    /// The architecture. `renderer_mix_layers` and `zero_init_residual` apply to [`LdmArch::Patch`]
    /// only (the motion renderer always starts as the identity copy).
    pub arch: LdmArch,
    /// The reconstruction loss.
    pub loss: ReconLoss,
    /// Weight of a VICReg-style variance hinge on the bounded pre-quantisation latents:
    /// `weight * mean_d relu(variance_target - std_batch(tanh(z_d)))`. It keeps the batch spread over
    /// FSQ's bins until the renderer has learned to read the codes (without it the codes collapse
    /// into one bin before the renderer uses them; docs/results.md). 0 = off.
    pub variance_weight: f64,
    /// The batch std of tanh(z) (in (0, 1)) below which the hinge acts.
    pub variance_target: f64,
    /// In training, give the renderer FSQ's bounded latent plus uniform noise of one bin instead of
    /// the straight-through rounded code (the additive-noise proxy of quantisation of Ballé et al.,
    /// 2017): the renderer sees a signal that moves smoothly with the encoder from the first step,
    /// and the encoder gets the exact gradient. Codes, indices and inference are unchanged. The
    /// noise comes from candle's unseeded generator: such runs are not bitwise reproducible.
    pub quant_noise: bool,
    /// The motion encoder's input: the frame pair and their difference (false), or the difference
    /// x_{t+1} - x_t alone (true), in which everything static, whatever it looks like, is zero.
    pub diff_only: bool,
    /// Gate the motion encoder's feature grid by how much each cell changes between the frames
    /// (`m / (m + motion_gate_tau)`, m the cell's mean over pixels of the largest channel of
    /// |x_{t+1} - x_t|), before and after its mixing convolutions: a cell where nothing moves
    /// contributes nothing to the codes whatever its texture or light (docs/results.md, sixth pass:
    /// the live codes lost 5-8 points to the held-out table and wall textures). 0 = off.
    pub motion_gate_tau: f64,
    /// Blur the motion encoder's input by a Gaussian of this standard deviation (pixels) before its
    /// convolutions: fine texture (the held-out look's 3-px wallpaper stripes, speckle) is
    /// appearance, and the moves the codes must tell apart are 8-30 px. 0 = off.
    pub input_blur: f64,
    /// How the motion encoder reads the difference of the frames (before `input_blur`; the
    /// motion gate still weighs each cell by the raw difference).
    pub diff_norm: DiffNorm,
    /// The motion (or sprite) architecture's frame-conditioned renderer composites instead of adding a
    /// residual (the sprite renderer: its background under the moved layer): `x_{t+1} = x_t + alpha * (c - x_t)` with a per-pixel opacity `alpha` (starting near
    /// 0) and colour `c`, both from the U-Net. Where alpha is 0 the pixel is x_t exactly, whatever
    /// its texture, so static background (including a look never trained on) does not drift over a
    /// rollout; a residual renderer adds small errors to every pixel that compound
    /// (docs/results.md, the renderer's rollout). Off = the residual renderer.
    pub composite: bool,
    /// Weight of an auxiliary loss that makes the codes alone say how much of the frame moves: a
    /// small head reads the (straight-through) codes and regresses the transition's moved area
    /// (`extent_target`, x [`EXTENT_SCALE`]). A frame-conditioned renderer can tell
    /// from x_t whether the hand holds a block, so without this the codes of "the hand goes down
    /// onto a block" and "the hand lowers a block" come out the same (docs/results.md, eighth
    /// pass); the moving area (hand alone, or hand and block) tells them apart from the frames
    /// alone, no label needed. 0 = off (no head, the checkpoint keys of earlier runs).
    pub extent_weight: f64,
    /// Which pixels the extent head counts.
    pub extent_target: ExtentTarget,
    /// Weight of an auxiliary loss that makes the codes alone say *where* things move: a small
    /// head reads the (straight-through) codes and regresses the transition's label-free motion
    /// from the frames (`crate::clip::dominant_motion`: the displacement in pixels / [`MOTION_SCALE`]
    /// by L1, and whether a block moves along by cross-entropy). The pixel renderer forgives a
    /// gripper a pixel or two off, so without it the codes say the direction of a move but not
    /// its length, and a renderer that draws a whole recipe step from the codes misplaces the block
    /// (docs/results.md, the clip renderer). The targets are read from the frames before
    /// augmentation; a whole-pixel shift keeps them right, a zoom or rotation changes the motion the
    /// encoder sees by up to its own factor. 0 = off (no head, the keys of earlier runs).
    pub displacement_weight: f64,
    /// Weight of a hinge that keeps the latents where FSQ still grades them: the mean of
    /// `relu(|z| - SATURATION_Z)^2`. Past [`SATURATION_Z`] every latent rounds to its outermost
    /// level (levels up to 8), and the tanh's gradient vanishes there, so nothing pulls it back.
    /// Without it the demo's dLDM parks most latents at |z| of 4-5: its encoder tells a step's
    /// reach to under a pixel, and its codes confuse reaches a source stack apart in 13-19% of
    /// steps (docs/results.md, "The codes lose the reach"). 0 = off (earlier runs).
    pub saturation_weight: f64,
}

/// Past this |z| FSQ's bound rounds to the outermost level for levels up to 8 (5 levels: past
/// 0.97; 8 levels: past 1.28), so a latent there carries nothing finer
/// ([`TinyLdmConfig::saturation_weight`]).
pub const SATURATION_Z: f64 = 1.5;

/// Pixels per unit of the displacement head's output ([`TinyLdmConfig::displacement_weight`]).
pub const MOTION_SCALE: f64 = 8.0;

/// Which pixels [`TinyLdmConfig::extent_weight`]'s head counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentTarget {
    /// Every changed pixel ([`moving_mask`]). How many pixels pass the threshold depends on the
    /// contrast of what moves against what it uncovers, which a held-out look changes.
    #[default]
    Moving,
    /// The fraction of 4x4 cells holding any changed pixel: the area of what moved at a scale
    /// coarser than the held-out look's 3-px wallpaper stripes, which make a pixel count vary
    /// with what the hand uncovers.
    Cells,
    /// Changed pixels that are vividly coloured in x_t or x_{t+1} (HSV saturation above
    /// [`COLOUR_SATURATION`], value above [`COLOUR_VALUE`]): a moved coloured object, not the grey
    /// hand or the wall it uncovers, whatever their contrast.
    Colour,
}

/// Side of the cells of [`ExtentTarget::Cells`] (image sides are multiples of 8).
pub const EXTENT_CELL: usize = 4;

/// Saturation above which a pixel counts as coloured for [`ExtentTarget::Colour`] (the CraftWorld
/// judge's block threshold: table, wall and hand stay below 0.25 in every look).
pub const COLOUR_SATURATION: f64 = 0.3;
/// Value (brightness) above which a pixel's saturation is trusted for [`ExtentTarget::Colour`].
pub const COLOUR_VALUE: f64 = 0.15;

/// 1 where a frame (N, 3, H, W) in [-1, 1] is vividly coloured ([`ExtentTarget::Colour`]); (N, 1, H, W).
pub fn colour_mask(x: &Tensor) -> Result<Tensor> {
    let rgb = ((x + 1.0)? * 0.5)?;
    let (max, min) = (rgb.max_keepdim(1)?, rgb.min_keepdim(1)?);
    let sat = ((&max - min)? / (&max + 1e-6)?)?;
    let vivid = sat.gt(COLOUR_SATURATION)?.to_dtype(x.dtype())?;
    Ok(vivid.mul(&max.gt(COLOUR_VALUE)?.to_dtype(x.dtype())?)?)
}

/// The moved area of [`TinyLdmConfig::extent_weight`] (a fraction of the frame) is regressed times
/// this (a CraftWorld transition changes 1-5% of the pixels, so the target lands near 0.2-1).
pub const EXTENT_SCALE: f64 = 20.0;

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
            renderer_mix_layers: 0,
            zero_init_residual: false,
            entropy_weight: 0.0,
            entropy_temperature: 0.25,
            arch: LdmArch::Patch,
            loss: ReconLoss::L1,
            variance_weight: 0.0,
            variance_target: 0.5,
            quant_noise: false,
            diff_only: false,
            motion_gate_tau: 0.0,
            input_blur: 0.0,
            diff_norm: DiffNorm::None,
            composite: false,
            extent_weight: 0.0,
            extent_target: ExtentTarget::Moving,
            displacement_weight: 0.0,
            saturation_weight: 0.0,
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
        if self.motion_gate_tau < 0.0 || (self.motion_gate_tau > 0.0 && self.arch == LdmArch::Patch) {
            return Err(crate::Error::Invalid(format!(
                "TinyLdm: motion_gate_tau {} must be >= 0, and > 0 needs arch motion or sprite",
                self.motion_gate_tau
            )));
        }
        if !self.input_blur.is_finite()
            || self.input_blur < 0.0
            || (self.input_blur > 0.0 && self.arch == LdmArch::Patch)
        {
            return Err(crate::Error::Invalid(format!(
                "TinyLdm: input_blur {} must be finite and >= 0, and > 0 needs arch motion or sprite",
                self.input_blur
            )));
        }
        if self.diff_norm != DiffNorm::None && self.arch == LdmArch::Patch {
            return Err(crate::Error::Invalid("TinyLdm: diff_norm needs arch motion or sprite".into()));
        }
        if self.composite && (self.arch == LdmArch::Patch || self.renderer != RendererKind::FrameConditioned) {
            return Err(crate::Error::Invalid(
                "TinyLdm: composite needs arch motion or sprite with the frame-conditioned renderer".into(),
            ));
        }
        for (name, w) in [
            ("extent_weight", self.extent_weight),
            ("displacement_weight", self.displacement_weight),
            ("saturation_weight", self.saturation_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(crate::Error::Invalid(format!("TinyLdm: {name} {w} must be finite and >= 0")));
            }
        }
        if self.diff_only && self.arch == LdmArch::Patch {
            return Err(crate::Error::Invalid(
                "TinyLdm: diff_only needs arch motion or sprite (the patch encoder reads the pair)".into(),
            ));
        }
        Ok(())
    }
}

/// The hinge of [`TinyLdmConfig::saturation_weight`] on latents `z`: mean of
/// `relu(|z| - SATURATION_Z)^2` (a scalar).
pub fn saturation_penalty(z: &Tensor) -> Result<Tensor> {
    Ok(z.to_dtype(DType::F32)?.abs()?.affine(1.0, -SATURATION_Z)?.relu()?.sqr()?.mean_all()?)
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

/// A pre-LayerNorm transformer block (single-head self-attention + GELU MLP) over tokens (N, L, d).
struct MixBlock {
    norm1: crate::qformer::LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: crate::qformer::LayerNorm,
    mlp_in: Linear,
    mlp_out: Linear,
    dim: usize,
}

impl MixBlock {
    fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: crate::qformer::LayerNorm::new(d, vb.pp("norm1"))?,
            qkv: linear(d, 3 * d, vb.pp("qkv"))?,
            proj: linear(d, d, vb.pp("proj"))?,
            norm2: crate::qformer::LayerNorm::new(d, vb.pp("norm2"))?,
            mlp_in: linear(d, 2 * d, vb.pp("mlp_in"))?,
            mlp_out: linear(2 * d, d, vb.pp("mlp_out"))?,
            dim: d,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.dim;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        // Every matmul operand contiguous: candle 0.11's CPU matmul mishandles some strided batches
        // (see `Encoder::forward`).
        let part = |i: usize| qkv.narrow(2, i * d, d)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let att = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? / (d as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let x = (x + self.proj.forward(&att.matmul(&v)?)?)?;
        let h = self.mlp_in.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        Ok((&x + self.mlp_out.forward(&h)?)?)
    }
}

/// Runs `blocks` over a feature map (N, C, H, W) as H*W tokens with a learned position embedding.
fn mix_map(blocks: &[MixBlock], pos: Option<&Tensor>, h: Tensor) -> Result<Tensor> {
    let (Some(pos), false) = (pos, blocks.is_empty()) else { return Ok(h) };
    let (n, c, hh, ww) = h.dims4()?;
    let mut t = h.reshape((n, c, hh * ww))?.transpose(1, 2)?.broadcast_add(pos)?;
    for b in blocks {
        t = b.forward(&t)?;
    }
    Ok(t.transpose(1, 2)?.reshape((n, c, hh, ww))?)
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
    mix: Vec<MixBlock>,
    mix_pos: Option<Tensor>,
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
            out: if cfg.zero_init_residual && cfg.renderer == RendererKind::FrameConditioned {
                let zero = candle_nn::Init::Const(0.0);
                let w = vb.pp("out").get_with_hints((4 * 3, ch[0], 1, 1), "weight", zero)?;
                Conv2d::new(w, Some(vb.pp("out").get_with_hints(4 * 3, "bias", zero)?), 1, 0)
            } else {
                patch_conv(ch[0], 4 * 3, 1, vb.pp("out"))?
            },
            mix: (0..cfg.renderer_mix_layers)
                .map(|i| MixBlock::new(ch[2], vb.pp(format!("mix.{i}"))))
                .collect::<Result<_>>()?,
            mix_pos: match cfg.renderer_mix_layers {
                0 => None,
                _ => Some(vb.get_with_hints(
                    (side * side, ch[2]),
                    "mix_pos",
                    candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 },
                )?),
            },
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
        h = mix_map(&self.mix, self.mix_pos.as_ref(), h)?;
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
    encoder: AnyEncoder,
    renderer: AnyRenderer,
    /// The head of `extent_weight` (codes -> hidden -> moving fraction), when it is on.
    extent_head: Option<(Linear, Linear)>,
    /// The head of `displacement_weight` (codes -> hidden -> dx, dy, carried logit), when it is on.
    displacement_head: Option<(Linear, Linear)>,
}

enum AnyEncoder {
    Patch(Encoder),
    Motion(motion::MotionEncoder),
}

impl AnyEncoder {
    fn forward(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        match self {
            Self::Patch(e) => e.forward(x_t, x_next),
            Self::Motion(e) => e.forward(x_t, x_next),
        }
    }
}

enum AnyRenderer {
    Patch(Renderer),
    Motion(Box<motion::MotionRenderer>),
}

impl AnyRenderer {
    fn forward(&self, x_t: &Tensor, codes: &Tensor) -> Result<Tensor> {
        match self {
            Self::Patch(r) => r.forward(x_t, codes),
            Self::Motion(r) => r.forward(x_t, codes),
        }
    }
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
            encoder: match cfg.arch {
                LdmArch::Patch => AnyEncoder::Patch(Encoder::new(cfg, vb.pp("encoder"))?),
                LdmArch::Motion | LdmArch::Sprite => {
                    AnyEncoder::Motion(motion::MotionEncoder::new(cfg, vb.pp("encoder"))?)
                }
            },
            renderer: match cfg.arch {
                LdmArch::Patch => AnyRenderer::Patch(Renderer::new(cfg, vb.pp("renderer"))?),
                LdmArch::Motion | LdmArch::Sprite => {
                    AnyRenderer::Motion(Box::new(motion::MotionRenderer::new(cfg, vb.pp("renderer"))?))
                }
            },
            extent_head: match cfg.extent_weight > 0.0 {
                true => {
                    let code_in = cfg.act_embedding_num * cfg.levels.len();
                    Some((linear(code_in, 32, vb.pp("extent_head.0"))?, linear(32, 1, vb.pp("extent_head.1"))?))
                }
                false => None,
            },
            displacement_head: match cfg.displacement_weight > 0.0 {
                true => {
                    let code_in = cfg.act_embedding_num * cfg.levels.len();
                    let (h, o) = (vb.pp("displacement_head.0"), vb.pp("displacement_head.1"));
                    Some((linear(code_in, 64, h)?, linear(64, 3, o)?))
                }
                false => None,
            },
        })
    }

    /// The displacement head's reading (N, 3) of code vectors (N, Q, code_dim): displacement right
    /// and down in [`MOTION_SCALE`] pixels, and the logit of "a block moves along". `None` when
    /// `displacement_weight` is off.
    pub fn displacement_prediction(&self, codes: &Tensor) -> Result<Option<Tensor>> {
        let Some((hidden, out)) = &self.displacement_head else { return Ok(None) };
        Ok(Some(out.forward(&hidden.forward(&codes.flatten_from(1)?)?.gelu_erf()?)?))
    }

    /// The auxiliary loss of `displacement_weight` (unweighted) against `target` (N, 3): the
    /// teacher's displacement / [`MOTION_SCALE`] (L1) and carried in {0, 1} (binary cross-entropy).
    /// `None` when the option is off.
    pub fn displacement_loss(&self, codes: &Tensor, target: &Tensor) -> Result<Option<Tensor>> {
        let Some(pred) = self.displacement_prediction(codes)? else { return Ok(None) };
        if pred.dims() != target.dims() {
            return Err(crate::Error::Invalid(format!(
                "displacement targets {:?} do not match the head's {:?}",
                target.shape(),
                pred.shape()
            )));
        }
        Ok(Some(crate::clip::motion_loss(&pred, target)?))
    }

    /// The fraction (N, 1) of the pixels of each transition that `extent_target` counts.
    pub fn extent_fraction(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        let mut counted = moving_mask(&(x_next - x_t)?.abs()?)?;
        match self.cfg.extent_target {
            ExtentTarget::Moving => {}
            ExtentTarget::Cells => counted = counted.max_pool2d(EXTENT_CELL)?,
            ExtentTarget::Colour => counted = counted.mul(&colour_mask(x_t)?.maximum(&colour_mask(x_next)?)?)?,
        }
        Ok(counted.flatten_from(1)?.mean_keepdim(1)?)
    }

    /// The auxiliary loss of `extent_weight` (unweighted): mean squared error of the head's reading
    /// of `codes` (N, Q, code_dim) against each transition's fraction of counted pixels
    /// (`extent_target`) x [`EXTENT_SCALE`].
    /// `None` when the option is off.
    pub fn extent_loss(&self, x_t: &Tensor, x_next: &Tensor, codes: &Tensor) -> Result<Option<Tensor>> {
        let Some(pred) = self.extent_prediction(codes)? else { return Ok(None) };
        let frac = self.extent_fraction(x_t, x_next)?;
        Ok(Some((pred - (frac * EXTENT_SCALE)?)?.sqr()?.mean_all()?))
    }

    /// The extent head's reading (N, 1) of code vectors (N, Q, code_dim): the moved area x
    /// [`EXTENT_SCALE`] it predicts. `None` when `extent_weight` is off.
    pub fn extent_prediction(&self, codes: &Tensor) -> Result<Option<Tensor>> {
        let Some((hidden, out)) = &self.extent_head else { return Ok(None) };
        Ok(Some(out.forward(&hidden.forward(&codes.flatten_from(1)?)?.gelu_erf()?)?))
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

    /// The sprite renderer (`LdmArch::Sprite`, frame-conditioned) with the moving layer cut out of
    /// x_t by the given opacity `alpha` (N, 1, H, W) in [0, 1] instead of its own: returns the
    /// render and the renderer's own opacity logits (N, 1, H, W), which a caller can train towards
    /// `alpha`. Any other renderer is an error.
    pub fn render_pairs_with_alpha(&self, x_t: &Tensor, codes: &Tensor, alpha: &Tensor) -> Result<(Tensor, Tensor)> {
        let AnyRenderer::Motion(r) = &self.renderer else {
            return Err(crate::Error::Invalid("a given opacity needs the sprite renderer".into()));
        };
        match r.forward_with(x_t, codes, Some(alpha))? {
            (y, Some(logits)) => Ok((y, logits)),
            (_, None) => Err(crate::Error::Invalid("a given opacity needs the sprite renderer".into())),
        }
    }

    /// Pre-quantisation latents (N, Q, code_dim) of transitions x_t, x_next (N, 3, H, W).
    pub fn latents(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        self.encoder.forward(x_t, x_next)
    }

    /// Where the stage-1 loss comes from, on one batch (no gradient needed): the reconstruction L1
    /// with the batch's own codes, with every code replaced by the FSQ centre code (zeros) and with
    /// the codes of another transition (batch rolled by one); the identity-copy L1 `|x_{t+1} - x_t|`;
    /// the fraction of moving pixels (|x_{t+1} - x_t| > 0.05 in any channel) and the share of the
    /// model's L1 that falls on them; the mean over code dims of the batch std of z.
    pub fn loss_breakdown(&self, x_t: &Tensor, x_next: &Tensor) -> Result<LossBreakdown> {
        let z = self.latents(x_t, x_next)?.detach();
        let (codes, _) = fsq::fsq_quantize(&z, &self.cfg.levels).map_err(kernel_err)?;
        let codes = codes.detach();
        let n = codes.dim(0)?;
        let l1 = |c: &Tensor| -> Result<(f64, Tensor)> {
            let e = (self.render_pairs(x_t, c)?.detach() - x_next)?.abs()?;
            Ok((e.mean_all()?.to_scalar::<f32>()? as f64, e))
        };
        let (own, err) = l1(&codes)?;
        let (zero, _) = l1(&codes.zeros_like()?)?;
        let rolled = if n > 1 { Tensor::cat(&[codes.narrow(0, 1, n - 1)?, codes.narrow(0, 0, 1)?], 0)? } else { codes };
        let (other, _) = l1(&rolled)?;
        let diff = (x_next - x_t)?.abs()?;
        let moving = moving_mask(&diff)?.to_dtype(err.dtype())?;
        let err_sum = err.sum_all()?.to_scalar::<f32>()? as f64;
        let err_moving = err.broadcast_mul(&moving)?.sum_all()?.to_scalar::<f32>()? as f64;
        let z_std = z.flatten_to(1)?.var_keepdim(0)?.sqrt()?.mean_all()?.to_scalar::<f32>()? as f64;
        let (_, batch_entropy) = fsq_entropy_terms(&z, &self.cfg.levels, self.cfg.entropy_temperature)?;
        Ok(LossBreakdown {
            l1: own,
            l1_zero_codes: zero,
            l1_other_codes: other,
            copy_l1: diff.mean_all()?.to_scalar::<f32>()? as f64,
            moving_frac: moving.mean_all()?.to_scalar::<f32>()? as f64,
            moving_share: if err_sum > 0.0 { err_moving / err_sum } else { 0.0 },
            z_std,
            batch_entropy: batch_entropy.to_scalar::<f32>()? as f64,
        })
    }

    /// Stage-1 loss of transitions: mean L1 between the rendered and the true next frames.
    pub fn pair_loss(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        Ok(self.pair_loss_and_codes(x_t, x_next)?.0)
    }

    /// [`TinyLdm::pair_loss`] and the code indices (N, Q) it quantised to, for code-usage logging.
    /// Includes the code-usage regulariser when `entropy_weight` > 0.
    /// With `quant_noise` the noise is drawn from candle's (unseeded) generator; training passes its
    /// own through [`TinyLdm::pair_loss_and_codes_with`].
    pub fn pair_loss_and_codes(&self, x_t: &Tensor, x_next: &Tensor) -> Result<(Tensor, Tensor)> {
        self.pair_loss_and_codes_with(x_t, x_next, None, &AuxTargets::default())
    }

    /// [`TinyLdm::pair_loss_and_codes`] with the quantisation noise of `quant_noise` given: uniform in
    /// [-0.5, 0.5), shape (N, `act_embedding_num`, `levels.len()`) like the latents. Ignored without
    /// `quant_noise`; `None` draws it from candle's generator.
    /// `aux`: the targets of the auxiliary heads (see [`AuxTargets`]).
    pub fn pair_loss_and_codes_with(
        &self,
        x_t: &Tensor,
        x_next: &Tensor,
        noise: Option<&Tensor>,
        aux: &AuxTargets,
    ) -> Result<(Tensor, Tensor)> {
        let z = self.encoder.forward(x_t, x_next)?;
        let (codes, idx) = fsq::fsq_quantize(&z, &self.cfg.levels).map_err(kernel_err)?;
        let codes = if self.cfg.quant_noise {
            let noise = match noise {
                Some(n) if n.dims() == z.dims() => n.to_dtype(DType::F32)?,
                Some(n) => {
                    return Err(crate::Error::Invalid(format!(
                        "quantisation noise {:?} does not match the latents {:?}",
                        n.shape(),
                        z.shape()
                    )))
                }
                None => Tensor::rand(-0.5f32, 0.5, z.shape(), z.device())?,
            };
            fsq_noisy_codes(&z, &self.cfg.levels, &noise)?
        } else {
            codes
        };
        let mut loss = self.reconstruction_loss(x_t, x_next, &codes)?;
        let (et, en) = aux.extent_pair.unwrap_or((x_t, x_next));
        if let Some(extent) = self.extent_loss(et, en, &codes)? {
            loss = (loss + (extent * self.cfg.extent_weight)?)?;
        }
        if self.displacement_head.is_some() {
            let target = aux.displacement.ok_or_else(|| {
                crate::Error::Invalid(
                    "TinyLdm: displacement_weight is on but no displacement targets were given".into(),
                )
            })?;
            if let Some(d) = self.displacement_loss(&codes, target)? {
                loss = (loss + (d * self.cfg.displacement_weight)?)?;
            }
        }
        if self.cfg.variance_weight > 0.0 && z.dim(0)? > 1 {
            // On tanh(z), the shape of FSQ's bound: a hinge on raw z is met by pushing a few
            // latents into saturation, which spreads nothing over the bins.
            let std = (z.flatten_to(1)?.tanh()?.var_keepdim(0)? + 1e-4)?.sqrt()?;
            let hinge = std.affine(-1.0, self.cfg.variance_target)?.relu()?.mean_all()?;
            loss = (loss + (hinge * self.cfg.variance_weight)?)?;
        }
        if self.cfg.saturation_weight > 0.0 {
            loss = (loss + (saturation_penalty(&z)? * self.cfg.saturation_weight)?)?;
        }
        if self.cfg.entropy_weight != 0.0 {
            let (per_sample, batch) = fsq_entropy_terms(&z, &self.cfg.levels, self.cfg.entropy_temperature)?;
            loss = (loss + ((per_sample - batch)? * self.cfg.entropy_weight)?)?;
        }
        Ok((loss, idx))
    }

    fn reconstruction_loss(&self, x_t: &Tensor, x_next: &Tensor, codes: &Tensor) -> Result<Tensor> {
        self.render_error(&self.render_pairs(x_t, codes)?, x_next, x_t)
    }

    /// The stage-1 reconstruction loss of a rendered frame `pred` against the true `x_next`
    /// (`ReconLoss`), with the pixels that move between the true `x_t` and `x_next` weighted
    /// `1 + motion_weight`. All (N, 3, H, W); `pred` may come from a rendered, not a true, x_t.
    pub fn render_error(&self, pred: &Tensor, x_next: &Tensor, x_t: &Tensor) -> Result<Tensor> {
        let err = match self.cfg.loss {
            ReconLoss::L1 => (pred - x_next)?.abs()?,
            ReconLoss::Mse => (pred - x_next)?.sqr()?,
        };
        if self.cfg.motion_weight == 0.0 {
            return Ok(err.mean_all()?);
        }
        let moving = moving_mask(&(x_next - x_t)?.abs()?)?.to_dtype(err.dtype())?;
        let weight = ((moving * self.cfg.motion_weight)? + 1.0)?;
        Ok(err.broadcast_mul(&weight)?.mean_all()?)
    }
}

/// Targets of the auxiliary heads of [`TinyLdm::pair_loss_and_codes_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AuxTargets<'a> {
    /// The frames whose moved area the head of `extent_weight` regresses, when they are not the
    /// pair itself (training passes the pair before augmentation, so a texture added behind the
    /// hand changes what the encoder sees but not the target); ignored without the head.
    pub extent_pair: Option<(&'a Tensor, &'a Tensor)>,
    /// (N, 3) targets of the head of `displacement_weight` ([`TinyLdm::displacement_loss`]);
    /// required with the head, ignored without it.
    pub displacement: Option<&'a Tensor>,
}

/// FSQ's bound of z (..., D) plus `noise` (uniform in [-0.5, 0.5), z's shape, f32: one bin), divided
/// by the half width: the codes FSQ would give with the rounding replaced by noise (see
/// `TinyLdmConfig::quant_noise`).
pub fn fsq_noisy_codes(z: &Tensor, levels: &[usize], noise: &Tensor) -> Result<Tensor> {
    let bounded = fsq::fsq_bound(z, levels).map_err(kernel_err)?;
    let noise = noise.to_device(bounded.device())?.to_dtype(bounded.dtype())?;
    let hw = fsq::half_widths(levels, z.device()).map_err(kernel_err)?;
    Ok((bounded + noise)?.broadcast_div(&hw)?.to_dtype(z.dtype())?)
}

/// The LFQ / MAGVIT-v2 code-usage terms, factorised over FSQ's dimensions: each latent of z
/// (..., D) is bounded exactly as FSQ bounds it, then softly assigned to its dimension's levels
/// (`softmax_k(-(bounded - level_k)^2 / temperature)`). Returns (mean over latents of the summed
/// per-dimension entropies, summed entropies of the per-dimension assignments averaged over the
/// batch), in nats. Minimising `per_sample - batch` makes each latent commit to one level while the
/// batch as a whole spreads over all levels of every dimension: a collapsed batch (every latent in
/// the centre bin) has batch entropy ~0, a spread one up to `sum_d ln(levels_d)`.
pub fn fsq_entropy_terms(z: &Tensor, levels: &[usize], temperature: f64) -> Result<(Tensor, Tensor)> {
    let d = levels.len();
    if z.rank() < 2 || z.dim(z.rank() - 1)? != d {
        return Err(crate::Error::Invalid(format!("fsq_entropy_terms: z {:?} vs levels {levels:?}", z.shape())));
    }
    let flat = z.flatten_to(z.rank() - 2)?;
    let bounded = fsq::fsq_bound(&flat, levels).map_err(kernel_err)?.to_dtype(z.dtype())?;
    let (mut per_sample, mut batch) =
        (Tensor::zeros((), z.dtype(), z.device())?, Tensor::zeros((), z.dtype(), z.device())?);
    for (i, &l) in levels.iter().enumerate() {
        let b = bounded.narrow(1, i, 1)?;
        let lo = -((l / 2) as f64);
        let grid: Vec<f32> = (0..l).map(|k| (lo + k as f64) as f32).collect();
        let grid = Tensor::from_vec(grid, (1, l), z.device())?.to_dtype(z.dtype())?;
        let logits = (b.broadcast_sub(&grid)?.sqr()? * (-1.0 / temperature))?;
        let p = candle_nn::ops::softmax_last_dim(&logits)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?;
        per_sample = (per_sample - (&p * &logp)?.sum(1)?.mean(0)?)?;
        let mean = p.mean(0)?;
        batch = (batch - (&mean * (mean.clamp(1e-12, 1.0)?.log()?))?.sum(0)?)?;
    }
    Ok((per_sample, batch))
}

/// See [`TinyLdm::loss_breakdown`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossBreakdown {
    /// L1 with the batch's own codes.
    pub l1: f64,
    /// L1 with every code replaced by the centre code (what an identity-copy renderer would not notice).
    pub l1_zero_codes: f64,
    /// L1 with the codes of another transition.
    pub l1_other_codes: f64,
    /// L1 of copying x_t as the prediction.
    pub copy_l1: f64,
    /// Fraction of moving pixels.
    pub moving_frac: f64,
    /// Share of the model's L1 on moving pixels.
    pub moving_share: f64,
    /// Mean over code dims of the batch std of the pre-quantisation latents.
    pub z_std: f64,
    /// Batch entropy of [`fsq_entropy_terms`] (nats, summed over code dims).
    pub batch_entropy: f64,
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
    use rand::SeedableRng;

    fn clip(t: usize, seed: u64) -> Result<Tensor> {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        crate::train::rand_from(&mut rng, -1.0, 1.0, (2, 3, t, 16, 16), &Device::Cpu)
    }

    fn small(kind: RendererKind) -> TinyLdmConfig {
        TinyLdmConfig { image_size: 16, channels: [4, 8, 8], dim: 16, renderer: kind, ..Default::default() }
    }

    #[test]
    fn shapes_and_causality() -> Result<()> {
        let kinds = [RendererKind::FrameConditioned, RendererKind::CodesOnly];
        for (arch, kind) in
            [LdmArch::Patch, LdmArch::Motion, LdmArch::Sprite].into_iter().flat_map(|a| kinds.map(|k| (a, k)))
        {
            let vm = VarMap::new();
            let cfg = TinyLdmConfig { arch, ..small(kind) };
            let m = TinyLdm::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
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
    fn the_motion_renderer_starts_as_the_copy_and_mse_is_squared_error() -> Result<()> {
        let cfg =
            TinyLdmConfig { arch: LdmArch::Motion, loss: ReconLoss::Mse, ..small(RendererKind::FrameConditioned) };
        let vm = VarMap::new();
        let m = TinyLdm::new(&cfg, crate::train::seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu))?;
        let (x_t, x_next) = transition_pairs(&clip(3, 7)?)?;
        let (codes, _) = m.quantize_pairs(&x_t, &x_next)?;
        let d = (m.render_pairs(&x_t, &codes)? - &x_t)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "zero-initialised residual: the untrained renderer copies x_t");
        let want = (&x_next - &x_t)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
        let got = m.pair_loss(&x_t, &x_next)?.to_scalar::<f32>()?;
        assert!((got - want).abs() <= 1e-6 * want, "MSE of the copy: {got} vs {want}");
        Ok(())
    }

    #[test]
    fn the_variance_hinge_charges_a_collapsed_batch_more_than_a_spread_one() -> Result<()> {
        let base = TinyLdmConfig { arch: LdmArch::Motion, ..small(RendererKind::FrameConditioned) };
        let vm = VarMap::new();
        let vb = || crate::train::seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu);
        let plain = TinyLdm::new(&base, vb())?;
        let hinged = TinyLdm::new(&TinyLdmConfig { variance_weight: 2.0, variance_target: 0.5, ..base }, vb())?;
        let loss = |m: &TinyLdm, a: &Tensor, b: &Tensor| -> Result<f32> { Ok(m.pair_loss(a, b)?.to_scalar::<f32>()?) };
        // The hinge by hand: batch std of tanh(z) per code dim over all N*Q latents.
        let by_hand = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let z = hinged.latents(a, b)?.flatten_to(1)?.tanh()?.to_vec2::<f32>()?;
            let n = z.len() as f32;
            let mut h = 0.0;
            for d in 0..z[0].len() {
                let mean = z.iter().map(|r| r[d]).sum::<f32>() / n;
                let var = z.iter().map(|r| (r[d] - mean).powi(2)).sum::<f32>() / (n - 1.0);
                h += (0.5 - (var + 1e-4).sqrt()).max(0.0);
            }
            Ok(2.0 * h / z[0].len() as f32)
        };
        // One transition repeated: only its two queries differ.
        let (x_t, x_next) = transition_pairs(&clip(2, 8)?)?;
        let (a, b) = (x_t.narrow(0, 0, 1)?.repeat((6, 1, 1, 1))?, x_next.narrow(0, 0, 1)?.repeat((6, 1, 1, 1))?);
        let extra = loss(&hinged, &a, &b)? - loss(&plain, &a, &b)?;
        let want = by_hand(&a, &b)?;
        assert!((extra - want).abs() < 1e-4 && want > 0.5, "collapsed batch: {extra} vs {want}");
        // Distinct transitions spread z: the hinge charges less.
        let (x_t, x_next) = transition_pairs(&clip(4, 9)?)?;
        let spread = loss(&hinged, &x_t, &x_next)? - loss(&plain, &x_t, &x_next)?;
        assert!((spread - by_hand(&x_t, &x_next)?).abs() < 1e-4, "spread batch: {spread}");
        assert!((0.0..extra).contains(&spread), "spread batch: {spread} vs collapsed {extra}");
        Ok(())
    }

    #[test]
    fn noisy_codes_stay_within_half_a_bin_of_the_fsq_codes() -> Result<()> {
        let levels = [8usize, 5, 5, 5];
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(2);
        let z = crate::train::rand_from(&mut rng, -3.0, 3.0, (256, 4), &Device::Cpu)?;
        let (codes, _) = fsq::fsq_quantize(&z, &levels).map_err(kernel_err)?;
        let noise = crate::train::rand_from(&mut rng, -0.5, 0.5, (256, 4), &Device::Cpu)?;
        let noisy = fsq_noisy_codes(&z, &levels, &noise)?;
        // |bounded + u - round(bounded)| <= 1 bin, in code units 1 / half_width.
        let hw = Tensor::new(&[4f32, 2., 2., 2.], &Device::Cpu)?;
        let gap = (noisy - &codes)?.abs()?.broadcast_mul(&hw)?.max_all()?.to_scalar::<f32>()?;
        assert!(gap <= 1.0 + 1e-5 && gap > 0.3, "noisy codes {gap} bins from the rounded ones");
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

    #[test]
    fn the_displacement_head_regresses_the_teachers_motion_from_the_codes() -> Result<()> {
        let vm = VarMap::new();
        let plain = TinyLdmConfig { arch: LdmArch::Motion, ..small(RendererKind::FrameConditioned) };
        let vb = || crate::train::seeded_var_builder(&vm, 6, DType::F32, &Device::Cpu);
        let off = TinyLdm::new(&plain, vb())?;
        let names = |vm: &VarMap| -> Vec<String> { vm.data().lock().unwrap().keys().cloned().collect() };
        assert!(!names(&vm).iter().any(|k| k.starts_with("displacement_head")), "off: the keys of earlier runs");
        let on = TinyLdm::new(&TinyLdmConfig { displacement_weight: 3.0, ..plain.clone() }, vb())?;
        assert!(names(&vm).iter().any(|k| k.starts_with("displacement_head")));
        let dev = Device::Cpu;
        let x_t =
            crate::train::rand_from(&mut rand_chacha::ChaCha8Rng::seed_from_u64(2), -1.0, 1.0, (2, 3, 16, 16), &dev)?;
        let x_next = x_t.flip(&[3])?;
        let (codes, _) = on.quantize_pairs(&x_t, &x_next)?;
        let pred = on.displacement_prediction(&codes)?.expect("head");
        assert_eq!(pred.dims(), &[2, 3]);
        // Targets 1 px right of the head's reading, carried = 1: L1 = 1/2 (two axes) / MOTION_SCALE
        // plus the cross-entropy of the logits against 1.
        let p = pred.to_vec2::<f32>()?;
        let target = Tensor::from_vec(
            p.iter().flat_map(|r| [r[0] + 1.0 / MOTION_SCALE as f32, r[1], 1.0]).collect::<Vec<f32>>(),
            (2, 3),
            &dev,
        )?;
        let bce: f64 = p.iter().map(|r| (1.0 + (-(r[2] as f64)).exp()).ln()).sum::<f64>() / 2.0;
        let want = 0.5 / MOTION_SCALE + bce;
        let got = on.displacement_loss(&codes, &target)?.expect("on").to_scalar::<f32>()? as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!(off.displacement_loss(&codes, &target)?.is_none());
        assert!(on.displacement_loss(&codes, &target.narrow(1, 0, 2)?).is_err(), "wrong target shape");
        // Training adds it, weighted; without targets it is an error, not a silent zero.
        let aux = AuxTargets { displacement: Some(&target), ..Default::default() };
        let (l_on, _) = on.pair_loss_and_codes_with(&x_t, &x_next, None, &aux)?;
        let l_off = off.pair_loss(&x_t, &x_next)?.to_scalar::<f32>()? as f64;
        let l_on = l_on.to_scalar::<f32>()? as f64;
        assert!((l_on - l_off - 3.0 * got).abs() <= 1e-4 * l_on.max(1.0), "{l_on} = {l_off} + 3 x {got}");
        assert!(on.pair_loss(&x_t, &x_next).is_err());
        assert!(TinyLdm::new(&TinyLdmConfig { displacement_weight: f64::NAN, ..plain }, vb()).is_err());
        Ok(())
    }

    #[test]
    fn the_saturation_hinge_charges_only_latents_past_fsqs_graded_range() -> Result<()> {
        let dev = Device::Cpu;
        // Past SATURATION_Z every level count up to 8 rounds to its outermost level.
        let levels = [8usize, 5, 5, 5];
        let edge = Tensor::new(&[[SATURATION_Z as f32; 4], [-SATURATION_Z as f32; 4]], &dev)?;
        let far = (&edge * 3.0)?;
        let (_, i_edge) = fsq::fsq_quantize(&edge, &levels).map_err(kernel_err)?;
        let (_, i_far) = fsq::fsq_quantize(&far, &levels).map_err(kernel_err)?;
        assert_eq!(i_edge.to_vec1::<u32>()?, i_far.to_vec1::<u32>()?, "no finer code past the edge");
        // Zero inside, (|z| - edge)^2 outside, averaged over every latent.
        let z = Tensor::new(&[[0.0f32, 1.0, -1.5, 2.5], [-3.5, 0.5, 1.4, -1.0]], &dev)?;
        let got = saturation_penalty(&z)?.to_scalar::<f32>()? as f64;
        let want = ((2.5 - SATURATION_Z).powi(2) + (3.5 - SATURATION_Z).powi(2)) / 8.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Its gradient pulls a saturated latent back towards the graded range, and leaves the rest.
        let v = candle_core::Var::from_tensor(&z)?;
        let g = saturation_penalty(v.as_tensor())?.backward()?;
        let g = g.get(v.as_tensor()).expect("a gradient").to_vec2::<f32>()?;
        assert!(g[0][3] > 0.0 && g[1][0] < 0.0, "{g:?}");
        assert!(g[0][..3].iter().chain(&g[1][1..]).all(|&x| x == 0.0), "{g:?}");
        // In the training loss, weighted; and a bad weight is refused.
        let vm = VarMap::new();
        let plain = TinyLdmConfig { arch: LdmArch::Motion, ..small(RendererKind::FrameConditioned) };
        let vb = || crate::train::seeded_var_builder(&vm, 6, DType::F32, &dev);
        let off = TinyLdm::new(&plain, vb())?;
        let on = TinyLdm::new(&TinyLdmConfig { saturation_weight: 2.0, ..plain.clone() }, vb())?;
        let x_t =
            crate::train::rand_from(&mut rand_chacha::ChaCha8Rng::seed_from_u64(3), -1.0, 1.0, (2, 3, 16, 16), &dev)?;
        let x_next = x_t.flip(&[3])?;
        let hinge = saturation_penalty(&off.latents(&x_t, &x_next)?)?.to_scalar::<f32>()? as f64;
        let (l_off, l_on) = (off.pair_loss(&x_t, &x_next)?, on.pair_loss(&x_t, &x_next)?);
        let (l_off, l_on) = (l_off.to_scalar::<f32>()? as f64, l_on.to_scalar::<f32>()? as f64);
        assert!((l_on - l_off - 2.0 * hinge).abs() <= 1e-5 * l_on.max(1.0), "{l_on} = {l_off} + 2 x {hinge}");
        assert!(TinyLdm::new(&TinyLdmConfig { saturation_weight: -1.0, ..plain }, vb()).is_err());
        Ok(())
    }

    #[test]
    fn the_extent_loss_regresses_the_moving_fraction_from_the_codes_alone() -> Result<()> {
        let vm = VarMap::new();
        let plain = TinyLdmConfig { arch: LdmArch::Motion, ..small(RendererKind::FrameConditioned) };
        let vb = || crate::train::seeded_var_builder(&vm, 5, DType::F32, &Device::Cpu);
        let off = TinyLdm::new(&plain, vb())?;
        let names = |vm: &VarMap| -> Vec<String> { vm.data().lock().unwrap().keys().cloned().collect() };
        assert!(!names(&vm).iter().any(|k| k.starts_with("extent_head")), "off: no head, the keys of earlier runs");
        let on = TinyLdm::new(&TinyLdmConfig { extent_weight: 2.0, ..plain.clone() }, vb())?;
        assert!(names(&vm).iter().any(|k| k.starts_with("extent_head")));
        // Frame 1 moves a quarter of the first pair's pixels and nothing of the second's.
        let x_t = Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu)?;
        let patch =
            Tensor::ones((1, 3, 8, 8), DType::F32, &Device::Cpu)?.pad_with_zeros(2, 0, 8)?.pad_with_zeros(3, 0, 8)?;
        let x_next = Tensor::cat(&[patch, Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)?], 0)?;
        let (codes, _) = on.quantize_pairs(&x_t, &x_next)?;
        let want_frac = [0.25 * EXTENT_SCALE, 0.0];
        let pred = on.extent_prediction(&codes)?.expect("head").flatten_all()?.to_vec1::<f32>()?;
        let want: f64 = pred.iter().zip(want_frac).map(|(&p, t)| (p as f64 - t).powi(2)).sum::<f64>() / 2.0;
        let got = on.extent_loss(&x_t, &x_next, &codes)?.expect("on").to_scalar::<f32>()? as f64;
        assert!((got - want).abs() <= 1e-5 * want.max(1.0), "extent loss {got} vs {want}");
        assert!(off.extent_loss(&x_t, &x_next, &codes)?.is_none());
        assert!(off.extent_prediction(&codes)?.is_none());
        // The training loss adds it, weighted (no quantisation noise here).
        let l_off = off.pair_loss(&x_t, &x_next)?.to_scalar::<f32>()? as f64;
        let l_on = on.pair_loss(&x_t, &x_next)?.to_scalar::<f32>()? as f64;
        assert!((l_on - l_off - 2.0 * want).abs() <= 1e-4 * l_on.max(1.0), "{l_on} = {l_off} + 2 x {want}");
        // The target can come from another pair (training: the frames before augmentation): a pair
        // with no change regresses the same codes' reading towards 0.
        let (l_still, _) = on.pair_loss_and_codes_with(
            &x_t,
            &x_next,
            None,
            &AuxTargets { extent_pair: Some((&x_t, &x_t)), ..Default::default() },
        )?;
        let still: f64 = pred.iter().map(|&p| (p as f64).powi(2)).sum::<f64>() / 2.0;
        let l_still = l_still.to_scalar::<f32>()? as f64;
        assert!((l_still - l_off - 2.0 * still).abs() <= 1e-4 * l_still.max(1.0), "{l_still} = {l_off} + 2 x {still}");
        // And it reaches the encoder: the codes are how the head hears the frames.
        let grads = on.pair_loss(&x_t, &x_next)?.backward()?;
        let enc = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("encoder"))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>();
        assert!(enc.iter().any(|v| grads.get(v.as_tensor()).is_some()), "no gradient reaches the encoder");
        assert!(TinyLdm::new(&TinyLdmConfig { extent_weight: -1.0, ..plain.clone() }, vb()).is_err());
        // The colour target counts the changed pixels that are vivid in either frame: a grey patch
        // appearing on black counts nothing, a red one counts like the moving target.
        let colour =
            TinyLdm::new(&TinyLdmConfig { extent_weight: 2.0, extent_target: ExtentTarget::Colour, ..plain }, vb())?;
        let red = Tensor::new(&[1f32, -1.0, -1.0], &Device::Cpu)?.reshape((1, 3, 1, 1))?;
        let x_t1 = (Tensor::ones((1, 3, 16, 16), DType::F32, &Device::Cpu)? * -1.0)?;
        let grey = x_t1
            .clone()
            .slice_assign(&[0..1, 0..3, 0..8, 0..8], &Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu)?)?;
        let vivid =
            x_t1.clone().slice_assign(&[0..1, 0..3, 0..8, 0..8], &red.broadcast_as((1, 3, 8, 8))?.contiguous()?)?;
        let frac = |next: &Tensor| -> Result<f32> {
            Ok(colour.extent_fraction(&x_t1, next)?.flatten_all()?.to_vec1::<f32>()?[0])
        };
        assert_eq!(frac(&grey)?, 0.0, "a grey patch on black counts nothing");
        assert_eq!(frac(&vivid)?, 0.25, "a red one counts its quarter");
        assert_eq!(on.extent_fraction(&x_t1, &grey)?.flatten_all()?.to_vec1::<f32>()?[0], 0.25);
        // The cell target counts a 4x4 cell once for any changed pixel in it: one pixel in each of
        // two cells of a 16x16 frame (16 cells) is 2 / 16.
        let cells =
            TinyLdm::new(&TinyLdmConfig { extent_target: ExtentTarget::Cells, ..colour.config().clone() }, vb())?;
        let dots = x_t1
            .clone()
            .slice_assign(&[0..1, 0..3, 1..2, 1..2], &Tensor::ones((1, 3, 1, 1), DType::F32, &Device::Cpu)?)?;
        let dots =
            dots.slice_assign(&[0..1, 0..3, 9..10, 14..15], &Tensor::ones((1, 3, 1, 1), DType::F32, &Device::Cpu)?)?;
        assert_eq!(cells.extent_fraction(&x_t1, &dots)?.flatten_all()?.to_vec1::<f32>()?[0], 2.0 / 16.0);
        assert_eq!(on.extent_fraction(&x_t1, &dots)?.flatten_all()?.to_vec1::<f32>()?[0], 2.0 / 256.0);
        Ok(())
    }

    /// A transition's codes and rendering may not depend on the other transitions of its batch
    /// (they did, through a candle matmul of a transposed batch: see `Encoder::forward`).
    #[test]
    fn each_transition_is_encoded_on_its_own() -> Result<()> {
        use RendererKind::{CodesOnly, FrameConditioned};
        for (kind, mix, arch) in [
            (FrameConditioned, 0, LdmArch::Patch),
            (CodesOnly, 0, LdmArch::Patch),
            (FrameConditioned, 2, LdmArch::Patch),
            (FrameConditioned, 0, LdmArch::Motion),
            (CodesOnly, 0, LdmArch::Motion),
            (FrameConditioned, 0, LdmArch::Sprite),
        ] {
            let vm = VarMap::new();
            let gate = if arch == LdmArch::Motion { 0.02 } else { 0.0 };
            let cfg = TinyLdmConfig { renderer_mix_layers: mix, arch, motion_gate_tau: gate, ..small(kind) };
            // Seeded weights: the same model on every run.
            let m = TinyLdm::new(&cfg, crate::train::seeded_var_builder(&vm, 5, DType::F32, &Device::Cpu))?;
            // 10 transitions. The attention blocks sum in another order in a batch (gemm blocking):
            // allow rounding, far below the O(1) errors of mixed-up samples.
            let (x_t, x_next) = transition_pairs(&clip(6, 4)?)?;
            let tol = if mix > 0 || arch != LdmArch::Patch { 1e-4 } else { 1e-5 };
            let z = m.encoder.forward(&x_t, &x_next)?;
            let (codes, _) = m.quantize_pairs(&x_t, &x_next)?;
            let r = m.render_pairs(&x_t, &codes)?;
            for i in 0..x_t.dim(0)? {
                let (a, b) = (x_t.narrow(0, i, 1)?, x_next.narrow(0, i, 1)?);
                let zi = m.encoder.forward(&a, &b)?;
                let dz = (zi - z.narrow(0, i, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(dz < tol, "{kind:?} transition {i}: z differs by {dz} inside a batch");
                let ri = m.render_pairs(&a, &codes.narrow(0, i, 1)?)?;
                let dr = (ri - r.narrow(0, i, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(dr < tol, "{kind:?} transition {i}: rendering differs by {dr} (mix {mix}) inside a batch");
            }
        }
        Ok(())
    }

    #[test]
    fn the_motion_gate_makes_the_codes_blind_to_what_does_not_move() -> Result<()> {
        // 16x16 frames = 2x2 cells of 8 px. Only cell (0, 0) changes between the frames; a texture
        // added to both frames in the other three cells must not move the latents with the gate on,
        // and does without it.
        let (x_t, x_next) = transition_pairs(&clip(2, 9)?)?;
        let keep =
            Tensor::ones((1, 1, 8, 8), DType::F32, &Device::Cpu)?.pad_with_zeros(2, 0, 8)?.pad_with_zeros(3, 0, 8)?;
        let x_next = (x_next.broadcast_mul(&keep)? + x_t.broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?;
        let texture = Tensor::randn(0f32, 0.5, x_t.shape(), &Device::Cpu)?.broadcast_mul(&keep.affine(-1.0, 1.0)?)?;
        let shift = |tau: f64| -> Result<f32> {
            let cfg =
                TinyLdmConfig { arch: LdmArch::Motion, motion_gate_tau: tau, ..small(RendererKind::FrameConditioned) };
            let vm = VarMap::new();
            let m = TinyLdm::new(&cfg, crate::train::seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu))?;
            let z = m.encoder.forward(&x_t, &x_next)?;
            let zt = m.encoder.forward(&(&x_t + &texture)?, &(&x_next + &texture)?)?;
            Ok((z - zt)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(shift(0.02)? < 1e-5, "{}", shift(0.02)?);
        assert!(shift(0.0)? > 1e-3, "{}", shift(0.0)?);
        let bad = TinyLdmConfig { motion_gate_tau: 0.02, ..small(RendererKind::FrameConditioned) };
        assert!(TinyLdm::new(&bad, VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)).is_err());
        Ok(())
    }

    #[test]
    fn the_composite_renderer_starts_as_a_faded_copy_and_needs_a_frame_conditioned_motion_renderer() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = TinyLdmConfig { arch: LdmArch::Motion, composite: true, ..small(RendererKind::FrameConditioned) };
        let vm = VarMap::new();
        let m = TinyLdm::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        // Any texture: the zero-initialised out layer gives alpha = sigmoid(-4) and colour 0.
        let x = clip(2, 3)?;
        let (x_t, x_next) = transition_pairs(&x)?;
        let (codes, _) = m.quantize_pairs(&x_t, &x_next)?;
        let y = m.render_pairs(&x_t, &codes)?;
        let keep = 1.0 - 1.0 / (1.0 + 4f64.exp());
        let err = (y - (&x_t * keep)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "composite at init differs from {keep} x_t by {err}");
        // The residual renderer at init is the exact copy instead: the option changes the output.
        let vm = VarMap::new();
        let r = TinyLdm::new(
            &TinyLdmConfig { composite: false, ..cfg.clone() },
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )?;
        let copy = (r.render_pairs(&x_t, &codes)? - &x_t)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(copy < 1e-6, "{copy}");
        for bad in [
            TinyLdmConfig { arch: LdmArch::Patch, ..cfg.clone() },
            TinyLdmConfig { renderer: RendererKind::CodesOnly, ..cfg.clone() },
        ] {
            let vm = VarMap::new();
            assert!(TinyLdm::new(&bad, VarBuilder::from_varmap(&vm, DType::F32, &dev)).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn the_ternary_difference_makes_the_codes_blind_to_the_contrast_of_what_moves() -> Result<()> {
        // A pair whose every change is above the threshold; the same change at 1.7x the contrast
        // (a darker wall behind a lighter gripper, say) must give the same latents with the ternary
        // difference, and other latents with the raw one.
        let (x_t, x_next) = transition_pairs(&clip(2, 11)?)?;
        let diff = (&x_next - &x_t)?;
        let diff = (&diff * diff.abs()?.gt(2.0 * DIFF_THRESHOLD)?.to_dtype(DType::F32)?)?;
        let (a, b) = ((&x_t + &diff)?, (&x_t + (&diff * 1.7)?)?);
        let shift = |norm: DiffNorm| -> Result<f32> {
            let cfg = TinyLdmConfig {
                arch: LdmArch::Motion,
                diff_only: true,
                diff_norm: norm,
                ..small(RendererKind::FrameConditioned)
            };
            let vm = VarMap::new();
            let m = TinyLdm::new(&cfg, crate::train::seeded_var_builder(&vm, 5, DType::F32, &Device::Cpu))?;
            Ok((m.encoder.forward(&x_t, &a)? - m.encoder.forward(&x_t, &b)?)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert_eq!(shift(DiffNorm::Ternary)?, 0.0);
        assert!(shift(DiffNorm::None)? > 1e-3, "{}", shift(DiffNorm::None)?);
        // Refused: a difference norm or a blur on the patch encoder, which has neither; a negative
        // or NaN blur.
        let motion = TinyLdmConfig { arch: LdmArch::Motion, ..small(RendererKind::FrameConditioned) };
        for bad in [
            TinyLdmConfig { diff_norm: DiffNorm::Ternary, ..small(RendererKind::FrameConditioned) },
            TinyLdmConfig { input_blur: 1.0, ..small(RendererKind::FrameConditioned) },
            TinyLdmConfig { input_blur: -1.0, ..motion.clone() },
            TinyLdmConfig { input_blur: f64::NAN, ..motion.clone() },
        ] {
            assert!(TinyLdm::new(&bad, VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)).is_err());
        }
        assert!(TinyLdm::new(
            &TinyLdmConfig { input_blur: 1.5, ..motion },
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)
        )
        .is_ok());
        Ok(())
    }

    #[test]
    fn entropy_terms_reward_a_spread_batch_over_a_collapsed_one() -> Result<()> {
        let levels = [8usize, 5, 5, 5];
        let dev = Device::Cpu;
        // Collapsed: every latent in the centre bin.
        let collapsed = Tensor::zeros((64, 2, 4), DType::F32, &dev)?;
        // Spread: latents at the pre-tanh points of every level of each dimension, cycling.
        let mut v = Vec::new();
        for i in 0..128usize {
            for &l in &levels {
                let half_l = (l as f64 - 1.0) * (1.0 + 1e-3) / 2.0;
                let offset = if l % 2 == 0 { 0.5 } else { 0.0 };
                let level = (i % l) as f64 - (l / 2) as f64;
                v.push((((level + offset) / half_l).atanh() - (offset / half_l).atanh()) as f32);
            }
        }
        let spread = Tensor::from_vec(v, (64, 2, 4), &dev)?;
        // The spread latents land on distinct levels, as the FSQ kernel rounds them.
        let (_, idx) = fsq::fsq_quantize(&spread, &levels).map_err(kernel_err)?;
        let distinct: std::collections::HashSet<u32> = idx.flatten_all()?.to_vec1::<u32>()?.into_iter().collect();
        assert!(distinct.len() >= 40, "{}", distinct.len());
        let reg = |z: &Tensor| -> Result<(f32, f32)> {
            let (s, b) = fsq_entropy_terms(z, &levels, 0.25)?;
            Ok((s.to_scalar::<f32>()?, b.to_scalar::<f32>()?))
        };
        let (cs, cb) = reg(&collapsed)?;
        let (ss, sb) = reg(&spread)?;
        let max = levels.iter().map(|&l| (l as f32).ln()).sum::<f32>();
        assert!((cb - cs).abs() < 1e-4, "collapsed: batch {cb} = per-sample {cs}");
        assert!(sb > 0.95 * max, "spread batch entropy {sb} vs max {max}");
        assert!(ss < 1.0, "latents on level centres are confident (0.15 nats per dim): {ss}");
        assert!((ss - sb) < (cs - cb) - 5.0, "spread {} vs collapsed {}", ss - sb, cs - cb);
        // Its gradient pushes a nearly collapsed batch apart: the regulariser falls along -grad.
        // Seeded (candle's own randn is not), so the test is the same on every run.
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let z0 = (crate::train::randn_from(&mut rng, (64, 2, 4), &dev)? * 0.05)?;
        let z = candle_core::Var::from_tensor(&z0)?;
        let z = z.as_tensor();
        let loss = |z: &Tensor| -> Result<Tensor> {
            let (s, b) = fsq_entropy_terms(z, &levels, 0.25)?;
            Ok((s - b)?)
        };
        let l0 = loss(z)?;
        let g = l0.backward()?;
        let gz = g.get(z).ok_or_else(|| crate::Error::Invalid("no gradient".into()))?;
        let step = 0.05 / gz.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        let z1 = (z - (gz * step)?)?;
        assert!(loss(&z1)?.to_scalar::<f32>()? < l0.to_scalar::<f32>()? - 1e-3);
        Ok(())
    }

    #[test]
    fn mixing_blocks_let_a_far_input_block_reach_the_output() -> Result<()> {
        // Change x_t only in the top-left 4x4 block of a 16x16 frame; look at the bottom-right block.
        let far_change = |layers: usize| -> Result<f32> {
            let vm = VarMap::new();
            let cfg = TinyLdmConfig { renderer_mix_layers: layers, ..small(RendererKind::FrameConditioned) };
            let m = TinyLdm::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
            let (x_t, x_next) = transition_pairs(&clip(2, 5)?)?;
            let (codes, _) = m.quantize_pairs(&x_t, &x_next)?;
            let corner = Tensor::ones((2, 3, 4, 4), DType::F32, &Device::Cpu)?;
            let x_t2 = x_t.slice_assign(&[0..2, 0..3, 0..4, 0..4], &corner)?;
            let d = (m.render_pairs(&x_t, &codes)? - m.render_pairs(&x_t2, &codes)?)?;
            Ok(d.narrow(2, 8, 8)?.narrow(3, 8, 8)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert_eq!(far_change(0)?, 0.0, "the patch-local renderer cannot see across blocks");
        assert!(far_change(1)? > 1e-4);
        Ok(())
    }

    #[test]
    fn configs_without_the_new_fields_describe_the_original_model() {
        // A model section as checkpoints before renderer_mix_layers / zero_init_residual /
        // entropy_weight wrote it: it must parse to the patch-local renderer those weights fit.
        let old = r#"{"act_embedding_num":2,"channels":[16,32,48],"dim":64,"image_size":64,
            "levels":[8,5,5,5],"motion_weight":0.0,"renderer":"frame_conditioned"}"#;
        let cfg: TinyLdmConfig = serde_json::from_str(old).expect("old config parses");
        assert_eq!(cfg, TinyLdmConfig::default());
        assert_eq!((cfg.renderer_mix_layers, cfg.zero_init_residual, cfg.entropy_weight), (0, false, 0.0));
        assert_eq!((cfg.arch, cfg.loss, cfg.variance_weight), (LdmArch::Patch, ReconLoss::L1, 0.0));
    }
}

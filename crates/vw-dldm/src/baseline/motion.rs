//! The translation-equivariant architecture of [`super::LdmArch::Motion`].
//!
//! Why it exists (docs/results.md, "codebook collapse"): the patch architecture's encoder adds a
//! learned position embedding and soft-averages 64 tokens of which 1-2 move, so its latents barely
//! vary between transitions (batch std 0.05 against FSQ bins ~0.25 wide: collapsed at
//! initialisation); and its renderer writes the codes into an 8x8 spatial map, so a code can only say
//! "draw the gripper at cell (i, j)" — an absolute position that a linear probe cannot turn into the
//! direction of the move, and that does not transfer to a moved camera.
//!
//! Here nothing knows absolute position. The encoder is convolutional (3x3 convs at the 8x8 grid
//! see a 40-px neighbourhood, more than the 16-30 px the gripper moves per frame) and pools over
//! space with content-only attention plus a max-pool (which keeps the one moving token from being
//! averaged away), then LayerNorm, so the latents start at the FSQ scale. The frame-conditioned
//! renderer is a small U-Net over x_t whose every level is FiLM-modulated by the codes: a global,
//! position-free signal. The only way for a code to help it is to say *how things move*
//! ("the gripper goes 20 px left with a block"); the U-Net finds *what* moves in x_t.

use super::{kernel_err, patch_conv, DiffNorm, Pyramid, RendererKind, TinyLdmConfig, DIFF_THRESHOLD};
use crate::Result;
use candle_core::{Module, Tensor};
use candle_nn::{linear, Conv2dConfig, Linear, VarBuilder};
use vw_tensor_kernels::conv2d::{conv2d, depth_to_space, Conv2d};

fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    Ok(conv2d(cin, cout, 3, Conv2dConfig { padding: 1, ..Default::default() }, vb)?)
}

/// Convolutional encoder of the frame pair + content-only Q-Former pooling + LayerNorm.
pub(super) struct MotionEncoder {
    pyramid: Pyramid,
    mix: [Conv2d; 2],
    queries: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    norm: crate::qformer::LayerNorm,
    mlp_in: Linear,
    mlp_out: Linear,
    to_code: Linear,
    dim: usize,
    diff_only: bool,
    gate_tau: f64,
    blur: f64,
    diff_norm: DiffNorm,
}

impl MotionEncoder {
    pub(super) fn new(cfg: &TinyLdmConfig, vb: VarBuilder) -> Result<Self> {
        let (c, d) = (cfg.channels[2], cfg.dim);
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self {
            pyramid: Pyramid::new(if cfg.diff_only { 3 } else { 9 }, cfg.channels, vb.pp("conv"))?,
            mix: [conv3(c, d, vb.pp("mix.0"))?, conv3(d, d, vb.pp("mix.1"))?],
            queries: vb.get_with_hints((cfg.act_embedding_num, d), "queries", init)?,
            q: linear(d, d, vb.pp("qformer.q"))?,
            k: linear(d, d, vb.pp("qformer.k"))?,
            v: linear(d, d, vb.pp("qformer.v"))?,
            norm: crate::qformer::LayerNorm::new(d, vb.pp("qformer.norm"))?,
            mlp_in: linear(d, 2 * d, vb.pp("qformer.mlp_in"))?,
            mlp_out: linear(2 * d, d, vb.pp("qformer.mlp_out"))?,
            to_code: linear(d, cfg.levels.len(), vb.pp("to_code"))?,
            dim: d,
            diff_only: cfg.diff_only,
            gate_tau: cfg.motion_gate_tau,
            blur: cfg.input_blur,
            diff_norm: cfg.diff_norm,
        })
    }

    /// x_t, x_next: (N, 3, H, W) -> pre-quantisation latents (N, Q, code_dim).
    pub(super) fn forward(&self, x_t: &Tensor, x_next: &Tensor) -> Result<Tensor> {
        let diff = (x_next - x_t)?;
        let gate = match self.gate_tau {
            0.0 => None,
            tau => Some(motion_gate(&diff, tau)?),
        };
        let diff = normalise_diff(&diff, self.diff_norm)?;
        let inp = if self.diff_only { diff } else { Tensor::cat(&[x_t, x_next, &diff], 1)? };
        let inp = if self.blur > 0.0 { gaussian_blur(&inp, self.blur)? } else { inp };
        let mut f = self.pyramid.forward(&inp)?.pop().ok_or_else(|| crate::Error::Invalid("empty pyramid".into()))?;
        let gated = |f: Tensor| -> Result<Tensor> {
            Ok(match &gate {
                Some(g) => f.broadcast_mul(g)?,
                None => f,
            })
        };
        f = gated(f)?;
        for m in &self.mix {
            f = m.forward(&f)?.silu()?;
        }
        let f = gated(f)?;
        let (n, d, h, w) = f.dims4()?;
        // Contiguous before every Linear / matmul (huggingface/candle#3744, see `Encoder::forward`).
        let tokens = f.reshape((n, d, h * w))?.transpose(1, 2)?.contiguous()?;
        let nq = self.queries.dim(0)?;
        let q = self.q.forward(&self.queries)?.unsqueeze(0)?.broadcast_as((n, nq, d))?.contiguous()?;
        let k = self.k.forward(&tokens)?;
        let v = self.v.forward(&tokens)?;
        let att = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? / (d as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let max = tokens.max_keepdim(1)?; // (N, 1, d): the strongest response anywhere
        let z = att.matmul(&v)?.broadcast_add(&max)?.broadcast_add(&self.queries.unsqueeze(0)?)?;
        let z = self.norm.forward(&z)?;
        let z = (&z + self.mlp_out.forward(&self.mlp_in.forward(&z)?.gelu_erf()?)?)?;
        debug_assert_eq!(self.dim, d);
        Ok(self.to_code.forward(&z)?)
    }
}

/// How much each 8x8 cell of a frame pair changes: `m / (m + tau)` with m the cell's mean of the
/// largest channel of |diff| (N, C, H, W) -> (N, 1, H/8, W/8), in [0, 1); 0 where nothing changes.
/// A function of the data alone (no gradient flows through it).
pub(super) fn motion_gate(diff: &Tensor, tau: f64) -> Result<Tensor> {
    let (n, _, h, w) = diff.dims4()?;
    let m = diff.detach().abs()?.max_keepdim(1)?.reshape((n, 1, h / 8, 8, w / 8, 8))?.mean(5)?.mean(3)?;
    Ok((&m / (&m + tau)?)?)
}

/// The difference of a pair (N, C, H, W) as [`DiffNorm`] says the encoder reads it. A function of
/// the data alone.
pub(super) fn normalise_diff(diff: &Tensor, norm: DiffNorm) -> Result<Tensor> {
    Ok(match norm {
        DiffNorm::None => diff.clone(),
        DiffNorm::UnitMax => {
            let n = diff.dim(0)?;
            let scale = diff.abs()?.flatten_from(1)?.max_keepdim(1)?.clamp(DIFF_THRESHOLD, f64::INFINITY)?;
            diff.broadcast_div(&scale.reshape((n, 1, 1, 1))?)?
        }
        DiffNorm::Ternary => {
            let on = diff.abs()?.gt(DIFF_THRESHOLD)?.to_dtype(diff.dtype())?;
            (diff.sign()? * on)?
        }
    })
}

/// Blurs every channel of x (N, C, H, W) by a Gaussian of standard deviation `sigma` pixels,
/// truncated at 3 sigma, as two matmuls with banded matrices; near the borders the weights that
/// fall outside are dropped and the rest renormalised, so a constant image stays constant.
pub(super) fn gaussian_blur(x: &Tensor, sigma: f64) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let band = |l: usize| -> Result<Tensor> {
        let r = (3.0 * sigma).ceil() as i64;
        let mut m = vec![0f32; l * l];
        for i in 0..l {
            let row = &mut m[i * l..(i + 1) * l];
            for (j, v) in row.iter_mut().enumerate() {
                let d = j as i64 - i as i64;
                if d.abs() <= r {
                    *v = (-(d * d) as f64 / (2.0 * sigma * sigma)).exp() as f32;
                }
            }
            let sum: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= sum);
        }
        // Row i holds the weights of output i; symmetric up to the border renormalisation, so
        // the transpose is what right-multiplication needs.
        Ok(Tensor::from_vec(m, (l, l), x.device())?.to_dtype(x.dtype())?.t()?.contiguous()?)
    };
    let y = x.contiguous()?.reshape((n * c * h, w))?.matmul(&band(w)?)?;
    let y = y.reshape((n * c, h, w))?.transpose(1, 2)?.contiguous()?.reshape((n * c * w, h))?.matmul(&band(h)?)?;
    Ok(y.reshape((n * c, w, h))?.transpose(1, 2)?.reshape((n, c, h, w))?)
}

/// `h * (1 + scale) + shift` with (scale, shift) a linear map of the flattened codes.
struct Film {
    map: Linear,
    ch: usize,
}

impl Film {
    fn new(code_in: usize, ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { map: linear(code_in, 2 * ch, vb)?, ch })
    }

    fn forward(&self, h: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let n = codes.dim(0)?;
        let p = self.map.forward(codes)?.reshape((n, 2 * self.ch, 1, 1))?;
        let (scale, shift) = (p.narrow(1, 0, self.ch)?, p.narrow(1, self.ch, self.ch)?);
        Ok(h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?)
    }
}

/// Subtracted from the composite's opacity logit (see `TinyLdmConfig::composite`).
const COMPOSITE_ALPHA_OFFSET: f64 = 4.0;

/// `x_t + alpha * (c - x_t)` with `alpha = sigmoid(logit - COMPOSITE_ALPHA_OFFSET)`. The out layer
/// is zero-initialised, so alpha starts at sigmoid(-4) = 0.018 everywhere: the renderer starts near
/// the copy of x_t, and every pixel's opacity has a gradient towards painting c (0 at first: the
/// grey of the [-1, 1] range) where that helps.
fn composite(x_t: &Tensor, c: &Tensor, logit: &Tensor) -> Result<Tensor> {
    let alpha = candle_nn::ops::sigmoid(&(logit - COMPOSITE_ALPHA_OFFSET)?)?;
    Ok((x_t + (c - x_t)?.broadcast_mul(&alpha)?)?)
}

/// The background under the sprite layer of the compositing sprite renderer: x_t repainted with c
/// wherever the layer was cut out (`alpha`) or the renderer's own opacity (`logit`, as in
/// [`composite`]) says, `x_t + (1 - (1 - own) (1 - alpha)) (c - x_t)`.
fn cut_out_background(x_t: &Tensor, c: &Tensor, logit: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let own = candle_nn::ops::sigmoid(&(logit - COMPOSITE_ALPHA_OFFSET)?)?;
    let keep = (own.affine(-1.0, 1.0)? * alpha.affine(-1.0, 1.0)?)?;
    Ok((x_t + (c - x_t)?.broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?)
}

/// A U-Net over x_t (or over a code map for the codes-only kind) with FiLM by the codes at every level.
pub(super) struct MotionRenderer {
    kind: RendererKind,
    ctx: Option<Pyramid>,
    code_map: Option<Linear>,
    films: Vec<Film>,
    mid: [Conv2d; 2],
    down: Conv2d,
    bottom: Conv2d,
    up_bottom: Conv2d,
    up: [Conv2d; 2],
    refine: Conv2d,
    out: Conv2d,
    sprite: Option<SpriteShift>,
    composite: bool,
    ch: [usize; 3],
    side: usize,
}

/// The sprite layer of [`super::LdmArch::Sprite`]: the codes choose a translation (a softmax over
/// horizontal and one over vertical offsets, as CDNA's action-conditioned kernels in Finn et al.
/// 2016 — separable here); the U-Net marks in x_t what moves (alpha) and repaints the background;
/// the alpha-premultiplied layer is translated and composited over the background. The soft
/// translation gives every offset a gradient, so the codes can find a 30-px move that a local
/// convolution has no gradient towards.
struct SpriteShift {
    hidden: Linear,
    logits: Linear,
    radius: usize,
}

impl SpriteShift {
    fn new(code_in: usize, radius: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            hidden: linear(code_in, 64, vb.pp("hidden"))?,
            logits: linear(64, 2 * (2 * radius + 1), vb.pp("logits"))?,
            radius,
        })
    }

    /// Weights over offsets -radius..=radius, horizontal and vertical: (N, 2r+1) each.
    fn kernels(&self, codes: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = 2 * self.radius + 1;
        // A fixed prior of +8 on offset 0 (98% of the mass at initialisation): the layer starts
        // where it is, so the renderer starts as the copy whatever alpha is, and every offset's
        // gradient says how much moving the marked content there would help.
        let mut prior = vec![0f32; 2 * k];
        prior[self.radius] = 8.0;
        prior[k + self.radius] = 8.0;
        let prior = Tensor::from_vec(prior, (1, 2 * k), codes.device())?.to_dtype(codes.dtype())?;
        let l = self.logits.forward(&self.hidden.forward(codes)?.gelu_erf()?)?.broadcast_add(&prior)?;
        let sm = |i: usize| -> Result<Tensor> {
            Ok(candle_nn::ops::softmax_last_dim(&l.narrow(1, i * k, k)?.contiguous()?)?)
        };
        Ok((sm(0)?, sm(1)?))
    }
}

/// Translates the rows of x (N, R, L) by a per-sample mixture of offsets: `y[n, r, j] = sum_o
/// a[n, o] x[n, r, j - (o - radius)]` (content moves towards higher j for o > radius; what enters
/// from outside is 0). Built as a batched matmul with a banded (L, L) matrix per sample.
pub(super) fn soft_translate(x: &Tensor, a: &Tensor, radius: usize) -> Result<Tensor> {
    let (n, _, l) = x.dims3()?;
    let k = 2 * radius + 1;
    let mut idx = Vec::with_capacity(l * l);
    let mut mask = Vec::with_capacity(l * l);
    for i in 0..l {
        for j in 0..l {
            let o = j as i64 - i as i64 + radius as i64;
            let ok = (0..k as i64).contains(&o);
            idx.push(if ok { o as u32 } else { 0 });
            mask.push(if ok { 1f32 } else { 0f32 });
        }
    }
    let idx = Tensor::from_vec(idx, l * l, x.device())?;
    let mask = Tensor::from_vec(mask, (1, l, l), x.device())?.to_dtype(x.dtype())?;
    let m = a.index_select(&idx, 1)?.reshape((n, l, l))?.broadcast_mul(&mask)?;
    Ok(x.contiguous()?.matmul(&m)?)
}

impl MotionRenderer {
    pub(super) fn new(cfg: &TinyLdmConfig, vb: VarBuilder) -> Result<Self> {
        let ch = cfg.channels;
        let side = cfg.image_size / 8;
        let code_in = cfg.act_embedding_num * cfg.levels.len();
        let (ctx, code_map) = match cfg.renderer {
            RendererKind::FrameConditioned => (Some(Pyramid::new(3, ch, vb.pp("ctx"))?), None),
            RendererKind::CodesOnly => (None, Some(linear(code_in, ch[2] * side * side, vb.pp("code_map"))?)),
        };
        let bottom_ch = 2 * ch[2];
        // Films: 0, 1 before the two mid convs (8x8), 2 at the 4x4 bottom, 3 at 16x16, 4 at 32x32.
        let film_ch = [ch[2], ch[2], bottom_ch, ch[1], ch[0]];
        let zero = candle_nn::Init::Const(0.0);
        let sprite = cfg.arch == super::LdmArch::Sprite && cfg.renderer == RendererKind::FrameConditioned;
        // RGB, plus an opacity channel for the sprite layer and one for the composite.
        let out_ch = 3 + usize::from(sprite) + usize::from(cfg.composite);
        let out = if cfg.renderer == RendererKind::FrameConditioned {
            // Start as the identity copy of x_t (docs/results.md: a random residual costs the
            // renderer its first hundreds of steps).
            let w = vb.pp("out").get_with_hints((4 * out_ch, ch[0], 1, 1), "weight", zero)?;
            Conv2d::new(w, Some(vb.pp("out").get_with_hints(4 * out_ch, "bias", zero)?), 1, 0)
        } else {
            patch_conv(ch[0], 4 * 3, 1, vb.pp("out"))?
        };
        Ok(Self {
            kind: cfg.renderer,
            ctx,
            code_map,
            films: film_ch
                .iter()
                .enumerate()
                .map(|(i, &c)| Film::new(code_in, c, vb.pp(format!("film.{i}"))))
                .collect::<Result<_>>()?,
            mid: [conv3(ch[2], ch[2], vb.pp("mid.0"))?, conv3(ch[2], ch[2], vb.pp("mid.1"))?],
            down: patch_conv(ch[2], bottom_ch, 2, vb.pp("down"))?,
            bottom: conv3(bottom_ch, bottom_ch, vb.pp("bottom"))?,
            up_bottom: patch_conv(bottom_ch, 4 * ch[2], 1, vb.pp("up_bottom"))?,
            up: [patch_conv(ch[2], 4 * ch[1], 1, vb.pp("up.0"))?, patch_conv(ch[1], 4 * ch[0], 1, vb.pp("up.1"))?],
            refine: conv3(ch[1], ch[1], vb.pp("refine"))?,
            out,
            sprite: match sprite {
                true => Some(SpriteShift::new(code_in, cfg.image_size / 2, vb.pp("sprite"))?),
                false => None,
            },
            composite: cfg.composite,
            ch,
            side,
        })
    }

    /// x_t: (N, 3, H, W), codes: (N, Q, code_dim) -> x_{t+1} (N, 3, H, W).
    pub(super) fn forward(&self, x_t: &Tensor, codes: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(x_t, codes, None)?.0)
    }

    /// [`Self::forward`], and for the sprite renderer its own opacity logits (N, 1, H, W) of what
    /// moves; with `alpha` (N, 1, H, W) in [0, 1] given, the sprite layer cuts out that instead
    /// (training with a teacher's mask, see `train::rollout::RolloutTune::alpha_teacher`).
    pub(super) fn forward_with(
        &self,
        x_t: &Tensor,
        codes: &Tensor,
        alpha: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = codes.dim(0)?;
        let c = codes.flatten_from(1)?;
        let skips = match &self.ctx {
            Some(p) => Some(p.forward(x_t)?),
            None => None,
        };
        let mut h = match (&skips, &self.code_map) {
            (Some(s), _) => s[2].clone(),
            (None, Some(m)) => m.forward(&c)?.reshape((n, self.ch[2], self.side, self.side))?,
            (None, None) => return Err(crate::Error::Invalid("renderer has neither context nor code map".into())),
        };
        for (i, m) in self.mid.iter().enumerate() {
            h = (&h + m.forward(&self.films[i].forward(&h, &c)?)?.silu()?)?;
        }
        let b = self.films[2].forward(&self.down.forward(&h)?.silu()?, &c)?;
        let b = (&b + self.bottom.forward(&b)?.silu()?)?;
        h = (h + depth_to_space(&self.up_bottom.forward(&b)?, 2).map_err(kernel_err)?.silu()?)?;
        for (i, up) in self.up.iter().enumerate() {
            h = depth_to_space(&up.forward(&h)?, 2).map_err(kernel_err)?.silu()?;
            if let Some(s) = &skips {
                h = (h + &s[1 - i])?;
            }
            h = self.films[3 + i].forward(&h, &c)?;
            if i == 0 {
                h = (&h + self.refine.forward(&h)?.silu()?)?;
            }
        }
        let y = depth_to_space(&self.out.forward(&h)?, 2).map_err(kernel_err)?;
        if let Some(sp) = &self.sprite {
            // alpha starts at 0.5 (the out layer is zero-initialised) and the translation at 0.
            let logits = y.narrow(1, 3, 1)?;
            let own = candle_nn::ops::sigmoid(&logits)?;
            let alpha = match alpha {
                Some(a) => a.clone(),
                None => own.clone(),
            };
            let bg = match self.composite {
                // The layer is cut out of the background, not copied: where it was, the renderer
                // paints c (what was behind it) as well as where its own opacity says. Cut by the
                // renderer's own opacity even when a teacher's cuts the layer, so that c is
                // trained wherever inference will use it.
                true => cut_out_background(x_t, &y.narrow(1, 0, 3)?, &y.narrow(1, 4, 1)?, &own)?,
                false => (x_t + y.narrow(1, 0, 3)?)?,
            };
            let layer = Tensor::cat(&[x_t.broadcast_mul(&alpha)?, alpha], 1)?;
            let (ax, ay) = sp.kernels(&c)?;
            let (hh, ww) = (layer.dim(2)?, layer.dim(3)?);
            let moved = soft_translate(&layer.reshape((n, 4 * hh, ww))?, &ax, sp.radius)?.reshape((n, 4, hh, ww))?;
            let moved = soft_translate(&moved.transpose(2, 3)?.reshape((n, 4 * ww, hh))?, &ay, sp.radius)?
                .reshape((n, 4, ww, hh))?
                .transpose(2, 3)?;
            let (fg, a) = (moved.narrow(1, 0, 3)?, moved.narrow(1, 3, 1)?);
            return Ok(((fg + bg.broadcast_mul(&a.affine(-1.0, 1.0)?)?)?, Some(logits)));
        }
        if alpha.is_some() {
            return Err(crate::Error::Invalid("a given opacity needs the sprite renderer".into()));
        }
        if self.composite {
            return Ok((composite(x_t, &y.narrow(1, 0, 3)?, &y.narrow(1, 3, 1)?)?, None));
        }
        Ok((
            match self.kind {
                RendererKind::FrameConditioned => (x_t + y)?,
                RendererKind::CodesOnly => y.tanh()?,
            },
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_blur_keeps_flat_images_and_coarse_moves_and_wipes_out_fine_stripes() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (13usize, 37usize); // awkward, non-square sizes
        let flat = Tensor::full(0.7f32, (2, 3, h, w), &dev)?;
        let d = (gaussian_blur(&flat, 1.5)? - &flat)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "a constant image changed by {d}");
        // Vertical stripes of period 3.2 px (the held-out wallpaper's at 64 px): almost gone.
        let stripes: Vec<f32> = (0..h * w).map(|i| (std::f32::consts::TAU * (i % w) as f32 / 3.2).sin()).collect();
        let stripes = Tensor::from_vec(stripes, (1, 1, h, w), &dev)?;
        let spread = |t: &Tensor| -> Result<f32> {
            let inner = t.narrow(3, 8, w - 16)?;
            Ok(inner.max_all()?.to_scalar::<f32>()? - inner.min_all()?.to_scalar::<f32>()?)
        };
        let before = spread(&stripes)?;
        let after = spread(&gaussian_blur(&stripes, 1.5)?)?;
        assert!(after < 0.05 * before, "stripes {before} -> {after}");
        // A 6-px bright square keeps its centre: the blur moves no content.
        let mut sq = vec![0f32; h * w];
        for y in 4..10 {
            for x in 20..26 {
                sq[y * w + x] = 1.0;
            }
        }
        let b = gaussian_blur(&Tensor::from_vec(sq, (1, 1, h, w), &dev)?, 1.5)?.flatten_all()?.to_vec1::<f32>()?;
        let mass: f32 = b.iter().sum();
        let cx: f32 = b.iter().enumerate().map(|(i, v)| (i % w) as f32 * v).sum::<f32>() / mass;
        let cy: f32 = b.iter().enumerate().map(|(i, v)| (i / w) as f32 * v).sum::<f32>() / mass;
        assert!((cx - 22.5).abs() < 1e-3 && (cy - 6.5).abs() < 0.05, "centre ({cx}, {cy})");
        Ok(())
    }

    #[test]
    fn normalised_differences_ignore_contrast() -> Result<()> {
        let dev = Device::Cpu;
        let diff = Tensor::new(&[[[[0.2f32, -0.4, 0.01]]], [[[0.0, 0.03, -0.02]]]], &dev)?; // (2, 1, 1, 3)
        let unit = normalise_diff(&diff, DiffNorm::UnitMax)?.flatten_all()?.to_vec1::<f32>()?;
        // Sample 0 scaled by its largest |d| 0.4; sample 1's largest is below the threshold: / 0.05.
        let want = [0.5f32, -1.0, 0.025, 0.0, 0.6, -0.4];
        assert!(unit.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{unit:?}");
        // Twice the contrast, same input.
        let twice =
            normalise_diff(&(&diff * 2.0)?.narrow(0, 0, 1)?, DiffNorm::UnitMax)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(twice.iter().zip(&unit[..3]).all(|(a, b)| (a - b).abs() < 1e-6));
        let tern = normalise_diff(&diff, DiffNorm::Ternary)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(tern, vec![1.0, -1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            normalise_diff(&diff, DiffNorm::None)?.flatten_all()?.to_vec1::<f32>()?,
            diff.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn the_sprite_layer_is_cut_out_of_the_background() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[0.5f32, -0.3, 0.9]]]], &dev)?; // (1, 1, 1, 3)
        let c = Tensor::new(&[[[[0.1f32, 0.2, 0.3]]]], &dev)?;
        let alpha = Tensor::new(&[[[[1f32, 0.0, 0.0]]]], &dev)?;
        // Own opacity: none on pixels 0, 1 (logit -30), full on pixel 2 (logit +30).
        let logit = Tensor::new(&[[[[-30f32, -30.0, 30.0]]]], &dev)?;
        let bg = cut_out_background(&x, &c, &logit, &alpha)?.flatten_all()?.to_vec1::<f32>()?;
        // Cut out -> painted c; untouched -> x_t; the renderer's own opacity -> c.
        let want = [0.1f32, -0.3, 0.3];
        assert!(bg.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{bg:?}");
        Ok(())
    }

    #[test]
    fn soft_translate_moves_rows_by_the_chosen_offset() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[1f32, 2., 3., 4., 5.]], [[1., 2., 3., 4., 5.]]], &dev)?;
        // radius 2: offsets -2..=2. Sample 0 moves right by 1, sample 1 left by 2.
        let a = Tensor::new(&[[0f32, 0., 0., 1., 0.], [1., 0., 0., 0., 0.]], &dev)?;
        let y = soft_translate(&x, &a, 2)?.to_vec3::<f32>()?;
        assert_eq!(y[0][0], vec![0., 1., 2., 3., 4.]);
        assert_eq!(y[1][0], vec![3., 4., 5., 0., 0.]);
        // A mixture is the mixture of the moves.
        let a = Tensor::new(&[[0f32, 0., 0.5, 0.5, 0.]], &dev)?;
        let y = soft_translate(&x.narrow(0, 0, 1)?, &a, 2)?.to_vec3::<f32>()?;
        assert_eq!(y[0][0], vec![0.5, 1.5, 2.5, 3.5, 4.5]);
        Ok(())
    }
}

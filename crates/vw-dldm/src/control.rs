//! The control branch that lets the Cosmos DiT render dLDM codes (official
//! `videoworld2/models/ctrl_video2world_dit.py`, `CtrlEncoder`, and `scripts/add_ctrl_branch.py`).
//!
//! A ControlNet-style trainable copy of the DiT's embedders and first `num_control_blocks` blocks
//! (initialised from the main DiT's weights). The codes become a *hint* on the latent grid, embedded
//! by its own patch embedding (`x_embedder2`) and an MLP (`input_hint_block`, SiLU between layers,
//! last layer zero-initialised) and added after the first copied block. After each copied block a
//! zero-initialised linear (`zero_blocks.block{i}`) produces the residual added to the main DiT's
//! hidden states after block i, scaled by `control_weight`. Zero initialisation makes the branch a
//! no-op at the start: the frozen DiT renders exactly as before until training moves it.
//!
//! Stage 2 trains the branch (and the dLDM encoder that makes the codes) with the flow-matching loss
//! of the frozen DiT conditioned on the first latent frame + the codes; see [`flow_matching_loss`].

use crate::{Error, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use vw_diffusion::dit::CosmosPatchEmbed;
use vw_diffusion::{CosmosTransformer3DModel, CosmosTransformerConfig, DitInput};

/// Hyperparameters of [`ControlBranch`] (official `CtrlEncoder` kwargs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlConfig {
    /// DiT blocks copied into the branch (the official checkpoint adds `zero_blocks.block0..2`: 3).
    pub num_control_blocks: usize,
    /// Channels of the hint on the latent grid (official 16 on the Wan latent grid).
    pub hint_channels: usize,
    /// Widths of the hint MLP (official `[16, 16, 32, 32, 96, 96, 256]`).
    pub hint_nf: Vec<usize>,
    /// Scale of the residuals (official `control_weight`).
    pub control_weight: f64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            num_control_blocks: 3,
            hint_channels: 16,
            hint_nf: vec![16, 16, 32, 32, 96, 96, 256],
            control_weight: 1.0,
        }
    }
}

impl ControlConfig {
    /// A tiny config for tests and the CPU CraftWorld run.
    pub fn tiny() -> Self {
        Self { num_control_blocks: 1, hint_channels: 8, hint_nf: vec![16, 32], control_weight: 1.0 }
    }
}

/// The trainable control branch; see the module doc.
pub struct ControlBranch {
    cfg: ControlConfig,
    dit: CosmosTransformer3DModel,
    hint_embed: CosmosPatchEmbed,
    hint_mlp: Vec<Linear>,
    zero_blocks: Vec<Linear>,
}

impl ControlBranch {
    /// Builds the branch for a main DiT of config `dit_cfg` under `vb` (keys `ctrl.*` for the copied
    /// DiT, `x_embedder2`, `input_hint_block.{i}`, `zero_blocks.block{i}`). The copied weights start
    /// random: call [`ControlBranch::copy_from_main`] with the main DiT's tensors. The hint MLP's last
    /// layer and the zero blocks are zero-initialised here.
    pub fn new(cfg: &ControlConfig, dit_cfg: &CosmosTransformerConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.num_control_blocks == 0 || cfg.num_control_blocks > dit_cfg.num_layers {
            return Err(Error::Invalid(format!(
                "num_control_blocks {} must be in 1..={} (the DiT's blocks)",
                cfg.num_control_blocks, dit_cfg.num_layers
            )));
        }
        let d = dit_cfg.hidden_size();
        let ctrl_cfg = CosmosTransformerConfig { num_layers: cfg.num_control_blocks, ..dit_cfg.clone() };
        let dit = CosmosTransformer3DModel::new(&ctrl_cfg, vb.pp("ctrl")).map_err(|e| Error::Invalid(e.to_string()))?;
        let hint_embed = CosmosPatchEmbed::new(cfg.hint_channels, d, dit_cfg.patch_size, vb.pp("x_embedder2"))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut widths = vec![d];
        widths.extend(&cfg.hint_nf);
        let mut hint_mlp = Vec::new();
        for (i, w) in widths.windows(2).enumerate() {
            hint_mlp.push(linear(w[0], w[1], vb.pp("input_hint_block").pp(2 * i))?);
        }
        let last = *widths.last().unwrap_or(&d);
        let zero = candle_nn::Init::Const(0.0);
        let zero_linear = |cin: usize, cout: usize, vb: VarBuilder| -> Result<Linear> {
            let w = vb.get_with_hints((cout, cin), "weight", zero)?;
            let b = vb.get_with_hints(cout, "bias", zero)?;
            Ok(Linear::new(w, Some(b)))
        };
        hint_mlp.push(zero_linear(last, d, vb.pp("input_hint_block").pp(2 * (widths.len() - 1)))?);
        let zero_blocks = (0..cfg.num_control_blocks)
            .map(|i| zero_linear(d, d, vb.pp("zero_blocks").pp(format!("block{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self { cfg: cfg.clone(), dit, hint_embed, hint_mlp, zero_blocks })
    }

    /// The config.
    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// Initialises the copied DiT from the main DiT (what `add_ctrl_branch.py` does for a ControlNet
    /// copy): every `ctrl.<key>` variable of `vars` takes the value of `<key>` in `main`.
    pub fn copy_from_main(vars: &[(String, candle_core::Var)], main: &[(String, candle_core::Var)]) -> Result<usize> {
        let main: std::collections::HashMap<&str, &candle_core::Var> =
            main.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut copied = 0;
        for (k, v) in vars {
            if let Some(src) = k.strip_prefix("ctrl.").and_then(|k| main.get(k)) {
                if src.dims() != v.dims() {
                    return Err(Error::Invalid(format!(
                        "control branch key {k}: shape {:?} differs from the main DiT's {:?}",
                        v.dims(),
                        src.dims()
                    )));
                }
                v.set(&src.as_tensor().detach())?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// Residuals for the main DiT: `(block index, (B, N, D))` for the first `num_control_blocks`
    /// blocks. `inp` is the main DiT's input; `hint` is (B, hint_channels, T, H, W) on its latent grid.
    pub fn residuals(&self, inp: &DitInput, hint: &Tensor) -> Result<Vec<(usize, Tensor)>> {
        let (mut x, st) = self.dit.prepare(inp).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut g = self.hint_embed.forward(&hint.to_dtype(x.dtype())?).map_err(|e| Error::Invalid(e.to_string()))?;
        let n = self.hint_mlp.len();
        for (i, l) in self.hint_mlp.iter().enumerate() {
            g = l.forward(&g)?;
            if i + 1 < n {
                g = g.silu()?;
            }
        }
        let mut out = Vec::with_capacity(self.zero_blocks.len());
        for (i, (block, zero)) in self.dit.blocks().iter().zip(&self.zero_blocks).enumerate() {
            x = block.forward(&x, &st).map_err(|e| Error::Invalid(e.to_string()))?;
            if i == 0 {
                x = (x + &g)?;
            }
            out.push((i, (zero.forward(&x)? * self.cfg.control_weight)?));
        }
        Ok(out)
    }
}

/// A video as a "pixel latent" for a DiT without a VAE: space-to-depth by `factor`,
/// (B, C, T, H, W) -> (B, C*factor^2, T, H/factor, W/factor). The CPU CraftWorld renderer works in
/// this space (no Wan VAE is trainable on 2 CPU cores).
pub fn pixel_latents(frames: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, c, t, h, w) = frames.dims5()?;
    if h % factor != 0 || w % factor != 0 {
        return Err(Error::Invalid(format!("frames {h}x{w} are not divisible by the pixel-latent factor {factor}")));
    }
    let (hf, wf) = (h / factor, w / factor);
    Ok(frames
        .reshape(vec![b, c, t, hf, factor, wf, factor])?
        .permute(vec![0, 1, 4, 6, 2, 3, 5])?
        .contiguous()?
        .reshape((b, c * factor * factor, t, hf, wf))?)
}

/// Inverse of [`pixel_latents`].
pub fn pixel_frames(latents: &Tensor, factor: usize, channels: usize) -> Result<Tensor> {
    let (b, _, t, hf, wf) = latents.dims5()?;
    Ok(latents
        .reshape(vec![b, channels, factor, factor, t, hf, wf])?
        .permute(vec![0, 1, 4, 5, 2, 6, 3])?
        .contiguous()?
        .reshape((b, channels, t, hf * factor, wf * factor))?)
}

/// The hint of a clip: the code vectors of transition s, (B, S, K), projected by `proj` to
/// `hint_channels` and broadcast over latent frame s + 1 (frame 0, the given frame, gets zeros).
/// Returns (B, hint_channels, S + 1, H, W).
pub fn codes_to_hint(code_vecs: &Tensor, proj: &Linear, h: usize, w: usize) -> Result<Tensor> {
    let (b, s, _) = code_vecs.dims3()?;
    let e = proj.forward(code_vecs)?; // (B, S, Ch)
    let ch = e.dim(2)?;
    let e = e.transpose(1, 2)?.reshape((b, ch, s, 1, 1))?.broadcast_as((b, ch, s, h, w))?;
    let zeros = Tensor::zeros((b, ch, 1, h, w), e.dtype(), e.device())?;
    Ok(Tensor::cat(&[&zeros, &e.contiguous()?], 2)?)
}

/// The flow-matching problem of one batch: the noisy latents (given frame kept clean), the
/// condition mask flagging the given frame, and the velocity target `eps - x0`.
struct FlowMatching {
    noisy: Tensor,
    mask: Tensor,
    target: Tensor,
}

impl FlowMatching {
    fn new(x0: &Tensor, sigma: &Tensor, eps: &Tensor) -> Result<Self> {
        let (b, _, t, h, w) = x0.dims5()?;
        let s = sigma.reshape((b, 1, 1, 1, 1))?;
        let noisy = (x0.broadcast_mul(&s.affine(-1.0, 1.0)?)? + eps.broadcast_mul(&s)?)?;
        // The given frame stays clean.
        let noisy = Tensor::cat(&[&x0.narrow(2, 0, 1)?, &noisy.narrow(2, 1, t - 1)?], 2)?;
        let mut mask = vec![0f32; t];
        mask[0] = 1.0;
        let mask = Tensor::from_vec(mask, (1, 1, t, 1, 1), x0.device())?.broadcast_as((b, 1, t, h, w))?.contiguous()?;
        Ok(Self { noisy, mask, target: (eps - x0)? })
    }

    fn input<'a>(&'a self, sigma: &'a Tensor, text: &'a Tensor) -> DitInput<'a> {
        DitInput {
            latents: &self.noisy,
            timestep: sigma,
            text,
            text_mask: None,
            condition_mask: Some(&self.mask),
            padding_mask: None,
            fps: None,
        }
    }

    /// Mean squared error of the predicted velocity `v` over the generated frames, in `v`'s dtype.
    fn loss(&self, v: &Tensor) -> Result<Tensor> {
        let t = v.dim(2)?;
        let target = self.target.to_dtype(v.dtype())?;
        let err = (v.narrow(2, 1, t - 1)? - target.narrow(2, 1, t - 1)?)?;
        Ok(err.sqr()?.mean_all()?)
    }
}

/// Flow-matching (rectified-flow) loss of a video2world DiT on clean latents `x0` (B, C, T, H, W)
/// whose first latent frame is given: `x_s = (1 - s) x0 + s eps`, the DiT predicts the velocity
/// `eps - x0` at timestep `s`; the given frame is clean and flagged by the condition mask, and the
/// loss is the mean squared error over the other frames. `sigma` (B,) and `eps` (like x0) come from
/// the caller's RNG so a resumed run replays them. With `control`, the branch's residuals (from
/// `hint`) are added to the main DiT's hidden states.
pub fn flow_matching_loss(
    dit: &CosmosTransformer3DModel,
    control: Option<(&ControlBranch, &Tensor)>,
    x0: &Tensor,
    sigma: &Tensor,
    eps: &Tensor,
    text: &Tensor,
) -> Result<Tensor> {
    let fm = FlowMatching::new(x0, sigma, eps)?;
    let inp = fm.input(sigma, text);
    let residuals = match control {
        Some((branch, hint)) => branch.residuals(&inp, hint)?,
        None => Vec::new(),
    };
    let v = dit.forward_with_residuals(&inp, &residuals).map_err(|e| Error::Invalid(e.to_string()))?;
    fm.loss(&v)
}

/// [`flow_matching_loss`] with the control branch, for a *frozen* `dit` too large for plain autograd
/// (the 2B DiT at video size): the DiT's part of the backward runs block by block with recomputation
/// ([`CosmosTransformer3DModel::residual_grads`]), and the returned tensor is a surrogate whose
/// value is the loss (computed in f32) and whose gradient w.r.t. everything upstream of the
/// residuals (branch, hint, dLDM encoder) is exactly the loss's. Only the branch's own graph is kept
/// for `backward`; the DiT's weights get no gradient.
pub fn flow_matching_loss_recompute(
    dit: &CosmosTransformer3DModel,
    branch: &ControlBranch,
    hint: &Tensor,
    x0: &Tensor,
    sigma: &Tensor,
    eps: &Tensor,
    text: &Tensor,
) -> Result<Tensor> {
    let fm = FlowMatching::new(x0, sigma, eps)?;
    let inp = fm.input(sigma, text);
    let residuals = branch.residuals(&inp, hint)?;
    let out = dit
        .residual_grads(&inp, &residuals, |v| {
            fm.loss(&v.to_dtype(DType::F32)?).map_err(|e| vw_diffusion::Error::Invalid(e.to_string()))
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut inner = Tensor::zeros((), DType::F32, x0.device())?;
    for ((_, r), g) in residuals.iter().zip(&out.grads) {
        inner = (inner + (r.to_dtype(DType::F32)? * g.to_dtype(DType::F32)?)?.sum_all()?)?;
    }
    // value: the loss (inner - inner is exactly 0); gradient: d inner = sum_i g_i dr_i.
    Ok(((&inner - inner.detach())? + out.loss.to_dtype(DType::F32)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::named_vars;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn tiny_dit() -> CosmosTransformerConfig {
        CosmosTransformerConfig { in_channels: 13, out_channels: 12, ..CosmosTransformerConfig::tiny() }
    }

    #[test]
    fn pixel_latents_round_trip() -> Result<()> {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let x = crate::train::rand_from(&mut rng, -1.0, 1.0, (2, 3, 2, 8, 8), &Device::Cpu)?;
        let l = pixel_latents(&x, 2)?;
        assert_eq!(l.dims(), &[2, 12, 2, 4, 4]);
        let back = pixel_frames(&l, 2, 3)?;
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, back.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    /// The checkpointed stage-2 path (block-level recomputation through the frozen DiT + the
    /// surrogate loss) gives the same loss and the same gradients of every trainable tensor (control
    /// branch and the code-to-hint projection) as plain autograd through the whole graph.
    #[test]
    fn recomputed_stage2_gradients_equal_plain_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let dcfg = CosmosTransformerConfig { num_layers: 4, ..tiny_dit() };
        let main_vm = VarMap::new();
        let dit = CosmosTransformer3DModel::new(&dcfg, crate::train::seeded_var_builder(&main_vm, 7, DType::F32, &dev))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let ctrl_vm = VarMap::new();
        let vb = crate::train::seeded_var_builder(&ctrl_vm, 8, DType::F32, &dev);
        let ccfg = ControlConfig { num_control_blocks: 2, ..ControlConfig::tiny() };
        let branch = ControlBranch::new(&ccfg, &dcfg, vb.pp("control"))?;
        let hint_proj = linear(6, ccfg.hint_channels, vb.pp("hint_proj"))?;
        // Random values everywhere: zero-initialised outputs would zero most gradients.
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
        let vars = named_vars(&ctrl_vm);
        for (_, v) in &vars {
            v.set(&(crate::train::randn_from(&mut rng, v.shape().clone(), &dev)? * 0.2)?)?;
        }
        let (b, t, h, w) = (2, 3, 4, 4);
        let x0 = crate::train::randn_from(&mut rng, (b, 12, t, h, w), &dev)?;
        let eps = crate::train::randn_from(&mut rng, (b, 12, t, h, w), &dev)?;
        let codes = crate::train::randn_from(&mut rng, (b, t - 1, 6), &dev)?;
        let sigma = Tensor::new(&[0.3f32, 0.8], &dev)?;
        let text = crate::train::randn_from(&mut rng, (b, 3, dcfg.text_embed_dim), &dev)?;

        let hint = codes_to_hint(&codes, &hint_proj, h, w)?;
        let plain = flow_matching_loss(&dit, Some((&branch, &hint)), &x0, &sigma, &eps, &text)?;
        let plain_grads = plain.backward()?;
        let hint = codes_to_hint(&codes, &hint_proj, h, w)?;
        let ck = flow_matching_loss_recompute(&dit, &branch, &hint, &x0, &sigma, &eps, &text)?;
        let ck_grads = ck.backward()?;
        let (lp, lc) = (plain.to_scalar::<f32>()?, ck.to_scalar::<f32>()?);
        assert!((lp - lc).abs() <= 1e-6 * lp.abs(), "loss {lp} vs {lc}");
        let mut compared = 0;
        for (name, v) in &vars {
            match (plain_grads.get(v.as_tensor()), ck_grads.get(v.as_tensor())) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    assert!(scale > 0.0, "{name}: zero reference gradient");
                    assert!(diff <= 1e-4 * scale, "{name}: max |diff| {diff} vs max |grad| {scale}");
                    compared += 1;
                }
                (p, c) => panic!("{name}: gradient present plain {} / recomputed {}", p.is_some(), c.is_some()),
            }
        }
        // Every copied block, the hint embedding and MLP, the zero blocks and the projection.
        assert!(compared >= 40, "compared only {compared} tensors");
        Ok(())
    }

    #[test]
    fn zero_initialised_branch_leaves_the_dit_unchanged_until_trained() -> Result<()> {
        let dev = Device::Cpu;
        let dcfg = tiny_dit();
        let main_vm = VarMap::new();
        let dit = CosmosTransformer3DModel::new(&dcfg, VarBuilder::from_varmap(&main_vm, DType::F32, &dev))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let ctrl_vm = VarMap::new();
        let branch =
            ControlBranch::new(&ControlConfig::tiny(), &dcfg, VarBuilder::from_varmap(&ctrl_vm, DType::F32, &dev))?;
        let copied = ControlBranch::copy_from_main(&named_vars(&ctrl_vm), &named_vars(&main_vm))?;
        assert!(copied > 10, "copied {copied} tensors");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(2);
        let x0 = crate::train::randn_from(&mut rng, (2, 12, 2, 4, 4), &dev)?;
        let eps = crate::train::randn_from(&mut rng, (2, 12, 2, 4, 4), &dev)?;
        let hint = crate::train::randn_from(&mut rng, (2, 8, 2, 4, 4), &dev)?;
        let sigma = Tensor::new(&[0.3f32, 0.8], &dev)?;
        let text = Tensor::zeros((2, 1, dcfg.text_embed_dim), DType::F32, &dev)?;
        let plain = flow_matching_loss(&dit, None, &x0, &sigma, &eps, &text)?.to_scalar::<f32>()?;
        let with = flow_matching_loss(&dit, Some((&branch, &hint)), &x0, &sigma, &eps, &text)?;
        assert_eq!(plain, with.to_scalar::<f32>()?);
        // The zero blocks do receive gradient, so training can move the branch off zero.
        let grads = with.backward()?;
        let zb = named_vars(&ctrl_vm).into_iter().find(|(k, _)| k == "zero_blocks.block0.weight").map(|(_, v)| v);
        let zb = zb.ok_or_else(|| Error::Invalid("no zero block".into()))?;
        let g = grads.get(zb.as_tensor()).ok_or_else(|| Error::Invalid("zero block got no gradient".into()))?;
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }
}

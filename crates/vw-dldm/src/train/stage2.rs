//! Stage 2: the dLDM's codes drive a video2world DiT through the control branch, trained with the
//! flow-matching loss while the DiT is frozen.
//!
//! For the CPU CraftWorld run the "VDM" is a tiny Cosmos DiT (vw-diffusion's
//! `CosmosTransformer3DModel` at tiny sizes) working on pixel latents (space-to-depth by 4, no VAE),
//! pre-trained here as a video2world model on CraftWorld train transitions (phase A, its own run
//! folder `vdm/`), then frozen while the encoder + quantizer + control branch train (phase B).
//! A clip is one transition: latent frame 0 is given, frame 1 is generated.

use super::craft::{CraftData, Transitions};
use super::{fit, rand_from, randn_from, RunDir, TrainConfig, Trainer};
use crate::baseline::{TinyLdm, TinyLdmConfig};
use crate::control::{
    codes_to_hint, flow_matching_loss, flow_matching_loss_recompute, pixel_frames, pixel_latents, ControlBranch,
    ControlConfig,
};
use crate::{Error, LatentDynamics, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::Path;
use vw_diffusion::{CosmosTransformer3DModel, CosmosTransformerConfig};
use vw_tensor_kernels::fsq;

/// Sizes of the tiny DiT (serialisable; mapped onto `CosmosTransformerConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TinyDitConfig {
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Channels per head (>= 12 for the 3D RoPE split).
    pub attention_head_dim: usize,
    /// Blocks.
    pub num_layers: usize,
    /// MLP width / model width.
    pub mlp_ratio: f64,
    /// Width of the (null) text embedding.
    pub text_embed_dim: usize,
    /// AdaLN-LoRA width.
    pub adaln_lora_dim: usize,
}

impl Default for TinyDitConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 2,
            attention_head_dim: 24,
            num_layers: 2,
            mlp_ratio: 2.0,
            text_embed_dim: 16,
            adaln_lora_dim: 16,
        }
    }
}

impl TinyDitConfig {
    /// The Cosmos config for latents of `channels` channels.
    pub fn cosmos(&self, channels: usize) -> CosmosTransformerConfig {
        CosmosTransformerConfig {
            in_channels: channels + 1,
            out_channels: channels,
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: self.attention_head_dim,
            num_layers: self.num_layers,
            mlp_ratio: self.mlp_ratio,
            text_embed_dim: self.text_embed_dim,
            adaln_lora_dim: self.adaln_lora_dim,
            max_size: [16, 64, 64],
            patch_size: [1, 2, 2],
            rope_scale: [1.0, 1.0, 1.0],
            concat_padding_mask: true,
            extra_pos_embed_type: None,
            ..CosmosTransformerConfig::default()
        }
    }
}

/// Everything a stage-2 run needs; serialised into its checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stage2Config {
    /// Encoder + quantizer (its renderer is not used in stage 2).
    pub model: TinyLdmConfig,
    /// The tiny DiT.
    pub dit: TinyDitConfig,
    /// The control branch.
    pub control: ControlConfig,
    /// Space-to-depth factor of the pixel latents.
    pub pixel_factor: usize,
    /// Phase A: video2world pre-training of the DiT.
    pub vdm_train: TrainConfig,
    /// Phase B: encoder + control branch with the DiT frozen.
    pub train: TrainConfig,
    /// Training episodes (train split).
    pub data: CraftData,
    /// Seed of the weight initialisation.
    pub init_seed: u64,
    /// Euler steps when rendering.
    pub sample_steps: usize,
    /// Backward through the frozen DiT block by block with recomputation instead of plain autograd
    /// (same gradients; needed at the 2B shape, see `vw_diffusion::recompute`).
    pub recompute_dit: bool,
    /// LoRA adapters on the frozen DiT, trained with the control branch (`dit_lora.*` in the
    /// checkpoint); None trains no DiT weight. Not combined with `recompute_dit` yet (its backward
    /// gives gradients for the residuals only).
    pub lora: Option<vw_diffusion::lora::LoraConfig>,
}

impl Default for Stage2Config {
    fn default() -> Self {
        Self::tiny()
    }
}

impl Stage2Config {
    /// The CPU CraftWorld config.
    pub fn tiny() -> Self {
        let base = super::stage1::Stage1Config::tiny();
        let t = |steps: u64, lr: f64| TrainConfig {
            optim: super::AdamWConfig { lr, weight_decay: 0.0, ..Default::default() },
            warmup_steps: 30,
            total_steps: steps,
            checkpoint_every: 500,
            log_every: 10,
            batch_size: 16,
            ..base.train.clone()
        };
        Self {
            model: base.model,
            dit: TinyDitConfig::default(),
            control: ControlConfig::tiny(),
            pixel_factor: 4,
            vdm_train: t(600, 2e-3),
            train: t(600, 1e-3),
            data: base.data,
            init_seed: 0,
            sample_steps: 10,
            recompute_dit: false,
            lora: None,
        }
    }

    fn channels(&self) -> usize {
        3 * self.pixel_factor * self.pixel_factor
    }

    fn json<T: Serialize>(v: &T) -> Result<serde_json::Value> {
        serde_json::to_value(v).map_err(|e| Error::Invalid(format!("serialising the run config: {e}")))
    }
}

/// The stage-2 dLDM: encoder + quantizer, frozen DiT, control branch and the code-to-hint projection.
pub struct Stage2Model {
    cfg: Stage2Config,
    ldm: TinyLdm,
    dit: CosmosTransformer3DModel,
    branch: ControlBranch,
    hint_proj: Linear,
    text: Tensor,
}

impl Stage2Model {
    /// Builds the trainable part under `vb` (`ldm.*`, `control.*`, `hint_proj`, and `dit_lora.*` when
    /// `cfg.lora` is set) around `dit`.
    pub fn new(cfg: &Stage2Config, mut dit: CosmosTransformer3DModel, vb: VarBuilder) -> Result<Self> {
        if let Some(lora) = &cfg.lora {
            if cfg.recompute_dit {
                return Err(Error::Invalid(
                    "stage 2: lora with recompute_dit is not supported (the recomputed backward has no DiT-weight gradients)".into(),
                ));
            }
            dit.attach_lora(lora, vb.pp("dit_lora")).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let dcfg = cfg.dit.cosmos(cfg.channels());
        let ldm = TinyLdm::new(&cfg.model, vb.pp("ldm"))?;
        let branch = ControlBranch::new(&cfg.control, &dcfg, vb.pp("control"))?;
        let code_in = cfg.model.act_embedding_num * cfg.model.levels.len();
        let hint_proj = linear(code_in, cfg.control.hint_channels, vb.pp("hint_proj"))?;
        let text = Tensor::zeros((1, 1, cfg.dit.text_embed_dim), DType::F32, vb.device())?;
        Ok(Self { cfg: cfg.clone(), ldm, dit, branch, hint_proj, text })
    }

    fn hint(&self, code_vecs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let n = code_vecs.dim(0)?;
        codes_to_hint(&code_vecs.reshape((n, 1, ()))?, &self.hint_proj, h, w)
    }

    /// Phase-B loss of transitions (x_t, x_next) (N, 3, H, W); noise from `rng`.
    pub fn loss(&self, x_t: &Tensor, x_next: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        let (codes, _) = self.ldm.quantize_pairs(x_t, x_next)?;
        let clip = Tensor::stack(&[x_t, x_next], 2)?;
        let x0 = pixel_latents(&clip, self.cfg.pixel_factor)?;
        let (n, _, _, h, w) = x0.dims5()?;
        let hint = self.hint(&codes, h, w)?;
        let sigma = rand_from(rng, 0.0, 1.0, n, x0.device())?;
        let eps = randn_from(rng, x0.shape().clone(), x0.device())?;
        let text = self.text.broadcast_as((n, 1, self.cfg.dit.text_embed_dim))?.contiguous()?;
        if self.cfg.recompute_dit {
            flow_matching_loss_recompute(&self.dit, &self.branch, &hint, &x0, &sigma, &eps, &text)
        } else {
            flow_matching_loss(&self.dit, Some((&self.branch, &hint)), &x0, &sigma, &eps, &text)
        }
    }

    /// Generates x_{t+1} from x_t (N, 3, H, W) and code vectors (N, Q, K) with Euler steps on the
    /// velocity field, starting from seeded noise.
    pub fn render_pairs(&self, x_t: &Tensor, code_vecs: &Tensor, seed: u64) -> Result<Tensor> {
        let f = self.cfg.pixel_factor;
        let ctx = pixel_latents(&x_t.unsqueeze(2)?, f)?;
        let (n, c, _, h, w) = ctx.dims5()?;
        let hint = self.hint(code_vecs, h, w)?;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        let mut x = randn_from(&mut rng, (n, c, 1, h, w), x_t.device())?;
        let text = self.text.broadcast_as((n, 1, self.cfg.dit.text_embed_dim))?.contiguous()?;
        let mask = Tensor::cat(
            &[
                Tensor::ones((n, 1, 1, h, w), DType::F32, x_t.device())?,
                Tensor::zeros((n, 1, 1, h, w), DType::F32, x_t.device())?,
            ],
            2,
        )?;
        let steps = self.cfg.sample_steps.max(1);
        for i in 0..steps {
            let s = 1.0 - i as f64 / steps as f64;
            let ds = 1.0 / steps as f64;
            let lat = Tensor::cat(&[&ctx, &x], 2)?;
            let sigma = Tensor::full(s as f32, n, x_t.device())?;
            let inp = vw_diffusion::DitInput {
                latents: &lat,
                timestep: &sigma,
                text: &text,
                text_mask: None,
                condition_mask: Some(&mask),
                padding_mask: None,
                fps: None,
            };
            let res = self.branch.residuals(&inp, &hint)?;
            let v = self.dit.forward_with_residuals(&inp, &res).map_err(|e| Error::Invalid(e.to_string()))?;
            x = (x - (v.narrow(2, 1, 1)? * ds)?)?;
        }
        Ok(pixel_frames(&x, f, 3)?.squeeze(2)?.clamp(-1f32, 1f32)?)
    }
}

impl LatentDynamics for Stage2Model {
    fn encode_codes(&self, frames: &Tensor) -> Result<Tensor> {
        self.ldm.encode_codes(frames)
    }

    fn render(&self, context: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let tc = context.dim(2)?;
        let mut cur = context.narrow(2, tc - 1, 1)?.squeeze(2)?;
        let mut out = Vec::new();
        for i in 0..codes.dim(1)? {
            let idx = codes.narrow(1, i, 1)?.squeeze(1)?;
            let vecs = fsq::fsq_indices_to_codes(&idx, &self.cfg.model.levels).map_err(crate::baseline::kernel_err)?;
            cur = self.render_pairs(&cur, &vecs, i as u64)?;
            out.push(cur.unsqueeze(2)?);
        }
        Ok(Tensor::cat(&out, 2)?)
    }

    fn codes_per_step(&self) -> usize {
        self.ldm.codes_per_step()
    }

    fn vocab_size(&self) -> usize {
        self.ldm.vocab_size()
    }

    fn frames_per_code_step(&self) -> usize {
        1
    }
}

fn build_dit(cfg: &Stage2Config, vb: VarBuilder) -> Result<CosmosTransformer3DModel> {
    CosmosTransformer3DModel::new(&cfg.dit.cosmos(cfg.channels()), vb).map_err(|e| Error::Invalid(e.to_string()))
}

/// Phase A: trains (or resumes, or loads when finished) the tiny DiT as a video2world model on
/// train transitions, in `run_dir/vdm`. Returns its VarMap.
fn pretrain_vdm(
    cfg: &Stage2Config,
    data: &Transitions,
    run_dir: &Path,
    device: &Device,
    progress: bool,
) -> Result<VarMap> {
    let dir = run_dir.join("vdm");
    let varmap = VarMap::new();
    let dit = build_dit(cfg, super::seeded_var_builder(&varmap, cfg.init_seed ^ 0x5eed, DType::F32, device))?;
    let mut trainer = Trainer::from_varmap(&varmap, cfg.vdm_train.clone())?;
    let resumed = trainer.resume(&dir)?;
    if trainer.done() {
        return Ok(varmap);
    }
    let mut run = RunDir::open(&dir, resumed.map(|_| trainer.step), cfg.vdm_train.total_steps, progress)?;
    let (f, bs, tdim) = (cfg.pixel_factor, cfg.vdm_train.batch_size, cfg.dit.text_embed_dim);
    let config = Stage2Config::json(cfg)?;
    fit(&mut trainer, &mut run, &config, None, |ctx| {
        let (x_t, x_next) = data.sample(ctx.rng, bs)?;
        *ctx.data_pos += bs as u64;
        let x0 = pixel_latents(&Tensor::stack(&[&x_t, &x_next], 2)?, f)?;
        let sigma = rand_from(ctx.rng, 0.0, 1.0, bs, device)?;
        let eps = randn_from(ctx.rng, x0.shape().clone(), device)?;
        let text = Tensor::zeros((bs, 1, tdim), DType::F32, device)?;
        flow_matching_loss(&dit, None, &x0, &sigma, &eps, &text)
    })?;
    Ok(varmap)
}

/// Trains stage 2 in `run_dir`: phase A (DiT pre-training, skipped when `run_dir/vdm` is finished),
/// then phase B with the DiT frozen. `init` optionally names a stage-1 run whose encoder and
/// quantizer initialise the dLDM (the official order: warm-up, then stage 2).
pub fn train_stage2(
    cfg: &Stage2Config,
    init: Option<&Path>,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    progress: bool,
) -> Result<Stage2Model> {
    let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, device)?;
    let main_vm = pretrain_vdm(cfg, &data, run_dir, device, progress)?;
    // Frozen: rebuild the DiT from detached copies so no gradient reaches its Vars.
    let frozen: std::collections::HashMap<String, Tensor> =
        super::named_vars(&main_vm).into_iter().map(|(k, v)| (k, v.as_tensor().detach())).collect();
    let dit = build_dit(cfg, VarBuilder::from_tensors(frozen, DType::F32, device))?;
    let varmap = VarMap::new();
    let model = Stage2Model::new(cfg, dit, super::seeded_var_builder(&varmap, cfg.init_seed, DType::F32, device))?;
    let vars = super::named_vars(&varmap);
    ControlBranch::copy_from_main(
        &vars
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("control.").map(|k| (k.to_string(), v.clone())))
            .collect::<Vec<_>>(),
        &super::named_vars(&main_vm),
    )?;
    if let Some(init) = init {
        super::stage1::load_stage1(init, device)?; // fails early unless `init` is a stage-1 run
        let path = super::checkpoint::committed_tensors_path(init)?;
        let tensors = candle_core::safetensors::load(&path, device)?;
        for (k, v) in &vars {
            if let Some(src) = k.strip_prefix("ldm.encoder.").and_then(|k| tensors.get(&format!("encoder.{k}"))) {
                v.set(src)?;
            }
        }
    }
    let mut trainer = Trainer::new(vars, super::named_vars(&main_vm), cfg.train.clone())?;
    let resumed = if resume { trainer.resume(run_dir)? } else { None };
    let mut run = RunDir::open(run_dir, resumed.map(|_| trainer.step), cfg.train.total_steps, progress)?;
    let bs = cfg.train.batch_size;
    let config = Stage2Config::json(cfg)?;
    fit(&mut trainer, &mut run, &config, None, |ctx| {
        let (x_t, x_next) = data.sample(ctx.rng, bs)?;
        *ctx.data_pos += bs as u64;
        model.loss(&x_t, &x_next, ctx.rng)
    })?;
    Ok(model)
}

/// Loads a trained stage-2 model from its run folder.
pub fn load_stage2(run_dir: &Path, device: &Device) -> Result<(Stage2Config, Stage2Model)> {
    let (state, vb) = super::checkpoint::committed_checkpoint(run_dir, device)?;
    let cfg: Stage2Config = serde_json::from_value(state.config.clone()).map_err(|e| Error::Checkpoint {
        path: run_dir.join(super::checkpoint::STATE_FILE),
        reason: format!("config is not a stage-2 config: {e}"),
    })?;
    let dit = build_dit(&cfg, vb.clone())?;
    let model = Stage2Model::new(&cfg, dit, vb)?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `recompute_dit` changes how the backward runs, not what it computes: same loss, same
    /// gradients for the encoder, the control branch and the hint projection.
    #[test]
    fn recompute_dit_gives_the_same_loss_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut cfg = Stage2Config::tiny();
        cfg.model.image_size = 32;
        cfg.model.channels = [8, 16, 16];
        cfg.model.dim = 32;
        cfg.dit.num_layers = 3;
        cfg.control.num_control_blocks = 2;
        let main_vm = VarMap::new();
        let dit = build_dit(&cfg, super::super::seeded_var_builder(&main_vm, 1, DType::F32, &dev))?;
        let varmap = VarMap::new();
        let mut model = Stage2Model::new(&cfg, dit, super::super::seeded_var_builder(&varmap, 2, DType::F32, &dev))?;
        let vars = super::super::named_vars(&varmap);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        // The zero-initialised outputs would stop every gradient before the branch and the encoder.
        for (k, v) in &vars {
            if k.contains("zero_blocks") || k.contains("input_hint_block") {
                v.set(&(randn_from(&mut rng, v.shape().clone(), &dev)? * 0.1)?)?;
            }
        }
        let x_t = rand_from(&mut rng, -1.0, 1.0, (3, 3, 32, 32), &dev)?;
        let x_next = rand_from(&mut rng, -1.0, 1.0, (3, 3, 32, 32), &dev)?;
        let run = |model: &Stage2Model| -> Result<(f32, candle_core::backprop::GradStore)> {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(4);
            let loss = model.loss(&x_t, &x_next, &mut rng)?;
            Ok((loss.to_scalar::<f32>()?, loss.backward()?))
        };
        let (lp, gp) = run(&model)?;
        model.cfg.recompute_dit = true;
        let (lc, gc) = run(&model)?;
        assert!((lp - lc).abs() <= 1e-6 * lp.abs(), "loss {lp} vs {lc}");
        let mut compared = 0;
        for (name, v) in &vars {
            let (p, c) = (gp.get(v.as_tensor()), gc.get(v.as_tensor()));
            assert_eq!(p.is_some(), c.is_some(), "{name}: gradient present in one path only");
            if let (Some(p), Some(c)) = (p, c) {
                let diff = (c - p)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let scale = p.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(diff <= 1e-4 * scale.max(1e-12), "{name}: max |diff| {diff} vs max |grad| {scale}");
                compared += 1;
            }
        }
        assert!(vars.iter().filter(|(k, _)| k.starts_with("ldm.encoder")).count() > 0);
        assert!(compared >= 40, "compared only {compared} tensors");
        Ok(())
    }

    #[test]
    fn stage2_trains_end_to_end_and_reloads() -> Result<()> {
        end_to_end(None)
    }

    #[test]
    fn stage2_with_lora_trains_the_adapters_and_reloads() -> Result<()> {
        end_to_end(Some(vw_diffusion::lora::LoraConfig { rank: 2, ..Default::default() }))
    }

    fn end_to_end(lora: Option<vw_diffusion::lora::LoraConfig>) -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let mut cfg = Stage2Config::tiny();
        cfg.lora = lora.clone();
        cfg.model.image_size = 32;
        cfg.model.channels = [8, 16, 16];
        cfg.model.dim = 32;
        cfg.data.world = vw_data::craftworld::CraftConfig::tiny();
        cfg.data.episodes = 2;
        for t in [&mut cfg.vdm_train, &mut cfg.train] {
            t.total_steps = 6;
            t.warmup_steps = 2;
            t.batch_size = 4;
            t.log_every = 1;
        }
        cfg.sample_steps = 2;
        let dev = Device::Cpu;
        let model = train_stage2(&cfg, None, dir.path(), false, &dev, false)?;
        assert!(dir.path().join("vdm").join(super::super::checkpoint::STATE_FILE).exists());
        let data = Transitions::render(&cfg.data, vw_data::craftworld::Split::Train, &dev)?;
        let clip = data.episode_clip(0)?.narrow(2, 0, 3)?;
        let codes = model.encode_codes(&clip)?;
        let (_, loaded) = load_stage2(dir.path(), &dev)?;
        assert_eq!(codes.to_vec3::<u32>()?, loaded.encode_codes(&clip)?.to_vec3::<u32>()?);
        let a = model.render(&clip.narrow(2, 0, 1)?, &codes)?;
        let b = loaded.render(&clip.narrow(2, 0, 1)?, &codes)?;
        assert_eq!(a.dims(), &[1, 3, 2, 32, 32]);
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "reloaded model renders differently: {diff}");
        // The adapters are in the checkpoint and have left their zero start.
        let path = super::super::checkpoint::committed_tensors_path(dir.path())?;
        let saved = candle_core::safetensors::load(&path, &dev)?;
        let b_norms: Vec<f32> = saved
            .iter()
            .filter(|(k, _)| k.starts_with("dit_lora.") && k.ends_with("lora_B.weight"))
            .map(|(_, t)| t.abs()?.sum_all()?.to_scalar::<f32>())
            .collect::<candle_core::Result<_>>()?;
        match lora {
            None => assert!(b_norms.is_empty()),
            Some(_) => {
                assert_eq!(b_norms.len(), cfg.dit.num_layers * 8);
                assert!(b_norms.iter().any(|&n| n > 0.0), "no adapter was trained");
            }
        }
        let mut both = cfg.clone();
        both.lora = Some(Default::default());
        both.recompute_dit = true;
        let dit = build_dit(&both, VarBuilder::zeros(DType::F32, &dev))?;
        assert!(Stage2Model::new(&both, dit, VarBuilder::zeros(DType::F32, &dev)).is_err());
        Ok(())
    }
}

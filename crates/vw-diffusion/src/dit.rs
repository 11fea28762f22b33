//! The Cosmos-Predict2 DiT (`CosmosTransformer3DModel` in diffusers): patch embedding with the
//! conditioning-mask (and padding-mask) channels, AdaLN-LoRA timestep modulation, self-attention
//! with 3D RoPE, cross-attention to T5 embeddings, GELU MLP and the final AdaLN layer.
//!
//! The pieces are public so a ControlNet-style branch (the dLDM's control branch) can reuse them:
//! [`CosmosTransformer3DModel::prepare`] embeds the inputs into a [`DitState`], each
//! [`CosmosTransformerBlock::forward`] runs one block, and [`CosmosTransformer3DModel::finish`]
//! applies the final layer and unpatchifies.
//!
//! One departure from diffusers, for speed only: the AdaLN modulation is computed once per
//! (sample, latent frame) and broadcast over the frame's tokens, instead of once per token.

use crate::lora::{LoraConfig, LoraLinear};
use crate::ops;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{linear_no_bias, Linear, Module, VarBuilder};
use serde::Deserialize;

/// Hyperparameters, deserialized from the checkpoint's `transformer/config.json` (diffusers names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CosmosTransformerConfig {
    /// Latent channels + the conditioning-mask channel (17 for Cosmos-Predict2 video2world).
    pub in_channels: usize,
    /// Latent channels predicted.
    pub out_channels: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Channels per head.
    pub attention_head_dim: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// MLP hidden size / model width.
    pub mlp_ratio: f64,
    /// Width of the text embeddings (T5).
    pub text_embed_dim: usize,
    /// Hidden width of the AdaLN-LoRA modulation.
    pub adaln_lora_dim: usize,
    /// Largest (T, H, W) in latent pixels (before patching).
    pub max_size: [usize; 3],
    /// Patch (t, h, w).
    pub patch_size: [usize; 3],
    /// NTK scaling of the RoPE frequencies per (t, h, w).
    pub rope_scale: [f64; 3],
    /// Whether a padding-mask channel is appended to the input.
    pub concat_padding_mask: bool,
    /// `"learnable"` for an extra learnable positional embedding, else none.
    pub extra_pos_embed_type: Option<String>,
    /// Whether text embeddings go through a Linear + GELU first (Cosmos 2.5).
    pub use_crossattn_projection: bool,
    /// Input width of that projection.
    pub crossattn_proj_in_channels: usize,
    /// Output width of that projection.
    pub encoder_hidden_states_channels: usize,
    /// Control residuals go after every n-th block (diffusers' ControlNet indexing).
    pub controlnet_block_every_n: Option<usize>,
    /// Image-context cross-attention (Cosmos 2.5); not supported here.
    pub img_context_dim_in: Option<usize>,
}

impl Default for CosmosTransformerConfig {
    fn default() -> Self {
        Self {
            in_channels: 16,
            out_channels: 16,
            num_attention_heads: 32,
            attention_head_dim: 128,
            num_layers: 28,
            mlp_ratio: 4.0,
            text_embed_dim: 1024,
            adaln_lora_dim: 256,
            max_size: [128, 240, 240],
            patch_size: [1, 2, 2],
            rope_scale: [2.0, 1.0, 1.0],
            concat_padding_mask: true,
            extra_pos_embed_type: Some("learnable".into()),
            use_crossattn_projection: false,
            crossattn_proj_in_channels: 1024,
            encoder_hidden_states_channels: 1024,
            controlnet_block_every_n: None,
            img_context_dim_in: None,
        }
    }
}

impl CosmosTransformerConfig {
    /// Cosmos-Predict2-2B-Video2World (diffusers' conversion script values).
    pub fn predict2_2b_video2world() -> Self {
        Self {
            in_channels: 17,
            out_channels: 16,
            num_attention_heads: 16,
            attention_head_dim: 128,
            num_layers: 28,
            mlp_ratio: 4.0,
            text_embed_dim: 1024,
            adaln_lora_dim: 256,
            rope_scale: [1.0, 3.0, 3.0],
            concat_padding_mask: true,
            extra_pos_embed_type: None,
            ..Self::default()
        }
    }

    /// A tiny config for tests (the one tools/gen_diffusion_fixtures.py uses).
    pub fn tiny() -> Self {
        Self {
            in_channels: 5,
            out_channels: 4,
            num_attention_heads: 2,
            attention_head_dim: 24,
            num_layers: 2,
            mlp_ratio: 2.0,
            text_embed_dim: 32,
            adaln_lora_dim: 16,
            max_size: [16, 32, 32],
            patch_size: [1, 2, 2],
            rope_scale: [1.0, 3.0, 3.0],
            concat_padding_mask: true,
            extra_pos_embed_type: None,
            ..Self::default()
        }
    }

    /// Model width.
    pub fn hidden_size(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    fn validate(&self) -> Result<()> {
        if self.img_context_dim_in.is_some_and(|d| d > 0) {
            return Err(Error::Invalid("CosmosTransformer3DModel: image context (Cosmos 2.5) is not supported".into()));
        }
        if self.attention_head_dim / 6 * 2 < 4 {
            return Err(Error::Invalid(format!(
                "CosmosTransformer3DModel: attention_head_dim {} is too small for 3D RoPE (need >= 12)",
                self.attention_head_dim
            )));
        }
        if let Some(t) = &self.extra_pos_embed_type {
            if t != "learnable" {
                return Err(Error::Invalid(format!("extra_pos_embed_type `{t}` is not supported (learnable or null)")));
            }
        }
        Ok(())
    }
}

/// `(1, 2, 2)` patchify + a bias-free Linear (`patch_embed.proj`).
#[derive(Debug, Clone)]
pub struct CosmosPatchEmbed {
    proj: Linear,
    patch: [usize; 3],
}

impl CosmosPatchEmbed {
    /// Builds from `patch_embed`.
    pub fn new(in_channels: usize, out_channels: usize, patch: [usize; 3], vb: VarBuilder) -> Result<Self> {
        let proj = linear_no_bias(in_channels * patch.iter().product::<usize>(), out_channels, vb.pp("proj"))?;
        Ok(Self { proj, patch })
    }

    /// x: (B, C, T, H, W) -> (B, T/pt * H/ph * W/pw, D), tokens in (t, h, w) order.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let [pt, ph, pw] = self.patch;
        if t % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(Error::Invalid(format!(
                "patch embed: input (T, H, W) = ({t}, {h}, {w}) is not divisible by the patch {:?}",
                self.patch
            )));
        }
        let x = x
            .reshape(vec![b, c, t / pt, pt, h / ph, ph, w / pw, pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .contiguous()?
            .reshape((b, (t / pt) * (h / ph) * (w / pw), c * pt * ph * pw))?;
        Ok(self.proj.forward(&x)?)
    }
}

/// Sinusoidal timestep features, `[cos, sin]` order (diffusers `Timesteps(flip_sin_to_cos=True)`).
pub fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|j| (-(10000f64.ln()) * j as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.reshape((t.elem_count(), 1))?.broadcast_mul(&freqs)?;
    let emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    Ok(if dim % 2 == 1 { emb.pad_with_zeros(1, 0, 1)? } else { emb })
}

/// Timestep embedding (`time_embed`): features -> (temb (N, 3D), RMS-normed features (N, D)).
#[derive(Debug, Clone)]
pub struct CosmosEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    norm_weight: Tensor,
    dim: usize,
}

impl CosmosEmbedding {
    /// Builds from `time_embed`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let linear_1 = linear_no_bias(dim, dim, vb.pp("t_embedder").pp("linear_1"))?;
        let linear_2 = linear_no_bias(dim, 3 * dim, vb.pp("t_embedder").pp("linear_2"))?;
        let norm_weight = vb.pp("norm").get(dim, "weight")?;
        Ok(Self { linear_1, linear_2, norm_weight, dim })
    }

    /// t: (N,) timesteps in [0, 1] -> (temb (N, 3D), embedded_timestep (N, D)), in `dtype`.
    pub fn forward(&self, t: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let proj = timestep_features(t, self.dim)?.to_dtype(dtype)?;
        let temb = self.linear_2.forward(&self.linear_1.forward(&proj)?.silu()?)?;
        let emb = ops::rms_norm(&proj, &self.norm_weight, 1e-6)?;
        Ok((temb, emb))
    }
}

/// AdaLN-LoRA modulation of one sub-layer (`normN`): SiLU -> Linear(D, r) -> Linear(r, k*D) (+ temb).
#[derive(Debug, Clone)]
pub struct AdaLnLora {
    linear_1: Linear,
    linear_2: Linear,
    chunks: usize,
}

impl AdaLnLora {
    /// Builds from `norm1`/`norm2`/`norm3` (k = 3) or `norm_out` (k = 2).
    pub fn new(dim: usize, lora: usize, chunks: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear_no_bias(dim, lora, vb.pp("linear_1"))?,
            linear_2: linear_no_bias(lora, chunks * dim, vb.pp("linear_2"))?,
            chunks,
        })
    }

    /// emb (M, 1, D), temb (M, 1, 3D) -> `chunks` tensors (M, 1, D): shift, scale[, gate].
    pub fn forward(&self, emb: &Tensor, temb: &Tensor) -> Result<Vec<Tensor>> {
        let m = self.linear_2.forward(&self.linear_1.forward(&emb.silu()?)?)?;
        let width = m.dim(D::Minus1)?;
        let m = (m + temb.narrow(D::Minus1, 0, width)?)?;
        Ok(m.chunk(self.chunks, D::Minus1)?)
    }
}

/// Multi-head attention with RMS q/k norm (`attn1` self, `attn2` cross); bias-free projections.
#[derive(Debug, Clone)]
pub struct CosmosAttention {
    to_q: LoraLinear,
    to_k: LoraLinear,
    to_v: LoraLinear,
    to_out: LoraLinear,
    norm_q: Tensor,
    norm_k: Tensor,
    heads: usize,
    head_dim: usize,
}

impl CosmosAttention {
    /// Builds from `attn1` / `attn2`; `kv_dim` is the width of the key/value input.
    pub fn new(dim: usize, kv_dim: usize, heads: usize, head_dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(dim, inner, vb.pp("to_q"))?.into(),
            to_k: linear_no_bias(kv_dim, inner, vb.pp("to_k"))?.into(),
            to_v: linear_no_bias(kv_dim, inner, vb.pp("to_v"))?.into(),
            to_out: linear_no_bias(inner, dim, vb.pp("to_out").pp("0"))?.into(),
            norm_q: vb.pp("norm_q").get(head_dim, "weight")?,
            norm_k: vb.pp("norm_k").get(head_dim, "weight")?,
            heads,
            head_dim,
        })
    }

    /// Attaches LoRA adapters to the projections `cfg` targets, their weights under `vb` with the
    /// checkpoint's module names (`to_out.0`); returns how many.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, vb: VarBuilder) -> Result<usize> {
        let mut n = 0;
        for (name, key, lin) in [
            ("to_q", "to_q", &mut self.to_q),
            ("to_k", "to_k", &mut self.to_k),
            ("to_v", "to_v", &mut self.to_v),
            ("to_out", "to_out.0", &mut self.to_out),
        ] {
            if cfg.targets(name) {
                lin.attach(cfg.rank, cfg.alpha, vb.pp(key))?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn heads_first(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        Ok(x.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?)
    }

    /// x (B, L, D), context (B, S, Dkv) or None for self-attention, rope (cos, sin) (L, hd/2),
    /// mask additive (B, 1, 1, S) -> (B, L, D).
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rope: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let ctx = context.unwrap_or(x);
        // diffusers' Attention uses eps 1e-5 for its q/k RMSNorm (per head).
        let q = self.heads_first(&ops::rms_norm_heads(&self.to_q.forward(x)?, &self.norm_q, self.heads, 1e-5)?)?;
        let k = self.heads_first(&ops::rms_norm_heads(&self.to_k.forward(ctx)?, &self.norm_k, self.heads, 1e-5)?)?;
        let v = self.heads_first(&self.to_v.forward(ctx)?)?;
        let (q, k) = match rope {
            Some((cos, sin)) => (ops::rope_half(&q, cos, sin)?, ops::rope_half(&k, cos, sin)?),
            None => (q, k),
        };
        let o = ops::attention(&q, &k, &v, mask)?;
        let o = o.transpose(1, 2)?.reshape((b, l, self.heads * self.head_dim))?;
        Ok(self.to_out.forward(&o)?)
    }
}

/// GELU (erf) MLP, `ff.net.0.proj` / `ff.net.2`, bias-free.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: LoraLinear,
    proj_out: LoraLinear,
}

impl FeedForward {
    /// Builds from `ff`.
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj_in: linear_no_bias(dim, hidden, vb.pp("net").pp("0").pp("proj"))?.into(),
            proj_out: linear_no_bias(hidden, dim, vb.pp("net").pp("2"))?.into(),
        })
    }

    /// Attaches LoRA adapters to both projections (`net.0.proj`, `net.2`) under `vb`.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, vb: VarBuilder) -> Result<usize> {
        self.proj_in.attach(cfg.rank, cfg.alpha, vb.pp("net.0.proj"))?;
        self.proj_out.attach(cfg.rank, cfg.alpha, vb.pp("net.2"))?;
        Ok(2)
    }

    /// x (B, L, D) -> (B, L, D).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.proj_out.forward(&self.proj_in.forward(x)?.gelu_erf()?)?)
    }
}

/// Everything the blocks share for one forward: the modulation inputs, RoPE and the text context.
#[derive(Debug, Clone)]
pub struct DitState {
    /// Timestep embedding (B*Tm, 1, 3D); Tm = 1 (one timestep per sample) or T' (one per latent frame).
    pub temb: Tensor,
    /// RMS-normed timestep features (B*Tm, 1, D).
    pub embedded_timestep: Tensor,
    /// RoPE cos, sin: (N, head_dim/2) each, f32.
    pub rope: (Tensor, Tensor),
    /// Extra learnable positional embedding (1, N, D), if configured.
    pub extra_pos_emb: Option<Tensor>,
    /// Text context after the optional projection (B, S, Dtext).
    pub context: Tensor,
    /// Additive cross-attention mask (B, 1, 1, S), if a text mask was given.
    pub context_mask: Option<Tensor>,
    /// Batch size.
    pub batch: usize,
    /// Token grid after patching (T', H', W').
    pub grid: [usize; 3],
    /// Modulation rows per sample (1 or T').
    pub mod_rows: usize,
}

impl DitState {
    /// Tokens per sample.
    pub fn tokens(&self) -> usize {
        self.grid.iter().product()
    }

    /// (B, N, D) -> (B*Tm, N/Tm, D), the view the modulation broadcasts over.
    fn mod_view(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        Ok(x.reshape((self.batch * self.mod_rows, self.tokens() / self.mod_rows, d))?)
    }

    fn token_view(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        Ok(x.reshape((self.batch, self.tokens(), d))?)
    }
}

/// One DiT block (`transformer_blocks.i`): AdaLN-modulated self-attention, cross-attention, MLP.
#[derive(Debug, Clone)]
pub struct CosmosTransformerBlock {
    norm1: AdaLnLora,
    attn1: CosmosAttention,
    norm2: AdaLnLora,
    attn2: CosmosAttention,
    norm3: AdaLnLora,
    ff: FeedForward,
}

impl CosmosTransformerBlock {
    /// Builds from `transformer_blocks.i`.
    pub fn new(cfg: &CosmosTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size();
        let (h, hd, r) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.adaln_lora_dim);
        let text_dim =
            if cfg.use_crossattn_projection { cfg.encoder_hidden_states_channels } else { cfg.text_embed_dim };
        Ok(Self {
            norm1: AdaLnLora::new(d, r, 3, vb.pp("norm1"))?,
            attn1: CosmosAttention::new(d, d, h, hd, vb.pp("attn1"))?,
            norm2: AdaLnLora::new(d, r, 3, vb.pp("norm2"))?,
            attn2: CosmosAttention::new(d, text_dim, h, hd, vb.pp("attn2"))?,
            norm3: AdaLnLora::new(d, r, 3, vb.pp("norm3"))?,
            ff: FeedForward::new(d, (d as f64 * cfg.mlp_ratio) as usize, vb.pp("ff"))?,
        })
    }

    /// x (B, N, D) -> (B, N, D). The caller adds any control residual to the result.
    pub fn forward(&self, x: &Tensor, st: &DitState) -> Result<Tensor> {
        let x = match &st.extra_pos_emb {
            Some(p) => x.broadcast_add(p)?,
            None => x.clone(),
        };
        let (emb, temb) = (&st.embedded_timestep, &st.temb);
        let rope = Some((&st.rope.0, &st.rope.1));

        let m = self.norm1.forward(emb, temb)?;
        let xm = st.mod_view(&x)?;
        let h = st.token_view(&ops::layer_norm_modulate(&xm, &m[0], &m[1], 1e-6)?)?;
        let a = st.mod_view(&self.attn1.forward(&h, None, rope, None)?)?;
        let xm = ops::gated_residual(&xm, &m[2], &a)?;

        let m = self.norm2.forward(emb, temb)?;
        let h = st.token_view(&ops::layer_norm_modulate(&xm, &m[0], &m[1], 1e-6)?)?;
        let a = self.attn2.forward(&h, Some(&st.context), None, st.context_mask.as_ref())?;
        let xm = ops::gated_residual(&xm, &m[2], &st.mod_view(&a)?)?;

        let m = self.norm3.forward(emb, temb)?;
        let h = st.token_view(&ops::layer_norm_modulate(&xm, &m[0], &m[1], 1e-6)?)?;
        let f = st.mod_view(&self.ff.forward(&h)?)?;
        let xm = ops::gated_residual(&xm, &m[2], &f)?;
        st.token_view(&xm)
    }
}

/// Inputs of one DiT forward.
#[derive(Debug, Clone, Copy)]
pub struct DitInput<'a> {
    /// Noisy latents (B, C, T, H, W).
    pub latents: &'a Tensor,
    /// Timesteps in [0, 1]: (B,), or per latent frame (B, T) / (B, 1, T, 1, 1) as the video2world pipeline passes.
    pub timestep: &'a Tensor,
    /// Text embeddings (B, S, text_embed_dim).
    pub text: &'a Tensor,
    /// Text validity (B, S), 1 = attend; None attends to every token (what the pipeline does).
    pub text_mask: Option<&'a Tensor>,
    /// Conditioning mask (B, 1, T, H, W), 1 on the given (clean) latent frames.
    pub condition_mask: Option<&'a Tensor>,
    /// Padding mask (1, 1, Hp, Wp) at any resolution, resized to (H, W) by nearest neighbour.
    pub padding_mask: Option<&'a Tensor>,
    /// Frames per second of the video (scales RoPE time); None for images.
    pub fps: Option<f64>,
}

/// Extra learnable positional embedding (`learnable_pos_embed`), normalised to unit RMS.
#[derive(Debug, Clone)]
struct LearnablePosEmbed {
    t: Tensor,
    h: Tensor,
    w: Tensor,
}

impl LearnablePosEmbed {
    fn forward(&self, grid: [usize; 3], dtype: DType) -> Result<Tensor> {
        let [t, h, w] = grid;
        let d = self.t.dim(1)?;
        let et = self.t.narrow(0, 0, t)?.reshape((t, 1, 1, d))?;
        let eh = self.h.narrow(0, 0, h)?.reshape((1, h, 1, d))?;
        let ew = self.w.narrow(0, 0, w)?.reshape((1, 1, w, d))?;
        let e = et.broadcast_add(&eh)?.broadcast_add(&ew)?.reshape((1, t * h * w, d))?.to_dtype(DType::F32)?;
        let norm = e.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let denom = ((norm * (1.0 / (d as f64).sqrt()))? + 1e-6)?;
        Ok(e.broadcast_div(&denom)?.to_dtype(dtype)?)
    }
}

/// The whole DiT.
#[derive(Debug, Clone)]
pub struct CosmosTransformer3DModel {
    cfg: CosmosTransformerConfig,
    patch_embed: CosmosPatchEmbed,
    time_embed: CosmosEmbedding,
    learnable_pos_embed: Option<LearnablePosEmbed>,
    crossattn_proj: Option<candle_nn::Linear>,
    blocks: Vec<CosmosTransformerBlock>,
    norm_out: AdaLnLora,
    proj_out: Linear,
    dtype: DType,
    device: Device,
}

impl CosmosTransformer3DModel {
    /// Builds from the root of a diffusers `transformer/` checkpoint.
    pub fn new(cfg: &CosmosTransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size();
        let in_ch = cfg.in_channels + usize::from(cfg.concat_padding_mask);
        let patch_embed = CosmosPatchEmbed::new(in_ch, d, cfg.patch_size, vb.pp("patch_embed"))?;
        let time_embed = CosmosEmbedding::new(d, vb.pp("time_embed"))?;
        let learnable_pos_embed = match cfg.extra_pos_embed_type.as_deref() {
            Some("learnable") => {
                let vb = vb.pp("learnable_pos_embed");
                let m: Vec<usize> = (0..3).map(|i| cfg.max_size[i] / cfg.patch_size[i]).collect();
                Some(LearnablePosEmbed {
                    t: vb.get((m[0], d), "pos_emb_t")?,
                    h: vb.get((m[1], d), "pos_emb_h")?,
                    w: vb.get((m[2], d), "pos_emb_w")?,
                })
            }
            _ => None,
        };
        let crossattn_proj = if cfg.use_crossattn_projection {
            Some(candle_nn::linear(
                cfg.crossattn_proj_in_channels,
                cfg.encoder_hidden_states_channels,
                vb.pp("crossattn_proj").pp("0"),
            )?)
        } else {
            None
        };
        let blocks = (0..cfg.num_layers)
            .map(|i| CosmosTransformerBlock::new(cfg, vb.pp("transformer_blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm_out = AdaLnLora::new(d, cfg.adaln_lora_dim, 2, vb.pp("norm_out"))?;
        let p: usize = cfg.patch_size.iter().product();
        let proj_out = linear_no_bias(d, p * cfg.out_channels, vb.pp("proj_out"))?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            time_embed,
            learnable_pos_embed,
            crossattn_proj,
            blocks,
            norm_out,
            proj_out,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Attaches LoRA adapters (`cfg`) to every block's targeted projections, their weights read or
    /// created under `vb` with the checkpoint's names (`transformer_blocks.{i}.attn1.to_q.lora_A.weight`,
    /// ...). Build `vb` on a fresh `VarMap` to train them while the rest stays frozen. Returns the
    /// number of adapted layers. See [`crate::lora`].
    pub fn attach_lora(&mut self, cfg: &LoraConfig, vb: VarBuilder) -> Result<usize> {
        cfg.validate()?;
        let mut n = 0;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let vb = vb.pp("transformer_blocks").pp(i);
            n += b.attn1.attach_lora(cfg, vb.pp("attn1"))?;
            n += b.attn2.attach_lora(cfg, vb.pp("attn2"))?;
            if cfg.targets("ff") {
                n += b.ff.attach_lora(cfg, vb.pp("ff"))?;
            }
        }
        Ok(n)
    }

    /// The config.
    pub fn config(&self) -> &CosmosTransformerConfig {
        &self.cfg
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[CosmosTransformerBlock] {
        &self.blocks
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The patch embedding (the control branch of the dLDM embeds its own input with a copy).
    pub fn patch_embed(&self) -> &CosmosPatchEmbed {
        &self.patch_embed
    }

    /// The 3D RoPE tables (cos, sin), each (T'*H'*W', head_dim/2) in f32.
    pub fn rope(&self, grid: [usize; 3], fps: Option<f64>) -> Result<(Tensor, Tensor)> {
        rope3d(&self.cfg, grid, fps, &self.device)
    }

    /// Concatenates the mask channels, patchifies and embeds: returns tokens (B, N, D) and the shared state.
    pub fn prepare(&self, inp: &DitInput) -> Result<(Tensor, DitState)> {
        let (b, _, t, h, w) = inp.latents.dims5()?;
        let dtype = self.dtype;
        let mut parts = vec![inp.latents.to_dtype(dtype)?];
        if let Some(m) = inp.condition_mask {
            parts.push(m.to_dtype(dtype)?.broadcast_as((b, 1, t, h, w))?.contiguous()?);
        }
        if self.cfg.concat_padding_mask {
            let pm = match inp.padding_mask {
                Some(pm) => resize_nearest(pm, h, w)?,
                None => Tensor::zeros((1, 1, h, w), dtype, &self.device)?,
            };
            let pm = pm.to_dtype(dtype)?.narrow(0, 0, 1)?.unsqueeze(2)?.broadcast_as((b, 1, t, h, w))?.contiguous()?;
            parts.push(pm);
        }
        let x = Tensor::cat(&parts, 1)?;
        let [pt, ph, pw] = self.cfg.patch_size;
        let grid = [t / pt, h / ph, w / pw];
        let tokens = self.patch_embed.forward(&x)?;

        // Timesteps: one per sample, or one per latent frame.
        let ts = inp.timestep;
        let (ts, mod_rows) = match ts.rank() {
            0 => (ts.reshape(1)?.broadcast_as(b)?.contiguous()?, 1),
            1 => (ts.clone(), 1),
            2 => (ts.flatten_all()?, ts.dim(1)?),
            5 => (ts.flatten_all()?, ts.dim(2)?),
            r => return Err(Error::Invalid(format!("timestep must be (B,), (B, T) or (B, 1, T, 1, 1), got rank {r}"))),
        };
        if ts.elem_count() != b * mod_rows || (mod_rows != 1 && (mod_rows != t || pt != 1)) {
            return Err(Error::Invalid(format!(
                "timestep has {} values; expected {b} (one per sample) or {} (one per latent frame, patch t = 1)",
                ts.elem_count(),
                b * t
            )));
        }
        let (temb, emb) = self.time_embed.forward(&ts, dtype)?;
        let temb = temb.unsqueeze(1)?;
        let emb = emb.unsqueeze(1)?;

        let rope = self.rope(grid, inp.fps)?;
        let extra_pos_emb = match &self.learnable_pos_embed {
            Some(p) => Some(p.forward(grid, dtype)?),
            None => None,
        };
        let mut context = inp.text.to_dtype(dtype)?;
        if let Some(p) = &self.crossattn_proj {
            context = p.forward(&context)?.gelu_erf()?;
        }
        let context_mask = match inp.text_mask {
            Some(m) => {
                let (mb, s) = m.dims2()?;
                let keep = m.to_dtype(DType::F32)?;
                // 0 where attended, a large negative number elsewhere (a finite value avoids NaN rows).
                let bias = ((keep - 1.0)? * 1e9)?;
                Some(bias.reshape((mb, 1, 1, s))?)
            }
            None => None,
        };
        let st = DitState {
            temb,
            embedded_timestep: emb,
            rope,
            extra_pos_emb,
            context,
            context_mask,
            batch: b,
            grid,
            mod_rows,
        };
        Ok((tokens, st))
    }

    /// Final AdaLN layer, projection and unpatchify: x (B, N, D) -> (B, out_channels, T, H, W).
    pub fn finish(&self, x: &Tensor, st: &DitState) -> Result<Tensor> {
        let m = self.norm_out.forward(&st.embedded_timestep, &st.temb)?;
        let h = ops::layer_norm_modulate(&st.mod_view(x)?, &m[0], &m[1], 1e-6)?;
        let h = self.proj_out.forward(&st.token_view(&h)?)?;
        let [tt, hh, ww] = st.grid;
        let [pt, ph, pw] = self.cfg.patch_size;
        let c = self.cfg.out_channels;
        // diffusers lays the projection out as (ph, pw, pt, C).
        let h = h
            .reshape(vec![st.batch, tt, hh, ww, ph, pw, pt, c])?
            .permute(vec![0, 7, 1, 6, 2, 4, 3, 5])?
            .contiguous()?
            .reshape((st.batch, c, tt * pt, hh * ph, ww * pw))?;
        Ok(h)
    }

    /// Full forward: (B, out_channels, T, H, W).
    pub fn forward(&self, inp: &DitInput) -> Result<Tensor> {
        self.forward_with_residuals(inp, &[])
    }

    /// Forward with control residuals added after given blocks: `(block index, (B, N, D))`.
    pub fn forward_with_residuals(&self, inp: &DitInput, residuals: &[(usize, Tensor)]) -> Result<Tensor> {
        let (mut x, st) = self.prepare(inp)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &st)?;
            for (_, r) in residuals.iter().filter(|(j, _)| *j == i) {
                x = (x + r.to_dtype(self.dtype)?)?;
            }
        }
        self.finish(&x, &st)
    }

    /// diffusers' indexing of `block_controlnet_hidden_states`: the k-th residual goes after block
    /// k * `controlnet_block_every_n`.
    pub fn control_block_indices(&self, n: usize) -> Result<Vec<usize>> {
        let every = self.cfg.controlnet_block_every_n.ok_or_else(|| {
            Error::Invalid("control residuals need `controlnet_block_every_n` in the transformer config".into())
        })?;
        Ok((0..self.blocks.len()).step_by(every.max(1)).take(n).collect())
    }
}

impl CosmosTransformer3DModel {
    /// Loads a diffusers `transformer/` folder (config.json + sharded safetensors).
    pub fn load(dir: &std::path::Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: CosmosTransformerConfig = crate::weights::read_config(&dir.join("config.json"))?;
        let store = crate::weights::open(dir)?;
        crate::weights::build(&store, dtype, device, |vb| Self::new(&cfg, vb))
    }

    /// Loads an official Cosmos-Predict2 `.pt` checkpoint (keys `net.blocks.N.self_attn.q_proj...`,
    /// optionally under a top-level `key` such as "model"), renaming keys to the diffusers layout.
    pub fn load_official_pt(
        path: &std::path::Path,
        key: Option<&str>,
        cfg: &CosmosTransformerConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let store = crate::weights::WeightStore::from_pth_renamed(path, key, official_to_diffusers_key)?;
        crate::weights::build(&std::sync::Arc::new(store), dtype, device, |vb| Self::new(cfg, vb))
    }
}

/// Maps a key of the official Cosmos-Predict2 DiT checkpoint to the diffusers name (the Cosmos 2.0
/// table of diffusers' `convert_cosmos_to_diffusers.py`); None for training bookkeeping it drops.
pub fn official_to_diffusers_key(key: &str) -> Option<String> {
    const DROP: [&str; 8] = [
        "accum_video_sample_counter",
        "accum_image_sample_counter",
        "accum_iteration",
        "accum_train_in_hours",
        "pos_embedder.seq",
        "pos_embedder.dim_spatial_range",
        "pos_embedder.dim_temporal_range",
        "_extra_state",
    ];
    const RENAME: [(&str, &str); 23] = [
        ("t_embedder.1", "time_embed.t_embedder"),
        ("t_embedding_norm", "time_embed.norm"),
        ("blocks", "transformer_blocks"),
        ("adaln_modulation_self_attn.1", "norm1.linear_1"),
        ("adaln_modulation_self_attn.2", "norm1.linear_2"),
        ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
        ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
        ("adaln_modulation_mlp.1", "norm3.linear_1"),
        ("adaln_modulation_mlp.2", "norm3.linear_2"),
        ("self_attn", "attn1"),
        ("cross_attn", "attn2"),
        ("q_proj", "to_q"),
        ("k_proj", "to_k"),
        ("v_proj", "to_v"),
        ("output_proj", "to_out.0"),
        ("q_norm", "norm_q"),
        ("k_norm", "norm_k"),
        ("mlp.layer1", "ff.net.0.proj"),
        ("mlp.layer2", "ff.net.2"),
        ("x_embedder.proj.1", "patch_embed.proj"),
        ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
        ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
        ("final_layer.linear", "proj_out"),
    ];
    let k = key.strip_prefix("net.").unwrap_or(key);
    if DROP.iter().any(|d| k.contains(d)) {
        return None;
    }
    let mut k = k.to_string();
    for (a, b) in RENAME {
        k = k.replace(a, b);
    }
    Some(k)
}

/// Nearest-neighbour resize of (B, C, Hs, Ws) to (B, C, h, w), torch `interpolate(mode="nearest")` indexing.
fn resize_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, hs, ws) = x.dims4()?;
    if (hs, ws) == (h, w) {
        return Ok(x.clone());
    }
    let idx = |n_in: usize, n_out: usize| -> Result<Tensor> {
        let scale = n_in as f32 / n_out as f32;
        let v: Vec<u32> = (0..n_out).map(|i| ((i as f32 * scale).floor() as usize).min(n_in - 1) as u32).collect();
        Ok(Tensor::from_vec(v, n_out, x.device())?)
    };
    Ok(x.index_select(&idx(hs, h)?, 2)?.index_select(&idx(ws, w)?, 3)?)
}

/// 3D RoPE of the Cosmos DiT: head_dim split into (t, h, w) = (D - 2*(D/6*2), D/6*2, D/6*2), NTK-scaled
/// per axis; time positions scaled by 24 / fps for videos. Returns (cos, sin), each (N, D/2), f32.
pub fn rope3d(
    cfg: &CosmosTransformerConfig,
    grid: [usize; 3],
    fps: Option<f64>,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let hd = cfg.attention_head_dim;
    let dim_h = hd / 6 * 2;
    let dim_w = dim_h;
    let dim_t = hd - dim_h - dim_w;
    let theta = |dim: usize, scale: f64| 10000.0 * scale.powf(dim as f64 / (dim as f64 - 2.0));
    // f32 like the reference: theta ** (arange(0, dim, 2) / dim) on a float32 tensor.
    let freqs = |dim: usize, theta: f64| -> Vec<f32> {
        (0..dim / 2).map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / dim as f32)).collect()
    };
    let ft = freqs(dim_t, theta(dim_t, cfg.rope_scale[0]));
    let fh = freqs(dim_h, theta(dim_h, cfg.rope_scale[1]));
    let fw = freqs(dim_w, theta(dim_w, cfg.rope_scale[2]));
    let [t, h, w] = grid;
    let half = hd / 2;
    let mut angles = Vec::with_capacity(t * h * w * half);
    for it in 0..t {
        let pt = match fps {
            Some(f) => it as f32 / f as f32 * 24.0,
            None => it as f32,
        };
        for ih in 0..h {
            for iw in 0..w {
                angles.extend(ft.iter().map(|f| pt * f));
                angles.extend(fh.iter().map(|f| ih as f32 * f));
                angles.extend(fw.iter().map(|f| iw as f32 * f));
            }
        }
    }
    let a = Tensor::from_vec(angles, (t * h * w, half), dev)?;
    Ok((a.cos()?, a.sin()?))
}

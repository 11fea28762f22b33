//! LoRA (Hu et al., 2021) on the DiT's projections, for tuning a frozen VDM in the dLDM's stage 2
//! (issue 5: "LoRA on the main DiT as an option").
//!
//! A [`LoraLinear`] is a bias-free `Linear` that can carry a low-rank update:
//! `y = x W^T + (alpha / rank) * (x A^T) B^T`, with `A` (rank, in) drawn small and `B` (out, rank)
//! zero, so attaching LoRA leaves the model's output unchanged until `B` is trained. The weights are
//! named as PEFT names them (`<module>.lora_A.weight`, `<module>.lora_B.weight`), so an adapter
//! saved by diffusers/PEFT for the same module names loads through the same `VarBuilder` keys.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use vw_diffusion::dit::{CosmosTransformer3DModel, CosmosTransformerConfig};
//! use vw_diffusion::lora::LoraConfig;
//!
//! let dev = Device::Cpu;
//! let cfg = CosmosTransformerConfig::tiny();
//! let base = VarMap::new(); // stands for the frozen checkpoint
//! let mut dit = CosmosTransformer3DModel::new(&cfg, VarBuilder::from_varmap(&base, DType::F32, &dev))?;
//! let adapter = VarMap::new(); // only these train
//! let n = dit.attach_lora(&LoraConfig::default(), VarBuilder::from_varmap(&adapter, DType::F32, &dev))?;
//! assert_eq!(n, cfg.num_layers * 8); // to_q, to_k, to_v, to_out of attn1 and attn2
//! assert_eq!(adapter.all_vars().len(), 2 * n);
//! # Ok::<(), vw_diffusion::Error>(())
//! ```

use crate::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// Which projections get an adapter, and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank of the update.
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Module names inside each block's attention (`to_q`, `to_k`, `to_v`, `to_out`) and/or `ff`
    /// (both MLP projections). The default is PEFT's usual attention set.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 8.0, targets: ["to_q", "to_k", "to_v", "to_out"].map(String::from).to_vec() }
    }
}

impl LoraConfig {
    /// Checks the rank and the target names.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(crate::Error::Invalid("LoRA rank must be at least 1".into()));
        }
        if let Some(t) = self.targets.iter().find(|t| !["to_q", "to_k", "to_v", "to_out", "ff"].contains(&t.as_str())) {
            return Err(crate::Error::Invalid(format!("LoRA target {t:?} is not one of to_q, to_k, to_v, to_out, ff")));
        }
        Ok(())
    }

    /// Whether `name` is targeted.
    pub fn targets(&self, name: &str) -> bool {
        self.targets.iter().any(|t| t == name)
    }
}

/// A bias-free linear layer with an optional low-rank update.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    adapter: Option<(Tensor, Tensor, f64)>,
}

impl From<Linear> for LoraLinear {
    fn from(base: Linear) -> Self {
        Self { base, adapter: None }
    }
}

impl LoraLinear {
    /// Adds an adapter whose `lora_A` / `lora_B` weights come from `vb` (created there if it is
    /// backed by a `VarMap`: A ~ N(0, 1/rank), B = 0). Replaces an adapter already attached.
    pub fn attach(&mut self, rank: usize, alpha: f64, vb: VarBuilder) -> Result<()> {
        let (out_dim, in_dim) = self.base.weight().dims2()?;
        let a = vb.pp("lora_A").get_with_hints(
            (rank, in_dim),
            "weight",
            candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 / rank as f64 },
        )?;
        let b = vb.pp("lora_B").get_with_hints((out_dim, rank), "weight", candle_nn::Init::Const(0.0))?;
        self.adapter = Some((a, b, alpha / rank as f64));
        Ok(())
    }

    /// Whether an adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// The frozen weight (out, in).
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.base.forward(x)?;
        match &self.adapter {
            None => Ok(y),
            Some((a, b, scale)) => {
                let low = Linear::new(a.clone(), None).forward(x)?;
                y + (Linear::new(b.clone(), None).forward(&low)? * *scale)?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn adapter_is_the_merged_low_rank_update_and_starts_at_zero() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 7), &dev)?;
        let mut lin = LoraLinear::from(Linear::new(w.clone(), None));
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev)?;
        let before = lin.forward(&x)?;
        let vm = VarMap::new();
        lin.attach(2, 6.0, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        assert!(lin.has_adapter());
        let diff = (lin.forward(&x)? - &before)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "B starts at zero: attaching changes nothing");
        // Give B values; the output must equal x (W + 3 B A)^T.
        let data = vm.data().lock().map_err(|_| crate::Error::Invalid("poisoned".into()))?;
        let b: &Var = data.get("lora_B.weight").ok_or_else(|| crate::Error::Invalid("no lora_B".into()))?;
        b.set(&Tensor::randn(0f32, 1.0, (5, 2), &dev)?)?;
        let a = data.get("lora_A.weight").ok_or_else(|| crate::Error::Invalid("no lora_A".into()))?.as_tensor().clone();
        let merged = (&w + (b.as_tensor().matmul(&a)? * 3.0)?)?;
        drop(data);
        let want = x.broadcast_matmul(&merged.t()?)?;
        let err = (lin.forward(&x)? - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "{err}");
        Ok(())
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(LoraConfig { rank: 0, ..Default::default() }.validate().is_err());
        assert!(LoraConfig { targets: vec!["to_x".into()], ..Default::default() }.validate().is_err());
        assert!(LoraConfig::default().validate().is_ok());
    }

    #[test]
    fn dit_adapters_start_as_the_base_model_and_only_they_get_gradients() -> Result<()> {
        use crate::dit::{CosmosTransformer3DModel, CosmosTransformerConfig, DitInput};
        let dev = Device::Cpu;
        let cfg = CosmosTransformerConfig::tiny();
        let base = VarMap::new();
        let mut dit = CosmosTransformer3DModel::new(&cfg, VarBuilder::from_varmap(&base, DType::F32, &dev))?;
        let (t, h, w) = (2, 4, 4);
        let latents = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, t, h, w), &dev)?;
        let timestep = Tensor::new(&[0.5f32], &dev)?;
        let text = Tensor::randn(0f32, 1.0, (1, 3, cfg.text_embed_dim), &dev)?;
        let inp = DitInput {
            latents: &latents,
            timestep: &timestep,
            text: &text,
            text_mask: None,
            condition_mask: None,
            padding_mask: None,
            fps: None,
        };
        let before = dit.forward(&inp)?;
        let adapter = VarMap::new();
        let lcfg =
            LoraConfig { rank: 2, targets: vec!["to_q".into(), "to_out".into(), "ff".into()], ..Default::default() };
        let n = dit.attach_lora(&lcfg, VarBuilder::from_varmap(&adapter, DType::F32, &dev))?;
        assert_eq!(n, cfg.num_layers * 6);
        assert!(adapter.data().lock().expect("lock").contains_key("transformer_blocks.0.attn2.to_out.0.lora_B.weight"));
        let same = (dit.forward(&inp)? - &before)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(same, 0.0);
        // One SGD step on the adapters only: the output moves, the base weights do not.
        let base_before: Vec<Tensor> =
            base.all_vars().iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        let loss = dit.forward(&inp)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let vars = adapter.all_vars();
        // B starts at 0, so dL/dB is non-zero (A is random) while dL/dA is exactly zero at first.
        let gb = vars
            .iter()
            .filter_map(|v| grads.get(v.as_tensor()))
            .map(|g| g.abs()?.sum_all()?.to_scalar::<f32>())
            .collect::<candle_core::Result<Vec<f32>>>()?;
        assert!(gb.iter().any(|&g| g > 0.0), "no gradient reached the adapters");
        let mut opt = <candle_nn::SGD as candle_nn::Optimizer>::new(vars, 1.0)?;
        candle_nn::Optimizer::step(&mut opt, &grads)?;
        let moved = (dit.forward(&inp)? - &before)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 0.0);
        for (v, b) in base.all_vars().iter().zip(&base_before) {
            assert_eq!((v.as_tensor() - b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        }
        Ok(())
    }
}

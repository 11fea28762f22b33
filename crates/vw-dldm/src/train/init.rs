//! Seeded weight initialisation: a `VarBuilder` over a `VarMap` that creates each variable from
//! the initialiser the layer asks for (candle's `Init` hint: constant, normal, uniform, Kaiming)
//! but draws it from a ChaCha stream keyed by the seed and the variable's name. candle's own CPU
//! generator cannot be seeded, so without this two runs (or two ranks) start from different
//! weights.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A `VarBuilder` whose new variables land in `varmap`, initialised deterministically from `seed`
/// (each variable's values depend only on the seed, its name, its shape and its initialiser, not
/// on the order in which the model creates them). Existing variables are returned as they are.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Seeded { varmap: varmap.clone(), seed }), dtype, device.clone())
}

struct Seeded {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a: a stable hash of a variable name (std's hasher may change between releases).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn draw(init: Init, shape: &Shape, rng: &mut ChaCha8Rng, device: &Device) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> candle_core::Result<Tensor> {
        let v = super::rand_from(rng, lo as f32, up as f32, n, device).map_err(candle_core::Error::wrap)?;
        v.reshape(shape)
    };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> candle_core::Result<Tensor> {
        let v = super::randn_from(rng, n, device).map_err(candle_core::Error::wrap)?;
        v.affine(std, mean)?.reshape(shape)
    };
    match init {
        Init::Const(c) => Tensor::ones(shape, DType::F32, device)?.affine(c, 0.0),
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => uniform(rng, -(3f64.sqrt()) * std, 3f64.sqrt() * std),
                NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ name_hash(name));
        let var = Var::from_tensor(&draw(h, &s, &mut rng, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("no variable {name} (a seeded builder needs the shape to create it)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().map(|d| d.contains_key(name)).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Module;

    fn build(seed: u64) -> crate::Result<(VarMap, candle_nn::Linear)> {
        let vm = VarMap::new();
        let lin = candle_nn::linear(5, 3, seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu).pp("lin"))?;
        Ok((vm, lin))
    }

    #[test]
    fn same_seed_same_weights_and_the_initialisers_scale() -> crate::Result<()> {
        let x = Tensor::ones((1, 5), DType::F32, &Device::Cpu)?;
        let (_, a) = build(7)?;
        let (vm, b) = build(7)?;
        let (_, c) = build(8)?;
        let ya = a.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(ya, b.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
        assert_ne!(ya, c.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
        // candle's linear: weight Kaiming-normal (fan_in 5), bias U(-1/sqrt(5), 1/sqrt(5)).
        let vars = crate::train::named_vars(&vm);
        let bias = vars[0].1.as_tensor().to_vec1::<f32>()?;
        assert!(bias.iter().all(|b| b.abs() <= 1.0 / 5f32.sqrt()) && bias.iter().any(|b| *b != 0.0));
        let big = VarMap::new();
        let w = seeded_var_builder(&big, 1, DType::F32, &Device::Cpu).get_with_hints(
            (400, 100),
            "w",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let std = w.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt();
        let want = (2.0f32 / 100.0).sqrt();
        assert!((std - want).abs() < 0.03 * want, "std {std} vs {want}");
        Ok(())
    }
}

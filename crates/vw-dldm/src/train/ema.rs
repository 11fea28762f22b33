//! Exponential moving average of the parameters (optional; evaluated weights are often smoother).

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// Shadow copies `ema = decay * ema + (1 - decay) * param`, updated after each optimizer step.
pub struct Ema {
    decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the average at the current parameter values.
    pub fn new(params: &[(String, Var)], decay: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            return Err(Error::Invalid(format!("EMA decay must be in [0, 1), got {decay}")));
        }
        let shadow = params.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?))).collect::<Result<_>>()?;
        Ok(Self { decay, shadow })
    }

    /// Folds the current parameters into the average.
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        for ((_, s), (_, v)) in self.shadow.iter_mut().zip(params) {
            *s = ((&*s * self.decay)? + (v.as_tensor().detach() * (1.0 - self.decay))?)?;
        }
        Ok(())
    }

    /// The averaged tensors by parameter name.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Restores the average from `tensors[prefix + name]`.
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str, path: &std::path::Path) -> Result<()> {
        for (name, s) in &mut self.shadow {
            let key = format!("{prefix}{name}");
            let t = super::checkpoint::checked_tensor(tensors, &key, "EMA tensor", None, path)?;
            *s = t.to_dtype(s.dtype())?.to_device(s.device())?;
        }
        Ok(())
    }
}

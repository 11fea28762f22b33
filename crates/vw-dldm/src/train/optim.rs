//! AdamW with decoupled weight decay, and the learning-rate schedule (linear warm-up, then cosine
//! or constant).
//!
//! Our own rather than `candle_nn::AdamW` because a resumable run must save and restore the first
//! and second moments, which candle keeps private.

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyperparameters (the official dLDM runs use lr 2^-14.5 with linear warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// Peak learning rate, reached at the end of the warm-up.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay; applied only to tensors of rank >= 2 (not to biases, norms or scales).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 2f64.powf(-14.5), beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// How the learning rate decays after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Stays at the peak.
    Constant,
    /// Half-cosine from the peak down to `min_ratio` x peak at `total_steps`.
    Cosine {
        /// Final learning rate as a fraction of the peak.
        min_ratio: f64,
    },
}

/// Linear warm-up from 0 to the peak over `warmup_steps`, then [`Decay`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Length of the whole run (the end of the cosine).
    pub total_steps: u64,
    /// Decay after the warm-up.
    pub decay: Decay,
}

impl LrSchedule {
    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Cosine { min_ratio } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let min = self.peak * min_ratio;
                min + 0.5 * (self.peak - min) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// One trainable tensor with its moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over named variables; moments are kept in the variables' dtype.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied so far (the bias-correction exponent).
    t: u64,
}

impl AdamW {
    /// An optimizer over `params` (name, variable), moments at zero.
    pub fn new(params: &[(String, Var)], cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                    decay: var.as_tensor().rank() >= 2,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, slots, t: 0 })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to the i-th parameter and is scaled by
    /// `grad_scale` first (gradient clipping). A `None` gradient (parameter the loss did not reach)
    /// leaves that parameter and its moments untouched, as PyTorch does for a `None` grad.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::Invalid(format!(
                "AdamW::step: {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            // Gradients computed from weights carry candle's backprop graph; without the detach the
            // moments would chain every step's graph to the next (the policy leaked ~14 MB a step).
            let g = g.detach();
            let g = if grad_scale != 1.0 { (g * grad_scale)? } else { g };
            let g = g.to_dtype(slot.m.dtype())?;
            slot.m = ((&slot.m * b1)? + (&g * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&slot.m / bc1)?;
            let v_hat = (&slot.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let theta = slot.var.as_tensor();
            let theta = if slot.decay && self.cfg.weight_decay != 0.0 {
                (theta * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                theta.clone()
            };
            slot.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`<prefix>m.<name>`, `<prefix>v.<name>`), for a checkpoint.
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [(format!("{prefix}m.{}", s.name), s.m.clone()), (format!("{prefix}v.{}", s.name), s.v.clone())]
            })
            .collect()
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the update count `t`.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
        t: u64,
        path: &std::path::Path,
    ) -> Result<()> {
        for s in &mut self.slots {
            for (which, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}{which}.{}", s.name);
                let src = super::checkpoint::checked_tensor(tensors, &key, "optimizer tensor", Some(dst.dims()), path)?;
                *dst = src.to_dtype(dst.dtype())?.to_device(dst.device())?;
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_linearly_then_cosines_to_the_floor() {
        let s = LrSchedule { peak: 1.0, warmup_steps: 4, total_steps: 14, decay: Decay::Cosine { min_ratio: 0.1 } };
        assert!((s.lr(0) - 0.25).abs() < 1e-12);
        assert!((s.lr(3) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.55).abs() < 1e-12, "halfway down: {}", s.lr(9));
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
        let c = LrSchedule { decay: Decay::Constant, ..s };
        assert_eq!(c.lr(50), 1.0);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_the_gradient_sign() -> Result<()> {
        // With bias correction the first Adam update is lr * g / (|g| + eps) = lr * sign(g).
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1f32, -2.0, 3.0, 0.5], (2, 2), &dev)?;
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(&[("w".into(), w.clone())], cfg)?;
        let g = Tensor::from_vec(vec![0.3f32, -4.0, 1e-3, 0.0], (2, 2), &dev)?;
        opt.step(&[Some(g)], 0.1, 1.0)?;
        let got = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let want = [0.9f32, -1.9, 2.9, 0.5];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{got:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn moments_do_not_keep_the_backward_graph_alive() -> Result<()> {
        // d(sum(w*w))/dw = 2w is computed from the Var itself, so the gradient tracks ops; the
        // moments must not, or every step's graph stays reachable from the optimizer (a leak).
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1f32, -2.0, 3.0], 3, &dev)?;
        let mut opt = AdamW::new(&[("w".into(), w.clone())], AdamWConfig::default())?;
        for _ in 0..3 {
            let grads = (w.as_tensor() * w.as_tensor())?.sum_all()?.backward()?;
            let g = grads.get(w.as_tensor()).cloned();
            assert!(g.as_ref().is_some_and(|g| g.track_op()), "the test needs a tracked gradient");
            opt.step(&[g], 0.1, 0.5)?;
        }
        assert!(!opt.slots[0].m.track_op() && !opt.slots[0].v.track_op());
        Ok(())
    }
}

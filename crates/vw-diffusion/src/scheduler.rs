//! The sampler of Cosmos-Predict2 video2world as diffusers runs it: `FlowMatchEulerDiscreteScheduler`
//! with Karras sigmas between `sigma_max` and `sigma_min` (EDM sigmas, not flow-matching ones), the
//! last sigma replaced by `sigma_min`, and a plain Euler step `x + (sigma_next - sigma) * d`.
//!
//! Pure math: no weights, no device state beyond the step counter. The EDM preconditioning
//! (`c_in`, `c_skip`, `c_out`, the timestep `sigma / (sigma + 1)`) is exposed by [`EdmPrecond`]
//! and used by the pipeline.

use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::Deserialize;

/// Scheduler config, deserialized from `scheduler/scheduler_config.json` (diffusers names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FlowMatchSchedulerConfig {
    /// Training timesteps (timestep = sigma * this).
    pub num_train_timesteps: usize,
    /// Static flow shift (1 = none).
    pub shift: f64,
    /// Whether the Karras schedule replaces the linear one (true for Cosmos).
    pub use_karras_sigmas: bool,
    /// Largest sigma of the Karras schedule (the pipeline registers 80).
    pub sigma_max: Option<f64>,
    /// Smallest sigma (the pipeline registers 0.002).
    pub sigma_min: Option<f64>,
    /// sigma_data of the EDM preconditioning (1.0).
    pub sigma_data: Option<f64>,
    /// `"sigma_min"`: the terminal sigma is replaced by the last non-zero one.
    pub final_sigmas_type: Option<String>,
}

/// The Karras schedule's rho (fixed in diffusers).
const RHO: f64 = 7.0;

impl Default for FlowMatchSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_karras_sigmas: false,
            sigma_max: None,
            sigma_min: None,
            sigma_data: None,
            final_sigmas_type: None,
        }
    }
}

impl FlowMatchSchedulerConfig {
    /// The values `Cosmos2VideoToWorldPipeline` registers on its scheduler.
    pub fn cosmos() -> Self {
        Self {
            use_karras_sigmas: true,
            sigma_max: Some(80.0),
            sigma_min: Some(0.002),
            sigma_data: Some(1.0),
            final_sigmas_type: Some("sigma_min".into()),
            ..Self::default()
        }
    }

    /// Fills what the video2world pipeline sets at construction when the saved config lacks it.
    pub fn with_cosmos_defaults(mut self) -> Self {
        let c = Self::cosmos();
        self.use_karras_sigmas = true;
        self.sigma_max = self.sigma_max.or(c.sigma_max);
        self.sigma_min = self.sigma_min.or(c.sigma_min);
        self.sigma_data = self.sigma_data.or(c.sigma_data);
        self.final_sigmas_type = self.final_sigmas_type.or(c.final_sigmas_type);
        self
    }
}

/// Euler sampler over a sigma schedule.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerScheduler {
    cfg: FlowMatchSchedulerConfig,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    step_index: usize,
}

impl FlowMatchEulerScheduler {
    /// A scheduler with no timesteps set yet.
    pub fn new(cfg: FlowMatchSchedulerConfig) -> Self {
        Self { cfg, sigmas: vec![], timesteps: vec![], step_index: 0 }
    }

    /// The config.
    pub fn config(&self) -> &FlowMatchSchedulerConfig {
        &self.cfg
    }

    /// Sets `n` sampling steps the way the video2world pipeline does: sigmas `linspace(0, 1, n)`
    /// shifted, converted to the Karras schedule, a terminal 0 appended and, with
    /// `final_sigmas_type = "sigma_min"`, replaced by the last sigma.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        if n < 2 {
            return Err(Error::Invalid(format!("the sampler needs at least 2 steps, got {n}")));
        }
        let lin: Vec<f64> = (0..n).map(|i| i as f64 / (n - 1) as f64).collect();
        // The pipeline's sigmas reach the scheduler as f32.
        let shift = self.cfg.shift;
        let shifted: Vec<f32> =
            lin.iter().map(|&s| (s as f32) as f64).map(|s| (shift * s / (1.0 + (shift - 1.0) * s)) as f32).collect();
        let sigmas: Vec<f32> = if self.cfg.use_karras_sigmas {
            let smin = self.cfg.sigma_min.unwrap_or(shifted[n - 1] as f64);
            let smax = self.cfg.sigma_max.unwrap_or(shifted[0] as f64);
            let rho = RHO;
            let (lo, hi) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
            (0..n).map(|i| (hi + (i as f64 / (n - 1) as f64) * (lo - hi)).powf(rho) as f32).collect()
        } else {
            shifted
        };
        let nt = self.cfg.num_train_timesteps as f32;
        self.timesteps = sigmas.iter().map(|s| s * nt).collect();
        self.sigmas = sigmas;
        let last = if self.cfg.final_sigmas_type.as_deref() == Some("sigma_min") { self.sigmas[n - 1] } else { 0.0 };
        self.sigmas.push(last);
        self.step_index = 0;
        Ok(())
    }

    /// Sigmas, one per step plus the terminal one.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Timesteps (sigma * num_train_timesteps), one per step.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Index of the next step.
    pub fn step_index(&self) -> usize {
        self.step_index
    }

    /// sigma_data of the preconditioning.
    pub fn sigma_data(&self) -> f64 {
        self.cfg.sigma_data.unwrap_or(1.0)
    }

    /// sigma_max: the initial noise scale.
    pub fn sigma_max(&self) -> f64 {
        self.cfg.sigma_max.unwrap_or(1.0)
    }

    /// One Euler step: `sample + (sigma_next - sigma) * model_output`, computed in f32 and returned
    /// in model_output's dtype; advances the step counter.
    pub fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::Invalid(format!("scheduler step {i} past the end of {} steps", self.timesteps.len())));
        }
        let dt = (self.sigmas[i + 1] - self.sigmas[i]) as f64;
        let prev = (sample.to_dtype(DType::F32)? + (model_output.to_dtype(DType::F32)? * dt)?)?;
        self.step_index += 1;
        Ok(prev.to_dtype(model_output.dtype())?)
    }
}

/// The EDM preconditioning of the Cosmos2 pipelines at one sigma (with sigma_data = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmPrecond {
    /// The model's timestep input, `sigma / (sigma + 1)`.
    pub t: f32,
    /// Input scale `1 - t`.
    pub c_in: f32,
    /// Skip scale `1 - t`.
    pub c_skip: f32,
    /// Output scale `-t`.
    pub c_out: f32,
}

impl EdmPrecond {
    /// At sigma (f32 arithmetic, like the reference).
    pub fn new(sigma: f32) -> Self {
        let t = sigma / (sigma + 1.0);
        Self { t, c_in: 1.0 - t, c_skip: 1.0 - t, c_out: -t }
    }
}

//! The compared methods as [`VideoPredictor`]s, the closed-loop CraftWorld policy (plan from the
//! first frame, action decoder per step), and the per-transition action labels of the code probe.

use super::evaluate::{data_err, next_episode, VideoPredictor};
use crate::baseline::FramePredictor;
use crate::chain::{Policy as ChainPolicy, Subtask};
use crate::craft_env::CraftWorldEnv;
use crate::Result;
use candle_core::{DType, Device, Tensor};
use vw_ar_policy::action_decoder::ActionDecoder;
use vw_ar_policy::rollout::rollout;
use vw_ar_policy::{GenerateOptions, Policy};
use vw_data::craftworld::{Action, Episode};
use vw_data::image_tensor::image_to_tensor;
use vw_dldm::LatentDynamics;

pub(crate) fn policy_err(e: vw_ar_policy::Error) -> crate::Error {
    match e {
        vw_ar_policy::Error::Dldm(e) => dldm_err(e),
        e => crate::Error::Invalid(format!("vw-ar-policy: {e}")),
    }
}

pub(crate) fn dldm_err(e: vw_dldm::Error) -> crate::Error {
    match e {
        vw_dldm::Error::Interrupted { .. } => crate::Error::Interrupted(e.to_string()),
        e => crate::Error::Invalid(format!("vw-dldm: {e}")),
    }
}

/// AR policy over a latent dynamics model's codes, rendered by that model: the VideoWorld 2 loop.
pub struct PlanAndRender<'a> {
    /// Row label.
    pub name: String,
    /// What it is.
    pub description: String,
    /// The policy trained on this model's codes.
    pub policy: &'a Policy,
    /// The model that renders the codes.
    pub dynamics: &'a dyn LatentDynamics,
    /// Generation settings (greedy by default).
    pub opts: GenerateOptions,
    /// Codes of every step of every rollout so far (for codebook usage).
    pub codes_seen: Vec<u32>,
}

impl VideoPredictor for PlanAndRender<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn description(&self) -> String {
        self.description.clone()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> Result<Tensor> {
        let r = rollout(self.policy, self.dynamics, &first.unsqueeze(0)?, None, &self.opts).map_err(policy_err)?;
        for step in r.steps.iter().flatten() {
            self.codes_seen.extend(step);
        }
        let v = r.video.squeeze(0)?.to_dtype(DType::F32)?; // (3, 1 + T, H, W)
        let t = v.dim(1)? - 1;
        Ok(v.narrow(1, 1, t.min(frames))?)
    }
}

/// Diagnostic upper bound of [`PlanAndRender`]: the codes the latent dynamics model extracts from
/// the expert's own video, rendered by the same model from the first frame. It separates "the
/// renderer cannot reproduce an execution from its codes" from "the policy predicts the wrong codes".
pub struct ExpertCodes<'a> {
    /// Row label.
    pub name: String,
    /// The model that encodes the expert video and renders its codes.
    pub dynamics: &'a dyn LatentDynamics,
    /// Episodes in the order they will be asked for.
    pub episodes: &'a [Episode],
    /// Next episode to encode.
    pub next: usize,
    /// Diagnostic of the renderer's drift: restart the rendering from the expert's own frame every
    /// this many transitions (1 = every transition rendered from the true previous frame). `None`
    /// renders the whole episode from the first frame, as the policy rows do.
    pub anchor_every: Option<usize>,
}

impl VideoPredictor for ExpertCodes<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn description(&self) -> String {
        "Diagnostic: the codes this model extracts from the expert's video (no policy), rendered by the same model from the first frame — the best the policy row could reach.".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> Result<Tensor> {
        let ep = next_episode(self.episodes, &mut self.next, "ExpertCodes")?;
        let video = ep.frames_tensor(first.device()).map_err(data_err)?.unsqueeze(0)?; // (1, 3, T, H, W)
        let codes = self.dynamics.encode_codes(&video).map_err(dldm_err)?;
        let steps = codes.dim(1)?;
        let every = self.anchor_every.unwrap_or(steps).max(1);
        let fpc = self.dynamics.frames_per_code_step();
        let mut parts = Vec::new();
        for s0 in (0..steps).step_by(every) {
            // The expert's frame where this chunk starts: the first frame for the open loop.
            let context = if s0 == 0 { first.unsqueeze(0)?.unsqueeze(2)? } else { video.narrow(2, s0 * fpc, 1)? };
            let chunk = codes.narrow(1, s0, every.min(steps - s0))?;
            parts.push(self.dynamics.render(&context, &chunk).map_err(dldm_err)?);
        }
        let v = Tensor::cat(&parts, 2)?.squeeze(0)?.to_dtype(DType::F32)?;
        Ok(v.narrow(1, 0, v.dim(1)?.min(frames))?)
    }
}

/// The no-codes baseline rolled out clip by clip from the first frame.
pub struct NoCodes<'a> {
    /// The trained frame predictor.
    pub model: &'a FramePredictor,
}

impl VideoPredictor for NoCodes<'_> {
    fn name(&self) -> String {
        "no codes (frame predictor)".into()
    }
    fn description(&self) -> String {
        "A conv next-clip predictor that sees only the current frame (no latent codes, no policy), trained by L1 on the same training videos and rolled out clip by clip.".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> Result<Tensor> {
        self.model.rollout(first, frames)
    }
}

/// Closed-loop control in CraftWorld: the AR policy plans the codes of every step once from the
/// first frame; at the start of each step the action decoder turns (current frame, the step's
/// codes) into the step's action chunk, which is executed; then the next step starts from
/// whatever the world now looks like.
pub struct CodePolicyController<'a> {
    /// Plans the codes.
    pub policy: &'a Policy,
    /// Turns (frame, codes) into actions.
    pub decoder: &'a ActionDecoder,
    /// Where the models compute.
    pub device: Device,
    /// Generation settings.
    pub opts: GenerateOptions,
    plan: Vec<Vec<u32>>,
    step: usize,
    chunk: std::collections::VecDeque<Action>,
}

impl<'a> CodePolicyController<'a> {
    /// A controller with an empty plan.
    pub fn new(policy: &'a Policy, decoder: &'a ActionDecoder, device: Device, opts: GenerateOptions) -> Self {
        Self { policy, decoder, device, opts, plan: Vec::new(), step: 0, chunk: Default::default() }
    }
}

impl ChainPolicy<CraftWorldEnv> for CodePolicyController<'_> {
    fn begin_subtask(&mut self, subtask: &Subtask, obs: &image::RgbImage) -> Result<()> {
        if subtask.index == 0 {
            let x = image_to_tensor(obs, &self.device).map_err(data_err)?.unsqueeze(0)?;
            let g = self.policy.generate(&x, None, &self.opts).map_err(policy_err)?;
            self.plan = g.steps.into_iter().next().unwrap_or_default();
            self.step = 0;
            self.chunk.clear();
        }
        Ok(())
    }

    fn act(&mut self, obs: &image::RgbImage) -> Result<Action> {
        if self.chunk.is_empty() {
            let Some(codes) = self.plan.get(self.step) else {
                return Ok(Action { dx: 0.0, dy: 0.0, grip: 0 });
            };
            self.step += 1;
            let x = image_to_tensor(obs, &self.device).map_err(data_err)?.unsqueeze(0)?;
            let c = Tensor::from_vec(codes.clone(), (1, codes.len()), &self.device)?;
            let a =
                self.decoder.forward(&x, &c).map_err(policy_err)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for row in a {
                let (dx, dy, g) = (
                    row.first().copied().unwrap_or(0.0),
                    row.get(1).copied().unwrap_or(0.0),
                    row.get(2).copied().unwrap_or(0.0),
                );
                self.chunk.push_back(Action { dx, dy, grip: u8::from(g > 0.5) });
            }
        }
        Ok(self.chunk.pop_front().unwrap_or(Action { dx: 0.0, dy: 0.0, grip: 0 }))
    }
}

/// The action label of each code transition of an episode: the direction of the hand's net
/// displacement over the transition's frames and the gripper state at its end
/// ([`Action::label`] of the summed action). `frames_per_transition` frames per transition.
pub fn transition_labels(ep: &Episode, frames_per_transition: usize) -> Vec<usize> {
    let n = (ep.frames.len() - 1) / frames_per_transition;
    (0..n)
        .map(|j| {
            let acts: Vec<Action> =
                (j * frames_per_transition..(j + 1) * frames_per_transition).map(|t| ep.truth[t].action).collect();
            let sum = Action {
                dx: acts.iter().map(|a| a.dx).sum(),
                dy: acts.iter().map(|a| a.dy).sum(),
                grip: acts.last().map_or(0, |a| a.grip),
            };
            sum.label()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_data::craftworld::{generate_episode, CraftConfig, Split};

    /// Renders every transition as a copy of the context's last frame: what a render shows is
    /// which frame the rendering started from.
    struct Copier;

    impl LatentDynamics for Copier {
        fn encode_codes(&self, frames: &Tensor) -> vw_dldm::Result<Tensor> {
            let (b, _, t, _, _) = frames.dims5()?;
            Ok(Tensor::zeros((b, t - 1, 1), DType::U32, frames.device())?)
        }
        fn render(&self, context: &Tensor, codes: &Tensor) -> vw_dldm::Result<Tensor> {
            let last = context.narrow(2, context.dim(2)? - 1, 1)?;
            Ok(last.repeat((1, 1, codes.dim(1)?, 1, 1))?)
        }
        fn codes_per_step(&self) -> usize {
            1
        }
        fn vocab_size(&self) -> usize {
            1
        }
        fn frames_per_code_step(&self) -> usize {
            1
        }
    }

    #[test]
    fn expert_codes_restart_from_the_experts_frame_every_anchor_interval() -> Result<()> {
        let dev = Device::Cpu;
        let ep = generate_episode(&CraftConfig::tiny(), Split::Train, 3).map_err(super::super::evaluate::data_err)?;
        let video = ep.frames_tensor(&dev).map_err(super::super::evaluate::data_err)?; // (3, T, H, W)
        let t = video.dim(1)?;
        let first = video.narrow(1, 0, 1)?.squeeze(1)?;
        let eps = [ep];
        for (every, want_from) in [
            (None, vec![0; t - 1]),
            (Some(1), (0..t - 1).collect()),
            (Some(3), (0..t - 1).map(|i| i / 3 * 3).collect()),
        ] {
            let mut p =
                ExpertCodes { name: String::new(), dynamics: &Copier, episodes: &eps, next: 0, anchor_every: every };
            let out = p.predict(&first, t - 1)?;
            assert_eq!(out.dim(1)?, t - 1, "{every:?}");
            for (i, &from) in want_from.iter().enumerate() {
                let diff = (out.narrow(1, i, 1)? - video.narrow(1, from, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "anchor {every:?}: frame {} should copy expert frame {from}", i + 1);
            }
        }
        Ok(())
    }
}

//! CraftWorld glue: turn rendered expert episodes into the policy's and the action decoder's
//! training sets through any [`LatentDynamics`] (the dLDM, or the VW1-style LDM for the ablation).

use crate::dataset::{ActionDataset, CodeDataset};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use vw_data::craftworld::Episode;
use vw_dldm::LatentDynamics;

/// Codes of every transition of each episode: `(S, Q)` per episode, encoded one episode at a time
/// (the whole episode is one causal clip, so a step's codes see only its own and earlier frames).
pub fn episode_codes(
    dynamics: &dyn LatentDynamics,
    episodes: &[Episode],
    device: &Device,
) -> Result<Vec<Vec<Vec<u32>>>> {
    episodes
        .iter()
        .map(|ep| {
            let frames = ep.frames_tensor(device)?;
            let codes = dynamics.encode_codes(&frames.unsqueeze(0)?)?; // (1, S, Q)
            Ok(codes.squeeze(0)?.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?)
        })
        .collect()
}

/// First frames `(N, 3, H, W)` of the episodes, f32 in `[-1, 1]`, on the CPU.
pub fn first_frames(episodes: &[Episode]) -> Result<Tensor> {
    let frames = episodes
        .iter()
        .map(|ep| {
            let f = ep.frames.first().ok_or_else(|| Error::Invalid(format!("episode {} has no frames", ep.seed)))?;
            Ok(vw_data::image_tensor::image_to_tensor(f, &Device::Cpu)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&frames, 0)?)
}

/// The policy's training set: each episode's first frame and its codes grouped into recipe steps
/// (`transitions_per_step` transitions each; with 8 frames per step and 4x temporal compression, 2).
pub fn code_dataset(
    dynamics: &dyn LatentDynamics,
    episodes: &[Episode],
    transitions_per_step: usize,
    device: &Device,
) -> Result<CodeDataset> {
    let codes = checked_codes(dynamics, episodes, transitions_per_step, device)?;
    CodeDataset::from_transition_codes(first_frames(episodes)?, &codes, transitions_per_step, dynamics.vocab_size())
}

/// The policy's training set for re-planning at every recipe step ([`crate::rollout::rollout_replanned`]):
/// for every step `k` of every episode, the frame the step starts from (frame 0, or the previous
/// step's last frame) and the codes of steps `k..` to the end of the task. A policy trained on it
/// plans from whatever state a frame shows, not only from the untouched scene.
pub fn step_code_dataset(
    dynamics: &dyn LatentDynamics,
    episodes: &[Episode],
    transitions_per_step: usize,
    device: &Device,
) -> Result<CodeDataset> {
    let codes = checked_codes(dynamics, episodes, transitions_per_step, device)?;
    let (mut frames, mut rest) = (Vec::new(), Vec::new());
    for (ep, c) in episodes.iter().zip(&codes) {
        for k in 0..ep.num_steps() {
            let start = step_start_frame(ep, k);
            let f =
                ep.frames.get(start).ok_or_else(|| Error::Invalid(format!("episode {}: no frame {start}", ep.seed)))?;
            frames.push(vw_data::image_tensor::image_to_tensor(f, &Device::Cpu)?);
            rest.push(c[k * transitions_per_step..].to_vec());
        }
    }
    if frames.is_empty() {
        return Err(Error::Invalid("step_code_dataset: no recipe steps".into()));
    }
    CodeDataset::from_transition_codes(Tensor::stack(&frames, 0)?, &rest, transitions_per_step, dynamics.vocab_size())
}

/// The frame recipe step `k` of `ep` starts from: frame 0, or the previous step's last frame.
pub fn step_start_frame(ep: &Episode, k: usize) -> usize {
    if k == 0 {
        0
    } else {
        ep.steps[k - 1].end_frame
    }
}

/// [`episode_codes`], checked to hold `transitions_per_step` transitions for every recipe step.
fn checked_codes(
    dynamics: &dyn LatentDynamics,
    episodes: &[Episode],
    transitions_per_step: usize,
    device: &Device,
) -> Result<Vec<Vec<Vec<u32>>>> {
    let codes = episode_codes(dynamics, episodes, device)?;
    for (ep, c) in episodes.iter().zip(&codes) {
        if c.len() != ep.num_steps() * transitions_per_step {
            return Err(Error::Invalid(format!(
                "episode {}: {} transitions for {} steps of {transitions_per_step} transitions each",
                ep.seed,
                c.len(),
                ep.num_steps()
            )));
        }
    }
    Ok(codes)
}

/// The action decoder's training set: for every step of every episode, the frame the step starts
/// from (frame 0, or the previous step's last frame), the step's codes, and the ground-truth actions
/// that lead from that frame to the step's last frame (`(dx, dy, grip)` per frame).
pub fn action_dataset(
    dynamics: &dyn LatentDynamics,
    episodes: &[Episode],
    transitions_per_step: usize,
    device: &Device,
) -> Result<ActionDataset> {
    let codes = episode_codes(dynamics, episodes, device)?;
    let (mut obs, mut step_codes, mut actions) = (Vec::new(), Vec::new(), Vec::new());
    let mut chunk_len = None;
    for (ep, c) in episodes.iter().zip(&codes) {
        for (k, span) in ep.steps.iter().enumerate() {
            let start = step_start_frame(ep, k);
            let len = span.end_frame - start;
            if *chunk_len.get_or_insert(len) != len {
                return Err(Error::Invalid("episodes must share one frames-per-step".into()));
            }
            let cs = c
                .get(k * transitions_per_step..(k + 1) * transitions_per_step)
                .ok_or_else(|| Error::Invalid(format!("episode {}: no codes for step {k}", ep.seed)))?;
            obs.push(vw_data::image_tensor::image_to_tensor(&ep.frames[start], &Device::Cpu)?);
            step_codes.extend(cs.iter().flatten().copied());
            for f in start..span.end_frame {
                let a = ep.truth[f].action;
                actions.extend([a.dx, a.dy, f32::from(a.grip)]);
            }
        }
    }
    let n = obs.len();
    if n == 0 {
        return Err(Error::Invalid("no steps in the episodes".into()));
    }
    let per = step_codes.len() / n;
    let t = chunk_len.unwrap_or(0);
    ActionDataset::new(
        Tensor::stack(&obs, 0)?,
        Tensor::from_vec(step_codes, (n, per), &Device::Cpu)?,
        Tensor::from_vec(actions, (n, t, 3), &Device::Cpu)?,
    )
}

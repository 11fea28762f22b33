//! Long-horizon rollout: the policy predicts the codes of every step from the first frame, and a
//! [`LatentDynamics`] renders them clip by clip, each clip conditioned on the last frame of the
//! previous one, into one long video.

use crate::policy::{GenerateOptions, Policy};
use crate::{Error, Result};
use candle_core::Tensor;
use vw_dldm::LatentDynamics;

/// What [`rollout`] produces.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// `(B, C, 1 + T, H, W)`: the first frame, then every rendered frame of every step.
    pub video: Tensor,
    /// `steps[b][k]`: the codes of step `k` of row `b` (`codes_per_step` each).
    pub steps: Vec<Vec<Vec<u32>>>,
    /// Frame index (into `video`) where each step of each row ends (its last rendered frame).
    pub step_end_frames: Vec<Vec<usize>>,
}

/// Plans with `policy` from `first_frame` `(B, C, H, W)` in `[-1, 1]` and renders the plan with
/// `dynamics`. Rows that stop earlier than others hold their last frame for the remaining clips, so
/// the batch stays one tensor; `step_end_frames` says where each row's real steps end.
///
/// `policy_obs` maps the frame to the policy's observation input (identity for the conv encoder;
/// a VAE encode for the patch encoder); pass `None` to feed the frame as is.
pub fn rollout(
    policy: &Policy,
    dynamics: &dyn LatentDynamics,
    first_frame: &Tensor,
    policy_obs: Option<&Tensor>,
    opts: &GenerateOptions,
) -> Result<Rollout> {
    let obs = policy_obs.unwrap_or(first_frame);
    let plan = policy.generate(obs, None, opts)?;
    render_plan(policy, dynamics, first_frame, &plan.steps)
}

/// Plans and renders one recipe step at a time: from the current frame, `policy` plans the rest
/// of the task, the first step of the plan is rendered by `dynamics`, and its last frame is the
/// next current frame, until a plan is empty (end of task) or `opts.max_steps` steps. As the paper
/// rolls out clip by clip, each step is planned from the frame it starts from; a policy trained on
/// every step's start frame ([`crate::craftworld::step_code_dataset`]) sees the state the earlier
/// steps left, drawn or real. `first_frame` `(B, C, H, W)`; rows stop independently as in [`rollout`].
pub fn rollout_replanned(
    policy: &Policy,
    dynamics: &dyn LatentDynamics,
    first_frame: &Tensor,
    opts: &GenerateOptions,
) -> Result<Rollout> {
    let b = first_frame.dim(0)?;
    let mut steps: Vec<Vec<Vec<u32>>> = vec![Vec::new(); b];
    let mut clips = vec![first_frame.unsqueeze(2)?];
    let mut ends: Vec<Vec<usize>> = vec![Vec::new(); b];
    let (mut current, mut frames) = (first_frame.clone(), 1usize);
    let mut done = vec![false; b];
    for _ in 0..opts.max_steps {
        let plan = policy.generate(&current, None, &GenerateOptions { max_steps: 1, ..*opts })?;
        let next: Vec<Vec<Vec<u32>>> = plan
            .steps
            .iter()
            .zip(&mut done)
            .map(|(p, d)| {
                *d |= p.is_empty();
                if *d {
                    Vec::new()
                } else {
                    p[..1].to_vec()
                }
            })
            .collect();
        if done.iter().all(|&d| d) {
            break;
        }
        let r = render_plan(policy, dynamics, &current, &next)?;
        let t = r.video.dim(2)? - 1;
        for (row, e) in r.step_end_frames.iter().enumerate() {
            if let Some(&end) = e.first() {
                ends[row].push(frames - 1 + end);
                steps[row].push(next[row][0].clone());
            }
        }
        clips.push(r.video.narrow(2, 1, t)?);
        current = r.video.narrow(2, t, 1)?.squeeze(2)?;
        frames += t;
    }
    Ok(Rollout { video: Tensor::cat(&clips, 2)?, steps, step_end_frames: ends })
}

/// Renders given step codes (`steps[b][k]`, e.g. from [`Policy::generate`] or ground truth) clip by
/// clip from `first_frame` `(B, C, H, W)`.
pub fn render_plan(
    policy: &Policy,
    dynamics: &dyn LatentDynamics,
    first_frame: &Tensor,
    steps: &[Vec<Vec<u32>>],
) -> Result<Rollout> {
    let cfg = policy.config();
    let (b, _, _, _) = first_frame.dims4()?;
    if steps.len() != b {
        return Err(Error::Invalid(format!("{} step lists for a batch of {b} frames", steps.len())));
    }
    let (s, q) = (cfg.transitions_per_step, cfg.codes_per_transition);
    if dynamics.codes_per_step() != q || dynamics.vocab_size() != cfg.code_vocab_size {
        return Err(Error::Invalid(format!(
            "policy expects {q} codes per transition from a vocabulary of {}, the dynamics model has {} and {}",
            cfg.code_vocab_size,
            dynamics.codes_per_step(),
            dynamics.vocab_size()
        )));
    }
    let n_steps = steps.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut context = first_frame.unsqueeze(2)?; // (B, C, 1, H, W)
    let mut clips = vec![context.clone()];
    let mut frames_so_far = 1usize;
    let mut ends = vec![Vec::new(); b];
    for k in 0..n_steps {
        // Rows that have finished re-render nothing: they repeat their context frame.
        let active: Vec<bool> = steps.iter().map(|r| k < r.len()).collect();
        let codes: Vec<u32> = steps.iter().flat_map(|r| r.get(k).cloned().unwrap_or_else(|| vec![0; s * q])).collect();
        if codes.len() != b * s * q {
            return Err(Error::Invalid(format!("step {k}: every step must hold {} codes", s * q)));
        }
        let codes = Tensor::from_vec(codes, (b, s, q), first_frame.device())?;
        let clip = dynamics.render(&context, &codes)?.to_dtype(first_frame.dtype())?;
        let t = clip.dim(2)?;
        let held = context.narrow(2, context.dim(2)? - 1, 1)?.repeat((1, 1, t, 1, 1))?;
        let mask: Vec<f32> = active.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, 1, 1), first_frame.device())?.to_dtype(clip.dtype())?;
        let inv = (1.0 - &mask)?;
        let clip = (clip.broadcast_mul(&mask)? + held.broadcast_mul(&inv)?)?;
        frames_so_far += t;
        for (r, &a) in active.iter().enumerate() {
            if a {
                ends[r].push(frames_so_far - 1);
            }
        }
        context = clip.narrow(2, t - 1, 1)?;
        clips.push(clip);
    }
    let video = Tensor::cat(&clips, 2)?;
    Ok(Rollout { video, steps: steps.to_vec(), step_end_frames: ends })
}

/// Reads an image file as a `(1, 3, side, side)` frame in `[-1, 1]` (resized with a triangle filter
/// when its size differs), the input [`rollout`] and [`Policy::generate`] take.
pub fn load_frame(path: &std::path::Path, side: usize, device: &candle_core::Device) -> Result<Tensor> {
    let img =
        image::open(path).map_err(|e| Error::Invalid(format!("{}: cannot read image: {e}", path.display())))?.to_rgb8();
    let img = if (img.width() as usize, img.height() as usize) != (side, side) {
        image::imageops::resize(&img, side as u32, side as u32, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    Ok(vw_data::image_tensor::image_to_tensor(&img, device)?.unsqueeze(0)?)
}

//! The clip renderer (`vw_dldm::clip`): trains it on a stage-1 dLDM's codes and scores what it
//! draws with the CraftWorld judge; checks its label-free motion teacher against the ground truth.
//!
//! ```text
//! cargo run --release --example clip_renderer -- teacher [--episodes 16] [--split train|test]
//! cargo run --release --example clip_renderer -- train --ldm RUN/dldm --out DIR [--steps 600] [--episodes 32]
//!     [--split test|train] [--predicted-prob P] [--channels C] [--augment on|off] [--compositor layers|select]
//!     [--expert N] [--motion-steps M] [--step-reader on|gripper|off] [--layers-from RENDERER_DIR] [--grasp-jitter PX]
//!     [--grating A (the layers' background grating amplitude; 0.3 by default)]
//!     [--seed S]
//!     [--png FILE]
//! cargo run --release --example clip_renderer -- layers --out RENDERER_DIR --to DIR   (export the layer networks)
//! cargo run --release --example clip_renderer -- graft --out RENDERER_DIR --layers-from RUN --to DIR
//!     (RENDERER_DIR with the layer networks of RUN, written as a renderer run: a demo's clip-dldm/)
//! cargo run --release --example clip_renderer -- stage1 --ldm RUN/dldm --out DIR [--displacement-weight W] [--saturation-weight W] [--seed S]
//!     [--camera A (zoom and turn the training pairs by up to A)]
//!     (stage 1 again with that run's recipe, changed only there)
//! cargo run --release --example clip_renderer -- motions --ldm RUN/dldm --out DIR [--episodes 32] [--split test|train]
//! cargo run --release --example clip_renderer -- eval --ldm RUN/dldm --out DIR [--episodes 32] [--split test|train]
//!     [--layers-from RENDERER_DIR] [--png FILE] [--factor camera|table|wall|light|blocks+distractors]
//!     [--motions-only on]
//! cargo run --release --example clip_renderer -- grippers --out DIR [--episodes 32]
//!     (where a gripper-seeing renderer's layer puts the gripper, against the true hand)
//!
//! (`train`, `motions` and `eval` also take `--unseen on`: the training look scored on the
//! evaluation seeds, whose layouts no training video shows; `eval` takes `--settle on|off`, the
//! layered compositor's gravity rule. `CLIP_PHASE=j` prints the codes' and the teacher's motion
//! of transition j of every recipe step; `CLIP_MIX=free|free-y|carried` adds a row drawing the
//! codes' motions with that part replaced by the true motions. `eval --motions-only on` also places
//! each step's grasp against the true hand and groups the steps by their reach's codes;
//! `DUMP_REACH=FILE` appends each step's reach and carry with their latents and codes, for
//! `tools/reach_latents.py`.)
//! ```
//!
//! `eval` scores three renderings of each held-out episode, all chained one render per recipe
//! step: the dLDM's codes of the expert video drawn by the clip renderer (what the demo's policy
//! rows can at best reach), the same with the teacher's motions read from the expert frames instead
//! of the codes (the selector's ceiling), and the dLDM's own per-frame renderer for comparison.

use anyhow::Context;
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use vw_data::craftworld::{Episode, Split};
use vw_dldm::clip::{
    dominant_motion, is_layer_key, ClipDynamics, ClipRenderer, Compositor, MotionTeacher, TransitionMotion,
};
use vw_dldm::train::clip::{layer_tensors, load_clip_renderer, train_clip_renderer, ClipData, ClipTrainConfig};
use vw_dldm::train::craft::Transitions;
use vw_dldm::train::stage1::load_stage1;
use vw_dldm::LatentDynamics;
use vw_eval::demo::methods::ExpertCodes;
use vw_eval::demo::{episodes, score_method, DemoConfig, VideoPredictor};

fn split_of(v: &str) -> anyhow::Result<Split> {
    Ok(match v {
        "train" => Split::Train,
        "test" => Split::TestAppearance,
        other => anyhow::bail!("--split {other}: expected train or test"),
    })
}

/// Per-pixel median over time of frames in the same layout.
fn median_background(planes: &[Vec<f32>]) -> Vec<f32> {
    (0..planes[0].len())
        .map(|i| {
            let mut v: Vec<f32> = planes.iter().map(|p| p[i]).collect();
            v.sort_by(f32::total_cmp);
            v[(v.len() - 1) / 2]
        })
        .collect()
}

fn teacher_check(n: usize, split: Split) -> anyhow::Result<()> {
    let cfg = DemoConfig::cpu();
    let eps = episodes(&cfg, split, n, true)?;
    let t = MotionTeacher::default();
    let (mut err_sum, mut err_max, mut count) = (0f64, 0f64, 0usize);
    let mut conf = [[0usize; 2]; 2]; // [truth carried][teacher carried]
    let mut moving_missed = 0usize;
    for ep in &eps {
        let size = ep.frames[0].width() as usize;
        let (planes, bg) = planes_of(ep);
        for (j, truth) in truth_motions(ep).into_iter().enumerate() {
            let r = dominant_motion(&planes[j], &planes[j + 1], &bg, (size, size), &t);
            let m = r.motion;
            let (gx, gy, carried) = (truth.dx, truth.dy, truth.carried);
            if gx.hypot(gy) > 0.5 {
                let e = ((m.dx - gx) as f64).hypot((m.dy - gy) as f64);
                if std::env::var("CLIP_DEBUG").is_ok() && (e > 2.0 || carried != m.carried) {
                    println!("ep {} t {j} phase {:?} truth ({gx:.1},{gy:.1}) carried {carried} teacher ({},{}) {} moved {} vivid {}", ep.seed, ep.truth[j].phase, m.dx, m.dy, m.carried, r.moved, r.vivid);
                }
                err_sum += e;
                err_max = err_max.max(e);
                count += 1;
                moving_missed += (m.dx == 0.0 && m.dy == 0.0) as usize;
                conf[carried as usize][m.carried as usize] += 1;
            }
        }
    }
    println!("teacher on {n} {split} episodes, {count} moving transitions:");
    println!(
        "  displacement error vs the hand: mean {:.2} px, max {:.2} px; no motion found in {moving_missed}",
        err_sum / count.max(1) as f64,
        err_max
    );
    println!(
        "  carried (truth x teacher): not/not {} not/yes {} yes/not {} yes/yes {}",
        conf[0][0], conf[0][1], conf[1][0], conf[1][1]
    );
    Ok(())
}

/// The true motion of every transition of an episode: the hand's, projected through the scene's
/// camera, in pixels; carried while a block is held at the transition's start and the hand moves
/// (it is released at the end of the lowering, so not held at its end).
fn truth_motions(ep: &Episode) -> Vec<TransitionMotion> {
    let size = ep.frames[0].width() as f32;
    let cam = ep.camera();
    ep.truth
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0].scene.hand, w[1].scene.hand);
            let (pa, pb) = (cam.project(a.0, a.1), cam.project(b.0, b.1));
            let (dx, dy) = ((pb.0 - pa.0) * size, (pb.1 - pa.1) * size);
            TransitionMotion { dx, dy, carried: w[0].scene.held.is_some() && dx.hypot(dy) > 0.5 }
        })
        .collect()
}

/// The frames of an episode as `(3, H, W)` planes in [-1, 1], and their per-pixel median.
fn planes_of(ep: &Episode) -> (Vec<Vec<f32>>, Vec<f32>) {
    let size = ep.frames[0].width() as usize;
    let planes: Vec<Vec<f32>> = ep
        .frames
        .iter()
        .map(|f| {
            let mut v = vec![0f32; 3 * size * size];
            for (i, p) in f.pixels().enumerate() {
                for c in 0..3 {
                    v[c * size * size + i] = p.0[c] as f32 / 127.5 - 1.0;
                }
            }
            v
        })
        .collect();
    let bg = median_background(&planes);
    (planes, bg)
}

/// The teacher's motion of every transition of an episode.
fn teacher_motions(ep: &Episode, teacher: &MotionTeacher) -> Vec<TransitionMotion> {
    let size = ep.frames[0].width() as usize;
    let (planes, bg) = planes_of(ep);
    (0..planes.len() - 1)
        .map(|j| dominant_motion(&planes[j], &planes[j + 1], &bg, (size, size), teacher).motion)
        .collect()
}

/// The episodes a diagnostic predictor is asked for, in order, with the teacher's motions of each.
struct TeacherEpisodes<'a> {
    teacher: MotionTeacher,
    episodes: &'a [Episode],
    next: usize,
    /// Give the true motions instead of the teacher's (a diagnostic of the renderer alone).
    truth: bool,
}

impl<'a> TeacherEpisodes<'a> {
    fn next_episode(&mut self) -> vw_eval::Result<(&'a Episode, Vec<TransitionMotion>)> {
        let ep = self
            .episodes
            .get(self.next)
            .ok_or_else(|| vw_eval::Error::Invalid("asked for more episodes than were given".into()))?;
        self.next += 1;
        Ok((ep, if self.truth { truth_motions(ep) } else { teacher_motions(ep, &self.teacher) }))
    }
}

/// The clip renderer drawing the teacher's motions, read from the expert's own frames: what the
/// selector draws when the motions are right.
struct TeacherMotions<'a> {
    renderer: &'a ClipRenderer,
    source: TeacherEpisodes<'a>,
}

impl VideoPredictor for TeacherMotions<'_> {
    fn name(&self) -> String {
        "clip renderer, teacher motions".into()
    }
    fn description(&self) -> String {
        "the clip renderer placing its copies by the motions read from the expert's frames".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> vw_eval::Result<Tensor> {
        let (_, motions) = self.source.next_episode()?;
        let v = self
            .renderer
            .render_steps(&first.unsqueeze(0)?, &[motions])
            .map_err(|e| vw_eval::Error::Invalid(e.to_string()))?;
        let v = v.squeeze(0)?;
        Ok(v.narrow(1, 0, v.dim(1)?.min(frames))?)
    }
}

/// A diagnostic (`CLIP_MIX=free|free-y|carried`): the motions read from the codes with one part
/// replaced by the true motions: the free (not carried) transitions, only their vertical moves,
/// or the carried ones (transitions 3..=6 of a step: lift, carry, carry, lower).
struct MixedMotions<'a> {
    clip: &'a ClipDynamics,
    episodes: &'a [Episode],
    next: usize,
    fps: usize,
    mode: String,
}

impl VideoPredictor for MixedMotions<'_> {
    fn name(&self) -> String {
        format!("codes, true {} motions", self.mode)
    }
    fn description(&self) -> String {
        "the codes' motions with some of them replaced by the true ones".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> vw_eval::Result<Tensor> {
        let err = |e: anyhow::Error| vw_eval::Error::Invalid(e.to_string());
        let ep = &self.episodes[self.next];
        self.next += 1;
        let video = ep.frames_tensor(&Device::Cpu).map_err(|e| err(e.into()))?.unsqueeze(0)?;
        let codes = self.clip.encode_codes(&video).map_err(|e| err(e.into()))?.squeeze(0)?;
        let grippers = step_grippers(&self.clip.renderer, &video, codes.dim(0)?).map_err(err)?;
        let mut pred = self
            .clip
            .renderer
            .clip_motions(&codes.unsqueeze(0)?, grippers.as_ref())
            .map_err(|e| err(e.into()))?
            .concat();
        let real = truth_motions(ep);
        for (j, (p, r)) in pred.iter_mut().zip(&real).enumerate() {
            let carried = (3..=6).contains(&(j % self.fps));
            match self.mode.as_str() {
                "free" if !carried => *p = *r,
                "free-y" if !carried => p.dy = r.dy,
                "carried" if carried => *p = *r,
                _ => {}
            }
        }
        let v =
            self.clip.renderer.render_steps(&first.unsqueeze(0)?, &[pred]).map_err(|e| err(e.into()))?.squeeze(0)?;
        Ok(v.narrow(1, 0, v.dim(1)?.min(frames))?)
    }
}

/// `grippers`: where the renderer's gripper layer puts the gripper at the start of every recipe
/// step ([`ClipRenderer::gripper_position`], the layer's centre; and the layer's lowest row)
/// against the true hand, in pixels. The layer's position is not the hand's, so each axis of the
/// hand is fitted as a line in the position on the training look (evaluation seeds), and that
/// line's error is reported on both looks. A step reader that sees the gripper trusts this position.
fn gripper_check(renderer_dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let (_, r) = load_clip_renderer(renderer_dir, &Device::Cpu)?;
    anyhow::ensure!(
        r.config().step_reader_sees_gripper,
        "{}: the renderer's step reader does not see the gripper",
        renderer_dir.display()
    );
    let cfg = DemoConfig::cpu();
    let fps = cfg.craft.frames_per_step;
    let train: Vec<Episode> = (0..n)
        .map(|i| vw_data::craftworld::generate_episode(&cfg.craft, Split::Train, cfg.test_seed(i)))
        .collect::<Result<_, _>>()?;
    // (layer position, hand) in pixels of every step start: x and y of the layer's centre, and y
    // of its lowest row.
    let pairs = |eps: &[Episode]| -> anyhow::Result<[Vec<(f32, f32)>; 3]> {
        let mut out = [Vec::new(), Vec::new(), Vec::new()];
        for ep in eps {
            let size = ep.frames[0].width() as f32;
            let cam = ep.camera();
            let video = ep.frames_tensor(&Device::Cpu)?.unsqueeze(0)?;
            // The layer of each step's first frame: its centre (the reader's position) and its
            // lowest row of at least 2 pixels (the fingertips).
            let layer = r.gripper_layer(&step_firsts(&video, (ep.frames.len() - 1) / fps, fps)?)?;
            let pos = vw_dldm::clip::mask_centre(&layer)?;
            let tips = vw_dldm::clip::mask_bottoms(&layer)?;
            for (k, p) in pos.to_vec2::<f32>()?.iter().enumerate() {
                let hand = ep.truth[k * fps].scene.hand;
                let h = cam.project(hand.0, hand.1);
                let low = tips[k].map_or(0.0, |t| t.1);
                out[0].push(((p[0] + 1.0) / 2.0 * size, h.0 * size));
                out[1].push(((p[1] + 1.0) / 2.0 * size, h.1 * size));
                out[2].push((low, h.1 * size));
            }
        }
        Ok(out)
    };
    let seen = pairs(&train)?;
    let unseen = pairs(&episodes(&cfg, Split::TestAppearance, n, false)?)?;
    for (axis, (fit, test)) in ["x (centre)", "y (centre)", "y (lowest row)"].iter().zip(seen.iter().zip(&unseen)) {
        // Least squares hand = a * centre + b on the training look.
        let m = fit.len() as f32;
        let (mc, mh) = (fit.iter().map(|p| p.0).sum::<f32>() / m, fit.iter().map(|p| p.1).sum::<f32>() / m);
        let cov: f32 = fit.iter().map(|p| (p.0 - mc) * (p.1 - mh)).sum();
        let var: f32 = fit.iter().map(|p| (p.0 - mc).powi(2)).sum::<f32>().max(1e-6);
        let (a, b) = (cov / var, mh - cov / var * mc);
        let err = |ps: &[(f32, f32)]| {
            let e: Vec<f32> = ps.iter().map(|p| (a * p.0 + b - p.1).abs()).collect();
            let within = e.iter().filter(|&&v| v <= 1.5).count() as f32 / e.len().max(1) as f32;
            (e.iter().sum::<f32>() / e.len().max(1) as f32, 100.0 * within)
        };
        let ((e0, w0), (e1, w1)) = (err(fit), err(test));
        println!(
            "{axis}: hand = {a:.2} x layer position + {b:.1} px; off by {e0:.2} px on average on the training look ({w0:.0}% within 1.5 px), {e1:.2} px on the held-out look ({w1:.0}%), {} / {} step starts",
            fit.len(),
            test.len()
        );
    }
    Ok(())
}

/// Where the gripper is in the expert's frame at the start of each clip of the `s` transitions of
/// `video` `(1, 3, T, H, W)`, for a step reader that sees it (`None` for one that does not).
fn step_grippers(r: &ClipRenderer, video: &Tensor, s: usize) -> anyhow::Result<Option<Tensor>> {
    if !r.reads_gripper(s) {
        return Ok(None);
    }
    let ct = r.config().clip_transitions;
    Ok(Some(r.gripper_position(&step_firsts(video, s / ct, ct)?)?))
}

/// Frames `0, every, 2 every, ...` (`count` of them) of `video` `(1, 3, T, H, W)`: `(count, 3, H, W)`.
fn step_firsts(video: &Tensor, count: usize, every: usize) -> anyhow::Result<Tensor> {
    let at = Tensor::from_vec((0..count).map(|k| (k * every) as u32).collect(), count, video.device())?;
    Ok(video.squeeze(0)?.transpose(0, 1)?.contiguous()?.index_select(&at, 0)?)
}

/// How far the motions the renderer reads from the dLDM's codes are from the teacher's motions of
/// the same held-out transitions, per transition and summed over each recipe step.
fn motion_check(
    clip: &ClipDynamics,
    teacher: &MotionTeacher,
    eps: &[Episode],
    fps: usize,
    seen: Option<&ClipData>,
) -> anyhow::Result<()> {
    use vw_dldm::clip::clip_translations;
    let lookup = seen.map(CodeLookup::new).transpose()?;
    let mut lookup_rows: Vec<(Vec<TransitionMotion>, Vec<TransitionMotion>)> = Vec::new();
    let (mut e_sum, mut n, mut carried_ok) = (0f64, 0usize, 0usize);
    let (mut step_err, mut steps, mut block_exact) = (0f64, 0usize, 0usize);
    // The block's step-end error split by axis, and how often each axis is within 1 px / 3 px.
    let (mut ax, mut ay) = ([0usize; 3], [0usize; 3]);
    let mut within_teacher = 0usize;
    // The same against the true motions (the teacher misreads some held-out transitions).
    let (mut within_truth, mut within_truth_teacher) = (0usize, 0usize);
    // The codes' grasp pose and the gripper's step end against the truth: mean px off per axis.
    let (mut grasp_off, mut end_off) = ([0f64; 2], [0f64; 2]);
    let mut by_phase = vec![(0f64, 0f64, 0usize); fps];
    let mut by_phase_truth = vec![(0f64, 0f64, 0usize); fps];
    let mut grasps = GraspCheck::default();
    for ep in eps {
        let taught = teacher_motions(ep, teacher);
        let truth = truth_motions(ep);
        let video = ep.frames_tensor(&Device::Cpu)?.unsqueeze(0)?;
        let codes = clip.encode_codes(&video)?.squeeze(0)?;
        // Read as the renderer reads them: a recipe step at a time (seeing the expert's frame where
        // the reader sees the gripper).
        let grippers = step_grippers(&clip.renderer, &video, codes.dim(0)?)?;
        let pred = clip.renderer.clip_motions(&codes.unsqueeze(0)?, grippers.as_ref())?.concat();
        grasps.add(clip, ep, &video, &codes, &truth, &pred, fps)?;
        if let Some(l) = &lookup {
            lookup_rows.push((l.read(&codes, &pred)?, taught.clone()));
        }
        for (j, ((p, t), r)) in pred.iter().zip(&taught).zip(&truth).enumerate() {
            if std::env::var("CLIP_PHASE").is_ok_and(|v| v.parse::<usize>().ok() == Some(j % fps)) {
                println!("ep {} t {j}: pred ({:.1},{:.1}) teacher ({:.1},{:.1})", ep.seed, p.dx, p.dy, t.dx, t.dy);
            }
            add_phase(&mut by_phase[j % fps], (p.dx - t.dx).abs() as f64, (p.dy - t.dy).abs() as f64);
            add_phase(&mut by_phase_truth[j % fps], (p.dx - r.dx).abs() as f64, (p.dy - r.dy).abs() as f64);
            e_sum += ((p.dx - t.dx) as f64).hypot((p.dy - t.dy) as f64);
            carried_ok += (p.carried == t.carried) as usize;
            n += 1;
        }
        for ((p, t), r) in pred.chunks(fps).zip(taught.chunks(fps)).zip(truth.chunks(fps)) {
            let (pt, tt, rt) = (clip_translations(p), clip_translations(t), clip_translations(r));
            for (acc, a, b) in [(&mut grasp_off, pt.grasp, rt.grasp), (&mut end_off, pt.gripper, rt.gripper)] {
                acc[0] += (a.0 - b.0).abs() as f64;
                acc[1] += (a.1 - b.1).abs() as f64;
            }
            within_truth += within_half_cell(pt.block, rt.block) as usize;
            within_truth_teacher += within_half_cell(tt.block, rt.block) as usize;
            let (a, b) = (pt.block, tt.block);
            step_err += ((a.0 - b.0) as f64).hypot((a.1 - b.1) as f64);
            block_exact += (a == b) as usize;
            within_teacher += within_half_cell(a, b) as usize;
            steps += 1;
            for (acc, e) in [(&mut ax, (a.0 - b.0).abs()), (&mut ay, (a.1 - b.1).abs())] {
                acc[0] += (e <= 1) as usize;
                acc[1] += (e <= 3) as usize;
                acc[2] += e as usize;
            }
        }
    }
    println!(
        "motions from codes vs the teacher: {:.2} px per transition, carried right {:.1}%; block at step end {:.2} px off, exact in {:.1}% of {steps} steps",
        e_sum / n.max(1) as f64,
        100.0 * carried_ok as f64 / n.max(1) as f64,
        step_err / steps.max(1) as f64,
        100.0 * block_exact as f64 / steps.max(1) as f64
    );
    println!("  |dx|/|dy| error by transition of the step: {}", phase_table(&by_phase));
    println!("  the same against the true motions: {}", phase_table(&by_phase_truth));
    let pct = |k: usize| 100.0 * k as f64 / steps.max(1) as f64;
    println!("  block at step end within 3 px on both axes: {:.0}%", pct(within_teacher));
    println!(
        "  against the true motions: the codes' block within 3 px on both axes {:.0}%, the teacher's {:.0}%",
        pct(within_truth),
        pct(within_truth_teacher)
    );
    let st = steps.max(1) as f64;
    println!(
        "  the codes' grasp pose {:.2} / {:.2} px off (x / y), the gripper at step end {:.2} / {:.2} px off",
        grasp_off[0] / st,
        grasp_off[1] / st,
        end_off[0] / st,
        end_off[1] / st
    );
    for (axis, acc) in [("x", ax), ("y", ay)] {
        println!(
            "  block at step end, {axis}: mean {:.2} px off, within 1 px {:.0}%, within 3 px {:.0}%",
            acc[2] as f64 / steps.max(1) as f64,
            pct(acc[0]),
            pct(acc[1])
        );
    }
    if let Some(l) = &lookup {
        l.report(&lookup_rows, fps);
    }
    grasps.report();
    Ok(())
}

/// Where each recipe step's grasp lands, drawn from the expert's frame at the step's start: the
/// fingertips there ([`vw_dldm::clip::mask_bottoms`]) moved by the codes' motions up to the carried
/// stretch, before and after the snap networks, against the true hand where the block is taken:
/// x errors by bin, and how often the grasp is nearer another source stack than the true one. Also
/// how far the true reach and carry spread among the steps that share their codes.
#[derive(Default)]
struct GraspCheck {
    /// [codes, snapped]: |dx| bins (< 1.5, < 3.3, < 5 px, more).
    bins: [[usize; 4]; 2],
    /// [codes, snapped]: grasps nearer another source stack than the true one.
    other: [usize; 2],
    /// [codes, snapped]: grasp y minus the true hand's y (px).
    dy: [Vec<f32>; 2],
    /// Snapped grasps at another stack: "x off before/after (reach)".
    wrong_after: Vec<String>,
    /// Of those, the stack taken instead: as high as the right one, of another height, empty.
    heights: [usize; 3],
    /// The codes of each step's two reach (carry) transitions, and the true reach (carry) (x, px).
    reach_codes: std::collections::HashMap<Vec<u32>, Vec<f32>>,
    carry_codes: std::collections::HashMap<Vec<u32>, Vec<f32>>,
}

impl GraspCheck {
    /// One episode: its frames `video` `(1, 3, T, H, W)`, its codes `codes` `(T - 1, Q)`, its true
    /// motions `truth` and the motions `pred` the renderer reads from the codes, `fps` per step.
    /// With `DUMP_REACH=FILE` also appends each step's reach and carry with the latents and the
    /// code vectors of their transitions to FILE (for `tools/reach_latents.py`).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        clip: &ClipDynamics,
        ep: &Episode,
        video: &Tensor,
        codes: &Tensor,
        truth: &[TransitionMotion],
        pred: &[TransitionMotion],
        fps: usize,
    ) -> anyhow::Result<()> {
        use vw_data::craftworld::{CELL, SOURCE_PITCH, SOURCE_U0, TABLE_V};
        use vw_dldm::clip::{grasp_point, mask_bottoms};
        let r = &clip.renderer;
        let rows = codes.to_vec2::<u32>()?;
        if let Ok(path) = std::env::var("DUMP_REACH") {
            let (xt, xn) = vw_dldm::baseline::transition_pairs(video)?;
            let z = clip.ldm.latents(&xt, &xn)?;
            let (q, _) = vw_tensor_kernels::fsq::fsq_quantize(&z, &clip.ldm.config().levels)?;
            let (z, q) = (z.flatten_from(1)?.to_vec2::<f32>()?, q.flatten_from(1)?.to_vec2::<f32>()?);
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            use std::io::Write;
            for j in (0..ep.num_steps()).map(|k| k * fps).take_while(|&j| j + 5 < truth.len()) {
                let mut row = vec![ep.seed as f32, truth[j].dx + truth[j + 1].dx, truth[j + 4].dx + truth[j + 5].dx];
                for t in [j, j + 1, j + 4, j + 5] {
                    row.extend(&z[t]);
                }
                for t in [j, j + 1, j + 4, j + 5] {
                    row.extend(&q[t]);
                }
                writeln!(f, "{}", row.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","))?;
            }
        }
        for k in 0..ep.num_steps() {
            for (map, j) in [(&mut self.reach_codes, 0), (&mut self.carry_codes, 4)] {
                if let (Some(a), Some(b)) = (rows.get(k * fps + j), rows.get(k * fps + j + 1)) {
                    let key = [a.clone(), b.clone()].concat();
                    map.entry(key).or_default().push(truth[k * fps + j].dx + truth[k * fps + j + 1].dx);
                }
            }
        }
        // Every whole step at once: its first frame, the fingertips there, its motions as read
        // and as snapped.
        let steps = ep.num_steps().min(pred.len() / fps);
        if steps == 0 {
            return Ok(());
        }
        let firsts = step_firsts(video, steps, fps)?;
        let tips = mask_bottoms(&r.gripper_layer(&firsts)?)?;
        let read: Vec<Vec<TransitionMotion>> = pred.chunks(fps).take(steps).map(<[_]>::to_vec).collect();
        let mut snapped = read.clone();
        if r.config().snap > 0 {
            r.snap_from(&firsts, &tips, &mut snapped)?;
        }
        let (cam, size) = (ep.camera(), ep.frames[0].width() as f32);
        let stack = |u: f32| ((u - SOURCE_U0 - 0.5 * CELL) / SOURCE_PITCH).round();
        for k in 0..steps {
            let Some(g0) = tips[k].and_then(|t| grasp_point(t, &read[k])) else { continue };
            let g1 = tips[k].and_then(|t| grasp_point(t, &snapped[k])).map_or(g0.grasp, |g| g.grasp);
            // The true hand where the block is first held in this step.
            let s0 = k * fps;
            let Some(f) = (s0..s0 + fps).find(|&f| ep.truth[f].scene.held.is_some()) else { continue };
            let h = ep.truth[f].scene.hand;
            let (hx, hy) = cam.project(h.0, h.1);
            let (hx, hy) = (hx * size, hy * size);
            let world_x = |x: f32| cam.unproject(x / size, hy / size).0;
            if stack(world_x(g1.0)) != stack(world_x(hx)) {
                let t = tips[k].map_or(0.0, |t| t.0);
                // The tops of the true stack and of the one taken instead (world v), if any.
                let top = |st: f32| {
                    ep.truth[s0]
                        .scene
                        .blocks
                        .iter()
                        .filter(|b| b.2 < TABLE_V + 0.01 && stack(b.1 + 0.5 * CELL) == st && b.1 < 0.5)
                        .map(|b| b.2)
                        .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.min(v))))
                };
                // As high as the right one (then no height in the frame tells them apart), another
                // height, or empty.
                self.heights[match (top(stack(world_x(hx))), top(stack(world_x(g1.0)))) {
                    (Some(a), Some(b)) if (a - b).abs() < 0.01 => 0,
                    (Some(_), Some(_)) => 1,
                    _ => 2,
                }] += 1;
                self.wrong_after.push(format!("{:+.1}/{:+.1} (reach {:+.0})", g0.grasp.0 - hx, g1.0 - hx, hx - t));
            }
            for (i, g) in [g0.grasp, g1].into_iter().enumerate() {
                let e = (g.0 - hx).abs();
                self.bins[i][[1.5, 3.3, 5.0].iter().position(|&b| e < b).unwrap_or(3)] += 1;
                self.other[i] += usize::from(stack(world_x(g.0)) != stack(world_x(hx)));
                self.dy[i].push(g.1 - hy);
            }
        }
        Ok(())
    }

    fn report(&self) {
        for (i, name) in ["the codes' grasp", "after the snap networks"].iter().enumerate() {
            let n = self.bins[i].iter().sum::<usize>().max(1) as f64;
            let pc = |c: usize| 100.0 * c as f64 / n;
            let mut ys = self.dy[i].clone();
            ys.sort_by(f32::total_cmp);
            let med = ys.get(ys.len() / 2).copied().unwrap_or(0.0);
            let off = ys.iter().filter(|&&y| (y - med).abs() > 3.0).count();
            println!(
                "  {name:24}: |x| off < 1.5 px {:.0}%, < 3.3 {:.0}%, < 5 {:.0}%, more {:.0}%; at another stack {:.0}%; y - hand median {med:.1} px, more than 3 px from it {:.0}% ({} grasps)",
                pc(self.bins[i][0]),
                pc(self.bins[i][1]),
                pc(self.bins[i][2]),
                pc(self.bins[i][3]),
                pc(self.other[i]),
                pc(off),
                n
            );
        }
        for (name, map) in [("reach", &self.reach_codes), ("carry", &self.carry_codes)] {
            let (mut spread, mut n, mut multi, mut far) = (0f32, 0usize, 0usize, 0usize);
            for v in map.values() {
                let m = v.iter().sum::<f32>() / v.len() as f32;
                spread += v.iter().map(|x| (x - m).abs()).sum::<f32>();
                far += v.iter().filter(|x| (*x - m).abs() > 4.0).count();
                n += v.len();
                multi += usize::from(v.len() > 1);
            }
            println!(
                "  {name} codes (both transitions): {} distinct over {n} steps, {multi} shared by several steps; mean |x - mean of its code| {:.2} px, more than 4 px from it {far}",
                map.len(),
                spread / n.max(1) as f32
            );
        }
        println!(
            "  grasps at another stack after the snap: {} (that stack as high as the right one {}, of another height {}, empty {}); x off before/after the snap, px: {}",
            self.wrong_after.len(),
            self.heights[0],
            self.heights[1],
            self.heights[2],
            self.wrong_after.join(" ")
        );
    }
}

/// Whether two block placements are within about half a cell (3 px) on both axes: docs/craftworld.md,
/// the judge still counts a block that far off.
fn within_half_cell(a: (i64, i64), b: (i64, i64)) -> bool {
    (a.0 - b.0).abs() <= 3 && (a.1 - b.1).abs() <= 3
}

/// Summed |dx|, |dy| errors and counts per transition of a recipe step, as "x/y" means.
fn phase_table(by_phase: &[(f64, f64, usize)]) -> String {
    let mean = |v: f64, n: usize| v / n.max(1) as f64;
    by_phase.iter().map(|&(x, y, n)| format!("{:.1}/{:.1}", mean(x, n), mean(y, n))).collect::<Vec<_>>().join(" ")
}

/// Adds one transition's errors `(|dx|, |dy|)` to its phase's sums.
fn add_phase(acc: &mut (f64, f64, usize), x: f64, y: f64) {
    *acc = (acc.0 + x, acc.1 + y, acc.2 + 1);
}

/// The best a reader of one transition's codes alone can do: the median of the teacher's motions
/// of every training transition with the same codes (the motion MLP where the codes were never
/// seen). Says whether the codes or the MLP's reading of them limit the motions' precision.
struct CodeLookup {
    medians: std::collections::HashMap<Vec<u32>, (f32, f32)>,
    /// Mean |dx|, |dy| of the training transitions from their own codes' median (the spread
    /// within a code: what no per-transition reader can undo), and how many transitions.
    spread: (f64, f64, usize),
}

impl CodeLookup {
    fn new(d: &ClipData) -> anyhow::Result<Self> {
        let codes = d.codes.to_vec2::<u32>()?;
        let mut groups: std::collections::HashMap<Vec<u32>, Vec<(f32, f32)>> = Default::default();
        for (c, m) in codes.iter().zip(&d.motions) {
            groups.entry(c.clone()).or_default().push((m.dx, m.dy));
        }
        let median = |mut v: Vec<f32>| {
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        let mut spread = (0f64, 0f64, 0usize);
        let mut medians = std::collections::HashMap::new();
        for (c, ms) in groups {
            let m = (median(ms.iter().map(|p| p.0).collect()), median(ms.iter().map(|p| p.1).collect()));
            for p in &ms {
                spread.0 += (p.0 - m.0).abs() as f64;
                spread.1 += (p.1 - m.1).abs() as f64;
                spread.2 += 1;
            }
            medians.insert(c, m);
        }
        Ok(Self { medians, spread })
    }

    /// The lookup's motions for `codes` `(T, Q)`: the medians where the codes were seen, `mlp`'s
    /// motion elsewhere (and `mlp`'s carried flag throughout).
    fn read(&self, codes: &Tensor, mlp: &[TransitionMotion]) -> anyhow::Result<Vec<TransitionMotion>> {
        Ok(codes
            .to_vec2::<u32>()?
            .iter()
            .zip(mlp)
            .map(|(c, m)| match self.medians.get(c) {
                Some(&(dx, dy)) => TransitionMotion { dx, dy, carried: m.carried },
                None => *m,
            })
            .collect())
    }

    fn report(&self, rows: &[(Vec<TransitionMotion>, Vec<TransitionMotion>)], fps: usize) {
        use vw_dldm::clip::clip_translations;
        let n = self.spread.2.max(1) as f64;
        println!(
            "  codes alone: {} distinct codes over {} training transitions, spread within a code |dx| {:.2} / |dy| {:.2} px",
            self.medians.len(),
            self.spread.2,
            self.spread.0 / n,
            self.spread.1 / n
        );
        let (mut ex, mut ey, mut count, mut within, mut steps) = (0f64, 0f64, 0usize, 0usize, 0usize);
        let mut by_phase = vec![(0f64, 0f64, 0usize); fps];
        for (pred, truth) in rows {
            for (j, (p, t)) in pred.iter().zip(truth).enumerate() {
                let (x, y) = ((p.dx - t.dx).abs() as f64, (p.dy - t.dy).abs() as f64);
                ex += x;
                ey += y;
                count += 1;
                add_phase(&mut by_phase[j % fps], x, y);
            }
            for (p, t) in pred.chunks(fps).zip(truth.chunks(fps)) {
                within += within_half_cell(clip_translations(p).block, clip_translations(t).block) as usize;
                steps += 1;
            }
        }
        println!(
            "  the training median of each code on these episodes: |dx| {:.2} / |dy| {:.2} px per transition; block at step end within 3 px on both axes {:.0}%",
            ex / count.max(1) as f64,
            ey / count.max(1) as f64,
            100.0 * within as f64 / steps.max(1) as f64
        );
        println!("  the training median, |dx|/|dy| error by transition of the step: {}", phase_table(&by_phase));
    }
}

/// The copies placed by the teacher's motions, each pixel taken from the copy that best matches the
/// expert's true frame (the unmoved frame where none does): the ceiling of the copy representation.
struct OracleSelect<'a> {
    /// With `CLIP_DIAG` set: also count what this selector picks where the oracle moves a copy.
    renderer: Option<&'a ClipRenderer>,
    confusion: [[usize; 4]; 3],
    clip_transitions: usize,
    source: TeacherEpisodes<'a>,
}

impl VideoPredictor for OracleSelect<'_> {
    fn name(&self) -> String {
        "oracle selection".into()
    }
    fn description(&self) -> String {
        "copies placed by the teacher's motions, picked per pixel by the true frame".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> vw_eval::Result<Tensor> {
        use vw_dldm::clip::{clip_candidates, clip_translations};
        let (ep, motions) = self.source.next_episode()?;
        let video = ep.frames_tensor(&Device::Cpu).map_err(|e| vw_eval::Error::Invalid(e.to_string()))?; // (3, T, H, W)
        let diag = std::env::var("CLIP_DIAG").is_ok();
        let err = |e: vw_dldm::Error| vw_eval::Error::Invalid(e.to_string());
        let mut cur = first.unsqueeze(0)?;
        let mut out = Vec::new();
        for (c, chunk) in motions.chunks(self.clip_transitions).enumerate() {
            for k in 1..=chunk.len() {
                let cand = clip_candidates(&cur, &[clip_translations(&chunk[..k])]).map_err(err)?;
                let truth = video.narrow(1, c * self.clip_transitions + k, 1)?.squeeze(1)?.unsqueeze(0)?;
                let errs: Vec<Tensor> = (0..3)
                    .map(|l| (cand.narrow(1, 3 * l, 3)? - &truth)?.abs()?.sum_keepdim(1))
                    .collect::<candle_core::Result<_>>()?;
                let best = Tensor::cat(&errs, 1)?.argmin_keepdim(1)?;
                if let (true, Some(r)) = (diag, self.renderer) {
                    // Where the oracle takes a moved copy that differs from the unmoved frame: what
                    // does the learned selector pick there?
                    let (logits, _) = r.select(&cand).map_err(err)?;
                    let learned = logits.argmax_keepdim(1)?.flatten_all()?.to_vec1::<u32>()?;
                    let oracle = best.flatten_all()?.to_vec1::<u32>()?;
                    let differs = errs[0].flatten_all()?.to_vec1::<f32>()?;
                    for ((&o, &l), &d) in oracle.iter().zip(&learned).zip(&differs) {
                        if o > 0 && d > 0.15 {
                            self.confusion[o as usize][l as usize] += 1;
                        }
                    }
                }
                let no_fill = truth.zeros_like()?;
                let img = ClipRenderer::compose_choice(&cand, &best, &no_fill).map_err(err)?;
                out.push(img.unsqueeze(2)?);
                if k == chunk.len() {
                    cur = img;
                }
            }
        }
        let v = Tensor::cat(&out, 2)?.squeeze(0)?;
        Ok(v.narrow(1, 0, v.dim(1)?.min(frames))?)
    }
}

fn report(name: &str, r: &vw_eval::demo::Scored) {
    let curve: Vec<String> = r.result.success.rate.iter().map(|x| format!("{:.0}%", 100.0 * x)).collect();
    let q = r.result.quality.as_ref().map_or("-".into(), |q| format!("{:.2} dB / SSIM {:.3}", q.psnr, q.ssim));
    println!("{name:40} steps 1..: {:32} full task {:.0}%  {q}", curve.join(" "), 100.0 * r.result.success.full_task);
}

#[derive(Clone)]
struct Args {
    n: usize,
    split: Split,
    ldm: Option<PathBuf>,
    out: Option<PathBuf>,
    steps: u64,
    png: Option<PathBuf>,
    predicted_prob: Option<f64>,
    channels: Option<usize>,
    motions_only: bool,
    no_augment: bool,
    compositor: Option<Compositor>,
    /// Expert training videos (the demo's training seeds) added to the renderer's play videos.
    expert: usize,
    /// Score the training look on the evaluation seeds instead of the training seeds.
    unseen: bool,
    /// Steps of the motion MLP's phase (default: the config's).
    motion_steps: Option<u64>,
    /// Draw with the layers' gravity rule on or off (default: as trained).
    settle: Option<bool>,
    /// Train the step reader ([`vw_dldm::clip::ClipRendererConfig::step_reader`]).
    step_reader: bool,
    /// ... that also sees where the gripper is (`--step-reader gripper`,
    /// [`vw_dldm::clip::ClipRendererConfig::step_reader_sees_gripper`]).
    sees_gripper: bool,
    /// `eval`: the layer networks of this renderer run, with the motion readers of `--out`;
    /// `train`: the run whose layer networks start training.
    layers_from: Option<PathBuf>,
    /// `train`: [`ClipTrainConfig::grasp_jitter`].
    grasp_jitter: Option<i64>,
    /// `train`: the background grating's amplitude (`Augment::grating`, the layers' augmentation).
    grating: Option<f32>,
    /// `layers`: the folder to write.
    to: Option<PathBuf>,
    /// `eval`: the training look with this one factor of the held-out look
    /// (`vw_data::craftworld::LOOK_FACTORS`), on the evaluation seeds.
    factor: Option<String>,
    /// `train`: seed of the weights and the batches (default: the config's).
    seed: Option<u64>,
    /// `stage1`: the dLDM's displacement head weight (`TinyLdmConfig::displacement_weight`).
    displacement_weight: Option<f64>,
    /// `stage1`: `TinyLdmConfig::saturation_weight`.
    saturation_weight: Option<f64>,
    /// `stage1`: the training pairs' camera jitter (`Augment::zoom` and `Augment::rotate` both).
    camera: Option<f32>,
}

/// The clip renderer of `dir` with the layer networks of the renderer run `layers`: the layers see
/// only frames and the teacher's motions, so one trained for other codes draws these as well.
fn grafted_renderer(
    dir: &std::path::Path,
    layers: &std::path::Path,
) -> anyhow::Result<(ClipTrainConfig, ClipRenderer)> {
    let (_, cfg, tensors) = grafted_tensors(dir, layers)?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors.into_iter().collect(), candle_core::DType::F32, &Device::Cpu);
    Ok((cfg.clone(), ClipRenderer::new(&cfg.renderer, vb)?))
}

/// Named weights, sorted by name.
type Weights = Vec<(String, Tensor)>;

/// [`grafted_renderer`]'s checkpoint state (of `dir`), config and weights (without optimizer
/// state).
fn grafted_tensors(
    dir: &std::path::Path,
    layers: &std::path::Path,
) -> anyhow::Result<(vw_dldm::train::checkpoint::TrainState, ClipTrainConfig, Weights)> {
    use vw_dldm::train::checkpoint::{load_tensors, read_state, OPTIM_PREFIX};
    let state = read_state(dir)?.with_context(|| format!("{}: no checkpoint", dir.display()))?;
    let mut cfg: ClipTrainConfig = serde_json::from_value(state.config.clone())?;
    let (lstate, layer_weights) = layer_tensors(layers, &Device::Cpu)?;
    let lcfg: ClipTrainConfig = serde_json::from_value(lstate.config)?;
    anyhow::ensure!(lcfg.renderer.compositor == Compositor::Layers, "--layers-from: not a layered renderer");
    cfg.renderer.compositor = lcfg.renderer.compositor;
    cfg.renderer.channels = lcfg.renderer.channels;
    let own = load_tensors(dir, &state, &Device::Cpu)?
        .into_iter()
        .filter(|(k, _)| !is_layer_key(k) && !k.starts_with(OPTIM_PREFIX));
    // The snap networks come with the layers; a renderer that does not snap has no use for them.
    let layer_weights =
        layer_weights.into_iter().filter(|(k, _)| cfg.renderer.snap > 0 || !vw_dldm::clip::is_snap_key(k));
    let mut tensors: Weights = own.chain(layer_weights).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((state, cfg, tensors))
}

/// Writes [`grafted_renderer`] (the renderer run `dir` with the layer networks of `layers`) as a
/// renderer run folder `to`, e.g. a demo checkpoint folder's `clip-dldm/` with other layers.
fn graft(dir: &std::path::Path, layers: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use vw_dldm::train::checkpoint::{save_tensors_atomic, write_atomic, STATE_FILE};
    let (mut state, cfg, tensors) = grafted_tensors(dir, layers)?;
    state.config = serde_json::to_value(&cfg)?;
    std::fs::create_dir_all(to)?;
    save_tensors_atomic(&to.join(&state.tensors_file), &tensors)?;
    write_atomic(&to.join(STATE_FILE), &serde_json::to_vec_pretty(&state)?)?;
    println!("{} with the layers of {} -> {}", dir.display(), layers.display(), to.display());
    Ok(())
}

fn evaluate(a: &Args, renderer_dir: &std::path::Path, seen: Option<&ClipData>) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let ldm_dir = a.ldm.as_ref().context("--ldm RUN/dldm is required")?;
    let (_, ldm) = load_stage1(ldm_dir, &dev)?;
    let (_, ldm_again) = load_stage1(ldm_dir, &dev)?;
    let load = || match &a.layers_from {
        Some(l) => grafted_renderer(renderer_dir, l),
        None => Ok(load_clip_renderer(renderer_dir, &dev)?),
    };
    let (ccfg, mut renderer) = load()?;
    let (_, mut renderer2) = load()?;
    if let Some(on) = a.settle {
        renderer.set_settle(on);
        renderer2.set_settle(on);
    }
    let cfg = DemoConfig::cpu();
    let eps = if let Some(name) = &a.factor {
        // The training look with one factor of the held-out look, on the evaluation seeds.
        let factor = vw_data::craftworld::LOOK_FACTORS.iter().find(|f| f.0 == name.as_str()).with_context(|| {
            format!("--factor {name}: expected one of camera, table, wall, light, blocks+distractors")
        })?;
        (0..a.n)
            .map(|i| vw_data::craftworld::generate_episode_with_factor(&cfg.craft, cfg.test_seed(i), factor))
            .collect::<Result<Vec<_>, _>>()?
    } else if a.unseen && a.split == Split::Train {
        // The training look on the evaluation seeds: layouts no training video showed.
        (0..a.n)
            .map(|i| vw_data::craftworld::generate_episode(&cfg.craft, Split::Train, cfg.test_seed(i)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        episodes(&cfg, a.split, a.n, true)?
    };
    let fps = cfg.craft.frames_per_step;
    let clip = ClipDynamics { ldm, renderer };
    motion_check(&clip, &ccfg.teacher, &eps, fps, seen)?;
    if a.motions_only {
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut p = ExpertCodes {
        name: "clip renderer, dLDM codes".into(),
        dynamics: &clip,
        episodes: &eps,
        next: 0,
        anchor_every: None,
    };
    rows.push(("clip renderer, expert's dLDM codes", score_method(&mut p, &eps, fps, 8, &dev)?));
    if let Ok(mode) = std::env::var("CLIP_MIX") {
        let mut mm = MixedMotions { clip: &clip, episodes: &eps, next: 0, fps, mode };
        rows.push(("clip renderer, codes with some true motions", score_method(&mut mm, &eps, fps, 0, &dev)?));
    }
    let source = || TeacherEpisodes { teacher: ccfg.teacher, episodes: &eps, next: 0, truth: false };
    let mut t = TeacherMotions { renderer: &renderer2, source: source() };
    rows.push(("clip renderer, teacher motions", score_method(&mut t, &eps, fps, 8, &dev)?));
    let mut t = TeacherMotions { renderer: &renderer2, source: TeacherEpisodes { truth: true, ..source() } };
    rows.push(("clip renderer, true motions", score_method(&mut t, &eps, fps, 0, &dev)?));
    let mut o = OracleSelect {
        renderer: (ccfg.renderer.compositor == Compositor::Select).then_some(&renderer2),
        confusion: [[0; 4]; 3],
        clip_transitions: ccfg.renderer.clip_transitions,
        source: source(),
    };
    rows.push(("oracle selection, teacher motions", score_method(&mut o, &eps, fps, 0, &dev)?));
    if std::env::var("CLIP_DIAG").is_ok() {
        println!(
            "oracle class (gripper, block copy) x learned class (as is, gripper, block, fill): {:?}",
            &o.confusion[1..]
        );
    }
    let mut f = ExpertCodes {
        name: "per-frame renderer".into(),
        dynamics: &ldm_again,
        episodes: &eps,
        next: 0,
        anchor_every: None,
    };
    rows.push(("dLDM per-frame renderer, same codes", score_method(&mut f, &eps, fps, 0, &dev)?));
    match &a.factor {
        Some(f) => println!("{} training-look episodes with the held-out {f} (evaluation seeds):", a.n),
        None => println!("{} {} episodes{}:", a.n, a.split, if a.unseen { " (evaluation seeds)" } else { "" }),
    }
    for (name, r) in &rows {
        report(name, r);
    }
    if let Some(png) = &a.png {
        // Per episode: the expert's first three steps, then each clip-renderer row.
        let (fw, fh) = (eps[0].frames[0].width(), eps[0].frames[0].height());
        let cols = (3 * fps + 1) as u32;
        let shown = rows[0].1.videos.len().min(rows[1].1.videos.len());
        let mut sheet = image::RgbImage::new(cols * fw, 3 * shown as u32 * fh);
        for (e, ep) in eps.iter().enumerate().take(shown) {
            let strips = [&ep.frames, &rows[0].1.videos[e], &rows[1].1.videos[e]];
            for (r, v) in strips.into_iter().enumerate() {
                for (c, fr) in v.iter().take(cols as usize).enumerate() {
                    image::imageops::replace(&mut sheet, fr, (c as u32 * fw) as i64, ((3 * e + r) as u32 * fh) as i64);
                }
            }
        }
        sheet.save(png)?;
    }
    Ok(())
}

fn train(a: &Args) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let ldm_dir = a.ldm.as_ref().context("--ldm RUN/dldm is required")?;
    let out = a.out.as_ref().context("--out DIR is required")?;
    let (s1, ldm) = load_stage1(ldm_dir, &dev)?;
    let data = if a.expert == 0 {
        Transitions::render(&s1.data, Split::Train, &dev)?
    } else {
        // The dLDM's play videos and the expert's training videos (the policy's), unlabelled alike.
        let mut eps = s1.data.generate(Split::Train)?;
        eps.extend(episodes(&DemoConfig::cpu(), Split::Train, a.expert, true)?);
        if a.split == Split::Train && !a.unseen {
            println!(
                "note: the training look's training seeds are among the expert videos trained on; \
                 `--unseen on` scores new seeds"
            );
        }
        Transitions::from_episodes(&eps, &dev)?
    };
    let mut cfg =
        ClipTrainConfig { renderer: vw_dldm::clip::ClipRendererConfig::for_ldm(&s1.model), ..Default::default() };
    if let Some(m) = a.motion_steps {
        cfg.motion_steps = m;
    }
    cfg.train.total_steps = cfg.motion_steps + a.steps;
    if let Some(p) = a.predicted_prob {
        cfg.predicted_motion_prob = p;
    }
    if let Some(c) = a.channels {
        cfg.renderer.channels = c;
    }
    if let Some(c) = a.compositor {
        cfg.renderer.compositor = c;
    }
    cfg.renderer.step_reader = a.step_reader;
    cfg.renderer.step_reader_sees_gripper = a.sees_gripper;
    cfg.layers_init = a.layers_from.clone();
    if let Some(s) = a.seed {
        (cfg.init_seed, cfg.train.seed) = (s, s);
    }
    if let Some(g) = a.grating {
        cfg.augment.grating = g;
    }
    if let Some(j) = a.grasp_jitter {
        cfg.grasp_jitter = j;
    }
    if a.no_augment {
        cfg.augment = Default::default();
    }
    let t0 = std::time::Instant::now();
    train_clip_renderer(&cfg, &ldm, &data, out, true, &dev, true)?;
    println!("trained {} + {} steps in {:.0} s", cfg.motion_steps, a.steps, t0.elapsed().as_secs_f64());
    // `motions` also sets the MLP beside the best reading of each code alone.
    let seen =
        if a.motions_only { Some(ClipData::build(&ldm, &data, &data.backgrounds()?, &cfg.teacher)?) } else { None };
    // The trained renderer holds its own layers now.
    let a = Args { layers_from: None, ..a.clone() };
    evaluate(&a, out, seen.as_ref())
}

/// Stage 1 again with the recipe of the dLDM run `--ldm` (its saved config), changed only by
/// `--displacement-weight`, `--saturation-weight` and `--seed`, into `--out`.
fn retrain_stage1(a: &Args) -> anyhow::Result<()> {
    let ldm = a.ldm.as_ref().context("--ldm RUN/dldm (the recipe to repeat) is required")?;
    let out = a.out.as_ref().context("--out DIR is required")?;
    let (mut cfg, _) = load_stage1(ldm, &Device::Cpu)?;
    if let Some(w) = a.displacement_weight {
        cfg.model.displacement_weight = w;
    }
    if let Some(w) = a.saturation_weight {
        cfg.model.saturation_weight = w;
    }
    if let Some(c) = a.camera {
        (cfg.augment.zoom, cfg.augment.rotate) = (c, c);
    }
    if let Some(s) = a.seed {
        cfg.init_seed = s;
        cfg.train.seed = s;
    }
    let t0 = std::time::Instant::now();
    vw_dldm::train::stage1::train_stage1(&cfg, out, false, &Device::Cpu, true)?;
    println!("stage 1: {} steps in {:.0} s", cfg.train.total_steps, t0.elapsed().as_secs_f64());
    Ok(())
}

/// Writes the layer networks (`layers.*`) of the renderer run `run`, without the motion readers
/// and the optimizer's state, as a run folder `to` that `--layers-from` (and the demo's
/// `ClipStageConfig::layers_init`) can start from.
fn export_layers(run: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use vw_dldm::train::checkpoint::{save_tensors_atomic, write_atomic, STATE_FILE};
    let (state, mut keep) = layer_tensors(run, &Device::Cpu)?;
    keep.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(to)?;
    save_tensors_atomic(&to.join(&state.tensors_file), &keep)?;
    write_atomic(&to.join(STATE_FILE), &serde_json::to_vec_pretty(&state)?)?;
    println!("{} layer tensors of {} -> {}", keep.len(), run.display(), to.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args
        .next()
        .context("usage: clip_renderer teacher|train|eval|motions|stage1|layers|graft|grippers [options]")?;
    let mut a = Args {
        n: 16,
        split: Split::Train,
        ldm: None,
        out: None,
        steps: 600,
        png: None,
        predicted_prob: None,
        channels: None,
        motions_only: cmd == "motions",
        no_augment: false,
        compositor: None,
        expert: 0,
        unseen: false,
        motion_steps: None,
        settle: None,
        step_reader: false,
        sees_gripper: false,
        layers_from: None,
        grasp_jitter: None,
        grating: None,
        to: None,
        factor: None,
        seed: None,
        displacement_weight: None,
        saturation_weight: None,
        camera: None,
    };
    if cmd != "teacher" {
        a.split = Split::TestAppearance;
        a.n = 32;
    }
    while let Some(k) = args.next() {
        let v = args.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--episodes" => a.n = v.parse()?,
            "--split" => a.split = split_of(&v)?,
            "--ldm" => a.ldm = Some(v.into()),
            "--out" => a.out = Some(v.into()),
            "--steps" => a.steps = v.parse()?,
            "--png" => a.png = Some(v.into()),
            "--predicted-prob" => a.predicted_prob = Some(v.parse()?),
            "--channels" => a.channels = Some(v.parse()?),
            "--augment" => a.no_augment = v == "off",
            "--expert" => a.expert = v.parse()?,
            "--motion-steps" => a.motion_steps = Some(v.parse()?),
            "--settle" => a.settle = Some(v == "on"),
            "--unseen" => a.unseen = v == "on",
            "--step-reader" => {
                (a.step_reader, a.sees_gripper) = match v.as_str() {
                    "on" => (true, false),
                    "gripper" => (true, true),
                    "off" => (false, false),
                    other => anyhow::bail!("--step-reader {other}: expected on, gripper or off"),
                }
            }
            "--layers-from" => a.layers_from = Some(v.into()),
            "--grasp-jitter" => a.grasp_jitter = Some(v.parse()?),
            "--grating" => a.grating = Some(v.parse()?),
            "--to" => a.to = Some(v.into()),
            "--factor" => a.factor = Some(v),
            "--seed" => a.seed = Some(v.parse()?),
            "--displacement-weight" => a.displacement_weight = Some(v.parse()?),
            "--saturation-weight" => a.saturation_weight = Some(v.parse()?),
            "--camera" => a.camera = Some(v.parse()?),
            "--motions-only" => a.motions_only = v == "on",
            "--compositor" => {
                a.compositor = Some(match v.as_str() {
                    "layers" => Compositor::Layers,
                    "select" => Compositor::Select,
                    other => anyhow::bail!("--compositor {other}: expected layers or select"),
                })
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(a.n >= 1, "--episodes must be >= 1");
    match cmd.as_str() {
        "teacher" => teacher_check(a.n, a.split),
        "train" => train(&a),
        // Trains the motion MLP alone (selector untouched) and compares its motions with the
        // teacher's on the chosen episodes.
        "motions" => {
            a.steps = 0;
            train(&a)
        }
        "stage1" => retrain_stage1(&a),
        "layers" => export_layers(
            a.out.as_ref().context("--out RENDERER_DIR is required")?,
            a.to.as_ref().context("--to DIR (the folder to write) is required")?,
        ),
        "graft" => graft(
            a.out.as_ref().context("--out RENDERER_DIR is required")?,
            a.layers_from.as_ref().context("--layers-from RUN (the layer networks) is required")?,
            a.to.as_ref().context("--to DIR (the folder to write) is required")?,
        ),
        "grippers" => {
            gripper_check(a.out.as_ref().context("--out DIR (a renderer run that sees the gripper) is required")?, a.n)
        }
        "eval" => evaluate(&a, a.out.as_ref().context("--out DIR (the renderer's run folder) is required")?, None),
        other => anyhow::bail!("unknown command {other}"),
    }
}

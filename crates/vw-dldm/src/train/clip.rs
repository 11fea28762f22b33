//! Training of the clip renderer ([`crate::clip`]) on a frozen dLDM's codes: the motion MLP
//! regresses each transition's label-free motion ([`crate::clip::dominant_motion`]) from its
//! codes, and the compositor (the layer finders, or the selector) learns to draw frame `s + k`
//! of a video from frame `s` and the motions of the `k` transitions between them (`k` up to
//! `clip_transitions`), by L1 against the true frame and a cross-entropy against label-free
//! per-pixel targets.

use super::checkpoint::{load_tensors, read_state, TrainState};
use super::craft::{Augment, Transitions, FOREGROUND_THRESHOLD};
use super::{fit, seeded_var_builder, RunDir, TrainConfig, Trainer};
use crate::baseline::TinyLdm;
use crate::clip::{
    bce_with_logits_each, clip_candidates, clip_translations, compose_layers, grasp_point, is_layer_key, is_snap_key,
    layer_fill, mask_bottoms, motion_loss, motion_targets, pixel_l1, shift_images, ClipRenderer, ClipRendererConfig,
    ClipTranslations, Compositor, MotionTeacher, SnapPoint, TransitionMotion, SNAP_RANGE,
};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a clip-renderer run depends on; stored in its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTrainConfig {
    /// The renderer.
    pub renderer: ClipRendererConfig,
    /// How transitions' motions are read from the frames.
    pub teacher: MotionTeacher,
    /// Optimisation (`batch_size` clips per step for the selector). `total_steps` counts both
    /// phases: the first `motion_steps` fit the motion MLP alone, the rest the selector alone.
    pub train: TrainConfig,
    /// Steps of the first phase (the motion MLP; cheap, so many).
    pub motion_steps: u64,
    /// Transitions per step for the motion MLP.
    pub motion_batch: usize,
    /// Fraction of training clips whose copies are placed by the motion MLP's own (rounded)
    /// motions instead of the teacher's, so the selector sees the placement errors it will meet.
    pub predicted_motion_prob: f64,
    /// Appearance augmentation of each training clip (its first and its target frame alike; no
    /// geometric parts, which would move the copies off their translations): the renderer is
    /// trained on one look and must draw others.
    pub augment: Augment,
    /// Extra weight of moved pixels in [`selection_loss`].
    pub moved_weight: f64,
    /// Seed of the weights.
    pub init_seed: u64,
    /// [`Compositor::Layers`]: the grasp pose the block's layer network sees is moved by up to this
    /// many pixels on each axis (uniform), so it finds the block the fingers are about to hold
    /// when the codes' grasp pose is a little off (about 1.5 px on each axis, docs/results.md).
    #[serde(default)]
    pub grasp_jitter: i64,
    /// A renderer run whose layer networks (`layers.*`) start this run's (a fresh run only): the
    /// layers see only frames and motions, so they carry over between dLDMs.
    #[serde(default)]
    pub layers_init: Option<std::path::PathBuf>,
}

impl Default for ClipTrainConfig {
    fn default() -> Self {
        Self {
            renderer: ClipRendererConfig::default(),
            teacher: MotionTeacher::default(),
            train: TrainConfig {
                total_steps: 2600,
                warmup_steps: 30,
                // One schedule serves both phases: the selector's phase starts at full rate.
                decay: super::Decay::Constant,
                batch_size: 16,
                checkpoint_every: 200,
                log_every: 10,
                optim: super::AdamWConfig { lr: 2e-3, weight_decay: 0.0, ..Default::default() },
                ..Default::default()
            },
            motion_steps: 2000,
            motion_batch: 256,
            predicted_motion_prob: 0.25,
            augment: Augment {
                color_jitter: 0.2,
                static_noise: 0.05,
                grating: 0.3,
                background_only: true,
                ..Default::default()
            },
            moved_weight: 10.0,
            init_seed: 0,
            grasp_jitter: 0,
            layers_init: None,
        }
    }
}

impl ClipTrainConfig {
    fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// Per-transition training targets: the dLDM's codes and the teacher's motions.
pub struct ClipData {
    /// Code indices of every transition, `(N, Q)` u32.
    pub codes: Tensor,
    /// The teacher's motion of every transition.
    pub motions: Vec<TransitionMotion>,
}

impl ClipData {
    /// Encodes every transition of `data` with `ldm` and reads its motion with `teacher` against
    /// `backgrounds` (each episode's per-pixel median over time, [`Transitions::backgrounds`]).
    pub fn build(ldm: &TinyLdm, data: &Transitions, backgrounds: &Tensor, teacher: &MotionTeacher) -> Result<Self> {
        let t0 = std::time::Instant::now();
        let file = super::codes::encode_transitions(ldm, data)?;
        let q = file.codes_per_step;
        let codes = Tensor::from_vec(file.codes.concat(), (file.codes.len(), q), data.frames.device())?;
        let t1 = std::time::Instant::now();
        let motions = data.teacher_motions(backgrounds, teacher)?;
        tracing::info!(
            "clip renderer data: codes of {} transitions in {:.1} s, the teacher's motions in {:.1} s",
            data.len(),
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64()
        );
        Ok(Self { codes, motions })
    }
}

/// The motion MLP's loss on transitions `ids` ([`motion_loss`] against the teacher's motions in
/// units of `motion_scale` pixels).
pub fn motion_mlp_loss(r: &ClipRenderer, d: &ClipData, ids: &[usize]) -> Result<Tensor> {
    let dev = d.codes.device();
    let idx = d.codes.index_select(&Tensor::from_vec(ids.iter().map(|&i| i as u32).collect(), ids.len(), dev)?, 0)?;
    let pred = r.motion_outputs(&r.code_vectors(&idx)?)?;
    motion_loss(&pred, &motion_targets(&d.motions, ids, r.config().motion_scale, dev)?)
}

/// The layer networks' weights ([`crate::clip::is_layer_key`]) of the committed checkpoint of the
/// renderer run `run`, with its state; an error when it has none.
pub fn layer_tensors(run: &Path, device: &Device) -> Result<(TrainState, Vec<(String, Tensor)>)> {
    let state = read_state(run)?.ok_or_else(|| Error::Invalid(format!("{}: no checkpoint", run.display())))?;
    let layers: Vec<(String, Tensor)> =
        load_tensors(run, &state, device)?.into_iter().filter(|(k, _)| is_layer_key(k)).collect();
    if layers.is_empty() {
        return Err(Error::Invalid(format!("{}: no layer networks", run.display())));
    }
    Ok((state, layers))
}

/// Sets the layer networks of `varmap` to `layers`, those of the renderer run `from`
/// ([`layer_tensors`]), whose layers must have the same shapes. Its snap networks
/// ([`is_snap_key`]) are copied where this renderer has them and left out where it does not.
fn copy_layers(varmap: &VarMap, from: &Path, layers: Vec<(String, Tensor)>) -> Result<()> {
    let vars = varmap.data().lock().map_err(|_| Error::Invalid("layers_init: poisoned variable map".into()))?;
    for (k, t) in layers {
        let Some(var) = vars.get(&k) else {
            if is_snap_key(&k) {
                continue;
            }
            return Err(Error::Invalid(format!("layers_init {}: {k} is not in this renderer", from.display())));
        };
        var.set(&t).map_err(|e| Error::Invalid(format!("layers_init {}: {k}: {e}", from.display())))?;
    }
    Ok(())
}

/// The step reader's loss on the clips of `len` transitions starting at `starts`: the L1 of the
/// displacements read a clip at a time ([`ClipRenderer::clip_motion_outputs`], with the gripper's
/// position in each clip's first frame where the reader sees it) against the teacher's, in units
/// of `motion_scale` pixels.
pub fn step_reader_loss(
    r: &ClipRenderer,
    d: &ClipData,
    starts: &[usize],
    len: usize,
    gripper: Option<&Tensor>,
) -> Result<Tensor> {
    let dev = d.codes.device();
    let ids: Vec<usize> = starts.iter().flat_map(|&i| i..i + len).collect();
    let idx = d.codes.index_select(&Tensor::from_vec(ids.iter().map(|&i| i as u32).collect(), ids.len(), dev)?, 0)?;
    let q = idx.dim(1)?;
    let pred = r.clip_motion_outputs(&idx.reshape((starts.len(), len, q))?, gripper)?.reshape((ids.len(), 3))?;
    let target = motion_targets(&d.motions, &ids, r.config().motion_scale, dev)?;
    Ok((pred.narrow(1, 0, 2)? - target.narrow(1, 0, 2)?)?.abs()?.mean_all()?)
}

/// One example of the snap networks: a recipe step's first frame (its index in the training
/// frames), and where the teacher's motions grasp and release from the gripper's fingertips there.
pub struct SnapExample {
    /// Index of the step's first frame.
    pub frame: u32,
    /// The fingertips where the gripper closes (px).
    pub grasp: (f32, f32),
    /// The fingertips where it lets go (px).
    pub release: (f32, f32),
}

/// The snap examples of the clips of `len` transitions starting at the transitions `starts` of
/// `data`: the fingertips of their first frames ([`mask_bottoms`] of the renderer's gripper layer)
/// moved by the teacher's motions to the grasp ([`grasp_point`]) and on through the carried
/// stretch. Clips without a grasp, or whose gripper's layer is empty, are left out.
pub fn snap_examples(
    r: &ClipRenderer,
    data: &Transitions,
    d: &ClipData,
    starts: &[usize],
    len: usize,
) -> Result<Vec<SnapExample>> {
    let mut out = Vec::new();
    for chunk in starts.chunks(64) {
        let at: Vec<u32> = chunk.iter().map(|&i| data.starts[i]).collect();
        let firsts = data.frames.index_select(&Tensor::from_vec(at.clone(), at.len(), data.frames.device())?, 0)?;
        let tips = mask_bottoms(&r.gripper_layer(&firsts.to_dtype(DType::F32)?)?)?;
        for ((&i, frame), tip) in chunk.iter().zip(at).zip(tips) {
            let Some(g) = tip.and_then(|t| grasp_point(t, &d.motions[i..i + len])) else { continue };
            out.push(SnapExample { frame, grasp: g.grasp, release: g.release_from(g.grasp) });
        }
    }
    Ok(out)
}

/// The snap network `which`'s loss: each true point of `points` on `frames` `(B, 3, H, W)` is
/// moved off by up to [`SNAP_RANGE`] px on each axis (uniform), and the network must find the way
/// back from the crop centred there; L1 in units of `motion_scale` pixels.
pub fn snap_loss(
    r: &ClipRenderer,
    which: SnapPoint,
    frames: &Tensor,
    points: &[(f32, f32)],
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let mut centres = Vec::with_capacity(points.len());
    let mut want = Vec::with_capacity(2 * points.len());
    for &(x, y) in points {
        let c = (
            (x + rng.random_range(-SNAP_RANGE..=SNAP_RANGE)).round() as i64,
            (y + rng.random_range(-SNAP_RANGE..=SNAP_RANGE)).round() as i64,
        );
        centres.push(c);
        want.extend([x - c.0 as f32, y - c.1 as f32]);
    }
    let want = Tensor::from_vec(want, (points.len(), 2), frames.device())?;
    let pred = r.snap_offsets(which, frames, &centres)?;
    Ok(((pred - want)?.abs()?.mean_all()? / r.config().motion_scale)?)
}

/// The fill is the target where no copy comes within this channel-summed L1 ([-1, 1] units).
pub const FILL_L1: f64 = 0.6;
/// The unmoved frame is the target unless a moved copy is closer by more than this.
pub const STILL_MARGIN: f64 = 0.05;

/// The selector's cross-entropy against a label-free per-pixel target `class` `(B, 1, H, W)` u32
/// from [`selection_targets`]: the copy closest to the true frame's pixel, among the unmoved frame
/// and the gripper's and block's copies where they carry moved content, or the fill where none is
/// close. The moved content covers a few percent of a frame, so with the L1 alone the selector
/// settles on copying the first frame; pixels whose target is not the unmoved copy weigh
/// `1 + moved_weight`.
pub fn selection_loss(class: &Tensor, logits: &Tensor, moved_weight: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let nll = logp.gather(class, 1)?.neg()?;
    let moved = class.ne(0u32)?.to_dtype(DType::F32)?;
    let weight = ((moved * moved_weight)? + 1.0)?;
    Ok((nll.mul(&weight)?.sum_all()? / weight.sum_all()?)?)
}

/// The per-pixel classes of [`selection_loss`], `(B, 1, H, W)` u32 (0 unmoved, 1 gripper's copy,
/// 2 block's copy, 3 fill). `moved` `(B, 2, H, W)`: the first frame's movable pixels moved like
/// the gripper's and the block's copy; a copy that only matches by accident, such as wall where
/// the gripper left, is not a target there.
pub fn selection_targets(candidates: &Tensor, moved: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = target.dims4()?;
    let err = |k: usize| -> Result<Tensor> { Ok((candidates.narrow(1, 3 * k, 3)? - target)?.abs()?.sum_keepdim(1)?) };
    // A copy that moved nothing to a pixel cannot be its target (large error there).
    let gated = |k: usize, g: usize| -> Result<Tensor> {
        let off = moved.narrow(1, g, 1)?.affine(-1.0, 1.0)?; // 1 where nothing moved there
        Ok((err(k)? + (off * 1e3)?)?)
    };
    // The closest copy, the unmoved frame winning near-ties (a moved copy's edges are whole-pixel
    // shifts of a sub-pixel motion, so they rarely match exactly); the fill only where no copy is
    // close.
    let errs = [
        (err(0)? - STILL_MARGIN)?,
        gated(1, 0)?,
        (gated(2, 1)? - 1e-3)?,
        Tensor::full(FILL_L1 as f32, (b, 1, h, w), target.device())?,
    ];
    Ok(Tensor::cat(&errs, 1)?.argmin_keepdim(1)?)
}

/// Trains (or resumes) a clip renderer for `ldm` on the videos of `data` in `run_dir`.
pub fn train_clip_renderer(
    cfg: &ClipTrainConfig,
    ldm: &TinyLdm,
    data: &Transitions,
    run_dir: &Path,
    resume: bool,
    device: &Device,
    progress: bool,
) -> Result<ClipRenderer> {
    let lc = ldm.config();
    if cfg.renderer.codes_per_transition != lc.act_embedding_num || cfg.renderer.levels != lc.levels {
        return Err(Error::Invalid(format!(
            "clip renderer expects {} codes of levels {:?} per transition, the dLDM has {} of {:?}",
            cfg.renderer.codes_per_transition, cfg.renderer.levels, lc.act_embedding_num, lc.levels
        )));
    }
    // Each episode's median background: for the teacher's motions and each step's foreground.
    let backgrounds = data.backgrounds()?;
    let clip_data = ClipData::build(ldm, data, &backgrounds, &cfg.teacher)?;
    let varmap = VarMap::new();
    let model = ClipRenderer::new(&cfg.renderer, seeded_var_builder(&varmap, cfg.init_seed, DType::F32, device))?;
    let mut trainer = Trainer::from_varmap(&varmap, cfg.train.clone())?;
    let resumed = if resume { trainer.resume(run_dir)? } else { None };
    // The snap networks train in the motion phase unless they come with the layers (frozen then,
    // like the layers).
    // Read once: for the copy into a fresh run, and for whether they bring the snap networks.
    let init = match &cfg.layers_init {
        Some(from) if resumed.is_none() || cfg.renderer.snap > 0 => {
            Some(layer_tensors(from, device).map_err(|e| Error::Invalid(format!("layers_init: {e}")))?.1)
        }
        _ => None,
    };
    let snap_given = cfg.renderer.snap > 0 && init.iter().flatten().any(|(k, _)| is_snap_key(k));
    if let (None, Some(from), Some(layers)) = (&resumed, &cfg.layers_init, init) {
        copy_layers(&varmap, from, layers)?;
    }
    if (cfg.renderer.step_reader_sees_gripper || cfg.renderer.snap > 0)
        && resumed.is_none()
        && cfg.layers_init.is_none()
    {
        return Err(Error::Invalid(
            "clip renderer: a step reader that sees the gripper, and snap, read the gripper's position with the \
             layer networks, which train after them: give layers_init"
                .into(),
        ));
    }
    if let Some(saved) = &resumed {
        let same = serde_json::from_value::<ClipTrainConfig>(saved.clone())
            .is_ok_and(|s| s.renderer == cfg.renderer && s.teacher == cfg.teacher);
        if !same {
            return Err(Error::Checkpoint {
                path: run_dir.join(super::checkpoint::STATE_FILE),
                reason: "was written with a different renderer or teacher; use the same config or a new folder".into(),
            });
        }
    }
    let mut run = RunDir::open(run_dir, resumed.map(|_| trainer.step), cfg.train.total_steps, progress)?;
    if cfg.augment.shift != 0 || cfg.augment.zoom != 0.0 || cfg.augment.rotate != 0.0 {
        return Err(Error::Invalid(
            "clip renderer: augment must not shift, zoom or rotate (the copies' translations would be off)".into(),
        ));
    }
    let frames = &data.frames;
    let k_max = cfg.renderer.clip_transitions;
    // The step reader's clips: recipe steps of exactly one clip.
    let steps: Vec<usize> = data.step_clips.iter().filter(|&&(_, n)| n == k_max).map(|&(i, _)| i).collect();
    if cfg.renderer.step_reader && steps.is_empty() {
        return Err(Error::Invalid(format!(
            "clip renderer: the step reader needs expert episodes with recipe steps of {k_max} transitions"
        )));
    }
    // Where the gripper is in the first frame of each of those clips (the layers are fixed while
    // the step reader trains).
    let step_grippers = match cfg.renderer.step_reader_sees_gripper && !steps.is_empty() {
        true => {
            let at: Vec<u32> = steps.iter().map(|&i| data.starts[i]).collect();
            let firsts = frames.index_select(&Tensor::from_vec(at, steps.len(), frames.device())?, 0)?;
            Some(model.gripper_position(&firsts)?)
        }
        false => None,
    };
    // The snap networks' examples: the first frame of each of those clips, and where the teacher's
    // motions grasp and release from the fingertips there.
    let train_snap = cfg.renderer.snap > 0 && !snap_given;
    let snap_points = match train_snap {
        true => snap_examples(&model, data, &clip_data, &steps, k_max)?,
        false => Vec::new(),
    };
    if train_snap && snap_points.is_empty() {
        return Err(Error::Invalid("clip renderer: snap needs expert recipe steps that carry a block".into()));
    }
    fit(&mut trainer, &mut run, &cfg.to_json()?, None, |ctx| {
        // Two phases in one resumable run: the motion MLP first (the selector's training clips
        // use its motions, and its few weights fit in seconds), then the selector.
        if ctx.step < cfg.motion_steps {
            let ids: Vec<usize> =
                (0..cfg.motion_batch).map(|_| ctx.rng.random_range(0..clip_data.motions.len())).collect();
            let mut m_loss = motion_mlp_loss(&model, &clip_data, &ids)?;
            ctx.extra.insert("motion".into(), m_loss.to_scalar::<f32>()?.into());
            if cfg.renderer.step_reader {
                let picked: Vec<usize> =
                    (0..cfg.motion_batch / k_max.max(1)).map(|_| ctx.rng.random_range(0..steps.len())).collect();
                let starts: Vec<usize> = picked.iter().map(|&k| steps[k]).collect();
                let grippers = step_grippers
                    .as_ref()
                    .map(|g| {
                        g.index_select(
                            &Tensor::from_vec(picked.iter().map(|&k| k as u32).collect(), picked.len(), g.device())?,
                            0,
                        )
                    })
                    .transpose()?;
                let s_loss = step_reader_loss(&model, &clip_data, &starts, k_max, grippers.as_ref())?;
                ctx.extra.insert("step_reader".into(), s_loss.to_scalar::<f32>()?.into());
                m_loss = (m_loss + s_loss)?;
            }
            if !snap_points.is_empty() {
                let n = (cfg.motion_batch / k_max.max(1)).max(1);
                let picked: Vec<&SnapExample> =
                    (0..n).map(|_| &snap_points[ctx.rng.random_range(0..snap_points.len())]).collect();
                let at = Tensor::from_vec(picked.iter().map(|e| e.frame).collect(), n, frames.device())?;
                let firsts = frames.index_select(&at, 0)?.to_dtype(DType::F32)?;
                // The appearance augmentation without its grating, which needs foreground masks.
                let look = Augment { background_only: false, grating: 0.0, ..cfg.augment };
                let (firsts, _) = look.apply_frames(&firsts, ctx.rng, n, 0..n)?;
                for (which, name) in [(SnapPoint::Grasp, "snap_grasp"), (SnapPoint::Release, "snap_release")] {
                    let points: Vec<(f32, f32)> =
                        picked.iter().map(|e| if which == SnapPoint::Grasp { e.grasp } else { e.release }).collect();
                    let l = snap_loss(&model, which, &firsts, &points, ctx.rng)?;
                    ctx.extra.insert(name.into(), l.to_scalar::<f32>()?.into());
                    m_loss = (m_loss + l)?;
                }
            }
            return Ok(m_loss);
        }
        // Clips: a start transition, and k transitions after it inside its episode.
        let mut ids = Vec::new();
        let mut starts = Vec::new();
        let mut targets = Vec::new();
        let mut trans = Vec::new();
        let mut grasps = Vec::new();
        let layers = cfg.renderer.compositor == Compositor::Layers;
        for _ in 0..cfg.train.batch_size {
            let i = ctx.rng.random_range(0..clip_data.motions.len());
            let e = data.episode[i] as usize;
            let left = data.frames_per_episode[e] - 1 - data.index_in_episode[i] as usize;
            // The layers are found once per clip (of `len` transitions) and drawn at any frame k
            // of it; the selector sees only the clip up to its target frame.
            let len = ctx.rng.random_range(1..=k_max.min(left));
            let k = if layers { ctx.rng.random_range(1..=len) } else { len };
            let ms: Vec<TransitionMotion> = if ctx.rng.random_bool(cfg.predicted_motion_prob) {
                let idx = clip_data.codes.narrow(0, i, len)?;
                model.motions(&idx)?
            } else {
                clip_data.motions[i..i + len].to_vec()
            };
            let g = clip_translations(&ms).grasp;
            let j = cfg.grasp_jitter.max(0);
            grasps.push((g.0 + ctx.rng.random_range(-j..=j), g.1 + ctx.rng.random_range(-j..=j)));
            trans.push(clip_translations(&ms[..k]));
            ids.push(i);
            starts.push(data.starts[i]);
            targets.push(data.starts[i] + k as u32);
        }
        *ctx.data_pos += cfg.train.batch_size as u64;
        let n = starts.len();
        let x_s = frames.index_select(&Tensor::from_vec(starts, n, frames.device())?, 0)?.to_dtype(DType::F32)?;
        let target = frames.index_select(&Tensor::from_vec(targets, n, frames.device())?, 0)?.to_dtype(DType::F32)?;
        let fg = data.foreground(&backgrounds, &ids, (&x_s, &target), FOREGROUND_THRESHOLD)?;
        // What of the first frame can move: its foreground, or what changes by the target frame
        // (a block that rests where it was for most of the video is background in the median,
        // but it changes when lifted). Moved like the gripper's and the block's copies.
        let changed = (&x_s - &target)?.abs()?.max_keepdim(1)?.gt(FOREGROUND_THRESHOLD)?.to_dtype(DType::F32)?;
        let movable = fg.0.maximum(&changed)?;
        let moved = Tensor::cat(
            &[
                shift_images(&movable, &trans.iter().map(|t| t.gripper).collect::<Vec<_>>())?,
                shift_images(&movable, &trans.iter().map(|t| t.block).collect::<Vec<_>>())?,
            ],
            1,
        )?;
        // The same for the texture augmentation: what moves keeps its own look in both frames, so
        // its copies still match where it lands.
        let target_movable = fg.1.maximum(&changed)?;
        let (x_s, target, _) = cfg.augment.apply(&x_s, &target, Some((&movable, &target_movable)), ctx.rng, n, 0..n)?;
        let cand = clip_candidates(&x_s, &trans)?;
        let class = selection_targets(&cand, &moved, &target)?;
        if layers {
            let parts = LayerBatch { first: &x_s, target: &target, grasps: &grasps, trans: &trans, class: &class };
            return layer_step(&model, &parts, &changed, cfg.moved_weight, &mut ctx.extra);
        }
        let (logits, fill) = model.select(&cand)?;
        let render = ClipRenderer::compose_soft(&cand, &logits, &fill)?;
        let r_loss = pixel_l1(&render, &target)?;
        let ce = selection_loss(&class, &logits, cfg.moved_weight)?;
        // How often each copy is the target, and how often the selector already picks it there.
        let picked = logits.argmax_keepdim(1)?;
        for (k, name) in [(1u32, "gripper"), (2, "block"), (3, "fill")] {
            let is = class.eq(k)?.to_dtype(DType::F32)?;
            let n = is.sum_all()?.to_scalar::<f32>()?;
            let hit = is.mul(&picked.eq(k)?.to_dtype(DType::F32)?)?.sum_all()?.to_scalar::<f32>()?;
            ctx.extra.insert(format!("{name}_px"), n.into());
            ctx.extra.insert(format!("{name}_recall"), (hit / n.max(1.0)).into());
        }
        ctx.extra.insert("render_l1".into(), r_loss.to_scalar::<f32>()?.into());
        ctx.extra.insert("select_ce".into(), ce.to_scalar::<f32>()?.into());
        Ok((r_loss + ce)?)
    })?;
    Ok(model)
}

/// Extra weight of a layer's target pixels in its cross-entropy (the layered compositor's
/// training). At the selector's `moved_weight` (10) the block's layer covered up to 6% of the
/// frame, where a block is 0.9%, and a step's render moved blocks placed before it.
pub const LAYER_POSITIVE_WEIGHT: f64 = 2.0;

/// One batch of [`Compositor::Layers`] training clips.
struct LayerBatch<'a> {
    /// First frames `(B, 3, H, W)`.
    first: &'a Tensor,
    /// The true frames `k` transitions later.
    target: &'a Tensor,
    /// Each clip's grasp pose.
    grasps: &'a [(i64, i64)],
    /// The translations after `k` transitions.
    trans: &'a [ClipTranslations],
    /// The per-pixel copy that explains each target pixel ([`selection_targets`]).
    class: &'a Tensor,
}

/// One training step of [`Compositor::Layers`]: the soft layers of the first frames composed at
/// their translations, by L1 against the true frames, pixels that change (`changed`) weighing
/// `1 + moved_weight` (the moved content is a few percent of a frame: unweighted, the first frame
/// repeated is a good render); plus a cross-entropy of each layer against a label-free target.
/// The target pixels of a layer are the first-frame pixels its copy explains in the true frame
/// ([`selection_targets`] of class 1 or 2, moved back by the layer's translation), counted only in
/// clips where that layer moved. The L1 alone finds the gripper but leaves the carried block
/// behind: a block layer that also moved the blocks around it costs more than none.
fn layer_step(
    model: &ClipRenderer,
    b: &LayerBatch,
    changed: &Tensor,
    moved_weight: f64,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Tensor> {
    let (logits, fill) = model.layer_masks(b.first, b.grasps)?;
    let fill = layer_fill(b.first, &candle_nn::ops::softmax(&fill, 1)?)?;
    let masks = candle_nn::ops::sigmoid(&logits)?;
    let render = compose_layers(b.first, &masks, &fill, b.trans)?;
    let weight = ((changed * moved_weight)? + 1.0)?;
    let err = (&render - b.target)?.abs()?.sum_keepdim(1)?;
    let l1 = (err.mul(&weight)?.sum_all()? / weight.sum_all()?)?;
    let dev = b.first.device();
    let mut ce = Tensor::zeros((), DType::F32, dev)?;
    for (layer, class, shift) in [
        (0, 1u32, b.trans.iter().map(|t| t.gripper).collect::<Vec<_>>()),
        (1, 2u32, b.trans.iter().map(|t| t.block).collect()),
    ] {
        let back: Vec<(i64, i64)> = shift.iter().map(|&(x, y)| (-x, -y)).collect();
        let want = shift_images(&b.class.eq(class)?.to_dtype(DType::F32)?, &back)?;
        let moved: Vec<f32> = shift.iter().map(|&t| (t != (0, 0)) as u8 as f32).collect();
        let n = moved.len();
        let gate = Tensor::from_vec(moved, (n, 1, 1, 1), dev)?.broadcast_as(want.shape())?;
        let w = ((&want * LAYER_POSITIVE_WEIGHT)? + 1.0)?.mul(&gate)?;
        let lg = logits.narrow(1, layer, 1)?;
        let per_px = bce_with_logits_each(&lg, &want)?;
        let total = w.sum_all()?.to_scalar::<f32>()?;
        if total > 0.0 {
            ce = (ce + (per_px.mul(&w)?.sum_all()? / total as f64)?)?;
        }
        extra.insert(
            format!("{}_target_px", ["gripper", "block"][layer]),
            want.mul(&gate)?.sum_all()?.to_scalar::<f32>()?.into(),
        );
    }
    extra.insert("render_l1".into(), pixel_l1(&render, b.target)?.to_scalar::<f32>()?.into());
    extra.insert("layer_ce".into(), ce.to_scalar::<f32>()?.into());
    let cover = masks.mean((0, 2, 3))?.to_vec1::<f32>()?;
    extra.insert("gripper_mask".into(), cover[0].into());
    extra.insert("block_mask".into(), cover[1].into());
    Ok((l1 + ce)?)
}

/// Loads a clip renderer run folder.
pub fn load_clip_renderer(run_dir: &Path, device: &Device) -> Result<(ClipTrainConfig, ClipRenderer)> {
    let (state, vb) = super::checkpoint::committed_checkpoint(run_dir, device)?;
    let cfg: ClipTrainConfig = serde_json::from_value(state.config.clone()).map_err(|e| Error::Checkpoint {
        path: run_dir.join(super::checkpoint::STATE_FILE),
        reason: format!("not a clip renderer config: {e}"),
    })?;
    let model = ClipRenderer::new(&cfg.renderer, vb)?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{ClipDynamics, CLASSES};
    use crate::train::stage1::{load_stage1, Stage1Config};
    use crate::train::tests::weights;
    use crate::LatentDynamics;

    #[test]
    fn the_step_reader_reads_one_transition_from_another_of_its_clip() -> Result<()> {
        use candle_nn::Optimizer;
        // Clips of 4 transitions: the first's codes say how far it goes down (10 or 20 px), the
        // second goes back up as far under codes that never change, the last two stand still.
        // Alone, the second's codes cannot say how far; read with the first's, they can.
        let cfg = crate::clip::ClipRendererConfig { step_reader: true, ..crate::clip::ClipRendererConfig::tiny() };
        let ct = cfg.clip_transitions;
        let (mut codes, mut motions) = (Vec::new(), Vec::new());
        for c in 0..64usize {
            let down = if c % 2 == 0 { 10.0 } else { 20.0 };
            for (j, (code, dy)) in [(3 + c % 2, down), (7, -down), (0, 0.0), (0, 0.0)].into_iter().enumerate() {
                codes.extend([code as u32 * 37, 5]);
                motions.push(TransitionMotion { dx: 0.0, dy, carried: j == 1 });
            }
        }
        let dev = Device::Cpu;
        let data = ClipData { codes: Tensor::from_vec(codes, (motions.len(), 2), &dev)?, motions };
        let varmap = VarMap::new();
        let r = ClipRenderer::new(&cfg, seeded_var_builder(&varmap, 3, DType::F32, &dev))?;
        let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-2)?;
        let all: Vec<usize> = (0..data.motions.len()).collect();
        let starts: Vec<usize> = (0..64).map(|c| c * ct).collect();
        for _ in 0..400 {
            let loss = (motion_mlp_loss(&r, &data, &all)? + step_reader_loss(&r, &data, &starts, ct, None)?)?;
            opt.backward_step(&loss)?;
        }
        // The second transition of each clip: alone, read to within about 5 px; a clip at a time,
        // to well within 1 px.
        let idx = data.codes.reshape((64, ct, 2))?;
        let whole = r.clip_motions(&idx, None)?;
        let alone = r.motions(&data.codes)?;
        let err = |dy: f32, c: usize| (dy - data.motions[c * ct + 1].dy).abs();
        let alone_err = (0..64).map(|c| err(alone[c * ct + 1].dy, c)).sum::<f32>() / 64.0;
        let whole_err = (0..64).map(|c| err(whole[c][1].dy, c)).sum::<f32>() / 64.0;
        assert!(alone_err > 3.0, "alone: {alone_err}");
        assert!(whole_err < 1.0, "a clip at a time: {whole_err} (alone {alone_err})");
        // A sequence that is not whole clips is read a transition at a time.
        let part = r.clip_motions(&data.codes.narrow(0, 0, ct - 1)?.unsqueeze(0)?, None)?;
        for (p, a) in part[0].iter().zip(&alone) {
            assert!((p.dx - a.dx).abs() < 1e-4 && (p.dy - a.dy).abs() < 1e-4 && p.carried == a.carried, "{p:?} {a:?}");
        }
        assert_eq!(part[0].len(), ct - 1);
        // Off, the renderer has no step reader's weights (the keys of earlier runs).
        let off = VarMap::new();
        ClipRenderer::new(&crate::clip::ClipRendererConfig::tiny(), seeded_var_builder(&off, 3, DType::F32, &dev))?;
        assert!(off.data().lock().unwrap().keys().all(|k| !k.starts_with("step_reader")));
        assert!(varmap.data().lock().unwrap().keys().any(|k| k.starts_with("step_reader")));
        Ok(())
    }

    #[test]
    fn crops_mask_bottoms_and_the_grasp_point() -> Result<()> {
        let dev = Device::Cpu;
        // A 16 x 16 frame, zero but for pixel (x 5, y 9): a crop of 8 centred there has it at (4, 4).
        let mut v = vec![0f32; 3 * 256];
        v[9 * 16 + 5] = 1.0;
        let x = Tensor::from_vec(v, (1, 3, 16, 16), &dev)?;
        let c = crate::clip::crop_at(&x, &[(5, 9)], 8)?;
        assert_eq!(c.dims(), [1, 3, 8, 8]);
        let c = c.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(c.iter().position(|&p| p == 1.0), Some(4 * 8 + 4));
        assert_eq!(c.iter().filter(|&&p| p != 0.0).count(), 1);
        // A gripper layer: an arm down column 7 to row 6, a palm on row 7 (columns 5-9), fingers at
        // columns 5 and 9 down to row 10, one stray pixel on row 12 (not a row of two).
        let mut l = vec![-1f32; 256];
        for y in 0..7 {
            l[y * 16 + 7] = 1.0;
        }
        for xx in 5..10 {
            l[7 * 16 + xx] = 1.0;
        }
        for y in 8..11 {
            l[y * 16 + 5] = 1.0;
            l[y * 16 + 9] = 1.0;
        }
        l[12 * 16 + 3] = 1.0;
        let empty = vec![-1f32; 256];
        let tips = mask_bottoms(&Tensor::from_vec([l, empty].concat(), (2, 1, 16, 16), &dev)?)?;
        assert_eq!(tips, vec![Some((7.0, 10.0)), None]);
        // Reach, descend, lift and carry (carried), lower (carried), retreat.
        let m = |dx: f32, dy: f32, carried: bool| TransitionMotion { dx, dy, carried };
        let ms = [m(3.0, 0.5, false), m(0.0, 2.0, false), m(0.0, -4.0, true), m(6.5, 0.0, true), m(0.0, 1.0, false)];
        let g = grasp_point((7.0, 10.0), &ms).unwrap();
        assert_eq!((g.grasp, g.carry, g.stretch.clone()), ((10.0, 12.5), (6.5, -4.0), 2..4));
        assert_eq!(g.release_from((1.0, 1.0)), (7.5, -3.0));
        // No grasp inside the clip: nothing carried, or carried from its first transition.
        assert!(grasp_point((7.0, 10.0), &ms[..2]).is_none());
        assert!(grasp_point((7.0, 10.0), &ms[2..]).is_none());
        Ok(())
    }

    #[test]
    fn a_snap_network_learns_to_find_its_block_and_snapping_moves_the_grasp_and_release_there() -> Result<()> {
        use candle_nn::Optimizer;
        use rand::SeedableRng;
        // 32 x 32 frames on a grey wall, each with one 4-px block of a random colour at a random
        // place; the grasp point is the middle of its top edge.
        let cfg = ClipRendererConfig { snap: 1, ..ClipRendererConfig::tiny() };
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut scenes = |n: usize| -> Result<(Tensor, Vec<(f32, f32)>)> {
            let (mut v, mut points) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let (x, y) = (rng.random_range(6..22usize), rng.random_range(8..24usize));
                let rgb: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1f32..1.0));
                let mut f = vec![0.1f32; 3 * 1024];
                for (c, &value) in rgb.iter().enumerate() {
                    for yy in y..y + 4 {
                        for xx in x..x + 4 {
                            f[c * 1024 + yy * 32 + xx] = value;
                        }
                    }
                }
                v.extend(f);
                points.push((x as f32 + 1.5, y as f32));
            }
            Ok((Tensor::from_vec(v, (n, 3, 32, 32), &dev)?, points))
        };
        let varmap = VarMap::new();
        let r = ClipRenderer::new(&cfg, seeded_var_builder(&varmap, 3, DType::F32, &dev))?;
        let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 3e-3)?;
        let mut train_rng = rand::rngs::StdRng::seed_from_u64(6);
        let (test, test_points) = scenes(64)?;
        let error = |r: &ClipRenderer, rng: &mut rand::rngs::StdRng| -> Result<f32> {
            Ok(snap_loss(r, SnapPoint::Grasp, &test, &test_points, rng)?.to_scalar::<f32>()? * 8.0)
        };
        let before = error(&r, &mut rand::rngs::StdRng::seed_from_u64(7))?;
        for _ in 0..300 {
            let (x, points) = scenes(32)?;
            let loss = snap_loss(&r, SnapPoint::Grasp, &x, &points, &mut train_rng)?;
            opt.backward_step(&loss)?;
        }
        // Mean error per axis in px (the loss is the mean over both axes in units of motion_scale = 8 px).
        let after = error(&r, &mut rand::rngs::StdRng::seed_from_u64(7))?;
        assert!(before > 2.0, "untrained: {before} px");
        assert!(after < 1.0, "trained: {after} px (untrained {before})");
        // snap_from puts the grasp where the grasp network says from the rounded grasp point, by
        // the last transition before the carried stretch; and the release, from the corrected
        // grasp, where the release network says, by the stretch's last transition.
        let first = test.narrow(0, 0, 3)?;
        let tips = [Some((12.0, 9.0)), None, Some((20.5, 14.0))];
        let m = |dx: f32, dy: f32, carried: bool| TransitionMotion { dx, dy, carried };
        let ms =
            vec![m(1.0, 2.0, false), m(0.4, 1.0, false), m(0.0, -3.0, true), m(3.0, 0.0, true), m(0.0, 1.0, false)];
        let mut rows = vec![ms.clone(), ms.clone(), ms.clone()];
        r.snap_from(&first, &tips, &mut rows)?;
        assert!(r.snap_from(&first, &tips[..2], &mut rows.clone()).is_err());
        let placed = |which, b: usize, p: (f32, f32)| -> Result<(f32, f32)> {
            let c = (p.0.round() as i64, p.1.round() as i64);
            let o = r.snap_offsets(which, &first.narrow(0, b, 1)?, &[c])?.to_vec2::<f32>()?[0].clone();
            Ok((c.0 as f32 + o[0], c.1 as f32 + o[1]))
        };
        let close = |a: (f32, f32), b: (f32, f32)| (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4;
        let release =
            |g: (f32, f32), row: &[TransitionMotion]| (g.0 + row[2].dx + row[3].dx, g.1 + row[2].dy + row[3].dy);
        for (b, tip) in tips.iter().enumerate() {
            let Some(tip) = *tip else {
                assert_eq!(rows[b], ms, "no fingertips: left alone");
                continue;
            };
            let g = grasp_point(tip, &ms).unwrap().grasp;
            let g2 = grasp_point(tip, &rows[b]).unwrap().grasp;
            assert!(close(g2, placed(SnapPoint::Grasp, b, g)?), "grasp {g2:?}");
            let want = placed(SnapPoint::Release, b, release(g2, &ms))?;
            assert!(close(release(g2, &rows[b]), want), "release {:?} {want:?}", release(g2, &rows[b]));
            let same = |k: usize| rows[b][k] == ms[k];
            assert!(same(0) && !same(1) && same(2) && !same(3) && same(4), "descend and lower move: {:?}", rows[b]);
        }
        Ok(())
    }

    /// A tiny stage-1 run with the displacement head on, in `stage1/` of a fresh temporary folder.
    fn source() -> Result<(tempfile::TempDir, std::path::PathBuf, Stage1Config)> {
        crate::train::tests::tiny_stage1_source(|cfg| {
            cfg.model.displacement_weight = 0.5;
            cfg.train.total_steps = 2;
        })
    }

    fn clip_cfg(ldm: &crate::baseline::TinyLdmConfig, total: u64) -> ClipTrainConfig {
        clip_cfg_with(ldm, total, Compositor::default())
    }

    fn clip_cfg_with(ldm: &crate::baseline::TinyLdmConfig, total: u64, compositor: Compositor) -> ClipTrainConfig {
        let mut c = ClipTrainConfig {
            renderer: ClipRendererConfig {
                compositor,
                channels: 4,
                motion_hidden: 8,
                clip_transitions: 3,
                ..ClipRendererConfig::for_ldm(ldm)
            },
            ..Default::default()
        };
        c.motion_steps = 2;
        c.motion_batch = 8;
        c.train = TrainConfig { decay: crate::train::Decay::Constant, ..crate::train::tests::tiny_train_config(total) };
        c
    }

    #[test]
    fn the_clip_renderer_trains_both_phases_reloads_and_resumes_exactly() -> Result<()> {
        let (tmp, src, s1) = source()?;
        let dev = Device::Cpu;
        let (_, ldm) = load_stage1(&src, &dev)?;
        let data = Transitions::render(&s1.data, vw_data::craftworld::Split::Train, &dev)?;
        let straight = tmp.path().join("straight");
        let init = tmp.path().join("init");
        // Zero steps writes the initial weights: both phases must move their own part only.
        let model = train_clip_renderer(&clip_cfg(&s1.model, 5), &ldm, &data, &straight, false, &dev, false)?;
        train_clip_renderer(&clip_cfg(&s1.model, 0), &ldm, &data, &init, false, &dev, false)?;
        let (w0, w1) = (weights(&init)?, weights(&straight)?);
        for prefix in ["motion.", "layers."] {
            assert!(w0.keys().filter(|k| k.starts_with(prefix)).any(|k| w0[k] != w1[k]), "{prefix} did not train");
        }
        // The per-pixel selector trains too.
        let sel = tmp.path().join("select");
        train_clip_renderer(&clip_cfg_with(&s1.model, 5, Compositor::Select), &ldm, &data, &sel, false, &dev, false)?;
        assert!(weights(&sel)?.keys().any(|k| k.starts_with("select.")));
        let init_sel = tmp.path().join("init-select");
        train_clip_renderer(
            &clip_cfg_with(&s1.model, 0, Compositor::Select),
            &ldm,
            &data,
            &init_sel,
            false,
            &dev,
            false,
        )?;
        let (s0, s1w) = (weights(&init_sel)?, weights(&sel)?);
        assert!(s0.keys().filter(|k| k.starts_with("select.")).any(|k| s0[k] != s1w[k]), "select. did not train");
        // The run reloads into the same renders.
        let (cfg, loaded) = load_clip_renderer(&straight, &dev)?;
        assert_eq!(cfg, clip_cfg(&s1.model, 5));
        let clip = data.episode_clip(0)?;
        let (_, ldm2) = load_stage1(&src, &dev)?;
        let (_, ldm3) = load_stage1(&src, &dev)?;
        let a = ClipDynamics { ldm: ldm2, renderer: model };
        let b = ClipDynamics { ldm: ldm3, renderer: loaded };
        let codes = a.encode_codes(&clip)?;
        let context = clip.narrow(2, 0, 1)?;
        let (ra, rb) = (a.render(&context, &codes)?, b.render(&context, &codes)?);
        assert_eq!(ra.dims(), &[1, 3, codes.dim(1)?, 32, 32]);
        assert_eq!(ra.flatten_all()?.to_vec1::<f32>()?, rb.flatten_all()?.to_vec1::<f32>()?);
        // 3 steps, then --resume to 5: the same weights as 5 straight (constant rate).
        let resumed = tmp.path().join("resumed");
        train_clip_renderer(&clip_cfg(&s1.model, 3), &ldm, &data, &resumed, false, &dev, false)?;
        assert_ne!(weights(&resumed)?, w1, "3 and 5 steps must differ for the check to mean anything");
        train_clip_renderer(&clip_cfg(&s1.model, 5), &ldm, &data, &resumed, true, &dev, false)?;
        assert_eq!(weights(&resumed)?, w1, "the resumed run differs from the straight one");
        // A fresh run can start its layer networks from another run's: with no layer steps it
        // keeps them exactly, and its motion phase is the same as without them.
        let mut from = clip_cfg(&s1.model, 2);
        from.layers_init = Some(straight.clone());
        from.grasp_jitter = 2;
        let grafted = tmp.path().join("grafted");
        train_clip_renderer(&from, &ldm, &data, &grafted, false, &dev, false)?;
        let wg = weights(&grafted)?;
        assert!(w1.keys().filter(|k| k.starts_with("layers.")).all(|k| wg[k] == w1[k]), "the layers were not copied");
        assert!(w0.keys().filter(|k| k.starts_with("motion.")).all(|k| wg[k] == w1[k]));
        // With layer steps (and the grasp pose jittered) they train on from there.
        let mut on = from.clone();
        on.train.total_steps = 4;
        train_clip_renderer(&on, &ldm, &data, &tmp.path().join("grafted-on"), false, &dev, false)?;
        let wo = weights(&tmp.path().join("grafted-on"))?;
        assert!(w1.keys().filter(|k| k.starts_with("layers.")).any(|k| wo[k] != w1[k]));
        from.layers_init = Some(tmp.path().join("nowhere"));
        assert!(train_clip_renderer(&from, &ldm, &data, &tmp.path().join("g2"), false, &dev, false).is_err());
        // A renderer for other codes, or a geometric augmentation, is refused.
        let mut wrong = clip_cfg(&s1.model, 1);
        wrong.renderer.levels = vec![5, 5];
        assert!(train_clip_renderer(&wrong, &ldm, &data, &tmp.path().join("w"), false, &dev, false).is_err());
        let mut shifted = clip_cfg(&s1.model, 1);
        shifted.augment.shift = 2;
        assert!(train_clip_renderer(&shifted, &ldm, &data, &tmp.path().join("s"), false, &dev, false).is_err());
        // A step reader that sees the gripper reads it with the layers: they must be given.
        let mut sees = clip_cfg(&s1.model, 1);
        (sees.renderer.step_reader, sees.renderer.step_reader_sees_gripper) = (true, true);
        let e = train_clip_renderer(&sees, &ldm, &data, &tmp.path().join("sg"), false, &dev, false).err();
        assert!(e.is_some_and(|e| e.to_string().contains("layers_init")));
        Ok(())
    }

    #[test]
    fn a_step_reader_that_sees_the_gripper_reaches_to_a_height() -> Result<()> {
        use candle_nn::Optimizer;
        use rand::SeedableRng;
        // Clips of 4 transitions under the same codes: the first rises to the height 0 from
        // wherever the gripper starts (y in [-1, 1] is 16 px either side), the others stand still.
        // The codes cannot say how far; the gripper's position can.
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = 64usize;
        let ys: Vec<f32> = (0..n).map(|_| rng.random_range(-1f32..1.0)).collect();
        let (mut codes, mut motions) = (Vec::new(), Vec::new());
        for &y in &ys {
            for j in 0..4 {
                codes.extend([11u32, 5]);
                motions.push(TransitionMotion { dx: 0.0, dy: if j == 0 { -16.0 * y } else { 0.0 }, carried: false });
            }
        }
        let data = ClipData { codes: Tensor::from_vec(codes, (motions.len(), 2), &dev)?, motions };
        let grippers = Tensor::from_vec(ys.iter().flat_map(|&y| [0.0, y]).collect::<Vec<f32>>(), (n, 2), &dev)?;
        let starts: Vec<usize> = (0..n).map(|c| c * 4).collect();
        let all: Vec<usize> = (0..data.motions.len()).collect();
        let mut errs = Vec::new();
        for sees in [false, true] {
            let cfg = crate::clip::ClipRendererConfig {
                step_reader: true,
                step_reader_sees_gripper: sees,
                ..crate::clip::ClipRendererConfig::tiny()
            };
            let varmap = VarMap::new();
            let r = ClipRenderer::new(&cfg, seeded_var_builder(&varmap, 3, DType::F32, &dev))?;
            let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-2)?;
            let g = sees.then_some(&grippers);
            for _ in 0..800 {
                let loss = (motion_mlp_loss(&r, &data, &all)? + step_reader_loss(&r, &data, &starts, 4, g)?)?;
                opt.backward_step(&loss)?;
            }
            let read = r.clip_motions(&data.codes.reshape((n, 4, 2))?, g)?;
            errs.push((0..n).map(|c| (read[c][0].dy + 16.0 * ys[c]).abs()).sum::<f32>() / n as f32);
            if sees {
                // It cannot read a clip without the positions, nor with the wrong number of them.
                assert!(r.clip_motions(&data.codes.reshape((n, 4, 2))?, None).is_err());
                assert!(r.clip_motions(&data.codes.reshape((n, 4, 2))?, Some(&grippers.narrow(0, 0, 3)?)).is_err());
            }
        }
        assert!(errs[0] > 4.0 && errs[1] < 1.0, "mean |dy| error blind / seeing the gripper: {errs:?}");
        // It needs the step reader and the layers.
        let bad = crate::clip::ClipRendererConfig {
            step_reader_sees_gripper: true,
            ..crate::clip::ClipRendererConfig::tiny()
        };
        assert!(ClipRenderer::new(&bad, seeded_var_builder(&VarMap::new(), 3, DType::F32, &dev)).is_err());
        Ok(())
    }

    #[test]
    fn the_selection_target_is_the_closest_moved_copy_else_the_fill() -> Result<()> {
        let dev = Device::Cpu;
        // One image of 1 x 4 pixels; copies: as is, gripper, block (the other two unused).
        let px = |v: [f32; 4]| Tensor::from_vec(v.repeat(3), (1, 3, 1, 4), &dev);
        let cand = Tensor::cat(
            &[
                px([0.0, 0.0, 0.0, 0.6])?,
                px([0.0, 0.5, 0.5, 0.0])?,
                px([0.0, 0.0, -0.5, 0.3])?,
                px([0.0; 4])?,
                px([0.0; 4])?,
            ],
            1,
        )?;
        // Pixel 0: the unmoved frame matches; 1: the gripper's copy; 2: the block's (the
        // gripper's does not match); 3: only the gripper's copy matches, but no moved content
        // lands there (an accident, like wall where the gripper left) -> the fill.
        let target = px([0.0, 0.5, -0.5, 0.0])?;
        let want = [0usize, 1, 2, 3];
        // Logits that put all mass on the wanted class give ~0 loss, on another class a large one.
        let logits_for = |cls: [usize; 4]| -> Result<Tensor> {
            let mut v = vec![-20f32; CLASSES * 4];
            for (p, &c) in cls.iter().enumerate() {
                v[c * 4 + p] = 20.0;
            }
            Ok(Tensor::from_vec(v, (1, CLASSES, 1, 4), &dev)?)
        };
        // Moved content (gripper's copy, block's copy) everywhere but the gripper's at pixel 3.
        let moved = Tensor::from_vec(vec![1f32, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], (1, 2, 1, 4), &dev)?;
        let class = selection_targets(&cand, &moved, &target)?;
        assert_eq!(class.flatten_all()?.to_vec1::<u32>()?, want.map(|c| c as u32));
        let good = selection_loss(&class, &logits_for(want)?, 10.0)?.to_scalar::<f32>()?;
        assert!(good < 1e-6, "{good}");
        for wrong in [[1, 1, 2, 3], [0, 0, 2, 3], [0, 1, 1, 3], [0, 1, 2, 0]] {
            let bad = selection_loss(&class, &logits_for(wrong)?, 10.0)?.to_scalar::<f32>()?;
            assert!(bad > 1.0, "{wrong:?}: {bad}");
        }
        Ok(())
    }
}

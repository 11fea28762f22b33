//! The clip renderer: draws every frame of a clip from the clip's *first* frame and the codes of
//! the transitions up to it, one render deep, instead of chaining one render per frame.
//!
//! Why: `examples/warp_oracle.rs` (docs/results.md, "How many renders per recipe step can the
//! judge survive?") shows that even a flow taken from the expert's own frames loses the blocks when
//! a recipe step is drawn as a chain of eight renders, and keeps every block when each step is one
//! render from its first frame. Every renderer before this one chained renders.
//!
//! What it draws: the moved content of a CraftWorld clip is rigid layers. The codes of each
//! transition give that transition's motion (a displacement and whether something is carried,
//! [`ClipRenderer::motions`]); their sums over the clip so far say where the gripper and the
//! carried block are ([`clip_translations`]). Two compositors draw a frame from that
//! ([`Compositor`]):
//! - [`Compositor::Layers`] (the default): once per clip, two small convolutional networks find
//!   the gripper's layer and the carried block's layer of the first frame
//!   ([`ClipRenderer::layer_masks`]); each frame cuts both out, fills the holes from the first
//!   frame a few pixels to the side, and pastes the block's layer, then the gripper's, at their
//!   translations ([`compose_layers`]).
//! - [`Compositor::Select`]: five copies of the first frame ([`clip_candidates`]: as it is, moved
//!   with the gripper, moved with the carried block, at the grasp pose, and that pose moved with
//!   the block), and a per-pixel, per-frame choice of one copy or a painted fill colour
//!   ([`ClipRenderer::select`]).
//!
//! Either way every pixel of a render is a pixel of the clip's first frame (or, for the selector,
//! a fill colour), so a rollout chains one render per clip, not one per frame.
//!
//! The codes say how far things move to a pixel or two, and over a task those errors add up. With
//! [`ClipRendererConfig::snap`], two small networks place the clip's grasp and release from its
//! first frame near where the codes put them ([`ClipRenderer::snap_clip`]): the gripper closes
//! where the frame shows its block, and lets go where blocks came to rest in the expert's videos.
//!
//! Training needs no labels: the motion of each transition comes from the frames themselves
//! ([`dominant_motion`]: the displacement that explains most changed pixels, and whether vivid
//! (block-coloured) pixels move with it). The training loop is in [`crate::train::clip`].

use crate::baseline::TinyLdm;
use crate::{Error, LatentDynamics, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use vw_tensor_kernels::fsq;

/// The clip renderer's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipRendererConfig {
    /// Frame side in pixels.
    pub image_size: usize,
    /// Codes per transition (the dLDM's `act_embedding_num`).
    pub codes_per_transition: usize,
    /// The dLDM's FSQ levels (each code is decoded to its FSQ vector).
    pub levels: Vec<usize>,
    /// Hidden width of the motion MLP.
    pub motion_hidden: usize,
    /// Channels of the selector's convolutions.
    pub channels: usize,
    /// Transitions drawn from one first frame; longer code sequences are rendered clip after clip,
    /// each from the last frame of the one before (a recipe step: 8).
    pub clip_transitions: usize,
    /// Pixels per unit of the motion MLP's displacement output.
    pub motion_scale: f64,
    /// How a frame is put together from the clip's first frame. (Configs written before this
    /// field existed were all [`Compositor::Select`], so that is what a missing field reads as.)
    #[serde(default = "Compositor::written_before_layers")]
    pub compositor: Compositor,
    /// [`Compositor::Layers`] only: once the carried block is let go, move it up or down (by at
    /// most [`SETTLE_RANGE`] px) until it rests on what is under it ([`settle_blocks`]). Off by
    /// default: a hand-written gravity rule, not learned.
    pub settle: bool,
    /// Read the motions of a whole clip together ([`ClipRenderer::clip_motions`]): a second MLP
    /// sees the codes of all `clip_transitions` transitions of a clip and the motion MLP's reading
    /// of each, and corrects each displacement. Trained on clips that start a recipe step of the
    /// expert's videos, where one transition's codes can say what another's say imprecisely (a
    /// lift rises as far as its descend went down). Off in configs written before it existed.
    pub step_reader: bool,
    /// [`Compositor::Layers`] with the step reader only: the step reader also sees where the
    /// gripper is in the clip's first frame ([`ClipRenderer::gripper_position`], from the gripper's
    /// layer), as the paper's renderer sees the current frame. A reach can then go *to* a height
    /// instead of *by* a distance, so a height error of one step does not carry into the next.
    /// Its training needs the layer networks before the motion phase (`layers_init`). Off in
    /// configs written before it existed.
    pub step_reader_sees_gripper: bool,
    /// [`Compositor::Layers`] only: the learned placement prior, 0 = off (configs written before
    /// it existed). Each of `snap` passes ([`ClipRenderer::snap_clip`]) moves the grasp onto the
    /// block the frame shows near where the codes put it, and the release to a place near the
    /// codes' one where, in the expert's videos, blocks come to rest. The codes say where to go to
    /// a pixel or two, and those errors add up over a task; the frame says it exactly, as the
    /// paper's video model draws a plausible outcome of coarse codes from the frame it sees.
    pub snap: usize,
    /// [`Compositor::Layers`] only, at inference: a hole left by a moved layer is filled from a
    /// sideways copy ([`FILL_SHIFTS`]) that shows background there, never a block, whenever one
    /// does ([`background_fill_choice`]); the fill network's choice ranks them. In CraftWorld
    /// nothing stands behind a block or the gripper, so a hole shows table or wall, and a block's
    /// pixels copied into one stay on as debris in every later step. Off in configs written before
    /// it existed; no weights, so a trained renderer can be drawn either way.
    pub fill_background: bool,
}

/// How the clip renderer puts a frame together from the clip's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compositor {
    /// Per pixel and per frame, a choice among five copies of the first frame or a fill colour
    /// ([`ClipRenderer::select`]).
    Select,
    /// Two rigid layers of the first frame, found once per clip: what moves with the gripper and
    /// what moves with the carried block ([`ClipRenderer::layer_masks`]). Each frame is the first
    /// frame with both layers cut out and filled, the block's layer pasted at its translation, then
    /// the gripper's at its own ([`compose_layers`]). One mask per clip keeps every frame of the
    /// clip consistent, where the per-frame choice can lose a part of a layer in one frame only.
    #[default]
    Layers,
}

impl Compositor {
    fn written_before_layers() -> Self {
        Compositor::Select
    }
}

impl Default for ClipRendererConfig {
    fn default() -> Self {
        Self {
            image_size: 64,
            codes_per_transition: 2,
            levels: vec![8, 5, 5, 5],
            motion_hidden: 64,
            channels: 16,
            clip_transitions: 8,
            motion_scale: 8.0,
            compositor: Compositor::default(),
            settle: false,
            step_reader: false,
            step_reader_sees_gripper: false,
            snap: 0,
            fill_background: false,
        }
    }
}

impl ClipRendererConfig {
    /// A tiny config for tests.
    pub fn tiny() -> Self {
        Self { image_size: 32, motion_hidden: 16, channels: 8, clip_transitions: 4, ..Self::default() }
    }

    /// The clip renderer for a dLDM: its code shape, its frame size.
    pub fn for_ldm(ldm: &crate::baseline::TinyLdmConfig) -> Self {
        Self {
            image_size: ldm.image_size,
            codes_per_transition: ldm.act_embedding_num,
            levels: ldm.levels.clone(),
            ..Self::default()
        }
    }

    fn code_dim(&self) -> usize {
        self.codes_per_transition * self.levels.len()
    }
}

/// Copies of the first frame the selector chooses from, in channel order.
pub const CANDIDATES: usize = 5;
/// The selector's classes: the first frame as it is, moved with the gripper, moved with the block,
/// or the fill colour.
pub const CLASSES: usize = 4;

/// One transition's motion: a displacement in whole pixels and whether a block moves with it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TransitionMotion {
    /// Displacement right, in pixels.
    pub dx: f32,
    /// Displacement down, in pixels.
    pub dy: f32,
    /// Whether a block is carried along.
    pub carried: bool,
}

/// Where the five copies of a clip's first frame go, in pixels (right, down), after some
/// transitions of the clip ([`clip_translations`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClipTranslations {
    /// The gripper's displacement so far.
    pub gripper: (i64, i64),
    /// The carried block's displacement so far (the first carried stretch of the clip).
    pub block: (i64, i64),
    /// The gripper's displacement up to the grasp (to the first carried transition), or up to now
    /// when nothing has been carried yet.
    pub grasp: (i64, i64),
}

/// The translations after the transitions `motions` of a clip: sums of the displacements, rounded
/// to whole pixels once at the end so sub-pixel motions do not lose their fractions.
pub fn clip_translations(motions: &[TransitionMotion]) -> ClipTranslations {
    let sum = |ms: &[TransitionMotion]| ms.iter().fold((0f32, 0f32), |a, m| (a.0 + m.dx, a.1 + m.dy));
    let r = |v: (f32, f32)| (v.0.round() as i64, v.1.round() as i64);
    let gripper = sum(motions);
    match carried_stretch(motions) {
        Some(s) => ClipTranslations {
            gripper: r(gripper),
            block: r(sum(&motions[s.clone()])),
            grasp: r(sum(&motions[..s.start])),
        },
        None => ClipTranslations { gripper: r(gripper), block: (0, 0), grasp: r(gripper) },
    }
}

/// The transitions of the first carried stretch of `motions` (only it moves the block; a later
/// one would be another block), if any: from the first carried transition to the next one that is
/// not carried, or to the end.
fn carried_stretch(motions: &[TransitionMotion]) -> Option<std::ops::Range<usize>> {
    let start = motions.iter().position(|m| m.carried)?;
    let len = motions[start..].iter().position(|m| !m.carried).unwrap_or(motions.len() - start);
    Some(start..start + len)
}

/// How the label-free motion teacher reads a transition ([`dominant_motion`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MotionTeacher {
    /// Largest displacement searched, as a fraction of the frame side.
    pub radius: f32,
    /// A pixel changed (or is foreground) when some channel differs by more than this from the
    /// previous frame (the background), in [-1, 1] units.
    pub tolerance: f32,
    /// A moved pixel matches its source when every channel differs by at most this: looser than
    /// `tolerance`, as textured blocks moved by a fraction of a pixel do not repeat exactly.
    pub match_tolerance: f32,
    /// Fewer matched pixels than this fraction of the frame: no motion.
    pub min_moved: f32,
    /// At least this fraction of the frame of vivid pixels moving along: a block is carried.
    pub min_vivid: f32,
}

impl Default for MotionTeacher {
    fn default() -> Self {
        Self { radius: 0.6, tolerance: 0.1, match_tolerance: 0.3, min_moved: 0.001, min_vivid: 0.003 }
    }
}

/// What [`dominant_motion`] read from a transition.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MotionReading {
    /// The motion (none when too few pixels moved).
    pub motion: TransitionMotion,
    /// Pixels the displacement explains.
    pub moved: usize,
    /// Of those, vivid (block-coloured) ones.
    pub vivid: usize,
}

/// The dominant motion from `prev` to `next` (each `(3, H, W)` f32 in [-1, 1], row-major): the
/// whole-pixel displacement that carries the most changed pixels of `next` onto matching pixels of
/// `prev` that moved away or are foreground, and whether at least `min_vivid` of them are vivid (block-coloured,
/// as [`crate::baseline::colour_mask`]) in `prev`.
///
/// `background` (same layout) is the video's static background, e.g. its per-pixel median over
/// time: an uncovered pixel shows the background, which would match static background pixels at
/// many displacements; only sources that are foreground or changed count.
pub fn dominant_motion(
    prev: &[f32],
    next: &[f32],
    background: &[f32],
    (h, w): (usize, usize),
    t: &MotionTeacher,
) -> MotionReading {
    let hw = h * w;
    if prev.len() != 3 * hw || next.len() != 3 * hw || background.len() != 3 * hw {
        return MotionReading::default();
    }
    let at = |v: &[f32], c: usize, i: usize| v[c * hw + i];
    let differs = |a: &[f32], b: &[f32], i: usize| (0..3).any(|c| (at(a, c, i) - at(b, c, i)).abs() > t.tolerance);
    let vivid = |v: &[f32], i: usize| {
        let rgb = [0, 1, 2].map(|c| (at(v, c, i) + 1.0) * 0.5);
        let (mx, mn) = (rgb.iter().cloned().fold(f32::MIN, f32::max), rgb.iter().cloned().fold(f32::MAX, f32::min));
        (mx - mn) / (mx + 1e-6) > crate::baseline::COLOUR_SATURATION as f32 && mx > crate::baseline::COLOUR_VALUE as f32
    };
    // Changed pixels of `next` that show something other than the background: what arrived. (A
    // block put down where it stays is background in a median over time, so vivid pixels count
    // as arrived too.)
    let changed: Vec<usize> =
        (0..hw).filter(|&i| differs(prev, next, i) && (differs(next, background, i) || vivid(next, i))).collect();
    // A moved pixel comes from a pixel of `prev` of (nearly) its colour that moved away or is not
    // background. (A block that rests where it will stay is background in a median over time,
    // but it changes when lifted.)
    let can_move = |j: usize| differs(prev, next, j) || differs(prev, background, j);
    let same_colour = |j: usize, i: usize| (0..3).all(|c| (at(prev, c, j) - at(next, c, i)).abs() <= t.match_tolerance);
    let matches = |j: usize, i: usize| can_move(j) && same_colour(j, i);
    // The pixel of `prev` that pixel i of `next` comes from under displacement (dx, dy).
    let source = |i: usize, dx: i64, dy: i64| -> Option<usize> {
        let (y, x) = ((i / w) as i64 - dy, (i % w) as i64 - dx);
        (y >= 0 && x >= 0 && y < h as i64 && x < w as i64).then(|| y as usize * w + x as usize)
    };
    let r = (t.radius * w.max(h) as f32).round() as i64;
    // How many changed pixels each displacement carries onto a matching source: counted from the
    // pairs (source, changed pixel) within the radius, as only sources that moved away or are not
    // background can match (a few hundred of a frame, against (2r+1)^2 displacements to try).
    let side = (2 * r + 1) as usize;
    let mut counts = vec![0usize; side * side];
    let movable: Vec<usize> = (0..hw).filter(|&j| can_move(j)).collect();
    for &i in &changed {
        let (yi, xi) = ((i / w) as i64, (i % w) as i64);
        for &j in &movable {
            let (dy, dx) = (yi - (j / w) as i64, xi - (j % w) as i64);
            // `j` can move (it is in `movable`): what is left of `matches` is the colour.
            if dy.abs() <= r && dx.abs() <= r && same_colour(j, i) {
                counts[(dy + r) as usize * side + (dx + r) as usize] += 1;
            }
        }
    }
    let mut best = (0usize, 0i64, 0i64);
    for dy in -r..=r {
        for dx in -r..=r {
            if dx == 0 && dy == 0 {
                continue;
            }
            let n = counts[(dy + r) as usize * side + (dx + r) as usize];
            debug_assert_eq!(n, changed.iter().filter(|&&i| source(i, dx, dy).is_some_and(|j| matches(j, i))).count());
            let shorter = dx * dx + dy * dy < best.1 * best.1 + best.2 * best.2;
            if n > best.0 || (n == best.0 && n > 0 && shorter) {
                best = (n, dx, dy);
            }
        }
    }
    let (n, dx, dy) = best;
    if (n as f32) < t.min_moved * hw as f32 {
        return MotionReading { moved: n, ..Default::default() };
    }
    let vivid_n =
        changed.iter().filter(|&&i| source(i, dx, dy).is_some_and(|j| matches(j, i) && vivid(prev, j))).count();
    let carried = vivid_n as f32 >= t.min_vivid * hw as f32;
    MotionReading { motion: TransitionMotion { dx: dx as f32, dy: dy as f32, carried }, moved: n, vivid: vivid_n }
}

/// `x` `(B, C, H, W)` with image `b` moved by `offsets[b]` = (right, down) whole pixels; pixels
/// moved in from outside repeat the nearest edge.
pub fn shift_images(x: &Tensor, offsets: &[(i64, i64)]) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if offsets.len() != b {
        return Err(Error::Invalid(format!("{} offsets for {b} images", offsets.len())));
    }
    let mut idx = Vec::with_capacity(b * c * h * w);
    for &(dx, dy) in offsets {
        let plane: Vec<u32> = (0..h * w)
            .map(|i| {
                let y = ((i / w) as i64 - dy).clamp(0, h as i64 - 1) as usize;
                let x = ((i % w) as i64 - dx).clamp(0, w as i64 - 1) as usize;
                (y * w + x) as u32
            })
            .collect();
        for _ in 0..c {
            idx.extend_from_slice(&plane);
        }
    }
    let idx = Tensor::from_vec(idx, (b, c, h * w), x.device())?;
    Ok(x.reshape((b, c, h * w))?.contiguous()?.gather(&idx, 2)?.reshape((b, c, h, w))?)
}

/// The five copies of each first frame `x` `(B, 3, H, W)` the selector picks from, `(B, 15, H, W)`:
/// as it is, moved with the gripper, moved with the block, at the grasp pose, and the grasp pose
/// moved with the block (the last two show, near each block, whether it is the carried one).
pub fn clip_candidates(x: &Tensor, t: &[ClipTranslations]) -> Result<Tensor> {
    let add = |a: (i64, i64), b: (i64, i64)| (a.0 + b.0, a.1 + b.1);
    let parts = [
        x.clone(),
        shift_images(x, &t.iter().map(|t| t.gripper).collect::<Vec<_>>())?,
        shift_images(x, &t.iter().map(|t| t.block).collect::<Vec<_>>())?,
        shift_images(x, &t.iter().map(|t| t.grasp).collect::<Vec<_>>())?,
        shift_images(x, &t.iter().map(|t| add(t.grasp, t.block)).collect::<Vec<_>>())?,
    ];
    Ok(Tensor::cat(&parts, 1)?)
}

/// Four 3x3 convolutions (dilations 1, 2, 4, 1: a 17-px view) on an input and the coordinate
/// planes, and a 1x1 head.
struct ConvStack {
    convs: Vec<Conv2d>,
    head: Conv2d,
}

impl ConvStack {
    fn new(cin: usize, channels: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |cin: usize, dil: usize, name: &str| {
            let cc = Conv2dConfig { padding: dil, dilation: dil, ..Default::default() };
            candle_nn::conv2d(cin, channels, 3, cc, vb.pp(name))
        };
        let c = channels;
        let convs = vec![conv(cin + 2, 1, "0")?, conv(c, 2, "1")?, conv(c, 4, "2")?, conv(c, 1, "3")?];
        let head = candle_nn::conv2d(c, cout, 1, Default::default(), vb.pp("head"))?;
        Ok(Self { convs, head })
    }

    /// The head's raw output on `x` `(B, cin, H, W)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let coords = coordinate_planes(b, h, w, x.device())?;
        let mut x = Tensor::cat(&[x, &coords], 1)?;
        for c in &self.convs {
            x = c.forward(&x)?.gelu()?;
        }
        Ok(self.head.forward(&x)?)
    }
}

/// Side of the crops the snap networks see ([`ClipRenderer::snap_offsets`]) in frames of side
/// `image_size`: 24 px at 64 (four cells of CraftWorld), a multiple of 4.
pub fn snap_crop(image_size: usize) -> usize {
    (image_size * 3 / 8 / 4).max(2) * 4
}

/// How far (px, on each axis, uniform) the snap networks' training moves a point off the true one.
pub const SNAP_RANGE: f32 = 6.0;

/// Which point of a recipe step a snap network places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapPoint {
    /// The gripper's fingertips where it closes on its block.
    Grasp,
    /// The gripper's fingertips where it lets its block go.
    Release,
}

/// A snap network: three 3x3 convolutions (the last two of stride 2) on a crop centred on a point,
/// and two linear layers to the offset from the crop's centre to the true point, in units of
/// `motion_scale` pixels.
struct SnapNet {
    convs: [Conv2d; 3],
    fc: [Linear; 2],
}

impl SnapNet {
    fn new(channels: usize, crop: usize, vb: VarBuilder) -> Result<Self> {
        let (c, c2) = (channels, 2 * channels);
        let cc = |stride| Conv2dConfig { padding: 1, stride, ..Default::default() };
        let convs = [
            candle_nn::conv2d(3, c, 3, cc(1), vb.pp("0"))?,
            candle_nn::conv2d(c, c2, 3, cc(2), vb.pp("1"))?,
            candle_nn::conv2d(c2, c2, 3, cc(2), vb.pp("2"))?,
        ];
        let side = crop / 4;
        let fc = [candle_nn::linear(c2 * side * side, 64, vb.pp("fc0"))?, candle_nn::linear(64, 2, vb.pp("fc1"))?];
        Ok(Self { convs, fc })
    }

    fn forward(&self, crops: &Tensor) -> Result<Tensor> {
        let mut x = crops.clone();
        for c in &self.convs {
            x = c.forward(&x)?.gelu()?;
        }
        let x = x.flatten_from(1)?;
        Ok(self.fc[1].forward(&self.fc[0].forward(&x)?.gelu()?)?)
    }
}

/// Crops of side `side` of `x` `(B, C, H, W)`, crop `b` centred on the pixel `centres[b]` (its
/// centre is pixel `side / 2` of the crop); pixels outside the frame repeat the nearest edge.
pub fn crop_at(x: &Tensor, centres: &[(i64, i64)], side: usize) -> Result<Tensor> {
    let half = (side / 2) as i64;
    let shifts: Vec<(i64, i64)> = centres.iter().map(|&(cx, cy)| (half - cx, half - cy)).collect();
    Ok(shift_images(x, &shifts)?.narrow(2, 0, side)?.narrow(3, 0, side)?)
}

/// Where a clip whose gripper's fingertips start at `tip` (px) grasps and lets go under `motions`.
#[derive(Debug, Clone, PartialEq)]
pub struct GraspPoint {
    /// The fingertips after the transitions before the first carried stretch (px).
    pub grasp: (f32, f32),
    /// The carried stretch's displacement: the release is the grasp moved by it.
    pub carry: (f32, f32),
    /// The first carried stretch's transitions.
    pub stretch: std::ops::Range<usize>,
}

impl GraspPoint {
    /// The fingertips where the block is let go, from a grasp at `grasp`.
    pub fn release_from(&self, grasp: (f32, f32)) -> (f32, f32) {
        (grasp.0 + self.carry.0, grasp.1 + self.carry.1)
    }
}

/// The [`GraspPoint`] of a clip whose gripper's fingertips start at `tip` (px) under `motions`.
/// `None` when nothing is carried, or the clip starts carried (no grasp inside it).
pub fn grasp_point(tip: (f32, f32), motions: &[TransitionMotion]) -> Option<GraspPoint> {
    let stretch = carried_stretch(motions).filter(|s| s.start > 0)?;
    let sum = |from: (f32, f32), ms: &[TransitionMotion]| ms.iter().fold(from, |a, m| (a.0 + m.dx, a.1 + m.dy));
    let grasp = sum(tip, &motions[..stretch.start]);
    let carry = sum((0.0, 0.0), &motions[stretch.clone()]);
    Some(GraspPoint { grasp, carry, stretch })
}

/// The bottom of each mask whose logits are `logits` `(B, 1, H, W)`, px: the lowest row with at
/// least two pixels of the mask, and the mean column of the mask's pixels in that row and the two
/// above it: of the gripper's layer, the fingertips (the arm reaches up out of the frame, so the
/// layer's centre is not the hand). `None` for a mask without such a row.
pub fn mask_bottoms(logits: &Tensor) -> Result<Vec<Option<(f32, f32)>>> {
    let m = logits.ge(0f32)?.squeeze(1)?.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    Ok(m.iter()
        .map(|img| {
            let row = (0..img.len()).rev().find(|&y| img[y].iter().filter(|&&v| v > 0.5).count() >= 2)?;
            let (mut sx, mut n) = (0f32, 0f32);
            for line in &img[row.saturating_sub(2)..=row] {
                for (x, &v) in line.iter().enumerate() {
                    if v > 0.5 {
                        sx += x as f32;
                        n += 1.0;
                    }
                }
            }
            Some((sx / n, row as f32))
        })
        .collect())
}

/// The clip renderer: a motion MLP (codes of a transition -> its motion) and the convolutions of
/// its compositor (one selector, or a gripper-layer and a block-layer finder).
pub struct ClipRenderer {
    cfg: ClipRendererConfig,
    motion: [Linear; 3],
    /// [`ClipRendererConfig::step_reader`].
    step_reader: Option<[Linear; 2]>,
    nets: Vec<ConvStack>,
    /// [`ClipRendererConfig::snap`]: the grasp's and the release's networks.
    snap: Option<[SnapNet; 2]>,
}

impl ClipRenderer {
    /// Builds the renderer under `vb`: `motion.{0,1,2}`, then `select.{0..4}` and `select.head`
    /// ([`Compositor::Select`]) or `layers.gripper.*` and `layers.block.*` ([`Compositor::Layers`]).
    pub fn new(cfg: &ClipRendererConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.clip_transitions == 0 || cfg.image_size == 0 || cfg.levels.is_empty() {
            return Err(Error::Invalid(
                "clip renderer: clip_transitions, image_size and levels must be non-empty".into(),
            ));
        }
        let m = vb.pp("motion");
        let hdim = cfg.motion_hidden;
        let motion = [
            candle_nn::linear(cfg.code_dim(), hdim, m.pp("0"))?,
            candle_nn::linear(hdim, hdim, m.pp("1"))?,
            candle_nn::linear(hdim, 3, m.pp("2"))?,
        ];
        let c = cfg.channels;
        let nets = match cfg.compositor {
            // The selector sees the five copies.
            Compositor::Select => vec![ConvStack::new(3 * CANDIDATES, c, CLASSES + 3, vb.pp("select"))?],
            // The gripper's layer (and the fill) from the first frame; the block's from the first
            // frame, its grasp-pose copy and the gripper's layer at the grasp pose.
            Compositor::Layers => {
                let l = vb.pp(LAYER_SCOPE);
                vec![
                    ConvStack::new(3, c, 1 + FILL_SHIFTS.len(), l.pp("gripper"))?,
                    ConvStack::new(3 + 3 + 1, c, 1, l.pp("block"))?,
                ]
            }
        };
        if cfg.step_reader_sees_gripper && (!cfg.step_reader || cfg.compositor != Compositor::Layers) {
            return Err(Error::Invalid(
                "clip renderer: step_reader_sees_gripper needs the step reader and the layers compositor".into(),
            ));
        }
        let step_reader = match cfg.step_reader {
            true => {
                let (sr, s) = (vb.pp("step_reader"), cfg.clip_transitions);
                let hidden = 2 * hdim;
                let seen = s * (cfg.code_dim() + 2) + if cfg.step_reader_sees_gripper { 2 } else { 0 };
                Some([candle_nn::linear(seen, hidden, sr.pp("0"))?, candle_nn::linear(hidden, s * 2, sr.pp("1"))?])
            }
            false => None,
        };
        if cfg.snap > 0 && cfg.compositor != Compositor::Layers {
            return Err(Error::Invalid("clip renderer: snap needs the layers compositor".into()));
        }
        let snap = match cfg.snap > 0 {
            true => {
                // Under the layers' scope: they see only frames, never codes, so they carry over
                // between renderers of different dLDMs with the layer networks.
                let (sn, crop) = (vb.pp(LAYER_SCOPE).pp(SNAP_SCOPE), snap_crop(cfg.image_size));
                Some([SnapNet::new(c, crop, sn.pp("grasp"))?, SnapNet::new(c, crop, sn.pp("release"))?])
            }
            false => None,
        };
        Ok(Self { cfg: cfg.clone(), motion, step_reader, nets, snap })
    }

    /// The config.
    pub fn config(&self) -> &ClipRendererConfig {
        &self.cfg
    }

    /// Turns [`ClipRendererConfig::settle`] on or off (it has no weights, so a trained renderer can
    /// be drawn either way).
    pub fn set_settle(&mut self, on: bool) {
        self.cfg.settle = on;
    }

    /// Turns [`ClipRendererConfig::fill_background`] on or off.
    pub fn set_fill_background(&mut self, on: bool) {
        self.cfg.fill_background = on;
    }

    /// Sets the passes of [`ClipRendererConfig::snap`] (a renderer trained with snap can be drawn
    /// with any number, 0 included); an error for passes on a renderer built without snap.
    pub fn set_snap(&mut self, passes: usize) -> Result<()> {
        if passes > 0 && self.snap.is_none() {
            return Err(Error::Invalid("clip renderer: built without snap".into()));
        }
        self.cfg.snap = passes;
        Ok(())
    }

    /// The FSQ vectors of code indices `(N, Q)` flattened to `(N, Q * levels)`.
    pub fn code_vectors(&self, idx: &Tensor) -> Result<Tensor> {
        let n = idx.dim(0)?;
        let v = fsq::fsq_indices_to_codes(idx, &self.cfg.levels)
            .map_err(|e| Error::Invalid(format!("clip renderer: {e}")))?;
        Ok(v.to_dtype(DType::F32)?.reshape((n, self.cfg.code_dim()))?)
    }

    /// Raw motion outputs of code vectors `(N, Q * levels)`: `(N, 3)` = displacement right and down
    /// in units of `motion_scale` pixels, and the logit of "a block is carried".
    pub fn motion_outputs(&self, code_vecs: &Tensor) -> Result<Tensor> {
        let h = self.motion[0].forward(code_vecs)?.gelu()?;
        let h = self.motion[1].forward(&h)?.gelu()?;
        Ok(self.motion[2].forward(&h)?)
    }

    /// The motion of each transition whose codes are `idx` `(N, Q)`.
    pub fn motions(&self, idx: &Tensor) -> Result<Vec<TransitionMotion>> {
        let out = self.motion_outputs(&self.code_vectors(idx)?)?.to_vec2::<f32>()?;
        Ok(out.iter().map(|r| self.motion_of(r)).collect())
    }

    /// The motion MLP's outputs (as [`Self::motion_outputs`]) of sequences whose codes are `idx`
    /// `(B, S, Q)`: `(B, S, 3)`. Where [`ClipRendererConfig::step_reader`] is on and `S` is a
    /// multiple of `clip_transitions`, each clip of the sequence is read as a whole: the step
    /// reader sees the codes of the clip and the MLP's displacements (detached, so its loss leaves
    /// the MLP alone) and corrects each displacement. Elsewhere, each transition's own reading.
    ///
    /// `gripper`: with [`ClipRendererConfig::step_reader_sees_gripper`], where the gripper is in
    /// the first frame of each clip (`(B * S / clip_transitions, 2)`, clips in row order, from
    /// [`Self::gripper_position`]); ignored without it.
    pub fn clip_motion_outputs(&self, idx: &Tensor, gripper: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, q) = idx.dims3()?;
        let vecs = self.code_vectors(&idx.reshape((b * s, q))?)?;
        let out = self.motion_outputs(&vecs)?.reshape((b, s, 3))?;
        let ct = self.cfg.clip_transitions;
        let Some([hidden, head]) = self.step_reader.as_ref().filter(|_| self.whole_clips(s)) else {
            return Ok(out);
        };
        let clips = b * s / ct;
        let disp = out.narrow(2, 0, 2)?.reshape((clips, ct * 2))?;
        let mut parts = vec![vecs.reshape((clips, ct * self.cfg.code_dim()))?, disp.detach()];
        if self.cfg.step_reader_sees_gripper {
            let g = gripper.ok_or_else(|| {
                Error::Invalid("clip renderer: this step reader needs the gripper's position in each clip".into())
            })?;
            if g.dims() != [clips, 2] {
                return Err(Error::Invalid(format!(
                    "clip renderer: {clips} clips need gripper positions (clips, 2), found {:?}",
                    g.shape()
                )));
            }
            parts.push(g.to_dtype(DType::F32)?.detach());
        }
        let inp = Tensor::cat(&parts, 1)?;
        let fix = head.forward(&hidden.forward(&inp)?.gelu()?)?;
        Ok(Tensor::cat(&[(disp + fix)?.reshape((b, s, 2))?, out.narrow(2, 2, 1)?], 2)?)
    }

    /// The motions of sequences whose codes are `idx` `(B, S, Q)` ([`Self::clip_motion_outputs`]),
    /// one row of `S` per sequence.
    pub fn clip_motions(&self, idx: &Tensor, gripper: Option<&Tensor>) -> Result<Vec<Vec<TransitionMotion>>> {
        let out = self.clip_motion_outputs(idx, gripper)?.to_vec3::<f32>()?;
        Ok(out.iter().map(|row| row.iter().map(|r| self.motion_of(r)).collect()).collect())
    }

    /// Whether reading a sequence of `transitions` codes ([`Self::clip_motions`]) needs the
    /// gripper's position in each clip: only with [`ClipRendererConfig::step_reader_sees_gripper`],
    /// and only for whole clips (a sequence that is not is read a transition at a time).
    pub fn reads_gripper(&self, transitions: usize) -> bool {
        self.cfg.step_reader_sees_gripper && self.whole_clips(transitions)
    }

    /// Whether `transitions` codes are whole clips, which the step reader reads a clip at a time.
    fn whole_clips(&self, transitions: usize) -> bool {
        transitions > 0 && transitions.is_multiple_of(self.cfg.clip_transitions)
    }

    /// Where the gripper is in each frame of `frames` `(B, 3, H, W)`: the centre of its layer
    /// ([`Self::layer_masks`]' first mask), `(B, 2)` x and y in [-1, 1] ([`mask_centre`]).
    pub fn gripper_position(&self, frames: &Tensor) -> Result<Tensor> {
        mask_centre(&self.gripper_layer(frames)?)
    }

    /// The gripper's layer logits of each frame of `frames` `(B, 3, H, W)`: `(B, 1, H, W)`.
    pub fn gripper_layer(&self, frames: &Tensor) -> Result<Tensor> {
        self.expect(Compositor::Layers)?;
        Ok(self.nets[0].forward(&frames.to_dtype(DType::F32)?)?.narrow(1, 0, 1)?)
    }

    /// Renders the codes `idx` `(B, S, Q)` from `first` `(B, 3, H, W)`: the motions read from the
    /// codes ([`Self::clip_motions`]), drawn by [`Self::render_steps`]. With
    /// [`ClipRendererConfig::step_reader_sees_gripper`] the clips are read one at a time, each with
    /// the gripper's position in its own first frame, the last frame rendered before it.
    ///
    /// With [`ClipRendererConfig::snap`] each clip's grasp and release are then placed from its
    /// first frame ([`Self::snap_clip`]).
    pub fn render_codes(&self, first: &Tensor, idx: &Tensor) -> Result<Tensor> {
        let (_, s, _) = idx.dims3()?;
        if !self.reads_gripper(s) && self.cfg.snap == 0 {
            return self.render_steps(first, &self.clip_motions(idx, None)?);
        }
        self.chain_clips(first, s, |cur, j0, n| {
            let codes = idx.narrow(1, j0, n)?;
            let mut motions = match self.reads_gripper(s) {
                true => self.clip_motions(&codes, Some(&self.gripper_position(cur)?))?,
                false => self.clip_motions(&codes, None)?,
            };
            for _ in 0..self.cfg.snap {
                self.snap_clip(cur, &mut motions)?;
            }
            Ok(motions)
        })
    }

    /// The snap network `which`'s offsets `(B, 2)` (px) from the pixels `centres` of `frames`
    /// `(B, 3, H, W)` to where it places that point ([`SnapPoint`]). An error without
    /// [`ClipRendererConfig::snap`].
    pub fn snap_offsets(&self, which: SnapPoint, frames: &Tensor, centres: &[(i64, i64)]) -> Result<Tensor> {
        let nets = self.snap.as_ref().ok_or_else(|| Error::Invalid("clip renderer: built without snap".into()))?;
        let net = &nets[(which == SnapPoint::Release) as usize];
        let crops = crop_at(&frames.to_dtype(DType::F32)?, centres, snap_crop(self.cfg.image_size))?;
        Ok((net.forward(&crops)? * self.cfg.motion_scale)?)
    }

    /// The learned placement prior, one pass, on the motions of clips whose first frames are
    /// `first` `(B, 3, H, W)`: where the gripper's fingertips are ([`mask_bottoms`] of its layer)
    /// and where the motions grasp ([`grasp_point`]); the grasp network's offset from there goes
    /// to the last transition before the carried stretch, so the gripper closes where the frame
    /// shows its block (and the block's layer finds it). Then the release, the fingertips at the
    /// end of the carried stretch from the corrected grasp: the release network's offset from
    /// there goes to the stretch's last transition, so the block is let go where, in the expert's
    /// videos, blocks come to rest. Clips without a grasp, or whose gripper's layer is empty, are
    /// left as they are.
    pub fn snap_clip(&self, first: &Tensor, motions: &mut [Vec<TransitionMotion>]) -> Result<()> {
        self.snap_from(first, &mask_bottoms(&self.gripper_layer(first)?)?, motions)
    }

    /// [`Self::snap_clip`] with the fingertips `tips` of each first frame given.
    pub fn snap_from(
        &self,
        first: &Tensor,
        tips: &[Option<(f32, f32)>],
        motions: &mut [Vec<TransitionMotion>],
    ) -> Result<()> {
        if tips.len() != motions.len() || first.dim(0)? != motions.len() {
            return Err(Error::Invalid(format!(
                "snap: {} frames, {} fingertips, {} motion rows",
                first.dim(0)?,
                tips.len(),
                motions.len()
            )));
        }
        let rows: Vec<(usize, GraspPoint)> = tips
            .iter()
            .zip(motions.iter())
            .enumerate()
            .filter_map(|(b, (tip, m))| tip.and_then(|t| grasp_point(t, m)).map(|g| (b, g)))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let grasps =
            self.snap_points(SnapPoint::Grasp, first, &rows.iter().map(|r| (r.0, r.1.grasp)).collect::<Vec<_>>())?;
        // The carried stretch moves the release with the grasp.
        let releases: Vec<(usize, (f32, f32))> =
            rows.iter().zip(&grasps).map(|((b, g), &g2)| (*b, g.release_from(g2))).collect();
        let placed = self.snap_points(SnapPoint::Release, first, &releases)?;
        for (((b, g), g2), (r, r2)) in rows.iter().zip(grasps).zip(releases.iter().zip(placed)) {
            let before = &mut motions[*b][g.stretch.start - 1];
            before.dx += g2.0 - g.grasp.0;
            before.dy += g2.1 - g.grasp.1;
            let last = &mut motions[*b][g.stretch.end - 1];
            last.dx += r2.0 - r.1 .0;
            last.dy += r2.1 - r.1 .1;
        }
        Ok(())
    }

    /// Where the snap network `which` places the points `at[i] = (b, p)` of the frames `frames[b]`:
    /// the rounded point plus its offset.
    fn snap_points(&self, which: SnapPoint, frames: &Tensor, at: &[(usize, (f32, f32))]) -> Result<Vec<(f32, f32)>> {
        let idx = Tensor::from_vec(at.iter().map(|a| a.0 as u32).collect(), at.len(), frames.device())?;
        let frames = frames.contiguous()?.index_select(&idx, 0)?;
        let centres: Vec<(i64, i64)> = at.iter().map(|a| (a.1 .0.round() as i64, a.1 .1.round() as i64)).collect();
        let off = self.snap_offsets(which, &frames, &centres)?.to_vec2::<f32>()?;
        Ok(centres.iter().zip(off).map(|(c, o)| (c.0 as f32 + o[0], c.1 as f32 + o[1])).collect())
    }

    /// One row of motion outputs (displacement in `motion_scale` pixels, carried logit) as a motion.
    fn motion_of(&self, r: &[f32]) -> TransitionMotion {
        let s = self.cfg.motion_scale as f32;
        TransitionMotion { dx: r[0] * s, dy: r[1] * s, carried: r[2] > 0.0 }
    }

    /// The selector on candidates `(B, 15, H, W)` (from [`clip_candidates`]): class logits
    /// `(B, 4, H, W)` and the fill colour `(B, 3, H, W)` in [-1, 1].
    pub fn select(&self, candidates: &Tensor) -> Result<(Tensor, Tensor)> {
        self.expect(Compositor::Select)?;
        let out = self.nets[0].forward(candidates)?;
        Ok((out.narrow(1, 0, CLASSES)?, out.narrow(1, CLASSES, 3)?.tanh()?))
    }

    /// The two layers of each clip's first frame `first` `(B, 3, H, W)`, given the gripper's grasp
    /// pose of the clip (`grasp[b]`, [`ClipTranslations::grasp`] over the whole clip): logits
    /// `(B, 2, H, W)` of "moves with the gripper" and "moves with the carried block", and logits
    /// `(B, FILL_SHIFTS.len(), H, W)` of which sideways neighbour of the first frame
    /// ([`layer_fill`]) shows what they uncover. The gripper's layer comes first; moved to the
    /// grasp pose, it puts the fingers around the block the clip carries, which the block's
    /// network sees.
    pub fn layer_masks(&self, first: &Tensor, grasp: &[(i64, i64)]) -> Result<(Tensor, Tensor)> {
        self.expect(Compositor::Layers)?;
        let g = self.nets[0].forward(first)?;
        let gripper = g.narrow(1, 0, 1)?;
        let at_grasp = shift_images(&candle_nn::ops::sigmoid(&gripper)?.detach(), grasp)?;
        let x = Tensor::cat(&[first, &shift_images(first, grasp)?, &at_grasp], 1)?;
        let block = self.nets[1].forward(&x)?;
        Ok((Tensor::cat(&[&gripper, &block], 1)?, g.narrow(1, 1, FILL_SHIFTS.len())?))
    }

    fn expect(&self, c: Compositor) -> Result<()> {
        if self.cfg.compositor != c {
            return Err(Error::Invalid(format!("clip renderer: built as {:?}, not {c:?}", self.cfg.compositor)));
        }
        Ok(())
    }

    /// The soft render (training): the class probabilities mix the first three copies and the fill.
    pub fn compose_soft(candidates: &Tensor, logits: &Tensor, fill: &Tensor) -> Result<Tensor> {
        mix(candidates, &candle_nn::ops::softmax(logits, 1)?, fill)
    }

    /// The hard render (inference): each pixel is exactly the chosen copy's pixel or the fill.
    pub fn compose_hard(candidates: &Tensor, logits: &Tensor, fill: &Tensor) -> Result<Tensor> {
        Self::compose_choice(candidates, &logits.argmax_keepdim(1)?, fill)
    }

    /// Each pixel the copy (0-2) or the fill (3) that `choice` `(B, 1, H, W)` u32 names.
    pub fn compose_choice(candidates: &Tensor, choice: &Tensor, fill: &Tensor) -> Result<Tensor> {
        mix(candidates, &one_hot(choice, CLASSES)?.to_dtype(fill.dtype())?, fill)
    }

    /// Renders the frames after `first` `(B, 3, H, W)` under per-row transition motions
    /// (`motions[b][j]`, equal lengths `S`): `(B, 3, S, H, W)`, every frame drawn from `first`.
    pub fn render_clip(&self, first: &Tensor, motions: &[Vec<TransitionMotion>]) -> Result<Tensor> {
        let (b, c, h, w) = first.dims4()?;
        let s = motions.first().map_or(0, Vec::len);
        if motions.len() != b || motions.iter().any(|m| m.len() != s) || s == 0 {
            return Err(Error::Invalid(format!(
                "render_clip: {} motion rows for {b} frames, each non-empty and equal",
                motions.len()
            )));
        }
        // Row-major (b, k): every prefix of every row in one batch.
        let mut trans: Vec<ClipTranslations> =
            motions.iter().flat_map(|m| (1..=s).map(|k| clip_translations(&m[..k]))).collect();
        let per_frame = |x: &Tensor| -> Result<Tensor> {
            let (_, c, h, w) = x.dims4()?;
            Ok(x.unsqueeze(1)?.broadcast_as((b, s, c, h, w))?.reshape((b * s, c, h, w))?)
        };
        let firsts = per_frame(first)?;
        let out = match self.cfg.compositor {
            Compositor::Select => {
                let cand = clip_candidates(&firsts, &trans)?;
                let (logits, fill) = self.select(&cand)?;
                Self::compose_hard(&cand, &logits, &fill)?
            }
            Compositor::Layers => {
                // One pair of layers per clip, from the grasp pose of the whole clip.
                let grasp: Vec<(i64, i64)> = motions.iter().map(|m| clip_translations(m).grasp).collect();
                let (logits, fill) = self.layer_masks(first, &grasp)?;
                let masks = logits.ge(0f32)?.to_dtype(DType::F32)?;
                let copies = fill_copies(first)?;
                let choice = if self.cfg.fill_background {
                    background_fill_choice(&copies, &fill)?
                } else {
                    fill.argmax_keepdim(1)?
                };
                let fill = mix_copies(&copies, &one_hot(&choice, FILL_SHIFTS.len())?)?;
                if self.cfg.settle {
                    settle_blocks(first, &masks, &fill, motions, &mut trans)?;
                }
                compose_layers(&firsts, &per_frame(&masks)?, &per_frame(&fill)?, &trans)?
            }
        };
        Ok(out.reshape((b, s, c, h, w))?.transpose(1, 2)?.contiguous()?)
    }

    /// Renders any number of transitions after `first` `(B, 3, H, W)` (`motions[b][j]`, equal
    /// lengths): [`ClipRenderer::render_clip`] on each run of `clip_transitions`, each from the last
    /// frame of the one before. `(B, 3, S, H, W)`.
    pub fn render_steps(&self, first: &Tensor, motions: &[Vec<TransitionMotion>]) -> Result<Tensor> {
        let s = motions.first().map_or(0, Vec::len);
        self.chain_clips(first, s, |_, j0, n| {
            Ok(motions.iter().map(|r| r.get(j0..j0 + n).map(<[_]>::to_vec).unwrap_or_default()).collect())
        })
    }

    /// `s` transitions after `first`, [`Self::render_clip`] on each run of `clip_transitions` from
    /// the last frame of the one before, with the motions `clip(current first frame, start, len)`
    /// gives for that run. `(B, 3, s, H, W)`.
    fn chain_clips(
        &self,
        first: &Tensor,
        s: usize,
        mut clip: impl FnMut(&Tensor, usize, usize) -> Result<Vec<Vec<TransitionMotion>>>,
    ) -> Result<Tensor> {
        let k = self.cfg.clip_transitions;
        let mut cur = first.clone();
        let mut out = Vec::new();
        for j0 in (0..s).step_by(k) {
            let n = k.min(s - j0);
            let drawn = self.render_clip(&cur, &clip(&cur, j0, n)?)?;
            cur = drawn.narrow(2, n - 1, 1)?.squeeze(2)?;
            out.push(drawn);
        }
        Ok(Tensor::cat(&out, 2)?)
    }
}

/// The first three copies of `candidates` and `fill` weighted per pixel by `weights`
/// `(B, CLASSES, H, W)` (class `CLASSES - 1` is the fill).
fn mix(candidates: &Tensor, weights: &Tensor, fill: &Tensor) -> Result<Tensor> {
    let mut out = fill.broadcast_mul(&weights.narrow(1, CLASSES - 1, 1)?)?;
    for k in 0..CLASSES - 1 {
        out = (out + candidates.narrow(1, 3 * k, 3)?.broadcast_mul(&weights.narrow(1, k, 1)?)?)?;
    }
    Ok(out)
}

/// The scope of [`Compositor::Layers`]'s layer networks in a renderer's weights (keys
/// `layers.gripper.*`, `layers.block.*`): they see only frames and motions, never codes, so they
/// carry over between renderers of different dLDMs.
pub const LAYER_SCOPE: &str = "layers";

/// The scope of the snap networks ([`ClipRendererConfig::snap`]) inside [`LAYER_SCOPE`]: keys
/// `layers.snap.grasp.*`, `layers.snap.release.*`.
pub const SNAP_SCOPE: &str = "snap";

/// Whether the weight `key` belongs to the snap networks.
pub fn is_snap_key(key: &str) -> bool {
    key.starts_with(&format!("{LAYER_SCOPE}.{SNAP_SCOPE}."))
}

/// Whether the weight `key` belongs to the layer networks ([`LAYER_SCOPE`]; the snap networks
/// included).
pub fn is_layer_key(key: &str) -> bool {
    key.strip_prefix(LAYER_SCOPE).is_some_and(|rest| rest.starts_with('.'))
}

/// Where the fill of [`Compositor::Layers`] comes from: the first frame moved sideways by these
/// pixels (right). The layers are thin upright things (an arm) or small squares, so a pixel a
/// few columns to one side of a hole usually shows what is behind it.
pub const FILL_SHIFTS: [i64; 4] = [-8, -4, 4, 8];

/// The fill of [`Compositor::Layers`]: the copies of `first` `(B, 3, H, W)` moved by
/// [`FILL_SHIFTS`], mixed per pixel by `weights` `(B, FILL_SHIFTS.len(), H, W)` (a softmax in
/// training, one-hot at inference: then every fill pixel is a pixel of the first frame).
pub fn layer_fill(first: &Tensor, weights: &Tensor) -> Result<Tensor> {
    mix_copies(&fill_copies(first)?, weights)
}

/// The copies of `first` `(B, 3, H, W)` moved sideways by each of [`FILL_SHIFTS`].
pub fn fill_copies(first: &Tensor) -> Result<Vec<Tensor>> {
    let b = first.dim(0)?;
    FILL_SHIFTS.iter().map(|&dx| shift_images(first, &vec![(dx, 0); b])).collect()
}

/// The fill copies ([`fill_copies`]) mixed per pixel by `weights` `(B, FILL_SHIFTS.len(), H, W)`.
fn mix_copies(copies: &[Tensor], weights: &Tensor) -> Result<Tensor> {
    let mut out = copies[0].zeros_like()?;
    for (k, copy) in copies.iter().enumerate() {
        out = (out + copy.broadcast_mul(&weights.narrow(1, k, 1)?)?)?;
    }
    Ok(out)
}

/// Per pixel, the fill shift ([`FILL_SHIFTS`] index, `(B, 1, H, W)` u32) with the highest of
/// `logits` `(B, FILL_SHIFTS.len(), H, W)` among the sideways copies of the first frame
/// (`copies`, [`fill_copies`]) that are not vividly coloured there
/// ([`crate::baseline::colour_mask`]: no block); where every copy is, the highest of all.
pub fn background_fill_choice(copies: &[Tensor], logits: &Tensor) -> Result<Tensor> {
    let vivid: Vec<Tensor> = copies.iter().map(crate::baseline::colour_mask).collect::<Result<_>>()?;
    let vivid = Tensor::cat(&vivid, 1)?.to_dtype(logits.dtype())?;
    // A penalty larger than any spread of the logits keeps the ranking within each group.
    let spread = (logits.max_keepdim(1)? - logits.min_keepdim(1)?)?;
    let penalty = vivid.broadcast_mul(&(spread + 1.0)?)?;
    Ok((logits - penalty)?.argmax_keepdim(1)?)
}

/// `(B, n, H, W)` f32 one-hot planes of the class indices `idx` `(B, 1, H, W)` u32.
fn one_hot(idx: &Tensor, n: usize) -> Result<Tensor> {
    let (b, _, h, w) = idx.dims4()?;
    Ok(Tensor::arange(0u32, n as u32, idx.device())?
        .reshape((1, n, 1, 1))?
        .broadcast_as((b, n, h, w))?
        .eq(&idx.broadcast_as((b, n, h, w))?)?
        .to_dtype(DType::F32)?)
}

/// Frames from first frames `first` `(B, 3, H, W)` and their layers `masks` `(B, 2, H, W)` in
/// [0, 1] (gripper, block; [`ClipRenderer::layer_masks`]): the first frame with both layers cut
/// out and `fill` `(B, 3, H, W)` in their place, then the block's layer pasted at `t[b].block`,
/// then the gripper's (in front) at `t[b].gripper`. With 0/1 masks every pixel is a pixel of
/// the first frame, of one of its two moved copies, or the fill.
pub fn compose_layers(first: &Tensor, masks: &Tensor, fill: &Tensor, t: &[ClipTranslations]) -> Result<Tensor> {
    let mut out = cut_out(first, masks, fill)?;
    for (layer, shift) in
        [(1, t.iter().map(|t| t.block).collect::<Vec<_>>()), (0, t.iter().map(|t| t.gripper).collect())]
    {
        let m = shift_images(&masks.narrow(1, layer, 1)?, &shift)?;
        let img = shift_images(first, &shift)?;
        out = (&out + (img - &out)?.broadcast_mul(&m)?)?;
    }
    Ok(out)
}

/// `first` with both layers of `masks` cut out and `fill` in their place.
fn cut_out(first: &Tensor, masks: &Tensor, fill: &Tensor) -> Result<Tensor> {
    let holes = masks.sum_keepdim(1)?.clamp(0f32, 1f32)?;
    Ok((first + (fill - first)?.broadcast_mul(&holes)?)?)
}

/// How far (px) [`settle_blocks`] moves a let-go block up or down.
pub const SETTLE_RANGE: i64 = 6;

/// Gravity for the carried block of [`Compositor::Layers`]: in each clip `b` whose first carried
/// stretch ends inside the clip, the block's layer (`masks` channel 1, 0/1) at its translation
/// from then on is moved down until the next pixel would overlap something solid, or up out of
/// something solid, by at most [`SETTLE_RANGE`] px; with nothing solid within that range it stays
/// where the codes put it. Solid: a vivid (block-coloured, [`crate::baseline::colour_mask`]) pixel
/// of the first frame with both layers cut out (`fill`), or the table, whose top is the row below
/// the lowest vivid pixel of the first frame (the source stacks stand on it). Only the block's
/// bottom edge counts (the lowest pixel of each of its columns), and it overlaps when more than
/// half of it is on solid pixels: a neighbour beside the block, or a mask a pixel too wide, does
/// not lift it. `trans` is row-major `(b, k)` over
/// the prefixes of `motions[b]`, as [`ClipRenderer::render_clip`] builds it.
pub fn settle_blocks(
    first: &Tensor,
    masks: &Tensor,
    fill: &Tensor,
    motions: &[Vec<TransitionMotion>],
    trans: &mut [ClipTranslations],
) -> Result<()> {
    let (b, _, h, w) = first.dims4()?;
    let s = motions.first().map_or(0, Vec::len);
    if motions.len() != b || trans.len() != b * s {
        return Err(Error::Invalid(format!(
            "settle_blocks: {} rows, {} translations for {b} clips",
            motions.len(),
            trans.len()
        )));
    }
    let vivid = |x: &Tensor| -> Result<Vec<Vec<Vec<f32>>>> {
        Ok(crate::baseline::colour_mask(x)?.squeeze(1)?.to_vec3::<f32>()?)
    };
    let solid_base = vivid(&cut_out(first, masks, fill)?)?;
    let vivid_first = vivid(first)?;
    let block = masks.narrow(1, 1, 1)?.squeeze(1)?.to_vec3::<f32>()?;
    for row in 0..b {
        // The block is let go inside the clip: its carried stretch ends before the clip does.
        let Some(end) = carried_stretch(&motions[row]).map(|s| s.end).filter(|&e| e < s) else { continue };
        let (tx, ty) = trans[row * s + end - 1].block;
        let table = (0..h).rev().find(|&y| vivid_first[row][y].iter().any(|&v| v > 0.5)).map_or(h, |y| y + 1) as i64;
        // The block's bottom edge: the lowest pixel of each of its columns, where it is moved to.
        let bottom: Vec<(i64, i64)> = (0..w)
            .filter_map(|x| (0..h).rev().find(|&y| block[row][y][x] > 0.5).map(|y| (x as i64 + tx, y as i64 + ty)))
            .collect();
        if bottom.is_empty() {
            continue;
        }
        let solid = |x: i64, y: i64| {
            y >= table
                || (x >= 0 && y >= 0 && x < w as i64 && y < h as i64 && solid_base[row][y as usize][x as usize] > 0.5)
        };
        // Resting on (or sunk into) something: most of the bottom edge, moved by d, is on solid pixels.
        let overlap = |d: i64| 2 * bottom.iter().filter(|&&(x, y)| solid(x, y + d)).count() > bottom.len();
        let d = if overlap(0) {
            (1..=SETTLE_RANGE).map(|u| -u).find(|&d| !overlap(d)).unwrap_or(0)
        } else {
            let down = (0..SETTLE_RANGE).take_while(|&d| !overlap(d + 1)).count() as i64;
            if down == SETTLE_RANGE {
                0
            } else {
                down
            }
        };
        for t in &mut trans[row * s + end - 1..(row + 1) * s] {
            t.block.1 += d;
        }
    }
    Ok(())
}

/// The centre of the pixels where the mask logits `(B, 1, H, W)` are >= 0, `(B, 2)` x and y on the
/// [-1, 1] scale of [`coordinate_planes`]; (0, 0) for an empty mask.
pub fn mask_centre(logits: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = logits.dims4()?;
    let m = logits.ge(0f32)?.to_dtype(DType::F32)?;
    let area = m.sum_keepdim((2, 3))?.squeeze(3)?.squeeze(2)?; // (B, 1)
    let weighted = coordinate_planes(b, h, w, logits.device())?.broadcast_mul(&m)?.sum((2, 3))?; // (B, 2)
    Ok(weighted.broadcast_div(&area.maximum(1f32)?)?)
}

/// x and y coordinate planes in [-1, 1], `(B, 2, H, W)`.
fn coordinate_planes(b: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    let xs = Tensor::arange(0u32, w as u32, dev)?.to_dtype(DType::F32)?.affine(2.0 / w.max(1) as f64, -1.0)?;
    let ys = Tensor::arange(0u32, h as u32, dev)?.to_dtype(DType::F32)?.affine(2.0 / h.max(1) as f64, -1.0)?;
    let xs = xs.reshape((1, 1, 1, w))?.broadcast_as((b, 1, h, w))?;
    let ys = ys.reshape((1, 1, h, 1))?.broadcast_as((b, 1, h, w))?;
    Ok(Tensor::cat(&[xs, ys], 1)?)
}

/// A dLDM whose codes are rendered by a [`ClipRenderer`]: the dLDM's encoder gives the codes, the
/// clip renderer draws them, one render per clip of `clip_transitions`.
pub struct ClipDynamics {
    /// The dLDM (its encoder and quantiser).
    pub ldm: TinyLdm,
    /// The renderer.
    pub renderer: ClipRenderer,
}

impl LatentDynamics for ClipDynamics {
    fn encode_codes(&self, frames: &Tensor) -> Result<Tensor> {
        self.ldm.encode_codes(frames)
    }

    fn render(&self, context: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let tc = context.dim(2)?;
        let first = context.narrow(2, tc - 1, 1)?.squeeze(2)?.to_dtype(DType::F32)?;
        Ok(self.renderer.render_codes(&first, codes)?.to_dtype(context.dtype())?)
    }

    fn codes_per_step(&self) -> usize {
        self.ldm.codes_per_step()
    }

    fn vocab_size(&self) -> usize {
        self.ldm.vocab_size()
    }

    fn frames_per_code_step(&self) -> usize {
        1
    }
}

/// Targets `(N, 3)` of a motion regression for the transitions `ids` of `motions`: the
/// displacement in units of `scale` pixels, and carried in {0, 1}.
pub fn motion_targets(motions: &[TransitionMotion], ids: &[usize], scale: f64, device: &Device) -> Result<Tensor> {
    let s = scale as f32;
    let v: Vec<f32> = ids
        .iter()
        .flat_map(|&i| {
            let m = motions[i];
            [m.dx / s, m.dy / s, m.carried as u8 as f32]
        })
        .collect();
    Ok(Tensor::from_vec(v, (ids.len(), 3), device)?)
}

/// The loss of a motion regression's outputs `pred` `(N, 3)` (displacement, carried logit)
/// against [`motion_targets`]: L1 of the displacement plus the binary cross-entropy of carried.
pub fn motion_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let l1 = (pred.narrow(1, 0, 2)? - target.narrow(1, 0, 2)?)?.abs()?.mean_all()?;
    let bce = bce_with_logits(&pred.narrow(1, 2, 1)?, &target.narrow(1, 2, 1)?)?;
    Ok((l1 + bce)?)
}

/// Mean binary cross-entropy of `logits` against targets in [0, 1], in the form that stays finite
/// for any logit: `max(x, 0) - x t + ln(1 + e^-|x|)`. (`candle_nn`'s takes the log of the sigmoid,
/// which is exactly 0 or 1 past |x| ~ 17 in f32: its loss, and then the weights, become NaN once
/// a confident logit grows that far.)
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(bce_with_logits_each(logits, target)?.mean_all()?)
}

/// [`bce_with_logits`] of each element, not averaged.
pub fn bce_with_logits_each(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((logits.relu()? - logits.mul(target)?)?.add(&softplus)?)
}

/// Mean over pixels of the channel-summed L1 between `a` and `b`, `(B, 3, H, W)`: the render loss.
pub fn pixel_l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a - b)?.abs()?.sum(1)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use rand::SeedableRng;

    fn m(dx: f32, dy: f32, carried: bool) -> TransitionMotion {
        TransitionMotion { dx, dy, carried }
    }

    #[test]
    fn translations_follow_the_first_carried_stretch_and_keep_fractions() {
        // Reach (not carried), lift and carry (carried), release, retreat, then a second carried
        // stretch that must not move the first block.
        let ms = [
            m(2.4, 1.0, false),
            m(2.4, 1.0, false),
            m(0.0, -3.0, true),
            m(5.0, 0.0, true),
            m(0.0, 1.0, false),
            m(-1.0, -1.0, true),
        ];
        let t = clip_translations(&ms);
        assert_eq!(t.gripper, (9, -1)); // 8.8 rounds to 9 once, not 2 + 2 + ...
        assert_eq!(t.grasp, (5, 2));
        assert_eq!(t.block, (5, -3));
        // Nothing carried: the block stays, the grasp pose is the gripper's.
        let t = clip_translations(&ms[..2]);
        assert_eq!((t.block, t.grasp, t.gripper), ((0, 0), (5, 2), (5, 2)));
        assert_eq!(clip_translations(&[]), ClipTranslations::default());
    }

    /// An (H, W) plane of 1 on the `side`-px square at (x, y), 0 elsewhere.
    fn square(h: usize, w: usize, (x, y): (usize, usize), side: usize) -> Vec<f32> {
        (0..h * w)
            .map(|i| ((x..x + side).contains(&(i % w)) && (y..y + side).contains(&(i / w))) as u8 as f32)
            .collect()
    }

    /// A (3, H, W) plane of `bg` with a `side`-px square of `rgb` at (x, y).
    fn scene(h: usize, w: usize, bg: [f32; 3], squares: &[((usize, usize), usize, [f32; 3])]) -> Vec<f32> {
        let mut v = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                v[c * h * w + i] = bg[c];
            }
            for &((x, y), side, rgb) in squares {
                for yy in y..y + side {
                    for xx in x..x + side {
                        v[c * h * w + yy * w + xx] = rgb[c];
                    }
                }
            }
        }
        v
    }

    #[test]
    fn the_teacher_reads_the_displacement_and_whether_a_block_moves_along() {
        let (h, w) = (24, 28);
        let wall = [0.5, 0.5, 0.45];
        let grey = [-0.2, -0.2, -0.2];
        let red = [0.9, -0.8, -0.8];
        let t = MotionTeacher::default();
        // A grey gripper moves by (3, -2) over a static red block: not carried.
        let a = scene(h, w, wall, &[((5, 10), 4, grey), ((15, 15), 4, red)]);
        let b = scene(h, w, wall, &[((8, 8), 4, grey), ((15, 15), 4, red)]);
        let bg = scene(h, w, wall, &[((15, 15), 4, red)]);
        let r = dominant_motion(&a, &b, &bg, (h, w), &t);
        assert_eq!(r.motion, m(3.0, -2.0, false));
        assert_eq!(r.vivid, 0);
        // The gripper carries the block by (-4, 0): carried.
        let a = scene(h, w, wall, &[((10, 5), 4, grey), ((10, 9), 4, red)]);
        let b = scene(h, w, wall, &[((6, 5), 4, grey), ((6, 9), 4, red)]);
        let r = dominant_motion(&a, &b, &bg, (h, w), &t);
        assert_eq!(r.motion, m(-4.0, 0.0, true));
        assert!(r.vivid >= 8, "{r:?}");
        // Nothing moves.
        assert_eq!(dominant_motion(&a, &a, &bg, (h, w), &t).motion, TransitionMotion::default());
        // A wrong-sized plane is no motion, not a panic.
        assert_eq!(dominant_motion(&a[1..], &a, &bg, (h, w), &t), MotionReading::default());
    }

    #[test]
    fn the_motion_loss_stays_finite_for_confident_logits() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[-200f32], [-1.0], [0.0], [3.0], [200.0]], &dev)?;
        let target = Tensor::new(&[[0f32], [1.0], [0.0], [1.0], [1.0]], &dev)?;
        // ln(1 + e^-|x|) + max(x, 0) - x t, row by row.
        let want = [0.0, 1.0 + (-1f64).exp().ln_1p(), 2f64.ln(), (-3f64).exp().ln_1p(), 0.0];
        let got = bce_with_logits(&logits, &target)?.to_scalar::<f32>()? as f64;
        assert!((got - want.iter().sum::<f64>() / 5.0).abs() < 1e-6, "{got}");
        // A wrong confident logit costs its size, not NaN.
        let wrong = bce_with_logits(&Tensor::new(&[[200f32]], &dev)?, &Tensor::new(&[[0f32]], &dev)?)?;
        assert_eq!(wrong.to_scalar::<f32>()?, 200.0);
        Ok(())
    }

    #[test]
    fn the_centre_of_a_mask_is_the_mean_of_its_pixels_on_the_coordinate_scale() -> Result<()> {
        let dev = Device::Cpu;
        // 8 x 8: a 2 x 3 block at rows 4-5, columns 1-3; and an empty mask.
        let mut v = vec![-1f32; 2 * 64];
        for y in 4..6 {
            for x in 1..4 {
                v[y * 8 + x] = 2.0;
            }
        }
        let c = mask_centre(&Tensor::from_vec(v, (2, 1, 8, 8), &dev)?)?.to_vec2::<f32>()?;
        // Pixel i sits at 2 i / 8 - 1: columns 1..3 average 2, rows 4..5 average 4.5.
        let at = |i: f32| 2.0 * i / 8.0 - 1.0;
        assert!((c[0][0] - at(2.0)).abs() < 1e-6 && (c[0][1] - at(4.5)).abs() < 1e-6, "{c:?}");
        assert_eq!(c[1], vec![0.0, 0.0]);
        Ok(())
    }

    #[test]
    fn the_background_fill_skips_copies_that_show_a_block() -> Result<()> {
        let dev = Device::Cpu;
        let (w, red) = (16usize, [1f32, -1.0, -1.0]);
        // Frame 0: grey with a red block on columns 0..4; frame 1: red everywhere.
        let mut px = vec![0f32; 2 * 3 * w];
        for c in 0..3 {
            for x in 0..w {
                px[c * w + x] = if x < 4 { red[c] } else { 0.0 };
                px[(3 + c) * w + x] = red[c];
            }
        }
        let first = Tensor::from_vec(px, (2, 3, 1, w), &dev)?;
        // The logits rank the shifts +4, +8, -4, -8 everywhere (FILL_SHIFTS = [-8, -4, 4, 8]).
        let logits = Tensor::new(&[0f32, 1.0, 5.0, 4.0], &dev)?.reshape((1, 4, 1, 1))?.broadcast_as((2, 4, 1, w))?;
        let choice = background_fill_choice(&fill_copies(&first)?, &logits.contiguous()?)?
            .squeeze(1)?
            .squeeze(1)?
            .to_vec2::<u32>()?;
        // Pixel 6 of frame 0: +4 and +8 show the block (pixel 2, and the edge's pixel 0), so -4.
        assert_eq!(choice[0][6], 1);
        // Pixel 12: +4 shows pixel 8 (grey), the best of all.
        assert_eq!(choice[0][12], 2);
        // Frame 1: every copy is a block, so the logits alone decide.
        assert!(choice[1].iter().all(|&c| c == 2), "{:?}", choice[1]);
        Ok(())
    }

    #[test]
    fn shifted_images_move_content_and_repeat_edges() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 12.0, &dev)?.reshape((2, 1, 3, 4))?;
        let y = shift_images(&x, &[(1, 0), (-1, 2)])?.squeeze(1)?.to_vec3::<f32>()?;
        assert_eq!(y[0], vec![vec![0.0, 0.0, 1.0, 2.0], vec![4.0, 4.0, 5.0, 6.0], vec![8.0, 8.0, 9.0, 10.0]]);
        assert_eq!(
            y[1],
            vec![vec![13.0, 14.0, 15.0, 15.0], vec![13.0, 14.0, 15.0, 15.0], vec![13.0, 14.0, 15.0, 15.0]]
        );
        assert!(shift_images(&x, &[(0, 0)]).is_err());
        Ok(())
    }

    #[test]
    fn every_rendered_pixel_is_a_pixel_of_a_copy_or_the_fill() -> Result<()> {
        let dev = Device::Cpu;
        for compositor in [Compositor::Select, Compositor::Layers] {
            let cfg = ClipRendererConfig { compositor, ..ClipRendererConfig::tiny() };
            let varmap = VarMap::new();
            let r = ClipRenderer::new(&cfg, crate::train::seeded_var_builder(&varmap, 3, DType::F32, &dev))?;
            let s = cfg.image_size;
            let first =
                crate::train::rand_from(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1), -1.0, 1.0, (2, 3, s, s), &dev)?;
            let motions = vec![
                vec![m(1.0, 0.0, false), m(0.0, 2.0, true), m(-3.0, 0.0, true)],
                vec![m(0.0, 0.0, false), m(4.0, 1.0, false), m(0.0, 0.0, false)],
            ];
            let out = r.render_clip(&first, &motions)?;
            assert_eq!(out.dims(), &[2, 3, 3, s, s]);
            // Frame k of row b against the copies of its own translations, pixel by pixel.
            for (b, row) in motions.iter().enumerate() {
                let x = first.narrow(0, b, 1)?;
                let fill = match compositor {
                    Compositor::Select => None,
                    Compositor::Layers => {
                        let (_, fill) = r.layer_masks(&x, &[clip_translations(row).grasp])?;
                        Some(layer_fill(&x, &one_hot(&fill.argmax_keepdim(1)?, FILL_SHIFTS.len())?)?)
                    }
                };
                for k in 0..3 {
                    let t = clip_translations(&row[..=k]);
                    let cand = clip_candidates(&x, &[t])?;
                    let fill = match &fill {
                        Some(f) => f.clone(),
                        None => r.select(&cand)?.1,
                    };
                    let opts = [cand.narrow(1, 0, 3)?, cand.narrow(1, 3, 3)?, cand.narrow(1, 6, 3)?, fill];
                    let got = out.narrow(0, b, 1)?.narrow(2, k, 1)?.squeeze(2)?;
                    let mut min_err = (&got - &opts[0])?.abs()?.sum_keepdim(1)?;
                    for o in &opts[1..] {
                        min_err = min_err.minimum(&(&got - o)?.abs()?.sum_keepdim(1)?)?;
                    }
                    assert!(min_err.max_all()?.to_scalar::<f32>()? < 1e-6, "{compositor:?} row {b} frame {k}");
                }
            }
            // Mismatched rows are an error, and so is the other compositor's network.
            assert!(r.render_clip(&first, &motions[..1]).is_err());
            match compositor {
                Compositor::Select => assert!(r.layer_masks(&first, &[(0, 0), (0, 0)]).is_err()),
                Compositor::Layers => assert!(r.select(&clip_candidates(&first, &[Default::default(); 2])?).is_err()),
            }
        }
        Ok(())
    }

    #[test]
    fn a_let_go_block_settles_on_what_is_under_it() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (16, 16);
        let wall = [0.5, 0.5, 0.45];
        let (red, green) = ([0.9, -0.8, -0.8], [-0.8, 0.9, -0.8]);
        // A 4-px green block to carry at (2, 2); a red one standing on the table (bottom row) at (8, 12).
        let first = Tensor::from_vec(scene(h, w, wall, &[((2, 2), 4, green), ((8, 12), 4, red)]), (1, 3, h, w), &dev)?;
        let masks = Tensor::from_vec([vec![0f32; h * w], square(h, w, (2, 2), 4)].concat(), (1, 2, h, w), &dev)?;
        let fill = Tensor::from_vec(scene(h, w, wall, &[]), (1, 3, h, w), &dev)?;
        // Carried by (dx, dy) in one transition, then let go (or still held) for two.
        let settled = |dx: f32, dy: f32, held: bool| -> Result<Vec<(i64, i64)>> {
            let ms = vec![vec![m(dx, dy, true), m(0.0, 0.0, held), m(0.0, 0.0, held)]];
            let mut t: Vec<ClipTranslations> = (1..=3).map(|k| clip_translations(&ms[0][..k])).collect();
            settle_blocks(&first, &masks, &fill, &ms, &mut t)?;
            Ok(t.iter().map(|t| t.block).collect())
        };
        // Let go 2 px above the red block (rows 6-9, its top is row 12): it drops onto it.
        assert_eq!(settled(6.0, 4.0, false)?, vec![(6, 6); 3]);
        // Let go sunk 1 px into it: it comes up.
        assert_eq!(settled(6.0, 7.0, false)?, vec![(6, 6); 3]);
        // Nothing solid within SETTLE_RANGE below: it stays where the codes put it.
        assert_eq!(settled(0.0, 0.0, false)?, vec![(0, 0); 3]);
        // Let go on the table (the row below the lowest vivid row is the image's bottom edge).
        assert_eq!(settled(-1.0, 8.0, false)?, vec![(-1, 10); 3]);
        // Still carried when the clip ends: not let go, not moved.
        assert_eq!(settled(6.0, 4.0, true)?, vec![(6, 4); 3]);
        Ok(())
    }

    #[test]
    fn layers_move_with_their_translations_over_the_filled_first_frame() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (12, 14);
        let wall = [0.5, 0.5, 0.45];
        let (grey, red) = ([-0.2, -0.2, -0.2], [0.9, -0.8, -0.8]);
        let plane = |v: Vec<f32>, c: usize| Tensor::from_vec(v, (1, c, h, w), &dev);
        // A 2-px gripper above a 3-px block, and a second, unmoved block.
        let first = plane(scene(h, w, wall, &[((4, 2), 2, grey), ((4, 4), 3, red), ((10, 8), 2, red)]), 3)?;
        let masks = plane([square(h, w, (4, 2), 2), square(h, w, (4, 4), 3)].concat(), 2)?;
        let fill = plane(scene(h, w, wall, &[]), 3)?;
        // The gripper moves by (3, 3), the block it carries by (3, 2).
        let t = ClipTranslations { gripper: (3, 3), block: (3, 2), grasp: (0, 0) };
        let got = compose_layers(&first, &masks, &fill, &[t])?;
        // The block's layer lands first, the gripper's (in front) over it: the gripper's bottom
        // row covers the block's top row.
        let want = plane(scene(h, w, wall, &[((7, 6), 3, red), ((7, 5), 2, grey), ((10, 8), 2, red)]), 3)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> { Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?) };
        assert!(max_diff(&got, &want)? < 1e-6);
        // Unmoved layers stay where they are.
        let still = compose_layers(&first, &masks, &fill, &[ClipTranslations::default()])?;
        assert!(max_diff(&still, &first)? < 1e-6);
        Ok(())
    }
}

//! CraftWorld transitions for dLDM training and probing: episodes rendered by `vw_data::craftworld`,
//! every adjacent frame pair with its ground-truth action label.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use vw_data::craftworld::{generate_episode, generate_play_episode, CraftConfig, Episode, Split};

/// Which episodes to render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CraftData {
    /// The world's config (image size, frames per step, recipe lengths).
    pub world: CraftConfig,
    /// Number of episodes.
    pub episodes: usize,
    /// Seed of the first episode; episode i has seed `first_seed + i`.
    pub first_seed: u64,
    /// 0: the scripted expert's episodes. N > 0: play episodes of N frames instead
    /// (`vw_data::craftworld::generate_play_episode`: random moves whose next motion the current
    /// frame does not give away). Probes always score expert episodes.
    pub play_frames: usize,
}

impl CraftData {
    /// The episodes, in `split`'s look.
    pub fn generate(&self, split: Split) -> Result<Vec<Episode>> {
        (0..self.episodes)
            .into_par_iter()
            .map(|i| {
                let seed = self.first_seed + i as u64;
                match self.play_frames {
                    0 => generate_episode(&self.world, split, seed),
                    n => generate_play_episode(&self.world, split, seed, n),
                }
                .map_err(|e| Error::Invalid(format!("CraftWorld episode {seed}: {e}")))
            })
            .collect()
    }
}

impl Default for CraftData {
    fn default() -> Self {
        Self { world: CraftConfig::default(), episodes: 48, first_seed: 0, play_frames: 0 }
    }
}

/// How far (in [-1, 1] pixel units, any channel) a pixel must be from its episode's background to
/// count as foreground in [`Transitions::foreground`].
pub const FOREGROUND_THRESHOLD: f64 = 0.1;

/// All frames of a set of episodes plus the index of every transition.
pub struct Transitions {
    /// Every frame of every episode: (N_frames, 3, H, W) in [-1, 1].
    pub frames: Tensor,
    /// Frame index of x_t of each transition (x_{t+1} is the next row).
    pub starts: Vec<u32>,
    /// Episode of each transition.
    pub episode: Vec<u32>,
    /// Index of each transition inside its episode.
    pub index_in_episode: Vec<u32>,
    /// Recipe step of each transition (the step of frame t).
    pub recipe_step: Vec<u32>,
    /// Ground-truth action label (`Action::label`, `0..NUM_ACTION_CLASSES`) of each transition.
    pub labels: Vec<u32>,
    /// Seed of each episode.
    pub seeds: Vec<u64>,
    /// Frames of each episode.
    pub frames_per_episode: Vec<usize>,
    /// Recipe steps of the scripted expert's episodes (play episodes have none): the transition
    /// that starts each (from the frame before the step's first frame) and how many it spans.
    pub step_clips: Vec<(usize, usize)>,
}

impl Transitions {
    /// Renders `data.episodes` episodes of `split` and indexes their transitions.
    pub fn render(data: &CraftData, split: Split, device: &Device) -> Result<Self> {
        Self::from_episodes(&data.generate(split)?, device)
    }

    /// Indexes the transitions of already rendered episodes.
    pub fn from_episodes(eps: &[Episode], device: &Device) -> Result<Self> {
        let mut frames = Vec::new();
        let mut out = Self {
            frames: Tensor::zeros(1, DType::F32, device)?,
            starts: Vec::new(),
            episode: Vec::new(),
            index_in_episode: Vec::new(),
            recipe_step: Vec::new(),
            labels: Vec::new(),
            seeds: Vec::new(),
            frames_per_episode: Vec::new(),
            step_clips: Vec::new(),
        };
        let mut offset = 0u32;
        for (e, ep) in eps.iter().enumerate() {
            // (3, T, H, W) -> (T, 3, H, W)
            let f = ep.frames_tensor(device).map_err(|err| Error::Invalid(err.to_string()))?.transpose(0, 1)?;
            let t = f.dim(0)?;
            let first = out.starts.len();
            for st in &ep.steps {
                if st.start_frame >= 1 && st.end_frame < t && st.end_frame >= st.start_frame {
                    out.step_clips.push((first + st.start_frame - 1, st.end_frame + 1 - st.start_frame));
                }
            }
            for i in 0..t - 1 {
                out.starts.push(offset + i as u32);
                out.episode.push(e as u32);
                out.index_in_episode.push(i as u32);
                out.recipe_step.push(ep.truth[i].step as u32);
                out.labels.push(ep.truth[i].action.label() as u32);
            }
            out.seeds.push(ep.seed);
            out.frames_per_episode.push(t);
            offset += t as u32;
            frames.push(f);
        }
        if frames.is_empty() {
            return Err(Error::Invalid("no episodes".into()));
        }
        out.frames = Tensor::cat(&frames, 0)?.contiguous()?;
        Ok(out)
    }

    /// Number of transitions.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The transitions `ids`: (x_t, x_{t+1}), each (N, 3, H, W).
    pub fn pairs(&self, ids: &[usize]) -> Result<(Tensor, Tensor)> {
        let dev = self.frames.device();
        let a: Vec<u32> = ids.iter().map(|&i| self.starts[i]).collect();
        let b: Vec<u32> = a.iter().map(|s| s + 1).collect();
        let a = Tensor::from_vec(a, ids.len(), dev)?;
        let b = Tensor::from_vec(b, ids.len(), dev)?;
        Ok((self.frames.index_select(&a, 0)?, self.frames.index_select(&b, 0)?))
    }

    /// A batch of `n` transitions drawn uniformly from `rng`.
    pub fn sample(&self, rng: &mut impl Rng, n: usize) -> Result<(Tensor, Tensor)> {
        self.pairs(&self.sample_ids(rng, n))
    }

    /// The ids of a batch of `n` transitions drawn uniformly from `rng` (what [`Transitions::sample`]
    /// draws; a data-parallel rank keeps its shard of them).
    pub fn sample_ids(&self, rng: &mut impl Rng, n: usize) -> Vec<usize> {
        (0..n).map(|_| rng.random_range(0..self.len())).collect()
    }

    /// The static background of every episode, estimated from its own frames alone: the per-pixel
    /// median over the episode (the gripper and the blocks it carries are elsewhere most of the
    /// time). (E, 3, H, W), as `frames`.
    pub fn backgrounds(&self) -> Result<Tensor> {
        let (_, c, h, w) = self.frames.dims4()?;
        let mut out = Vec::with_capacity(self.frames_per_episode.len());
        let mut start = 0;
        for &t in &self.frames_per_episode {
            let clip = self.frames.narrow(0, start, t)?.to_dtype(DType::F32)?.reshape((t, c * h * w))?;
            let clip = clip.t()?.contiguous()?.to_vec2::<f32>()?;
            let med: Vec<f32> = clip
                .into_par_iter()
                .map(|mut px| {
                    px.sort_by(f32::total_cmp);
                    px[(t - 1) / 2]
                })
                .collect();
            out.push(Tensor::from_vec(med, (1, c, h, w), self.frames.device())?);
            start += t;
        }
        Ok(Tensor::cat(&out, 0)?.to_dtype(self.frames.dtype())?)
    }

    /// Foreground masks of the transitions `ids`, whose frames `(x_t, x_{t+1})` (from [`Self::pairs`])
    /// the caller already holds: 1 where frame t (and, second, frame t+1) differs from its episode's
    /// background (`backgrounds`) by more than `threshold` in some channel, else 0. Each (N, 1, H, W),
    /// f32.
    pub fn foreground(
        &self,
        backgrounds: &Tensor,
        ids: &[usize],
        (x_t, x_next): (&Tensor, &Tensor),
        threshold: f64,
    ) -> Result<(Tensor, Tensor)> {
        let eps: Vec<u32> = ids.iter().map(|&i| self.episode[i]).collect();
        let bg = backgrounds.index_select(&Tensor::from_vec(eps, ids.len(), backgrounds.device())?, 0)?;
        let mask = |x: &Tensor| -> Result<Tensor> {
            Ok((x - &bg)?.abs()?.max_keepdim(1)?.gt(threshold)?.to_dtype(DType::F32)?)
        };
        Ok((mask(x_t)?, mask(x_next)?))
    }

    /// The label-free motion of every transition ([`crate::clip::dominant_motion`]), in transition
    /// order. `backgrounds`: [`Self::backgrounds`], which callers that also need it compute once.
    pub fn teacher_motions(
        &self,
        backgrounds: &Tensor,
        teacher: &crate::clip::MotionTeacher,
    ) -> Result<Vec<crate::clip::TransitionMotion>> {
        let bgs = backgrounds.to_dtype(DType::F32)?;
        let (_, _, h, w) = self.frames.dims4()?;
        let mut motions = Vec::with_capacity(self.len());
        let (mut start, mut frame0) = (0usize, 0usize);
        for (e, &t) in self.frames_per_episode.iter().enumerate() {
            let clip = self.frames.narrow(0, frame0, t)?.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2::<f32>()?;
            let bg = bgs.get(e)?.flatten_all()?.to_vec1::<f32>()?;
            // The transitions of episode e are the next t - 1 ids, in order. Each is a search over
            // every displacement in the teacher's radius: in parallel (the GPU demo reads ~50k).
            let read: Vec<_> = (start..start + t - 1)
                .into_par_iter()
                .map(|i| {
                    let j = self.starts[i] as usize - frame0;
                    crate::clip::dominant_motion(&clip[j], &clip[j + 1], &bg, (h, w), teacher).motion
                })
                .collect();
            motions.extend(read);
            start += t - 1;
            frame0 += t;
        }
        Ok(motions)
    }

    /// The frames of episode `e` as a clip (1, 3, T, H, W).
    pub fn episode_clip(&self, e: usize) -> Result<Tensor> {
        let start: usize = self.frames_per_episode[..e].iter().sum();
        let t = self.frames_per_episode[e];
        Ok(self.frames.narrow(0, start, t)?.transpose(0, 1)?.unsqueeze(0)?)
    }
}

/// Training-time appearance augmentation of transition pairs: the same random change of look is
/// applied to x_t and x_{t+1} of a pair, so the motion between them is untouched and only what the
/// scene looks like varies. Off (all zero) by default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Per-channel gain in `1 ± color_jitter` and offset in `± color_jitter` (tinted light).
    pub color_jitter: f32,
    /// Std of a static texture added to both frames: pixel noise plus 4x4-block noise.
    pub static_noise: f32,
    /// Largest per-channel amplitude of a static grating (stripes of random orientation, period
    /// 3-16 px and phase) added to both frames. 0 = none.
    pub grating: f32,
    /// Largest translation, in pixels, of a pair (both frames by the same whole-pixel offset in x and
    /// y, edges replicated): a camera that is not always in the same place. 0 = none.
    pub shift: usize,
    /// Largest relative zoom of a pair about the image centre (scale in `1 ± zoom`, both frames
    /// alike, bilinear, edges replicated): a camera a little nearer or farther. 0 = none.
    pub zoom: f32,
    /// Largest rotation of a pair about the image centre, in radians (both frames alike). 0 = none.
    pub rotate: f32,
    /// Add the texture (static noise, grating) and the colour offset to each frame's *background*
    /// only, given foreground masks ([`Transitions::foreground`]): a new wall or table then shows
    /// through where the gripper has just left or is about to cover, as it would behind a real
    /// moving arm, so the change between the frames sees the new texture too. Added to whole frames
    /// (false) it cancels out of x_{t+1} - x_t.
    pub background_only: bool,
}

/// A similarity warp of an image about its centre: content moves by (`dx`, `dy`) pixels, is scaled by
/// `scale` and turned by `angle` radians.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Warp {
    dx: f32,
    dy: f32,
    scale: f32,
    angle: f32,
}

impl Warp {
    /// [`Self::bilinear_into`] into a new vector.
    #[cfg(test)]
    fn apply(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        self.bilinear_into(x, h, w, &mut out);
        out
    }

    /// `x`: C planes of H x W, row-major, warped into `out` (as long as `x`). Output pixel p reads
    /// the input at the inverse warp of p, bilinearly, clamped to the border (replicated edges). A
    /// whole-pixel shift with no zoom or turn reads exactly one input pixel per output pixel.
    fn bilinear_into(&self, x: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let (sin, cos) = self.angle.sin_cos();
        let mut out = out.iter_mut();
        for plane in x.chunks_exact(h * w) {
            for y in 0..h {
                for xx in 0..w {
                    let (u, v) = (xx as f32 - cx - self.dx, y as f32 - cy - self.dy);
                    let sx = ((cos * u + sin * v) / self.scale + cx).clamp(0.0, (w - 1) as f32);
                    let sy = ((cos * v - sin * u) / self.scale + cy).clamp(0.0, (h - 1) as f32);
                    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                    let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                    let at = |yy: usize, xv: usize| plane[yy * w + xv];
                    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                    if let Some(o) = out.next() {
                        *o = top * (1.0 - fy) + bottom * fy;
                    }
                }
            }
        }
    }
}

/// How a pair's augmentation scales and turns what moves between its frames (the part of its warp
/// a displacement sees; a shift moves both frames alike and leaves it as it is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairWarp {
    /// Zoom about the centre.
    pub scale: f32,
    /// Turn about the centre, in radians (the sense of [`Augment::rotate`]).
    pub angle: f32,
}

impl PairWarp {
    /// No zoom, no turn.
    pub const IDENTITY: Self = Self { scale: 1.0, angle: 0.0 };

    /// The displacement `(dx, dy)` (pixels, right and down) of the original frames as it shows in
    /// the warped ones.
    pub fn displacement(&self, dx: f32, dy: f32) -> (f32, f32) {
        let (sin, cos) = self.angle.sin_cos();
        (self.scale * (cos * dx - sin * dy), self.scale * (sin * dx + cos * dy))
    }
}

impl Augment {
    /// Whether it changes anything.
    pub fn is_off(&self) -> bool {
        self.color_jitter == 0.0
            && self.static_noise == 0.0
            && self.grating == 0.0
            && self.shift == 0
            && self.zoom == 0.0
            && self.rotate == 0.0
    }

    /// Augments rows `rows` of a global batch of `batch` pairs: the parameters of all `batch` pairs are
    /// drawn from `rng` (so every data-parallel rank draws the same) and this shard's are applied.
    /// Returns the pairs and how each was zoomed and turned: a target that is a displacement between
    /// the frames must follow them ([`PairWarp::displacement`]).
    ///
    /// `foreground`: the masks of x_t and x_{t+1} ((N, 1, H, W) each), needed with `background_only`
    /// and ignored without it.
    pub fn apply(
        &self,
        x_t: &Tensor,
        x_next: &Tensor,
        foreground: Option<(&Tensor, &Tensor)>,
        rng: &mut impl Rng,
        batch: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<(Tensor, Tensor, Vec<PairWarp>)> {
        let (a, b, warps) = self.augment(x_t, Some(x_next), foreground, rng, batch, rows)?;
        let b = b.ok_or_else(|| Error::Invalid("augment: the second frame of a pair went missing".into()))?;
        Ok((a, b, warps))
    }

    /// [`Self::apply`] on single frames `x` (a policy's first frames): the same draws from `rng`,
    /// so the result is the first frame of a pair of `x` with itself, without augmenting a second.
    pub fn apply_frames(
        &self,
        x: &Tensor,
        rng: &mut impl Rng,
        batch: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<(Tensor, Vec<PairWarp>)> {
        let (a, _, warps) = self.augment(x, None, None, rng, batch, rows)?;
        Ok((a, warps))
    }

    /// [`Self::apply`], with the second frame optional.
    fn augment(
        &self,
        x_t: &Tensor,
        x_next: Option<&Tensor>,
        foreground: Option<(&Tensor, &Tensor)>,
        rng: &mut impl Rng,
        batch: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<(Tensor, Option<Tensor>, Vec<PairWarp>)> {
        let mut pair_warps = vec![PairWarp::IDENTITY; rows.len()];
        if self.is_off() {
            return Ok((x_t.clone(), x_next.cloned(), pair_warps));
        }
        let foreground = match (self.background_only, foreground) {
            (false, _) => None,
            (true, Some(m)) => Some(m),
            (true, None) => return Err(Error::Invalid("augment: background_only needs the foreground masks".into())),
        };
        let (n, c, h, w) = x_t.dims4()?;
        if n != rows.len() || rows.end > batch || x_next.is_some_and(|x| x.dims() != [n, c, h, w]) {
            return Err(Error::Invalid(format!(
                "augment: pairs {:?} / {:?} do not match rows {rows:?} of a batch of {batch}",
                x_t.shape(),
                x_next.map(|x| x.shape())
            )));
        }
        let j = self.color_jitter;
        // `k` draws in [lo, hi) (none when the range is empty); `keep` false draws and drops them.
        let mut draws = |k: usize, lo: f32, hi: f32, keep: bool| -> Vec<f32> {
            if !keep {
                if hi > lo {
                    for _ in 0..k {
                        let _: f32 = rng.random_range(lo..hi);
                    }
                }
                return Vec::new();
            }
            (0..k).map(|_| if hi > lo { rng.random_range(lo..hi) } else { lo }).collect()
        };
        let gain = draws(batch * c, 1.0 - j, 1.0 + j, true);
        let offset = draws(batch * c, -j, j, true);
        // Box-Muller from uniforms keeps this on `Rng` alone. The uniforms are drawn whether or
        // not the static is on, so every stream stays what it was; the transform (the costly part,
        // a few million per GPU-sized batch) runs on the rows in use, in parallel.
        let static_on = self.static_noise != 0.0;
        let mut normal = |k: usize, per_row: usize| -> Vec<f32> {
            let u = draws(2 * k, f32::EPSILON, 1.0, static_on);
            if !static_on {
                return Vec::new();
            }
            u[2 * rows.start * per_row..2 * rows.end * per_row]
                .par_chunks_exact(2)
                .map(|p| (-2.0 * p[0].ln()).sqrt() * (std::f32::consts::TAU * p[1]).cos())
                .collect()
        };
        let (bh, bw) = (h.div_ceil(4), w.div_ceil(4));
        let pix = normal(batch * c * h * w, c * h * w);
        let blocks = normal(batch * c * bh * bw, c * bh * bw);
        let dev = x_t.device();
        let take = |v: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
            let dims: Vec<usize> = std::iter::once(batch).chain(shape.iter().copied()).collect();
            Ok(Tensor::from_vec(v, dims, dev)?.narrow(0, rows.start, n)?)
        };
        let rows_of = |v: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
            let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
            Ok(Tensor::from_vec(v, dims, dev)?)
        };
        let gain = take(gain, &[c, 1, 1])?.to_dtype(x_t.dtype())?;
        let offset = take(offset, &[c, 1, 1])?.to_dtype(x_t.dtype())?;
        let mut texture = if static_on {
            let blocks = rows_of(blocks, &[c, bh, bw])?
                .unsqueeze(3)?
                .unsqueeze(5)?
                .broadcast_as((n, c, bh, 4, bw, 4))?
                .reshape((n, c, bh * 4, bw * 4))?
                .narrow(2, 0, h)?
                .narrow(3, 0, w)?;
            Some(((rows_of(pix, &[c, h, w])? + blocks)? * (self.static_noise as f64 / 2f64.sqrt()))?)
        } else {
            None
        };
        if self.grating > 0.0 {
            // Drawn only when on, so runs without it draw exactly what they did before it existed.
            let params: Vec<[f32; 4]> = (0..batch)
                .map(|_| {
                    let [theta, period, phase] = [
                        draws(1, 0.0, std::f32::consts::PI, true)[0],
                        draws(1, 3.0, 16.0, true)[0],
                        draws(1, 0.0, std::f32::consts::TAU, true)[0],
                    ];
                    [theta.cos() / period, theta.sin() / period, phase, 0.0]
                })
                .collect();
            let amps = draws(batch * c, 0.0, self.grating, true);
            let mut g = vec![0f32; n * c * h * w];
            g.par_chunks_exact_mut(h * w).zip(rows.start * c..rows.end * c).for_each(|(plane, rc)| {
                let ([fx, fy, phase, _], a) = (params[rc / c], amps[rc]);
                for (y, line) in plane.chunks_exact_mut(w).enumerate() {
                    for (x, v) in line.iter_mut().enumerate() {
                        *v = a * (std::f32::consts::TAU * (fx * x as f32 + fy * y as f32) + phase).sin();
                    }
                }
            });
            let g = rows_of(g, &[c, h, w])?;
            texture = Some(match texture {
                Some(t) => (t + g)?,
                None => g,
            });
        }
        let texture = texture.map(|t| t.to_dtype(x_t.dtype())).transpose()?;
        let (x_t, x_next, fg) = if self.shift > 0 || self.zoom > 0.0 || self.rotate > 0.0 {
            // Each part drawn only when on, like the grating.
            let s = self.shift as i64;
            let mut warps: Vec<Warp> = (0..batch)
                .map(|_| {
                    let (dx, dy) = if s > 0 { (rng.random_range(-s..=s), rng.random_range(-s..=s)) } else { (0, 0) };
                    Warp { dx: dx as f32, dy: dy as f32, scale: 1.0, angle: 0.0 }
                })
                .collect();
            if self.zoom > 0.0 || self.rotate > 0.0 {
                let mut sym = |m: f32| if m > 0.0 { rng.random_range(-m..m) } else { 0.0 };
                for wp in &mut warps {
                    (wp.scale, wp.angle) = (1.0 + sym(self.zoom), sym(self.rotate));
                }
            }
            for (pw, r) in pair_warps.iter_mut().zip(rows.clone()) {
                *pw = PairWarp { scale: warps[r].scale, angle: warps[r].angle };
            }
            // Frames (N, C, H, W) and masks (N, 1, H, W) alike. A whole-pixel shift is a gather
            // where the frames are (no copy to the host and back on a GPU); other warps are read
            // bilinearly on the host.
            let whole_pixels = self.zoom == 0.0 && self.rotate == 0.0;
            let offsets: Vec<(i64, i64)> = rows.clone().map(|r| (warps[r].dx as i64, warps[r].dy as i64)).collect();
            let moved = |x: &Tensor| -> Result<Tensor> {
                if whole_pixels {
                    return crate::clip::shift_images(x, &offsets);
                }
                let xc = x.dim(1)?;
                let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut warped = vec![0f32; v.len()];
                warped
                    .par_chunks_exact_mut(xc * h * w)
                    .zip(v.par_chunks_exact(xc * h * w))
                    .enumerate()
                    .for_each(|(i, (out, img))| warps[rows.start + i].bilinear_into(img, h, w, out));
                Ok(Tensor::from_vec(warped, (n, xc, h, w), dev)?.to_dtype(x.dtype())?)
            };
            let foreground = foreground.map(|(a, b)| Ok::<_, Error>((moved(a)?, moved(b)?))).transpose()?;
            (moved(x_t)?, x_next.map(moved).transpose()?, foreground)
        } else {
            (x_t.clone(), x_next.cloned(), foreground.map(|(a, b)| (a.clone(), b.clone())))
        };
        let f = |x: &Tensor, fg: Option<&Tensor>| -> Result<Tensor> {
            // No texture reads as the zeros it used to be drawn as.
            let texture = match &texture {
                Some(t) => t.clone(),
                None => x.zeros_like()?,
            };
            Ok(match fg {
                Some(m) => {
                    let background = m.affine(-1.0, 1.0)?.to_dtype(x.dtype())?;
                    x.broadcast_mul(&gain)?.add(&texture.broadcast_add(&offset)?.broadcast_mul(&background)?)?
                }
                None => x.broadcast_mul(&gain)?.broadcast_add(&offset)?.add(&texture)?,
            })
        };
        let x_next = x_next.map(|x| f(&x, fg.as_ref().map(|m| &m.1))).transpose()?;
        Ok((f(&x_t, fg.as_ref().map(|m| &m.0))?, x_next, pair_warps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn augment_changes_the_look_not_the_motion_and_shards_like_the_whole_batch() -> Result<()> {
        let dev = Device::Cpu;
        let x_t = Tensor::randn(0f32, 0.5, (4, 3, 9, 7), &dev)?;
        let x_next = Tensor::randn(0f32, 0.5, (4, 3, 9, 7), &dev)?;
        let aug = Augment { color_jitter: 0.3, static_noise: 0.1, grating: 0.2, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (a, b, _) = aug.apply(&x_t, &x_next, None, &mut rng, 4, 0..4)?;
        // Same gain on both frames: the change between them is only scaled, per channel.
        let d0 = (&x_next - &x_t)?;
        let d1 = (&b - &a)?;
        let g = ((&d1 * &d0)?.sum_keepdim((2, 3))? / (&d0 * &d0)?.sum_keepdim((2, 3))?)?;
        let resid = (&d1 - d0.broadcast_mul(&g)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(resid < 1e-5, "{resid}");
        for gain in g.flatten_all()?.to_vec1::<f32>()? {
            assert!((0.69..=1.31).contains(&gain), "{gain}");
        }
        assert!((&a - &x_t)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.05);
        // Rows 2..4 of a two-rank split see exactly rows 2..4 of the whole batch.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (a2, _, _) = aug.apply(&x_t.narrow(0, 2, 2)?, &x_next.narrow(0, 2, 2)?, None, &mut rng, 4, 2..4)?;
        let diff = (a2 - a.narrow(0, 2, 2)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        assert!(aug.apply(&x_t, &x_next, None, &mut rng, 4, 0..2).is_err());
        let off = Augment::default();
        let (a3, _, _) = off.apply(&x_t, &x_next, None, &mut rng, 4, 0..4)?;
        assert_eq!((a3 - &x_t)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn background_texture_shows_where_the_foreground_has_left_and_nowhere_else_changes_the_motion() -> Result<()> {
        let dev = Device::Cpu;
        let x_t = Tensor::randn(0f32, 0.5, (2, 3, 8, 8), &dev)?;
        // Foreground: rows 0..3 in x_t (the gripper), nowhere in x_{t+1} (it has left the frame);
        // x_{t+1} shows something else there.
        let rows = Tensor::ones((1, 1, 3, 8), DType::F32, &dev)?.pad_with_zeros(2, 0, 5)?;
        let x_next = (&x_t + (Tensor::randn(0f32, 0.5, (2, 3, 8, 8), &dev)?.broadcast_mul(&rows)?))?;
        let (m_t, m_next) =
            (rows.broadcast_as((2, 1, 8, 8))?.contiguous()?, Tensor::zeros((2, 1, 8, 8), DType::F32, &dev)?);
        let aug =
            Augment { color_jitter: 0.2, grating: 0.3, static_noise: 0.1, background_only: true, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (a, b, _) = aug.apply(&x_t, &x_next, Some((&m_t, &m_next)), &mut rng, 2, 0..2)?;
        let d0 = (&x_next - &x_t)?;
        let d1 = (&b - &a)?;
        // Where both frames are background the change is only the gain's scaling of the old change
        // (0 here); where x_t was foreground the new background texture shows in the change.
        let (a_top, x_top) = (a.narrow(2, 0, 3)?, x_t.narrow(2, 0, 3)?);
        let gain = ((&a_top * &x_top)?.sum_keepdim((2, 3))? / x_top.sqr()?.sum_keepdim((2, 3))?)?;
        let bottom = (d1.narrow(2, 3, 5)? - d0.narrow(2, 3, 5)?.broadcast_mul(&gain)?)?;
        assert!(bottom.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        let top = (d1.narrow(2, 0, 3)? - d0.narrow(2, 0, 3)?.broadcast_mul(&gain)?)?;
        assert!(top.abs()?.max_all()?.to_scalar::<f32>()? > 0.05);
        // The foreground of x_t is only scaled.
        let fg = (a.narrow(2, 0, 3)? - x_t.narrow(2, 0, 3)?.broadcast_mul(&gain)?)?;
        assert!(fg.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        assert!(aug.apply(&x_t, &x_next, None, &mut rng, 2, 0..2).is_err());
        Ok(())
    }

    #[test]
    fn single_frames_are_augmented_as_the_first_frame_of_a_pair() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 0.5, (4, 3, 9, 7), &dev)?;
        let aug = Augment {
            color_jitter: 0.2,
            static_noise: 0.1,
            grating: 0.2,
            shift: 2,
            zoom: 0.1,
            rotate: 0.1,
            background_only: false,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (pair, _, pair_warps) = aug.apply(&x.narrow(0, 1, 2)?, &x.narrow(0, 1, 2)?, None, &mut rng, 4, 1..3)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (single, warps) = aug.apply_frames(&x.narrow(0, 1, 2)?, &mut rng, 4, 1..3)?;
        assert_eq!((pair - &single)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert_eq!(pair_warps, warps);
        assert!((single - x.narrow(0, 1, 2)?)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.05);
        Ok(())
    }

    #[test]
    fn a_displacement_follows_the_zoom_and_turn_of_its_pair() -> Result<()> {
        let dev = Device::Cpu;
        // A soft blob at (12, 14) in x_t and moved by (6, -4) in x_next, on 32 x 32, 1 channel.
        let blob = |cx: f32, cy: f32| -> Vec<f32> {
            (0..32 * 32)
                .map(|i| {
                    let (x, y) = ((i % 32) as f32, (i / 32) as f32);
                    (-((x - cx).powi(2) + (y - cy).powi(2)) / 4.0).exp()
                })
                .collect()
        };
        let centre = |t: &Tensor| -> Result<(f32, f32)> {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            let m: f32 = v.iter().sum();
            let mx: f32 = v.iter().enumerate().map(|(i, p)| p * (i % 32) as f32).sum();
            let my: f32 = v.iter().enumerate().map(|(i, p)| p * (i / 32) as f32).sum();
            Ok((mx / m, my / m))
        };
        let x_t = Tensor::from_vec(blob(12.0, 14.0), (1, 1, 32, 32), &dev)?;
        let x_next = Tensor::from_vec(blob(18.0, 10.0), (1, 1, 32, 32), &dev)?;
        let aug = Augment { zoom: 0.2, rotate: 0.3, shift: 2, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut turned = 0;
        for _ in 0..6 {
            let (a, b, w) = aug.apply(&x_t, &x_next, None, &mut rng, 1, 0..1)?;
            let ((ax, ay), (bx, by)) = (centre(&a)?, centre(&b)?);
            let (dx, dy) = w[0].displacement(6.0, -4.0);
            assert!(
                (bx - ax - dx).abs() < 0.1 && (by - ay - dy).abs() < 0.1,
                "{w:?}: {} {} vs {dx} {dy}",
                bx - ax,
                by - ay
            );
            turned += (w[0].angle.abs() > 0.05) as usize;
        }
        assert!(turned > 0, "no draw turned the pair enough for the check to mean anything");
        // Without a zoom or a turn, the displacement is as it was, bit for bit.
        let (_, _, w) =
            Augment { shift: 2, grating: 0.1, ..Default::default() }.apply(&x_t, &x_next, None, &mut rng, 1, 0..1)?;
        assert_eq!(w[0].displacement(6.0, -4.0), (6.0, -4.0));
        Ok(())
    }

    #[test]
    fn the_median_background_ignores_what_passes_by() -> Result<()> {
        let dev = Device::Cpu;
        let mut data = CraftData { episodes: 2, play_frames: 12, ..Default::default() };
        data.world.image_size = 64;
        let t = Transitions::render(&data, Split::Train, &dev)?;
        let bg = t.backgrounds()?;
        assert_eq!(bg.dims4()?, (2, 3, t.frames.dim(2)?, t.frames.dim(3)?));
        let ids: Vec<usize> = (0..t.len()).collect();
        let (x_t, x_next) = t.pairs(&ids)?;
        let (m_t, m_next) = t.foreground(&bg, &ids, (&x_t, &x_next), FOREGROUND_THRESHOLD)?;
        // Every frame has some foreground (the gripper), and most of every frame is background.
        let frac = m_t.mean((1, 2, 3))?.to_vec1::<f32>()?;
        assert!(frac.iter().all(|&f| f > 0.0 && f < 0.3), "{frac:?}");
        // Where the change between the frames is large, one of the two frames is foreground.
        let moving = (&x_next - &x_t)?.abs()?.max_keepdim(1)?.gt(0.5)?.to_dtype(DType::F32)?;
        let unexplained =
            (moving * (m_t.affine(-1.0, 1.0)? * m_next.affine(-1.0, 1.0)?)?)?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(unexplained, 0.0);
        Ok(())
    }

    #[test]
    fn zoom_and_rotation_warp_about_the_centre_and_alike_for_both_frames() -> Result<()> {
        // A ramp f(x, y) = x on a 5 x 5 image (centre (2, 2)).
        let ramp: Vec<f32> = (0..25).map(|i| (i % 5) as f32).collect();
        let near = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        // Zoom 2: the slope halves about the centre.
        let z = Warp { dx: 0.0, dy: 0.0, scale: 2.0, angle: 0.0 }.apply(&ramp, 5, 5);
        let want: Vec<f32> = (0..25).map(|i| ((i % 5) as f32 - 2.0) / 2.0 + 2.0).collect();
        assert!(near(&z, &want), "{z:?}");
        // A quarter turn maps the x ramp onto a y ramp (clockwise on screen, y down).
        let r = Warp { dx: 0.0, dy: 0.0, scale: 1.0, angle: std::f32::consts::FRAC_PI_2 }.apply(&ramp, 5, 5);
        let want: Vec<f32> = (0..25).map(|i| (i / 5) as f32).collect();
        assert!(near(&r, &want), "{r:?}");
        // Whole-pixel shifts read exactly one pixel each.
        let s = Warp { dx: 1.0, dy: 0.0, scale: 1.0, angle: 0.0 }.apply(&ramp, 5, 5);
        assert_eq!(s[..5], [0.0, 0.0, 1.0, 2.0, 3.0]);

        let dev = Device::Cpu;
        let x_t = Tensor::randn(0f32, 1.0, (6, 3, 10, 9), &dev)?;
        let aug = Augment { zoom: 0.1, rotate: 0.05, shift: 1, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        // The same frame twice comes out the same twice; a frame plus a constant, plus the constant.
        let (a, b, _) = aug.apply(&x_t, &(&x_t + 0.5)?, None, &mut rng, 6, 0..6)?;
        assert!(((&b - &a)? - 0.5)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        assert!((&a - &x_t)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (a2, _, _) = aug.apply(&x_t.narrow(0, 2, 3)?, &x_t.narrow(0, 2, 3)?, None, &mut rng, 6, 2..5)?;
        assert_eq!((a2 - a.narrow(0, 2, 3)?)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn a_whole_pixel_shift_gathers_what_the_bilinear_read_gives() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (c, h, w) = (3, 7, 11);
        let x: Vec<f32> = (0..c * h * w).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let t = Tensor::from_vec(x.clone(), (1, c, h, w), &Device::Cpu)?;
        for (dx, dy) in [(0, 0), (1, -2), (-4, 4), (12, -9), (-11, 8)] {
            let warp = Warp { dx: dx as f32, dy: dy as f32, scale: 1.0, angle: 0.0 };
            let gathered = crate::clip::shift_images(&t, &[(dx, dy)])?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(gathered, warp.apply(&x, h, w), "shift ({dx}, {dy})");
        }
        Ok(())
    }

    #[test]
    fn shift_moves_both_frames_of_a_pair_by_one_offset_and_shards_like_the_whole_batch() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w, s) = (9usize, 7usize, 2usize);
        let x_t = Tensor::randn(0f32, 1.0, (6, 3, h, w), &dev)?;
        let x_next = Tensor::randn(0f32, 1.0, (6, 3, h, w), &dev)?;
        let aug = Augment { shift: s, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (a, b, _) = aug.apply(&x_t, &x_next, None, &mut rng, 6, 0..6)?;
        // Each row of both outputs is its input read at (y - dy, x - dx), clamped to the border, for
        // one (dx, dy) per pair; exactly one offset fits, and it is the same for x_t and x_{t+1}.
        let moved = |x: &[Vec<Vec<f32>>], dx: i64, dy: i64| -> Vec<f32> {
            let mut out = Vec::new();
            for plane in x {
                for y in 0..h as i64 {
                    for xx in 0..w as i64 {
                        let (sy, sx) = ((y - dy).clamp(0, h as i64 - 1), (xx - dx).clamp(0, w as i64 - 1));
                        out.push(plane[sy as usize][sx as usize]);
                    }
                }
            }
            out
        };
        let mut used = std::collections::HashSet::new();
        for r in 0..6 {
            let fit = |inp: &Tensor, out: &Tensor| -> Result<Vec<(i64, i64)>> {
                let planes = inp.get(r)?.to_vec3::<f32>()?;
                let got = out.get(r)?.flatten_all()?.to_vec1::<f32>()?;
                let mut fits = Vec::new();
                for dy in -(s as i64)..=s as i64 {
                    for dx in -(s as i64)..=s as i64 {
                        if moved(&planes, dx, dy) == got {
                            fits.push((dx, dy));
                        }
                    }
                }
                Ok(fits)
            };
            let (ft, fnext) = (fit(&x_t, &a)?, fit(&x_next, &b)?);
            assert_eq!(ft.len(), 1, "row {r}: {ft:?}");
            assert_eq!(ft, fnext, "row {r}");
            used.insert(ft[0]);
        }
        assert!(used.len() > 1, "six pairs all moved by {used:?}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (a2, _, _) = aug.apply(&x_t.narrow(0, 4, 2)?, &x_next.narrow(0, 4, 2)?, None, &mut rng, 6, 4..6)?;
        assert_eq!((a2 - a.narrow(0, 4, 2)?)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}

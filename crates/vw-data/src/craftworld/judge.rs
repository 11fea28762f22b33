//! The pixel judge: is each recipe block in its cell? For every placement it samples the inner part of the
//! target cell (through the scene's camera), classifies each sample by hue to the nearest block colour,
//! and accepts the step when enough samples show the right block. Hue, not brightness, decides, so tinted
//! light and speckled textures do not matter; only the cell centre is read, so blur does not either.

use super::recipe::{Placement, Recipe, NUM_BLOCKS, PALETTE_HSV};
use super::scene::{cell_top_left, rgb_to_hsv, Camera, CELL};
use super::Episode;
use image::RgbImage;

/// Samples per side of the inspected square.
const GRID: usize = 5;

/// Reads frames and says which recipe steps are done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judge {
    /// The scene's viewpoint (a generated video keeps the viewpoint of its first frame).
    pub camera: Camera,
    /// Half side of the inspected square, in cells, around the cell centre.
    pub inner_half: f32,
    /// The inspected square may move this much (in cells) in each direction to tolerate misplacement.
    pub slack: f32,
    /// Fraction of samples that must show the block's colour.
    pub min_fraction: f32,
    /// Samples less saturated than this are background (table, wall, hand are all below 0.25).
    pub min_saturation: f32,
    /// Samples darker than this are background (hue is unreliable in the dark).
    pub min_value: f32,
}

impl Default for Judge {
    fn default() -> Self {
        Self::new(Camera::default())
    }
}

impl Judge {
    /// A judge for scenes seen through `camera`, with the documented tolerances.
    pub fn new(camera: Camera) -> Self {
        Self { camera, inner_half: 0.3, slack: 0.15, min_fraction: 0.5, min_saturation: 0.3, min_value: 0.15 }
    }

    /// A judge for the scene of `episode` (its camera).
    pub fn for_episode(episode: &Episode) -> Self {
        Self::new(episode.camera())
    }

    /// Fraction (0..=1) of the target cell of `placement` that shows its block, best over the slack offsets.
    pub fn placement_score(&self, frame: &RgbImage, placement: &Placement) -> f32 {
        let (u0, v0) = cell_top_left(placement.cell);
        let (cu, cv) = (u0 + 0.5 * CELL, v0 + 0.5 * CELL);
        let mut best = 0.0f32;
        for oy in [-1.0f32, 0.0, 1.0] {
            for ox in [-1.0f32, 0.0, 1.0] {
                let (ou, ov) = (cu + ox * self.slack * CELL, cv + oy * self.slack * CELL);
                let mut hits = 0usize;
                for j in 0..GRID {
                    for i in 0..GRID {
                        let a = (i as f32 + 0.5) / GRID as f32 * 2.0 - 1.0;
                        let b = (j as f32 + 0.5) / GRID as f32 * 2.0 - 1.0;
                        let (u, v) = (ou + a * self.inner_half * CELL, ov + b * self.inner_half * CELL);
                        let (x, y) = self.camera.project(u, v);
                        if let Some(rgb) = sample(frame, x, y) {
                            if self.classify(rgb) == Some(placement.block) {
                                hits += 1;
                            }
                        }
                    }
                }
                best = best.max(hits as f32 / (GRID * GRID) as f32);
            }
        }
        best
    }

    /// Which block colour a pixel shows, if any.
    pub fn classify(&self, rgb: [f32; 3]) -> Option<usize> {
        let (h, s, v) = rgb_to_hsv(rgb);
        if s < self.min_saturation || v < self.min_value {
            return None;
        }
        (0..NUM_BLOCKS).min_by(|&a, &b| hue_dist(h, PALETTE_HSV[a].0).total_cmp(&hue_dist(h, PALETTE_HSV[b].0)))
    }

    /// Whether each placement of `recipe`, judged on its own, is visible in `frame`.
    pub fn placements_present(&self, frame: &RgbImage, recipe: &Recipe) -> Vec<bool> {
        recipe.placements.iter().map(|p| self.placement_score(frame, p) >= self.min_fraction).collect()
    }

    /// Number of leading recipe steps complete in `frame`: a step counts only if every step before it does.
    pub fn steps_completed(&self, frame: &RgbImage, recipe: &Recipe) -> usize {
        recipe.placements.iter().take_while(|p| self.placement_score(frame, p) >= self.min_fraction).count()
    }

    /// Step-wise success: entry `k` is whether `frames_at_step_ends[k]` shows steps `0..=k` complete.
    /// Missing frames (fewer than the recipe's steps) count as failures.
    pub fn step_success(&self, frames_at_step_ends: &[RgbImage], recipe: &Recipe) -> Vec<bool> {
        (0..recipe.num_steps())
            .map(|k| frames_at_step_ends.get(k).is_some_and(|f| self.steps_completed(f, recipe) > k))
            .collect()
    }
}

fn hue_dist(a: f32, b: f32) -> f32 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

/// Bilinear sample of `frame` at image coordinates (x, y) in image-side units; `None` outside the image.
fn sample(frame: &RgbImage, x: f32, y: f32) -> Option<[f32; 3]> {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    let (px, py) = (x * w - 0.5, y * h - 0.5);
    if px < -0.5 || py < -0.5 || px > w - 0.5 || py > h - 0.5 {
        return None;
    }
    let (px, py) = (px.clamp(0.0, w - 1.0), py.clamp(0.0, h - 1.0));
    let (x0, y0) = (px.floor() as u32, py.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(frame.width() - 1), (y0 + 1).min(frame.height() - 1));
    let (tx, ty) = (px - x0 as f32, py - y0 as f32);
    let p = |x: u32, y: u32| frame.get_pixel(x, y).0.map(|c| c as f32 / 255.0);
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    Some([0, 1, 2].map(|k| {
        let top = a[k] + (b[k] - a[k]) * tx;
        let bot = c[k] + (d[k] - c[k]) * tx;
        top + (bot - top) * ty
    }))
}

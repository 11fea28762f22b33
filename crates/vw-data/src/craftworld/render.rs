//! The renderer: every output pixel is 2×2 supersampled, each sample mapped back through the camera into
//! world units and shaded by testing the scene's few shapes front to back. No assets: all textures are
//! procedural noise and stripes.

use super::recipe::{BlockId, Recipe, PALETTE_HSV};
use super::scene::{
    hsv_to_rgb, Appearance, Distractor, SceneState, TableTexture, WallTexture, CARD, CARD_CELL, CELL, TABLE_V,
};
use image::{Rgb, RgbImage};

/// Half width of the gripper's palm.
const PALM_HALF: f32 = 0.062;
/// Height of the palm above the hand point.
const PALM_H: f32 = 0.022;
/// Width of a finger.
const FINGER_W: f32 = 0.014;
/// How far the fingers reach below the hand point.
const FINGER_LEN: f32 = 0.055;
/// Extra finger spread when the gripper is open.
const OPEN_SPREAD: f32 = 0.016;
/// Half width of the arm that holds the gripper from above.
const ARM_HALF: f32 = 0.012;

/// Draws one frame of a scene at `size`×`size` pixels (builds a [`Renderer`]; use one to draw many frames).
pub fn render(state: &SceneState, recipe: &Recipe, look: &Appearance, size: usize) -> RgbImage {
    Renderer::new(recipe, look, size).render(state)
}

/// Draws frames of one scene. What never moves (wall, table, card, distractors, light) is shaded once
/// per sample at construction; each frame only shades the hand and the blocks.
#[derive(Debug, Clone)]
pub struct Renderer {
    look: Appearance,
    size: usize,
    /// 4 samples per pixel, row-major pixels, each with its world point, light and lit static colour.
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    u: f32,
    v: f32,
    light: f32,
    lit: [f32; 3],
}

impl Renderer {
    /// Precomputes the static part of the scene of `recipe` seen as `look`, at `size`×`size` pixels.
    pub fn new(recipe: &Recipe, look: &Appearance, size: usize) -> Self {
        let inv = 1.0 / size as f32;
        let mut samples = Vec::with_capacity(size * size * 4);
        for y in 0..size {
            for x in 0..size {
                for sy in 0..2 {
                    for sx in 0..2 {
                        let px = (x as f32 + 0.25 + 0.5 * sx as f32) * inv;
                        let py = (y as f32 + 0.25 + 0.5 * sy as f32) * inv;
                        let (u, v) = look.camera.unproject(px, py);
                        let light = light_at(look, u, v);
                        let lit = apply_light(static_unlit(recipe, look, u, v), look, light);
                        samples.push(Sample { u, v, light, lit });
                    }
                }
            }
        }
        Self { look: look.clone(), size, samples }
    }

    /// Draws `state`.
    pub fn render(&self, state: &SceneState) -> RgbImage {
        let size = self.size as u32;
        let mut img = RgbImage::new(size, size);
        // The held block is drawn in front of the others (it is carried in front of the structure).
        let mut blocks: Vec<(BlockId, f32, f32)> = state.blocks.clone();
        if let Some(h) = state.held {
            if let Some(i) = blocks.iter().position(|b| b.0 == h) {
                let b = blocks.remove(i);
                blocks.insert(0, b);
            }
        }
        let shader = Shader { state, blocks: &blocks, look: &self.look };
        for (i, pixel) in self.samples.chunks_exact(4).enumerate() {
            let mut acc = [0.0f32; 3];
            for s in pixel {
                let c = match shader.dynamic(s.u, s.v) {
                    Some(base) => apply_light(base, &self.look, s.light),
                    None => s.lit,
                };
                for (a, c) in acc.iter_mut().zip(c) {
                    *a += c;
                }
            }
            let px = acc.map(|c| (c * 0.25 * 255.0).round().clamp(0.0, 255.0) as u8);
            img.put_pixel(i as u32 % size, i as u32 / size, Rgb(px));
        }
        img
    }
}

/// Brightness at world point (u, v): a top-to-bottom falloff and the spotlight.
fn light_at(look: &Appearance, u: f32, v: f32) -> f32 {
    let (su, sv, strength) = look.spot;
    let d2 = (u - su).powi(2) + (v - sv).powi(2);
    (1.04 - 0.08 * v) * (1.0 + strength * (-d2 / 0.08).exp())
}

fn apply_light(base: [f32; 3], look: &Appearance, light: f32) -> [f32; 3] {
    [0, 1, 2].map(|k| (base[k] * look.light_gain[k] * light).clamp(0.0, 1.0))
}

/// Unlit colour of what never moves: distractors, then the card, then wall and table.
fn static_unlit(recipe: &Recipe, look: &Appearance, u: f32, v: f32) -> [f32; 3] {
    for d in &look.distractors {
        if let Some(c) = distractor(d, u, v) {
            return c;
        }
    }
    if let Some(c) = card(recipe, u, v) {
        return c;
    }
    background(look, u, v)
}

struct Shader<'a> {
    state: &'a SceneState,
    blocks: &'a [(BlockId, f32, f32)],
    look: &'a Appearance,
}

impl Shader<'_> {
    /// Unlit colour of the hand or a block at (u, v), if one is there.
    fn dynamic(&self, u: f32, v: f32) -> Option<[f32; 3]> {
        if let Some(c) = self.hand(u, v) {
            return Some(c);
        }
        for &(id, bu, bv) in self.blocks {
            if u >= bu && u < bu + CELL && v >= bv && v < bv + CELL {
                return Some(block_rgb(id, (u - bu) / CELL, (v - bv) / CELL, self.look));
            }
        }
        None
    }

    fn hand(&self, u: f32, v: f32) -> Option<[f32; 3]> {
        let (hx, hy) = self.state.hand;
        let metal = [0.36, 0.37, 0.40];
        let dx = u - hx;
        // Palm and arm.
        if dx.abs() <= PALM_HALF && v >= hy - PALM_H && v < hy {
            let edge = (v - (hy - PALM_H)).min(hy - v) < 0.004;
            return Some(if edge { [0.22, 0.22, 0.24] } else { metal });
        }
        if dx.abs() <= ARM_HALF && v < hy - PALM_H {
            return Some([0.55, 0.55, 0.57]);
        }
        // Fingers: hug a block's sides when closed.
        let inner = CELL * 0.5 + if self.state.closed { 0.0 } else { OPEN_SPREAD };
        if v >= hy - 0.002 && v < hy + FINGER_LEN && dx.abs() >= inner && dx.abs() < inner + FINGER_W {
            return Some([0.28, 0.29, 0.31]);
        }
        None
    }
}

/// The blueprint card: a white card with the target structure in the blocks' colours.
fn card(recipe: &Recipe, u: f32, v: f32) -> Option<[f32; 3]> {
    let (u0, v0, u1, v1) = CARD;
    if u < u0 || u >= u1 || v < v0 || v >= v1 {
        return None;
    }
    if (u - u0).min(u1 - u).min(v - v0).min(v1 - v) < 0.006 {
        return Some([0.25, 0.25, 0.27]);
    }
    // The target structure, bottom-centred on the card, above a thin ground line.
    let w = recipe.width_cells() * CARD_CELL;
    let left = 0.5 * (u0 + u1) - 0.5 * w;
    let base = v1 - 0.03;
    if v >= base && v < base + 0.006 && u >= left - 0.01 && u < left + w + 0.01 {
        return Some([0.3, 0.3, 0.3]);
    }
    for p in &recipe.placements {
        let cu = left + p.cell.col * CARD_CELL;
        let cv = base - (p.cell.level as f32 + 1.0) * CARD_CELL;
        if u >= cu && u < cu + CARD_CELL && v >= cv && v < cv + CARD_CELL {
            let a = (u - cu) / CARD_CELL;
            let b = (v - cv) / CARD_CELL;
            let (h, s, val) = PALETTE_HSV[p.block];
            let outline = a.min(1.0 - a).min(b).min(1.0 - b) < 0.1;
            return Some(hsv_to_rgb(h, s, if outline { val * 0.5 } else { val }));
        }
    }
    Some([0.95, 0.94, 0.90])
}

/// A block's face at local coordinates (a, b) in [0,1)²: outline, face and glyph in one hue.
fn block_rgb(id: BlockId, a: f32, b: f32, look: &Appearance) -> [f32; 3] {
    let (h, s, v) = PALETTE_HSV[id];
    let edge = a.min(1.0 - a).min(b).min(1.0 - b);
    let mut k = if edge < 0.07 { 0.55 } else { 1.03 - 0.06 * b };
    if edge >= 0.07 && glyph(id, a - 0.5, b - 0.5) {
        k = 0.62;
    }
    if look.speckled_blocks {
        k *= 0.86 + 0.22 * value_noise(a * 7.0 + id as f32 * 13.0, b * 7.0, look.texture_seed ^ 0x5bd1);
    }
    hsv_to_rgb(h, s, (v * k).min(1.0))
}

/// Whether local point (x, y), centred on the block, lies on the glyph of block `id`.
fn glyph(id: BlockId, x: f32, y: f32) -> bool {
    let (ax, ay) = (x.abs(), y.abs());
    let r = (x * x + y * y).sqrt();
    match id % 8 {
        0 => ax.max(ay) < 0.16,
        1 => r < 0.19,
        2 => ax + ay < 0.21,
        3 => ay < 0.07 && ax < 0.26,
        4 => ax < 0.07 && ay < 0.26,
        5 => (ax < 0.06 && ay < 0.23) || (ay < 0.06 && ax < 0.23),
        6 => y > -0.18 && y < 0.16 && ax < (y + 0.18) * 0.65,
        _ => (0.12..0.21).contains(&r),
    }
}

fn distractor(d: &Distractor, u: f32, v: f32) -> Option<[f32; 3]> {
    match *d {
        Distractor::Mug { colour } => {
            if (0.905..0.962).contains(&u) && (0.77..TABLE_V).contains(&v) {
                return Some(if v < 0.776 { colour.map(|c| c * 0.6) } else { colour });
            }
            let r = ((u - 0.962).powi(2) + (v - 0.803).powi(2)).sqrt();
            (u > 0.962 && (0.013..0.022).contains(&r)).then_some(colour)
        }
        Distractor::Clock { colour } => {
            let (du, dv) = (u - 0.82, v - 0.15);
            let r = (du * du + dv * dv).sqrt();
            if r >= 0.065 {
                None
            } else if r >= 0.052 {
                Some(colour)
            } else if (du.abs() < 0.004 && dv < 0.0 && dv > -0.04) || (dv.abs() < 0.004 && du > 0.0 && du < 0.03) {
                Some([0.1, 0.1, 0.1])
            } else {
                Some([0.93, 0.93, 0.9])
            }
        }
        Distractor::Pencil { colour } => {
            if (0.905..0.918).contains(&v) {
                if (0.56..0.82).contains(&u) {
                    return Some(colour);
                }
                let tip = (u - 0.82) / 0.025;
                if (0.0..1.0).contains(&tip) && (v - 0.9115).abs() < 0.0065 * (1.0 - tip) {
                    return Some([0.85, 0.75, 0.55]);
                }
            }
            None
        }
        Distractor::Ball { colour } => {
            let r = ((u - 0.4825).powi(2) + (v - (TABLE_V - 0.025)).powi(2)).sqrt();
            (r < 0.025).then(|| colour.map(|c| c * (1.1 - 10.0 * r).min(1.0)))
        }
    }
}

/// Wall above the table line, table below it.
fn background(look: &Appearance, u: f32, v: f32) -> [f32; 3] {
    let seed = look.texture_seed;
    if v < TABLE_V {
        let k = match look.wall {
            WallTexture::Plain => 0.97 + 0.06 * value_noise(u * 3.0, v * 3.0, seed),
            WallTexture::Stripes => {
                if (u / 0.05).rem_euclid(1.0) < 0.5 {
                    1.0
                } else {
                    0.93
                }
            }
        };
        return look.wall_rgb.map(|c| c * k);
    }
    if v < TABLE_V + 0.015 {
        return look.table_rgb.map(|c| (c * 1.22).min(1.0));
    }
    let k = match look.table {
        TableTexture::Wood => {
            let grain = (v * 90.0 + 6.0 * value_noise(u * 4.0, v * 10.0, seed)).sin();
            (0.9 + 0.1 * grain) * (0.95 + 0.1 * value_noise(u * 20.0, v * 60.0, seed ^ 7))
        }
        TableTexture::Checker => {
            let parity = ((u / 0.06).floor() as i64 + (v / 0.06).floor() as i64).rem_euclid(2);
            if parity == 0 {
                1.0
            } else {
                0.8
            }
        }
        TableTexture::Marble => {
            let t = (u * 12.0 + v * 6.0 + 5.0 * value_noise(u * 5.0, v * 5.0, seed)).sin();
            1.0 - 0.35 * (-t * t * 30.0).exp()
        }
    };
    look.table_rgb.map(|c| c * k)
}

/// A hash of a lattice point to [0, 1).
fn hash(i: i32, j: i32, seed: u32) -> f32 {
    let mut h =
        (i as u32).wrapping_mul(0x8da6_b343) ^ (j as u32).wrapping_mul(0xd816_3841) ^ seed.wrapping_mul(0xcb1a_b31f);
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^= h >> 15;
    (h & 0x00ff_ffff) as f32 / 16_777_216.0
}

/// Smooth value noise in [0, 1): bilinear blend of lattice hashes with a smoothstep.
pub(crate) fn value_noise(x: f32, y: f32, seed: u32) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (i, j) = (fx as i32, fy as i32);
    let (tx, ty) = (x - fx, y - fy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = hash(i, j, seed) + sx * (hash(i + 1, j, seed) - hash(i, j, seed));
    let b = hash(i, j + 1, seed) + sx * (hash(i + 1, j + 1, seed) - hash(i, j + 1, seed));
    a + sy * (b - a)
}

//! The world's fixed layout (in world units, the unit square seen by an untransformed camera), the camera,
//! and the appearance of each split.

use super::recipe::{BlockId, Cell};
use super::Split;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Side of a block (and of a grid cell) in world units.
pub const CELL: f32 = 0.09;
/// Height of the table top in world units (v grows downward; blocks rest with their bottom here).
pub const TABLE_V: f32 = 0.84;
/// Left edge of column 0 of the build area.
pub const BUILD_U0: f32 = 0.52;
/// Left edge of source stack 0; stacks are `SOURCE_PITCH` apart.
pub const SOURCE_U0: f32 = 0.035;
/// Distance between the left edges of neighbouring source stacks.
pub const SOURCE_PITCH: f32 = 0.105;
/// Number of source stacks on the left of the table.
pub const SOURCE_STACKS: usize = 4;
/// Hand height while carrying: the held block clears every structure (at most 4 high) and the card.
pub const CARRY_V: f32 = 0.34;
/// Where the hand waits in the first frame.
pub const REST: (f32, f32) = (0.5, 0.12);
/// The blueprint card in the top-left corner: (u0, v0, u1, v1).
pub const CARD: (f32, f32, f32, f32) = (0.03, 0.03, 0.33, 0.31);
/// Side of a blueprint cell on the card.
pub const CARD_CELL: f32 = 0.055;

/// World position of the top-left corner of a build-area cell.
pub fn cell_top_left(cell: Cell) -> (f32, f32) {
    (BUILD_U0 + cell.col * CELL, TABLE_V - (cell.level as f32 + 1.0) * CELL)
}

/// World position of the top-left corner of a source slot (stack, level).
pub fn source_top_left(stack: usize, level: usize) -> (f32, f32) {
    (SOURCE_U0 + stack as f32 * SOURCE_PITCH, TABLE_V - (level as f32 + 1.0) * CELL)
}

/// A similarity transform from world coordinates to image coordinates (both in [0,1] units of the image
/// side): rotate by `rotation` and scale by `scale` about the centre, then shift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// Zoom about the image centre (1 = the training camera).
    pub scale: f32,
    /// Rotation in radians (positive turns the scene clockwise on screen, v pointing down).
    pub rotation: f32,
    /// Shift of the scene on screen, in image widths: (right, down).
    pub shift: (f32, f32),
}

impl Default for Camera {
    fn default() -> Self {
        Self { scale: 1.0, rotation: 0.0, shift: (0.0, 0.0) }
    }
}

impl Camera {
    /// World (u, v) to image (x, y), both in image-side units.
    pub fn project(&self, u: f32, v: f32) -> (f32, f32) {
        let (s, c) = self.rotation.sin_cos();
        let (du, dv) = (u - 0.5, v - 0.5);
        (0.5 + self.scale * (c * du - s * dv) + self.shift.0, 0.5 + self.scale * (s * du + c * dv) + self.shift.1)
    }

    /// Image (x, y) to world (u, v): the inverse of [`Camera::project`].
    pub fn unproject(&self, x: f32, y: f32) -> (f32, f32) {
        let (s, c) = self.rotation.sin_cos();
        let (dx, dy) = ((x - 0.5 - self.shift.0) / self.scale, (y - 0.5 - self.shift.1) / self.scale);
        (0.5 + c * dx + s * dy, 0.5 - s * dx + c * dy)
    }

    /// The held-out viewpoint family: zoom 0.92..1.04, rotation within ±3°, shift within ±0.03.
    fn sample_test(rng: &mut ChaCha8Rng) -> Self {
        Self {
            scale: rng.random_range(0.92..1.04),
            rotation: rng.random_range(-3.0f32..3.0).to_radians(),
            shift: (rng.random_range(-0.03..0.03), rng.random_range(-0.03..0.03)),
        }
    }
}

/// The texture of the table front.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableTexture {
    /// Grey-brown wood grain (training scenes).
    Wood,
    /// A two-tone checked cloth (held-out scenes).
    Checker,
    /// Light marble with dark veins (held-out scenes).
    Marble,
}

/// The texture of the wall behind the table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WallTexture {
    /// Plain painted wall with faint blotches (training scenes).
    Plain,
    /// Vertical wallpaper stripes (held-out scenes).
    Stripes,
}

/// An object that is not part of the task, drawn only in held-out scenes, never over the build area.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distractor {
    /// A mug on the right end of the table.
    Mug {
        /// RGB in [0, 1].
        colour: [f32; 3],
    },
    /// A round clock on the wall, top right.
    Clock {
        /// RGB of the rim in [0, 1].
        colour: [f32; 3],
    },
    /// A pencil lying along the table front.
    Pencil {
        /// RGB in [0, 1].
        colour: [f32; 3],
    },
    /// A ball in the gap between the source stacks and the build area.
    Ball {
        /// RGB in [0, 1].
        colour: [f32; 3],
    },
}

/// Everything about how a scene looks that does not change what happens in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appearance {
    /// The viewpoint.
    pub camera: Camera,
    /// Table front texture.
    pub table: TableTexture,
    /// Base RGB of the table.
    pub table_rgb: [f32; 3],
    /// Wall texture.
    pub wall: WallTexture,
    /// Base RGB of the wall.
    pub wall_rgb: [f32; 3],
    /// Per-channel light gain (tint and brightness).
    pub light_gain: [f32; 3],
    /// Centre of a soft spotlight in world units, and its strength (0 = none).
    pub spot: (f32, f32, f32),
    /// Whether block faces are speckled (held-out) instead of flat (training).
    pub speckled_blocks: bool,
    /// Objects that do not take part in the task.
    pub distractors: Vec<Distractor>,
    /// Seed of the procedural textures.
    pub texture_seed: u32,
}

impl Appearance {
    /// Draws the appearance of a scene of `split` from `seed`: training scenes vary only slightly;
    /// held-out scenes change table, wall, light, block texture and viewpoint, and add distractors.
    pub fn sample(split: Split, seed: u64) -> Self {
        // A stream separate from the task's, so the same seed gives the same task in both splits.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA99E_A4A0_C3C3_5A5A);
        let texture_seed = rng.random::<u32>();
        let jitter = |rng: &mut ChaCha8Rng, rgb: [f32; 3], amount: f32| {
            let k = 1.0 + rng.random_range(-amount..amount);
            rgb.map(|c| c * k)
        };
        match split {
            Split::Train => Self {
                camera: Camera::default(),
                table: TableTexture::Wood,
                table_rgb: jitter(&mut rng, [0.52, 0.47, 0.43], 0.05),
                wall: WallTexture::Plain,
                wall_rgb: jitter(&mut rng, [0.80, 0.78, 0.74], 0.04),
                light_gain: [1.0; 3].map(|g| g * (1.0 + rng.random_range(-0.04..0.04))),
                spot: (0.5, 0.3, 0.0),
                speckled_blocks: false,
                distractors: Vec::new(),
                texture_seed,
            },
            Split::TestAppearance => {
                let table = if rng.random::<bool>() { TableTexture::Checker } else { TableTexture::Marble };
                let table_rgb = match table {
                    TableTexture::Checker => [0.47, 0.48, 0.50],
                    _ => [0.74, 0.74, 0.71],
                };
                let warm = rng.random::<bool>();
                let gain: f32 = rng.random_range(0.85..1.05);
                let tint: [f32; 3] = if warm { [1.06, 1.0, 0.9] } else { [0.92, 0.98, 1.06] };
                let n = rng.random_range(1..=3usize);
                let mut kinds = [0usize, 1, 2, 3];
                for i in (1..kinds.len()).rev() {
                    kinds.swap(i, rng.random_range(0..=i));
                }
                let distractors = kinds[..n]
                    .iter()
                    .map(|&k| {
                        let colour = hsv_to_rgb(rng.random_range(0.0..360.0), rng.random_range(0.5..0.9), 0.8);
                        match k {
                            0 => Distractor::Mug { colour },
                            1 => Distractor::Clock { colour },
                            2 => Distractor::Pencil { colour },
                            _ => Distractor::Ball { colour },
                        }
                    })
                    .collect();
                Self {
                    camera: Camera::sample_test(&mut rng),
                    table,
                    table_rgb,
                    wall: WallTexture::Stripes,
                    wall_rgb: jitter(&mut rng, [0.68, 0.70, 0.72], 0.05),
                    light_gain: tint.map(|t| t * gain),
                    spot: (rng.random_range(0.2..0.8), rng.random_range(0.1..0.6), rng.random_range(0.08..0.2)),
                    speckled_blocks: true,
                    distractors,
                    texture_seed,
                }
            }
        }
    }
}

/// Where everything is in one frame: the state the renderer draws and the ground truth records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneState {
    /// Top-left corner of every block present, in world units: (block, u, v).
    pub blocks: Vec<(BlockId, f32, f32)>,
    /// Hand position: the middle of the palm's lower edge, where it touches a held block's top.
    pub hand: (f32, f32),
    /// Whether the gripper is closed.
    pub closed: bool,
    /// The block in the gripper, if any.
    pub held: Option<BlockId>,
}

/// HSV (hue in degrees, saturation, value in [0,1]) to RGB in [0,1].
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

/// RGB in [0,1] to (hue in degrees, saturation, value).
pub fn rgb_to_hsv(rgb: [f32; 3]) -> (f32, f32, f32) {
    let [r, g, b] = rgb;
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d <= 1e-6 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max <= 1e-6 { 0.0 } else { d / max };
    (h, s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_unproject_inverts_project() {
        let cam = Camera { scale: 0.95, rotation: 0.04, shift: (0.02, -0.01) };
        for &(u, v) in &[(0.1, 0.2), (0.9, 0.84), (0.5, 0.5)] {
            let (x, y) = cam.project(u, v);
            let (u2, v2) = cam.unproject(x, y);
            assert!((u - u2).abs() < 1e-5 && (v - v2).abs() < 1e-5);
        }
    }

    #[test]
    fn hsv_round_trip() {
        for &(h, s, v) in &[(0.0, 0.8, 0.9), (135.0, 0.75, 0.72), (315.0, 0.7, 0.92)] {
            let (h2, s2, v2) = rgb_to_hsv(hsv_to_rgb(h, s, v));
            assert!((h - h2).abs() < 1e-3 && (s - s2).abs() < 1e-4 && (v - v2).abs() < 1e-4);
        }
    }

    #[test]
    fn layout_keeps_source_build_and_card_apart() {
        let (last_source_right, _) = source_top_left(SOURCE_STACKS - 1, 0);
        assert!(last_source_right + CELL < BUILD_U0);
        // The highest build cell (level 3) stays below a carried block.
        let (_, top) = cell_top_left(Cell { col: 0.0, level: 3 });
        assert!(CARRY_V + CELL < top);
        assert!(CARD.3 < CARRY_V);
    }
}

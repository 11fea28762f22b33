//! Recipes: the structures CraftWorld asks for, each an ordered list of block placements into grid cells.

use serde::{Deserialize, Serialize};

/// Number of distinct blocks in CraftWorld; block `i` has colour `i` and glyph `i`.
pub const NUM_BLOCKS: usize = 8;

/// A block's identity: an index into [`PALETTE_HSV`] and the glyph list.
pub type BlockId = usize;

/// Colour of block `i` as (hue in degrees, saturation, value). Hues are 45° apart so the judge can tell
/// them apart under tinted light and blur; table, wall and hand are kept unsaturated for the same reason.
pub const PALETTE_HSV: [(f32, f32, f32); NUM_BLOCKS] = [
    (0.0, 0.85, 0.92),
    (45.0, 0.9, 0.95),
    (90.0, 0.8, 0.85),
    (135.0, 0.75, 0.72),
    (180.0, 0.8, 0.8),
    (225.0, 0.78, 0.92),
    (270.0, 0.62, 0.85),
    (315.0, 0.7, 0.92),
];

/// Human names of the block colours, in palette order.
pub const BLOCK_NAMES: [&str; NUM_BLOCKS] = ["red", "amber", "lime", "green", "cyan", "blue", "violet", "magenta"];

/// Names of the glyphs drawn on block `i`, in palette order.
pub const GLYPH_NAMES: [&str; NUM_BLOCKS] = ["square", "disc", "diamond", "hbar", "vbar", "cross", "triangle", "ring"];

/// A target cell of the build area: `col` in cells from the build anchor (halves allowed, for pyramids),
/// `level` in cells above the table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Column in cells from the left of the build area (0.5 steps allowed).
    pub col: f32,
    /// Height in cells above the table (0 = resting on the table).
    pub level: u32,
}

/// One step of a recipe: put `block` into `cell`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Which block to move.
    pub block: BlockId,
    /// Where it goes.
    pub cell: Cell,
}

/// The structures CraftWorld knows, each with a fixed build order (bottom-up, left to right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Structure {
    /// Three blocks stacked in one column.
    Tower3,
    /// Three blocks side by side on the table.
    Wall3,
    /// Four blocks stacked in one column.
    Tower4,
    /// Two towers of two, one cell apart.
    TwinTowers,
    /// A wall of three with a two-block post on its left end.
    LWall,
    /// Two posts spanned by a lintel of three.
    Arch,
    /// The letter T: a post of two carrying a bar of three.
    TShape,
    /// Three, two, one, each row centred on the one below.
    Pyramid,
    /// A staircase of three rising to the right.
    Stairs,
    /// Legs, a body of three, a neck and a head.
    Horse,
    /// Two posts of two and a deck of four on top.
    Bridge,
    /// Two rows of four.
    BigWall,
}

impl Structure {
    /// Every structure, in a fixed order.
    pub const ALL: [Structure; 12] = [
        Structure::Tower3,
        Structure::Wall3,
        Structure::Tower4,
        Structure::TwinTowers,
        Structure::LWall,
        Structure::Arch,
        Structure::TShape,
        Structure::Pyramid,
        Structure::Stairs,
        Structure::Horse,
        Structure::Bridge,
        Structure::BigWall,
    ];

    /// The cells of the structure, in build order: (column, level).
    pub fn cells(self) -> Vec<Cell> {
        let c: &[(f32, u32)] = match self {
            Structure::Tower3 => &[(0.0, 0), (0.0, 1), (0.0, 2)],
            Structure::Wall3 => &[(0.0, 0), (1.0, 0), (2.0, 0)],
            Structure::Tower4 => &[(0.0, 0), (0.0, 1), (0.0, 2), (0.0, 3)],
            Structure::TwinTowers => &[(0.0, 0), (0.0, 1), (2.0, 0), (2.0, 1)],
            Structure::LWall => &[(0.0, 0), (1.0, 0), (2.0, 0), (0.0, 1), (0.0, 2)],
            Structure::Arch => &[(0.0, 0), (2.0, 0), (0.0, 1), (1.0, 1), (2.0, 1)],
            Structure::TShape => &[(1.0, 0), (1.0, 1), (1.0, 2), (0.0, 2), (2.0, 2)],
            Structure::Pyramid => &[(0.0, 0), (1.0, 0), (2.0, 0), (0.5, 1), (1.5, 1), (1.0, 2)],
            Structure::Stairs => &[(0.0, 0), (1.0, 0), (2.0, 0), (1.0, 1), (2.0, 1), (2.0, 2)],
            Structure::Horse => &[(0.0, 0), (2.0, 0), (0.0, 1), (1.0, 1), (2.0, 1), (2.0, 2), (3.0, 2)],
            Structure::Bridge => &[(0.0, 0), (3.0, 0), (0.0, 1), (3.0, 1), (0.0, 2), (1.0, 2), (2.0, 2), (3.0, 2)],
            Structure::BigWall => &[(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 0), (0.0, 1), (1.0, 1), (2.0, 1), (3.0, 1)],
        };
        c.iter().map(|&(col, level)| Cell { col, level }).collect()
    }

    /// Number of placements (recipe steps).
    pub fn num_steps(self) -> usize {
        self.cells().len()
    }

    /// The kebab-case name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Structure::Tower3 => "tower3",
            Structure::Wall3 => "wall3",
            Structure::Tower4 => "tower4",
            Structure::TwinTowers => "twin-towers",
            Structure::LWall => "l-wall",
            Structure::Arch => "arch",
            Structure::TShape => "t-shape",
            Structure::Pyramid => "pyramid",
            Structure::Stairs => "stairs",
            Structure::Horse => "horse",
            Structure::Bridge => "bridge",
            Structure::BigWall => "big-wall",
        }
    }

    /// The canonical block of each step when colours are not shuffled: consecutive palette entries
    /// starting at an offset that depends on the structure, so the set of blocks hints at the recipe.
    pub fn canonical_blocks(self) -> Vec<BlockId> {
        let offset = Structure::ALL.iter().position(|&s| s == self).unwrap_or(0) * 3;
        (0..self.num_steps()).map(|k| (offset + k) % NUM_BLOCKS).collect()
    }
}

/// What to build: a structure and which block goes into each of its cells, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The target structure.
    pub structure: Structure,
    /// The ordered placements; step `k` is `placements[k]`.
    pub placements: Vec<Placement>,
}

impl Recipe {
    /// A recipe for `structure` with the given block per step; errors if the counts differ or a block repeats.
    pub fn new(structure: Structure, blocks: &[BlockId]) -> crate::Result<Self> {
        let cells = structure.cells();
        if blocks.len() != cells.len() {
            return Err(crate::Error::Invalid(format!(
                "recipe {}: {} steps but {} blocks given",
                structure.name(),
                cells.len(),
                blocks.len()
            )));
        }
        for (i, &b) in blocks.iter().enumerate() {
            if b >= NUM_BLOCKS || blocks[..i].contains(&b) {
                return Err(crate::Error::Invalid(format!(
                    "recipe {}: block {b} is out of range 0..{NUM_BLOCKS} or repeated",
                    structure.name()
                )));
            }
        }
        let placements = cells.into_iter().zip(blocks).map(|(cell, &block)| Placement { block, cell }).collect();
        Ok(Self { structure, placements })
    }

    /// The recipe with the structure's canonical blocks.
    pub fn canonical(structure: Structure) -> Self {
        let cells = structure.cells();
        let placements = cells
            .into_iter()
            .zip(structure.canonical_blocks())
            .map(|(cell, block)| Placement { block, cell })
            .collect();
        Self { structure, placements }
    }

    /// Number of steps (placements).
    pub fn num_steps(&self) -> usize {
        self.placements.len()
    }

    /// Width of the structure in cells.
    pub fn width_cells(&self) -> f32 {
        self.placements.iter().map(|p| p.cell.col + 1.0).fold(0.0, f32::max)
    }

    /// Height of the structure in cells.
    pub fn height_cells(&self) -> u32 {
        self.placements.iter().map(|p| p.cell.level + 1).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_3_to_8_unique_supported_cells() {
        for s in Structure::ALL {
            let cells = s.cells();
            assert!((3..=8).contains(&cells.len()), "{}", s.name());
            for (i, c) in cells.iter().enumerate() {
                assert!(!cells[..i].contains(c), "{} repeats a cell", s.name());
                // Each block rests on the table, on an earlier block, or beside an earlier block (a span).
                let supported = c.level == 0
                    || cells[..i].iter().any(|d| {
                        (d.level + 1 == c.level && (d.col - c.col).abs() < 1.0)
                            || (d.level == c.level && (d.col - c.col).abs() == 1.0)
                    });
                assert!(supported, "{} step {i} floats", s.name());
            }
            let r = Recipe::canonical(s);
            assert!(r.width_cells() <= 4.0 && r.height_cells() <= 4);
            assert!(Recipe::new(s, &s.canonical_blocks()).is_ok());
        }
    }

    #[test]
    fn recipe_new_rejects_bad_blocks() {
        assert!(Recipe::new(Structure::Tower3, &[0, 1]).is_err());
        assert!(Recipe::new(Structure::Tower3, &[0, 1, 1]).is_err());
        assert!(Recipe::new(Structure::Tower3, &[0, 1, 9]).is_err());
    }
}

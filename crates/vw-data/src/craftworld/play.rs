//! Play: the gripper moving blocks around with no task. Each move picks an uncovered block and a
//! random free column (a source stack or a build column), and goes there through an optional random
//! detour, every segment taking 1 to 3 frames. Unlike the expert, the next motion cannot be told from
//! the current frame (where the hand goes, how fast, whether it detours), which is what a latent
//! dynamics model needs its codes for. The physics is the expert's: the block rides under the palm
//! while the gripper is closed and rests where it is released.

use super::expert::{frame_truths, lerp, smoothstep, Phase};
use super::scene::{SceneState, CARRY_V, CELL, SOURCE_STACKS, TABLE_V};
use super::{source_top_left, Appearance, CraftConfig, Episode, Renderer, Split};
use crate::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Columns a block can be put in: the source stacks, then the build area's whole-cell columns.
fn columns() -> Vec<f32> {
    let mut out: Vec<f32> = (0..SOURCE_STACKS).map(|s| source_top_left(s, 0).0).collect();
    out.extend((0..5).map(|c| super::cell_top_left(super::Cell { col: c as f32, level: 0 }).0));
    out
}

fn same_column(a: f32, b: f32) -> bool {
    (a - b).abs() < CELL * 0.5
}

/// Blocks with nothing on top of them (and not held).
fn uncovered(state: &SceneState) -> Vec<usize> {
    (0..state.blocks.len())
        .filter(|&i| {
            let (id, u, v) = state.blocks[i];
            state.held != Some(id)
                && !state
                    .blocks
                    .iter()
                    .any(|&(o, ou, ov)| o != id && same_column(u, ou) && ov < v && ov > v - CELL * 1.5)
        })
        .collect()
}

/// The top-left corner a block dropped into the column at `u` comes to rest at.
fn landing(state: &SceneState, u: f32) -> (f32, f32) {
    let height = state.blocks.iter().filter(|&&(id, bu, _)| state.held != Some(id) && same_column(u, bu)).count();
    (u, TABLE_V - (height as f32 + 1.0) * CELL)
}

/// Appends the states of moving the hand along `points` (each segment 1-3 frames, eased).
fn travel(
    states: &mut Vec<SceneState>,
    parts: &mut Vec<(usize, usize, Phase)>,
    rng: &mut ChaCha8Rng,
    points: &[(f32, f32)],
    phase: Phase,
) {
    let mut from = states.last().expect("a first state").hand;
    for &to in points {
        let n = rng.random_range(1..=3);
        for j in 1..=n {
            let mut s = states.last().expect("a first state").clone();
            s.hand = lerp(from, to, smoothstep(j as f32 / n as f32));
            if let Some(held) = s.held {
                if let Some(b) = s.blocks.iter_mut().find(|b| b.0 == held) {
                    b.1 = s.hand.0 - CELL * 0.5;
                    b.2 = s.hand.1;
                }
            }
            states.push(s);
            parts.push((0, 0, phase));
        }
        from = to;
    }
}

/// Appends one frame in which only the gripper changes (closes on, or lets go of, the block below).
fn grip(states: &mut Vec<SceneState>, parts: &mut Vec<(usize, usize, Phase)>, block: Option<usize>, phase: Phase) {
    let mut s = states.last().expect("a first state").clone();
    s.closed = block.is_some();
    s.held = block;
    states.push(s);
    parts.push((0, 0, phase));
}

fn detour(rng: &mut ChaCha8Rng) -> Option<(f32, f32)> {
    rng.random_bool(0.5).then(|| (rng.random_range(0.08..0.92), rng.random_range(0.12..CARRY_V + 0.12)))
}

/// One play episode of exactly `frames` frames (>= 2) in the scene of `seed` (its layout and, through
/// `split`, its look; the blueprint card shows the seed's recipe, which play ignores). Every frame's
/// ground truth is filled as for the expert; `steps` is empty and every frame is step 0.
pub fn generate_play_episode(cfg: &CraftConfig, split: Split, seed: u64, frames: usize) -> Result<Episode> {
    if frames < 2 {
        return Err(crate::Error::Invalid(format!("a play episode needs at least 2 frames, not {frames}")));
    }
    let (recipe, initial) = super::sample_task(cfg, seed)?;
    let appearance = Appearance::sample(split, seed);
    // A stream of its own, so play and the expert of the same seed share the scene and nothing else.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut states = vec![initial];
    let mut parts = vec![(0usize, 0usize, Phase::Rest)];
    let cols = columns();
    while states.len() < frames {
        let now = states.last().expect("a first state").clone();
        let carry = rng.random_range(0.2..CARRY_V + 0.1);
        match now.held {
            None => {
                let free = uncovered(&now);
                if free.is_empty() {
                    break;
                }
                let (id, u, v) = now.blocks[free[rng.random_range(0..free.len())]];
                let grasp = (u + CELL * 0.5, v);
                let mut pts: Vec<(f32, f32)> = detour(&mut rng).into_iter().collect();
                pts.extend([(grasp.0, carry.min(v - CELL)), grasp]);
                travel(&mut states, &mut parts, &mut rng, &pts, Phase::Reach);
                grip(&mut states, &mut parts, Some(id), Phase::Descend);
            }
            Some(id) => {
                let here = now.blocks.iter().find(|b| b.0 == id).map_or(now.hand.0, |b| b.1);
                let targets: Vec<f32> = cols
                    .iter()
                    .copied()
                    .filter(|&c| !same_column(c, here) && landing(&now, c).1 > TABLE_V - 3.5 * CELL)
                    .collect();
                let u = targets[rng.random_range(0..targets.len())];
                let (tu, tv) = landing(&now, u);
                let place = (tu + CELL * 0.5, tv);
                let mut pts = vec![(now.hand.0, carry)];
                pts.extend(detour(&mut rng));
                pts.extend([(place.0, carry.min(tv - CELL)), place]);
                travel(&mut states, &mut parts, &mut rng, &pts, Phase::Carry);
                grip(&mut states, &mut parts, None, Phase::Lower);
                let up = (place.0, tv - rng.random_range(0.03..0.15));
                travel(&mut states, &mut parts, &mut rng, &[up], Phase::Retreat);
            }
        }
    }
    states.truncate(frames);
    parts.truncate(frames);
    while states.len() < frames {
        // Nothing left to pick up (cannot happen with the layouts sample_task draws): wait.
        states.push(states.last().expect("a first state").clone());
        parts.push((0, 0, Phase::Rest));
    }
    let truth = frame_truths(&states, &parts);
    let renderer = Renderer::new(&recipe, &appearance, cfg.image_size);
    let frames = states.iter().map(|s| renderer.render(s)).collect();
    Ok(Episode { seed, split, recipe, appearance, frames, truth, steps: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn play_moves_blocks_with_the_gripper_and_labels_every_action() {
        let cfg = CraftConfig { image_size: 32, ..CraftConfig::default() };
        let ep = generate_play_episode(&cfg, Split::Train, 3, 60).unwrap();
        assert_eq!(ep.frames.len(), 60);
        assert_eq!(ep.truth.len(), 60);
        // Every direction the labels can take shows up in a long enough episode, and both grips.
        let labels: std::collections::HashSet<usize> = ep.truth.iter().map(|t| t.action.label()).collect();
        assert!(labels.len() >= 8, "{labels:?}");
        assert!(ep.truth.iter().any(|t| t.scene.closed) && ep.truth.iter().any(|t| !t.scene.closed));
        for t in &ep.truth {
            // A held block is under the palm; a block that is not held rests on the table or a block.
            for &(id, u, v) in &t.scene.blocks {
                if t.scene.held == Some(id) {
                    assert!((u + CELL * 0.5 - t.scene.hand.0).abs() < 1e-5 && (v - t.scene.hand.1).abs() < 1e-5);
                } else {
                    let level = (TABLE_V - v) / CELL - 1.0;
                    assert!((level - level.round()).abs() < 1e-4, "block {id} floats at v {v}");
                }
            }
        }
        // Same seed, same episode; the expert of the seed has the same scene.
        let again = generate_play_episode(&cfg, Split::Train, 3, 60).unwrap();
        assert_eq!(again.frames, ep.frames);
        let expert = super::super::generate_episode(&cfg, Split::Train, 3).unwrap();
        assert_eq!(expert.frames[0], ep.frames[0]);
        assert!(generate_play_episode(&cfg, Split::Train, 3, 1).is_err());
    }
}

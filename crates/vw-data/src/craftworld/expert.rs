//! The scripted expert: for each recipe step it reaches above the block, descends, grasps, lifts, carries
//! at a safe height, lowers, releases and retreats, each segment eased with a smoothstep, and records the
//! ground truth of every frame.

use super::recipe::{BlockId, Recipe};
use super::scene::{cell_top_left, SceneState, CARRY_V, CELL, REST};
use serde::{Deserialize, Serialize};

/// Number of discrete action classes: 9 direction buckets × 2 gripper states.
pub const NUM_ACTION_CLASSES: usize = 18;

/// A hand displacement shorter than this (world units) is the "stay" direction bucket.
pub const STAY_EPS: f32 = 0.004;

/// Where the step's trajectory is at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The first frame: the hand waits, nothing has moved.
    Rest,
    /// Moving to above the block to pick.
    Reach,
    /// Going down onto the block (the gripper closes at the end).
    Descend,
    /// Lifting the block to the carry height.
    Lift,
    /// Carrying it above the target cell.
    Carry,
    /// Lowering it into the cell (the gripper opens at the end).
    Lower,
    /// Moving up and away from the placed block.
    Retreat,
}

/// Low-level action taken from this frame to the next: hand displacement in world units (v down) and the
/// gripper state in the next frame (1 = closed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Horizontal displacement (right positive), world units.
    pub dx: f32,
    /// Vertical displacement (down positive), world units.
    pub dy: f32,
    /// Gripper state after the action: 1 closed, 0 open.
    pub grip: u8,
}

impl Action {
    /// Direction bucket: 0 = stay (|d| < [`STAY_EPS`]), else 1 + the nearest of 8 screen directions
    /// counter-clockwise from right: 1 right, 2 up-right, 3 up, 4 up-left, 5 left, 6 down-left, 7 down, 8 down-right.
    pub fn direction_bucket(&self) -> usize {
        if self.dx.hypot(self.dy) < STAY_EPS {
            return 0;
        }
        let angle = (-self.dy).atan2(self.dx); // screen "up" is -v
        let sector = (angle / std::f32::consts::FRAC_PI_4).round() as i64;
        1 + sector.rem_euclid(8) as usize
    }

    /// The classification target: `direction_bucket * 2 + grip`, in `0..NUM_ACTION_CLASSES`.
    pub fn label(&self) -> usize {
        self.direction_bucket() * 2 + usize::from(self.grip)
    }
}

/// Everything true about one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameTruth {
    /// The recipe step this frame belongs to (frame 0 belongs to step 0).
    pub step: usize,
    /// How many placements are finished (block released in its cell) in this frame.
    pub steps_done: usize,
    /// Where in the step's motion the frame is.
    pub phase: Phase,
    /// Block poses, hand pose, gripper and held block.
    #[serde(flatten)]
    pub scene: SceneState,
    /// The action from this frame to the next (the last frame gets "stay" with an unchanged gripper).
    pub action: Action,
    /// `action.label()`, stored for readers of the JSON sidecar.
    pub action_label: usize,
}

/// The frames of one step, as inclusive frame indices into the episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpan {
    /// First frame of the step.
    pub start_frame: usize,
    /// Last frame of the step: the block has just been released in its cell.
    pub end_frame: usize,
}

/// Times (fractions of a step) at which the segments end: reach, descend, lift, carry, lower, retreat.
const SEGMENT_END: [f32; 6] = [0.25, 0.375, 0.5, 0.75, 0.875, 1.0];

pub(crate) fn smoothstep(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

pub(crate) fn lerp(a: (f32, f32), b: (f32, f32), t: f32) -> (f32, f32) {
    (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
}

/// The state `s` (in (0, 1]) of the way through step `k`, starting from `before` (the state at the end
/// of the previous step). Returns the state and its phase.
pub(crate) fn step_state(before: &SceneState, recipe: &Recipe, k: usize, s: f32) -> (SceneState, Phase) {
    let p = recipe.placements[k];
    let (su, sv) = block_pos(before, p.block).unwrap_or((REST.0 - CELL * 0.5, CARRY_V));
    let (tu, tv) = cell_top_left(p.cell);
    let grasp = (su + CELL * 0.5, sv);
    let above_source = (grasp.0, CARRY_V);
    let place = (tu + CELL * 0.5, tv);
    let above_target = (place.0, CARRY_V);
    let retreat = (place.0, tv - 0.04);
    let points = [before.hand, above_source, grasp, above_source, above_target, place, retreat];
    let phases = [Phase::Reach, Phase::Descend, Phase::Lift, Phase::Carry, Phase::Lower, Phase::Retreat];
    let seg = SEGMENT_END.iter().position(|&e| s <= e + 1e-6).unwrap_or(5);
    let start = if seg == 0 { 0.0 } else { SEGMENT_END[seg - 1] };
    let t = smoothstep((s - start) / (SEGMENT_END[seg] - start));
    let hand = lerp(points[seg], points[seg + 1], t);
    let closed = (SEGMENT_END[1] - 1e-6..SEGMENT_END[4] - 1e-6).contains(&s);
    let mut state = before.clone();
    state.hand = hand;
    state.closed = closed;
    state.held = closed.then_some(p.block);
    let block_at = if closed {
        (hand.0 - CELL * 0.5, hand.1)
    } else if s >= SEGMENT_END[4] - 1e-6 {
        (tu, tv)
    } else {
        (su, sv)
    };
    if let Some(b) = state.blocks.iter_mut().find(|b| b.0 == p.block) {
        b.1 = block_at.0;
        b.2 = block_at.1;
    }
    (state, phases[seg])
}

fn block_pos(state: &SceneState, id: BlockId) -> Option<(f32, f32)> {
    state.blocks.iter().find(|b| b.0 == id).map(|b| (b.1, b.2))
}

/// The whole expert rollout: the states of all `1 + K * frames_per_step` frames, their phases, steps
/// done and step spans.
pub(crate) fn rollout(
    initial: &SceneState,
    recipe: &Recipe,
    frames_per_step: usize,
) -> (Vec<SceneState>, Vec<FrameTruth>, Vec<StepSpan>) {
    let mut states = vec![initial.clone()];
    let mut truth_parts = vec![(0usize, 0usize, Phase::Rest)];
    let mut spans = Vec::with_capacity(recipe.num_steps());
    let mut before = initial.clone();
    for k in 0..recipe.num_steps() {
        let start = states.len();
        for j in 1..=frames_per_step {
            let s = j as f32 / frames_per_step as f32;
            let (state, phase) = step_state(&before, recipe, k, s);
            let done = k + usize::from(s >= SEGMENT_END[4] - 1e-6);
            states.push(state);
            truth_parts.push((k, done, phase));
        }
        spans.push(StepSpan { start_frame: start, end_frame: states.len() - 1 });
        before = states[states.len() - 1].clone();
    }
    let truth = frame_truths(&states, &truth_parts);
    (states, truth, spans)
}

/// The ground truth of every state of a trajectory: the action from each state to the next (the last
/// gets "stay" with an unchanged gripper) and its `(step, steps_done, phase)`.
pub(crate) fn frame_truths(states: &[SceneState], parts: &[(usize, usize, Phase)]) -> Vec<FrameTruth> {
    (0..states.len())
        .map(|t| {
            let next = states.get(t + 1).unwrap_or(&states[t]);
            let action = Action {
                dx: next.hand.0 - states[t].hand.0,
                dy: next.hand.1 - states[t].hand.1,
                grip: u8::from(next.closed),
            };
            let (step, steps_done, phase) = parts[t];
            FrameTruth { step, steps_done, phase, scene: states[t].clone(), action, action_label: action.label() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_buckets_follow_screen_directions() {
        let a = |dx, dy| Action { dx, dy, grip: 0 }.direction_bucket();
        assert_eq!(a(0.0, 0.0), 0);
        assert_eq!(a(0.05, 0.0), 1);
        assert_eq!(a(0.05, -0.05), 2);
        assert_eq!(a(0.0, -0.05), 3);
        assert_eq!(a(-0.05, 0.0), 5);
        assert_eq!(a(0.0, 0.05), 7);
        assert_eq!(a(0.05, 0.05), 8);
        assert_eq!(Action { dx: 0.0, dy: 0.05, grip: 1 }.label(), 15);
    }
}

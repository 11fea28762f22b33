//! CALVIN-style chained evaluation: a policy runs closed loop in an [`Environment`] through a
//! sequence of subtasks (5 in CALVIN); a chain stops at the first subtask that is not achieved
//! within its step budget. Reports the success rate of completing 1..=N subtasks in a row and the
//! average chain length.

use crate::Result;
use serde::Serialize;

/// What the environment says after a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepInfo {
    /// Indices (into [`Environment::subtasks`]) of the subtasks achieved so far.
    pub completed: Vec<usize>,
    /// The episode cannot continue (e.g. the scene broke or the time ran out).
    pub done: bool,
}

/// A subtask of a chain, named so a language-conditioned policy can read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subtask {
    /// Position in the chain.
    pub index: usize,
    /// Instruction, e.g. "place the red cube on the blue cube".
    pub instruction: String,
}

/// A closed-loop world a policy acts in: CraftWorld here, a CALVIN simulator bridge later.
pub trait Environment {
    /// What the policy sees.
    type Observation;
    /// What the policy does.
    type Action;
    /// Starts a new episode from a seed and returns the first observation.
    fn reset(&mut self, seed: u64) -> Result<Self::Observation>;
    /// Applies one action.
    fn step(&mut self, action: &Self::Action) -> Result<(Self::Observation, StepInfo)>;
    /// The ordered subtasks of the current episode.
    fn subtasks(&self) -> Vec<Subtask>;
}

/// A policy that acts in an environment `E`.
pub trait Policy<E: Environment> {
    /// Called when a new subtask starts, with the current observation.
    fn begin_subtask(&mut self, subtask: &Subtask, obs: &E::Observation) -> Result<()>;
    /// The next action for the current subtask.
    fn act(&mut self, obs: &E::Observation) -> Result<E::Action>;
}

/// Settings of a chained evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChainConfig {
    /// Subtasks per chain (CALVIN: 5).
    pub chain_length: usize,
    /// Environment steps allowed per subtask (CALVIN: 360).
    pub max_steps_per_subtask: usize,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self { chain_length: 5, max_steps_per_subtask: 360 }
    }
}

/// Result of a chained evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainResult {
    /// `success_at[i]`: fraction of chains that completed at least i+1 subtasks in a row.
    pub success_at: Vec<f64>,
    /// Mean number of subtasks completed in a row.
    pub average_length: f64,
    /// Completed length of each chain, in seed order.
    pub lengths: Vec<usize>,
}

/// Runs one chain per seed and aggregates.
pub fn evaluate_chains<E: Environment, P: Policy<E>>(
    env: &mut E,
    policy: &mut P,
    seeds: &[u64],
    cfg: ChainConfig,
) -> Result<ChainResult> {
    let mut lengths = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        lengths.push(run_chain(env, policy, seed, cfg)?);
    }
    Ok(aggregate(&lengths, cfg.chain_length))
}

/// Runs one chain; returns how many subtasks were completed in a row.
pub fn run_chain<E: Environment, P: Policy<E>>(
    env: &mut E,
    policy: &mut P,
    seed: u64,
    cfg: ChainConfig,
) -> Result<usize> {
    let mut obs = env.reset(seed)?;
    let subtasks = env.subtasks();
    let mut done_count = 0;
    for subtask in subtasks.iter().take(cfg.chain_length) {
        policy.begin_subtask(subtask, &obs)?;
        let mut achieved = false;
        for _ in 0..cfg.max_steps_per_subtask {
            let action = policy.act(&obs)?;
            let (next, info) = env.step(&action)?;
            obs = next;
            if info.completed.contains(&subtask.index) {
                achieved = true;
                break;
            }
            if info.done {
                break;
            }
        }
        if !achieved {
            break;
        }
        done_count += 1;
    }
    Ok(done_count)
}

/// Success rates at 1..=chain_length and the average chain length from per-chain lengths.
pub fn aggregate(lengths: &[usize], chain_length: usize) -> ChainResult {
    let n = lengths.len().max(1) as f64;
    let success_at = (1..=chain_length).map(|k| lengths.iter().filter(|&&l| l >= k).count() as f64 / n).collect();
    let average_length = lengths.iter().sum::<usize>() as f64 / n;
    ChainResult { success_at, average_length, lengths: lengths.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter world: subtask i is done when the counter reaches i+1; action +1 or 0.
    struct Counter {
        value: usize,
        tasks: usize,
    }

    impl Environment for Counter {
        type Observation = usize;
        type Action = bool;
        fn reset(&mut self, seed: u64) -> Result<usize> {
            self.value = 0;
            self.tasks = 3 + seed as usize % 3;
            Ok(0)
        }
        fn step(&mut self, inc: &bool) -> Result<(usize, StepInfo)> {
            self.value += *inc as usize;
            let completed = (0..self.value.min(self.tasks)).collect();
            Ok((self.value, StepInfo { completed, done: false }))
        }
        fn subtasks(&self) -> Vec<Subtask> {
            (0..self.tasks).map(|i| Subtask { index: i, instruction: format!("reach {}", i + 1) }).collect()
        }
    }

    /// Pushes for the first `stall_after` subtasks, then idles.
    struct Pusher {
        stall_after: usize,
        current: usize,
    }

    impl Policy<Counter> for Pusher {
        fn begin_subtask(&mut self, s: &Subtask, _obs: &usize) -> Result<()> {
            self.current = s.index;
            Ok(())
        }
        fn act(&mut self, _obs: &usize) -> Result<bool> {
            Ok(self.current < self.stall_after)
        }
    }

    #[test]
    fn chain_lengths_and_rates() {
        let mut env = Counter { value: 0, tasks: 0 };
        let cfg = ChainConfig { chain_length: 5, max_steps_per_subtask: 4 };
        // seed % 3 = 0 -> 3 tasks, 1 -> 4, 2 -> 5: a perfect policy completes all of them.
        let r = evaluate_chains(&mut env, &mut Pusher { stall_after: 9, current: 0 }, &[0, 1, 2], cfg).unwrap();
        assert_eq!(r.lengths, vec![3, 4, 5]);
        assert_eq!(r.success_at, vec![1.0, 1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]);
        assert_eq!(r.average_length, 4.0);
        let r = evaluate_chains(&mut env, &mut Pusher { stall_after: 2, current: 0 }, &[2, 2], cfg).unwrap();
        assert_eq!(r.lengths, vec![2, 2]);
        assert_eq!(r.success_at, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
    }
}

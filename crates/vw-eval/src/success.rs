//! Step-wise task success: the fraction of episodes whose first k recipe steps are complete in a
//! (generated) execution video, as judged from pixels — the Video-CraftBench measure.

use serde::Serialize;

/// One episode's outcome as the judge saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpisodeOutcome {
    /// Steps of the episode's recipe.
    pub steps: usize,
    /// Length of the completed prefix: steps 1..=n are complete, step n+1 is not.
    pub completed: usize,
}

/// Length of the prefix of `true` values: the first k steps complete means all of 1..=k.
pub fn completed_prefix(step_done: &[bool]) -> usize {
    step_done.iter().take_while(|&&d| d).count()
}

/// Success rate at each step k = 1..=max steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSuccess {
    /// `rate[k-1]`: among episodes with at least k steps, the fraction whose first k steps are complete.
    pub rate: Vec<f64>,
    /// `episodes[k-1]`: how many episodes have at least k steps (the denominator of `rate[k-1]`).
    pub episodes: Vec<usize>,
    /// Fraction of episodes whose whole recipe is complete.
    pub full_task: f64,
    /// Mean completed prefix length.
    pub mean_completed: f64,
}

impl StepSuccess {
    /// Aggregates per-episode outcomes; `None` for an empty list.
    pub fn from_outcomes(outcomes: &[EpisodeOutcome]) -> Option<Self> {
        if outcomes.is_empty() {
            return None;
        }
        let max = outcomes.iter().map(|o| o.steps).max().unwrap_or(0);
        let mut rate = Vec::with_capacity(max);
        let mut episodes = Vec::with_capacity(max);
        for k in 1..=max {
            let eligible: Vec<_> = outcomes.iter().filter(|o| o.steps >= k).collect();
            let ok = eligible.iter().filter(|o| o.completed >= k).count();
            episodes.push(eligible.len());
            rate.push(ok as f64 / eligible.len() as f64);
        }
        let n = outcomes.len() as f64;
        let full_task = outcomes.iter().filter(|o| o.completed >= o.steps).count() as f64 / n;
        let mean_completed = outcomes.iter().map(|o| o.completed.min(o.steps) as f64).sum::<f64>() / n;
        Some(Self { rate, episodes, full_task, mean_completed })
    }

    /// Success at step k (1-based); `None` past the longest recipe.
    pub fn at(&self, k: usize) -> Option<f64> {
        k.checked_sub(1).and_then(|i| self.rate.get(i).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_stops_at_first_gap() {
        assert_eq!(completed_prefix(&[true, true, false, true]), 2);
        assert_eq!(completed_prefix(&[false, true]), 0);
        assert_eq!(completed_prefix(&[]), 0);
    }

    #[test]
    fn rates_per_step() {
        let o = [
            EpisodeOutcome { steps: 3, completed: 3 },
            EpisodeOutcome { steps: 3, completed: 1 },
            EpisodeOutcome { steps: 5, completed: 4 },
            EpisodeOutcome { steps: 5, completed: 0 },
        ];
        let s = StepSuccess::from_outcomes(&o).unwrap();
        assert_eq!(s.episodes, vec![4, 4, 4, 2, 2]);
        assert_eq!(s.rate, vec![0.75, 0.5, 0.5, 0.5, 0.0]);
        assert_eq!(s.full_task, 0.25);
        assert_eq!(s.mean_completed, 2.0);
        assert_eq!(s.at(1), Some(0.75));
        assert_eq!(s.at(0), None);
        assert!(StepSuccess::from_outcomes(&[]).is_none());
    }
}

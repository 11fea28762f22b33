//! Token sampling: greedy, temperature, top-k and top-p (nucleus), seeded for reproducibility.

use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the next token is drawn from the logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (`None`: all).
    pub top_p: Option<f64>,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!("temperature must be >= 0, found {}", self.temperature)));
        }
        if self.top_k == Some(0) {
            return Err(Error::Invalid("top_k must be >= 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Invalid(format!("top_p must be in (0, 1], found {p}")));
            }
        }
        Ok(())
    }
}

/// A seeded sampler; the same seed and logits give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose random stream starts at `cfg.seed`.
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, rng: ChaCha8Rng::seed_from_u64(cfg.seed) })
    }

    /// Draws one index among `candidates` (token ids) given the full logits row. Ties in greedy
    /// mode go to the lowest id, so results do not depend on candidate order.
    pub fn sample(&mut self, logits: &[f32], candidates: &[u32]) -> Result<u32> {
        if candidates.is_empty() {
            return Err(Error::Invalid("no candidate tokens to sample from".into()));
        }
        if let Some(&c) = candidates.iter().find(|&&c| c as usize >= logits.len()) {
            return Err(Error::Invalid(format!("candidate token {c} outside logits of length {}", logits.len())));
        }
        let logit = |c: u32| logits[c as usize];
        if self.cfg.temperature == 0.0 || candidates.len() == 1 {
            let mut best = candidates[0];
            for &c in &candidates[1..] {
                if logit(c) > logit(best) || (logit(c) == logit(best) && c < best) {
                    best = c;
                }
            }
            return Ok(best);
        }
        // Sort by logit (descending, ties by id) so top-k / top-p keep a well-defined prefix.
        let mut order: Vec<u32> = candidates.to_vec();
        order.sort_by(|&a, &b| logit(b).total_cmp(&logit(a)).then(a.cmp(&b)));
        if let Some(k) = self.cfg.top_k {
            order.truncate(k.max(1));
        }
        let t = self.cfg.temperature as f32;
        let max = logit(order[0]) / t;
        let mut probs: Vec<f32> = order.iter().map(|&c| (logit(c) / t - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.cfg.top_p {
            let mut acc = 0.0f32;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc as f64 >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let u: f32 = self.rng.random();
        let mut acc = 0.0f32;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return Ok(order[i]);
            }
        }
        Ok(*order.last().unwrap_or(&order[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, -1.0];
        let all: Vec<u32> = (0..5).collect();
        let mut g = Sampler::new(SamplingConfig::greedy()).unwrap();
        assert_eq!(g.sample(&logits, &all).unwrap(), 1);
        assert_eq!(g.sample(&logits, &[0, 2, 4]).unwrap(), 2);
        // top_k = 1 is greedy whatever the temperature.
        let mut k1 = Sampler::new(SamplingConfig { temperature: 5.0, top_k: Some(1), top_p: None, seed: 3 }).unwrap();
        for _ in 0..20 {
            assert_eq!(k1.sample(&logits, &all).unwrap(), 1);
        }
        // top_p keeps only tokens 1 and 3 (each ~0.42; the next adds ~0.06 of mass beyond 0.8).
        let mut p = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: Some(0.8), seed: 1 }).unwrap();
        let mut seen = [0usize; 5];
        for _ in 0..400 {
            seen[p.sample(&logits, &all).unwrap() as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 120 && seen[3] > 120, "{seen:?}");
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let all: Vec<u32> = (0..50).collect();
        let cfg = SamplingConfig { temperature: 1.0, top_k: Some(20), top_p: Some(0.95), seed: 42 };
        let draw = |cfg| {
            let mut s = Sampler::new(cfg).unwrap();
            (0..64).map(|_| s.sample(&logits, &all).unwrap()).collect::<Vec<_>>()
        };
        let a = draw(cfg);
        assert_eq!(a, draw(cfg));
        assert_ne!(a, draw(SamplingConfig { seed: 43, ..cfg }));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 3);
        assert!(Sampler::new(SamplingConfig { top_p: Some(0.0), ..cfg }).is_err());
    }
}

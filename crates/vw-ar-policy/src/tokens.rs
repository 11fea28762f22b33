//! The token layout of a policy sequence: dLDM codes first, then the special tokens.
//!
//! A task is `BOS c c .. c EOS  BOS c .. c EOS  ...  EOT`, every step holding exactly
//! `codes_per_step` codes. Fixed-length steps let batched decoding run in lockstep and let the
//! sampler enforce the grammar, so every generated sequence parses into whole steps.

use crate::{Error, Result};

/// Where the special tokens sit after the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vocab {
    /// Number of dLDM codes; codes are tokens `0..code_vocab_size`.
    pub code_vocab_size: usize,
}

impl Vocab {
    /// The layout for a code vocabulary of this size.
    pub fn new(code_vocab_size: usize) -> Self {
        Self { code_vocab_size }
    }
    /// Begin of a step.
    pub fn bos_step(&self) -> u32 {
        self.code_vocab_size as u32
    }
    /// End of a step.
    pub fn eos_step(&self) -> u32 {
        self.code_vocab_size as u32 + 1
    }
    /// End of the task.
    pub fn eot(&self) -> u32 {
        self.code_vocab_size as u32 + 2
    }
    /// Padding after the end of a shorter sequence of a batch; never a training target.
    pub fn pad(&self) -> u32 {
        self.code_vocab_size as u32 + 3
    }
    /// Codes plus the four special tokens.
    pub fn size(&self) -> usize {
        self.code_vocab_size + 4
    }
    /// Whether `t` is a code (not a special token).
    pub fn is_code(&self, t: u32) -> bool {
        (t as usize) < self.code_vocab_size
    }

    /// The token sequence of a task: every step wrapped in BOS/EOS, then EOT.
    pub fn encode_task(&self, steps: &[Vec<u32>], codes_per_step: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(steps.len() * (codes_per_step + 2) + 1);
        for (k, step) in steps.iter().enumerate() {
            if step.len() != codes_per_step {
                return Err(Error::Invalid(format!(
                    "step {k} has {} codes, expected codes_per_step = {codes_per_step}",
                    step.len()
                )));
            }
            if let Some(&c) = step.iter().find(|&&c| !self.is_code(c)) {
                return Err(Error::Invalid(format!(
                    "step {k} holds code {c}, outside the code vocabulary 0..{}",
                    self.code_vocab_size
                )));
            }
            out.push(self.bos_step());
            out.extend_from_slice(step);
            out.push(self.eos_step());
        }
        out.push(self.eot());
        Ok(out)
    }

    /// The steps of a generated token sequence (stops at EOT; an unfinished last step is dropped).
    pub fn decode_task(&self, tokens: &[u32], codes_per_step: usize) -> Vec<Vec<u32>> {
        let mut steps = Vec::new();
        let mut cur: Option<Vec<u32>> = None;
        for &t in tokens {
            if t == self.eot() {
                break;
            } else if t == self.bos_step() {
                cur = Some(Vec::with_capacity(codes_per_step));
            } else if t == self.eos_step() {
                if let Some(s) = cur.take().filter(|s| s.len() == codes_per_step) {
                    steps.push(s);
                }
            } else if self.is_code(t) {
                if let Some(s) = cur.as_mut() {
                    s.push(t);
                }
            }
        }
        steps
    }

    /// The tokens allowed next, given how many tokens of the task were generated so far:
    /// BOS at a step boundary (or EOT, once `steps_done < max_steps` no longer holds, only EOT),
    /// codes inside a step, EOS after `codes_per_step` codes.
    pub fn allowed_next(&self, generated: usize, codes_per_step: usize, max_steps: usize) -> Allowed {
        let step_len = codes_per_step + 2;
        let pos = generated % step_len;
        let steps_done = generated / step_len;
        if pos == 0 {
            if steps_done == 0 {
                Allowed::Only(self.bos_step())
            } else if steps_done >= max_steps {
                Allowed::Only(self.eot())
            } else {
                Allowed::BosOrEot
            }
        } else if pos <= codes_per_step {
            Allowed::Codes
        } else {
            Allowed::Only(self.eos_step())
        }
    }
}

/// Which tokens the grammar allows at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Exactly this token (it is forced; no sampling).
    Only(u32),
    /// Any code token.
    Codes,
    /// Begin another step or end the task.
    BosOrEot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_grammar() {
        let v = Vocab::new(10);
        let steps = vec![vec![1, 2, 3], vec![9, 0, 4]];
        let toks = v.encode_task(&steps, 3).unwrap();
        assert_eq!(toks, vec![10, 1, 2, 3, 11, 10, 9, 0, 4, 11, 12]);
        assert_eq!(v.decode_task(&toks, 3), steps);
        assert!(v.encode_task(&[vec![1, 2]], 3).is_err());
        assert!(v.encode_task(&[vec![1, 2, 10]], 3).is_err());
        // Every prefix of a valid sequence is allowed by the grammar.
        for (i, &t) in toks.iter().enumerate() {
            let ok = match v.allowed_next(i, 3, 5) {
                Allowed::Only(x) => x == t,
                Allowed::Codes => v.is_code(t),
                Allowed::BosOrEot => t == v.bos_step() || t == v.eot(),
            };
            assert!(ok, "token {t} at {i}");
        }
        assert_eq!(v.allowed_next(10, 3, 2), Allowed::Only(12));
    }
}

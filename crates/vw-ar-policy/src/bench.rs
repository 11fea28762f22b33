//! Decode-throughput measurement of the policy transformer with its KV cache, the number compared
//! against Hugging Face `LlamaForCausalLM.generate` by `tools/bench_torch_ar.py`.

use crate::policy::Policy;
use crate::Result;
use candle_core::{Device, Tensor, D};
use serde::Serialize;
use std::time::Instant;

/// One decode benchmark's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DecodeBench {
    /// Sequences decoded together.
    pub batch: usize,
    /// Prompt tokens prefilled before decoding.
    pub prompt_len: usize,
    /// Tokens generated per sequence after the prompt.
    pub new_tokens: usize,
}

/// What one timed run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeTiming {
    /// Seconds for the prefill (prompt through the model, first logits).
    pub prefill_s: f64,
    /// Seconds for the `new_tokens` decode steps.
    pub decode_s: f64,
    /// Generated tokens per second over the decode (batch x new_tokens / decode_s).
    pub decode_tokens_per_s: f64,
    /// The greedy tokens of row 0, so two runs can be checked for identical output.
    pub tokens_row0: Vec<u32>,
}

/// Greedy decoding of random prompt tokens with the KV cache, argmax on the device (no host round
/// trip per token, as `generate` does with `do_sample=False`): prefill once, then one token per step.
/// The grammar of [`Policy::generate`] is not applied here; it runs on the host and is a separate cost.
pub fn decode_throughput(policy: &Policy, shape: DecodeBench, device: &Device, seed: u64) -> Result<DecodeTiming> {
    use rand::{Rng, SeedableRng};
    let vocab = policy.config().vocab_size() as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let prompt: Vec<u32> = (0..shape.batch * shape.prompt_len).map(|_| rng.random_range(0..vocab)).collect();
    let prompt = Tensor::from_vec(prompt, (shape.batch, shape.prompt_len), device)?;
    let mut cache =
        policy.new_cache(shape.prompt_len, shape.new_tokens.div_ceil(policy.config().codes_per_step() + 2) + 1);
    device.synchronize()?;
    let t0 = Instant::now();
    let logits = policy.step(&policy.token_embeddings(&prompt)?, &mut cache)?;
    let mut next = logits.argmax(D::Minus1)?.unsqueeze(1)?; // (B, 1) u32
    device.synchronize()?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(shape.new_tokens);
    let t1 = Instant::now();
    for _ in 0..shape.new_tokens {
        out.push(next.clone());
        let logits = policy.step(&policy.token_embeddings(&next)?, &mut cache)?;
        next = logits.argmax(D::Minus1)?.unsqueeze(1)?;
    }
    device.synchronize()?;
    let decode_s = t1.elapsed().as_secs_f64();
    let tokens_row0 = Tensor::cat(&out, 1)?.get(0)?.to_vec1::<u32>()?;
    Ok(DecodeTiming {
        prefill_s,
        decode_s,
        decode_tokens_per_s: (shape.batch * shape.new_tokens) as f64 / decode_s.max(1e-12),
        tokens_row0,
    })
}

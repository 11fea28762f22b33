//! One training step (forward and backward) of the CPU demo's AR policy: the shape `vw demo
//! --retrain` trains twice (docs/performance.md, "The demo's policy step", has the numbers).
//!
//! cargo bench --bench policy

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{backprop::GradStore, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use vw_ar_policy::config::ObsEncoderConfig;
use vw_ar_policy::dataset::CodeDataset;
use vw_ar_policy::transformer::Mode;
use vw_ar_policy::{Policy, PolicyConfig};

/// The demo's policy on 64x64 frames, 4 codes per transition and 8 transitions per step.
fn demo_policy() -> PolicyConfig {
    PolicyConfig {
        codes_per_transition: 4,
        transitions_per_step: 8,
        obs_encoder: ObsEncoderConfig::Conv { in_channels: 3, channels: vec![16, 32, 64, 64], image_size: 64 },
        ..PolicyConfig::tiny()
    }
}

/// `n` episodes of 3 to 6 steps of random codes.
fn random_codes(cfg: &PolicyConfig, n: usize) -> CodeDataset {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let frames = Tensor::rand(-1f32, 1f32, (n, 3, 64, 64), &Device::Cpu).unwrap();
    let steps = (0..n)
        .map(|_| {
            let k = rng.random_range(3..=6);
            (0..k).map(|_| (0..cfg.codes_per_step()).map(|_| rng.random_range(0..1000u32)).collect()).collect()
        })
        .collect();
    CodeDataset::new(frames, Vec::new(), steps, cfg.codes_per_step(), cfg.code_vocab_size).unwrap()
}

fn policy_step(c: &mut Criterion) {
    let cfg = demo_policy();
    let varmap = VarMap::new();
    let policy = Policy::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let data = random_codes(&cfg, 16);
    let batch = data.batch(&(0..16).collect::<Vec<_>>(), &Device::Cpu, DType::F32).unwrap();
    let mut g = c.benchmark_group("demo_policy");
    g.sample_size(20);
    g.bench_function("forward_b16", |b| b.iter(|| policy.loss(&batch, Mode::Train).unwrap()));
    g.bench_function("forward_backward_b16", |b| {
        b.iter(|| {
            let loss = policy.loss(&batch, Mode::Train).unwrap();
            let grads: GradStore = loss.backward().unwrap();
            grads
        })
    });
    g.finish();
}

criterion_group!(benches, policy_step);
criterion_main!(benches);

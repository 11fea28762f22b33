//! Host-side work of the GPU demo's dLDM stages (`vw demo --retrain --large`): rendering its
//! CraftWorld play episodes, stage 1's per-step pair augmentation at batch 128, and the motion
//! teacher's reading of every transition before the clip renderer trains. On a GPU these run on
//! the CPU between kernel launches (docs/performance.md, "The GPU demo on an H100", has the numbers).
//!
//! cargo bench --bench stage1

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use vw_dldm::train::craft::{CraftData, Transitions};
use vw_eval::demo::ldm::{demo_stage1_config, LdmKind};
use vw_eval::demo::DemoConfig;

fn bench(c: &mut Criterion) {
    let demo = DemoConfig::gpu();
    let s1 = demo_stage1_config(&demo, LdmKind::Dldm);
    let mut group = c.benchmark_group("stage1_host");
    group.sample_size(10);
    // 16 of the run's 512 play episodes.
    let few = CraftData { episodes: 16, ..s1.data.clone() };
    group.bench_function("play_episodes_16", |b| {
        b.iter(|| few.generate(vw_data::craftworld::Split::Train).expect("episodes"))
    });
    let data =
        Transitions::from_episodes(&few.generate(vw_data::craftworld::Split::Train).expect("episodes"), &Device::Cpu)
            .expect("transitions");
    let bs = s1.train.batch_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    group.bench_function("pairs_and_augment_b128", |b| {
        b.iter(|| {
            let ids = data.sample_ids(&mut rng, bs);
            let (x_t, x_next) = data.pairs(&ids).expect("pairs");
            s1.augment.apply(&x_t, &x_next, None, &mut rng, bs, 0..bs).expect("augment")
        })
    });
    // What the clip renderer reads from every transition before its first step: the episodes'
    // median backgrounds and the motion teacher's displacement search.
    group.bench_function("teacher_motions_16_episodes", |b| {
        b.iter(|| {
            let backgrounds = data.backgrounds().expect("backgrounds");
            data.teacher_motions(&backgrounds, &vw_dldm::clip::MotionTeacher::default()).expect("motions")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Can `TinyLdm`'s encoder see the action at all? Trains the encoder (pre-quantisation latents,
//! (N, Q, code_dim)) plus a linear head with cross-entropy on the ground-truth action labels of
//! CraftWorld transitions, then reports accuracy on held-out episodes of both appearances. An upper
//! bound for what a reconstruction-trained encoder of the same architecture can put in its codes.
//!
//! ```text
//! cargo run --release --example encoder_supervised -- STEPS [patch|motion|motion-diff] [PLAY_FRAMES] [JITTER] [TEXTURE] [GRATING] [SHIFT_PX] [ZOOM] [ROTATE_RAD]
//! ```

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarMap};
use rand::SeedableRng;
use vw_data::craftworld::{generate_episode_with_factor, Split, LOOK_FACTORS, NUM_ACTION_CLASSES};
use vw_dldm::baseline::{LdmArch, TinyLdm};
use vw_dldm::train::craft::{Augment, CraftData, Transitions};
use vw_dldm::train::stage1::Stage1Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn accuracy(model: &TinyLdm, head: &candle_nn::Linear, data: &Transitions) -> anyhow::Result<f64> {
    let mut correct = 0usize;
    let ids: Vec<usize> = (0..data.len()).collect();
    for chunk in ids.chunks(64) {
        let (x_t, x_next) = data.pairs(chunk)?;
        let z = model.latents(&x_t, &x_next)?.flatten_from(1)?;
        let pred = head.forward(&z)?.argmax(1)?.to_vec1::<u32>()?;
        correct += chunk.iter().zip(pred).filter(|(&i, p)| data.labels[i] == *p).count();
    }
    Ok(correct as f64 / data.len() as f64)
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = a.first().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let spec = a.get(1).map(String::as_str).unwrap_or("patch");
    let (arch, diff_only) = match spec {
        "motion" => (LdmArch::Motion, false),
        "motion-diff" => (LdmArch::Motion, true),
        _ => (LdmArch::Patch, false),
    };
    let arg = |i: usize| -> anyhow::Result<Option<f32>> { Ok(a.get(i).map(|s| s.parse()).transpose()?) };
    let play = arg(2)?.unwrap_or(0.0) as usize;
    let augment = Augment {
        color_jitter: arg(3)?.unwrap_or(0.0),
        static_noise: arg(4)?.unwrap_or(0.0),
        grating: arg(5)?.unwrap_or(0.0),
        shift: arg(6)?.unwrap_or(0.0) as usize,
        zoom: arg(7)?.unwrap_or(0.0),
        rotate: arg(8)?.unwrap_or(0.0),
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let dev = Device::Cpu;
    let mut s1 = Stage1Config::tiny();
    s1.data.play_frames = play;
    let cfg = vw_dldm::baseline::TinyLdmConfig { arch, diff_only, ..s1.model.clone() };
    let data = Transitions::render(&s1.data, Split::Train, &dev)?;
    let vm = VarMap::new();
    // Seeded: the same command gives the same numbers.
    let vb = vw_dldm::train::init::seeded_var_builder(&vm, 0, DType::F32, &dev);
    let model = TinyLdm::new(&cfg, vb.pp("ldm"))?;
    let head = candle_nn::linear(cfg.act_embedding_num * cfg.levels.len(), NUM_ACTION_CLASSES, vb.pp("head"))?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW { lr: 2e-3, weight_decay: 0.0, ..Default::default() },
    )?;
    for step in 1..=steps {
        let ids = data.sample_ids(&mut rng, 32);
        let (x_t, x_next) = data.pairs(&ids)?;
        let (x_t, x_next, _) = augment.apply(&x_t, &x_next, None, &mut rng, 32, 0..32)?;
        let y = Tensor::from_vec(ids.iter().map(|&i| data.labels[i]).collect::<Vec<u32>>(), 32, &dev)?;
        let logits = head.forward(&model.latents(&x_t, &x_next)?.flatten_from(1)?)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
        if step % 50 == 0 {
            println!("step {step} ce {:.4}", loss.to_scalar::<f32>()?);
        }
    }
    let held = CraftData { episodes: 16, first_seed: 100_000, play_frames: 0, ..s1.data.clone() };
    for split in [Split::Train, Split::TestAppearance] {
        let t = Transitions::render(&held, split, &dev)?;
        println!("{spec} {split}: held-out accuracy {:.3}", accuracy(&model, &head, &t)?);
    }
    // Which part of the held-out look costs the accuracy: the same held-out episodes in the training
    // look with one factor of their held-out look swapped in.
    for factor in &LOOK_FACTORS {
        let eps = (0..held.episodes as u64)
            .map(|i| generate_episode_with_factor(&held.world, held.first_seed + i, factor))
            .collect::<vw_data::Result<Vec<_>>>()?;
        let t = Transitions::from_episodes(&eps, &dev)?;
        println!("{spec} train look + held-out {}: held-out accuracy {:.3}", factor.0, accuracy(&model, &head, &t)?);
    }
    Ok(())
}

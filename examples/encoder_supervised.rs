//! Can `TinyLdm`'s encoder see the action at all? Trains the encoder (pre-quantisation latents,
//! (N, Q, code_dim)) plus a linear head with cross-entropy on the ground-truth action labels of
//! CraftWorld transitions, then reports accuracy on held-out episodes of both appearances. An upper
//! bound for what a reconstruction-trained encoder of the same architecture can put in its codes.
//!
//! ```text
//! cargo run --release --example encoder_supervised -- STEPS [patch|motion|motion-diff] [PLAY_FRAMES] [JITTER] [TEXTURE] [GRATING]
//! ```

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::SeedableRng;
use vw_data::craftworld::{Split, NUM_ACTION_CLASSES};
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
    let (arch, diff_only) = match a.get(1).map(String::as_str) {
        Some("motion") => (LdmArch::Motion, false),
        Some("motion-diff") => (LdmArch::Motion, true),
        _ => (LdmArch::Patch, false),
    };
    let arg = |i: usize| -> anyhow::Result<Option<f32>> { Ok(a.get(i).map(|s| s.parse()).transpose()?) };
    let play = arg(2)?.unwrap_or(0.0) as usize;
    let augment = Augment {
        color_jitter: arg(3)?.unwrap_or(0.0),
        static_noise: arg(4)?.unwrap_or(0.0),
        grating: arg(5)?.unwrap_or(0.0),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let dev = Device::Cpu;
    let mut s1 = Stage1Config::tiny();
    s1.data.play_frames = play;
    let cfg = vw_dldm::baseline::TinyLdmConfig { arch, diff_only, ..s1.model.clone() };
    let data = Transitions::render(&s1.data, Split::Train, &dev)?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let model = TinyLdm::new(&cfg, vb.pp("ldm"))?;
    let head = candle_nn::linear(cfg.act_embedding_num * cfg.levels.len(), NUM_ACTION_CLASSES, vb.pp("head"))?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW { lr: 2e-3, weight_decay: 0.0, ..Default::default() },
    )?;
    let mut state = 12345u64;
    for step in 1..=steps {
        let ids: Vec<usize> = (0..32)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as usize % data.len()
            })
            .collect();
        let (x_t, x_next) = data.pairs(&ids)?;
        let (x_t, x_next) = augment.apply(&x_t, &x_next, &mut rng, 32, 0..32)?;
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
        println!("{arch:?} {split}: held-out accuracy {:.3}", accuracy(&model, &head, &t)?);
    }
    Ok(())
}

//! Can the tiny renderer draw a CraftWorld transition when it is *given* the action? Trains only
//! `TinyLdm`'s renderer with the ground-truth action label as its code (label -> a fixed FSQ code
//! per query) and prints L1 / identity-copy L1 on fresh batches. Diagnostic for the codebook
//! collapse (docs/results.md): if this stays at 1.0 the renderer, not the quantiser, is the wall.
//!
//! ```text
//! cargo run --release --example oracle_renderer -- STEPS MIX_LAYERS ZERO_INIT(0|1) [l1|mse|mwW] [patch|motion|sprite] [nocode]
//! ```

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use vw_data::craftworld::Split;
use vw_dldm::baseline::{TinyLdm, TinyLdmConfig};
use vw_dldm::train::craft::Transitions;
use vw_dldm::train::stage1::Stage1Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = a.first().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let mix: usize = a.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let zero = a.get(2).map(|s| s == "1").unwrap_or(false);
    let mse = a.get(3).map(|s| s == "mse").unwrap_or(false);
    // "mwW": L1 with the stage-1 motion weight W on moving pixels.
    let mw: f64 = a.get(3).and_then(|s| s.strip_prefix("mw")).map(|w| w.parse()).transpose()?.unwrap_or(0.0);
    let arch = match a.get(4).map(String::as_str) {
        Some("motion") => vw_dldm::baseline::LdmArch::Motion,
        Some("sprite") => vw_dldm::baseline::LdmArch::Sprite,
        _ => vw_dldm::baseline::LdmArch::Patch,
    };
    let no_code = a.get(5).map(|s| s == "nocode").unwrap_or(false);
    let dev = Device::Cpu;
    let s1 = Stage1Config::tiny();
    let cfg = TinyLdmConfig { renderer_mix_layers: mix, zero_init_residual: zero, arch, ..s1.model.clone() };
    let data = Transitions::render(&s1.data, Split::Train, &dev)?;
    let vm = VarMap::new();
    let model = TinyLdm::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW { lr: 2e-3, weight_decay: 0.0, ..Default::default() },
    )?;
    let levels = &cfg.levels;
    let mut state = 12345u64;
    for step in 1..=steps {
        let ids: Vec<usize> = (0..32)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as usize % data.len()
            })
            .collect();
        let (x_t, x_next) = data.pairs(&ids)?;
        // Label l (0..18) -> FSQ index 37 * l + 1 for query 0 and the same for query 1.
        // `nocode` (6th argument): every transition gets the same code, the no-information baseline.
        let label = |i: usize| if no_code { 0 } else { data.labels[i] };
        let idx: Vec<u32> = ids.iter().flat_map(|&i| [37 * label(i) + 1, 37 * label(i) + 1]).collect();
        let idx = Tensor::from_vec(idx, (32, 2), &dev)?;
        let codes = vw_tensor_kernels::fsq::fsq_indices_to_codes(&idx, levels)?;
        let pred = model.render_pairs(&x_t, &codes)?;
        let err = (&pred - &x_next)?;
        let loss = if mse {
            err.sqr()?.mean_all()?
        } else if mw > 0.0 {
            let moving = (&x_next - &x_t)?.abs()?.max_keepdim(1)?.gt(0.05)?.to_dtype(err.dtype())?;
            err.abs()?.broadcast_mul(&((moving * mw)? + 1.0)?)?.mean_all()?
        } else {
            err.abs()?.mean_all()?
        };
        opt.backward_step(&loss)?;
        if step % 20 == 0 {
            let l1 = err.abs()?.mean_all()?.to_scalar::<f32>()?;
            let copy = (&x_next - &x_t)?.abs()?.mean_all()?.to_scalar::<f32>()?;
            let mse_v = err.sqr()?.mean_all()?.to_scalar::<f32>()?;
            let copy_mse = (&x_next - &x_t)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
            println!(
                "step {step} l1 {l1:.4} copy {copy:.4} ratio {:.3} | mse {mse_v:.5} copy {copy_mse:.5} ratio {:.3}",
                l1 / copy,
                mse_v / copy_mse
            );
        }
    }
    Ok(())
}

//! Where does a trained stage-1 model's loss come from? Loads a run folder and prints
//! `TinyLdm::loss_breakdown` on 512 train transitions (evenly spaced) (own codes vs centre code vs another
//! transition's codes, identity-copy L1, moving-pixel share).
//!
//! ```text
//! cargo run --release --example collapse_diag -- RUN_DIR [RUN_DIR ...]
//! ```

use vw_data::craftworld::Split;
use vw_dldm::train::craft::Transitions;
use vw_dldm::train::stage1::load_stage1;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let dev = candle_core::Device::Cpu;
    if std::env::args().nth(1).as_deref() == Some("--png") {
        let data = Transitions::render(&vw_dldm::train::stage1::Stage1Config::tiny().data, Split::Train, &dev)?;
        let ids: Vec<usize> = (0..8).map(|i| 40 + i).collect();
        let (a, b) = data.pairs(&ids)?;
        let d = ((&b - &a)?.abs()? - 1.0)?;
        // (3 rows, 8 cols) of 64x64 -> (3, 192, 512)
        let row = |t: &candle_core::Tensor| -> anyhow::Result<candle_core::Tensor> {
            Ok(candle_core::Tensor::cat(&(0..8).map(|i| t.get(i)).collect::<candle_core::Result<Vec<_>>>()?, 2)?)
        };
        let img = candle_core::Tensor::cat(&[row(&a)?, row(&b)?, row(&d)?], 1)?;
        let img = ((img + 1.0)? * 127.5)?.clamp(0f32, 255f32)?.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = img.into_iter().map(|v| v as u8).collect();
        image::RgbImage::from_raw(512, 192, bytes).ok_or_else(|| anyhow::anyhow!("size"))?.save("pairs.png")?;
        println!("labels {:?}", ids.iter().map(|&i| data.labels[i]).collect::<Vec<_>>());
        return Ok(());
    }
    for dir in std::env::args().skip(1) {
        let (cfg, model) = load_stage1(std::path::Path::new(&dir), &dev)?;
        let data = Transitions::render(&cfg.data, Split::Train, &dev)?;
        // 512 transitions spread evenly over the set.
        let ids: Vec<usize> = (0..512).map(|i| i * data.len() / 512).collect();
        let (x_t, x_next) = data.pairs(&ids)?;
        let b = model.loss_breakdown(&x_t, &x_next)?;
        println!("{dir}: {}", serde_json::to_string(&b)?);
    }
    Ok(())
}

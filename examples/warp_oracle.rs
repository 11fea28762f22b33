//! Would a renderer that *moves pixels* carry a CraftWorld execution past the judge? The ceiling
//! of a warping renderer, before any network is trained to predict the warp.
//!
//! For each held-out episode, estimates a label-free backward flow between expert frames by block
//! matching (each `--block` x `--block` block of the later frame takes the integer offset within
//! `--radius` px whose source in the earlier frame matches best over the block grown by `--window`
//! px, with a small penalty on the offset's length so flat areas stay put). It then rolls the
//! episode out open loop from its first frame: every `--hop` frames a render, warped from the
//! render `--hop` frames before by the flow between the expert's frames at those two times (frames
//! between hops repeat the last render). `--hop 1` chains one render per frame, as the dLDM's
//! renderer does; `--hop 8` draws each step's end frame from the step's first. The CraftWorld pixel
//! judge scores the frame at every step end; PSNR / SSIM (`vw_eval::video_quality`) are against the
//! expert, beside the first frame repeated. The flow comes from the expert's own frames, so a
//! renderer that predicts such a warp from (frame, codes) can do no better than its row.
//! `--png FILE` draws the first two steps of the first 8 episodes: the expert, then the warp.
//!
//! ```text
//! cargo run --release --example warp_oracle -- [--episodes 32] [--split test|train] [--block 4] [--window 0]
//!     [--radius 20] [--hop 1] [--png FILE]
//! ```

use anyhow::Context;
use image::RgbImage;
use vw_data::craftworld::{Episode, Judge, Split};
use vw_data::image_tensor::frames_to_tensor;
use vw_eval::demo::{episodes, DemoConfig};
use vw_eval::quality::{video_quality, VideoQualityMean};

/// Integer backward flow of each block of `next`: where in `prev` its pixels come from. Each
/// block's match is scored over the block grown by `window` px on every side (a 1-px block still
/// matches a neighbourhood, not a lone colour), with a small penalty on the offset's length so
/// flat areas stay put.
fn block_flow(prev: &RgbImage, next: &RgbImage, block: usize, radius: i64, window: i64) -> Vec<(i64, i64)> {
    let (w, h) = (prev.width() as i64, prev.height() as i64);
    let f = |img: &RgbImage| -> Vec<[f32; 3]> {
        img.pixels().map(|p| [p.0[0] as f32, p.0[1] as f32, p.0[2] as f32]).collect()
    };
    let (a, b) = (f(prev), f(next));
    let at = |x: i64, y: i64| (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)) as usize;
    let (bw, bh) = ((w as usize).div_ceil(block), (h as usize).div_ceil(block));
    let mut best = vec![(f32::INFINITY, (0i64, 0i64)); bw * bh];
    // Per offset: the per-pixel cost, box-summed over each grown block with an integral image.
    let mut integral = vec![0f32; ((w + 1) * (h + 1)) as usize];
    for dy in -radius..=radius {
        for dx in -radius..=radius {
            for y in 0..h {
                let mut row = 0f32;
                for x in 0..w {
                    let (p, q) = (a[at(x - dx, y - dy)], b[at(x, y)]);
                    row += (p[0] - q[0]).abs() + (p[1] - q[1]).abs() + (p[2] - q[2]).abs();
                    integral[((y + 1) * (w + 1) + x + 1) as usize] = integral[(y * (w + 1) + x + 1) as usize] + row;
                }
            }
            let sum = |x0: i64, y0: i64, x1: i64, y1: i64| {
                let (x0, y0, x1, y1) = (x0.clamp(0, w), y0.clamp(0, h), x1.clamp(0, w), y1.clamp(0, h));
                let i = |x: i64, y: i64| integral[(y * (w + 1) + x) as usize];
                i(x1, y1) - i(x0, y1) - i(x1, y0) + i(x0, y0)
            };
            let penalty = 0.5 * ((dx * dx + dy * dy) as f32).sqrt();
            for by in 0..bh {
                for bx in 0..bw {
                    let (x0, y0) = ((bx * block) as i64, (by * block) as i64);
                    let cost =
                        sum(x0 - window, y0 - window, x0 + block as i64 + window, y0 + block as i64 + window) + penalty;
                    let e = &mut best[by * bw + bx];
                    if cost < e.0 {
                        *e = (cost, (dx, dy));
                    }
                }
            }
        }
    }
    best.into_iter().map(|e| e.1).collect()
}

/// `img` warped by a block flow from [`block_flow`].
fn warp(img: &RgbImage, flow: &[(i64, i64)], block: usize) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let bw = (w as usize).div_ceil(block);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (dx, dy) = flow[(y as usize / block) * bw + x as usize / block];
        *img.get_pixel((x as i64 - dx).clamp(0, w - 1) as u32, (y as i64 - dy).clamp(0, h - 1) as u32)
    })
}

/// Adds the PSNR / SSIM of `video` against `expert` (frame lists of one length) to `mean`.
fn add_quality(mean: &mut VideoQualityMean, expert: &[RgbImage], video: &[RgbImage]) -> anyhow::Result<()> {
    let dev = candle_core::Device::Cpu;
    let (e, v) = (frames_to_tensor(expert, &dev)?.unsqueeze(0)?, frames_to_tensor(video, &dev)?.unsqueeze(0)?);
    mean.add(&video_quality(&e, &v)?);
    Ok(())
}

/// "PSNR dB / SSIM" of a mean.
fn show(mean: &VideoQualityMean) -> String {
    mean.mean().map_or("no frames".into(), |q| format!("{:.2} dB / SSIM {:.3}", q.psnr, q.ssim))
}

fn main() -> anyhow::Result<()> {
    let (mut n, mut split, mut block, mut radius, mut window, mut hop) =
        (32usize, Split::TestAppearance, 4usize, 20i64, 0i64, 1usize);
    let mut png: Option<String> = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--episodes" => n = v.parse()?,
            "--split" => {
                split = match v.as_str() {
                    "train" => Split::Train,
                    "test" => Split::TestAppearance,
                    other => anyhow::bail!("--split {other}: expected train or test"),
                }
            }
            "--block" => block = v.parse()?,
            "--radius" => radius = v.parse()?,
            "--window" => window = v.parse()?,
            "--hop" => hop = v.parse()?,
            "--png" => png = Some(v),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let cfg = DemoConfig::cpu();
    anyhow::ensure!(
        hop >= 1 && cfg.craft.frames_per_step.is_multiple_of(hop),
        "--hop {hop} must divide the {} frames of a recipe step, so every step end is a render",
        cfg.craft.frames_per_step
    );
    anyhow::ensure!(
        n >= 1 && block >= 1 && radius >= 0 && window >= 0,
        "--episodes and --block must be >= 1, --radius and --window >= 0"
    );
    let eps: Vec<Episode> = episodes(&cfg, split, n, true)?;
    let fps = cfg.craft.frames_per_step;
    let max_steps = eps.iter().map(|e| e.num_steps()).max().unwrap_or(0);
    let (mut done_at, mut total_at) = (vec![0usize; max_steps], vec![0usize; max_steps]);
    let (mut warped, mut repeated) = (VideoQualityMean::default(), VideoQualityMean::default());
    let mut strips: Vec<(Vec<RgbImage>, Vec<RgbImage>)> = Vec::new();
    for ep in &eps {
        // Rendered every `hop` frames (each from the render `hop` frames before); frames between
        // hops repeat the last render.
        let mut frames = vec![ep.frames[0].clone()];
        for t in 0..ep.frames.len() - 1 {
            let next = if (t + 1) % hop == 0 {
                let flow = block_flow(&ep.frames[t + 1 - hop], &ep.frames[t + 1], block, radius, window);
                warp(&frames[t + 1 - hop], &flow, block)
            } else {
                frames[t].clone()
            };
            frames.push(next);
        }
        add_quality(&mut warped, &ep.frames[1..], &frames[1..])?;
        add_quality(&mut repeated, &ep.frames[1..], &vec![ep.frames[0].clone(); ep.frames.len() - 1])?;
        let ends: Vec<RgbImage> = (0..ep.num_steps()).map(|k| frames[(k + 1) * fps].clone()).collect();
        if png.is_some() && strips.len() < 8 {
            strips.push((ep.frames[..=2 * fps].to_vec(), frames[..=2 * fps].to_vec()));
        }
        let ok = Judge::for_episode(ep).step_success(&ends, &ep.recipe);
        for (k, &o) in ok.iter().enumerate() {
            total_at[k] += 1;
            done_at[k] += o as usize;
        }
    }
    if let Some(p) = &png {
        let (fw, fh) = (eps[0].frames[0].width(), eps[0].frames[0].height());
        let cols = 2 * fps as u32 + 1;
        let mut sheet = RgbImage::new(cols * fw, 2 * strips.len() as u32 * fh);
        for (r, (a, b)) in strips.iter().enumerate() {
            for (row, v) in [a, b].into_iter().enumerate() {
                for (c, f) in v.iter().enumerate() {
                    image::imageops::replace(&mut sheet, f, (c as u32 * fw) as i64, ((2 * r + row) as u32 * fh) as i64);
                }
            }
        }
        sheet.save(p)?;
    }
    println!("warp oracle: {n} {split} episodes, block {block}, window {window}, radius {radius}, hop {hop}");
    let curve: Vec<String> =
        done_at.iter().zip(&total_at).map(|(&d, &t)| format!("{:.0}%", 100.0 * d as f64 / t.max(1) as f64)).collect();
    println!("step success (steps 1..): {}", curve.join(" "));
    println!("against the expert: warp {}, first frame repeated {}", show(&warped), show(&repeated));
    Ok(())
}

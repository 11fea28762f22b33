//! How far does a latent dynamics model's renderer carry an execution? The diagnostic behind
//! issue 7's "the expert's own codes, re-rendered, complete no step" (docs/results.md).
//!
//! Loads a stage-1 run folder (`vw train-dldm`, `dldm_probe`, or the demo's `checkpoints/dldm`),
//! encodes the expert videos of held-out CraftWorld episodes (the demo's episodes and judge) and
//! renders their codes back in three ways, each scored by the CraftWorld pixel judge at every step
//! end and by PSNR / SSIM against the expert video:
//!
//! - open loop: the whole episode from the first frame (what the demo's policy rows do);
//! - re-anchored every recipe step: each step's frames from the expert's frame at the step start;
//! - the first frame repeated (the judge's 0% floor).
//!
//! With `--tune-out DIR` it first tunes the renderer on its own rollouts (stage 1b,
//! `vw_dldm::train::rollout`) into DIR and scores the tuned model beside the source one.
//!
//! ```text
//! cargo run --release --example render_rollout -- --ldm runs/x/dldm [--episodes 32] [--seed 0]
//!     [--split test|train] [--device cpu|cuda:0] [--json FILE]
//!     [--tune-out DIR [--steps N] [--horizon H] [--lr LR] [--chains N] [--fresh-renderer composite|sprite|sprite-composite]
//!     [--play-frames N (0 = expert episodes)] [--loss l1|mse] [--motion-weight W]
//!     [--alpha-teacher BCE_WEIGHT (sprite renderers)]] [--png FILE] [--displacement N]
//! ```
//!
//! `--displacement N` also says how precisely the codes give the hand's move: a lookup table from
//! each transition's codes to the mean move (dx, dy) of the hand, fitted on N training-look
//! expert episodes (of the next `--seed`, so never the evaluation episodes), scored by its RMSE on the held-out episodes, beside the table of the true
//! direction label (what the linear probe predicts) and the overall mean.
//!
//! `--png FILE` draws the first two recipe steps of the first episodes: the expert's frames, then
//! each model's open-loop and re-anchored-every-step renders, one row each.
//!
//! ```text
//! ```

use anyhow::Context;
use image::RgbImage;
use std::path::PathBuf;
use vw_data::craftworld::{Episode, Split};
use vw_data::image_tensor::{frames_to_tensor, tensor_to_frames};
use vw_dldm::train::rollout::{train_rollout, RolloutTune};
use vw_dldm::train::stage1::load_stage1;
use vw_dldm::LatentDynamics;
use vw_eval::demo::methods::ExpertCodes;
use vw_eval::demo::{episodes, score_method, DemoConfig, RepeatFirstFrame, VideoPredictor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    ldm: PathBuf,
    episodes: usize,
    seed: u64,
    split: Split,
    device: vw_tensor_kernels::device::DeviceSpec,
    json: Option<PathBuf>,
    tune_out: Option<PathBuf>,
    tune: RolloutTune,
    png: Option<PathBuf>,
    displacement: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        ldm: PathBuf::new(),
        episodes: 32,
        seed: 0,
        split: Split::TestAppearance,
        device: "cpu".parse()?,
        json: None,
        tune_out: None,
        tune: RolloutTune::tiny(),
        png: None,
        displacement: 0,
    };
    let mut it = std::env::args().skip(1);
    let mut tuning_flag = None;
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        if !matches!(
            k.as_str(),
            "--ldm"
                | "--episodes"
                | "--seed"
                | "--split"
                | "--device"
                | "--json"
                | "--png"
                | "--displacement"
                | "--tune-out"
        ) {
            tuning_flag = Some(k.clone());
        }
        match k.as_str() {
            "--ldm" => a.ldm = val()?.into(),
            "--episodes" => a.episodes = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--split" => {
                a.split = match val()?.as_str() {
                    "test" => Split::TestAppearance,
                    "train" => Split::Train,
                    s => anyhow::bail!("--split: want test or train, got {s}"),
                }
            }
            "--device" => a.device = val()?.parse()?,
            "--json" => a.json = Some(val()?.into()),
            "--png" => a.png = Some(val()?.into()),
            "--displacement" => a.displacement = val()?.parse()?,
            "--tune-out" => a.tune_out = Some(val()?.into()),
            "--steps" => a.tune.train.total_steps = val()?.parse()?,
            "--horizon" => a.tune.horizon = val()?.parse()?,
            "--lr" => a.tune.train.optim.lr = val()?.parse()?,
            "--chains" => a.tune.train.batch_size = val()?.parse()?,
            "--loss" => a.tune.loss = Some(choice(val()?)?),
            "--alpha-teacher" => a.tune.alpha_teacher = Some(val()?.parse()?),
            "--motion-weight" => a.tune.motion_weight = Some(val()?.parse()?),
            "--play-frames" => a.tune.play_frames = Some(val()?.parse()?),
            "--fresh-renderer" => a.tune.fresh_renderer = Some(choice(val()?)?),
            _ => anyhow::bail!("unknown argument {k} (see the example's doc comment)"),
        }
    }
    anyhow::ensure!(!a.ldm.as_os_str().is_empty(), "--ldm DIR (a stage-1 run folder) is required");
    anyhow::ensure!(a.episodes > 0, "--episodes must be at least 1");
    if let (Some(flag), None) = (&tuning_flag, &a.tune_out) {
        anyhow::bail!("{flag} sets stage 1b, which runs only with --tune-out DIR");
    }
    Ok(a)
}

/// "stage 1", or "stage 1b" for a stage-1b run folder given as `--ldm`.
fn model_label(dir: &std::path::Path) -> String {
    let is_1b = vw_dldm::train::checkpoint::read_state(dir)
        .ok()
        .flatten()
        .is_some_and(|s| vw_dldm::train::rollout::is_stage_1b(&s.config));
    if is_1b { "stage 1b (--ldm)" } else { "stage 1" }.into()
}

/// A config enum from its serde name (`--fresh-renderer sprite-composite`, `--loss l1`).
fn choice<T: serde::de::DeserializeOwned>(name: String) -> anyhow::Result<T> {
    Ok(serde_json::from_value(serde_json::Value::String(name))?)
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let device = a.device.open()?;
    let (_, source) = load_stage1(&a.ldm, &device).with_context(|| format!("loading {}", a.ldm.display()))?;
    let mut models: Vec<(String, Box<dyn LatentDynamics>)> = vec![(model_label(&a.ldm), Box::new(source))];
    if let Some(out) = &a.tune_out {
        let t = std::time::Instant::now();
        let tuned = train_rollout(&a.ldm, &a.tune, out, false, &device, true)?;
        eprintln!("stage 1b: {:.0} s", t.elapsed().as_secs_f64());
        let what = match a.tune.fresh_renderer {
            Some(f) => format!("fresh {f:?} renderer"),
            None => "tuned renderer".into(),
        };
        models.push((format!("stage 1b ({what}, horizon {})", a.tune.horizon), Box::new(tuned)));
    }
    let cfg = DemoConfig { seed: a.seed, ..DemoConfig::cpu() };
    let eps: Vec<Episode> = episodes(&cfg, a.split, a.episodes, true)?;
    let fps = cfg.craft.frames_per_step;
    // (Re-anchoring every transition is no judge test: the frame before a step's end already shows
    // the placement, so a near-copy of it passes.)
    let modes: [(&str, Option<usize>); 2] = [("open loop", None), ("re-anchored every step", Some(fps))];
    let mut rows = Vec::new();
    let mut score = |name: &str, p: &mut dyn VideoPredictor| -> anyhow::Result<()> {
        let r = score_method(p, &eps, fps, 0, &device)?.result;
        let q = r.quality.context("no frames scored")?;
        let per_step: Vec<String> = r.success.rate.iter().map(|s| format!("{:.1}", 100.0 * s)).collect();
        println!(
            "| {name} | {} | {:.2} | {:.2} dB | {:.3} |",
            per_step.join(" / "),
            r.success.mean_completed,
            q.psnr,
            q.ssim
        );
        rows.push(serde_json::json!({
            "mode": name, "per_step": r.success.rate, "mean_completed": r.success.mean_completed,
            "psnr": q.psnr, "ssim": q.ssim,
        }));
        Ok(())
    };
    println!("| rendering | step success (%) per step | mean steps | PSNR | SSIM |\n|---|---|---|---|---|");
    for (label, model) in &models {
        for (mode, every) in modes {
            let name = format!("{label}, {mode}");
            let mut p = ExpertCodes {
                name: name.clone(),
                dynamics: model.as_ref(),
                episodes: &eps,
                next: 0,
                anchor_every: every,
            };
            score(&name, &mut p)?;
        }
    }
    score("first frame repeated", &mut RepeatFirstFrame)?;
    if let Some(p) = &a.png {
        let mut rows: Vec<Vec<RgbImage>> = Vec::new();
        for (e, ep) in eps.iter().take(2).enumerate() {
            let n = (2 * fps).min(ep.frames.len() - 1);
            rows.push(ep.frames[..=n].to_vec());
            let first = frames_to_tensor(&ep.frames[..1], &device)?.squeeze(1)?;
            for (_, model) in &models {
                for every in [None, Some(fps)] {
                    let mut p = ExpertCodes {
                        name: String::new(),
                        dynamics: model.as_ref(),
                        episodes: &eps[e..],
                        next: 0,
                        anchor_every: every,
                    };
                    let mut row = vec![ep.frames[0].clone()];
                    row.extend(tensor_to_frames(&p.predict(&first, n)?)?);
                    rows.push(row);
                }
            }
        }
        let (w, h) = (eps[0].frames[0].width(), eps[0].frames[0].height());
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
        let mut grid = RgbImage::new(cols * (w + 2), rows.len() as u32 * (h + 2));
        for (r, row) in rows.iter().enumerate() {
            for (c, img) in row.iter().enumerate() {
                image::imageops::replace(&mut grid, img, (c as u32 * (w + 2)) as i64, (r as u32 * (h + 2)) as i64);
            }
        }
        grid.save(p).with_context(|| format!("writing {}", p.display()))?;
    }
    if a.displacement > 0 {
        // Fitted on other seeds than the evaluation episodes, even with `--split train`.
        let fit_cfg = DemoConfig { seed: cfg.seed.wrapping_add(1), ..cfg.clone() };
        let train = episodes(&fit_cfg, Split::Train, a.displacement, true)?;
        displacement_report(models[0].1.as_ref(), &train, &eps, &device)?;
    }
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_vec_pretty(&rows)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Every transition of `eps`: (its codes, the true direction label, the hand's move (dx, dy) in
/// world units).
type Move = (Vec<u32>, usize, [f64; 2]);

fn moves(model: &dyn LatentDynamics, eps: &[Episode], device: &candle_core::Device) -> anyhow::Result<Vec<Move>> {
    let mut out = Vec::new();
    for ep in eps {
        let video = ep.frames_tensor(device)?.unsqueeze(0)?;
        let codes = model.encode_codes(&video)?.squeeze(0)?.to_vec2::<u32>()?;
        for (t, c) in codes.into_iter().enumerate() {
            let a = ep.truth[t].action;
            out.push((c, a.label(), [a.dx as f64, a.dy as f64]));
        }
    }
    Ok(out)
}

/// RMSE of predicting each held-out move by the training mean of its key (the overall mean where
/// the key was never seen), and how many held-out moves had an unseen key.
fn table_rmse<K: std::hash::Hash + Eq>(train: &[Move], test: &[Move], key: impl Fn(&Move) -> K) -> (f64, usize) {
    let mut sums: std::collections::HashMap<K, ([f64; 2], f64)> = Default::default();
    let mut all = ([0.0; 2], 0.0);
    for m in train {
        let e = sums.entry(key(m)).or_insert(([0.0; 2], 0.0));
        for i in 0..2 {
            e.0[i] += m.2[i];
            all.0[i] += m.2[i];
        }
        e.1 += 1.0;
        all.1 += 1.0;
    }
    let (mut se, mut unseen) = (0.0, 0);
    for m in test {
        let (s, n) = sums.get(&key(m)).copied().unwrap_or_else(|| {
            unseen += 1;
            all
        });
        se += (0..2).map(|i| (m.2[i] - s[i] / n.max(1.0)).powi(2)).sum::<f64>();
    }
    ((se / test.len().max(1) as f64).sqrt(), unseen)
}

fn displacement_report(
    model: &dyn LatentDynamics,
    train: &[Episode],
    test: &[Episode],
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let (tr, te) = (moves(model, train, device)?, moves(model, test, device)?);
    let size = test.first().map_or(64, |e| e.frames[0].width()) as f64;
    let mean_len = te.iter().map(|m| m.2[0].hypot(m.2[1])).sum::<f64>() / te.len().max(1) as f64;
    let (by_code, unseen) = table_rmse(&tr, &te, |m| m.0.clone());
    let (by_label, _) = table_rmse(&tr, &te, |m| m.1);
    let (overall, _) = table_rmse(&tr, &te, |_| ());
    println!(
        "\nHand moves of {} held-out transitions (world units; x{size} for pixels before the camera): mean length {mean_len:.4}",
        te.len()
    );
    println!("| predictor of the move (fitted on {} training-look transitions) | RMSE |\n|---|---|", tr.len());
    println!(
        "| mean move of the transition's codes ({unseen} held-out transitions with unseen codes) | {by_code:.4} |"
    );
    println!("| mean move of the true direction label (18 classes) | {by_label:.4} |");
    println!("| overall mean move | {overall:.4} |");
    Ok(())
}

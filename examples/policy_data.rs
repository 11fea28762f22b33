//! How the demo's AR policy scales with its training data: trains the dLDM's policy with the demo's
//! recipe on `--episodes N` training videos (the demo's training seeds, so the first 96 are the
//! demo's own) over the committed dLDM and clip renderer, and scores its predicted codes, drawn by
//! the clip renderer and judged step by step, on the held-out look and on new layouts of the
//! training look (which separates "does not plan new layouts" from "does not see through the
//! held-out look").
//!
//! ```text
//! cargo run --release --example policy_data -- --episodes 384 --out runs/pd-384 [--steps 450]
//!     [--checkpoints checkpoints/craftworld] [--eval 32] [--policy DIR (score this policy, no training)]
//!     [--device cpu|cuda:N]
//!     [--replan on (train on every step's start frame; score re-planning at every step)]
//!     [--twins on (only: the training-look twin's codes drawn on the held-out first frame)]
//!     [--why on (with --twins, also with --factors: what the judge sees at each episode's first failed step, and whether a
//!      missing block is still where the step began; with WHY_PNG=DIR set, also the expert's and the
//!      drawn frames of every step end up to it, as PNGs in DIR)]
//!     [--anchor N (with --twins: every N transitions drawn from the twin's own frame; 8 = every step
//!      from the expert's frame, no damage carried over; on the held-out look that frame is the twin's)]
//!     [--fill-bg on|off (holes show background only, ClipRendererConfig::fill_background; default: the renderer's own)]
//!     [--clip-snap N (first retrain the demo's clip renderer into OUT/clip-dldm with N snap passes)]
//!     [--layers-from RENDERER_DIR (with --clip-snap: its layer networks instead of the committed ones)]
//!     [--motion-steps M (with --clip-snap: the clip stage's motion phase, where the snap networks train)]
//!     [--factors on (score the held-out layouts with one held-out look factor at a time; with --twins on,
//!      the training-look twin's codes instead of the policy's)] [--lr LR] [--augment demo|photometric|off] [--grid G (G x G observation tokens; the demo's is 4)] [--hidden H] [--layers L]
//! ```

use anyhow::Context;
use candle_core::{DType, Device};
use std::path::PathBuf;
use vw_ar_policy::config::ObsEncoderConfig;
use vw_ar_policy::craftworld::episode_codes;
use vw_ar_policy::train::{load_policy, TrainOptions};
use vw_ar_policy::GenerateOptions;
use vw_data::craftworld::{generate_episode, Episode, Split};
use vw_eval::demo::ldm::CLIP_DIR;
use vw_eval::demo::methods::{ExpertCodes, PlanAndRender};
use vw_eval::demo::{episodes, read_config, score_method, Scored};

/// Seeds of the training look's new layouts: far from the demo's training seeds (0..N).
const UNSEEN_OFFSET: usize = 100_000;

/// The dLDM of `dir` with the clip renderer of `clip_dir`, drawn with `snap` passes and
/// background-only fill or not (`None`: as the renderer was saved).
fn clip_dynamics(
    dir: &std::path::Path,
    clip_dir: &std::path::Path,
    snap: Option<usize>,
    fill_bg: Option<bool>,
    dev: &Device,
) -> anyhow::Result<Box<dyn vw_dldm::LatentDynamics>> {
    let mut d = vw_eval::demo::ldm::load_clip(dir, clip_dir, dev)?;
    if let Some(p) = snap {
        d.renderer.set_snap(p)?;
    }
    if let Some(on) = fill_bg {
        d.renderer.set_fill_background(on);
    }
    Ok(Box::new(d))
}

fn report(name: &str, r: &Scored) {
    let curve: Vec<String> = r.result.success.rate.iter().map(|x| format!("{:.0}%", 100.0 * x)).collect();
    println!("{name:44} steps 1..: {:32} whole task {:.1}%", curve.join(" "), 100.0 * r.result.success.full_task);
}

/// The policy re-planning at every recipe step from the frame the step starts from
/// (`vw_ar_policy::rollout::rollout_replanned`).
struct Replanned<'a> {
    policy: &'a vw_ar_policy::Policy,
    dynamics: &'a dyn vw_dldm::LatentDynamics,
    opts: GenerateOptions,
}

impl vw_eval::demo::VideoPredictor for Replanned<'_> {
    fn name(&self) -> String {
        "re-planned".into()
    }
    fn description(&self) -> String {
        "the policy re-plans at every step from the frame the step starts from".into()
    }
    fn predict(&mut self, first: &candle_core::Tensor, frames: usize) -> vw_eval::Result<candle_core::Tensor> {
        let r = vw_ar_policy::rollout::rollout_replanned(self.policy, self.dynamics, &first.unsqueeze(0)?, &self.opts)
            .map_err(|e| vw_eval::Error::Invalid(e.to_string()))?;
        let v = r.video.squeeze(0)?.to_dtype(DType::F32)?;
        let t = v.dim(1)? - 1;
        Ok(v.narrow(1, 1, t.min(frames))?)
    }
}

/// How far the policy's greedy plan of the first step agrees with the codes the dLDM extracts from
/// the expert's video: the share of episodes whose plan matches every code up to and including
/// transition `j`, for each transition of the step.
fn agreement(
    look: &str,
    policy: &vw_ar_policy::Policy,
    ldm: &dyn vw_dldm::LatentDynamics,
    eps: &[Episode],
    opts: &GenerateOptions,
    dev: &Device,
) -> anyhow::Result<()> {
    let expert = episode_codes(ldm, eps, dev)?;
    let tps = policy.config().transitions_per_step;
    let cpt = policy.config().codes_per_transition;
    let mut prefix = vec![0usize; tps];
    let mut tokens = vec![0usize; tps];
    // Every recipe step: how often the plan's step k is the expert's step k exactly, given that
    // steps 1..k-1 were too, and the codes right in step k.
    let (mut whole, mut right, mut total, mut reached) = ([0usize; 8], [0usize; 8], [0usize; 8], [0usize; 8]);
    for (ep, codes) in eps.iter().zip(&expert) {
        let x = vw_data::image_tensor::image_to_tensor(&ep.frames[0], dev)?.unsqueeze(0)?;
        let plan = policy.generate(&x, None, opts)?.steps.into_iter().next().unwrap_or_default();
        let first = plan.first().cloned().unwrap_or_default();
        let mut ok = true;
        for j in 0..tps {
            let want = &codes[j];
            let got = first.get(j * cpt..(j + 1) * cpt).unwrap_or(&[]);
            tokens[j] += want.iter().zip(got).filter(|(a, b)| a == b).count();
            ok &= got == &want[..];
            prefix[j] += usize::from(ok);
        }
        let mut all_before = true;
        for k in 0..ep.num_steps().min(8) {
            let want: Vec<u32> = codes[k * tps..(k + 1) * tps].concat();
            let got = plan.get(k).cloned().unwrap_or_default();
            right[k] += want.iter().zip(&got).filter(|(a, b)| a == b).count();
            total[k] += want.len();
            if all_before {
                reached[k] += 1;
                all_before = got == want;
                whole[k] += usize::from(all_before);
            }
        }
    }
    let n = eps.len() as f64;
    let pct = |v: &[usize], d: f64| v.iter().map(|&c| format!("{:.0}", 100.0 * c as f64 / d)).collect::<Vec<_>>();
    println!(
        "{look}: step 1's plan equals the expert's codes through transition 1..{tps}: {}%; codes right per transition: {}%",
        pct(&prefix, n).join(" "),
        pct(&tokens, n * cpt as f64).join(" ")
    );
    let per = |num: &[usize], den: &[usize]| -> Vec<String> {
        num.iter()
            .zip(den)
            .take_while(|(_, &d)| d > 0)
            .map(|(&a, &d)| format!("{:.0}", 100.0 * a as f64 / d as f64))
            .collect()
    };
    println!(
        "{look}: plan's step k equals the expert's (after steps 1..k-1 did), k = 1..: {}%; codes right in step k: {}%",
        per(&whole, &reached).join(" "),
        per(&right, &total).join(" ")
    );
    Ok(())
}

/// Pixels of block `block`'s colour within `half` cells of the block-sized square whose top-left
/// corner is `(u0, v0)` (world units): their count and centroid in pixels.
fn block_pixels(
    judge: &vw_data::craftworld::Judge,
    frame: &image::RgbImage,
    block: usize,
    (u0, v0): (f32, f32),
    half: f32,
) -> (usize, f32, f32) {
    use vw_data::craftworld::CELL;
    let (cx, cy) = judge.camera.project(u0 + 0.5 * CELL, v0 + 0.5 * CELL);
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    let r = half * CELL * judge.camera.scale * w;
    let (mut n, mut sx, mut sy) = (0usize, 0f32, 0f32);
    for (x, y, p) in frame.enumerate_pixels() {
        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
        if (px - cx * w).abs() > r || (py - cy * h).abs() > r {
            continue;
        }
        if judge.classify(p.0.map(|c| c as f32 / 255.0)) == Some(block) {
            n += 1;
            sx += px;
            sy += py;
        }
    }
    if n == 0 {
        (0, 0.0, 0.0)
    } else {
        (n, sx / n as f32, sy / n as f32)
    }
}

/// Writes `rows` of equally sized frames as one PNG at `path`, magnified 4x (nearest).
fn save_grid(path: &str, rows: &[&[&image::RgbImage]]) -> anyhow::Result<()> {
    let (w, h) = (rows[0][0].width(), rows[0][0].height());
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let mut grid = image::RgbImage::new(cols * w, rows.len() as u32 * h);
    for (r, row) in rows.iter().enumerate() {
        for (c, f) in row.iter().enumerate() {
            image::imageops::replace(&mut grid, *f, (c as u32 * w) as i64, (r as u32 * h) as i64);
        }
    }
    let big = image::imageops::resize(&grid, 4 * grid.width(), 4 * grid.height(), image::imageops::FilterType::Nearest);
    big.save(path).with_context(|| format!("writing {path}"))
}

/// At each episode's first failed step: was the new block missed or an earlier one lost, and
/// where the new block's pixels are against the expert's (within 1.5 cells of its target). With
/// `WHY_PNG=DIR`, also writes the frames as `DIR/<tag>-<seed>-step<k>.png` and `-steps.png`.
fn why_failed(tag: &str, eps: &[Episode], scored: &Scored, fps: usize) -> anyhow::Result<()> {
    let (mut lost, mut missed, mut absent, mut at_source) = (0usize, 0usize, 0usize, 0usize);
    let mut offs = Vec::new();
    for (ep, video) in eps.iter().zip(&scored.videos) {
        let judge = vw_data::craftworld::Judge::for_episode(ep);
        let ends: Vec<_> = (0..ep.num_steps()).map_while(|k| video.get((k + 1) * fps)).collect();
        let Some(k) =
            (0..ep.num_steps()).find(|&k| ends.get(k).is_none_or(|f| judge.steps_completed(f, &ep.recipe) <= k))
        else {
            continue;
        };
        let Some(frame) = ends.get(k) else { continue };
        let present = judge.placements_present(frame, &ep.recipe);
        if let Ok(dir) = std::env::var("WHY_PNG") {
            // The expert's frame and the drawn one at the step's start and end, side by side.
            let start = k * fps;
            let strip = [&ep.frames[start], &video[start], &ep.frames[(k + 1) * fps], *frame];
            save_grid(&format!("{dir}/{tag}-{}-step{}.png", ep.seed, k + 1), &[&strip])?;
            // Every step end up to the failed one: the expert's above, the drawn below.
            let expert: Vec<_> = (0..k + 2).map(|j| &ep.frames[j * fps]).collect();
            let drawn: Vec<_> = (0..k + 2).map(|j| video.get(j * fps).unwrap_or(frame)).collect();
            save_grid(&format!("{dir}/{tag}-{}-steps.png", ep.seed), &[&expert, &drawn])?;
        }
        if present[..k].iter().any(|p| !p) {
            lost += 1;
        }
        if !present[k] {
            missed += 1;
            let p = &ep.recipe.placements[k];
            let cell = vw_data::craftworld::cell_top_left(p.cell);
            let (n, x, y) = block_pixels(&judge, frame, p.block, cell, 1.5);
            let (ne, xe, ye) = block_pixels(&judge, &ep.frames[(k + 1) * fps], p.block, cell, 1.5);
            if n < ne / 3 {
                absent += 1;
                // Where the block stood when the step began: is it still there?
                let source = ep.truth[k * fps].scene.blocks.iter().find(|b| b.0 == p.block).map(|b| (b.1, b.2));
                if let Some(src) = source {
                    let (ns, _, _) = block_pixels(&judge, frame, p.block, src, 0.5);
                    if ns >= ne / 2 {
                        at_source += 1;
                        println!("    seed {} step {}: the block is still where the step began", ep.seed, k + 1);
                    }
                }
            } else {
                offs.push((k, x - xe, y - ye, n, ne));
            }
        }
    }
    println!(
        "  first failed step: an earlier block lost in {lost}, the new block not in its cell in {missed} (of which mostly absent near it: {absent}, and of those still where the step began: {at_source})"
    );
    for (k, dx, dy, n, ne) in offs {
        println!("    step {}: new block off by dx {dx:+.1} dy {dy:+.1} px ({n} px, expert {ne})", k + 1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut grid, mut hidden, mut layers, mut lr, mut augment) = (None, None, None, None, None);
    let (mut factors, mut twins, mut replan, mut why) = (false, false, false, false);
    let mut fill_bg = None;
    let mut anchor = None;
    let mut dev = Device::Cpu;
    let (mut clip_snap, mut layers_from, mut motion_steps) = (None::<usize>, None::<PathBuf>, None::<u64>);
    let (mut n, mut steps, mut eval, mut out, mut ckpt, mut policy_dir) =
        (96usize, None, 32usize, None, PathBuf::from("checkpoints/craftworld"), None::<PathBuf>);
    while let Some(k) = args.next() {
        let v = args.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--episodes" => n = v.parse()?,
            "--steps" => steps = Some(v.parse::<u64>()?),
            "--eval" => eval = v.parse()?,
            "--out" => out = Some(PathBuf::from(v)),
            "--checkpoints" => ckpt = v.into(),
            "--policy" => policy_dir = Some(v.into()),
            "--augment" => {
                augment = Some(match v.as_str() {
                    "demo" => vw_eval::demo::policy_augment(),
                    "photometric" => vw_dldm::train::craft::Augment {
                        zoom: 0.0,
                        rotate: 0.0,
                        shift: 0,
                        ..vw_eval::demo::policy_augment()
                    },
                    "off" => Default::default(),
                    other => anyhow::bail!("--augment {other}: expected demo, photometric or off"),
                })
            }
            "--factors" => factors = v == "on",
            "--twins" => twins = v == "on",
            "--why" => why = v == "on",
            "--fill-bg" => {
                fill_bg = Some(match v.as_str() {
                    "on" => true,
                    "off" => false,
                    other => anyhow::bail!("--fill-bg {other}: expected on or off"),
                })
            }
            "--anchor" => anchor = Some(v.parse()?),
            "--replan" => replan = v == "on",
            "--device" => dev = vw_tensor_kernels::device::parse_device(&v)?,
            "--clip-snap" => clip_snap = Some(v.parse()?),
            "--layers-from" => layers_from = Some(v.into()),
            "--motion-steps" => motion_steps = Some(v.parse()?),
            "--lr" => lr = Some(v.parse::<f64>()?),
            "--grid" => grid = Some(v.parse::<usize>()?),
            "--hidden" => hidden = Some(v.parse::<usize>()?),
            "--layers" => layers = Some(v.parse::<usize>()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(n >= 1 && eval >= 1, "--episodes and --eval must be >= 1");
    let mut cfg = read_config(&ckpt)?;
    cfg.train_episodes = n;
    if let Some(s) = steps {
        cfg.policy_steps = s;
    }
    if let Some(lr) = lr {
        cfg.policy_lr = lr;
    }
    if let Some(a) = augment {
        cfg.policy_augment = a;
    }
    let ldm = match clip_snap {
        None => clip_dynamics(&ckpt.join("dldm"), &ckpt.join(CLIP_DIR), None, fill_bg, &dev)?,
        Some(passes) => {
            // The demo's clip stage over the committed dLDM, with snap passes.
            use vw_eval::demo::ldm::{clip_config, demo_stage1_config, train_clip, LdmKind};
            let out = out.as_ref().context("--clip-snap needs --out DIR")?;
            let s1 = demo_stage1_config(&cfg, LdmKind::Dldm);
            let mut cc = clip_config(&s1, cfg.clip.as_ref().context("the demo has no clip stage")?, cfg.seed + 401);
            cc.renderer.snap = passes;
            if let Some(m) = motion_steps {
                cc.motion_steps = m;
                cc.train.total_steps = m;
                cc.train.checkpoint_every = m;
            }
            if let Some(l) = &layers_from {
                cc.layers_init = Some(l.clone());
            }
            if out.join(CLIP_DIR).join("checkpoint.json").exists() {
                eprintln!("{}: trained already", out.join(CLIP_DIR).display());
                clip_dynamics(&ckpt.join("dldm"), &out.join(CLIP_DIR), None, fill_bg, &dev)?
            } else {
                let train = episodes(&cfg, Split::Train, n, false)?;
                let t = std::time::Instant::now();
                let ldm = train_clip(&s1, &ckpt.join("dldm"), &cc, &train, &out.join(CLIP_DIR), false, &dev, true)?;
                eprintln!("clip renderer ({passes} snap passes) in {:.0} s", t.elapsed().as_secs_f64());
                ldm
            }
        }
    };
    let policy = match &policy_dir {
        Some(d) => load_policy(d, &dev, DType::F32)?,
        None => {
            let out = out.clone().context("--out DIR is required to train a policy")?;
            let t = std::time::Instant::now();
            let train = episodes(&cfg, Split::Train, n, true)?;
            eprintln!("{n} training episodes in {:.0} s", t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let opts = TrainOptions { device: dev.clone(), dtype: DType::F32, progress: true, ..Default::default() };
            let mut pc = vw_eval::demo::train::policy_config(&cfg, ldm.as_ref())?;
            if let Some(g) = grid {
                // Fewer stride-2 convs: a finer grid of observation tokens.
                let convs = (cfg.craft.image_size / g).max(2).ilog2() as usize;
                let channels = [16, 32, 64, 64, 64, 64].into_iter().take(convs).collect();
                pc.obs_encoder = ObsEncoderConfig::Conv { in_channels: 3, channels, image_size: cfg.craft.image_size };
            }
            if let Some(h) = hidden {
                pc.hidden_size = h;
                pc.intermediate_size = h * 11 / 4;
            }
            if let Some(l) = layers {
                pc.num_hidden_layers = l;
            }
            eprintln!("policy config: {}", serde_json::to_string(&pc)?);
            let p = if replan {
                let tps = pc.transitions_per_step;
                let data = vw_ar_policy::craftworld::step_code_dataset(ldm.as_ref(), &train, tps, &dev)?;
                eprintln!("{} step-start examples", data.len());
                vw_eval::demo::train::train_demo_policy_on(&cfg, &pc, 0, &data, &out, &opts)?
            } else {
                vw_eval::demo::train::train_demo_policy(&cfg, &pc, 0, ldm.as_ref(), &train, &out, &opts)?
            };
            eprintln!("policy: {} steps on {n} episodes in {:.0} s", cfg.policy_steps, t.elapsed().as_secs_f64());
            p
        }
    };
    let held_out = episodes(&cfg, Split::TestAppearance, eval, false)?;
    let unseen: Vec<Episode> = (0..eval)
        .map(|i| generate_episode(&cfg.craft, Split::Train, cfg.train_seed(UNSEEN_OFFSET + i)))
        .collect::<Result<_, _>>()?;
    let opts = GenerateOptions { max_steps: cfg.craft.max_steps + 2, ..Default::default() };
    let fps = cfg.craft.frames_per_step;
    // The policy's plans drawn by the clip renderer and judged step by step.
    let score_plans = |eps: &[Episode]| -> anyhow::Result<Scored> {
        if replan {
            let mut p = Replanned { policy: &policy, dynamics: ldm.as_ref(), opts };
            return Ok(score_method(&mut p, eps, fps, 0, &dev)?);
        }
        let mut p = PlanAndRender {
            name: String::new(),
            description: String::new(),
            policy: &policy,
            dynamics: ldm.as_ref(),
            opts,
            codes_seen: Vec::new(),
        };
        Ok(score_method(&mut p, eps, fps, 0, &dev)?)
    };
    // The same seeds in the training look have the same task, layout and motions: their codes are
    // what a perfect policy trained on the training look would predict.
    let twin: Vec<Episode> =
        (0..eval).map(|e| generate_episode(&cfg.craft, Split::Train, cfg.test_seed(e))).collect::<Result<_, _>>()?;
    if factors {
        // The held-out episodes' layouts in the training look, then with one factor of the
        // held-out look swapped in at a time: which part of the look the policy's plans miss.
        let looks = std::iter::once(("training look", None))
            .chain(vw_data::craftworld::LOOK_FACTORS.iter().map(|f| (f.0, Some(f))))
            .chain(std::iter::once(("held-out look", None)));
        for (i, (name, factor)) in looks.enumerate() {
            let eps: Vec<Episode> = (0..eval)
                .map(|e| match (factor, i) {
                    (Some(f), _) => vw_data::craftworld::generate_episode_with_factor(&cfg.craft, cfg.test_seed(e), f),
                    (None, 0) => generate_episode(&cfg.craft, Split::Train, cfg.test_seed(e)),
                    (None, _) => generate_episode(&cfg.craft, Split::TestAppearance, cfg.test_seed(e)),
                })
                .collect::<Result<_, _>>()?;
            if twins {
                // The training-look twin's codes drawn in this look: what a perfect policy's plans
                // would give here, so the renderer's share of the look's cost.
                let mut e = ExpertCodes {
                    name: String::new(),
                    dynamics: ldm.as_ref(),
                    episodes: &twin,
                    next: 0,
                    anchor_every: anchor,
                };
                let keep = if why { eps.len() } else { 0 };
                let scored = score_method(&mut e, &eps, fps, keep, &dev)?;
                report(&format!("twin's codes, held-out layouts, {name}"), &scored);
                if why {
                    why_failed(&name.replace(['+', ' '], "-"), &eps, &scored, fps)?;
                }
            } else {
                report(&format!("policy's codes, held-out layouts, {name}"), &score_plans(&eps)?);
            }
        }
        return Ok(());
    }
    if twins {
        // The twin's codes drawn from the held-out first frame are the policy rows' ceiling on
        // that look.
        let score_twins = |ldm: &dyn vw_dldm::LatentDynamics, label: &str| -> anyhow::Result<()> {
            for (look, tag, eps) in [("held-out look", "held-out", &held_out), ("training look", "training", &twin)] {
                let mut e =
                    ExpertCodes { name: String::new(), dynamics: ldm, episodes: &twin, next: 0, anchor_every: anchor };
                let keep = if why { eps.len() } else { 0 };
                let scored = score_method(&mut e, eps, fps, keep, &dev)?;
                report(&format!("twin's codes, {look}{label}"), &scored);
                if why {
                    why_failed(tag, eps, &scored, fps)?;
                }
            }
            Ok(())
        };
        match (clip_snap, &out) {
            (Some(trained), Some(out)) => {
                // A renderer trained with snap networks is drawn with 0, 1 and 2 passes (or more).
                let most = if trained == 0 { 0 } else { trained.max(2) };
                for passes in 0..=most {
                    let d = clip_dynamics(&ckpt.join("dldm"), &out.join(CLIP_DIR), Some(passes), fill_bg, &dev)?;
                    score_twins(d.as_ref(), &format!(", {passes} snap passes"))?;
                }
            }
            _ => score_twins(ldm.as_ref(), "")?,
        }
        return Ok(());
    }
    let seen = episodes(&cfg, Split::Train, eval.min(n), false)?;
    for (look, eps) in
        [("held-out look", &held_out), ("training look, new layouts", &unseen), ("its own training episodes", &seen)]
    {
        agreement(look, &policy, ldm.as_ref(), eps, &opts, &dev)?;
        report(&format!("policy's codes, {look}"), &score_plans(eps)?);
        let mut e =
            ExpertCodes { name: String::new(), dynamics: ldm.as_ref(), episodes: eps, next: 0, anchor_every: None };
        report(&format!("expert's codes, {look}"), &score_method(&mut e, eps, fps, 0, &dev)?);
    }
    Ok(())
}

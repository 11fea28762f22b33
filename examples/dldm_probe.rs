//! Do dLDM codes carry dynamics that transfer to unseen appearances? The paper's claim in miniature.
//!
//! Trains (or loads, with `--reuse`) the tiny dLDM and the VideoWorld-1-style baseline on CraftWorld
//! train-split episodes, encodes held-out episodes of the *test-appearance* split (other textures,
//! light, camera, distractors), fits a linear probe (multinomial logistic regression on the one-hot FSQ
//! digits of the codes, or on one-hot whole codes with `--probe onehot`)
//! from the codes of each transition to its ground-truth action label (9 directions x gripper) on the
//! train-split codes, and reports its accuracy on the held-out appearance for both models.
//!
//! ```text
//! cargo run --release --example dldm_probe -- --out runs/dldm_probe [--reuse] [--stage2]
//!     [--steps N] [--test-episodes N] [--motion-weight W] [--renderer-mix N]
//!     [--entropy-weight W] [--zero-init] [--arch patch|motion|sprite] [--mse] [--quant-noise] [--variance-weight W] [--only dldm|vw1] [--batch N] [--lr LR]
//!     [--probe digits|onehot] [--play FRAMES]
//!     [--jitter J] [--texture STD] [--grating AMP] [--diff-only]
//! ```

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vw_data::craftworld::{Split, NUM_ACTION_CLASSES};
use vw_dldm::train::codes::{encode_transitions, CodesFile};
use vw_dldm::train::craft::{CraftData, Transitions};
use vw_dldm::train::stage1::{load_stage1, train_stage1, Stage1Config};
use vw_dldm::train::stage2::{load_stage2, train_stage2, Stage2Config};
use vw_dldm::LatentDynamics;
use vw_eval::probe::{probe_accuracy, ProbeConfig, ProbeFeatures, ProbeReport};

/// The `vw` binary's allocator (see the workspace Cargo.toml): with glibc's, a third of a training
/// step was page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    out: PathBuf,
    reuse: bool,
    stage2: bool,
    seed: u64,
    steps: Option<u64>,
    test_episodes: usize,
    motion_weight: Option<f64>,
    renderer_mix: Option<usize>,
    entropy_weight: Option<f64>,
    zero_init: bool,
    arch: Option<vw_dldm::baseline::LdmArch>,
    mse: bool,
    quant_noise: bool,
    variance_weight: Option<f64>,
    only: Option<String>,
    batch: Option<usize>,
    lr: Option<f64>,
    onehot_probe: bool,
    play: Option<usize>,
    jitter: Option<f32>,
    texture: Option<f32>,
    grating: Option<f32>,
    diff_only: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        out: "runs/dldm_probe".into(),
        reuse: false,
        stage2: false,
        seed: 0,
        steps: None,
        test_episodes: 24,
        motion_weight: None,
        renderer_mix: None,
        entropy_weight: None,
        zero_init: false,
        arch: None,
        mse: false,
        quant_noise: false,
        variance_weight: None,
        only: None,
        batch: None,
        lr: None,
        onehot_probe: false,
        play: None,
        jitter: None,
        texture: None,
        grating: None,
        diff_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = val()?.into(),
            "--reuse" => a.reuse = true,
            "--stage2" => a.stage2 = true,
            "--seed" => a.seed = val()?.parse()?,
            "--steps" => a.steps = Some(val()?.parse()?),
            "--test-episodes" => a.test_episodes = val()?.parse()?,
            "--motion-weight" => a.motion_weight = Some(val()?.parse()?),
            "--renderer-mix" => a.renderer_mix = Some(val()?.parse()?),
            "--entropy-weight" => a.entropy_weight = Some(val()?.parse()?),
            "--zero-init" => a.zero_init = true,
            "--arch" => {
                a.arch = Some(match val()?.as_str() {
                    "motion" => vw_dldm::baseline::LdmArch::Motion,
                    "sprite" => vw_dldm::baseline::LdmArch::Sprite,
                    "patch" => vw_dldm::baseline::LdmArch::Patch,
                    other => anyhow::bail!("--arch {other}: expected patch, motion or sprite"),
                })
            }
            "--mse" => a.mse = true,
            "--quant-noise" => a.quant_noise = true,
            "--variance-weight" => a.variance_weight = Some(val()?.parse()?),
            "--only" => a.only = Some(val()?),
            "--batch" => a.batch = Some(val()?.parse()?),
            "--lr" => a.lr = Some(val()?.parse()?),
            "--play" => a.play = Some(val()?.parse()?),
            "--jitter" => a.jitter = Some(val()?.parse()?),
            "--texture" => a.texture = Some(val()?.parse()?),
            "--grating" => a.grating = Some(val()?.parse()?),
            "--diff-only" => a.diff_only = true,
            "--probe" => {
                a.onehot_probe = match val()?.as_str() {
                    "digits" => false,
                    "onehot" => true,
                    other => anyhow::bail!("--probe {other}: expected digits or onehot"),
                }
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// Probe features of a codes file: the FSQ digits of each code (`levels` given), else one-hot codes.
fn features(c: &CodesFile, levels: Option<&[usize]>) -> anyhow::Result<(ProbeFeatures, Vec<usize>)> {
    let x = match levels {
        Some(l) => ProbeFeatures::fsq_digits(&c.codes, l)?,
        None => ProbeFeatures::one_hot(&c.codes, c.vocab_size)?,
    };
    Ok((x, c.action_label.iter().map(|&l| l as usize).collect()))
}

/// Probe fit on `train` codes, scored on each of `tests`.
fn probe(train: &CodesFile, tests: &[&CodesFile], levels: Option<&[usize]>) -> anyhow::Result<Vec<ProbeReport>> {
    let (xtr, ytr) = features(train, levels)?;
    tests
        .iter()
        .map(|t| {
            let (xte, yte) = features(t, levels)?;
            Ok(probe_accuracy((&xtr, &ytr), (&xte, &yte), NUM_ACTION_CLASSES, ProbeConfig::default())?)
        })
        .collect()
}

fn distinct_codes(c: &CodesFile) -> usize {
    c.codes.iter().collect::<std::collections::HashSet<_>>().len()
}

struct Row {
    name: &'static str,
    train_s: f64,
    reports: Vec<ProbeReport>,
    distinct: usize,
}

fn evaluate(
    name: &'static str,
    model: &dyn LatentDynamics,
    data: &CraftData,
    test_n: usize,
    train_s: f64,
    out: &Path,
    levels: Option<&[usize]>,
) -> anyhow::Result<Row> {
    let dev = candle_core::Device::Cpu;
    // The probe is fit on the expert's train episodes even when the model trained on play.
    let expert = CraftData { play_frames: 0, ..data.clone() };
    let train = encode_transitions(model, &Transitions::render(&expert, Split::Train, &dev)?)?;
    // Held-out episodes: new seeds (new recipes and layouts), in both appearances.
    let held = CraftData { episodes: test_n, first_seed: 100_000, play_frames: 0, ..data.clone() };
    let same = encode_transitions(model, &Transitions::render(&held, Split::Train, &dev)?)?;
    let other = encode_transitions(model, &Transitions::render(&held, Split::TestAppearance, &dev)?)?;
    train.save(&out.join(format!("{name}_codes_train.safetensors")))?;
    other.save(&out.join(format!("{name}_codes_test_appearance.safetensors")))?;
    let reports = probe(&train, &[&same, &other], levels)?;
    Ok(Row { name, train_s, reports, distinct: distinct_codes(&train) })
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    std::fs::create_dir_all(&args.out)?;
    let dev = candle_core::Device::Cpu;
    let mut rows = Vec::new();
    for (name, mut cfg) in [("dldm", Stage1Config::tiny()), ("vw1", Stage1Config::tiny_vw1())] {
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        cfg.train.seed = args.seed;
        cfg.init_seed = args.seed;
        if let Some(s) = args.steps {
            cfg.train.total_steps = s;
        }
        if let Some(w) = args.motion_weight {
            cfg.model.motion_weight = w;
        }
        if let Some(arch) = args.arch {
            cfg.model.arch = arch;
        }
        if args.quant_noise {
            cfg.model.quant_noise = true;
        }
        if args.mse {
            cfg.model.loss = vw_dldm::baseline::ReconLoss::Mse;
        }
        if let Some(w) = args.variance_weight {
            cfg.model.variance_weight = w;
        }
        if let Some(b) = args.batch {
            cfg.train.batch_size = b;
        }
        if let Some(j) = args.jitter {
            cfg.augment.color_jitter = j;
        }
        if let Some(t) = args.texture {
            cfg.augment.static_noise = t;
        }
        if args.diff_only {
            cfg.model.diff_only = true;
        }
        if let Some(g) = args.grating {
            cfg.augment.grating = g;
        }
        if let Some(n) = args.play {
            cfg.data.play_frames = n;
        }
        if let Some(lr) = args.lr {
            cfg.train.optim.lr = lr;
        }
        if let Some(n) = args.renderer_mix {
            cfg.model.renderer_mix_layers = n;
        }
        if args.zero_init {
            cfg.model.zero_init_residual = true;
        }
        if let Some(w) = args.entropy_weight {
            cfg.model.entropy_weight = w;
        }
        let dir = args.out.join(name);
        let t0 = Instant::now();
        // A reused run is probed with the config it was trained with (levels, data), not the flags'.
        let (cfg, model) = if args.reuse && dir.join("checkpoint.json").exists() {
            load_stage1(&dir, &dev)?
        } else {
            let model = train_stage1(&cfg, &dir, false, &dev, true)?;
            (cfg, model)
        };
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("{name}: trained/loaded in {secs:.1} s");
        let levels = (!args.onehot_probe).then_some(&cfg.model.levels[..]);
        rows.push(evaluate(name, &model, &cfg.data, args.test_episodes, secs, &args.out, levels)?);
    }
    if args.stage2 {
        let mut cfg = Stage2Config::tiny();
        cfg.train.seed = args.seed;
        cfg.init_seed = args.seed;
        let dir = args.out.join("dldm_stage2");
        let t0 = Instant::now();
        let model = if args.reuse && dir.join("checkpoint.json").exists() {
            load_stage2(&dir, &dev)?.1
        } else {
            train_stage2(&cfg, Some(&args.out.join("dldm")), &dir, false, &dev, true)?
        };
        let secs = t0.elapsed().as_secs_f64();
        let levels = (!args.onehot_probe).then_some(&cfg.model.levels[..]);
        rows.push(evaluate("dldm_stage2", &model, &cfg.data, args.test_episodes, secs, &args.out, levels)?);
    }
    let mut md = String::from(
        "| model | train s | distinct codes (train) | probe acc. train codes | held-out episodes, train appearance | held-out episodes, **held-out appearance** | majority class |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {:.3} | {:.3} | **{:.3}** | {:.3} |\n",
            r.name,
            r.train_s,
            r.distinct,
            r.reports[0].train_accuracy,
            r.reports[0].test_accuracy,
            r.reports[1].test_accuracy,
            r.reports[1].majority_baseline
        ));
    }
    let json: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"model": r.name, "train_seconds": r.train_s, "distinct_codes": r.distinct,
            "same_appearance": r.reports[0], "held_out_appearance": r.reports[1]})
        })
        .collect();
    std::fs::write(args.out.join("probe.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(args.out.join("probe.md"), &md)?;
    println!("{md}");
    Ok(())
}

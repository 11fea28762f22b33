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
//!     [--jitter J] [--texture STD] [--grating AMP] [--diff-only] [--shift PX] [--restart-on-collapse]
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

/// A change the command line makes to both models' stage-1 config.
type Override = Box<dyn Fn(&mut Stage1Config)>;

struct Args {
    out: PathBuf,
    reuse: bool,
    stage2: bool,
    seed: u64,
    test_episodes: usize,
    only: Option<String>,
    onehot_probe: bool,
    /// In command-line order, after the seed.
    overrides: Vec<Override>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        out: "runs/dldm_probe".into(),
        reuse: false,
        stage2: false,
        seed: 0,
        test_episodes: 24,
        only: None,
        onehot_probe: false,
        overrides: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        // `--flag VALUE` that sets one field of the config to the parsed value.
        macro_rules! set {
            ($($field:ident).+) => {{
                let v = val()?.parse()?;
                Box::new(move |c: &mut Stage1Config| c.$($field).+ = v)
            }};
        }
        let set: Override = match k.as_str() {
            "--out" => {
                a.out = val()?.into();
                continue;
            }
            "--reuse" => {
                a.reuse = true;
                continue;
            }
            "--stage2" => {
                a.stage2 = true;
                continue;
            }
            "--seed" => {
                a.seed = val()?.parse()?;
                continue;
            }
            "--test-episodes" => {
                a.test_episodes = val()?.parse()?;
                continue;
            }
            "--only" => {
                a.only = Some(val()?);
                continue;
            }
            "--probe" => {
                a.onehot_probe = match val()?.as_str() {
                    "digits" => false,
                    "onehot" => true,
                    other => anyhow::bail!("--probe {other}: expected digits or onehot"),
                };
                continue;
            }
            "--steps" => set!(train.total_steps),
            "--motion-weight" => set!(model.motion_weight),
            "--renderer-mix" => set!(model.renderer_mix_layers),
            "--entropy-weight" => set!(model.entropy_weight),
            "--zero-init" => Box::new(|c| c.model.zero_init_residual = true),
            "--arch" => {
                let v = match val()?.as_str() {
                    "motion" => vw_dldm::baseline::LdmArch::Motion,
                    "sprite" => vw_dldm::baseline::LdmArch::Sprite,
                    "patch" => vw_dldm::baseline::LdmArch::Patch,
                    other => anyhow::bail!("--arch {other}: expected patch, motion or sprite"),
                };
                Box::new(move |c| c.model.arch = v)
            }
            "--mse" => Box::new(|c| c.model.loss = vw_dldm::baseline::ReconLoss::Mse),
            "--quant-noise" => Box::new(|c| c.model.quant_noise = true),
            "--variance-weight" => set!(model.variance_weight),
            "--diff-only" => Box::new(|c| c.model.diff_only = true),
            "--batch" => set!(train.batch_size),
            "--lr" => set!(train.optim.lr),
            "--play" => set!(data.play_frames),
            "--jitter" => set!(augment.color_jitter),
            "--texture" => set!(augment.static_noise),
            "--grating" => set!(augment.grating),
            "--shift" => set!(augment.shift),
            "--restart-on-collapse" => Box::new(|c| c.restart_on_collapse = Some(Default::default())),
            other => anyhow::bail!("unknown argument {other}"),
        };
        a.overrides.push(set);
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
        for set in &args.overrides {
            set(&mut cfg);
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

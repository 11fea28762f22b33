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
//! cargo run --release --example dldm_probe -- --out runs/dldm_probe [--preset tiny|play] [--reuse] [--stage2]
//!     [--steps N] [--test-episodes N] [--motion-weight W] [--renderer-mix N]
//!     [--entropy-weight W] [--zero-init] [--arch patch|motion|sprite] [--mse] [--quant-noise] [--variance-weight W] [--only dldm|vw1] [--batch N] [--lr LR]
//!     [--probe digits|onehot|embedding|digits+embedding] [--play FRAMES]
//!     [--jitter J] [--texture STD] [--grating AMP] [--diff-only] [--motion-gate TAU] [--shift PX] [--zoom Z] [--rotate RAD] [--background-only]
//!     [--restart-on-collapse] [--factors] [--device cpu|cuda:N] [--queries N] [--levels 8,5,5,5] [--warmup N] [--blur SIGMA] [--diff-norm none|unit-max|ternary] [--composite]
//!     [--extent-weight W] [--extent-target moving|cells|colour] [--displacement-weight W]
//! ```
//!
//! `--factors` also scores the held-out episodes in the training look with one factor of their
//! held-out look swapped in (camera, table, wall, light, blocks + distractors), to say which factor
//! the transfer fails on. `--device cuda:0` trains and encodes on a GPU (a sweep there; the issue's
//! budget is the CPU one).

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vw_data::craftworld::{generate_episode_with_factor, Split, LOOK_FACTORS, NUM_ACTION_CLASSES};
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
    probe: ProbeKind,
    factors: bool,
    device: vw_tensor_kernels::device::DeviceSpec,
    /// `--preset play`: start both models from `Stage1Config::tiny_play` (the VW1-style one with its
    /// codes-only renderer) instead of `tiny`.
    play_preset: bool,
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
        probe: ProbeKind::Digits,
        factors: false,
        device: "cpu".parse()?,
        play_preset: false,
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
                a.probe = match val()?.as_str() {
                    "digits" => ProbeKind::Digits,
                    "onehot" => ProbeKind::OneHot,
                    "embedding" => ProbeKind::Embedding,
                    "digits+embedding" => ProbeKind::DigitsAndEmbedding,
                    other => anyhow::bail!("--probe {other}: expected digits, onehot, embedding or digits+embedding"),
                };
                continue;
            }
            "--factors" => {
                a.factors = true;
                continue;
            }
            "--preset" => {
                a.play_preset = match val()?.as_str() {
                    "tiny" => false,
                    "play" => true,
                    other => anyhow::bail!("--preset {other}: expected tiny or play"),
                };
                continue;
            }
            "--device" => {
                a.device = val()?.parse()?;
                continue;
            }
            "--steps" => set!(train.total_steps),
            "--motion-weight" => set!(model.motion_weight),
            "--renderer-mix" => set!(model.renderer_mix_layers),
            "--entropy-weight" => set!(model.entropy_weight),
            "--zero-init" => Box::new(|c| c.model.zero_init_residual = true),
            "--arch" => {
                let v = choice(&k, &val()?)?;
                Box::new(move |c| c.model.arch = v)
            }
            "--mse" => Box::new(|c| c.model.loss = vw_dldm::baseline::ReconLoss::Mse),
            "--quant-noise" => Box::new(|c| c.model.quant_noise = true),
            "--variance-weight" => set!(model.variance_weight),
            "--extent-weight" => set!(model.extent_weight),
            "--displacement-weight" => set!(model.displacement_weight),
            "--extent-target" => {
                let v = choice(&k, &val()?)?;
                Box::new(move |c| c.model.extent_target = v)
            }
            "--queries" => set!(model.act_embedding_num),
            "--levels" => {
                let v = val()?
                    .split(',')
                    .map(|l| l.trim().parse::<usize>().with_context(|| format!("--levels: bad level {l:?}")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Box::new(move |c| c.model.levels = v.clone())
            }
            "--warmup" => set!(train.warmup_steps),
            "--diff-only" => Box::new(|c| c.model.diff_only = true),
            "--composite" => Box::new(|c| {
                // The VW1-style baseline has no frame to composite over.
                if c.model.renderer == vw_dldm::baseline::RendererKind::FrameConditioned {
                    c.model.composite = true
                }
            }),
            "--motion-gate" => set!(model.motion_gate_tau),
            "--blur" => set!(model.input_blur),
            "--diff-norm" => {
                let v = choice(&k, &val()?)?;
                Box::new(move |c| c.model.diff_norm = v)
            }
            "--batch" => set!(train.batch_size),
            "--lr" => set!(train.optim.lr),
            "--play" => set!(data.play_frames),
            "--jitter" => set!(augment.color_jitter),
            "--texture" => set!(augment.static_noise),
            "--grating" => set!(augment.grating),
            "--shift" => set!(augment.shift),
            "--zoom" => set!(augment.zoom),
            "--rotate" => set!(augment.rotate),
            "--background-only" => Box::new(|c| c.augment.background_only = true),
            "--restart-on-collapse" => Box::new(|c| c.restart_on_collapse = Some(Default::default())),
            other => anyhow::bail!("unknown argument {other}"),
        };
        a.overrides.push(set);
    }
    Ok(a)
}

/// A config enum from its command-line spelling (`unit-max` for the serialised `unit_max`); the
/// error lists the accepted values.
fn choice<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(v.replace('-', "_"))).with_context(|| format!("{flag} {v}"))
}

/// How the probe reads a code (see `vw_eval::probe::ProbeFeatures`).
#[derive(Clone, Copy)]
enum ProbeKind {
    /// One-hot FSQ digits.
    Digits,
    /// One-hot whole codes.
    OneHot,
    /// The FSQ code vectors.
    Embedding,
    /// Both of the first and the third.
    DigitsAndEmbedding,
}

/// Probe features of a codes file.
fn features(c: &CodesFile, kind: ProbeKind, levels: &[usize]) -> anyhow::Result<(ProbeFeatures, Vec<usize>)> {
    let x = match kind {
        ProbeKind::Digits => ProbeFeatures::fsq_digits(&c.codes, levels)?,
        ProbeKind::OneHot => ProbeFeatures::one_hot(&c.codes, c.vocab_size)?,
        ProbeKind::Embedding => ProbeFeatures::fsq_embedding(&c.codes, levels)?,
        ProbeKind::DigitsAndEmbedding => {
            ProbeFeatures::fsq_digits(&c.codes, levels)?.concat(&ProbeFeatures::fsq_embedding(&c.codes, levels)?)?
        }
    };
    Ok((x, c.action_label.iter().map(|&l| l as usize).collect()))
}

/// Probe fit on `train` codes, scored on each of `tests`.
fn probe(
    train: &CodesFile,
    tests: &[&CodesFile],
    kind: ProbeKind,
    levels: &[usize],
) -> anyhow::Result<Vec<ProbeReport>> {
    let (xtr, ytr) = features(train, kind, levels)?;
    tests
        .iter()
        .map(|t| {
            let (xte, yte) = features(t, kind, levels)?;
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
    /// (factor, probe report) of the held-out episodes in the training look with one factor swapped.
    factors: Vec<(&'static str, ProbeReport)>,
}

/// What `evaluate` needs besides the model and its config's data and FSQ levels.
struct Eval<'a> {
    test_n: usize,
    out: &'a Path,
    kind: ProbeKind,
    factors: bool,
    device: &'a candle_core::Device,
}

fn evaluate(
    name: &'static str,
    model: &dyn LatentDynamics,
    train_s: f64,
    (data, levels): (&CraftData, &[usize]),
    e: &Eval,
) -> anyhow::Result<Row> {
    let dev = e.device;
    // The probe is fit on the expert's train episodes even when the model trained on play.
    let expert = CraftData { play_frames: 0, ..data.clone() };
    let train = encode_transitions(model, &Transitions::render(&expert, Split::Train, dev)?)?;
    // Held-out episodes: new seeds (new recipes and layouts), in both appearances.
    let held = CraftData { episodes: e.test_n, first_seed: 100_000, play_frames: 0, ..data.clone() };
    let same = encode_transitions(model, &Transitions::render(&held, Split::Train, dev)?)?;
    let other = encode_transitions(model, &Transitions::render(&held, Split::TestAppearance, dev)?)?;
    train.save(&e.out.join(format!("{name}_codes_train.safetensors")))?;
    other.save(&e.out.join(format!("{name}_codes_test_appearance.safetensors")))?;
    let reports = probe(&train, &[&same, &other], e.kind, levels)?;
    let mut factors = Vec::new();
    if e.factors {
        for f in &LOOK_FACTORS {
            let eps = (0..held.episodes as u64)
                .map(|i| generate_episode_with_factor(&held.world, held.first_seed + i, f))
                .collect::<vw_data::Result<Vec<_>>>()?;
            let codes = encode_transitions(model, &Transitions::from_episodes(&eps, dev)?)?;
            factors.push((f.0, probe(&train, &[&codes], e.kind, levels)?.remove(0)));
        }
    }
    Ok(Row { name, train_s, reports, distinct: distinct_codes(&train), factors })
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    std::fs::create_dir_all(&args.out)?;
    let dev = args.device.open()?;
    let e = Eval { test_n: args.test_episodes, out: &args.out, kind: args.probe, factors: args.factors, device: &dev };
    let mut rows = Vec::new();
    let base = if args.play_preset { Stage1Config::tiny_play() } else { Stage1Config::tiny() };
    // The VW1-style baseline: the same encoder, quantizer and training, a codes-only renderer.
    let mut vw1 = base.clone();
    vw1.model.renderer = vw_dldm::baseline::RendererKind::CodesOnly;
    for (name, mut cfg) in [("dldm", base), ("vw1", vw1)] {
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
        rows.push(evaluate(name, &model, secs, (&cfg.data, &cfg.model.levels), &e)?);
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
        rows.push(evaluate("dldm_stage2", &model, secs, (&cfg.data, &cfg.model.levels), &e)?);
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
    if rows.iter().any(|r| !r.factors.is_empty()) {
        md.push_str("\n| model | held-out eps., train look + held-out ... |\n|---|---|\n");
        for r in &rows {
            let cells: Vec<String> = r.factors.iter().map(|(f, rep)| format!("{f} {:.3}", rep.test_accuracy)).collect();
            md.push_str(&format!("| {} | {} |\n", r.name, cells.join(" · ")));
        }
    }
    let json: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"model": r.name, "train_seconds": r.train_s, "distinct_codes": r.distinct,
            "same_appearance": r.reports[0], "held_out_appearance": r.reports[1],
            "held_out_factor": r.factors.iter().map(|(f, rep)| (f.to_string(), rep)).collect::<std::collections::BTreeMap<_, _>>()})
        })
        .collect();
    std::fs::write(args.out.join("probe.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(args.out.join("probe.md"), &md)?;
    println!("{md}");
    Ok(())
}

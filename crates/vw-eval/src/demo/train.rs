//! Training every stage of the demo into a checkpoint folder, and evaluating such a folder.
//!
//! Checkpoint folder layout (what `checkpoints/craftworld/` commits):
//! `demo.json` (the [`DemoConfig`]), `dldm/` and `vw1-ldm/` (vw-dldm stage-1 run folders),
//! `clip-dldm/` (the dLDM's clip renderer, when [`DemoConfig::clip`] is on),
//! `policy-dldm/`, `policy-vw1-ldm/`, `actions-dldm/`, `actions-vw1-ldm/` (run folders of
//! vw-ar-policy with the optimizer state stripped), `no-codes/` (`model.safetensors`,
//! `config.json`), and `metrics/<stage>.jsonl` (the training loss logs).

use super::evaluate::{data_err, frame_of, score_method, ExpertVideo, RepeatFirstFrame};
use super::ldm::{
    check_clip_stage, clip_config, demo_stage1_config, fresh_run, load_clip_dynamics, load_ldm, train_clip, train_ldm,
    BoxedLdm, LdmKind, CLIP_DIR,
};
use super::methods::{policy_err, transition_labels, CodePolicyController, ExpertCodes, NoCodes, PlanAndRender};
use super::{episodes, DemoConfig, DemoOutcome, DEMO_CONFIG_FILE};
use crate::baseline::{l1_loss, ClipPairs, FramePredictor};
use crate::chain::{evaluate_chains, ChainConfig};
use crate::report::{read_metrics_jsonl, write_gif_strip, write_json, Curve, EvalReport};
use crate::{codebook_usage, probe_accuracy, Error, ProbeConfig, ProbeFeatures, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::path::Path;
use std::time::Instant;
use vw_ar_policy::action_decoder::ActionDecoder;
use vw_ar_policy::craftworld::{action_dataset, code_dataset, episode_codes};
use vw_ar_policy::train::{
    load_action_decoder, load_policy, train_action_decoder, train_policy_augmented, TrainOptions,
};
use vw_ar_policy::{ActionDecoderConfig, GenerateOptions, Policy, PolicyConfig};
use vw_data::craftworld::{Episode, Split};
use vw_dldm::train::checkpoint::{self, EMA_PREFIX, OPTIM_PREFIX};
use vw_dldm::train::{fit, RunDir, TrainConfig, Trainer};
use vw_dldm::LatentDynamics;

const KINDS: [LdmKind; 2] = [LdmKind::Dldm, LdmKind::Vw1];

/// The no-codes baseline's folder (and loss log name) in a checkpoint folder.
const NO_CODES: &str = "no-codes";

fn stage(progress: bool, msg: &str) {
    if progress {
        vw_data::progress::note(&format!("==> {msg}"));
    }
}

fn transitions_per_step(cfg: &DemoConfig, ldm: &dyn LatentDynamics) -> Result<usize> {
    let fpc = ldm.frames_per_code_step();
    if fpc == 0 || !cfg.craft.frames_per_step.is_multiple_of(fpc) {
        return Err(Error::Invalid(format!(
            "CraftWorld frames_per_step {} is not a multiple of the model's {fpc} frames per code step",
            cfg.craft.frames_per_step
        )));
    }
    Ok(cfg.craft.frames_per_step / fpc)
}

/// The policy config for one latent dynamics model and the demo's frames.
pub fn policy_config(cfg: &DemoConfig, ldm: &dyn LatentDynamics) -> Result<PolicyConfig> {
    let mut p = PolicyConfig::tiny();
    p.code_vocab_size = ldm.vocab_size();
    p.codes_per_transition = ldm.codes_per_step();
    p.transitions_per_step = transitions_per_step(cfg, ldm)?;
    let size = cfg.craft.image_size;
    // Keep the observation grid at 4x4 tokens whatever the frame size.
    let convs = (size / 4).max(1).ilog2() as usize;
    let channels: Vec<usize> = [16, 32, 64, 64, 64, 64].into_iter().take(convs.max(1)).collect();
    p.obs_encoder = vw_ar_policy::config::ObsEncoderConfig::Conv { in_channels: 3, channels, image_size: size };
    Ok(p)
}

fn action_config(cfg: &DemoConfig, ldm: &dyn LatentDynamics) -> Result<ActionDecoderConfig> {
    let mut a = ActionDecoderConfig::tiny();
    a.image_size = cfg.craft.image_size;
    let convs = (cfg.craft.image_size / 4).max(1).ilog2() as usize;
    a.channels = [16, 32, 32, 32, 32, 32].into_iter().take(convs.max(1)).collect();
    a.code_vocab_size = ldm.vocab_size();
    a.codes_per_step = ldm.codes_per_step() * transitions_per_step(cfg, ldm)?;
    a.chunk_len = cfg.craft.frames_per_step;
    a.action_dim = 3;
    Ok(a)
}

fn train_config(steps: u64, batch: usize, lr: f64, seed: u64) -> TrainConfig {
    let mut t = TrainConfig {
        total_steps: steps,
        warmup_steps: (steps / 10).max(1),
        batch_size: batch,
        seed,
        checkpoint_every: steps.max(1),
        log_every: 1,
        ..Default::default()
    };
    t.optim.lr = lr;
    t
}

/// Copies a vw-dldm run folder's committed checkpoint without optimizer / EMA state, so only what
/// inference needs is committed.
fn strip_run(src: &Path, dst: &Path) -> Result<()> {
    let state = checkpoint::read_state(src)
        .map_err(super::methods::dldm_err)?
        .ok_or_else(|| Error::Invalid(format!("{}: no checkpoint", src.display())))?;
    let tensors = checkpoint::load_tensors(src, &state, &Device::Cpu).map_err(super::methods::dldm_err)?;
    let mut keep: Vec<(String, Tensor)> =
        tensors.into_iter().filter(|(k, _)| !k.starts_with(OPTIM_PREFIX) && !k.starts_with(EMA_PREFIX)).collect();
    keep.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    checkpoint::save_tensors_atomic(&dst.join(&state.tensors_file), &keep).map_err(super::methods::dldm_err)?;
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
    checkpoint::write_atomic(&dst.join(checkpoint::STATE_FILE), &json).map_err(super::methods::dldm_err)
}

fn keep_metrics(run: &Path, root: &Path, name: &str) -> Result<()> {
    let src = run.join("metrics.jsonl");
    let dir = root.join("metrics");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let dst = dir.join(format!("{name}.jsonl"));
    std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
    Ok(())
}

/// Trains every stage on freshly generated training episodes and writes the checkpoint folder.
///
/// Resumable: while it trains, the folder holds `training.json` (the config) and `runs/` (each
/// stage's run folder with its checkpoint). Run again with the same config on a folder left
/// unfinished, it keeps every stage already written there, continues a stage stopped midway from
/// its checkpoint (exactly: the same weights as a run never stopped), and trains the rest;
/// otherwise it first removes what an earlier run wrote there (the stage folders, `runs/`,
/// `metrics/`, `demo.json`) and trains every stage. A raised [`vw_dldm::train::StopSignal`]
/// (Ctrl-C in `vw demo --retrain`) stops every stage in training at its next step, with its
/// checkpoint written, and returns [`Error::Interrupted`].
///
/// The two latent dynamics models' chains (stage 1 -> clip renderer -> codes -> policy -> action
/// decoder) are independent, so on the CPU they train at the same time, each in its own thread
/// pool, the no-codes baseline after the VW1-style chain (a GPU trains them one after the other).
/// Each pool has as many threads as candle splits a matrix product into (`RAYON_NUM_THREADS`, else
/// the physical cores): a product split into more parts than its pool has threads runs slower
/// than on one thread. Set `RAYON_NUM_THREADS` to half the cores before the first thread starts
/// so the two chains share the machine; `vw demo --retrain` does. On 2 cores the demo's stage-1
/// step takes as long on one thread as on two (its products are too small to split well), so the
/// pair then takes about the time of the longer chain. Each stage draws from its own seeded
/// streams and candle's CPU kernels do not split a reduction across threads, so the weights are
/// the same as trained one after the other, with any number of threads.
pub fn train_all(cfg: &DemoConfig, root: &Path, device: &Device, progress: bool) -> Result<()> {
    if let Some(c) = &cfg.clip {
        check_clip_stage(c)?;
    }
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let marker = root.join(TRAINING_FILE);
    // Compared as written, text to text: an f32 field reads back from the text as another f64.
    let want: serde_json::Value =
        serde_json::to_string(cfg).and_then(|t| serde_json::from_str(&t)).map_err(|e| Error::Invalid(e.to_string()))?;
    let resume = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|had| had == want);
    if resume {
        stage(progress, &format!("resuming the unfinished training in {}", root.display()));
    } else {
        // What an earlier run left here must not pass for a stage of this one if it is resumed.
        for name in stage_outputs() {
            let p = root.join(&name);
            let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            match gone {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                _ => {}
            }
        }
    }
    write_json(&marker, cfg)?;
    let plan = Plan { cfg, root, runs: root.join("runs"), resume, device, progress };
    stage(progress, &format!("generating {} training episodes", cfg.train_episodes));
    let train = episodes(cfg, Split::Train, cfg.train_episodes, progress)?;
    let dldm = || plan.chain(LdmKind::Dldm, &train);
    let vw1 = || {
        plan.chain(LdmKind::Vw1, &train)?;
        let out = root.join(NO_CODES);
        if plan.done(&out, NO_CODES, "the no-codes frame predictor") {
            return Ok(());
        }
        stage(progress, &format!("training the no-codes frame predictor ({} steps)", cfg.baseline_steps));
        train_baseline(cfg, &train, &plan.runs.join(NO_CODES), resume, &out, device, progress)?;
        keep_metrics(&plan.runs.join(NO_CODES), root, NO_CODES)
    };
    if device.is_cpu() {
        let threads = candle_core::utils::get_num_threads();
        let pool =
            || rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Invalid(e.to_string()));
        let (dldm_pool, vw1_pool) = (pool()?, pool()?);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| dldm_pool.install(dldm));
            let b = s.spawn(|| vw1_pool.install(vw1));
            (joined(a.join()), joined(b.join()))
        });
        a?;
        b?;
    } else {
        dldm()?;
        vw1()?;
    }
    let _ = std::fs::remove_dir_all(&plan.runs);
    write_json(&root.join(DEMO_CONFIG_FILE), cfg)?;
    std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))
}

/// The file [`train_all`] keeps in a checkpoint folder while it trains: the config, so a run
/// interrupted can be resumed.
pub const TRAINING_FILE: &str = "training.json";

/// What [`train_all`] writes into a checkpoint folder (and removes there when it starts afresh).
fn stage_outputs() -> Vec<String> {
    let mut out: Vec<String> = KINDS
        .iter()
        .flat_map(|k| {
            let n = k.dir_name();
            [n.to_string(), format!("policy-{n}"), format!("actions-{n}")]
        })
        .collect();
    out.extend([CLIP_DIR, NO_CODES, "metrics", "runs", DEMO_CONFIG_FILE].map(String::from));
    out
}

/// A training thread's result; a panic in it becomes an error.
fn joined(r: std::thread::Result<Result<()>>) -> Result<()> {
    r.unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Error::Invalid(format!("training thread panicked: {what}")))
    })
}

/// Where [`train_all`] writes and whether it resumes.
struct Plan<'a> {
    cfg: &'a DemoConfig,
    root: &'a Path,
    runs: std::path::PathBuf,
    resume: bool,
    device: &'a Device,
    progress: bool,
}

impl Plan<'_> {
    /// Whether the stage writing `out` (loss log `metrics/<name>.jsonl`) is already there from the
    /// run being resumed; says so when it is.
    fn done(&self, out: &Path, name: &str, what: &str) -> bool {
        let written = match name {
            NO_CODES => FramePredictor::is_saved(out),
            _ => checkpoint::read_state(out).ok().flatten().is_some(),
        };
        let done = self.resume && written && self.root.join("metrics").join(format!("{name}.jsonl")).exists();
        if done {
            stage(self.progress, &format!("{what}: kept from the run being resumed ({})", out.display()));
        }
        done
    }

    /// One latent dynamics model's chain of the demo: stage 1, the dLDM's clip renderer (when
    /// [`DemoConfig::clip`] is on), the AR policy on its codes and the action decoder, each written
    /// (stripped) into the root with its loss log.
    fn chain(&self, kind: LdmKind, train: &[Episode]) -> Result<()> {
        let (cfg, root, device, progress) = (self.cfg, self.root, self.device, self.progress);
        let i = KINDS.iter().position(|k| *k == kind).expect("every kind is in KINDS");
        // A stage's run folder left by an interrupted run is continued from its checkpoint.
        let opts = TrainOptions {
            device: device.clone(),
            dtype: DType::F32,
            progress,
            resume: self.resume,
            ..Default::default()
        };
        let name = kind.dir_name();
        let s1 = demo_stage1_config(cfg, kind);
        let s1_out = root.join(name);
        let mut ldm = if self.done(&s1_out, name, &format!("stage 1 of the {}", kind.label())) {
            load_ldm(&s1_out, device)?
        } else {
            stage(progress, &format!("stage 1: training the {} ({} steps)", kind.label(), cfg.ldm.steps));
            let run = self.runs.join(name);
            let ldm = train_ldm(&s1, &run, self.resume, device, progress)?;
            self.store(name)?;
            ldm
        };
        if let (LdmKind::Dldm, Some(c)) = (kind, &cfg.clip) {
            let clip_out = root.join(CLIP_DIR);
            ldm = if self.done(&clip_out, CLIP_DIR, "the dLDM's clip renderer") {
                load_clip_dynamics(&s1_out, &clip_out, device)?
            } else {
                stage(
                    progress,
                    &format!("training the dLDM's clip renderer ({} motion + {} layer steps)", c.motion_steps, c.steps),
                );
                let crun = self.runs.join(CLIP_DIR);
                let clip = clip_config(&s1, c, cfg.seed + 401);
                let ldm = train_clip(&s1, &s1_out, &clip, train, &crun, self.resume, device, progress)?;
                self.store(CLIP_DIR)?;
                ldm
            };
        }
        let tps = transitions_per_step(cfg, ldm.as_ref())?;
        let pname = format!("policy-{name}");
        if !self.done(&root.join(&pname), &pname, &format!("the AR policy on the {}", kind.label())) {
            stage(progress, &format!("encoding the codes of {} training episodes ({})", train.len(), kind.label()));
            stage(progress, &format!("training the AR policy on the {} ({} steps)", kind.label(), cfg.policy_steps));
            let prun = self.runs.join(&pname);
            train_demo_policy(cfg, &policy_config(cfg, ldm.as_ref())?, i, ldm.as_ref(), train, &prun, &opts)?;
            self.store(&pname)?;
        }
        let aname = format!("actions-{name}");
        if self.done(&root.join(&aname), &aname, &format!("the action decoder on the {}", kind.label())) {
            return Ok(());
        }
        stage(progress, &format!("training the action decoder on the {} ({} steps)", kind.label(), cfg.decoder_steps));
        let ad = action_dataset(ldm.as_ref(), train, tps, device).map_err(policy_err)?;
        let arun = self.runs.join(&aname);
        fresh_run(&arun, opts.resume);
        let ac = action_config(cfg, ldm.as_ref())?;
        train_action_decoder(
            &ac,
            &train_config(cfg.decoder_steps, 32, cfg.decoder_lr, cfg.seed + 201 + i as u64),
            &ad,
            &arun,
            &opts,
        )
        .map_err(policy_err)?;
        self.store(&aname)
    }

    /// Keeps the run `runs/<name>` just trained: its checkpoint without optimizer state in
    /// `<root>/<name>`, its loss log in `<root>/metrics/<name>.jsonl`.
    fn store(&self, name: &str) -> Result<()> {
        let run = self.runs.join(name);
        strip_run(&run, &self.root.join(name))?;
        keep_metrics(&run, self.root, name)
    }
}

/// Trains the AR policy `pc` (the demo's is [`policy_config`]) of the demo's `index`-th latent
/// dynamics model (0: the dLDM, 1: the VW1-style LDM; it picks the seed) on the codes `ldm`
/// extracts from `train`, with the demo's policy recipe, into `run_dir` (continuing the
/// checkpoint there when `opts.resume`, else replacing anything there).
pub fn train_demo_policy(
    cfg: &DemoConfig,
    pc: &PolicyConfig,
    index: usize,
    ldm: &dyn LatentDynamics,
    train: &[Episode],
    run_dir: &Path,
    opts: &TrainOptions,
) -> Result<Policy> {
    let tps = transitions_per_step(cfg, ldm)?;
    let data = code_dataset(ldm, train, tps, &opts.device).map_err(policy_err)?;
    train_demo_policy_on(cfg, pc, index, &data, run_dir, opts)
}

/// [`train_demo_policy`] on a code dataset already built (for example
/// `vw_ar_policy::craftworld::step_code_dataset`, every step's start frame).
pub fn train_demo_policy_on(
    cfg: &DemoConfig,
    pc: &PolicyConfig,
    index: usize,
    data: &vw_ar_policy::dataset::CodeDataset,
    run_dir: &Path,
    opts: &TrainOptions,
) -> Result<Policy> {
    fresh_run(run_dir, opts.resume);
    train_policy_augmented(
        pc,
        &train_config(cfg.policy_steps, cfg.policy_batch, cfg.policy_lr, cfg.seed + 101 + index as u64),
        &cfg.policy_augment,
        data,
        run_dir,
        opts,
    )
    .map_err(policy_err)
}

fn train_baseline(
    cfg: &DemoConfig,
    train: &[Episode],
    run_dir: &Path,
    resume: bool,
    out: &Path,
    device: &Device,
    progress: bool,
) -> Result<FramePredictor> {
    let varmap = VarMap::new();
    // Seeded, so a retrain writes the same baseline (candle's own CPU initialiser cannot be seeded).
    let init = vw_dldm::train::seeded_var_builder(&varmap, cfg.seed + 301, DType::F32, device);
    let model = FramePredictor::new(&cfg.baseline, init)?;
    let videos: Vec<Tensor> =
        train.iter().map(|e| e.frames_tensor(device)).collect::<std::result::Result<_, _>>().map_err(data_err)?;
    let pairs = ClipPairs::new(videos, cfg.baseline.frames_out)?;
    let tc = train_config(cfg.baseline_steps, cfg.baseline_batch, cfg.baseline_lr, cfg.seed + 301);
    let mut trainer = Trainer::from_varmap(&varmap, tc.clone()).map_err(super::methods::dldm_err)?;
    fresh_run(run_dir, resume);
    let resumed =
        if resume { trainer.resume(run_dir).map_err(super::methods::dldm_err)?.map(|_| trainer.step) } else { None };
    let mut run = RunDir::open(run_dir, resumed, tc.total_steps, progress).map_err(super::methods::dldm_err)?;
    let record = serde_json::json!({ "model": cfg.baseline, "train": tc });
    fit(&mut trainer, &mut run, &record, None, |ctx| {
        let (x, y) = pairs.batch(ctx.rng, cfg.baseline_batch).map_err(|e| vw_dldm::Error::Invalid(e.to_string()))?;
        l1_loss(&model, &x, &y).map_err(|e| vw_dldm::Error::Invalid(e.to_string()))
    })
    .map_err(super::methods::dldm_err)?;
    FramePredictor::save(&varmap, &cfg.baseline, out)?;
    Ok(model)
}

struct Loaded {
    kind: LdmKind,
    ldm: BoxedLdm,
    /// The dLDM is drawn by its clip renderer (`clip-dldm/` is in the checkpoint folder).
    clip: bool,
    policy: Policy,
    decoder: ActionDecoder,
}

fn load_kind(kind: LdmKind, root: &Path, device: &Device) -> Result<Loaded> {
    let name = kind.dir_name();
    let clip_dir = root.join(CLIP_DIR);
    let clip = kind == LdmKind::Dldm && clip_dir.exists();
    let ldm = match clip {
        true => load_clip_dynamics(&root.join(name), &clip_dir, device)?,
        false => load_ldm(&root.join(name), device)?,
    };
    let policy = load_policy(&root.join(format!("policy-{name}")), device, DType::F32).map_err(policy_err)?;
    let decoder = load_action_decoder(&root.join(format!("actions-{name}")), device, DType::F32).map_err(policy_err)?;
    Ok(Loaded { kind, ldm, clip, policy, decoder })
}

/// Loads the checkpoint folder, evaluates every method on held-out-appearance episodes and writes
/// the report into `out`.
pub fn evaluate_checkpoints(
    cfg: &DemoConfig,
    root: &Path,
    out: &Path,
    device: &Device,
    progress: bool,
    mut timings: Vec<(String, f64)>,
) -> Result<DemoOutcome> {
    let t = Instant::now();
    stage(progress, &format!("loading checkpoints from {}", root.display()));
    let models: Vec<Loaded> = KINDS.into_iter().map(|k| load_kind(k, root, device)).collect::<Result<_>>()?;
    let baseline = FramePredictor::load(&root.join(NO_CODES), device)?;
    timings.push(("loading checkpoints".into(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    stage(progress, &format!("generating {} held-out-appearance episodes", cfg.test_episodes));
    let test = episodes(cfg, Split::TestAppearance, cfg.test_episodes, progress)?;
    let probe_train = episodes(cfg, Split::Train, cfg.probe_train_episodes, false)?;
    timings.push(("generating episodes".into(), t.elapsed().as_secs_f64()));

    let fps = cfg.craft.frames_per_step;
    let keep = cfg.gif_episodes;
    let t = Instant::now();
    stage(progress, "judging the expert videos and the repeated first frame (judge checks)");
    let expert = score_method(&mut ExpertVideo { episodes: &test, next: 0 }, &test, fps, keep, device)?;
    let still = score_method(&mut RepeatFirstFrame, &test, fps, 0, device)?;
    let mut methods = Vec::new();
    let mut videos = Vec::new();
    let mut diagnostics = Vec::new();
    let opts = GenerateOptions { max_steps: cfg.craft.max_steps + 2, ..Default::default() };
    for m in &models {
        stage(progress, &format!("{}: predicting codes from each first frame, rendering, judging", m.kind.label()));
        let mut p = PlanAndRender {
            name: m.kind.label().into(),
            description: match m.kind {
                LdmKind::Dldm if m.clip => "AR policy over dLDM codes predicted from the first frame, each recipe step drawn from its first frame by the dLDM's clip renderer (the gripper's and the carried block's layers moved by the codes' motions).".into(),
                LdmKind::Dldm => "AR policy over dLDM codes predicted from the first frame, rendered clip by clip by the dLDM's pixel decoder (stage 1).".into(),
                LdmKind::Vw1 => "The same AR policy and rollout over the codes of the VideoWorld-1-style plain LDM.".into(),
            },
            policy: &m.policy,
            dynamics: m.ldm.as_ref(),
            opts,
            codes_seen: Vec::new(),
        };
        let mut s = score_method(&mut p, &test, fps, keep, device)?;
        s.result.codebook = Some(codebook_usage(&p.codes_seen, m.ldm.vocab_size())?);
        s.result.probe = Some(code_probe(m.ldm.as_ref(), &probe_train, &test, device)?);
        stage(progress, &format!("{}: closed-loop chains (policy -> action decoder -> CraftWorld)", m.kind.label()));
        s.result.chain = Some(chains(cfg, m, device)?);
        videos.push(s.videos.clone());
        methods.push(s.result);
        stage(progress, &format!("{}: re-rendering the codes of the expert videos (diagnostic)", m.kind.label()));
        let mut rec = ExpertCodes {
            name: format!("{}: expert's codes re-rendered (diagnostic)", m.kind.label()),
            dynamics: m.ldm.as_ref(),
            episodes: &test,
            next: 0,
            anchor_every: None,
        };
        diagnostics.push(score_method(&mut rec, &test, fps, 0, device)?.result);
    }
    stage(progress, "no-codes baseline: rolling out from each first frame, judging");
    let s = score_method(&mut NoCodes { model: &baseline }, &test, fps, keep, device)?;
    videos.push(s.videos);
    methods.push(s.result);
    timings.push(("evaluation".into(), t.elapsed().as_secs_f64()));

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut gifs = Vec::new();
    let mut gif_entries = Vec::new();
    for (i, ev) in expert.videos.iter().enumerate() {
        let mut row = vec![ev.iter().map(frame_of).collect::<Vec<_>>()];
        for v in &videos {
            if let Some(f) = v.get(i) {
                row.push(f.iter().map(frame_of).collect());
            }
        }
        let file = format!("episode-{i}.gif");
        write_gif_strip(&out.join(&file), &row, 12, 2)?;
        gif_entries.push((
            file.clone(),
            format!(
                "Held-out episode {i} ({}): expert | {}",
                test[i].recipe.structure.name(),
                methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(" | ")
            ),
        ));
        gifs.push(out.join(file));
    }

    let mut loss_curves = Vec::new();
    let mdir = root.join("metrics");
    for name in ["dldm", "vw1-ldm", CLIP_DIR, "policy-dldm", "policy-vw1-ldm", NO_CODES] {
        let p = mdir.join(format!("{name}.jsonl"));
        if p.exists() {
            loss_curves.push(Curve { name: name.into(), points: read_metrics_jsonl(&p, "loss")? });
        }
    }
    let report = EvalReport {
        title: "VideoWorld 2 demo on CraftWorld (held-out appearance)".into(),
        notes: vec![
            format!("{} held-out-appearance episodes (recipes of {}..={} steps, {}x{} frames, {} frames per step); checkpoints from `{}`.", cfg.test_episodes, cfg.craft.min_steps, cfg.craft.max_steps, cfg.craft.image_size, cfg.craft.image_size, fps, root.display()),
            format!("Trained on {} training-appearance episodes; master seed {}.", cfg.train_episodes, cfg.seed),
        ],
        sanity: [vec![expert.result, still.result], diagnostics].concat(),
        methods,
        loss_curves,
        gifs: gif_entries,
        timings,
        extra: serde_json::json!({ "config": cfg }),
    };
    let paths = report.write(out)?;
    Ok(DemoOutcome { report, paths, gifs })
}

/// Linear probe from each transition's codes to the ground-truth action label of that transition:
/// fit on training-appearance episodes, scored on the held-out ones.
fn code_probe(
    ldm: &dyn LatentDynamics,
    train: &[Episode],
    test: &[Episode],
    device: &Device,
) -> Result<crate::ProbeReport> {
    let fpc = ldm.frames_per_code_step();
    let collect = |eps: &[Episode]| -> Result<(Vec<Vec<u32>>, Vec<usize>)> {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let all = episode_codes(ldm, eps, device).map_err(policy_err)?;
        for (e, codes) in eps.iter().zip(all) {
            let labels = transition_labels(e, fpc);
            for (c, l) in codes.into_iter().zip(labels) {
                x.push(c);
                y.push(l);
            }
        }
        Ok((x, y))
    };
    let (xtr, ytr) = collect(train)?;
    let (xte, yte) = collect(test)?;
    let v = ldm.vocab_size();
    probe_accuracy(
        (&ProbeFeatures::one_hot(&xtr, v)?, &ytr[..]),
        (&ProbeFeatures::one_hot(&xte, v)?, &yte[..]),
        vw_data::craftworld::NUM_ACTION_CLASSES,
        ProbeConfig::default(),
    )
}

fn chains(cfg: &DemoConfig, m: &Loaded, device: &Device) -> Result<crate::ChainResult> {
    let chain_cfg = CraftConfigFor::chain(cfg);
    let mut env = crate::craft_env::CraftWorldEnv::new(chain_cfg, Split::TestAppearance);
    let opts = GenerateOptions { max_steps: cfg.craft.max_steps + 2, ..Default::default() };
    let mut ctl = CodePolicyController::new(&m.policy, &m.decoder, device.clone(), opts);
    let seeds: Vec<u64> = (0..cfg.chain_episodes).map(|i| cfg.test_seed(i)).collect();
    let c = ChainConfig { chain_length: 5, max_steps_per_subtask: 2 * cfg.craft.frames_per_step };
    evaluate_chains(&mut env, &mut ctl, &seeds, c)
}

struct CraftConfigFor;

impl CraftConfigFor {
    /// Chains need 5 subtasks: recipes of at least 5 steps (capped by the demo's longest).
    fn chain(cfg: &DemoConfig) -> vw_data::craftworld::CraftConfig {
        let mut c = cfg.craft.clone();
        c.min_steps = 5.min(c.max_steps);
        c.max_steps = c.max_steps.max(5);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_data::craftworld::Split;

    #[test]
    fn the_no_codes_baseline_trains_the_same_weights_from_the_same_seed() -> Result<()> {
        let cfg = DemoConfig::test();
        let train = super::super::episodes(&cfg, Split::Train, 2, false)?;
        let tmp = tempfile::tempdir().map_err(|e| Error::Invalid(format!("temporary folder: {e}")))?;
        let weights = |name: &str| -> Result<Vec<u8>> {
            let out = tmp.path().join(name);
            train_baseline(&cfg, &train, &tmp.path().join(format!("run-{name}")), false, &out, &Device::Cpu, false)?;
            std::fs::read(out.join("model.safetensors")).map_err(|e| Error::io(&out, e))
        };
        assert_eq!(weights("a")?, weights("b")?);
        Ok(())
    }
}

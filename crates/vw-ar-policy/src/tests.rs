//! Tests of the policy as a whole: KV-cache exactness, causality, seeded sampling, checkpoints,
//! learning on synthetic data, rollout through a mock dynamics model, the action decoder.

use crate::config::{ActionDecoderConfig, ObsEncoderConfig, PolicyConfig};
use crate::dataset::{ActionDataset, CodeDataset};
use crate::policy::{GenerateOptions, Policy, PolicyBatch};
use crate::rollout::rollout;
use crate::sampling::SamplingConfig;
use crate::train::{load_action_decoder, load_policy, seeded_init, train_action_decoder, train_policy, TrainOptions};
use crate::transformer::Mode;
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vw_dldm::train::TrainConfig;

fn small_cfg() -> PolicyConfig {
    PolicyConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        code_vocab_size: 50,
        codes_per_transition: 2,
        transitions_per_step: 2,
        text_vocab_size: 0,
        obs_encoder: ObsEncoderConfig::Conv { in_channels: 3, channels: vec![8, 8], image_size: 16 },
    }
}

fn build(cfg: &PolicyConfig, seed: u64) -> Policy {
    let vm = VarMap::new();
    let p = Policy::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    seeded_init(&vm, seed).unwrap();
    p
}

fn frames(n: usize, side: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * 3 * side * side).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, (n, 3, side, side), &Device::Cpu).unwrap()
}

fn random_steps(rng: &mut ChaCha8Rng, n_steps: usize, cps: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..n_steps).map(|_| (0..cps).map(|_| rng.random_range(0..vocab)).collect()).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn batch_of(p: &Policy, obs: &Tensor, steps: &[Vec<Vec<u32>>]) -> PolicyBatch {
    let v = p.vocab();
    let seqs: Vec<Vec<u32>> = steps.iter().map(|s| v.encode_task(s, p.config().codes_per_step()).unwrap()).collect();
    let n = seqs[0].len();
    assert!(seqs.iter().all(|s| s.len() == n));
    let tokens = Tensor::from_vec(seqs.concat(), (steps.len(), n), &Device::Cpu).unwrap();
    PolicyBatch { obs: obs.clone(), text: None, tokens }
}

#[test]
fn kv_cache_decoding_matches_full_recomputation() {
    let cfg = small_cfg();
    let p = build(&cfg, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let steps: Vec<_> = (0..2).map(|_| random_steps(&mut rng, 3, 4, 50)).collect();
    let obs = frames(2, 16, 3);
    let batch = batch_of(&p, &obs, &steps);
    let full = p.forward(&batch, Mode::Inference).unwrap(); // (B, N, V)
    let n = batch.tokens.dim(1).unwrap();
    // Train mode (differentiable ops) computes the same function.
    assert!(max_diff(&full, &p.forward(&batch, Mode::Train).unwrap()) < 1e-5);
    // Prefill the prefix, then one token at a time.
    let mut cache = p.new_cache(16, 3);
    let mut inc = vec![p.step(&p.prefix_embeddings(&obs, None).unwrap(), &mut cache).unwrap()];
    for i in 0..n - 1 {
        let tok = batch.tokens.narrow(1, i, 1).unwrap();
        inc.push(p.step(&p.token_embeddings(&tok).unwrap(), &mut cache).unwrap());
    }
    let inc = Tensor::stack(&inc, 1).unwrap();
    let d = max_diff(&full, &inc);
    assert!(d <= 1e-5, "incremental vs full logits differ by {d}");
    // A multi-token chunk after a cached prefix (causal mask with an offset) agrees too.
    let mut cache = p.new_cache(16, 3);
    p.step(&p.prefix_embeddings(&obs, None).unwrap(), &mut cache).unwrap();
    let chunk = p.token_embeddings(&batch.tokens.narrow(1, 0, 7).unwrap()).unwrap();
    let last = p.step(&chunk, &mut cache).unwrap();
    assert!(max_diff(&last, &full.i((.., 7, ..)).unwrap()) <= 1e-5);
    assert_eq!(cache.len(), 16 + 7);
}

#[test]
fn perturbing_a_later_token_never_changes_earlier_logits() {
    let cfg = small_cfg();
    let p = build(&cfg, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let steps = vec![random_steps(&mut rng, 3, 4, 50)];
    let obs = frames(1, 16, 6);
    let base = p.forward(&batch_of(&p, &obs, &steps), Mode::Inference).unwrap();
    // Token 2 of the sequence is the second code of step 0 (after BOS and the first code).
    for (k, c) in [(0usize, 1usize), (1, 3), (2, 0)] {
        let mut s2 = steps.clone();
        s2[0][k][c] = (s2[0][k][c] + 17) % 50;
        let pos = k * 6 + 1 + c; // index of the changed token in the task sequence
        let out = p.forward(&batch_of(&p, &obs, &s2), Mode::Inference).unwrap();
        // Logits at i predict token i from tokens[..i]: positions <= pos never see the change.
        let before = max_diff(&base.narrow(1, 0, pos + 1).unwrap(), &out.narrow(1, 0, pos + 1).unwrap());
        assert_eq!(before, 0.0, "change at {pos} leaked backwards");
        let after = max_diff(&base.narrow(1, pos + 1, 1).unwrap(), &out.narrow(1, pos + 1, 1).unwrap());
        assert!(after > 1e-4, "change at {pos} had no effect after it ({after})");
    }
}

#[test]
fn sampling_is_reproducible_and_greedy_follows_full_argmax() {
    let cfg = small_cfg();
    let p = build(&cfg, 7);
    let obs = frames(2, 16, 8);
    let sampled = |seed| {
        let s = SamplingConfig { temperature: 1.0, top_k: Some(20), top_p: Some(0.9), seed };
        p.generate(&obs, None, &GenerateOptions { sampling: s, max_steps: 4 }).unwrap()
    };
    let a = sampled(11);
    assert_eq!(a, sampled(11));
    assert_ne!(a.tokens, sampled(12).tokens);
    for row in &a.steps {
        assert!(!row.is_empty() && row.len() <= 4);
        assert!(row.iter().all(|s| s.len() == 4 && s.iter().all(|&c| c < 50)));
    }
    // Greedy: every generated code is the argmax over codes of the full (non-cached) logits.
    let g = p.generate(&obs, None, &GenerateOptions { sampling: SamplingConfig::greedy(), max_steps: 3 }).unwrap();
    for (r, toks) in g.tokens.iter().enumerate() {
        let seq = Tensor::from_vec(toks.clone(), (1, toks.len()), &Device::Cpu).unwrap();
        let b = PolicyBatch { obs: obs.narrow(0, r, 1).unwrap(), text: None, tokens: seq };
        let logits = p.forward(&b, Mode::Inference).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for (i, &t) in toks.iter().enumerate() {
            if p.vocab().is_code(t) {
                let row = &logits[i][..50];
                let best = (0..50).max_by(|&x, &y| row[x].total_cmp(&row[y]).then(y.cmp(&x))).unwrap() as u32;
                assert_eq!(t, best, "row {r} position {i}");
            }
        }
        // A batch row decodes as it would alone.
        let alone = p
            .generate(
                &obs.narrow(0, r, 1).unwrap(),
                None,
                &GenerateOptions { sampling: SamplingConfig::greedy(), max_steps: 3 },
            )
            .unwrap();
        assert_eq!(alone.tokens[0], *toks);
    }
}

/// Two kinds of scene (dark / bright first frame), each with its own 3-step code plan: a policy that
/// reads the frame reproduces the right plan; one that ignores it cannot get both right.
fn conditional_dataset() -> CodeDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let plans = [random_steps(&mut rng, 3, 4, 50), random_steps(&mut rng, 4, 4, 50)];
    let n = 8;
    let mut f = Vec::new();
    let mut steps = Vec::new();
    for e in 0..n {
        let kind = e % 2;
        let base = if kind == 0 { -0.8f32 } else { 0.8 };
        f.extend((0..3 * 16 * 16).map(|_| base + rng.random_range(-0.1..0.1)));
        steps.push(plans[kind].clone());
    }
    let frames = Tensor::from_vec(f, (n, 3, 16, 16), &Device::Cpu).unwrap();
    CodeDataset::new(frames, Vec::new(), steps, 4, 50).unwrap()
}

fn quick_train(total: u64) -> TrainConfig {
    let mut t = TrainConfig {
        total_steps: total,
        warmup_steps: 5,
        batch_size: 8,
        seed: 3,
        checkpoint_every: 1000,
        ..Default::default()
    };
    t.optim.lr = 3e-3;
    t.optim.weight_decay = 0.0;
    t
}

#[test]
fn learns_frame_conditioned_plans_and_checkpoint_round_trips() {
    let data = conditional_dataset();
    let cfg = small_cfg();
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions { progress: false, ..Default::default() };
    let p = train_policy(&cfg, &quick_train(150), &data, dir.path(), &opts).unwrap();
    let obs = data.frames.narrow(0, 0, 2).unwrap();
    let g = p.generate(&obs, None, &GenerateOptions { sampling: SamplingConfig::greedy(), max_steps: 6 }).unwrap();
    assert_eq!(g.steps[0], data.steps[0], "dark scene plan");
    assert_eq!(g.steps[1], data.steps[1], "bright scene plan");
    // The committed checkpoint rebuilds the same model.
    let q = load_policy(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let b = data.batch(&[0, 1], &Device::Cpu, DType::F32).unwrap();
    assert_eq!(max_diff(&p.forward(&b, Mode::Inference).unwrap(), &q.forward(&b, Mode::Inference).unwrap()), 0.0);
    // A run folder with a checkpoint is not overwritten without --resume.
    assert!(train_policy(&cfg, &quick_train(150), &data, dir.path(), &opts).is_err());
}

#[test]
fn an_augmented_policy_learns_the_same_plans_records_its_augmentation_and_resumes_exactly() {
    use crate::train::train_policy_augmented;
    use vw_dldm::train::craft::Augment;
    let data = conditional_dataset();
    let cfg = small_cfg();
    let aug = Augment {
        color_jitter: 0.1,
        static_noise: 0.02,
        grating: 0.05,
        shift: 1,
        zoom: 0.05,
        rotate: 0.05,
        ..Default::default()
    };
    let quiet = TrainOptions { progress: false, ..Default::default() };
    let (a, b, plain) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = train_policy_augmented(&cfg, &quick_train(150), &aug, &data, a.path(), &quiet).unwrap();
    let obs = data.frames.narrow(0, 0, 2).unwrap();
    let g = p.generate(&obs, None, &GenerateOptions { sampling: SamplingConfig::greedy(), max_steps: 6 }).unwrap();
    assert_eq!(g.steps[0], data.steps[0], "dark scene plan");
    assert_eq!(g.steps[1], data.steps[1], "bright scene plan");
    // The augmentation is in the checkpoint, and it changed what was learnt.
    let state = vw_dldm::train::checkpoint::read_state(a.path()).unwrap().unwrap();
    assert_eq!(serde_json::from_value::<Augment>(state.config["augment"].clone()).unwrap(), aug);
    let q = train_policy(&cfg, &quick_train(6), &data, plain.path(), &quiet).unwrap();
    let r = train_policy_augmented(&cfg, &quick_train(6), &aug, &data, b.path(), &quiet).unwrap();
    let batch = data.batch(&[0, 1, 2], &Device::Cpu, DType::F32).unwrap();
    let fwd = |p: &Policy| p.forward(&batch, Mode::Inference).unwrap();
    assert!(max_diff(&fwd(&q), &fwd(&r)) > 1e-4);
    // Its draws come from the trainer's generator, which the checkpoint carries.
    let c = tempfile::tempdir().unwrap();
    let half = TrainOptions { max_steps_now: Some(3), ..quiet.clone() };
    train_policy_augmented(&cfg, &quick_train(6), &aug, &data, c.path(), &half).unwrap();
    let resumed = train_policy_augmented(
        &cfg,
        &quick_train(6),
        &aug,
        &data,
        c.path(),
        &TrainOptions { resume: true, ..quiet.clone() },
    )
    .unwrap();
    assert!(max_diff(&fwd(&r), &fwd(&resumed)) < 1e-6);
    // A first frame alone has no foreground masks for a background-only texture.
    let bg = Augment { background_only: true, ..aug };
    assert!(
        train_policy_augmented(&cfg, &quick_train(6), &bg, &data, tempfile::tempdir().unwrap().path(), &quiet).is_err()
    );
}

#[test]
fn resumed_training_equals_uninterrupted_training() {
    let data = conditional_dataset();
    let cfg = small_cfg();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let quiet = TrainOptions { progress: false, ..Default::default() };
    let straight = train_policy(&cfg, &quick_train(6), &data, a.path(), &quiet).unwrap();
    train_policy(&cfg, &quick_train(6), &data, b.path(), &TrainOptions { max_steps_now: Some(3), ..quiet.clone() })
        .unwrap();
    let resumed =
        train_policy(&cfg, &quick_train(6), &data, b.path(), &TrainOptions { resume: true, ..quiet }).unwrap();
    let batch = data.batch(&[0, 1, 2], &Device::Cpu, DType::F32).unwrap();
    let d = max_diff(
        &straight.forward(&batch, Mode::Inference).unwrap(),
        &resumed.forward(&batch, Mode::Inference).unwrap(),
    );
    assert!(d < 1e-6, "resumed run differs by {d}");
}

/// Renders each transition as one frame whose value is the previous frame's plus `(code0 + 1) / 100`,
/// so the video records which codes were rendered and that each clip starts from the last frame.
struct MockDynamics;

impl vw_dldm::LatentDynamics for MockDynamics {
    fn encode_codes(&self, _frames: &Tensor) -> vw_dldm::Result<Tensor> {
        Err(vw_dldm::Error::Invalid("not used".into()))
    }
    fn render(&self, context: &Tensor, codes: &Tensor) -> vw_dldm::Result<Tensor> {
        let (_, s, _) = codes.dims3()?;
        let t = context.dim(2)?;
        let mut last = context.narrow(2, t - 1, 1)?;
        let mut out = Vec::new();
        for k in 0..s {
            let c0 = codes.i((.., k, 0))?.to_dtype(DType::F32)?;
            let inc = ((c0 + 1.0)? / 100.0)?.reshape((codes.dim(0)?, 1, 1, 1, 1))?;
            last = last.broadcast_add(&inc)?;
            out.push(last.clone());
        }
        Ok(Tensor::cat(&out, 2)?)
    }
    fn codes_per_step(&self) -> usize {
        2
    }
    fn vocab_size(&self) -> usize {
        50
    }
    fn frames_per_code_step(&self) -> usize {
        1
    }
}

#[test]
fn rollout_renders_steps_clip_by_clip_from_the_last_frame() {
    let cfg = small_cfg();
    let p = build(&cfg, 9);
    let first = Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        sampling: SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed: 5 },
        max_steps: 4,
    };
    let r = rollout(&p, &MockDynamics, &first, None, &opts).unwrap();
    let max_steps = r.steps.iter().map(|s| s.len()).max().unwrap();
    assert_eq!(r.video.dims(), &[2, 3, 1 + 2 * max_steps, 16, 16]);
    for (b, steps) in r.steps.iter().enumerate() {
        // The frame value accumulates over every transition of every step: chained contexts.
        let mut expect = 0.0f32;
        for (k, s) in steps.iter().enumerate() {
            expect += (s[0] + 1) as f32 / 100.0 + (s[2] + 1) as f32 / 100.0;
            let f = r.step_end_frames[b][k];
            assert_eq!(f, 2 * (k + 1));
            let v = r.video.i((b, 0, f, 0, 0)).unwrap().to_scalar::<f32>().unwrap();
            assert!((v - expect).abs() < 1e-5, "row {b} step {k}: {v} vs {expect}");
        }
        // After a row's last step its final frame is held.
        let last = r.video.i((b, 0, r.video.dim(2).unwrap() - 1, 0, 0)).unwrap().to_scalar::<f32>().unwrap();
        assert!((last - expect).abs() < 1e-5);
    }
}

#[test]
fn code_dataset_file_round_trip_and_bad_files() {
    let data = conditional_dataset();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codes.safetensors");
    data.save(&path).unwrap();
    let back = CodeDataset::load(&path).unwrap();
    assert_eq!(back.steps, data.steps);
    assert_eq!(max_diff(&back.frames, &data.frames), 0.0);
    std::fs::write(dir.path().join("bad.safetensors"), b"not a file").unwrap();
    assert!(CodeDataset::load(&dir.path().join("bad.safetensors")).is_err());
    assert!(CodeDataset::load(&dir.path().join("missing.safetensors")).is_err());
    // Codes outside the vocabulary are rejected up front.
    let bad = CodeDataset::new(data.frames.clone(), Vec::new(), vec![vec![vec![50, 0, 0, 0]]; 8], 4, 50);
    assert!(bad.is_err());
}

#[test]
fn action_decoder_learns_code_and_scene_dependent_actions() {
    // action chunk = (dx, dy, grip) constant over the chunk: dx from the code, dy from the frame.
    let cfg = ActionDecoderConfig {
        in_channels: 3,
        image_size: 16,
        channels: vec![8, 8],
        code_vocab_size: 10,
        codes_per_step: 2,
        code_embed_dim: 8,
        hidden_size: 32,
        chunk_len: 4,
        action_dim: 3,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let n = 32;
    let (mut obs, mut codes, mut acts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let bright: f32 = if rng.random::<bool>() { 0.5 } else { -0.5 };
        obs.extend((0..3 * 16 * 16).map(|_| bright));
        let c = rng.random_range(0..10u32);
        codes.extend([c, rng.random_range(0..10u32)]);
        let a = [c as f32 / 10.0 - 0.5, bright, if c % 2 == 0 { 1.0 } else { 0.0 }];
        for _ in 0..4 {
            acts.extend(a);
        }
    }
    let cpu = Device::Cpu;
    let data = ActionDataset::new(
        Tensor::from_vec(obs, (n, 3, 16, 16), &cpu).unwrap(),
        Tensor::from_vec(codes, (n, 2), &cpu).unwrap(),
        Tensor::from_vec(acts, (n, 4, 3), &cpu).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut t = quick_train(200);
    t.batch_size = 16;
    let m = train_action_decoder(&cfg, &t, &data, dir.path(), &TrainOptions { progress: false, ..Default::default() })
        .unwrap();
    let all: Vec<usize> = (0..n).collect();
    let (o, c, a) = data.batch(&all, &cpu, DType::F32).unwrap();
    let mse = m.loss(&o, &c, &a).unwrap().to_scalar::<f32>().unwrap();
    let var = a.var_keepdim(0).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(mse < 0.05 * var, "mse {mse} vs action variance {var}");
    let back = load_action_decoder(dir.path(), &cpu, DType::F32).unwrap();
    assert_eq!(max_diff(&m.forward(&o, &c).unwrap(), &back.forward(&o, &c).unwrap()), 0.0);

    // Stopped after 7 steps and resumed: the same weights as 20 straight (batches of 16 of 32, so
    // the resumed run must draw the batches the straight one drew).
    let quiet = TrainOptions { progress: false, ..Default::default() };
    let mut t = quick_train(20);
    t.batch_size = 16;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = train_action_decoder(&cfg, &t, &data, a.path(), &quiet).unwrap();
    let part = TrainOptions { max_steps_now: Some(7), ..quiet.clone() };
    train_action_decoder(&cfg, &t, &data, b.path(), &part).unwrap();
    let resumed = train_action_decoder(&cfg, &t, &data, b.path(), &TrainOptions { resume: true, ..quiet }).unwrap();
    assert_eq!(max_diff(&straight.forward(&o, &c).unwrap(), &resumed.forward(&o, &c).unwrap()), 0.0);
}

/// Data parallel: two ranks (threads standing in for GPUs) split each batch, average gradients and
/// end with the same weights; only rank 0 writes the run folder.
#[test]
fn data_parallel_ranks_end_with_identical_weights() {
    use vw_tensor_kernels::dist::ThreadGroup;
    let data = std::sync::Arc::new(conditional_dataset());
    let cfg = small_cfg();
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|g| {
            let (data, cfg, out) = (data.clone(), cfg.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let opts = TrainOptions { progress: false, comm: std::sync::Arc::new(g), ..Default::default() };
                let mut t = quick_train(8);
                t.batch_size = 4;
                train_policy(&cfg, &t, &data, &out, &opts).unwrap()
            })
        })
        .collect();
    let policies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let batch = data.batch(&[0, 1, 2], &Device::Cpu, DType::F32).unwrap();
    let (a, b) =
        (policies[0].forward(&batch, Mode::Inference).unwrap(), policies[1].forward(&batch, Mode::Inference).unwrap());
    assert_eq!(max_diff(&a, &b), 0.0);
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8, "{lines}");
    // The checkpoint rank 0 wrote is the model both ranks hold.
    let q = load_policy(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(max_diff(&a, &q.forward(&batch, Mode::Inference).unwrap()), 0.0);
}

/// Encodes transition `t` of a video as the codes `[t % 50, 7]` (and renders like [`MockDynamics`]).
struct IndexDynamics;

impl vw_dldm::LatentDynamics for IndexDynamics {
    fn encode_codes(&self, frames: &Tensor) -> vw_dldm::Result<Tensor> {
        let t = frames.dim(2)? - 1;
        let v: Vec<u32> = (0..t as u32).flat_map(|i| [i % 50, 7]).collect();
        Ok(Tensor::from_vec(v, (1, t, 2), frames.device())?)
    }
    fn render(&self, context: &Tensor, codes: &Tensor) -> vw_dldm::Result<Tensor> {
        MockDynamics.render(context, codes)
    }
    fn codes_per_step(&self) -> usize {
        2
    }
    fn vocab_size(&self) -> usize {
        50
    }
    fn frames_per_code_step(&self) -> usize {
        1
    }
}

#[test]
fn the_step_dataset_starts_every_step_from_its_first_frame_with_the_rest_of_the_task() {
    use vw_data::craftworld::{generate_episode, CraftConfig, Split};
    let cfg = CraftConfig::tiny();
    let eps: Vec<_> = (0..3).map(|s| generate_episode(&cfg, Split::Train, 40 + s).unwrap()).collect();
    let tps = cfg.frames_per_step;
    let d = crate::craftworld::step_code_dataset(&IndexDynamics, &eps, tps, &Device::Cpu).unwrap();
    assert_eq!(d.len(), eps.iter().map(|e| e.num_steps()).sum::<usize>());
    let mut i = 0;
    for ep in &eps {
        for k in 0..ep.num_steps() {
            let start = if k == 0 { 0 } else { ep.steps[k - 1].end_frame };
            assert_eq!(start, k * tps, "episode {} step {k}", ep.seed);
            let want = vw_data::image_tensor::image_to_tensor(&ep.frames[start], &Device::Cpu).unwrap();
            assert_eq!(max_diff(&d.frames.i(i).unwrap(), &want), 0.0);
            // Steps k.. of the task: transition t of the video is code t.
            assert_eq!(d.steps[i].len(), ep.num_steps() - k);
            for (j, s) in d.steps[i].iter().enumerate() {
                let t0 = ((k + j) * tps) as u32;
                let want: Vec<u32> = (t0..t0 + tps as u32).flat_map(|t| [t % 50, 7]).collect();
                assert_eq!(s, &want);
            }
            i += 1;
        }
    }
    // The first-frame dataset has one example per episode, the same as step 0's.
    let first = crate::craftworld::code_dataset(&IndexDynamics, &eps, tps, &Device::Cpu).unwrap();
    assert_eq!(first.len(), eps.len());
    assert_eq!(first.steps[1], d.steps[eps[0].num_steps()]);
}

#[test]
fn a_replanned_rollout_plans_each_step_from_the_frame_it_starts_from() {
    let data = conditional_dataset();
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions { progress: false, ..Default::default() };
    let p = train_policy(&small_cfg(), &quick_train(150), &data, dir.path(), &opts).unwrap();
    let first = data.frames.narrow(0, 0, 2).unwrap();
    let gen = GenerateOptions { sampling: SamplingConfig::greedy(), max_steps: 3 };
    let r = crate::rollout::rollout_replanned(&p, &MockDynamics, &first, &gen).unwrap();
    assert!(r.steps.iter().all(|s| !s.is_empty() && s.len() <= 3), "{:?}", r.steps);
    for b in 0..2 {
        for (k, s) in r.steps[b].iter().enumerate() {
            // Two transitions per step: step k ends at frame 2 (k + 1) and starts where k - 1 ended.
            assert_eq!(r.step_end_frames[b][k], 2 * (k + 1));
            let start = r.video.i((b..b + 1, .., 2 * k)).unwrap();
            let plan = p.generate(&start, None, &GenerateOptions { max_steps: 1, ..gen }).unwrap();
            assert_eq!(&plan.steps[0][0], s, "row {b} step {k}");
        }
    }
    // The first step is the open-loop plan's first step.
    let open = rollout(&p, &MockDynamics, &first, None, &gen).unwrap();
    assert_eq!(open.steps[0][0], r.steps[0][0]);
    assert_eq!(open.steps[1][0], r.steps[1][0]);
}

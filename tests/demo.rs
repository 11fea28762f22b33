//! The reduced end-to-end demo: trains every stage for a few steps on a handful of CraftWorld
//! episodes, evaluates, and checks that the judge, the metrics and the report files are produced
//! and agree with each other.

mod common;

use common::{assert_same_tensors, tensors_of};
use videoworld::eval::demo::{run_demo, DemoConfig, DemoOptions};

#[test]
fn reduced_demo_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig::test();
    let opts = DemoOptions {
        out: dir.path().join("report"),
        checkpoints: dir.path().join("checkpoints"),
        retrain: true,
        device: candle_core::Device::Cpu,
        progress: false,
        test_episodes: None,
    };
    let out = run_demo(&cfg, &opts).unwrap();
    let r = &out.report;

    // The judge: the expert's own video is complete at every step, the first frame repeated at none.
    let expert = &r.sanity[0].success;
    assert!(expert.rate.iter().all(|&x| x == 1.0), "expert video: {expert:?}");
    assert_eq!(expert.full_task, 1.0);
    let still = &r.sanity[1].success;
    assert!(still.rate.iter().all(|&x| x == 0.0), "first frame repeated: {still:?}");
    assert_eq!(still.mean_completed, 0.0);
    // The expert video is the reference of the quality metrics: identical frames.
    let q = r.sanity[0].quality.unwrap();
    assert_eq!((q.psnr, q.ssim), (f64::INFINITY, 1.0));

    // Three methods, each scored on every episode, rates are fractions of the episode counts.
    assert_eq!(r.methods.len(), 3);
    for m in r.sanity.iter().chain(&r.methods) {
        assert_eq!(m.success.episodes[0], cfg.test_episodes, "{}", m.name);
        for (rate, n) in m.success.rate.iter().zip(&m.success.episodes) {
            let k = rate * *n as f64;
            assert!((k - k.round()).abs() < 1e-9, "{}: rate {rate} of {n} episodes", m.name);
        }
        // Success can only fall from one step to the next when every episode has that step.
        assert!(m.success.full_task <= m.success.rate[0] + 1e-12);
    }
    for m in &r.methods[..2] {
        let cb = m.codebook.as_ref().unwrap();
        assert!(cb.used >= 1 && cb.used <= cb.vocab && cb.total > 0, "{cb:?}");
        let p = m.probe.unwrap();
        assert!((0.0..=1.0).contains(&p.test_accuracy));
        let c = m.chain.as_ref().unwrap();
        assert_eq!(c.lengths.len(), cfg.chain_episodes);
        assert_eq!(c.success_at.len(), 5);
    }

    // The dLDM is drawn by its clip renderer, trained after stage 1 and stored beside it.
    assert!(opts.checkpoints.join("clip-dldm").join("checkpoint.json").exists());
    assert!(r.methods[0].description.contains("clip renderer"), "{}", r.methods[0].description);

    // The files, and that metrics.json says what report.md says.
    for p in [&out.paths.report, &out.paths.metrics, &out.paths.success_plot] {
        assert!(p.exists(), "{}", p.display());
    }
    assert!(out.paths.loss_plot.as_ref().is_some_and(|p| p.exists()));
    assert_eq!(out.gifs.len(), cfg.gif_episodes);
    assert!(out.gifs.iter().all(|g| g.exists()));
    let md = std::fs::read_to_string(&out.paths.report).unwrap();
    assert!(md.contains(&r.headline_table()));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out.paths.metrics).unwrap()).unwrap();
    for (i, m) in r.methods.iter().enumerate() {
        let rates: Vec<f64> =
            json["methods"][i]["success"]["rate"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(rates, m.success.rate);
    }
    // The checkpoint folder can be evaluated again and gives the same numbers (determinism).
    let again = videoworld::eval::demo::train::evaluate_checkpoints(
        &cfg,
        &opts.checkpoints,
        &dir.path().join("again"),
        &candle_core::Device::Cpu,
        false,
        Vec::new(),
    )
    .unwrap();
    for (a, b) in again.report.methods.iter().zip(&r.methods) {
        assert_eq!(a.success, b.success, "{}", a.name);
    }

    // An interrupted training resumes: with the config marker present, the stages still in the
    // folder are kept and the missing ones retrained, to the same weights.
    let resumed = dir.path().join("resumed");
    copy_dir(&opts.checkpoints, &resumed);
    let retrained = ["actions-dldm", "policy-vw1-ldm", "no-codes"];
    for d in retrained {
        std::fs::remove_dir_all(resumed.join(d)).unwrap();
    }
    let kept = tensors_of(&resumed.join("dldm"));
    let marker = resumed.join(videoworld::eval::demo::train::TRAINING_FILE);
    std::fs::write(&marker, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let dldm_file = std::fs::read_dir(resumed.join("dldm")).unwrap().count();
    let stamp = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(&resumed.join("dldm").join("checkpoint.json"));
    videoworld::eval::demo::train::train_all(&cfg, &resumed, &candle_core::Device::Cpu, false).unwrap();
    assert!(!marker.exists(), "the marker goes once training is complete");
    assert_eq!(stamp(&resumed.join("dldm").join("checkpoint.json")), before, "a kept stage is not rewritten");
    assert_eq!(std::fs::read_dir(resumed.join("dldm")).unwrap().count(), dldm_file);
    assert_eq!(tensors_of(&resumed.join("dldm")), kept);
    for d in retrained {
        assert_same_tensors(&resumed.join(d), &opts.checkpoints.join(d));
    }
    // A marker of another config is not resumed: what an earlier run left is removed first, so it
    // cannot pass for a stage of this run.
    let mut other = cfg.clone();
    other.seed += 1;
    std::fs::write(&marker, serde_json::to_vec(&other).unwrap()).unwrap();
    std::fs::write(resumed.join("dldm").join("left-over"), b"x").unwrap();
    videoworld::eval::demo::train::train_all(&cfg, &resumed, &candle_core::Device::Cpu, false).unwrap();
    assert!(!resumed.join("dldm").join("left-over").exists());
    assert_eq!(tensors_of(&resumed.join("dldm")), kept, "retrained from scratch, to the same weights");
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The committed checkpoints are what `vw demo --retrain` trains today: a change to the CPU
/// config must come with new checkpoints (docs/results.md records the command).
#[test]
fn the_committed_checkpoints_match_the_cpu_demo() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let stored = videoworld::eval::demo::read_config(&root.join("checkpoints/craftworld")).unwrap();
    assert_eq!(stored, DemoConfig::cpu());
    let layers =
        stored.clip.as_ref().and_then(|c| c.layers_init.as_ref()).expect("the CPU demo starts from committed layers");
    assert!(root.join(layers).join("checkpoint.json").exists(), "{}", layers.display());
    // The snap networks come with the committed layers (they see only frames): the demo's clip
    // stage then trains only what reads the codes.
    if stored.clip.as_ref().is_some_and(|c| c.snap > 0) {
        let (_, tensors) =
            videoworld::dldm::train::clip::layer_tensors(&root.join(layers), &candle_core::Device::Cpu).unwrap();
        assert!(
            tensors.iter().any(|(k, _)| videoworld::dldm::clip::is_snap_key(k)),
            "no snap networks in {}",
            layers.display()
        );
    }
    // The GPU configuration starts from committed layers too, and they load as layer networks.
    let gpu_layers =
        DemoConfig::gpu().clip.and_then(|c| c.layers_init).expect("the GPU demo starts from committed layers");
    let (_, tensors) =
        videoworld::dldm::train::clip::layer_tensors(&root.join(&gpu_layers), &candle_core::Device::Cpu).unwrap();
    assert!(!tensors.is_empty(), "{}", gpu_layers.display());
    for dir in ["dldm", "vw1-ldm", "clip-dldm", "policy-dldm", "policy-vw1-ldm", "actions-dldm", "actions-vw1-ldm"] {
        assert!(root.join("checkpoints/craftworld").join(dir).join("checkpoint.json").exists(), "{dir}");
    }
    // The models' recipe lives partly in code (`LdmKind::model`), not in demo.json: the committed
    // stage-1 runs must be what the demo's stage 1 would train today.
    use videoworld::eval::demo::ldm::{demo_stage1_config, LdmKind};
    for kind in [LdmKind::Dldm, LdmKind::Vw1] {
        let dir = root.join("checkpoints/craftworld").join(kind.dir_name());
        let (cfg, _) = videoworld::dldm::train::stage1::load_stage1(&dir, &candle_core::Device::Cpu).unwrap();
        let want = demo_stage1_config(&stored, kind);
        assert_eq!(cfg, want, "{}", dir.display());
    }
}

//! A retrain stopped midway (Ctrl-C in `vw demo --retrain`) resumes to the weights of a retrain
//! never stopped. Its own test binary: it raises the process-wide stop signal, which every trainer
//! of the process watches.

mod common;

use common::assert_same_tensors;
use videoworld::dldm::train::StopSignal;
use videoworld::eval::demo::train::{train_all, TRAINING_FILE};
use videoworld::eval::demo::DemoConfig;

#[test]
fn a_retrain_stopped_midway_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig::test();
    let cpu = candle_core::Device::Cpu;
    let straight = dir.path().join("straight");
    train_all(&cfg, &straight, &cpu, false).unwrap();

    // Stopped three times, after 2, 9 and 11 more steps (counted over both chains, which train at
    // the same time): inside stage 1, the clip renderer and the policies, then on to the end.
    let stopped = dir.path().join("stopped");
    let stop = StopSignal::process();
    for (i, allowed) in [2, 9, 11].into_iter().enumerate() {
        stop.raise_after(allowed);
        match train_all(&cfg, &stopped, &cpu, false) {
            Err(videoworld::eval::Error::Interrupted(msg)) => assert!(msg.contains("resume"), "{msg}"),
            other => panic!("expected an interruption after {allowed} more steps, got {other:?}"),
        }
        assert!(stopped.join(TRAINING_FILE).exists(), "the marker stays until training is complete");
        if i == 0 {
            // Both stage-1 runs (3 steps each) were stopped, each with a checkpoint to continue.
            for d in ["dldm", "vw1-ldm"] {
                assert!(stopped.join("runs").join(d).join("checkpoint.json").exists(), "{d}");
                assert!(!stopped.join(d).exists(), "{d} is not stored before its stage is complete");
            }
        }
    }
    stop.clear();
    train_all(&cfg, &stopped, &cpu, false).unwrap();
    assert!(!stopped.join(TRAINING_FILE).exists());
    assert!(!stopped.join("runs").exists());
    let stages = [
        "dldm",
        "vw1-ldm",
        "clip-dldm",
        "policy-dldm",
        "policy-vw1-ldm",
        "actions-dldm",
        "actions-vw1-ldm",
        "no-codes",
    ];
    for d in stages {
        assert_same_tensors(&stopped.join(d), &straight.join(d));
    }
}

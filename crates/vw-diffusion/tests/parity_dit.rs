//! DiT and scheduler parity with diffusers (fixtures from tools/gen_diffusion_fixtures.py).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, io};
use vw_diffusion::weights::{self, read_config};
use vw_diffusion::{CosmosTransformer3DModel, CosmosTransformerConfig, DitInput, FlowMatchEulerScheduler};

fn load(name: &str) -> CosmosTransformer3DModel {
    let dir = fixture(name);
    let cfg: CosmosTransformerConfig = read_config(&dir.join("config.json")).unwrap();
    let store = weights::open(&dir).unwrap();
    weights::build(&store, DType::F32, &Device::Cpu, |vb| CosmosTransformer3DModel::new(&cfg, vb)).unwrap()
}

#[test]
fn tiny_config_matches_fixture_config() {
    let cfg: CosmosTransformerConfig = read_config(&fixture("dit").join("config.json")).unwrap();
    assert_eq!(cfg, CosmosTransformerConfig::tiny());
}

#[test]
fn dit_matches_diffusers_with_and_without_conditioning() {
    let m = load("dit");
    let t = io("dit");
    let zeros = t["cond_mask"].zeros_like().unwrap();
    for i in 0..2 {
        let inp = DitInput {
            latents: &t["latents"],
            timestep: &t[&format!("t{i}")],
            text: &t["text"],
            text_mask: None,
            condition_mask: Some(&zeros),
            padding_mask: Some(&t["padding_mask"]),
            fps: Some(16.0),
        };
        assert_close(&format!("uncond t{i}"), &m.forward(&inp).unwrap(), &t[&format!("out_uncond_t{i}")], 1e-4);
        let ts5 = &t[&format!("t5d{i}")];
        let inp = DitInput { timestep: ts5, condition_mask: Some(&t["cond_mask"]), ..inp };
        assert_close(&format!("cond t{i}"), &m.forward(&inp).unwrap(), &t[&format!("out_cond_t{i}")], 1e-4);
    }
}

#[test]
fn dit_batch_of_two_without_fps() {
    let m = load("dit");
    let t = io("dit");
    let (b, _, tt, h, w) = t["latents_b2"].dims5().unwrap();
    let cm = Tensor::zeros((b, 1, tt, h, w), DType::F32, &Device::Cpu).unwrap();
    let pm = Tensor::zeros((1, 1, h, w), DType::F32, &Device::Cpu).unwrap();
    let inp = DitInput {
        latents: &t["latents_b2"],
        timestep: &t["t_b2"],
        text: &t["text_b2"],
        text_mask: None,
        condition_mask: Some(&cm),
        padding_mask: Some(&pm),
        fps: None,
    };
    assert_close("batch 2", &m.forward(&inp).unwrap(), &t["out_b2"], 1e-4);
}

#[test]
fn dit_control_residuals_after_each_block() {
    let m = load("dit");
    let t = io("dit");
    let res: Vec<(usize, Tensor)> = (0..2).map(|k| (k, t[&format!("control_res{k}")].clone())).collect();
    let inp = DitInput {
        latents: &t["latents"],
        timestep: &t["t5d0"],
        text: &t["text"],
        text_mask: None,
        condition_mask: Some(&t["cond_mask"]),
        padding_mask: Some(&t["padding_mask"]),
        fps: Some(16.0),
    };
    let out = m.forward_with_residuals(&inp, &res).unwrap();
    assert_close("control", &out, &t["out_control"], 1e-4);
    // Block by block through the public pieces gives the same result.
    let (mut x, st) = m.prepare(&inp).unwrap();
    for (i, blk) in m.blocks().iter().enumerate() {
        x = (blk.forward(&x, &st).unwrap() + &res[i].1).unwrap();
    }
    assert_close("control (manual)", &m.finish(&x, &st).unwrap(), &t["out_control"], 1e-4);
}

#[test]
fn dit_learnable_pos_embed() {
    let m = load("dit_learnable_pos");
    let t = io("dit_learnable_pos");
    let zeros = t["cond_mask"].zeros_like().unwrap();
    let inp = DitInput {
        latents: &t["latents"],
        timestep: &t["t1"],
        text: &t["text"],
        text_mask: None,
        condition_mask: Some(&zeros),
        padding_mask: Some(&t["padding_mask"]),
        fps: Some(16.0),
    };
    assert_close("learnable pos", &m.forward(&inp).unwrap(), &t["out_uncond_t1"], 1e-4);
}

#[test]
fn scheduler_matches_diffusers() {
    let t = io("scheduler");
    let cfg = read_config(&fixture("scheduler").join("scheduler_config.json")).unwrap();
    let mut s = FlowMatchEulerScheduler::new(cfg);
    for n in [4usize, 35] {
        s.set_timesteps(n).unwrap();
        let sig = Tensor::new(s.sigmas(), &Device::Cpu).unwrap();
        assert_close(&format!("sigmas {n}"), &sig, &t[&format!("sigmas_{n}")], 1e-6);
        let ts = Tensor::new(s.timesteps(), &Device::Cpu).unwrap();
        assert_close(&format!("timesteps {n}"), &ts, &t[&format!("timesteps_{n}")], 1e-6);
    }
    s.set_timesteps(4).unwrap();
    let mut x = t["sample"].clone();
    for i in 0..4 {
        x = s.step(&t[&format!("model_output_{i}")], &x).unwrap();
        assert_close(&format!("step {i}"), &x, &t[&format!("prev_sample_{i}")], 1e-6);
    }
    assert!(s.step(&x, &x).is_err(), "stepping past the schedule must fail");
}

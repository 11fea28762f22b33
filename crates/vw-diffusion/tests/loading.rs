//! Loading: official `.pt` checkpoints, and errors that name the file and the tensor.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, io};
use std::collections::HashMap;
use vw_diffusion::weights::{self, read_config, WeightStore};
use vw_diffusion::{CosmosTransformer3DModel, CosmosTransformerConfig, DitInput, Error};

fn dit_input(t: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    (t["latents"].clone(), t["cond_mask"].zeros_like().unwrap())
}

#[test]
fn official_pt_checkpoint_loads_and_matches() {
    let cfg: CosmosTransformerConfig = read_config(&fixture("dit").join("config.json")).unwrap();
    let m = CosmosTransformer3DModel::load_official_pt(
        &fixture("dit_pt").join("model.pt"),
        Some("model"),
        &cfg,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let t = io("dit");
    let (lat, zeros) = dit_input(&t);
    let out = m
        .forward(&DitInput {
            latents: &lat,
            timestep: &t["t0"],
            text: &t["text"],
            text_mask: None,
            condition_mask: Some(&zeros),
            padding_mask: Some(&t["padding_mask"]),
            fps: Some(16.0),
        })
        .unwrap();
    assert_close("pt checkpoint", &out, &t["out_uncond_t0"], 1e-4);
}

fn tensors_of_fixture() -> HashMap<String, Tensor> {
    weights::load_tensors(&fixture("dit").join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap()
}

fn build(ts: HashMap<String, Tensor>) -> Result<CosmosTransformer3DModel, Error> {
    let store = std::sync::Arc::new(WeightStore::from_tensors(ts, std::path::Path::new("broken.safetensors")));
    weights::build(&store, DType::F32, &Device::Cpu, |vb| {
        CosmosTransformer3DModel::new(&CosmosTransformerConfig::tiny(), vb)
    })
}

#[test]
fn missing_tensor_error_names_file_and_key() {
    let mut ts = tensors_of_fixture();
    ts.remove("transformer_blocks.1.attn2.to_k.weight");
    let e = build(ts).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("broken.safetensors") && msg.contains("transformer_blocks.1.attn2.to_k.weight"), "{msg}");
    assert!(msg.contains("[48, 32]"), "expected shape in: {msg}");
}

#[test]
fn wrong_shape_error_names_expected_and_found() {
    let mut ts = tensors_of_fixture();
    ts.insert("proj_out.weight".into(), Tensor::zeros((15, 48), DType::F32, &Device::Cpu).unwrap());
    let msg = build(ts).unwrap_err().to_string();
    assert!(msg.contains("proj_out.weight") && msg.contains("[15, 48]") && msg.contains("[16, 48]"), "{msg}");
}

#[test]
fn wrong_dtype_error_names_key() {
    let mut ts = tensors_of_fixture();
    ts.insert("time_embed.norm.weight".into(), Tensor::zeros(48, DType::U8, &Device::Cpu).unwrap());
    let e = build(ts).unwrap_err();
    assert!(matches!(e, Error::DtypeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("time_embed.norm.weight"), "{e}");
}

#[test]
fn missing_file_and_bad_config_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let e = CosmosTransformer3DModel::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    std::fs::write(dir.path().join("config.json"), "{\"num_layers\": \"two\"}").unwrap();
    let e = CosmosTransformer3DModel::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("expected usize"), "{e}");
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let e = CosmosTransformer3DModel::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("no .safetensors"), "{e}");
}

#[test]
fn sharded_checkpoint_with_index_loads() {
    // Split the fixture into two shards + an index, as save_pretrained does for large models.
    let ts = tensors_of_fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut keys: Vec<&String> = ts.keys().collect();
    keys.sort();
    let (a, b) = keys.split_at(keys.len() / 2);
    let mut map = serde_json::Map::new();
    for (name, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let sub: HashMap<String, Tensor> = part.iter().map(|k| ((*k).clone(), ts[*k].clone())).collect();
        weights::save_tensors(&sub, &dir.path().join(name)).unwrap();
        for k in part {
            map.insert((*k).clone(), serde_json::Value::String(name.into()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(fixture("dit").join("config.json"), dir.path().join("config.json")).unwrap();
    let m = CosmosTransformer3DModel::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.blocks().len(), 2);
}

#[test]
fn offline_hub_miss_is_a_clear_error() {
    // Only this test touches these variables in this test binary.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", cache.path());
    let src = vw_diffusion::hub::ModelSource::parse("nobody/not-a-model");
    let e = src.component(vw_diffusion::hub::Component::Transformer).unwrap_err();
    assert!(e.to_string().contains("HF_HUB_OFFLINE") && e.to_string().contains("nobody/not-a-model"), "{e}");
}

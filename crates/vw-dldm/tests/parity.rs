//! Parity of the dLDM tokenizer with the official PyTorch code, on the fixtures written by
//! `tools/gen_dldm_fixtures.py` (see its docstring for what each fixture holds).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vw_dldm::checkpoint_keys::{load_into_varmap, official_to_ours, tokenizer_from_official};
use vw_dldm::config::Config;
use vw_dldm::quantizer::Quantizer;
use vw_dldm::tokenizer::Tokenizer;
use vw_dldm::LatentDynamics;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    d / m.max(1e-12)
}

fn check(name: &str, ours: &Tensor, theirs: &Tensor) {
    let e = rel_err(ours, theirs);
    assert!(e <= TOL, "{name}: relative error {e:e} > {TOL:e}");
}

fn indices(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn config_from(json_name: &str) -> (Config, serde_json::Value) {
    let text = std::fs::read_to_string(fixture(json_name)).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: Config = serde_json::from_value(meta.clone()).unwrap();
    (cfg, meta)
}

/// The small fixture's config: the official kwargs, with the two widths the generator shrank.
fn small_config() -> (Config, serde_json::Value) {
    let (mut cfg, meta) = config_from("dldm_small.json");
    cfg.qformer_dim = cfg.encoder_out_channels();
    cfg.connector_dim = meta["connector_out_channels"].as_u64().unwrap() as usize;
    (cfg, meta)
}

fn split_io(path: &Path) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let all = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut weights = HashMap::new();
    let mut io = HashMap::new();
    for (k, v) in all {
        match k.strip_prefix("io.") {
            Some(name) => {
                io.insert(name.to_string(), v);
            }
            None => {
                if let Some(ours) = official_to_ours(&k) {
                    weights.insert(ours, v);
                }
            }
        }
    }
    (weights, io)
}

fn compare_encode_decode(tok: &Tokenizer, io: &HashMap<String, Tensor>) {
    let x = &io["input"];
    let enc = tok.encode(x).unwrap();
    check("encoder features", &enc.features, &io["encoded"]);
    check("pre-quantization query", &enc.query, &io["query"]);
    assert_eq!(indices(&enc.indices), indices(&io["indices"]), "FSQ indices differ");
    check("quantized vectors", &enc.codes, &io["quant"]);
    let recon = tok.decode(&enc.features, &enc.codes).unwrap();
    check("decode", &recon, &io["recon"]);
}

#[test]
fn fsq_matches_official_quantizer() {
    let t = candle_core::safetensors::load(fixture("fsq.safetensors"), &Device::Cpu).unwrap();
    let levels = [8, 5, 5, 5];
    // the kernels op directly, channels last
    let zl = t["z"].permute((0, 2, 3, 4, 1)).unwrap().contiguous().unwrap();
    let (codes, idx) = vw_tensor_kernels::fsq::fsq_quantize(&zl, &levels).unwrap();
    assert_eq!(indices(&idx), indices(&t["indices"]));
    let codes = codes.permute((0, 4, 1, 2, 3)).unwrap();
    check("fsq codes", &codes, &t["codes"]);
    // and through our quantizer, both directions
    let q = Quantizer::Fsq { levels: levels.to_vec() };
    let out = q.forward(&t["z"]).unwrap();
    assert_eq!(indices(&out.indices), indices(&t["indices"]));
    check("quantizer codes", &out.codes, &t["codes"]);
    let all = Tensor::arange(0u32, 1000, &Device::Cpu).unwrap().reshape((1, 1000, 1, 1)).unwrap();
    check("indices_to_codes", &q.indices_to_codes(&all, DType::F32).unwrap(), &t["all_codes"]);
}

#[test]
fn tokenizer_matches_official_small() {
    let (cfg, _) = small_config();
    let (weights, io) = split_io(&fixture("dldm_small.safetensors"));
    let varmap = VarMap::new();
    let tok = Tokenizer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    // every variable is in the official state dict and every official weight is used
    let unused = load_into_varmap(&varmap, &weights, &fixture("dldm_small.safetensors")).unwrap();
    assert!(unused.is_empty(), "official keys our model does not have: {unused:?}");
    compare_encode_decode(&tok, &io);

    let x = &io["input"];
    let enc = tok.encode(x).unwrap();
    let from_codes = tok.decode_code(&enc.features, &enc.indices).unwrap();
    check("decode_code", &from_codes, &io["recon_from_codes"]);
    let first = x.narrow(2, 0, 1).unwrap();
    let h1 = tok.encoder().features(&first).unwrap();
    check("first-frame features", &h1, &io["input_first_frame_encoded"]);
    let rendered = tok.decode(&h1, &enc.codes).unwrap();
    check("render from one frame", &rendered, &io["render_one_frame"]);
    // the LatentDynamics path is the same computation without the context frame
    let codes = tok.encode_codes(x).unwrap();
    let future = tok.render(&first, &codes).unwrap();
    let t = rendered.dim(2).unwrap();
    check("LatentDynamics::render", &future, &rendered.narrow(2, 1, t - 1).unwrap());
    // the DiT connector, as tokens (B, S*Q, C)
    let ctx = &io["connector_out"];
    let (b, c, _, _, _) = ctx.dims5().unwrap();
    let ctx = ctx.reshape((b, c, ())).unwrap().transpose(1, 2).unwrap();
    check("quant_to_dit_dim", &tok.connector(&enc.codes).unwrap(), &ctx);
}

#[test]
fn official_pt_checkpoint_loads() {
    let (cfg, _) = small_config();
    let path = fixture("dldm_small_ckpt.pt");
    let (tok, _varmap, unused) = tokenizer_from_official(&cfg, &path, DType::F32, &Device::Cpu).unwrap();
    assert!(unused.is_empty(), "unused checkpoint keys: {unused:?}");
    let (_, io) = split_io(&fixture("dldm_small.safetensors"));
    compare_encode_decode(&tok, &io);
    // a config that does not match the checkpoint is a clear error naming the tensor
    let wrong = Config { z_channels: 8, ..cfg };
    let err = tokenizer_from_official(&wrong, &path, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("tensor") && err.contains("shape"), "{err}");
}

/// `formula_weight` of the generator: scale * sin(0.7071 i + 1.618 index), norm scales + 1.
// 0.7071 is the generator's literal, not 1/sqrt(2): the Rust side must reproduce it bit for bit.
#[allow(clippy::approx_constant)]
fn formula_weight(index: usize, name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let scale = if shape.len() > 1 { 1.0 / ((n / shape[0]).max(1) as f64).sqrt() } else { 0.1 };
    let one = if shape.len() == 1 && name.ends_with(".weight") { 1.0f32 } else { 0.0 };
    let v: Vec<f32> = (0..n).map(|i| one + (scale * (i as f64 * 0.7071 + index as f64 * 1.618).sin()) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn tokenizer_matches_official_at_width_512() {
    let (mut cfg, meta) = config_from("dldm_width512.json");
    assert_eq!(cfg.qformer_dim, 512);
    cfg.connector_dim = 8; // the generator removed the 1024-wide connector; ours is not compared here
    let (mut weights, io) = split_io(&fixture("dldm_width512.safetensors"));
    let params = meta["parameters"].as_array().unwrap();
    for (idx, p) in params.iter().enumerate() {
        let name = p[0].as_str().unwrap();
        let shape: Vec<usize> = p[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        weights.insert(official_to_ours(name).unwrap(), formula_weight(idx, name, &shape));
    }
    // weights of the connector, not part of the official model here
    let conn = VarMap::new();
    let zc = cfg.z_channels;
    vw_dldm::layers3d::ResnetBlockFactorized::new(
        zc,
        8,
        VarBuilder::from_varmap(&conn, DType::F32, &Device::Cpu).pp("quant_to_dit_dim"),
    )
    .unwrap();
    for (k, v) in conn.data().lock().unwrap().iter() {
        weights.insert(k.clone(), v.as_tensor().clone());
    }
    let tok = Tokenizer::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)).unwrap();
    compare_encode_decode(&tok, &io);
}

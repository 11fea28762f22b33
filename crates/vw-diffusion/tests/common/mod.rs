//! Shared helpers of the parity tests: fixture paths and the relative-error check.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// The reference inputs/outputs of a fixture.
pub fn io(name: &str) -> HashMap<String, Tensor> {
    vw_diffusion::weights::load_tensors(&fixture(name).join("io.safetensors"), &Device::Cpu).expect("fixture io")
}

/// max|a - b| / max|b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1e-12)
}

/// Asserts rel_err <= tol, printing the value.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    eprintln!("{what}: rel err {e:.3e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

//! Compiles `kernels/*.cu` to PTX with nvcc, only with the `cuda` feature; CPU builds do nothing.
//! `CUDA_COMPUTE_CAP` picks the target (default 90, i.e. `-arch=sm_90`); `NVCC` or `CUDA_HOME`
//! locate the compiler. `kernels/*_sm90.cu` use Hopper-only instructions (wgmma, setmaxnreg): with
//! cap 90 they are built for `compute_90a` and the crate gets `cfg(vw_sm90a)`; otherwise they build
//! as trapping stubs that the Rust side never launches.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo::rustc-check-cfg=cfg(vw_sm90a)");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().replace('.', "");
    let nvcc = std::env::var("NVCC").ok().unwrap_or_else(|| match std::env::var("CUDA_HOME") {
        Ok(home) => format!("{home}/bin/nvcc"),
        Err(_) => "nvcc".into(),
    });
    for entry in std::fs::read_dir("kernels").expect("kernels/ exists") {
        let path = entry.expect("readable kernels/ entry").path();
        if path.extension().is_some_and(|e| e == "cuh") {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path.file_stem().expect("file name").to_string_lossy().to_string();
        let ptx = out.join(format!("{stem}.ptx"));
        let arch = if stem.ends_with("_sm90") && cap == "90" {
            println!("cargo:rustc-cfg=vw_sm90a");
            "-arch=compute_90a".to_string()
        } else {
            format!("-arch=sm_{cap}")
        };
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", &arch, "-Ikernels", "-o"])
            .arg(&ptx)
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("cannot run nvcc ({nvcc}): {e}; install the toolkit or set NVCC"));
        assert!(status.success(), "nvcc failed on {}", path.display());
    }
}

//! `vw info`: features, devices and versions.

use clap::Args;

/// Arguments of `vw info`.
#[derive(Debug, Args)]
pub struct InfoArgs {}

/// Prints what this build can do.
pub fn run(_args: InfoArgs) -> anyhow::Result<()> {
    println!("vw {}", env!("CARGO_PKG_VERSION"));
    println!("features: cuda={}", vw_tensor_kernels::CUDA_ENABLED);
    println!("devices:");
    println!("  cpu ({} threads)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    for line in cuda_devices() {
        println!("  {line}");
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Vec<String> {
    vw_tensor_kernels::device::cuda_device_names().unwrap_or_else(|e| vec![format!("cuda: unavailable ({e})")])
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Vec<String> {
    vec!["cuda: not compiled in (build with --features cuda)".to_string()]
}

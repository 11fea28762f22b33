//! The kernel check and benchmark of `vw kernel-check` / `vw kernel-bench`, as a small binary that
//! builds with this crate alone (no model crates), for quick runs on a GPU machine:
//!
//! `cargo run --release --features cuda -p vw-tensor-kernels --example kernels -- kernel-check`
//! (also `kernel-bench [--quick]` and `info`).

#[path = "../../../src/cmd/kernel_bench.rs"]
mod kernel_bench;
#[path = "../../../src/cmd/kernel_check.rs"]
mod kernel_check;

use clap::{Parser, Subcommand};

/// Kernel check / bench / device list.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Visible CUDA devices.
    Info,
    /// Every kernel against its CPU reference.
    KernelCheck(kernel_check::KernelCheckArgs),
    /// Timings against the composed candle ops and the device ceilings.
    KernelBench(kernel_bench::KernelBenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Info => {
            println!("vw-tensor-kernels {} (cuda={})", env!("CARGO_PKG_VERSION"), vw_tensor_kernels::CUDA_ENABLED);
            #[cfg(feature = "cuda")]
            for d in vw_tensor_kernels::device::cuda_device_names()? {
                println!("  {d}");
            }
            Ok(())
        }
        Cmd::KernelCheck(a) => kernel_check::run(a),
        Cmd::KernelBench(a) => kernel_bench::run(a),
    }
}

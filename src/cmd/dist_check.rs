//! `vw dist-check`: checks the NCCL collectives across the GPUs of this host (sums and broadcasts
//! of known values, an awkward length) and times the all-reduce (algorithm and bus bandwidth, as
//! nccl-tests reports them). World size 1 exercises the same NCCL path in one process.

use anyhow::{bail, ensure};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::path::PathBuf;
use vw_tensor_kernels::dist::{self, Collective, DistEnv};
use vw_tensor_kernels::DeviceSpec;

/// Arguments of `vw dist-check`.
#[derive(Debug, Args)]
pub struct DistCheckArgs {
    /// Run as this many processes, one per GPU.
    #[arg(long)]
    pub nproc: Option<usize>,
    /// Size of the timed all-reduce, MiB of f32.
    #[arg(long, default_value_t = 256)]
    pub mib: usize,
    /// Timed all-reduces (after 3 warm-ups).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Also write the results as JSON here (rank 0).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The GPU (in a multi-process run each rank takes cuda:LOCAL_RANK).
    #[arg(long, default_value = "cuda:0")]
    pub device: DeviceSpec,
}

#[cfg(feature = "nccl")]
fn group(env: &DistEnv, device: &Device) -> anyhow::Result<Box<dyn Collective>> {
    Ok(Box::new(dist::NcclGroup::join(env, device, super::launch::JOIN_TIMEOUT)?))
}

#[cfg(not(feature = "nccl"))]
fn group(_env: &DistEnv, _device: &Device) -> anyhow::Result<Box<dyn Collective>> {
    bail!("this build has no NCCL support; rebuild with `--features nccl`")
}

/// Runs `vw dist-check`.
pub fn run(args: DistCheckArgs) -> anyhow::Result<()> {
    if let Some(n) = args.nproc.filter(|n| *n > 1) {
        return super::launch::spawn_ranks(n);
    }
    if !matches!(args.device, DeviceSpec::Cuda(_)) {
        bail!("dist-check runs NCCL on GPUs: pass --device cuda");
    }
    let (env, device) = super::launch::rank_device(args.device)?;
    let env = match env {
        Some(e) => e,
        None => DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: dist::free_port()?,
        },
    };
    let comm = group(&env, &device)?;
    let (w, r) = (comm.world_size(), comm.rank());

    // Correctness on an awkward length: every rank contributes rank + 1.
    let n = 1_000_003;
    let x = Tensor::full(r as f32 + 1.0, n, &device)?;
    let sum = comm.all_reduce_sum(&x)?.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.to_vec1::<f64>()?;
    let want = (w * (w + 1) / 2) as f64;
    ensure!(sum.iter().all(|v| *v == want), "rank {r}: all-reduce sum is wrong (want {want} everywhere)");
    let ramp = Tensor::arange(0f32, n as f32, &device)?;
    let mine = (&ramp * (r as f64 + 1.0))?;
    let got = comm.broadcast(&mine, w - 1)?;
    let err = (got - (ramp * w as f64)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    ensure!(err == 0.0, "rank {r}: broadcast from rank {} differs by {err}", w - 1);

    // Bandwidth of the all-reduce at the gradient-bucket scale.
    let elems = args.mib * (1 << 20) / 4;
    let big = Tensor::ones(elems, DType::F32, &device)?;
    for _ in 0..3 {
        comm.all_reduce_sum(&big)?;
    }
    device.synchronize()?;
    let t0 = std::time::Instant::now();
    for _ in 0..args.iters {
        comm.all_reduce_sum(&big)?;
    }
    device.synchronize()?;
    let secs = t0.elapsed().as_secs_f64() / args.iters.max(1) as f64;
    let bytes = (elems * 4) as f64;
    let algbw = bytes / secs / 1e9;
    let busbw = algbw * 2.0 * (w as f64 - 1.0) / w as f64;
    if comm.is_main() {
        println!("NCCL world size {w}: all-reduce sum and broadcast of {n} f32 correct on every rank");
        println!(
            "all-reduce {} MiB f32: {:.3} ms, algbw {algbw:.1} GB/s, busbw {busbw:.1} GB/s (mean of {})",
            args.mib,
            secs * 1e3,
            args.iters
        );
        if let Some(path) = &args.json {
            let j = serde_json::json!({
                "world_size": w, "mib": args.mib, "iters": args.iters, "ms": secs * 1e3,
                "algbw_gbs": algbw, "busbw_gbs": busbw, "correct": true,
            });
            std::fs::write(path, serde_json::to_string_pretty(&j)?)?;
        }
    }
    Ok(())
}

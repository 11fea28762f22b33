//! `vw kernel-bench`: times each vw-tensor-kernels op against the composed candle ops it replaces,
//! at the shapes the video models run (Cosmos-Predict2 2B attention, Wan-VAE decoder convs), plus
//! the copy and matmul ceilings of the same device. Wall time around `synchronize`, median of runs;
//! the memory-bound ops and the copy ceiling are also timed with `--reps` calls back to back between
//! two synchronisations (per-call time = sample / reps), and each printed as a percentage of the copy
//! ceiling timed the same way.

use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::time::Instant;
use vw_tensor_kernels::{attention, conv3d, fsq, norm, rope, DeviceSpec};

/// Arguments of `vw kernel-bench`.
#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    /// Device to time on.
    #[arg(long, default_value = "cuda:0")]
    pub device: DeviceSpec,
    /// Timed repetitions per case (median reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Only the smallest shapes (a quick smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Only the ceilings and flash attention (no composed-candle attention timing).
    #[arg(long)]
    pub attention_only: bool,
    /// Only the copy ceiling and the memory-bound ops (norms, gated residual, RoPE, FSQ).
    #[arg(long)]
    pub memory_only: bool,
    /// Launches per sample in the back-to-back timing of the memory-bound ops and the copy.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Keep freed device memory in the CUDA pool across synchronisations
    /// (`vw_tensor_kernels::device::retain_pool_memory`, as PyTorch's caching allocator does).
    #[arg(long)]
    pub retain_pool: bool,
}

/// Median seconds of `f` over `iters` runs after one warm-up, synchronising the device around each.
fn time(dev: &Device, iters: usize, mut f: impl FnMut() -> anyhow::Result<Tensor>) -> anyhow::Result<f64> {
    drop(f()?);
    dev.synchronize()?;
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        ts.push(t0.elapsed().as_secs_f64());
        drop(out);
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

/// Median seconds per call of `f` when `reps` calls are issued back to back between two
/// synchronisations (each output dropped before the next call, as a model's forward does), over
/// `iters` samples after one warm-up sample. Host work (allocation, launch) overlaps the previous
/// kernel; one synchronisation is shared by the `reps` calls.
fn time_b2b(
    dev: &Device,
    iters: usize,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<f64> {
    let reps = reps.max(1);
    let mut ts = Vec::with_capacity(iters);
    for i in 0..=iters.max(1) {
        dev.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..reps {
            drop(f()?);
        }
        dev.synchronize()?;
        if i > 0 {
            ts.push(t0.elapsed().as_secs_f64() / reps as f64);
        }
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

/// One memory-bound op's timings: synchronised per call (`time`) and back to back (`time_b2b`),
/// each also as a percentage of the copy ceiling timed the same way in this run.
struct MemBench<'a> {
    dev: &'a Device,
    iters: usize,
    reps: usize,
    /// Copy ceiling in GB/s: (synchronised per call, back to back).
    copy: (f64, f64),
}

impl MemBench<'_> {
    fn run(
        &self,
        name: &str,
        shape: &str,
        bytes: f64,
        mut f: impl FnMut() -> anyhow::Result<Tensor>,
        composed: Option<&mut dyn FnMut() -> anyhow::Result<Tensor>>,
    ) -> anyhow::Result<()> {
        let synced = time(self.dev, self.iters, &mut f)?;
        let b2b = time_b2b(self.dev, self.iters, self.reps, &mut f)?;
        let comp = match composed {
            Some(c) => Some(time(self.dev, self.iters, c)?),
            None => None,
        };
        let gbs = |t: f64| bytes / t / 1e9;
        let c = comp.map_or("-".to_string(), |c| format!("{:.3} ms ({:.1} GB/s), {:.2}x", c * 1e3, gbs(c), c / synced));
        println!(
            "| {name} | {shape} | {:.3} ms | {:.1} GB/s | {:.1}% | {:.3} ms | {:.1} GB/s | {:.1}% | {c} |",
            synced * 1e3,
            gbs(synced),
            100.0 * gbs(synced) / self.copy.0,
            b2b * 1e3,
            gbs(b2b),
            100.0 * gbs(b2b) / self.copy.1,
        );
        Ok(())
    }
}

fn rand(shape: &[usize], dt: DType, dev: &Device) -> anyhow::Result<Tensor> {
    // Uniform values generated on the device (no host transfer of GBs).
    Ok(Tensor::rand(-1f32, 1f32, shape, dev)?.to_dtype(dt)?)
}

fn row(name: &str, shape: &str, ours: f64, composed: Option<f64>, work: f64, unit: &str) {
    let per = |t: f64| work / t / 1e12 * if unit == "GB/s" { 1e3 } else { 1.0 };
    let c = composed.map_or("-".to_string(), |c| format!("{:.3} ms ({:.1} {unit})", c * 1e3, per(c)));
    let speedup = composed.map_or("-".to_string(), |c| format!("{:.2}x", c / ours));
    println!("| {name} | {shape} | {:.3} ms | {:.1} {unit} | {c} | {speedup} |", ours * 1e3, per(ours));
}

/// Runs the benchmark and prints a markdown table.
pub fn run(args: KernelBenchArgs) -> anyhow::Result<()> {
    let dev = args.device.open()?;
    if args.retain_pool {
        vw_tensor_kernels::device::retain_pool_memory(&dev)?;
    }
    let it = args.iters;
    // Check / time our conv3d kernel, not cuDNN's (the `cudnn` build's default path).
    #[cfg(feature = "cudnn")]
    vw_tensor_kernels::conv3d_cudnn::set_enabled(false);
    println!(
        "vw kernel-bench on {} ({} timed runs, median; device memory pool {})",
        args.device,
        it,
        if args.retain_pool { "retained across synchronisations" } else { "default (released at synchronise)" }
    );
    println!("| op | shape | ours | ours rate | composed candle | speedup |");
    println!("|---|---|---|---|---|---|");

    // Ceilings.
    let big = rand(&[256 << 20], DType::BF16, &dev)?; // 512 MiB
    let t = time(&dev, it, || Ok(big.copy()?))?;
    let copy_bytes = 2.0 * 512.0 * (1 << 20) as f64;
    row("copy (dtod) ceiling", "512 MiB bf16", t, None, copy_bytes, "GB/s");
    let t_b2b = time_b2b(&dev, it, args.reps, || Ok(big.copy()?))?;
    row(&format!("copy (dtod) ceiling, {} back to back", args.reps), "512 MiB bf16", t_b2b, None, copy_bytes, "GB/s");
    let copy = (copy_bytes / t / 1e9, copy_bytes / t_b2b / 1e9);
    drop(big);
    if !args.memory_only {
        compute_bound(&args, &dev)?;
    }
    if args.attention_only {
        return Ok(());
    }
    memory_bound(&args, &dev, copy)
}

/// The matmul ceiling, flash attention and conv3d rows.
fn compute_bound(args: &KernelBenchArgs, dev: &Device) -> anyhow::Result<()> {
    let (dev, it) = (dev.clone(), args.iters);
    let n = if args.quick { 2048 } else { 8192 };
    let (a, b) = (rand(&[n, n], DType::BF16, &dev)?, rand(&[n, n], DType::BF16, &dev)?);
    let t = time(&dev, it, || Ok(a.matmul(&b)?))?;
    row("matmul (cuBLAS) ceiling", &format!("{n}^3 bf16"), t, None, 2.0 * (n as f64).powi(3), "TFLOP/s");
    drop((a, b));

    // Flash attention, Cosmos-Predict2 2B heads: B=1, H=16, D=128, bf16.
    let seqs: &[usize] = if args.quick { &[1024] } else { &[4096, 16384, 37440] };
    for &l in seqs {
        let q = rand(&[1, 16, l, 128], DType::BF16, &dev)?;
        let k = rand(&[1, 16, l, 128], DType::BF16, &dev)?;
        let v = rand(&[1, 16, l, 128], DType::BF16, &dev)?;
        for causal in [false, true] {
            let scale = 1.0 / (128f32).sqrt();
            let ours = time(&dev, it, || Ok(attention::flash_attn(&q, &k, &v, scale, causal, None)?))?;
            // The mma.sync kernel at the same shape (the Hopper kernel takes it where it applies).
            vw_tensor_kernels::set_flash_sm90(false);
            let mma = time(&dev, it, || Ok(attention::flash_attn(&q, &k, &v, scale, causal, None)?));
            vw_tensor_kernels::set_flash_sm90(true);
            let mma = mma?;
            let comp = if l <= 4096 && !args.attention_only {
                Some(time(&dev, it.min(3), || Ok(attention::composed(&q, &k, &v, scale, causal, None)?))?)
            } else {
                None
            };
            let flops = 4.0 * 16.0 * (l as f64) * (l as f64) * 128.0 * if causal { 0.5 } else { 1.0 };
            row(
                &format!("flash_attn{}", if causal { " causal" } else { "" }),
                &format!("1x16x{l}x128"),
                ours,
                comp,
                flops,
                "TFLOP/s",
            );
            row(
                &format!("flash_attn{} (mma.sync kernel)", if causal { " causal" } else { "" }),
                &format!("1x16x{l}x128"),
                mma,
                None,
                flops,
                "TFLOP/s",
            );
        }
    }
    if args.attention_only {
        return Ok(());
    }

    // conv3d at Wan-VAE decoder shapes (k=3, padding 1, 4 frames), bf16.
    let convs: &[(usize, usize, usize)] =
        if args.quick { &[(96, 60, 104)] } else { &[(384, 60, 104), (192, 240, 416), (96, 480, 832)] };
    for &(c, h, w) in convs {
        let x = rand(&[1, c, 4, h, w], DType::BF16, &dev)?;
        let wt = (rand(&[c, c, 3, 3, 3], DType::BF16, &dev)? * 0.05)?;
        let bias = rand(&[c], DType::BF16, &dev)?;
        let dims = conv3d::Conv3dDims::new(&x, &wt, Some(&bias), [1, 1, 1], [1, 1, 1])?;
        let ours = time(&dev, it, || Ok(conv3d::conv3d(&x, &wt, Some(&bias), [1, 1, 1], [1, 1, 1])?))?;
        let comp = time(&dev, it.min(3), || Ok(conv3d::composed(&x, &wt, Some(&bias), [1, 1, 1], [1, 1, 1])?))?;
        row("conv3d", &format!("1x{c}x4x{h}x{w} k3"), ours, Some(comp), 2.0 * dims.macs() as f64, "TFLOP/s");
    }

    Ok(())
}

/// The memory-bound ops, each timed synchronised per call and back to back, against the copy
/// ceiling `copy` (GB/s, timed both ways in the same run).
fn memory_bound(args: &KernelBenchArgs, dev: &Device, copy: (f64, f64)) -> anyhow::Result<()> {
    let it = args.iters;
    let mb = MemBench { dev, iters: it, reps: args.reps, copy };
    println!();
    println!(
        "| op | shape | ours, synced per call | rate | of copy | ours, {} back to back | rate | of copy | composed candle (synced), speedup |",
        args.reps
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Bandwidth-bound ops at the DiT's token count (37440 tokens x 2048 channels), bf16.
    let l = if args.quick { 4096 } else { 37440 };
    let x = rand(&[1, l, 2048], DType::BF16, dev)?;
    let y = rand(&[1, l, 2048], DType::BF16, dev)?;
    let (sh, sc) = (rand(&[1, 1, 2048], DType::F32, dev)?, rand(&[1, 1, 2048], DType::F32, dev)?);
    let bytes = (l * 2048 * 2) as f64;
    let shape = format!("1x{l}x2048");
    mb.run(
        "layer_norm_modulate",
        &shape,
        2.0 * bytes,
        || Ok(norm::layer_norm_modulate(&x, &sh, &sc, 1e-6)?),
        Some(&mut || Ok(norm::composed(&x, None, &sh, &sc, 1e-6, norm::NormKind::Layer)?)),
    )?;
    mb.run(
        "rms_norm_modulate",
        &shape,
        2.0 * bytes,
        || Ok(norm::rms_norm_modulate(&x, None, &sh, &sc, 1e-6)?),
        Some(&mut || Ok(norm::composed(&x, None, &sh, &sc, 1e-6, norm::NormKind::Rms)?)),
    )?;
    mb.run(
        "gated_residual",
        &shape,
        3.0 * bytes,
        || Ok(norm::gated_residual(&x, &sh, &y)?),
        Some(&mut || Ok(norm::gated_residual_composed(&x, &sh, &y)?)),
    )?;
    drop((x, y));

    let xr = rand(&[1, 16, l, 128], DType::BF16, dev)?;
    let ang = rand(&[l, 64], DType::F32, dev)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    for layout in [rope::RopeLayout::Half, rope::RopeLayout::Interleaved] {
        mb.run(
            &format!("rope {layout:?}"),
            &format!("1x16x{l}x128"),
            2.0 * (16 * l * 128 * 2) as f64,
            || Ok(rope::apply(&xr, &cos, &sin, layout)?),
            Some(&mut || Ok(rope::composed(&xr, &cos, &sin, layout)?)),
        )?;
    }
    drop(xr);

    let n = if args.quick { 1 << 18 } else { 1 << 22 };
    let z = rand(&[n, 4], DType::F32, dev)?;
    let levels = [8, 5, 5, 5];
    // Two launches (codes, then indices), each reading z: 16 + 16 bytes read, 16 + 4 written per row.
    mb.run(
        "fsq_quantize (codes+idx, 2 launches)",
        &format!("{n}x4 f32"),
        (n * (16 + 16 + 16 + 4)) as f64,
        || {
            let (c, i) = fsq::fsq_quantize(&z, &levels)?;
            drop(i);
            Ok(c)
        },
        Some(&mut || Ok(fsq::composed(&z, &levels)?.0)),
    )?;
    Ok(())
}

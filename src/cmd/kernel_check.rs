//! `vw kernel-check`: every vw-tensor-kernels op on the chosen device against its plain-Rust CPU
//! reference, on fresh random inputs of awkward sizes, with kernel outputs poisoned (0xFF) first.
//! Prints a table and fails if any error exceeds its bound (f32 1e-5, bf16/f16 1e-2 relative).

use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use vw_tensor_kernels::{attention, conv3d, fsq, norm, rope, vq, DeviceSpec};

/// Arguments of `vw kernel-check`.
#[derive(Debug, Args)]
pub struct KernelCheckArgs {
    /// Device to check (cuda:N runs the kernels; cpu checks the composed CPU paths).
    #[arg(long, default_value = "cuda:0")]
    pub device: DeviceSpec,
    /// Seed of the random inputs (default: from the clock, so each run sees fresh inputs).
    #[arg(long)]
    pub seed: Option<u64>,
}

struct Row {
    op: String,
    dtype: DType,
    shape: String,
    err: f32,
    bound: f32,
}

fn bound(dt: DType) -> f32 {
    if dt == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

/// Random input of `shape`, rounded to `dt`, on `dev`; also its f32 CPU copy (the reference input).
fn input(seed: u64, shape: &[usize], scale: f64, dt: DType, dev: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let t = (vw_tensor_kernels::random_tensor(seed, shape, &Device::Cpu)? * scale)?.to_dtype(dt)?;
    Ok((t.to_device(dev)?, t.to_dtype(DType::F32)?))
}

fn fmt_shape(dims: &[&[usize]]) -> String {
    dims.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(" ")
}

/// Runs the checks.
pub fn run(args: KernelCheckArgs) -> anyhow::Result<()> {
    let dev = args.device.open()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    vw_tensor_kernels::set_poison_outputs(true);
    // Check / time our conv3d kernel, not cuDNN's (the `cudnn` build's default path).
    #[cfg(feature = "cudnn")]
    vw_tensor_kernels::conv3d_cudnn::set_enabled(false);
    println!("vw kernel-check on {} (seed {seed})", args.device);
    let mut rows = Vec::new();
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(7919);
        s
    };
    let err = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> { Ok(vw_tensor_kernels::max_rel_err(a, b)?) };

    // Flash attention: the kernel takes bf16/f16 with head_dim 64/128.
    let attn_cases: [(usize, usize, usize, usize, bool, u8); 6] = [
        (2, 3, 200, 333, false, 0),
        (1, 2, 257, 257, true, 0),
        (1, 2, 77, 300, true, 1),
        (1, 2, 300, 77, true, 0),
        (2, 2, 130, 190, false, 2),
        (1, 1, 1, 129, false, 0),
    ];
    let attn_dtypes: &[DType] = if dev.is_cuda() { &[DType::BF16, DType::F16] } else { &[DType::F32] };
    for &dt in attn_dtypes {
        for d in [64, 128] {
            for &(b, h, lq, lk, causal, mk) in &attn_cases {
                let (q, qr) = input(next(), &[b, h, lq, d], 1.0, dt, &dev)?;
                let (k, kr) = input(next(), &[b, h, lk, d], 1.0, dt, &dev)?;
                let (v, vr) = input(next(), &[b, h, lk, d], 1.0, dt, &dev)?;
                let mask = match mk {
                    1 => Some(input(next(), &[b, 1, 1, lk], 2.0, DType::F32, &dev)?),
                    2 => Some(input(next(), &[lq, lk], 2.0, DType::F32, &dev)?),
                    _ => None,
                };
                let scale = 1.0 / (d as f32).sqrt();
                let want = attention::reference_tensor(&qr, &kr, &vr, scale, causal, mask.as_ref().map(|m| &m.1))?;
                // Unmasked head_dim 128 takes the Hopper kernel on sm_90: check the mma.sync one too.
                let paths: &[bool] = if d == 128 && mk == 0 && dev.is_cuda() { &[true, false] } else { &[true] };
                for &sm90 in paths {
                    vw_tensor_kernels::set_flash_sm90(sm90);
                    let out = attention::flash_attn(&q, &k, &v, scale, causal, mask.as_ref().map(|m| &m.0));
                    vw_tensor_kernels::set_flash_sm90(true);
                    let tag = format!(
                        "flash_attn{}{}{}",
                        if causal { " causal" } else { "" },
                        if mk > 0 { " mask" } else { "" },
                        if sm90 { "" } else { " (mma.sync)" }
                    );
                    rows.push(Row {
                        op: tag,
                        dtype: dt,
                        shape: fmt_shape(&[&[b, h, lq, lk, d]]),
                        err: err(&out?, &want)?,
                        bound: bound(dt),
                    });
                }
            }
        }
    }

    // conv3d / causal conv3d: the kernel takes bf16/f16.
    let conv_dtypes: &[DType] = if dev.is_cuda() { &[DType::BF16, DType::F16] } else { &[DType::F32] };
    #[allow(clippy::type_complexity)]
    // C % 32 == 0 takes the channels-last kernel (K block 64 when C % 64 == 0), the rest the NCDHW one.
    let conv_cases: [([usize; 5], [usize; 5], [usize; 3], [usize; 3]); 7] = [
        ([1, 16, 5, 20, 18], [24, 16, 3, 3, 3], [1, 1, 1], [1, 1, 1]),
        ([2, 12, 4, 17, 15], [40, 12, 3, 3, 3], [1, 2, 2], [0, 1, 1]),
        ([1, 3, 6, 33, 31], [70, 3, 3, 1, 1], [2, 1, 1], [0, 0, 0]),
        ([1, 64, 3, 24, 40], [64, 64, 3, 3, 3], [1, 1, 1], [1, 1, 1]),
        ([2, 32, 5, 13, 11], [40, 32, 3, 3, 3], [1, 2, 2], [0, 1, 1]),
        ([1, 96, 7, 9, 10], [100, 96, 3, 3, 3], [2, 1, 1], [0, 1, 1]),
        ([2, 128, 3, 7, 9], [200, 128, 1, 1, 1], [1, 1, 1], [0, 0, 0]),
    ];
    for &dt in conv_dtypes {
        for (xs, ws, st, pd) in &conv_cases {
            let (x, xr) = input(next(), xs, 1.0, dt, &dev)?;
            let (w, wr) = input(next(), ws, 0.2, dt, &dev)?;
            let (b, br) = input(next(), &[ws[0]], 1.0, dt, &dev)?;
            let out = conv3d::conv3d(&x, &w, Some(&b), *st, *pd)?;
            let want = conv3d::reference_tensor(&xr, &wr, Some(&br), *st, *pd)?;
            rows.push(Row {
                op: "conv3d".into(),
                dtype: dt,
                shape: fmt_shape(&[xs, ws]),
                err: err(&out, &want)?,
                bound: bound(dt),
            });
        }
        for ci in [8, 64] {
            let (x, xr) = input(next(), &[1, ci, 5, 12, 10], 1.0, dt, &dev)?;
            let (w, wr) = input(next(), &[16, ci, 3, 3, 3], 0.2, dt, &dev)?;
            let (c, cr) = input(next(), &[1, ci, 2, 12, 10], 1.0, dt, &dev)?;
            let out = conv3d::causal_conv3d(&x, &w, None, [1, 1, 1], [1, 1], Some(&c))?;
            let want = conv3d::reference_tensor(&Tensor::cat(&[&cr, &xr], 2)?, &wr, None, [1, 1, 1], [0, 1, 1])?;
            rows.push(Row {
                op: "causal_conv3d+cache".into(),
                dtype: dt,
                shape: fmt_shape(&[&[1, ci, 5, 12, 10]]),
                err: err(&out, &want)?,
                bound: bound(dt),
            });
        }
    }

    // Norm + modulation, gated residual, RoPE, FSQ: f32 and bf16.
    for dt in [DType::F32, DType::BF16] {
        for &(b, l, c, full) in
            &[(2usize, 100usize, 384usize, false), (1, 37, 1000, true), (3, 5, 2048, false), (2, 7, 1001, true)]
        {
            let (x, xr) = input(next(), &[b, l, c], 3.0, dt, &dev)?;
            let ms = if full { [b, l, c] } else { [b, 1, c] };
            let (sh, shr) = input(next(), &ms, 1.0, DType::F32, &dev)?;
            let (sc, scr) = input(next(), &ms, 1.0, DType::F32, &dev)?;
            for kind in [norm::NormKind::Layer, norm::NormKind::Rms] {
                let out = match kind {
                    norm::NormKind::Layer => norm::layer_norm_modulate(&x, &sh, &sc, 1e-6)?,
                    norm::NormKind::Rms => norm::rms_norm_modulate(&x, None, &sh, &sc, 1e-6)?,
                };
                let st = |t: &Tensor| norm::bcast_strides("check", "m", t, [b, l, c]);
                let want = norm::reference_norm(
                    &vw_tensor_kernels::host_f32(&xr)?,
                    [b, l, c],
                    (&vw_tensor_kernels::host_f32(&shr)?, st(&shr)?),
                    (&vw_tensor_kernels::host_f32(&scr)?, st(&scr)?),
                    1e-6,
                    kind,
                );
                let want = Tensor::from_vec(want, (b, l, c), &Device::Cpu)?;
                rows.push(Row {
                    op: format!("{kind:?}Norm+modulate"),
                    dtype: dt,
                    shape: fmt_shape(&[&[b, l, c], &ms]),
                    err: err(&out, &want)?,
                    bound: bound(dt),
                });
            }
            let (y, yr) = input(next(), &[b, l, c], 1.0, dt, &dev)?;
            let out = norm::gated_residual(&x, &sh, &y)?;
            let want = (xr.broadcast_add(&yr.broadcast_mul(&shr)?))?;
            rows.push(Row {
                op: "gated_residual".into(),
                dtype: dt,
                shape: fmt_shape(&[&[b, l, c], &ms]),
                err: err(&out, &want)?,
                bound: bound(dt),
            });
        }
        for layout in [rope::RopeLayout::Half, rope::RopeLayout::Interleaved] {
            for &(b, h, l, d) in &[(2usize, 3usize, 50usize, 128usize), (1, 2, 37, 72)] {
                let (x, xr) = input(next(), &[b, h, l, d], 1.0, dt, &dev)?;
                let ang = (vw_tensor_kernels::random_tensor(next(), &[l, d / 2], &Device::Cpu)? * 3.0)?;
                let (cos, sin) = (ang.cos()?, ang.sin()?);
                let out = rope::apply(&x, &cos.to_device(&dev)?, &sin.to_device(&dev)?, layout)?;
                let want = rope::reference(
                    &vw_tensor_kernels::host_f32(&xr)?,
                    [b, h, l, d],
                    &vw_tensor_kernels::host_f32(&cos)?,
                    &vw_tensor_kernels::host_f32(&sin)?,
                    layout,
                );
                let want = Tensor::from_vec(want, (b, h, l, d), &Device::Cpu)?;
                rows.push(Row {
                    op: format!("rope {layout:?}"),
                    dtype: dt,
                    shape: fmt_shape(&[&[b, h, l, d]]),
                    err: err(&out, &want)?,
                    bound: bound(dt),
                });
            }
        }
        // FSQ. Channels of <= 16 levels go through the threshold kernels, which must equal the
        // reference bit for bit (codes, including the sign of zero, and indices): bound 0. "steps"
        // inputs sit on and next to every step threshold (f32 and bf16 neighbours) plus signed
        // zeros, subnormals, huge values and infinities; "offset" starts z 4 bytes past an aligned
        // address (row-per-thread kernel); levels [12, 3, 16] take the row kernel's 16 thresholds,
        // [32, 5] the tanh kernel (its tanhf is not the CPU's: bounded by the dtype as before).
        let fsq_cases: [(&[usize], &str); 8] = [
            (&[8, 5, 5, 5], "random"),
            (&[8, 5, 5, 5], "steps"),
            (&[8, 5, 5, 5], "offset"),
            (&[7, 5, 5, 5, 5], "random"),
            (&[8, 8, 8, 6, 5], "steps"),
            (&[12, 3, 16], "steps"),
            (&[12, 3, 16], "random"),
            (&[32, 5], "random"),
        ];
        for (levels, mode) in fsq_cases {
            // On the CPU the op is the composed candle path, whose round is half away from zero
            // (the reference rounds half to even) and whose straight-through sum gives +0 for -0:
            // it differs on exact ties and signed zeros, which the "steps" inputs hit on purpose.
            if !dev.is_cuda() && mode == "steps" {
                continue;
            }
            let (n, d) = (4097, levels.len());
            let (z, zr) = match mode {
                "steps" => {
                    let v = fsq_probe(levels, next(), n)?;
                    let t = Tensor::from_vec(v, (n, d), &Device::Cpu)?.to_dtype(dt)?;
                    (t.to_device(&dev)?, t.to_dtype(DType::F32)?)
                }
                "offset" => {
                    let (flat, flat_r) = input(next(), &[n * d + 1], 3.0, dt, &dev)?;
                    (flat.narrow(0, 1, n * d)?.reshape((n, d))?, flat_r.narrow(0, 1, n * d)?.reshape((n, d))?)
                }
                _ => input(next(), &[n, d], 3.0, dt, &dev)?,
            };
            let (codes, idx) = fsq::fsq_quantize(&z, levels)?;
            let (rc, ri) = fsq::reference(&vw_tensor_kernels::host_f32(&zr)?, levels)?;
            let rc32 = Tensor::from_vec(rc, (n, d), &Device::Cpu)?;
            let rc = rc32.to_dtype(dt)?;
            let got: Vec<u32> = idx.to_device(&Device::Cpu)?.to_vec1()?;
            let bits = |t: &Tensor| -> anyhow::Result<Vec<u32>> {
                Ok(t.to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            let exact = dev.is_cuda() && levels.iter().all(|&l| l <= 16);
            let mut mism = got.iter().zip(&ri).filter(|(a, b)| a != b).count();
            if exact {
                mism += bits(&codes)?.iter().zip(bits(&rc)?).filter(|(a, b)| **a != *b).count();
            }
            let dec = fsq::fsq_indices_to_codes(&idx, levels)?;
            let e = err(&codes, &rc)?.max(err(&dec, &rc32)?).max(mism as f32);
            rows.push(Row {
                op: format!("fsq {levels:?} {mode} (codes, idx, decode; mismatches)"),
                dtype: dt,
                shape: fmt_shape(&[&[n, d]]),
                err: e,
                bound: if exact { 0.0 } else { bound(dt) },
            });
        }
    }
    for &(n, k, d) in &[(1000usize, 300usize, 16usize), (77, 4096, 8), (513, 64, 130)] {
        let (z, zr) = input(next(), &[n, d], 1.0, DType::F32, &dev)?;
        let (c, cr) = input(next(), &[k, d], 1.0, DType::F32, &dev)?;
        let got: Vec<u32> = vq::nearest_code(&z, &c)?.to_device(&Device::Cpu)?.to_vec1()?;
        let want = vq::reference(&vw_tensor_kernels::host_f32(&zr)?, &vw_tensor_kernels::host_f32(&cr)?, d);
        let mism = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        rows.push(Row {
            op: "vq nearest_code (mismatches)".into(),
            dtype: DType::F32,
            shape: fmt_shape(&[&[n, d], &[k, d]]),
            err: mism as f32,
            bound: 0.0,
        });
    }
    vw_tensor_kernels::set_poison_outputs(false);

    println!("| op | dtype | shape | max rel err | bound | ok |");
    println!("|---|---|---|---|---|---|");
    let mut failed = 0;
    for r in &rows {
        let ok = r.err <= r.bound;
        failed += usize::from(!ok);
        println!(
            "| {} | {:?} | {} | {:.2e} | {:.0e} | {} |",
            r.op,
            r.dtype,
            r.shape,
            r.err,
            r.bound,
            if ok { "yes" } else { "NO" }
        );
    }
    if failed > 0 {
        bail!("{failed} of {} kernel checks exceeded their bound", rows.len());
    }
    println!("all {} checks within bounds", rows.len());
    Ok(())
}

/// n rows of FSQ latents for `levels` that probe the step thresholds of the rounding: each value is,
/// at random, a threshold or one of its neighbours (up to 3 f32 or bf16 units in the last place
/// away), a uniform value in [-3, 3], or an edge value (signed zeros, subnormals, huge, infinite).
fn fsq_probe(levels: &[usize], seed: u64, n: usize) -> anyhow::Result<Vec<f32>> {
    let steps = fsq::level_steps(levels)?;
    let mut s = seed | 1;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let edge = [0f32, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY];
    let mut out = Vec::with_capacity(n * levels.len());
    for _ in 0..n {
        for st in &steps {
            let r = rnd();
            let v = match r % 8 {
                0 => edge[(r >> 8) as usize % edge.len()],
                1 | 2 => (((r >> 8) % 60001) as f32 / 10000.0) - 3.0,
                k => {
                    let t = st.thresholds[(r >> 8) as usize % st.thresholds.len()];
                    let ulp: i64 = if k < 6 { 1 } else { 1 << 16 };
                    let delta = ((r >> 32) % 7) as i64 - 3;
                    let b = (t.to_bits() as i64 + delta * ulp).clamp(0, u32::MAX as i64) as u32;
                    let v = f32::from_bits(b);
                    if v.is_nan() || v.is_sign_negative() != t.is_sign_negative() {
                        t
                    } else {
                        v
                    }
                }
            };
            out.push(v);
        }
    }
    Ok(out)
}

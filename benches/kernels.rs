//! Criterion benches of the vw-tensor-kernels ops against the composed candle ops they replace.
//! CPU always (small shapes, so CI-class machines finish quickly); with `--features cuda` and a
//! visible GPU, the same ops at model shapes on cuda:0.
//!
//! `cargo bench --bench kernels` (add `--features cuda` on a GPU machine).

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use vw_tensor_kernels::{attention, conv3d, fsq, norm, rope, vq};

fn rand(seed: u64, shape: &[usize], dt: DType, dev: &Device) -> Tensor {
    vw_tensor_kernels::random_tensor(seed, shape, &Device::Cpu)
        .and_then(|t| Ok(t.to_dtype(dt)?.to_device(dev)?))
        .expect("random input")
}

fn sync(dev: &Device) {
    dev.synchronize().expect("synchronize");
}

fn bench_device(c: &mut Criterion, dev: &Device, tag: &str, big: bool) {
    let dt = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let mut g = c.benchmark_group(format!("kernels/{tag}"));
    g.sample_size(10);

    let (h, l, d) = if big { (16, 4096, 128) } else { (4, 256, 64) };
    let (q, k, v) = (rand(1, &[1, h, l, d], dt, dev), rand(2, &[1, h, l, d], dt, dev), rand(3, &[1, h, l, d], dt, dev));
    let s = 1.0 / (d as f32).sqrt();
    g.bench_function(format!("flash_attn causal 1x{h}x{l}x{d}"), |b| {
        b.iter(|| {
            attention::flash_attn(&q, &k, &v, s, true, None).expect("attn");
            sync(dev)
        })
    });
    if !dev.is_cuda() {
        // On the CPU the public path is the composed one; time the plain-Rust reference too.
        g.bench_function(format!("reference attn causal 1x{h}x{l}x{d}"), |b| {
            b.iter(|| {
                let op = attention::FlashAttnOp::new(&q, &k, &v, s, true, None).expect("op");
                q.apply_op3(&k, &v, op).expect("attn")
            })
        });
    }
    g.bench_function(format!("composed attn causal 1x{h}x{l}x{d}"), |b| {
        b.iter(|| {
            attention::composed(&q, &k, &v, s, true, None).expect("attn");
            sync(dev)
        })
    });

    let (c_, hw) = if big { (192, (120, 208)) } else { (16, (24, 32)) };
    let x = rand(4, &[1, c_, 4, hw.0, hw.1], dt, dev);
    let w = rand(5, &[c_, c_, 3, 3, 3], dt, dev);
    g.bench_function(format!("conv3d 1x{c_}x4x{}x{} k3", hw.0, hw.1), |b| {
        b.iter(|| {
            conv3d::conv3d(&x, &w, None, [1, 1, 1], [1, 1, 1]).expect("conv");
            sync(dev)
        })
    });
    g.bench_function(format!("composed conv3d 1x{c_}x4x{}x{} k3", hw.0, hw.1), |b| {
        b.iter(|| {
            conv3d::composed(&x, &w, None, [1, 1, 1], [1, 1, 1]).expect("conv");
            sync(dev)
        })
    });

    let (rows, ch) = if big { (37440, 2048) } else { (1024, 512) };
    let x = rand(6, &[1, rows, ch], dt, dev);
    let (sh, sc) = (rand(7, &[1, 1, ch], DType::F32, dev), rand(8, &[1, 1, ch], DType::F32, dev));
    g.bench_function(format!("layer_norm_modulate 1x{rows}x{ch}"), |b| {
        b.iter(|| {
            norm::layer_norm_modulate(&x, &sh, &sc, 1e-6).expect("norm");
            sync(dev)
        })
    });
    g.bench_function(format!("composed layer_norm_modulate 1x{rows}x{ch}"), |b| {
        b.iter(|| {
            norm::composed(&x, None, &sh, &sc, 1e-6, norm::NormKind::Layer).expect("norm");
            sync(dev)
        })
    });

    let xr = rand(9, &[1, h, l, d], dt, dev);
    let ang = rand(10, &[l, d / 2], DType::F32, dev);
    let (cos, sin) = (ang.cos().expect("cos"), ang.sin().expect("sin"));
    g.bench_function(format!("rope half 1x{h}x{l}x{d}"), |b| {
        b.iter(|| {
            rope::apply_rope_half(&xr, &cos, &sin).expect("rope");
            sync(dev)
        })
    });
    g.bench_function(format!("composed rope half 1x{h}x{l}x{d}"), |b| {
        b.iter(|| {
            rope::composed(&xr, &cos, &sin, rope::RopeLayout::Half).expect("rope");
            sync(dev)
        })
    });

    let n = if big { 1 << 22 } else { 1 << 14 };
    let z = rand(11, &[n, 4], DType::F32, dev);
    g.bench_function(format!("fsq_quantize {n}x4"), |b| {
        b.iter(|| {
            fsq::fsq_quantize(&z, &[8, 5, 5, 5]).expect("fsq");
            sync(dev)
        })
    });
    g.bench_function(format!("composed fsq {n}x4"), |b| {
        b.iter(|| {
            fsq::composed(&z, &[8, 5, 5, 5]).expect("fsq");
            sync(dev)
        })
    });
    let zq = rand(12, &[4096, 16], DType::F32, dev);
    let cb = rand(13, &[1024, 16], DType::F32, dev);
    g.bench_function("vq nearest_code 4096x16 vs 1024", |b| {
        b.iter(|| {
            vq::nearest_code(&zq, &cb).expect("vq");
            sync(dev)
        })
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    bench_device(c, &Device::Cpu, "cpu", false);
    if vw_tensor_kernels::CUDA_ENABLED {
        if let Ok(dev) = Device::new_cuda(0) {
            bench_device(c, &dev, "cuda", true);
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);

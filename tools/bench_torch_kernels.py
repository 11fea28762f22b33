#!/usr/bin/env python3
"""PyTorch baselines for `vw kernel-bench`, run on the same GPU in the same device call.

SDPA (bf16, B=1, H=16, D=128, seq 4k/16k/37k, causal and not), conv3d (cuDNN) at Wan-VAE decoder
shapes, eager LayerNorm/RMSNorm + AdaLN modulation, RoPE and the gated residual, plus the copy and
matmul ceilings. Timing: CUDA events, median of N runs after a warm-up. Prints a markdown table.

The copy ceiling and the memory-bound ops are also timed with --reps calls back to back between two
events ("x20 back to back" rows), as `vw kernel-bench` does for ours.

Usage: python3 tools/bench_torch_kernels.py [--iters 5] [--quick] [--memory-only] [--reps 20]
"""
import argparse

import torch
import torch.nn.functional as F


def timed_b2b(fn, iters, reps):
    """Per-call seconds of `reps` calls issued back to back between two CUDA events (median)."""
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / reps)
    ts.sort()
    return ts[len(ts) // 2]


def timed(fn, iters):
    """Seconds of one call between two CUDA events (median)."""
    return timed_b2b(fn, iters, 1)


def row(name, shape, t, work, unit):
    rate = work / t / (1e9 if unit == "GB/s" else 1e12)
    print(f"| torch {name} | {shape} | {t * 1e3:.3f} ms | {rate:.1f} {unit} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the copy ceiling and the memory-bound ops")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    b2b = f"x{a.reps} back to back"
    it = a.iters
    dev = "cuda"
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}")
    print("| op | shape | time | rate |\n|---|---|---|---|")

    big = torch.empty(256 << 20, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(big)
    row("copy ceiling", "512 MiB bf16", timed(lambda: dst.copy_(big), it), 2 * 512 * 2**20, "GB/s")
    row(f"copy ceiling, {b2b}", "512 MiB bf16", timed_b2b(lambda: dst.copy_(big), it, a.reps), 2 * 512 * 2**20, "GB/s")
    del big, dst
    if a.memory_only:
        memory_bound(a, it, dev, b2b)
        return
    n = 2048 if a.quick else 8192
    x, y = (torch.randn(n, n, dtype=torch.bfloat16, device=dev) for _ in range(2))
    row("matmul ceiling", f"{n}^3 bf16", timed(lambda: x @ y, it), 2 * n**3, "TFLOP/s")
    del x, y

    for l in ([1024] if a.quick else [4096, 16384, 37440]):
        q, k, v = (torch.randn(1, 16, l, 128, dtype=torch.bfloat16, device=dev) for _ in range(3))
        for causal in (False, True):
            t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), it)
            flops = 4 * 16 * l * l * 128 * (0.5 if causal else 1.0)
            row("sdpa" + (" causal" if causal else ""), f"1x16x{l}x128", t, flops, "TFLOP/s")
        del q, k, v

    for c, h, w in ([(96, 60, 104)] if a.quick else [(384, 60, 104), (192, 240, 416), (96, 480, 832)]):
        x = torch.randn(1, c, 4, h, w, dtype=torch.bfloat16, device=dev)
        wt = torch.randn(c, c, 3, 3, 3, dtype=torch.bfloat16, device=dev) * 0.05
        b = torch.randn(c, dtype=torch.bfloat16, device=dev)
        t = timed(lambda: F.conv3d(x, wt, b, padding=1), it)
        row("conv3d (cuDNN)", f"1x{c}x4x{h}x{w} k3", t, 2 * c * c * 27 * 4 * h * w, "TFLOP/s")
        del x, wt, b

    memory_bound(a, it, dev, b2b)


def memory_bound(a, it, dev, b2b):
    l = 4096 if a.quick else 37440
    x = torch.randn(1, l, 2048, dtype=torch.bfloat16, device=dev)
    y = torch.randn_like(x)
    sh = torch.randn(1, 1, 2048, device=dev)
    sc = torch.randn(1, 1, 2048, device=dev)
    by = l * 2048 * 2

    def ln_mod():
        return (F.layer_norm(x.float(), (2048,), eps=1e-6) * (1 + sc) + sh).to(x.dtype)

    def rms_mod():
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + sc) + sh).to(x.dtype)

    def gated():
        return x + sh.to(x.dtype) * y

    for name, fn, work in [
        ("layer_norm+modulate eager", ln_mod, 2 * by),
        ("rms_norm+modulate eager", rms_mod, 2 * by),
        ("gated_residual eager", gated, 3 * by),
    ]:
        row(name, f"1x{l}x2048", timed(fn, it), work, "GB/s")
        row(f"{name}, {b2b}", f"1x{l}x2048", timed_b2b(fn, it, a.reps), work, "GB/s")
    del x, y

    xr = torch.randn(1, 16, l, 128, dtype=torch.bfloat16, device=dev)
    ang = torch.randn(l, 64, device=dev)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope_half():
        x1, x2 = xr.unflatten(-1, (2, -1)).unbind(-2)
        rot = torch.cat([-x2, x1], -1)
        return (xr.float() * cos + rot.float() * sin).to(xr.dtype)

    name, work = "rope half eager (diffusers apply_rotary_emb)", 2 * 16 * l * 128 * 2
    row(name, f"1x16x{l}x128", timed(rope_half, it), work, "GB/s")
    row(f"{name}, {b2b}", f"1x16x{l}x128", timed_b2b(rope_half, it, a.reps), work, "GB/s")


if __name__ == "__main__":
    main()

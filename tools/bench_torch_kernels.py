#!/usr/bin/env python3
"""PyTorch baselines for `vw kernel-bench`, run on the same GPU in the same device call.

SDPA (bf16, B=1, H=16, D=128, seq 4k/16k/37k, causal and not), conv3d (cuDNN) at Wan-VAE decoder
shapes, eager LayerNorm/RMSNorm + AdaLN modulation, RoPE and the gated residual, plus the copy and
matmul ceilings. Timing: CUDA events, median of N runs after a warm-up. Prints a markdown table.

Usage: python3 tools/bench_torch_kernels.py [--iters 5] [--quick]
"""
import argparse

import torch
import torch.nn.functional as F


def timed(fn, iters):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def row(name, shape, t, work, unit):
    rate = work / t / (1e9 if unit == "GB/s" else 1e12)
    print(f"| torch {name} | {shape} | {t * 1e3:.3f} ms | {rate:.1f} {unit} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    it = a.iters
    dev = "cuda"
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}")
    print("| op | shape | time | rate |\n|---|---|---|---|")

    big = torch.empty(256 << 20, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(big)
    row("copy ceiling", "512 MiB bf16", timed(lambda: dst.copy_(big), it), 2 * 512 * 2**20, "GB/s")
    del big, dst
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

    row("layer_norm+modulate eager", f"1x{l}x2048", timed(ln_mod, it), 2 * by, "GB/s")
    row("rms_norm+modulate eager", f"1x{l}x2048", timed(rms_mod, it), 2 * by, "GB/s")
    row("gated_residual eager", f"1x{l}x2048", timed(lambda: x + sh.to(x.dtype) * y, it), 3 * by, "GB/s")
    del x, y

    xr = torch.randn(1, 16, l, 128, dtype=torch.bfloat16, device=dev)
    ang = torch.randn(l, 64, device=dev)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope_half():
        x1, x2 = xr.unflatten(-1, (2, -1)).unbind(-2)
        rot = torch.cat([-x2, x1], -1)
        return (xr.float() * cos + rot.float() * sin).to(xr.dtype)

    row("rope half eager (diffusers apply_rotary_emb)", f"1x16x{l}x128", timed(rope_half, it), 2 * 16 * l * 128 * 2, "GB/s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Quick device-side check of kernels/*.cu without the Rust build: compiles the .cu files with nvcc,
launches them through CuPy on torch tensors, and compares with torch (SDPA, conv3d).
Usage (on the GPU machine): python3 tools/check_kernels_cupy.py
"""
import math
import subprocess
import sys
import tempfile

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

K = "crates/vw-tensor-kernels/kernels"
tmp = tempfile.mkdtemp()


def module(name):
    out = f"{tmp}/{name}.cubin"
    subprocess.check_call(["nvcc", "-cubin", "-O3", "-std=c++17", "-arch=sm_90", f"-I{K}", "-o", out, f"{K}/{name}.cu"])
    return cp.RawModule(path=out)


def p(t):
    return np.uint64(t.data_ptr())


def flash(mod, q, k, v, scale, causal, mask=None):
    b, h, lq, d = q.shape
    lk = k.shape[2]
    o = torch.full_like(q, float("nan"))
    f = mod.get_function(f"flash_fwd_{'bf16' if q.dtype == torch.bfloat16 else 'f16'}_d{d}")
    smem = 4 * 64 * (d + 8) * 2
    f.max_dynamic_shared_size_bytes = smem
    if mask is not None:
        m4 = mask.float().reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).contiguous()
        full = [b, h, lq, lk]
        st, acc = [0] * 4, 1
        for i in reversed(range(4)):
            st[i] = 0 if (m4.shape[i] == 1 and full[i] != 1) else acc
            acc *= m4.shape[i]
        mp = p(m4)
    else:
        st, mp, m4 = [0] * 4, np.uint64(0), None
    f(((lq + 63) // 64, b * h, 1), (128, 1, 1),
      (p(q), p(k), p(v), p(o), mp, np.int32(h), np.int32(lq), np.int32(lk), np.float32(scale * math.log2(math.e)),
       np.int32(causal), *[np.int64(s) for s in st]), shared_mem=smem)
    torch.cuda.synchronize()
    return o


def ref_attn(q, k, v, scale, causal, mask):
    qf, kf, vf = q.float(), k.float(), v.float()
    s = qf @ kf.transpose(-1, -2) * scale
    lq, lk = q.shape[2], k.shape[2]
    if causal:
        i = torch.arange(lq, device=q.device)[:, None]
        j = torch.arange(lk, device=q.device)[None, :]
        s = s.masked_fill(j > i + (lk - lq), float("-inf"))
    if mask is not None:
        s = s + mask.float()
    m = s.amax(-1, keepdim=True).clamp_min(-1e30)
    e = (s - m).exp()
    return e @ vf / e.sum(-1, keepdim=True).clamp_min(1e-30)


def main():
    torch.manual_seed(0)
    fm = module("flash_attn")
    worst = 0.0
    for dt in (torch.bfloat16, torch.float16):
        for d in (64, 128):
            for (b, h, lq, lk, causal, mk) in [(2, 3, 200, 333, 0, 0), (1, 2, 257, 257, 1, 0), (1, 2, 77, 300, 1, 1),
                                               (1, 2, 300, 77, 1, 0), (2, 2, 130, 190, 0, 2), (1, 1, 1, 129, 0, 0)]:
                q, k, v = (torch.randn(b, h, n, d, device="cuda").to(dt) for n in (lq, lk, lk))
                mask = None
                if mk == 1:
                    mask = torch.randn(b, 1, 1, lk, device="cuda") * 2
                if mk == 2:
                    mask = torch.randn(lq, lk, device="cuda") * 2
                sc = 1 / math.sqrt(d)
                o = flash(fm, q, k, v, sc, causal, mask).float()
                r = ref_attn(q, k, v, sc, causal, mask)
                err = ((o - r).abs() / r.abs().clamp_min(1)).max().item()
                worst = max(worst, err if not math.isnan(err) else 1e9)
                print(f"flash {dt} d={d} {b}x{h}x{lq}x{lk} causal={causal} mask={mk}: max rel err {err:.2e}", flush=True)
    # Timing at the target shape against SDPA.
    for l in (4096, 16384):
        q, k, v = (torch.randn(1, 16, l, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (0, 1):
            flash(fm, q, k, v, 1 / math.sqrt(128), causal)
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(5):
                flash(fm, q, k, v, 1 / math.sqrt(128), causal)
            e1.record()
            torch.cuda.synchronize()
            ours = e0.elapsed_time(e1) / 5
            F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
            e0.record()
            for _ in range(5):
                F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
            e1.record()
            torch.cuda.synchronize()
            sdpa = e0.elapsed_time(e1) / 5
            fl = 4 * 16 * l * l * 128 * (0.5 if causal else 1)
            print(f"time l={l} causal={causal}: ours {ours:.3f} ms ({fl / ours / 1e9:.0f} TFLOP/s), sdpa {sdpa:.3f} ms ({fl / sdpa / 1e9:.0f} TFLOP/s), ratio {sdpa / ours:.2f}", flush=True)
    print("WORST", worst)
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())

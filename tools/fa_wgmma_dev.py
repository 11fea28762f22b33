#!/usr/bin/env python3
"""Device-side dev loop for the Hopper flash-attention kernel (kernels/flash_attn_sm90.cu), no Rust
build needed: compiles it with nvcc for sm_90a, builds the TMA tensor maps through the driver API
(ctypes), launches through cuLaunchKernel, checks against a float32 reference at awkward sizes
(outputs poisoned with NaN first) and times it against the mma.sync kernel (flash_attn.cu) and
torch SDPA with CUDA events (median).
Usage (on the GPU machine): python3 tools/fa_wgmma_dev.py [--variants] [--quick]
"""
import ctypes as C
import math
import os
import subprocess
import sys
import tempfile

import cupy as cp
import torch
import torch.nn.functional as F

K = os.environ.get("FA_KERNELS", "crates/vw-tensor-kernels/kernels")
tmp = tempfile.mkdtemp()
cuda = C.CDLL("libcuda.so.1")
cuda.cuTensorMapEncodeTiled.argtypes = [C.c_void_p, C.c_int, C.c_uint32, C.c_void_p, C.POINTER(C.c_uint64),
                                        C.POINTER(C.c_uint64), C.POINTER(C.c_uint32), C.POINTER(C.c_uint32),
                                        C.c_int, C.c_int, C.c_int, C.c_int]
cuda.cuLaunchKernel.argtypes = [C.c_void_p] + [C.c_uint] * 7 + [C.c_void_p, C.POINTER(C.c_void_p), C.c_void_p]
cuda.cuFuncSetAttribute.argtypes = [C.c_void_p, C.c_int, C.c_int]


def build(name, defines=(), gencode="-gencode=arch=compute_90a,code=sm_90a"):
    out = f"{tmp}/{name}_{len(os.listdir(tmp))}.cubin"
    cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", gencode, f"-I{K}", *[f"-D{d}" for d in defines], "-o", out,
           f"{K}/{name}.cu"]
    subprocess.check_call(cmd)
    return cp.RawModule(path=out)


def tmap(t):
    """3D tensor map over a (B*H, L, 128) 16-bit tensor, box {64, 128, 1}, 128-byte swizzle."""
    bh, l, d = t.shape[0] * t.shape[1], t.shape[2], t.shape[3]
    buf = (C.c_ubyte * 256)()
    addr = (C.addressof(buf) + 63) & ~63
    dims = (C.c_uint64 * 3)(d, l, bh)
    strides = (C.c_uint64 * 2)(d * 2, l * d * 2)
    box = (C.c_uint32 * 3)(64, 128, 1)
    es = (C.c_uint32 * 3)(1, 1, 1)
    dt = 9 if t.dtype == torch.bfloat16 else 6
    r = cuda.cuTensorMapEncodeTiled(addr, dt, 3, C.c_void_p(t.data_ptr()), dims, strides, box, es, 0, 3, 2, 0)
    assert r == 0, f"cuTensorMapEncodeTiled failed: {r}"
    return buf, addr


class Fa90:
    def __init__(self, mod, name, stages):
        self.f = mod.get_function(name).kernel  # cupy.cuda.function.Function (.ptr = CUfunction)
        self.smem = 1024 + 32768 * (1 + 2 * stages) + 8 * (3 * stages + 1)
        assert cuda.cuFuncSetAttribute(C.c_void_p(self.f.ptr), 8, self.smem) == 0

    def prepare(self, q, k, v, o, scale, causal):
        b, h, lq, d = q.shape
        lk = k.shape[2]
        keep = [tmap(q), tmap(k), tmap(v), C.c_uint64(o.data_ptr()), C.c_int(lq), C.c_int(lk),
                C.c_float(scale * math.log2(math.e)), C.c_int(int(causal))]
        ptrs = [keep[0][1], keep[1][1], keep[2][1]] + [C.addressof(x) for x in keep[3:]]
        params = (C.c_void_p * len(ptrs))(*ptrs)
        grid = ((lq + 127) // 128, b * h)
        stream = torch.cuda.current_stream().cuda_stream

        def launch():
            r = cuda.cuLaunchKernel(C.c_void_p(self.f.ptr), grid[0], grid[1], 1, 384, 1, 1, self.smem,
                                    C.c_void_p(stream), params, None)
            assert r == 0, f"cuLaunchKernel failed: {r}"
        launch.keep = (keep, params)
        return launch


def old_prepare(mod, q, k, v, o, scale, causal):
    import numpy as np
    b, h, lq, d = q.shape
    lk = k.shape[2]
    f = mod.get_function(f"flash_fwd_{'bf16' if q.dtype == torch.bfloat16 else 'f16'}_d{d}")
    smem = 4 * 64 * (d + 8) * 2
    f.max_dynamic_shared_size_bytes = smem
    P = lambda t: np.uint64(t.data_ptr())
    args = (P(q), P(k), P(v), P(o), np.uint64(0), np.int32(h), np.int32(lq), np.int32(lk),
            np.float32(scale * math.log2(math.e)), np.int32(causal), *[np.int64(0)] * 4)
    return lambda: f(((lq + 63) // 64, b * h, 1), (128, 1, 1), args, shared_mem=smem)


def ref_attn(q, k, v, scale, causal):
    s = q.float() @ k.float().transpose(-1, -2) * scale
    lq, lk = q.shape[2], k.shape[2]
    if causal:
        i = torch.arange(lq, device=q.device)[:, None]
        j = torch.arange(lk, device=q.device)[None, :]
        s = s.masked_fill(j > i + (lk - lq), float("-inf"))
    m = s.amax(-1, keepdim=True).clamp_min(-1e30)
    e = (s - m).exp()
    return e @ v.float() / e.sum(-1, keepdim=True).clamp_min(1e-30)


def check(fa, dt=torch.bfloat16, quick=False):
    cases = [(1, 2, 200, 333, 0), (2, 3, 257, 257, 1), (1, 2, 77, 300, 1), (1, 2, 300, 77, 1), (1, 1, 1, 129, 0),
             (1, 2, 1000, 1000, 1), (1, 1, 128, 128, 0), (1, 2, 129, 1, 0), (1, 3, 640, 1153, 1), (2, 2, 2048, 2048, 0)]
    if quick:
        cases = cases[:3]
    worst = 0.0
    for (b, h, lq, lk, causal) in cases:
        q, k, v = (torch.randn(b, h, n, 128, device="cuda").to(dt) for n in (lq, lk, lk))
        o = torch.full_like(q, float("nan"))
        sc = 1 / math.sqrt(128)
        fa.prepare(q, k, v, o, sc, causal)()
        torch.cuda.synchronize()
        r = ref_attn(q, k, v, sc, causal)
        of = o.float()
        err = ((of - r).abs() / r.abs().clamp_min(1)).max().item()
        nrm = ((of - r).norm() / r.norm().clamp_min(1e-30)).item()
        if math.isnan(err) or math.isnan(nrm):
            err = 1e9
        worst = max(worst, err)
        print(f"  {b}x{h}x{lq}x{lk} causal={causal}: max rel err {err:.2e}, norm err {nrm:.2e}", flush=True)
    return worst


def median_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    torch.manual_seed(0)
    variants = "--variants" in sys.argv
    quick = "--quick" in sys.argv
    defs = ["VW_FA90_VARIANTS"] if variants else []
    # Checks run a build whose mbarrier waits trap after ~2^26 spins (a lost arrival fails fast
    # instead of hanging the call); timings use the plain build.
    wmod = build("flash_attn_sm90", defs + ["VW_FA90_WATCHDOG"])
    mod = build("flash_attn_sm90", defs)
    names = [("flash_fwd_sm90_bf16_d128", 2)]
    if variants:
        names += [(f"fa90_bf16_s{s}_m{m}", s) for s, m in ((2, 0), (3, 0), (3, 1))]
    kernels = {n: Fa90(mod, n, s) for n, s in names}
    worst = 0.0
    for n, s in names:
        print(f"check {n}", flush=True)
        worst = max(worst, check(Fa90(wmod, n, s), quick=quick))
    print("check flash_fwd_sm90_f16_d128", flush=True)
    worst = max(worst, check(Fa90(mod, "flash_fwd_sm90_f16_d128", 2), torch.float16, quick=True))
    if worst > 1e-2 and "--no-swap" not in sys.argv:
        print("retrying with VW_FA90_SWAP_V", flush=True)
        m2 = build("flash_attn_sm90", ["VW_FA90_SWAP_V"])
        check(Fa90(m2, "flash_fwd_sm90_bf16_d128", 2), quick=True)
    old = build("flash_attn", gencode="-arch=sm_90")
    rows = []
    for l in (4096, 16384, 37440):
        q, k, v = (torch.randn(1, 16, l, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        o = torch.empty_like(q)
        sc = 1 / math.sqrt(128)
        reps = 10 if l < 30000 else 5
        for causal in (0, 1):
            fl = 4 * 16 * l * l * 128 * (0.5 if causal else 1)
            sd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)), reps)
            res = [("sdpa", sd)]
            res.append(("mma.sync", median_ms(old_prepare(old, q, k, v, o, sc, causal), reps)))
            for n, fa in kernels.items():
                res.append((n, median_ms(fa.prepare(q, k, v, o, sc, causal), reps)))
            for n, ms in res:
                rows.append(f"L={l:5d} causal={causal} {n:28s} {ms:8.3f} ms {fl / ms / 1e9:6.0f} TFLOP/s  x{sd / ms:.2f} SDPA")
            print(rows[-len(res)], flush=True)
    print("\n".join(rows))
    print("WORST", worst)
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Device-side dev loop for the channels-last conv3d kernel of kernels/conv3d.cu, no Rust build.

Compiles conv3d.cu with nvcc (-DVW_CONV_DEV adds extra tile configs), launches through the CUDA
driver (ctypes; the kernels take the ConvGeom struct by value) on torch tensors, checks every
config against a float64 torch reference on awkward shapes (output poisoned with NaN first), then
times each config, the NCDHW->NDHWC transposes, the old kernel and torch conv3d (cuDNN) at the
Wan-VAE decoder shapes with CUDA events (median). Usage (on the GPU machine):
    python3 tools/conv3d_dev.py [--iters 10] [--kdir crates/vw-tensor-kernels/kernels] [--json out.json]
"""
import argparse
import ctypes
import json
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

# name suffix -> (BM, BN, BK, threads, stages)
CFGS = {
    "128x96x32": (128, 96, 32, 256, 4),
    "128x128x32": (128, 128, 32, 256, 4),
    "128x96x64": (128, 96, 64, 256, 3),
    "128x64x64": (128, 64, 64, 256, 3),
    "128x96x32w4": (128, 96, 32, 128, 4),
    "128x96x64w4": (128, 96, 64, 128, 3),
    "256x96x32": (256, 96, 32, 256, 3),
    "128x192x32": (128, 192, 32, 256, 4),
    "128x96x32s3": (128, 96, 32, 256, 3),
    "128x96x32s5": (128, 96, 32, 256, 5),
    "128x96x64m1": (128, 96, 64, 256, 3),
    "128x96x64nf": (128, 96, 64, 256, 3),
    "128x96x32nf": (128, 96, 32, 256, 4),
}
BASE = ("128x96x32", "128x96x64")  # built without VW_CONV_DEV, f16 too

cuda = ctypes.CDLL("libcuda.so.1")


def smem_bytes(bm, bn, bk, st):
    return max(st * (bm + bn) * (bk + 8) * 2, bn * (bm + 8) * 2)


def ck(r, what):
    if r != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(r, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {r} {name.value}")


def launch(f, grid, block, smem, args):
    ptrs = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    ck(cuda.cuLaunchKernel(f, *[ctypes.c_uint(v) for v in grid], *[ctypes.c_uint(v) for v in block],
                           ctypes.c_uint(smem), stream, ptrs, None), "cuLaunchKernel")


def vp(t):
    return ctypes.c_void_p(t.data_ptr())


class Conv:
    def __init__(self, kdir):
        tmp = tempfile.mkdtemp()
        out = f"{tmp}/conv3d.cubin"
        cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", "-arch=sm_90", "-DVW_CONV_DEV", f"-I{kdir}", "-Xptxas", "-v",
               "-o", out, f"{kdir}/conv3d.cu"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr)
            raise SystemExit("nvcc failed")
        regs = [l for l in r.stderr.splitlines() if "registers" in l or "spill" in l]
        self.ptxas = regs
        torch.zeros(1, device="cuda")  # the runtime makes the primary context current
        self.mod = ctypes.c_void_p()
        ck(cuda.cuModuleLoad(ctypes.byref(self.mod), out.encode()), "cuModuleLoad")
        self.funcs = {}

    def fn(self, name, smem=0):
        if name not in self.funcs:
            f = ctypes.c_void_p()
            ck(cuda.cuModuleGetFunction(ctypes.byref(f), self.mod, name.encode()), f"cuModuleGetFunction {name}")
            if smem > 48 * 1024:  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                ck(cuda.cuFuncSetAttribute(f, 8, ctypes.c_int(smem)), "cuFuncSetAttribute")
            self.funcs[name] = f
        return self.funcs[name]

    def transpose(self, src, dst, nb, r, l):
        launch(self.fn("transpose_b16"), ((l + 31) // 32, (r + 31) // 32, nb), (32, 8, 1), 0,
               [vp(src), vp(dst), ctypes.c_int(r), ctypes.c_longlong(l)])

    @staticmethod
    def geom(x, w, stride, pad):
        b, c, t, h, wd = x.shape
        o, _, kt, kh, kw = w.shape
        out = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip((t, h, wd), (kt, kh, kw), stride, pad)]
        g = [b, c, t, h, wd, o, kt, kh, kw, *stride, *pad, *out]
        return g, (ctypes.c_int * 18)(*g), out

    def prep(self, x, w):
        """Channels-last copies of x (B,T,H,W,C) and w (O,taps,C) through the transpose kernel."""
        b, c = x.shape[:2]
        o = w.shape[0]
        l = x[0, 0].numel()
        taps = w[0, 0].numel()
        xc = torch.empty(b, *x.shape[2:], c, dtype=x.dtype, device=x.device)
        wc = torch.empty(o, *w.shape[2:], c, dtype=w.dtype, device=w.device)
        self.transpose(x, xc, b, c, l)
        self.transpose(w, wc, o, c, taps)
        return xc, wc

    def run_cl(self, cfg, xc, wc, bias, y, g, gs):
        bm, bn, bk, nt, st = CFGS[cfg]
        dt = "bf16" if xc.dtype == torch.bfloat16 else "f16"
        sm = smem_bytes(bm, bn, bk, st)
        m = g[0] * g[15] * g[16] * g[17]
        grid = ((m + bm - 1) // bm, (g[5] + bn - 1) // bn, 1)
        if cfg.endswith("nf"):
            grid = (grid[0] * grid[1], 1, 1)
        launch(self.fn(f"conv3d_cl_{dt}_{cfg}", sm), grid, (nt, 1, 1), sm,
               [vp(xc), vp(wc), vp(bias), vp(y), gs])

    def run_old(self, x, w, bias, y, g, gs):
        dt = "bf16" if x.dtype == torch.bfloat16 else "f16"
        m = g[0] * g[15] * g[16] * g[17]
        launch(self.fn(f"conv3d_{dt}"), ((m + 63) // 64, (g[5] + 63) // 64, 1), (128, 1, 1), 0,
               [vp(x), vp(w), vp(bias), vp(y), gs])

    def conv(self, cfg, x, w, bias, stride, pad):
        g, gs, out = self.geom(x, w, stride, pad)
        xc, wc = self.prep(x, w)
        y = torch.full((x.shape[0], w.shape[0], *out), float("nan"), dtype=x.dtype, device=x.device)
        self.run_cl(cfg, xc, wc, bias, y, g, gs)
        torch.cuda.synchronize()
        return y


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
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


CASES = [  # (B, C, T, H, W, O, (kt,kh,kw), stride, pad)
    (2, 32, 5, 9, 13, 40, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    (1, 64, 6, 11, 14, 72, (3, 3, 3), (1, 2, 2), (0, 1, 1)),
    (1, 64, 7, 8, 10, 64, (3, 3, 3), (2, 1, 1), (0, 1, 1)),
    (2, 64, 3, 10, 9, 130, (1, 1, 1), (1, 1, 1), (0, 0, 0)),
    (1, 96, 4, 17, 23, 96, (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    (1, 64, 5, 6, 7, 48, (3, 1, 1), (1, 1, 1), (0, 0, 0)),
    (1, 128, 3, 12, 16, 256, (3, 3, 3), (1, 1, 1), (0, 1, 1)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--kdir", default="crates/vw-tensor-kernels/kernels")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cfgs", default=",".join(CFGS))
    a = ap.parse_args()
    cfgs = a.cfgs.split(",")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(1234)
    cv = Conv(a.kdir)
    for l in cv.ptxas:
        if "spill" in l and " 0 bytes spill stores" not in l:
            print("ptxas:", l.strip())
    print("device:", torch.cuda.get_device_name(), "SMs", torch.cuda.get_device_properties(0).multi_processor_count)
    worst, fails, res = 0.0, 0, {"checks": [], "times": []}
    for (b, c, t, h, wd, o, k, s, p) in CASES:
        for dt in (torch.bfloat16, torch.float16):
            x = torch.randn(b, c, t, h, wd, device="cuda").to(dt)
            w = (torch.randn(o, c, *k, device="cuda") / (c * k[0] * k[1] * k[2]) ** 0.5).to(dt)
            bias = torch.randn(o, device="cuda").to(dt)
            ref = F.conv3d(x.double(), w.double(), bias.double(), stride=s, padding=p)
            for cfg in cfgs:
                bk = CFGS[cfg][2]
                if c % bk or (dt == torch.float16 and cfg not in BASE):
                    continue
                y = cv.conv(cfg, x, w, bias, s, p).double()
                nan = int(torch.isnan(y).sum())
                rel = ((y - ref).norm() / ref.norm()).item() if not nan else float("inf")
                ok = rel < 1e-2
                worst = max(worst, rel)
                fails += not ok
                res["checks"].append(dict(case=[b, c, t, h, wd, o, k, s, p], dtype=str(dt), cfg=cfg, rel=rel, nan=nan))
                if not ok:
                    print(f"FAIL {cfg} {dt} {b}x{c}x{t}x{h}x{wd} O={o} k={k} s={s} p={p}: rel {rel:.2e} nan {nan}", flush=True)
    print(f"checks: {len(res['checks'])} runs, {fails} failed, worst rel err {worst:.2e}", flush=True)

    rows = []
    for (c, h, wd) in [(384, 60, 104), (192, 240, 416), (96, 480, 832)]:
        x = torch.randn(1, c, 4, h, wd, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(c, c, 3, 3, 3, device="cuda") * 0.05).to(torch.bfloat16)
        bias = torch.randn(c, device="cuda", dtype=torch.bfloat16)
        fl = 2 * c * c * 27 * 4 * h * wd
        tag = f"1x{c}x4x{h}x{wd}"
        t_cudnn = timed(lambda: F.conv3d(x, w, bias, padding=1), a.iters)
        t_cudnn2 = timed(lambda: F.conv3d(x, w, bias, padding=1), a.iters)
        ref = F.conv3d(x, w, bias, padding=1).float()
        g, gs, out = Conv.geom(x, w, (1, 1, 1), (1, 1, 1))
        y = torch.empty(1, c, *out, dtype=x.dtype, device="cuda")
        t_old = timed(lambda: cv.run_old(x, w, bias, y, g, gs), 3)
        xc, wc = cv.prep(x, w)
        t_tx = timed(lambda: cv.transpose(x, xc, 1, c, 4 * h * wd), a.iters)
        t_tw = timed(lambda: cv.transpose(w, wc, c, c, 27), a.iters)

        rows.append((tag, "cuDNN", t_cudnn, fl / t_cudnn / 1e9, 1.0, f"(again {t_cudnn2:.3f})"))
        rows.append((tag, "old kernel", t_old, fl / t_old / 1e9, t_cudnn / t_old, ""))
        rows.append((tag, "transpose x", t_tx, 2 * x.numel() * 2 / t_tx / 1e6, 0, "GB/s"))
        rows.append((tag, "transpose w", t_tw, 0, 0, ""))

        for cfg in cfgs:
            if c % CFGS[cfg][2]:
                continue
            y.fill_(float("nan"))
            cv.run_cl(cfg, xc, wc, bias, y, g, gs)
            torch.cuda.synchronize()
            err = ((y.float() - ref).norm() / ref.norm()).item()
            tk = timed(lambda: cv.run_cl(cfg, xc, wc, bias, y, g, gs), a.iters)
            tot = tk + t_tx + t_tw
            rows.append((tag, cfg, tk, fl / tk / 1e9, t_cudnn / tk,
                         f"+transposes {tot:.3f} ms = {t_cudnn / tot:.2f}x cuDNN; vs cuDNN out rel {err:.1e}"))
    print(f"{'shape':<18} {'impl':<14} {'ms':>8} {'TFLOP/s':>8} {'x cuDNN':>8}  note")
    for r in rows:
        print(f"{r[0]:<18} {r[1]:<14} {r[2]:8.3f} {r[3]:8.1f} {r[4]:8.2f}  {r[5]}")
    res["times"] = rows
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print("WORST", worst, "FAILS", fails)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Times one decode of diffusers' AutoencoderKLWan (Wan2.1 VAE, default config = the Cosmos-Predict2
VAE) with random weights: the baseline of `vw bench-vae-decode` (same latent shape, same timing rule:
one untimed decode, then ITERS timed ones between device synchronisations).

    python tools/bench_torch_vae.py --frames 93 --height 480 --width 832 --dtype bf16 --iters 2

Prints one JSON line: median / min milliseconds per decode and peak memory.
"""

import argparse
import json
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=93)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args()

    from diffusers import AutoencoderKLWan

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    vae = AutoencoderKLWan().to(dev, dtype).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0, 0.02)
    t = (args.frames - 1) // 4 + 1
    z = torch.randn(1, vae.config.z_dim, t, args.height // 8, args.width // 8, device=dev, dtype=dtype)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(1 + args.iters):
            sync()
            t0 = time.perf_counter()
            out = vae.decode(z).sample
            sync()
            if i >= 1:
                times.append((time.perf_counter() - t0) * 1e3)
            del out
    print(json.dumps({
        "impl": "diffusers-wan-vae-decode", "latent": [t, args.height // 8, args.width // 8], "dtype": args.dtype,
        "median_ms": statistics.median(times), "min_ms": min(times),
        "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

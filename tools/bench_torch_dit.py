#!/usr/bin/env python3
"""Times one forward of diffusers' CosmosTransformer3DModel (SDPA attention) at the Cosmos-Predict2 2B
Video2World config with random weights: the baseline of `vw bench-dit` (same shapes, same timing rule).

    python tools/bench_torch_dit.py --frames 93 --height 480 --width 832 --dtype bf16 --warmup 2 --iters 5

Prints one JSON line: median / min milliseconds per forward and peak memory.
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
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args()

    from diffusers import CosmosTransformer3DModel

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = CosmosTransformer3DModel(
            in_channels=17, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
            mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
            rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None,
        )
    model = model.to_empty(device=dev).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)

    t = (args.frames - 1) // 4 + 1
    h, w = args.height // 8, args.width // 8
    x = torch.randn(1, 16, t, h, w, device=dev, dtype=dtype)
    cond = torch.zeros(1, 1, t, h, w, device=dev, dtype=dtype)
    cond[:, :, :1] = 1
    ts = torch.full((1, 1, t, 1, 1), 0.5, device=dev, dtype=dtype)
    text = torch.randn(1, args.text_len, 1024, device=dev, dtype=dtype)
    pad = torch.zeros(1, 1, args.height, args.width, device=dev, dtype=dtype)

    def fwd():
        return model(x, ts, text, fps=16, condition_mask=cond, padding_mask=pad, return_dict=False)[0]

    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fwd()
            torch.cuda.synchronize(dev)
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "impl": "diffusers-sdpa", "latent": [t, h, w], "tokens": t * (h // 2) * (w // 2), "dtype": args.dtype,
        "median_ms": statistics.median(times), "min_ms": min(times),
        "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

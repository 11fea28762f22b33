"""PyTorch's NCCL all-reduce on the same machine, the reference for `vw dist-check`.

    torchrun --nproc_per_node=N tools/bench_torch_allreduce.py [--mib 256] [--iters 20] [--json OUT]

Same measurement as `vw dist-check`: f32 tensor of MIB MiB, 3 warm-ups, mean of ITERS all-reduces
between two device synchronisations; algbw = bytes / time, busbw = algbw * 2 (N - 1) / N.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    w = dist.get_world_size()
    x = torch.ones(a.mib * (1 << 20) // 4, dtype=torch.float32, device="cuda")
    for _ in range(3):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / a.iters
    algbw = x.numel() * 4 / secs / 1e9
    busbw = algbw * 2 * (w - 1) / w
    if dist.get_rank() == 0:
        print(f"torch {torch.__version__} nccl {torch.cuda.nccl.version()} world {w}: all-reduce {a.mib} MiB "
              f"{secs * 1e3:.3f} ms, algbw {algbw:.1f} GB/s, busbw {busbw:.1f} GB/s")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"world_size": w, "mib": a.mib, "ms": secs * 1e3, "algbw_gbs": algbw, "busbw_gbs": busbw,
                           "torch": torch.__version__, "nccl": list(torch.cuda.nccl.version())}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

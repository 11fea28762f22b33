"""Summarises data-parallel training runs of `vw train-dldm --nproc N` into the scaling table.

    python3 tools/ddp_scaling.py --skip 10 RUN_DIR[=LABEL] ...

For each run folder (metrics.jsonl written by rank 0, every step logged): steps/s over the steps
after --skip (warm-up, first-step allocations), samples/s from the run's global batch, and the
largest relative loss difference against the first run listed (same global batch => same curve).
"""
import argparse
import json
import os


def load(run):
    recs = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
    cfg = json.load(open(os.path.join(run, "checkpoint.json")))["config"]
    return recs, cfg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--skip", type=int, default=10)
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    base = None
    rows = []
    for spec in a.runs:
        run, _, label = spec.partition("=")
        recs, cfg = load(run)
        bs = cfg["train"]["batch_size"]
        timed = [r for r in recs if r["step"] > a.skip]
        steps = timed[-1]["step"] - timed[0]["step"]
        secs = timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]
        sps = steps / secs
        losses = {r["step"]: r["loss"] for r in recs}
        if base is None:
            base = (losses, bs)
        diff = max(abs(losses[s] - base[0][s]) / abs(base[0][s]) for s in losses if s in base[0]) if bs == base[1] else None
        rows.append((label or run, bs, sps, sps * bs, diff))
    print("| run | global batch | steps/s | samples/s | max rel. loss diff vs first |")
    print("|---|---|---|---|---|")
    for label, bs, sps, xs, diff in rows:
        d = "—" if diff is None else f"{diff:.1e}"
        print(f"| {label} | {bs} | {sps:.2f} | {xs:.0f} | {d} |")


if __name__ == "__main__":
    main()

"""Do the dLDM's codes keep what its encoder sees of a step's long moves? (numpy only)

    DUMP_REACH=/tmp/seen.csv cargo run --release --example clip_renderer -- eval --motions-only on \
        --ldm RUN/dldm --out RENDERER_DIR --split train --episodes 96
    DUMP_REACH=/tmp/new.csv cargo run --release --example clip_renderer -- eval --motions-only on \
        --ldm RUN/dldm --out RENDERER_DIR --split train --unseen on --episodes 96
    python3 tools/reach_latents.py /tmp/seen.csv /tmp/new.csv

Each CSV row is one recipe step: seed, the true reach and carry (x, px, summed over the two
transitions of each), then the pre-quantisation latents of the reach's and the carry's transitions,
then their FSQ code vectors. Fits each move from the first file's rows (least squares, and the
median of the 5 nearest rows) and scores the second file's: what a reader of the latents and what a
reader of the codes can tell, independent of any renderer.
"""
import sys

import numpy as np


def main():
    seen, new = (np.loadtxt(p, delimiter=",", ndmin=2) for p in sys.argv[1:3])
    dim = (seen.shape[1] - 3) // 8  # Q * code_dim per transition
    for move, col, trans in [("reach", 1, [0, 1]), ("carry", 2, [2, 3])]:
        for kind, base in [("latents", 3), ("codes", 3 + 4 * dim)]:
            x_fit, x_test = (np.concatenate([a[:, base + t * dim : base + (t + 1) * dim] for t in trans], 1)
                             for a in (seen, new))
            y_fit, y_test = seen[:, col], new[:, col]
            ones = lambda x: np.concatenate([x, np.ones((len(x), 1))], 1)
            a = ones(x_fit)
            w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ y_fit)
            lin = np.abs(ones(x_test) @ w - y_test)
            d = ((x_test[:, None, :] - x_fit[None, :, :]) ** 2).sum(-1)
            knn = np.abs(np.median(y_fit[np.argsort(d, 1)[:, :5]], 1) - y_test)
            print(f"{move} from the {kind:7}: least squares {lin.mean():.2f} px off ({100 * (lin > 4).mean():.0f}% "
                  f"more than 4 px), 5 nearest {knn.mean():.2f} px ({100 * (knn > 4).mean():.0f}%)")


if __name__ == "__main__":
    main()

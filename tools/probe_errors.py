"""Where does a dldm_probe run's linear probe go wrong? (docs/results.md, eighth pass)

    pip install safetensors numpy scikit-learn
    python3 tools/probe_errors.py RUN_DIR [LEVELS=8,5,5,5] [--train]

RUN_DIR is a `dldm_probe --out` folder (it holds `dldm_codes_train.safetensors` and
`dldm_codes_test_appearance.safetensors`). Fits a multinomial logistic regression on the one-hot
FSQ digits of the training-look codes (the probe of `vw_eval::probe`, fitted by scikit-learn) and
prints, for the held-out look (or with --train the training codes themselves):
accuracy, direction and gripper accuracy, the best accuracy any function of the code tuple could
reach on the training codes (the information the codes carry), and accuracy by position of the
transition in its recipe step (expert episodes: 8 frames per step) with the top confusions.
"""
import collections
import json
import sys

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression

args = [a for a in sys.argv[1:] if not a.startswith("--")]
run = args[0]
levels = [int(x) for x in (args[1] if len(args) > 1 else "8,5,5,5").split(",")]
tr = load_file(f"{run}/dldm_codes_train.safetensors")
te = tr if "--train" in sys.argv else load_file(f"{run}/dldm_codes_test_appearance.safetensors")


def digits(codes):
    n, q = codes.shape
    per = sum(levels)
    x = np.zeros((n, q * per), np.float32)
    for j in range(q):
        rest = codes[:, j].astype(np.int64).copy()
        base = j * per
        for lv in levels:
            x[np.arange(n), base + rest % lv] = 1
            rest //= lv
            base += lv
    return x


ytr, yte = tr["action_label"].astype(int), te["action_label"].astype(int)
clf = LogisticRegression(C=1, max_iter=5000).fit(digits(tr["codes"]), ytr)
p = clf.predict(digits(te["codes"]))
names = ["stay", "R", "UR", "U", "UL", "L", "DL", "D", "DR"]


def lab(label):
    return f"{names[label // 2]}{'+g' if label % 2 else ''}"


by_code = collections.defaultdict(collections.Counter)
for c, y in zip(map(tuple, tr["codes"]), ytr):
    by_code[c][y] += 1
print(json.dumps({
    "run": run,
    "examples": int(len(yte)),
    "accuracy": round(float((p == yte).mean()), 4),
    "direction_accuracy": round(float((p // 2 == yte // 2).mean()), 4),
    "gripper_accuracy": round(float((p % 2 == yte % 2).mean()), 4),
    "best_any_function_of_train_codes": round(sum(max(v.values()) for v in by_code.values()) / len(ytr), 4),
}))
pos = te["index_in_episode"] % 8
for k in range(8):
    m = pos == k
    if not m.any():
        continue
    errs = collections.Counter((lab(a), lab(b)) for a, b in zip(yte[m], p[m]) if a != b)
    labels = collections.Counter(lab(a) for a in yte[m])
    print(f"position {k}: accuracy {np.mean(p[m] == yte[m]):.2f}  labels {dict(labels.most_common(3))}  "
          f"top confusions (true, predicted) {errs.most_common(3)}")

"""Writes crates/vw-eval/tests/fixtures/quality.json: small random image pairs with scikit-image's
PSNR and SSIM, the reference values vw-eval's quality metrics are tested against.

Run: /work/.venv-torch/bin/python tools/eval_quality_fixture.py
"""
import json
import pathlib

import numpy as np
import skimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

rng = np.random.default_rng(7)
cases = []
for h, w, c, noise in [(12, 13, 3, 0.1), (10, 9, 1, 0.3), (16, 16, 3, 0.02), (7, 7, 1, 0.5)]:
    a = rng.random((h, w, c), dtype=np.float32)
    b = np.clip(a + noise * rng.standard_normal((h, w, c)).astype(np.float32), 0.0, 1.0).astype(np.float32)
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0)
    ssim = structural_similarity(a, b, data_range=1.0, channel_axis=-1)
    cases.append(
        dict(h=h, w=w, c=c, a=a.ravel().tolist(), b=b.ravel().tolist(), psnr=float(psnr), ssim=float(ssim))
    )
out = pathlib.Path(__file__).resolve().parent.parent / "crates/vw-eval/tests/fixtures/quality.json"
out.write_text(json.dumps(dict(skimage=skimage.__version__, cases=cases)))
print(out, [(x["psnr"], x["ssim"]) for x in cases])

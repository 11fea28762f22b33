#!/usr/bin/env python3
"""Parity fixtures for crates/vw-dldm, produced by the official VideoWorld 2 dLDM code.

Usage:
    git clone https://github.com/ByteDance-Seed/VideoWorld /tmp/VideoWorld
    /work/.venv-torch/bin/python tools/gen_dldm_fixtures.py --ref /tmp/VideoWorld/VideoWorld2

Writes into crates/vw-dldm/tests/fixtures/:
  dldm_small.safetensors   official tokenizer at a small width: every weight under its official key,
                           the input clip and the outputs of encode (features, pre-quant query, indices,
                           quantized vectors), decode, and the DiT connector (`quant_to_dit_dim`).
  dldm_small.json          the kwargs the tokenizer was built with (our Config reads them).
  dldm_small_ckpt.pt       the same weights as a torch checkpoint in the training layout
                           ({"model": {"network.<key>": tensor}}), for the `.pt` loader test.
  dldm_width512.safetensors the unmodified official code at the official Q-Former width (512) with
                           weights filled by `formula_weight` (reproduced in Rust, since the weights
                           at width 512 would be tens of MB): input, outputs and no weights.
  dldm_width512.json       kwargs + every parameter key with its shape, in state-dict order.
  fsq.safetensors          the official FSQuantizer on random inputs: indices, codes, and
                           indices_to_codes of every index.

Two constants of the official code are hard-wired and too large for a small fixture: the Q-Former
width (`encoder_out_dim = 512` in LDMEncoderFactorized) and the DiT connector width (1024 in the
tokenizer). For the small fixture the first is replaced by `channels * channels_mult[-1]` (the only
edit, made by rewriting that one line of the class source at import time), and the connector is built
with the official class at a smaller output width. `dldm_width512` checks the unmodified code.
"""
import argparse
import inspect
import json
import math
import os
import sys

import torch

# spreads the small model's pre-quantization values over all FSQ levels
QUANT_CONV_SCALE = 4.0
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "vw-dldm", "tests", "fixtures")


def small_kwargs():
    """The official kwargs (openx.py / config_ldm.py) shrunk in channels and res blocks only."""
    return dict(
        attn_resolutions=[128],  # one encoder level (curr_res 128) gets attention, as the layout allows
        channels=4,
        channels_mult=[2, 4, 4],
        dropout=0.0,
        in_channels=3,
        num_res_blocks=1,
        out_channels=3,
        resolution=1024,  # puts the LDM_V2 decoder's hard-wired attention (curr_res 64) on its first level
        patch_size=4,
        patch_method="haar",
        z_channels=16,
        z_factor=1,
        num_groups=1,
        legacy_mode=False,
        spatial_compression=16,
        temporal_compression=4,
        quantizer="FSQ",
        embedding_dim=4,
        levels=[8, 5, 5, 5],
        persistent_quantizer=False,
        encoder="LDM",
        decoder="LDM_V2",
        name="CausalDiscreteFactorizedVideoLatentDynamicTokenizer",
        connector_type="conv",
        act_embedding_num=4,
        qformer_type="QFormerAdjacentFSingleQ",
    )


def width512_kwargs():
    """Official widths at the Q-Former (channels * mult[-1] = 512); one res block, small clip."""
    kw = small_kwargs()
    kw.update(channels=32, channels_mult=[1, 1, 16], z_channels=32)
    return kw


def clip(b, t, h, w):
    """A structured clip in [-1, 1] that differs per batch item and frame (reproducible in Rust)."""
    bb = torch.arange(b).view(b, 1, 1, 1, 1).float()
    tt = torch.arange(t).view(1, 1, t, 1, 1).float()
    cc = torch.arange(3).view(1, 3, 1, 1, 1).float()
    yy = torch.arange(h).view(1, 1, 1, h, 1).float()
    xx = torch.arange(w).view(1, 1, 1, 1, w).float()
    phase = 0.3 * xx * (1 + bb) + 0.2 * yy * (1 + cc) + 0.9 * tt * (bb + 1)
    return torch.tanh(2 * torch.sin(phase) + 0.5 * torch.cos(tt * 1.3 + bb + cc))


def import_official(ref):
    sys.path.insert(0, ref)
    from videoworld2.latent_dynamics import discrete_video_latent_dynamic as dvl
    from videoworld2.latent_dynamics.modules import layers3d, quantizers

    return dvl, layers3d, quantizers


def patch_qformer_width(layers3d):
    """A copy of LDMEncoderFactorized whose Q-Former width is channels * channels_mult[-1]."""
    src = inspect.getsource(layers3d.LDMEncoderFactorized)
    line = "encoder_out_dim = 512"
    assert src.count(line) == 1, "the official source changed; update this patch"
    src = src.replace(line, "encoder_out_dim = channels * channels_mult[-1]")
    src = src.replace("class LDMEncoderFactorized(", "class LDMEncoderFactorizedSmall(")
    ns = dict(layers3d.__dict__)
    exec(compile(src, "<LDMEncoderFactorizedSmall>", "exec"), ns)
    return ns["LDMEncoderFactorizedSmall"]


def without_connector(sd):
    return {k: v for k, v in sd.items() if not k.startswith("quant_to_dit_dim.")}


def formula_weight(index, shape):
    """Deterministic weights, reproduced by the Rust test: a scaled sine of the flat position."""
    n = math.prod(shape)
    fan_in = max(1, n // shape[0]) if len(shape) > 1 else 1
    scale = 1.0 / math.sqrt(fan_in) if len(shape) > 1 else 0.1
    i = torch.arange(n, dtype=torch.float64)
    w = scale * torch.sin(i * 0.7071 + index * 1.618)
    return w.reshape(shape).to(torch.float32)


def fill_formula(model):
    """Parameters get formula weights (1 + ... for norm scales); buffers keep their values."""
    keys = []
    with torch.no_grad():
        for idx, (name, p) in enumerate(model.named_parameters()):
            w = formula_weight(idx, tuple(p.shape))
            if p.ndim == 1 and name.endswith(".weight"):  # norm scales
                w = 1.0 + w
            p.copy_(w)
            keys.append([name, list(p.shape)])
    return keys


def rounding_margin(quantizer, query):
    """Distance of the pre-rounding FSQ values to the nearest rounding boundary (x.5)."""
    z = query.permute(0, 2, 3, 4, 1).reshape(-1, query.shape[1])
    b = quantizer.bound(z)
    return float((b - b.floor() - 0.5).abs().min())


def run_tokenizer(tok, x):
    with torch.no_grad():
        h, indices, (quant, _loss), query = tok.encode(x)
        recon = tok.decode(h, quant.float())
    return h, indices, quant.float(), query, recon


def gen_small(dvl, layers3d, out):
    kw = small_kwargs()
    small_cls = patch_qformer_width(layers3d)
    from videoworld2.latent_dynamics.modules import Encoder3DType

    original = Encoder3DType.LDM._value_
    Encoder3DType.LDM._value_ = small_cls
    try:
        for seed in range(100):
            torch.manual_seed(seed)
            tok = dvl.CausalDiscreteVideoLatentDynamicTokenizer(**kw, dtype=torch.float32).eval()
            # a wider quant_conv spreads the pre-quantization values over all FSQ levels
            with torch.no_grad():
                tok.quant_conv.conv3d.weight.mul_(QUANT_CONV_SCALE)
            connector = layers3d.CausalResnetBlockFactorized3d(
                in_channels=kw["z_channels"], out_channels=24, dropout=0.0, num_groups=1
            ).eval()
            x = clip(2, 9, 32, 32)
            h, indices, quant, query, recon = run_tokenizer(tok, x)
            margin = rounding_margin(tok.quantizer, query)
            print(f"seed {seed}: margin {margin:.5f}, {len(torch.unique(indices))} codes", flush=True)
            if margin > 1e-3 and len(torch.unique(indices)) >= 4:
                break
        else:
            raise RuntimeError("no seed gave a safe FSQ rounding margin")
        with torch.no_grad():
            post = tok.post_quant_conv(quant)
            ctx = connector(post)
            # decode from indices alone (the policy's path) and render from a one-frame context
            from_codes = tok.decode_code(h, indices).float()
            h1, _ = tok.encoder(x[:, :, :1])
            rendered = tok.decode(h1, quant)
    finally:
        Encoder3DType.LDM._value_ = original

    sd = without_connector(tok.state_dict())
    for k, v in connector.state_dict().items():
        sd["quant_to_dit_dim." + k] = v
    tensors = {k: v.detach().float().clone().contiguous() for k, v in sd.items() if v.is_floating_point()}
    io = {
            "io.input": x,
            "io.encoded": h,
            "io.query": query,
            "io.indices": indices.to(torch.int64),
            "io.quant": quant,
            "io.recon": recon,
            "io.recon_from_codes": from_codes,
            "io.input_first_frame_encoded": h1,
            "io.render_one_frame": rendered,
            "io.connector_out": ctx,
    }
    tensors.update({k: v.contiguous() for k, v in io.items()})
    from safetensors.torch import save_file

    save_file(tensors, os.path.join(out, "dldm_small.safetensors"))
    meta = dict(kw)
    meta.update(seed=seed, rounding_margin=margin, connector_out_channels=24, quant_conv_scale=QUANT_CONV_SCALE)
    with open(os.path.join(out, "dldm_small.json"), "w") as f:
        json.dump(meta, f, indent=1)
    # the training checkpoint layout: TokenizerModel.network.* inside {"model": ...}
    ckpt = {"model": {"network." + k: v.detach().clone() for k, v in sd.items()}}
    torch.save(ckpt, os.path.join(out, "dldm_small_ckpt.pt"))
    print(f"small: seed {seed}, margin {margin:.4f}, {len(torch.unique(indices))} distinct codes, "
          f"{sum(v.numel() for k, v in sd.items() if v.is_floating_point())} weights")


def gen_width512(dvl, out):
    kw = width512_kwargs()
    torch.manual_seed(0)
    tok = dvl.CausalDiscreteVideoLatentDynamicTokenizer(**kw, dtype=torch.float32).eval()
    del tok.quant_to_dit_dim  # 1024-wide connector, covered by the small fixture
    keys = fill_formula(tok)
    x = clip(1, 5, 32, 32)
    h, indices, quant, query, recon = run_tokenizer(tok, x)
    margin = rounding_margin(tok.quantizer, query)
    from safetensors.torch import save_file

    save_file(
        {
            "io.input": x,
            "io.encoded": h.contiguous(),
            "io.query": query.contiguous(),
            "io.indices": indices.to(torch.int64).contiguous(),
            "io.quant": quant.contiguous(),
            "io.recon": recon.contiguous(),
            # the random-Fourier buffer is not a formula weight: ship it
            "encoder.pos_embedding.positional_encoding_gaussian_matrix":
                tok.encoder.pos_embedding.positional_encoding_gaussian_matrix.contiguous(),
        },
        os.path.join(out, "dldm_width512.safetensors"),
    )
    meta = dict(kw)
    meta.update(rounding_margin=margin, parameters=keys)
    with open(os.path.join(out, "dldm_width512.json"), "w") as f:
        json.dump(meta, f)
    print(f"width512: {sum(math.prod(s) for _, s in keys)} parameters, margin {margin:.4f}, "
          f"{len(torch.unique(indices))} distinct codes")


def gen_fsq(quantizers, out):
    torch.manual_seed(1)
    fsq = quantizers.FSQuantizer(levels=[8, 5, 5, 5], dtype=torch.float32)
    z = torch.randn(3, 4, 5, 2, 2) * 2.0  # (B, D, T, H, W), the layout the tokenizer feeds it
    indices, codes, _ = fsq(z)
    all_codes = fsq.indices_to_codes(torch.arange(1000).reshape(1, 1000, 1, 1)).float()
    from safetensors.torch import save_file

    save_file(
        {
            "z": z,
            "indices": indices.to(torch.int64).contiguous(),
            "codes": codes.float().contiguous(),
            "all_codes": all_codes.contiguous(),
        },
        os.path.join(out, "fsq.safetensors"),
    )
    print("fsq: margin", rounding_margin(fsq, z))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="path to the VideoWorld2 folder of ByteDance-Seed/VideoWorld")
    ap.add_argument("--out", default=FIXTURES)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    dvl, layers3d, quantizers = import_official(args.ref)
    gen_fsq(quantizers, args.out)
    gen_small(dvl, layers3d, args.out)
    gen_width512(dvl, args.out)


if __name__ == "__main__":
    main()

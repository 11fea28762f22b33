#!/usr/bin/env python3
"""Times full stage-2 training steps in PyTorch: the baseline of `vw bench-stage2` (same shapes, same
timing rule).

Main model: diffusers' CosmosTransformer3DModel at the Cosmos-Predict2 2B Video2World config, random
init, bf16, frozen (requires_grad False) with `enable_gradient_checkpointing()` (block-level
recomputation, like ours). Control branch (official `CtrlEncoder`, ctrl_video2world_dit.py): a
CosmosTransformer3DModel with the first `--control-blocks` blocks (a ControlNet copy of the main
model's weights), a hint patch embedding (hint_channels x patch 2x2 -> 2048, bias-free), the hint MLP
(2048 -> 16,16,32,32,96,96,256 -> 2048 with SiLU, last layer zero), added to the hidden states after
its first block, and one zero-initialised Linear(2048, 2048) per block whose output is the residual
added to the main model after that block (diffusers' `block_controlnet_hidden_states`). dLDM stand-in:
random code vectors (1, T-1, 16) through a trainable Linear(16, hint_channels), broadcast over each
latent frame (frame 0 gets zeros), as `codes_to_hint` in vw-dldm. Loss: flow matching on the latent
frames after the first (clean, flagged by the condition mask), in f32. Optimizer: torch AdamW over
the branch + projection (bf16 parameters, lr 1e-5), with global-norm clipping at 1.0.

    python tools/bench_torch_stage2.py --frames 93 --height 480 --width 832 --warmup 1 --iters 3

Prints one JSON line: median / min milliseconds per step and torch.cuda.max_memory_allocated.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


TINY = False  # --tiny: a small config for a CPU smoke test of this script


def cosmos_2b(num_layers):
    from diffusers import CosmosTransformer3DModel

    heads, head_dim, text = (2, 24, 1024) if TINY else (16, 128, 1024)
    return CosmosTransformer3DModel(
        in_channels=17, out_channels=16, num_attention_heads=heads, attention_head_dim=head_dim,
        num_layers=num_layers, mlp_ratio=4.0, text_embed_dim=text, adaln_lora_dim=256 if not TINY else 16,
        max_size=(128, 240, 240), patch_size=(1, 2, 2), rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True,
        extra_pos_embed_type=None, controlnet_block_every_n=1,
    )


class ControlBranch(nn.Module):
    """The trainable copy of the first blocks + hint path + zero linears; returns one residual per block."""

    def __init__(self, main, n_blocks, hint_channels, code_dim):
        super().__init__()
        self.ctrl = cosmos_2b(n_blocks)
        d = self.ctrl.config.num_attention_heads * self.ctrl.config.attention_head_dim
        missing, _ = self.ctrl.load_state_dict(main.state_dict(), strict=False)
        assert not missing, missing
        self.hint_embed = nn.Linear(hint_channels * 4, d, bias=False)
        widths = [d, 16, 16, 32, 32, 96, 96, 256]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(256, d)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.hint_mlp = nn.Sequential(*layers, last)
        self.zero_blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(n_blocks))
        for z in self.zero_blocks:
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)
        self.hint_proj = nn.Linear(code_dim, hint_channels)

    def hint(self, codes, h, w):
        b, s, _ = codes.shape
        e = self.hint_proj(codes).transpose(1, 2)[..., None, None].expand(-1, -1, -1, h, w)  # (B, Ch, S, H, W)
        return torch.cat([torch.zeros_like(e[:, :, :1]), e], dim=2)

    def forward(self, x, ts, text, cond, pad, codes, fps):
        m = self.ctrl
        b, _, t, h, w = x.shape
        # diffusers CosmosTransformer3DModel.forward steps 1-5, then our own block loop.
        hs = torch.cat([x, cond], dim=1)
        hs = torch.cat([hs, pad.unsqueeze(2).repeat(b, 1, t, 1, 1)], dim=1)
        rope = m.rope(hs, fps=fps)
        hs = m.patch_embed(hs).flatten(1, 3)
        temb, emb = m.time_embed(hs, ts.flatten())
        temb, emb = (z.view(b, t, 1, 1, -1).expand(-1, -1, h // 2, w // 2, -1).flatten(1, 3) for z in (temb, emb))
        hint = self.hint(codes, h, w)  # (B, Ch, T, H, W) -> patchify 2x2 like the DiT's patch embedding
        c = hint.shape[1]
        hint = hint.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, -1, c * 4)
        g = self.hint_mlp(self.hint_embed(hint))
        out = []
        for i, (block, zero) in enumerate(zip(m.transformer_blocks, self.zero_blocks)):
            hs = block(hs, text, emb, temb, rope, None, None)
            if i == 0:
                hs = hs + g
            out.append(zero(hs))
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=93)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--control-blocks", type=int, default=3)
    ap.add_argument("--hint-channels", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-checkpointing", action="store_true", help="plain autograd through the main model")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true", help="small model, f32, for a CPU smoke test of the script")
    args = ap.parse_args()

    global TINY
    TINY = args.tiny
    dtype = torch.float32 if args.tiny else torch.bfloat16
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    torch.manual_seed(0)
    with torch.device("meta"):
        main_model = cosmos_2b(28)
    main_model = main_model.to_empty(device=dev).to(dtype)
    with torch.no_grad():
        for p in main_model.parameters():
            p.normal_(0, 0.02)
    main_model.requires_grad_(False)
    main_model.train()
    if not args.no_checkpointing:
        main_model.enable_gradient_checkpointing()
    code_dim = 16
    with torch.device(dev):
        branch = ControlBranch(main_model, args.control_blocks, args.hint_channels, code_dim).to(dtype)
    branch.train()
    params = [p for p in branch.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)

    t = (args.frames - 1) // 4 + 1
    h, w = args.height // 8, args.width // 8
    x0 = torch.randn(1, 16, t, h, w, device=dev)
    eps = torch.randn(1, 16, t, h, w, device=dev)
    sigma = 0.5
    noisy = torch.cat([x0[:, :, :1], (1 - sigma) * x0[:, :, 1:] + sigma * eps[:, :, 1:]], dim=2).to(dtype)
    target = eps - x0
    cond = torch.zeros(1, 1, t, h, w, device=dev, dtype=dtype)
    cond[:, :, :1] = 1
    ts = torch.full((1, 1, t, 1, 1), sigma, device=dev, dtype=dtype)
    text = torch.randn(1, args.text_len, main_model.config.text_embed_dim, device=dev, dtype=dtype)
    pad = torch.zeros(1, 1, h, w, device=dev, dtype=dtype)
    codes = torch.randn(1, t - 1, code_dim, device=dev, dtype=dtype)
    n_blocks = len(main_model.transformer_blocks)

    def step():
        res = branch(noisy, ts, text, cond, pad, codes, fps=16)
        res = res + [None] * (n_blocks - len(res))
        v = main_model(noisy, ts, text, block_controlnet_hidden_states=res, fps=16, condition_mask=cond,
                       padding_mask=pad, return_dict=False)[0]
        loss = F.mse_loss(v[:, :, 1:].float(), target[:, :, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item(), gn.item()

    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        res = branch(noisy, ts, text, cond, pad, codes, fps=16)
        res = res + [None] * (n_blocks - len(res))
        main_model(noisy, ts, text, block_controlnet_hidden_states=res, fps=16, condition_mask=cond,
                   padding_mask=pad, return_dict=False)
        sync()
        fwd_ms = (time.perf_counter() - t0) * 1e3
        del res
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    times = []
    last = None
    for i in range(args.warmup + args.iters):
        sync()
        t0 = time.perf_counter()
        last = step()
        sync()
        ms = (time.perf_counter() - t0) * 1e3
        print(f"step {i + 1}: {ms:.1f} ms, loss {last[0]:.5f}, grad norm {last[1]:.4e}", flush=True)
        if i >= args.warmup:
            times.append(ms)
    print(json.dumps({
        "impl": "torch-diffusers-stage2", "latent": [t, h, w], "tokens": t * (h // 2) * (w // 2), "dtype": str(dtype).replace("torch.", ""),
        "control_blocks": args.control_blocks, "hint_channels": args.hint_channels,
        "trainable_params": sum(p.numel() for p in params), "checkpointing": not args.no_checkpointing,
        "step_median_ms": statistics.median(times), "step_min_ms": min(times), "step_times_ms": times,
        "forward_no_grad_ms": fwd_ms,
        "peak_mem_alloc_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
        "peak_mem_reserved_gib": torch.cuda.max_memory_reserved(dev) / 2**30 if cuda else None,
        "last_loss": last[0], "last_grad_norm": last[1], "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

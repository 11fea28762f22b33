#!/usr/bin/env python3
"""Decode tokens/s of Hugging Face `LlamaForCausalLM.generate` (KV cache, greedy) at the shape of the
policy's `300m` config: the PyTorch side of `vw bench-ar`. Same shape, same prompt length, same number
of new tokens, random weights, argmax decoding that never stops early.

    python tools/bench_torch_ar.py --config 300m --device cuda:0 --dtype bf16 \
        --batch 1 --prompt-len 64 --new-tokens 512 --repeats 3 [--json out.json]

`--config` also accepts a JSON file with the policy's field names (`vw` PolicyConfig: the Llama
names hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, rms_norm_eps,
rope_theta, max_position_embeddings, code_vocab_size).
"""

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Mirrors PolicyConfig::m300() in crates/vw-ar-policy/src/config.rs (vocab = 1000 codes + 4 specials).
M300 = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
            rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096, code_vocab_size=1000)
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
            rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512, code_vocab_size=1000)


def llama_config(name: str) -> LlamaConfig:
    if name in ("300m", "m300"):
        c = M300
    elif name == "tiny":
        c = TINY
    else:
        with open(name) as f:
            c = json.load(f)
    return LlamaConfig(
        vocab_size=c["code_vocab_size"] + 4,
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_attention_heads"],
        rms_norm_eps=c.get("rms_norm_eps", 1e-5),
        rope_theta=c.get("rope_theta", 10000.0),
        max_position_embeddings=c["max_position_embeddings"],
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="300m")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "f16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2)")
    ap.add_argument("--cache", default="dynamic", help="cache_implementation: dynamic (default) or static")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = llama_config(a.config)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt_len), generator=gen).to(device)
    attn_mask = torch.ones_like(prompt)
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, use_cache=True,
              eos_token_id=None, pad_token_id=0, attention_mask=attn_mask)
    if a.cache != "dynamic":
        kw["cache_implementation"] = a.cache
    model.config._attn_implementation = a.attn

    def prefill_ms():
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model(prompt, attention_mask=attn_mask, use_cache=True)
        sync(device)
        return (time.perf_counter() - t) * 1e3

    with torch.inference_mode():
        model.generate(prompt, **kw)  # warm-up
    tps, pre = [], []
    for r in range(max(1, a.repeats)):
        p = prefill_ms()
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(prompt, **kw)
        sync(device)
        total = time.perf_counter() - t
        assert out.shape[1] == a.prompt_len + a.new_tokens, out.shape
        # generate() includes its own prefill; subtract the separately timed one for decode-only tokens/s.
        decode_s = max(total - p / 1e3, 1e-9)
        tps.append(a.batch * a.new_tokens / decode_s)
        pre.append(p)
        print(f"run {r}: prefill {p:.2f} ms, generate {total:.3f} s, decode {tps[-1]:.1f} tokens/s")
    med = statistics.median(tps)
    print(f"torch LlamaForCausalLM.generate: config {a.config} ({n_params} params), {a.device} {a.dtype}, "
          f"attn {a.attn}, cache {a.cache}, batch {a.batch}, prompt {a.prompt_len}, new {a.new_tokens}: "
          f"median {med:.1f} decode tokens/s (torch {torch.__version__})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(impl="torch LlamaForCausalLM.generate", config=a.config, params=n_params,
                           device=a.device, dtype=a.dtype, attn=a.attn, cache=a.cache, batch=a.batch,
                           prompt_len=a.prompt_len, new_tokens=a.new_tokens, decode_tokens_per_s=tps,
                           median_decode_tokens_per_s=med, prefill_ms=pre), f, indent=2)


if __name__ == "__main__":
    main()

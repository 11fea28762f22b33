#!/usr/bin/env python3
"""The PyTorch side of `vw parity`: runs one diffusers / transformers component on the same named input
tensors and writes the reference outputs under the same names (docs/parity.md).

    python tools/parity_reference.py --component dit --model DIR --inputs IN.safetensors --out REF.safetensors
    vw parity --component dit --model DIR --inputs IN.safetensors --out OURS.safetensors --reference REF.safetensors
"""

import argparse
import os

import torch
from safetensors.torch import load_file, save_file


def sub(model, name):
    d = os.path.join(model, name)
    return d if os.path.isdir(d) else model


def scalar(inp, k, default):
    return inp[k].flatten()[0].item() if k in inp else default


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--component", required=True, choices=["vae-encode", "vae-decode", "dit", "t5", "pipeline"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    inp = load_file(args.inputs)
    out = {}
    c = args.component
    if c in ("vae-encode", "vae-decode"):
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(sub(args.model, "vae")).float().eval()
        if c == "vae-encode":
            post = vae.encode(inp["video"]).latent_dist
            out = {"mean": post.mean, "logvar": post.logvar}
        else:
            out = {"video": vae.decode(inp["z"]).sample}
    elif c == "dit":
        from diffusers import CosmosTransformer3DModel

        m = CosmosTransformer3DModel.from_pretrained(sub(args.model, "transformer")).float().eval()
        kw = {}
        if "fps" in inp:
            kw["fps"] = scalar(inp, "fps", None)
        mask = inp.get("text_mask")
        out = {"output": m(inp["latents"], inp["timestep"], inp["text"], attention_mask=mask.bool() if mask is not None else None,
                           condition_mask=inp.get("condition_mask"), padding_mask=inp.get("padding_mask"),
                           return_dict=False, **kw)[0]}
    elif c == "t5":
        from transformers import T5EncoderModel

        m = T5EncoderModel.from_pretrained(sub(args.model, "text_encoder")).float().eval()
        mask = inp["attention_mask"].bool()
        e = m(inp["input_ids"].long(), attention_mask=mask).last_hidden_state
        for i, n in enumerate(mask.sum(1)):
            e[i, n:] = 0
        out = {"embeds": e}
    else:
        from gen_diffusion_fixtures import _NoSafetyChecker, cosmos_scheduler
        from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, CosmosTransformer3DModel
        from diffusers.pipelines.cosmos import pipeline_cosmos2_video2world as pv

        pv.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()
        tr = CosmosTransformer3DModel.from_pretrained(sub(args.model, "transformer")).float().eval()
        vae = AutoencoderKLWan.from_pretrained(sub(args.model, "vae")).float().eval()
        pipe = Cosmos2VideoToWorldPipeline(text_encoder=None, tokenizer=None, transformer=tr, vae=vae,
                                           scheduler=cosmos_scheduler(), safety_checker=_NoSafetyChecker())
        image = inp["image"] if "image" in inp else None
        video = None
        if image is None:
            video = ((inp["cond_video"] + 1) / 2).permute(0, 2, 1, 3, 4)  # (B, T, C, H, W) in [0, 1]
        h, w = (image if image is not None else inp["cond_video"]).shape[-2:]
        lat = pipe(image=image, video=video, prompt_embeds=inp["prompt_embeds"],
                   negative_prompt_embeds=inp.get("negative_prompt_embeds"), height=h, width=w,
                   num_frames=int(scalar(inp, "num_frames", 93)),
                   num_inference_steps=int(scalar(inp, "num_inference_steps", 35)),
                   guidance_scale=scalar(inp, "guidance_scale", 7.0), fps=scalar(inp, "fps", 16),
                   latents=inp.get("noise"), output_type="latent", return_dict=False)[0]
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
        out = {"latents": lat, "video": vae.decode(lat * std + mean).sample}
    save_file({k: v.contiguous().float() for k, v in out.items()}, args.out)
    print(f"wrote {args.out}: {sorted(out)}")


if __name__ == "__main__":
    main()

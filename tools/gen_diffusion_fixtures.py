#!/usr/bin/env python3
"""Parity fixtures for crates/vw-diffusion: tiny random diffusers / transformers models + reference I/O.

Every component is built with a TINY config and seeded random weights, saved in the layout the Rust
loader reads (config.json + safetensors, exactly what `save_pretrained` writes), together with
`io.safetensors` holding fixed inputs and the reference outputs computed here in float32 on CPU.

    /work/.venv-torch/bin/python tools/gen_diffusion_fixtures.py [--only dit,scheduler,vae,t5,t5_spm,pipeline]

Needs torch, torchvision, diffusers and transformers (pip, CPU); `t5_spm` also sentencepiece and protobuf.

Outputs go to crates/vw-diffusion/tests/fixtures/<component>/ (each file well under 2 MB).
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "vw-diffusion", "tests", "fixtures")


def out_dir(name):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    return d


def save_io(d, tensors):
    tensors = {k: v.detach().contiguous().to(torch.float32) for k, v in tensors.items()}
    save_file(tensors, os.path.join(d, "io.safetensors"))


def randomize_(module, seed, scale=0.2):
    """Diffusers zero-initialises several layers; parity needs every weight to matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------------------------------------------------
# DiT


def tiny_dit_config(extra_pos_embed_type=None, num_layers=2):
    return dict(
        in_channels=4 + 1,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=24,
        num_layers=num_layers,
        mlp_ratio=2.0,
        text_embed_dim=32,
        adaln_lora_dim=16,
        max_size=(16, 32, 32),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=True,
        extra_pos_embed_type=extra_pos_embed_type,
    )


def gen_dit(name="dit", extra_pos_embed_type=None, num_layers=2, seed=0):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(**tiny_dit_config(extra_pos_embed_type, num_layers)).eval()
    randomize_(model, seed + 1)
    d = out_dir(name)
    model.save_pretrained(d, safe_serialization=True)

    g = torch.Generator().manual_seed(seed + 2)
    b, c, t, h, w = 1, 4, 3, 8, 12
    io = {}
    latents = torch.randn(b, c, t, h, w, generator=g)
    text = torch.randn(b, 7, 32, generator=g)
    # Pixel-space padding mask (as the pipeline passes it); the model resizes it with nearest.
    padding_mask = (torch.rand(1, 1, 16, 24, generator=g) > 0.7).float()
    cond_mask = torch.zeros(b, 1, t, h, w)
    cond_mask[:, :, :1] = 1.0
    io["latents"] = latents
    io["text"] = text
    io["padding_mask"] = padding_mask
    io["cond_mask"] = cond_mask
    t_cond = 1e-4 / (1 + 1e-4)
    with torch.no_grad():
        for i, tv in enumerate([0.3, 0.95]):
            # Without conditioning frames: a zero mask channel, one timestep per sample.
            ts = torch.full((b,), tv)
            out = model(latents, ts, text, fps=16, condition_mask=torch.zeros_like(cond_mask),
                        padding_mask=padding_mask, return_dict=False)[0]
            io[f"t{i}"] = ts
            io[f"out_uncond_t{i}"] = out
            # With the first latent frame as condition: the pipeline's per-frame (B, 1, T, 1, 1) timestep.
            ts5 = torch.full((b, 1, t, 1, 1), tv)
            ts5[:, :, :1] = t_cond
            out = model(latents, ts5, text, fps=16, condition_mask=cond_mask, padding_mask=padding_mask,
                        return_dict=False)[0]
            io[f"t5d{i}"] = ts5
            io[f"out_cond_t{i}"] = out
        # Batch of two, no fps (image-style RoPE), to cover batching and the fps=None branch.
        lat2 = torch.randn(2, c, t, h, w, generator=g)
        text2 = torch.randn(2, 5, 32, generator=g)
        ts2 = torch.tensor([0.2, 0.7])
        out = model(lat2, ts2, text2, fps=None, condition_mask=torch.zeros(2, 1, t, h, w),
                    padding_mask=torch.zeros(1, 1, h, w), return_dict=False)[0]
        io.update(latents_b2=lat2, text_b2=text2, t_b2=ts2, out_b2=out)
        # Control residuals injected after blocks (ControlNet-style), every block.
        if num_layers >= 2:
            model.register_to_config(controlnet_block_every_n=1)
            ntok = t * (h // 2) * (w // 2)
            res = [torch.randn(b, ntok, 48, generator=g) * 0.5 for _ in range(num_layers)]
            out = model(latents, io["t5d0"], text, block_controlnet_hidden_states=res, fps=16, condition_mask=cond_mask,
                        padding_mask=padding_mask, return_dict=False)[0]
            for k, r in enumerate(res):
                io[f"control_res{k}"] = r
            io["out_control"] = out
    save_io(d, io)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params -> {d}")


# ---------------------------------------------------------------------------------------------------------
# Scheduler (the sigma schedule and Euler step the Cosmos2 video2world pipeline uses)


def cosmos_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    s.register_to_config(sigma_max=80.0, sigma_min=0.002, sigma_data=1.0, final_sigmas_type="sigma_min")
    return s


def cosmos_set_timesteps(s, n):
    # As Cosmos2VideoToWorldPipeline does: linspace sigmas replaced by the Karras schedule, last sigma = sigma_min.
    s.set_timesteps(sigmas=torch.linspace(0, 1, n, dtype=torch.float64))
    s.sigmas[-1] = s.sigmas[-2]


def gen_scheduler():
    d = out_dir("scheduler")
    s = cosmos_scheduler()
    s.save_config(d)
    io = {}
    g = torch.Generator().manual_seed(5)
    for n in [4, 35]:
        cosmos_set_timesteps(s, n)
        io[f"sigmas_{n}"] = s.sigmas.clone()
        io[f"timesteps_{n}"] = s.timesteps.clone()
    cosmos_set_timesteps(s, 4)
    sample = torch.randn(1, 2, 3, 4, 4, generator=g)
    io["sample"] = sample.clone()
    for i, t in enumerate(s.timesteps):
        mo = torch.randn(sample.shape, generator=g)
        io[f"model_output_{i}"] = mo
        sample = s.step(mo, t, sample, return_dict=False)[0]
        io[f"prev_sample_{i}"] = sample.clone()
    save_io(d, io)
    print(f"scheduler -> {d}")


# ---------------------------------------------------------------------------------------------------------
# VAE


def tiny_vae_config():
    return dict(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, -0.4],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    )


def gen_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(20)
    vae = AutoencoderKLWan(**tiny_vae_config()).eval()
    randomize_(vae, 21, scale=0.15)
    with torch.no_grad():
        # RMS gains near 1 keep activations in a realistic range through the stack.
        for n, p in vae.named_parameters():
            if n.endswith("gamma"):
                p.copy_(1.0 + 0.1 * p)
    d = out_dir("vae")
    vae.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(22)
    video = torch.rand(1, 3, 9, 24, 16, generator=g) * 2 - 1
    post = vae.encode(video).latent_dist
    z = torch.randn(1, 4, 4, 3, 2, generator=g)
    dec = vae.decode(z).sample
    # A single latent frame (image) too.
    img = video[:, :, :1]
    io = dict(video=video, mean=post.mean, logvar=post.logvar, z=z, decoded=dec, image=img,
              image_mean=vae.encode(img).latent_dist.mean, z_image=z[:, :, :1], decoded_image=vae.decode(z[:, :, :1]).sample)
    save_io(d, io)
    print(f"vae: {sum(p.numel() for p in vae.parameters())} params -> {d}")


# ---------------------------------------------------------------------------------------------------------
# T5 encoder (+ a tiny word-level tokenizer standing in for T5's sentencepiece one)

WORDS = "a the fold paper boat plane red blue block stack on table hand picks up puts down".split()


def tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(path)


def gen_t5():
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.manual_seed(30)
    cfg = T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   feed_forward_proj="relu", dropout_rate=0.0)
    model = T5EncoderModel(cfg).eval()
    randomize_(model, 31, scale=0.3)
    d = out_dir("t5")
    te = os.path.join(d, "text_encoder")
    model.save_pretrained(te, safe_serialization=True)
    tk = os.path.join(d, "tokenizer")
    os.makedirs(tk, exist_ok=True)
    tiny_tokenizer(os.path.join(tk, "tokenizer.json"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tk, "tokenizer.json"), pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>")
    prompts = ["fold the red paper boat", "a hand picks up the blue block and puts it on the table"]
    max_len = 16
    enc = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    mask = enc.attention_mask.bool()
    out = model(enc.input_ids, attention_mask=mask).last_hidden_state
    for i, n in enumerate(mask.sum(1)):
        out[i, n:] = 0  # as Cosmos2VideoToWorldPipeline._get_t5_prompt_embeds
    io = dict(input_ids=enc.input_ids.float(), attention_mask=mask.float(), embeds=out)
    save_io(d, io)
    with open(os.path.join(d, "prompts.json"), "w") as f:
        json.dump({"prompts": prompts, "max_length": max_len}, f)
    print(f"t5: {sum(p.numel() for p in model.parameters())} params, keys {list(model.state_dict())[:2]} -> {d}")


# ---------------------------------------------------------------------------------------------------------
# The video2world pipeline: tiny DiT + tiny VAE + the Cosmos scheduler, precomputed text embeddings


class _NoSafetyChecker:
    """Stands in for cosmos_guardrail (not installable here); the outputs we compare are latents."""

    def to(self, *a, **k):
        return self

    def check_text_safety(self, _):
        return True

    def check_video_safety(self, v):
        return v


def gen_t5_spm():
    """A T5-format tokenizer (sentencepiece Unigram, Metaspace pre-tokenizer, `</s>` appended,
    100 `<extra_id_*>` tokens), as `T5TokenizerFast` converts google's `spiece.model` into a
    `tokenizer.json`: trained on a tiny corpus so the fixture stays a few KB. Reference ids come
    from transformers with truncation, as the pipeline tokenizes."""
    import json
    import tempfile

    import sentencepiece as spm
    from transformers import T5TokenizerFast

    d = out_dir("t5_spm")
    corpus = [
        "A robot arm picks up the red block and places it on the blue one.",
        "The gripper moves left, then down, and closes around the cube.",
        "A person pours water from a kettle into a white cup on the table.",
        "Camera pans slowly over a kitchen counter with apples and a knife.",
        "Stack the green block on top of the tower, then release the gripper.",
        "Ten small cars drive along a wet road at night under street lights.",
    ] * 20
    with tempfile.TemporaryDirectory() as tmp:
        txt = os.path.join(tmp, "corpus.txt")
        with open(txt, "w") as f:
            f.write("\n".join(corpus))
        spm.SentencePieceTrainer.train(
            input=txt, model_prefix=os.path.join(tmp, "spiece"), vocab_size=150, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        )
        # transformers 5 builds T5's tokenizer from the (piece, score) list and the normaliser's
        # precompiled charsmap of the sentencepiece model, as its converter reads them from
        # google's spiece.model (needs protobuf).
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        with open(os.path.join(tmp, "spiece.model"), "rb") as f:
            m.ParseFromString(f.read())
        tok = T5TokenizerFast(
            vocab=[(p.piece, p.score) for p in m.pieces],
            _spm_precompiled_charsmap=m.normalizer_spec.precompiled_charsmap,
        )
        tk = os.path.join(d, "tokenizer")
        os.makedirs(tk, exist_ok=True)
        tok.backend_tokenizer.save(os.path.join(tk, "tokenizer.json"))
    prompts = [
        "A robot arm picks up the red block.",
        "  Unseen words: zebra quokka 12345, émigré!  ",
        "Stack the green block on top of the tower, then release the gripper and move the arm away.",
        "",
    ]
    max_len = 16
    ids = [tok(p, max_length=max_len, truncation=True)["input_ids"] for p in prompts]
    with open(os.path.join(d, "prompts.json"), "w") as f:
        json.dump({"prompts": prompts, "max_length": max_len, "input_ids": ids}, f, indent=1)


def gen_pipeline():
    from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, CosmosTransformer3DModel
    from diffusers.pipelines.cosmos import pipeline_cosmos2_video2world as pv

    # Condition latents from the posterior mean, not a sample, so the Rust pipeline can match them.
    pv.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()

    torch.manual_seed(40)
    transformer = CosmosTransformer3DModel(**tiny_dit_config()).eval()
    randomize_(transformer, 41, scale=0.1)
    vae = AutoencoderKLWan(**tiny_vae_config()).eval()
    randomize_(vae, 42, scale=0.15)
    with torch.no_grad():
        for n, p in vae.named_parameters():
            if n.endswith("gamma"):
                p.copy_(1.0 + 0.1 * p)
    pipe = Cosmos2VideoToWorldPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                       scheduler=cosmos_scheduler(), safety_checker=_NoSafetyChecker())
    d = out_dir("pipeline")
    transformer.save_pretrained(os.path.join(d, "transformer"), safe_serialization=True)
    vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
    pipe.scheduler.save_config(os.path.join(d, "scheduler"))

    g = torch.Generator().manual_seed(43)
    height, width, num_frames, steps = 32, 32, 9, 4
    image = torch.rand(1, 3, height, width, generator=g)  # [0, 1], already at the output size
    prompt_embeds = torch.randn(1, 6, 32, generator=g)
    negative_embeds = torch.randn(1, 6, 32, generator=g)
    noise = torch.randn(1, 4, 3, height // 8, width // 8, generator=g)
    latents = pipe(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                   height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                   guidance_scale=7.0, fps=16, latents=noise, output_type="latent", return_dict=False)[0]
    mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1, 1)
    video = vae.decode(latents * std / 1.0 + mean).sample
    io = dict(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, noise=noise,
              latents=latents, video=video)
    save_io(d, io)
    with open(os.path.join(d, "call.json"), "w") as f:
        json.dump(dict(height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                       guidance_scale=7.0, fps=16), f)
    print(f"pipeline -> {d}")


# ---------------------------------------------------------------------------------------------------------
# The official (Cosmos-Predict2 / VideoWorld 2 release) `.pt` layout of the DiT, for the pickle loader

# diffusers' convert_cosmos_to_diffusers.py, Cosmos 2.0 table (official -> diffusers), applied in order.
COSMOS2_RENAME = [
    ("t_embedder.1", "time_embed.t_embedder"), ("t_embedding_norm", "time_embed.norm"),
    ("blocks", "transformer_blocks"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"), ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"), ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"), ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"), ("cross_attn", "attn2"), ("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"),
    ("output_proj", "to_out.0"), ("q_norm", "norm_q"), ("k_norm", "norm_k"), ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"), ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"), ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
]

# diffusers -> official, most specific first.
TO_OFFICIAL = [
    ("time_embed.t_embedder", "t_embedder.1"), ("time_embed.norm", "t_embedding_norm"),
    ("transformer_blocks", "blocks"),
    ("norm1.linear_1", "adaln_modulation_self_attn.1"), ("norm1.linear_2", "adaln_modulation_self_attn.2"),
    ("norm2.linear_1", "adaln_modulation_cross_attn.1"), ("norm2.linear_2", "adaln_modulation_cross_attn.2"),
    ("norm3.linear_1", "adaln_modulation_mlp.1"), ("norm3.linear_2", "adaln_modulation_mlp.2"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"), ("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"),
    ("to_out.0", "output_proj"), ("norm_q", "q_norm"), ("norm_k", "k_norm"), ("ff.net.0.proj", "mlp.layer1"),
    ("ff.net.2", "mlp.layer2"), ("patch_embed.proj", "x_embedder.proj.1"),
    ("norm_out.linear_1", "final_layer.adaln_modulation.1"), ("norm_out.linear_2", "final_layer.adaln_modulation.2"),
    ("proj_out", "final_layer.linear"),
]


def gen_dit_pt():
    from safetensors.torch import load_file

    sd = load_file(os.path.join(ROOT, "dit", "diffusion_pytorch_model.safetensors"))
    official = {}
    for k, v in sd.items():
        o = k
        for a, b in TO_OFFICIAL:
            o = o.replace(a, b)
        back = o
        for a, b in COSMOS2_RENAME:
            back = back.replace(a, b)
        assert back == k, (k, o, back)
        official["net." + o] = v.clone()
    # Training bookkeeping the converter drops.
    official["net.accum_iteration"] = torch.zeros(1)
    official["net.pos_embedder.seq"] = torch.arange(8).float()
    path = os.path.join(out_dir("dit_pt"), "model.pt")
    torch.save({"model": official}, path)
    print(f"dit_pt: {len(official)} tensors -> {path}")


GENERATORS = {
    "dit_pt": gen_dit_pt,
    "pipeline": gen_pipeline,
    "t5": gen_t5,
    "t5_spm": gen_t5_spm,
    "vae": gen_vae,
    "dit": lambda: (gen_dit(), gen_dit("dit_learnable_pos", "learnable", num_layers=1, seed=10)),
    "scheduler": gen_scheduler,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(GENERATORS))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for name in args.only.split(","):
        GENERATORS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())

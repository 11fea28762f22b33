//! T5 embeddings and one full video2world sampling run, against transformers / diffusers.

mod common;

use candle_core::{DType, Device};
use common::{assert_close, fixture, io};
use vw_diffusion::hub::ModelSource;
use vw_diffusion::t5::{encode_padded, T5TextEncoder};
use vw_diffusion::{GenerateOptions, Video2WorldPipeline};

fn t5() -> T5TextEncoder {
    let d = fixture("t5");
    T5TextEncoder::load(&d.join("text_encoder"), Some(&d.join("tokenizer")), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn t5_embeddings_match_transformers() {
    let mut enc = t5();
    let t = io("t5");
    let out = encode_padded(&mut enc, &t["input_ids"], &t["attention_mask"]).unwrap();
    assert_close("t5 embeds", &out, &t["embeds"], 1e-4);
}

#[test]
fn t5_prompts_tokenize_like_transformers() {
    let mut enc = t5();
    let t = io("t5");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("t5").join("prompts.json")).unwrap()).unwrap();
    let prompts: Vec<&str> = meta["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let max_len = meta["max_length"].as_u64().unwrap() as usize;
    let ids = t["input_ids"].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let mine = enc.tokenize(p, max_len).unwrap();
        assert_eq!(mine[..], ids[i][..mine.len()], "prompt {i}");
        assert!(ids[i][mine.len()..].iter().all(|&x| x == 0), "the rest is padding");
    }
    let out = enc.encode(&prompts, max_len).unwrap();
    assert_close("t5 from prompts", &out, &t["embeds"], 1e-4);
}

#[test]
fn pipeline_sampling_matches_diffusers() {
    let dir = fixture("pipeline");
    let pipe = Video2WorldPipeline::load(&ModelSource::Local(dir.clone()), DType::F32, &Device::Cpu).unwrap();
    let t = io("pipeline");
    let call: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("call.json")).unwrap()).unwrap();
    let opts = GenerateOptions {
        height: call["height"].as_u64().unwrap() as usize,
        width: call["width"].as_u64().unwrap() as usize,
        num_frames: call["num_frames"].as_u64().unwrap() as usize,
        num_inference_steps: call["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: call["guidance_scale"].as_f64().unwrap(),
        fps: call["fps"].as_f64().unwrap(),
        progress: false,
        ..GenerateOptions::default()
    };
    assert!(opts.num_inference_steps >= 4);
    // The image in [0, 1] -> one conditioning frame in [-1, 1].
    let cond = ((&t["image"] * 2.0).unwrap() - 1.0).unwrap().unsqueeze(2).unwrap();
    let latents = pipe
        .generate_latents(&cond, &t["prompt_embeds"], Some(&t["negative_prompt_embeds"]), &opts, Some(&t["noise"]))
        .unwrap();
    assert_close("pipeline latents", &latents, &t["latents"], 1e-4);
    let video = pipe.decode(&latents).unwrap();
    assert_close("pipeline video", &video, &t["video"], 1e-4);
    let frames = vw_diffusion::pipeline::video_to_frames(&video).unwrap();
    assert_eq!(frames.len(), opts.num_frames);
    assert_eq!(frames[0].dimensions(), (opts.width as u32, opts.height as u32));
}

#[test]
fn seeded_generation_is_deterministic() {
    let dir = fixture("pipeline");
    let pipe = Video2WorldPipeline::load(&ModelSource::Local(dir), DType::F32, &Device::Cpu).unwrap();
    let t = io("pipeline");
    let cond = ((&t["image"] * 2.0).unwrap() - 1.0).unwrap().unsqueeze(2).unwrap();
    let opts = GenerateOptions {
        height: 32,
        width: 32,
        num_frames: 5,
        num_inference_steps: 2,
        guidance_scale: 1.0,
        seed: 7,
        progress: false,
        ..GenerateOptions::default()
    };
    let run = |o: &GenerateOptions| pipe.generate_latents(&cond, &t["prompt_embeds"], None, o, None).unwrap();
    let a = run(&opts);
    let b = run(&opts);
    let c = run(&GenerateOptions { seed: 8, ..opts.clone() });
    assert_eq!(common::rel_err(&a, &b), 0.0);
    assert!(common::rel_err(&a, &c) > 1e-3, "another seed gives other latents");
}

/// A tokenizer in T5's own format (sentencepiece Unigram with nmt_nfkc's precompiled charsmap,
/// Metaspace, `</s>` appended, 100 `<extra_id_*>` tokens), as transformers builds it from a
/// `spiece.model` (tools/gen_diffusion_fixtures.py `--only t5_spm`): ids, unknown characters and
/// truncation as `T5TokenizerFast` gives them.
#[test]
fn t5_format_tokenizer_matches_transformers() {
    let enc = T5TextEncoder::load(
        &fixture("t5").join("text_encoder"),
        Some(&fixture("t5_spm").join("tokenizer")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("t5_spm").join("prompts.json")).unwrap()).unwrap();
    let max_len = meta["max_length"].as_u64().unwrap() as usize;
    let prompts = meta["prompts"].as_array().unwrap();
    let want = meta["input_ids"].as_array().unwrap();
    assert!(want.iter().any(|w| w.as_array().unwrap().len() == max_len), "a prompt is truncated");
    for (i, (p, w)) in prompts.iter().zip(want).enumerate() {
        let w: Vec<u32> = w.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(enc.tokenize(p.as_str().unwrap(), max_len).unwrap(), w, "prompt {i}: {p}");
    }
}

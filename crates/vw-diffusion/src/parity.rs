//! Runs one component on named input tensors and returns named outputs, so any checkpoint can be
//! compared with PyTorch through safetensors files (`vw parity`, docs/parity.md; the reference
//! side is tools/parity_reference.py). Tensor names are the contract; they are listed per component.

use crate::dit::{CosmosTransformer3DModel, DitInput};
use crate::hub::{Component, ModelSource};
use crate::pipeline::{GenerateOptions, Video2WorldPipeline};
use crate::t5::{encode_padded, T5TextEncoder};
use crate::vae::AutoencoderKLWan;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// What `vw parity` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParityComponent {
    /// `video` (B,3,T,H,W) in [-1,1] -> `mean`, `logvar` (B,z,T',h,w).
    VaeEncode,
    /// `z` (B,z,T',h,w) -> `video` (B,3,T,H,W), clamped to [-1,1].
    VaeDecode,
    /// `latents`, `timestep`, `text` [, `condition_mask`, `padding_mask`, `text_mask`, `fps`] -> `output`.
    Dit,
    /// `input_ids` (B,L), `attention_mask` (B,L) -> `embeds` (B,L,D), zero past each prompt.
    T5,
    /// `image` (B,3,H,W) in [0,1] or `cond_video` (B,3,Tc,H,W) in [-1,1], `prompt_embeds`,
    /// [`negative_prompt_embeds`], `noise`, scalars `num_frames`, `num_inference_steps`,
    /// `guidance_scale`, `fps` -> `latents`, `video`.
    Pipeline,
}

impl std::str::FromStr for ParityComponent {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "vae-encode" => Self::VaeEncode,
            "vae-decode" => Self::VaeDecode,
            "dit" => Self::Dit,
            "t5" => Self::T5,
            "pipeline" => Self::Pipeline,
            o => {
                return Err(Error::Invalid(format!(
                    "unknown component `{o}`: expected vae-encode, vae-decode, dit, t5 or pipeline"
                )))
            }
        })
    }
}

fn get<'a>(m: &'a HashMap<String, Tensor>, k: &str, file: &Path) -> Result<&'a Tensor> {
    m.get(k).ok_or_else(|| Error::MissingTensor { path: file.to_path_buf(), key: k.to_string(), expected: vec![] })
}

fn scalar(m: &HashMap<String, Tensor>, k: &str) -> Result<Option<f64>> {
    match m.get(k) {
        Some(t) => Ok(Some(t.flatten_all()?.to_dtype(DType::F64)?.get(0)?.to_scalar::<f64>()?)),
        None => Ok(None),
    }
}

/// Runs `component` from the model folder `model` on `inputs` (read from `inputs_path`, named in errors).
pub fn run(
    component: ParityComponent,
    model: &Path,
    inputs: &HashMap<String, Tensor>,
    inputs_path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let src = ModelSource::Local(model.to_path_buf());
    let f = inputs_path;
    let mut out = HashMap::new();
    match component {
        ParityComponent::VaeEncode => {
            let vae = AutoencoderKLWan::load(&src.component(Component::Vae)?, dtype, device)?;
            let (m, l) = vae.encode_moments(&get(inputs, "video", f)?.to_dtype(dtype)?)?;
            out.insert("mean".into(), m);
            out.insert("logvar".into(), l);
        }
        ParityComponent::VaeDecode => {
            let vae = AutoencoderKLWan::load(&src.component(Component::Vae)?, dtype, device)?;
            out.insert("video".into(), vae.decode(&get(inputs, "z", f)?.to_dtype(dtype)?)?);
        }
        ParityComponent::Dit => {
            let m = CosmosTransformer3DModel::load(&src.component(Component::Transformer)?, dtype, device)?;
            let inp = DitInput {
                latents: get(inputs, "latents", f)?,
                timestep: get(inputs, "timestep", f)?,
                text: get(inputs, "text", f)?,
                text_mask: inputs.get("text_mask"),
                condition_mask: inputs.get("condition_mask"),
                padding_mask: inputs.get("padding_mask"),
                fps: scalar(inputs, "fps")?,
            };
            out.insert("output".into(), m.forward(&inp)?);
        }
        ParityComponent::T5 => {
            let te = src.component(Component::TextEncoder)?;
            let tok = src.component(Component::Tokenizer).ok();
            let mut enc = T5TextEncoder::load(&te, tok.as_deref(), dtype, device)?;
            let e = encode_padded(&mut enc, get(inputs, "input_ids", f)?, get(inputs, "attention_mask", f)?)?;
            out.insert("embeds".into(), e);
        }
        ParityComponent::Pipeline => {
            let pipe = Video2WorldPipeline::load(&src, dtype, device)?;
            let cond = match (inputs.get("cond_video"), inputs.get("image")) {
                (Some(v), _) => v.clone(),
                (None, Some(img)) => ((img * 2.0)? - 1.0)?.unsqueeze(2)?,
                _ => return Err(get(inputs, "image", f).err().unwrap_or_else(|| Error::Invalid("no image".into()))),
            };
            let (_, _, _, h, w) = cond.dims5()?;
            let d = GenerateOptions::default();
            let opts = GenerateOptions {
                height: h,
                width: w,
                num_frames: scalar(inputs, "num_frames")?.map(|x| x as usize).unwrap_or(d.num_frames),
                num_inference_steps: scalar(inputs, "num_inference_steps")?
                    .map(|x| x as usize)
                    .unwrap_or(d.num_inference_steps),
                guidance_scale: scalar(inputs, "guidance_scale")?.unwrap_or(d.guidance_scale),
                fps: scalar(inputs, "fps")?.unwrap_or(d.fps),
                progress: false,
                ..d
            };
            let lat = pipe.generate_latents(
                &cond,
                get(inputs, "prompt_embeds", f)?,
                inputs.get("negative_prompt_embeds"),
                &opts,
                inputs.get("noise"),
            )?;
            out.insert("video".into(), pipe.decode(&lat)?);
            out.insert("latents".into(), lat);
        }
    }
    Ok(out)
}

/// max|a - b| / max|b| per tensor present in both maps, sorted by name.
pub fn compare(ours: &HashMap<String, Tensor>, reference: &HashMap<String, Tensor>) -> Result<Vec<(String, f32)>> {
    let mut names: Vec<&String> = ours.keys().filter(|k| reference.contains_key(*k)).collect();
    names.sort();
    let mut out = vec![];
    for n in names {
        let a = ours[n].to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let b = reference[n].to_dtype(DType::F32)?;
        if a.dims() != b.dims() {
            return Err(Error::Invalid(format!("`{n}`: ours {:?} vs reference {:?}", a.dims(), b.dims())));
        }
        let diff = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
        out.push((n.clone(), diff / scale));
    }
    Ok(out)
}

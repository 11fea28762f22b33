//! Loading official dLDM checkpoints: the one place where official key names meet ours.
//!
//! Our `VarBuilder` paths are the official module paths, so the map is the identity after removing
//! the prefixes the official training code wraps the tokenizer in (`network.` of `TokenizerModel`,
//! `ldm_net.network.` of the video2world model, `module.` of DDP) and dropping the buffers that hold
//! constants we compute (Haar wavelets, FSQ levels / basis / implicit codebook).
//! `.pt` files are read with candle's pickle reader (state dict at the top level or under `model`
//! or `state_dict`); `.safetensors` with candle's safetensors reader.

use crate::config::Config;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;

/// Wrappers the official training code puts in front of the tokenizer's keys.
const PREFIXES: [&str; 5] = ["module.", "model.", "ldm_net.", "network.", "_orig_mod."];

/// Official buffers that are constants of the architecture, recomputed here.
const CONSTANT_BUFFERS: [&str; 8] = [
    "encoder.patcher3d.wavelets",
    "encoder.patcher3d._arange",
    "encoder.patcher3d.patch_size_buffer",
    "decoder.unpatcher3d.wavelets",
    "decoder.unpatcher3d._arange",
    "quantizer._levels",
    "quantizer._basis",
    "quantizer.implicit_codebook",
];

/// Our key of an official state-dict key, or `None` for a constant buffer we do not load.
pub fn official_to_ours(key: &str) -> Option<String> {
    let mut k = key;
    while let Some(p) = PREFIXES.iter().find(|p| k.starts_with(**p)) {
        k = &k[p.len()..];
    }
    if CONSTANT_BUFFERS.contains(&k) {
        return None;
    }
    Some(k.to_string())
}

/// Reads an official checkpoint (`.pt` / `.pth` via pickle, else safetensors) into our key space.
pub fn read_official(path: &Path) -> Result<HashMap<String, Tensor>> {
    let is_pickle = matches!(path.extension().and_then(|e| e.to_str()), Some("pt" | "pth" | "ckpt"));
    let raw: Vec<(String, Tensor)> = if is_pickle {
        read_pickle(path)?
    } else {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Invalid(format!("{}: not a safetensors checkpoint: {e}", path.display())))?
            .into_iter()
            .collect()
    };
    let mut out = HashMap::new();
    for (k, t) in raw {
        if let Some(ours) = official_to_ours(&k) {
            out.insert(ours, t);
        }
    }
    Ok(out)
}

fn read_pickle(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut last_err = None;
    for key in [Some("model"), Some("state_dict"), None] {
        match candle_core::pickle::PthTensors::new(path, key) {
            Ok(pth) if !pth.tensor_infos().is_empty() => {
                let mut names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
                names.sort();
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    let t = pth.get(&name)?.ok_or_else(|| Error::Weights {
                        path: path.to_path_buf(),
                        key: name.clone(),
                        reason: "listed in the pickle but unreadable".into(),
                    })?;
                    out.push((name, t));
                }
                return Ok(out);
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    Err(Error::Invalid(format!(
        "{}: no state dict found in this torch checkpoint{}",
        path.display(),
        last_err.map(|e| format!(" ({e})")).unwrap_or_default()
    )))
}

/// Copies `tensors` into every variable of `varmap`: a missing key or a shape mismatch is an error
/// naming the key; returns the keys of `tensors` that no variable used (sorted).
pub fn load_into_varmap(varmap: &VarMap, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<Vec<String>> {
    let data = varmap.data().lock().map_err(|_| Error::Invalid("VarMap lock poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| Error::Weights {
            path: path.to_path_buf(),
            key: name.clone(),
            reason: "missing from the checkpoint".into(),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                key: name.clone(),
                reason: format!("shape {:?} in the checkpoint, the model expects {:?}", t.dims(), var.dims()),
            });
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    let mut unused: Vec<String> = tensors.keys().filter(|k| !data.contains_key(*k)).cloned().collect();
    unused.sort();
    Ok(unused)
}

/// A trainable tokenizer of `cfg` with the weights of an official checkpoint (`.pt` or safetensors).
/// Returns the model, its VarMap, and the checkpoint keys the model did not use.
pub fn tokenizer_from_official(
    cfg: &Config,
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(Tokenizer, VarMap, Vec<String>)> {
    let varmap = VarMap::new();
    let tok = Tokenizer::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
    let tensors = read_official(path)?;
    let unused = load_into_varmap(&varmap, &tensors, path)?;
    Ok((tok, varmap, unused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_buffers() {
        assert_eq!(
            official_to_ours("network.encoder.conv_in.0.conv3d.weight").as_deref(),
            Some("encoder.conv_in.0.conv3d.weight")
        );
        assert_eq!(
            official_to_ours("module.ldm_net.network.quant_conv.conv3d.bias").as_deref(),
            Some("quant_conv.conv3d.bias")
        );
        assert_eq!(
            official_to_ours("decoder.mid.attn_1.0.kv_proj.weight").as_deref(),
            Some("decoder.mid.attn_1.0.kv_proj.weight")
        );
        assert_eq!(official_to_ours("network.encoder.patcher3d.wavelets"), None);
        assert_eq!(official_to_ours("quantizer.implicit_codebook"), None);
    }
}

//! Atomic, resumable checkpoints.
//!
//! A checkpoint is two files in the run folder: `ckpt-<step>.safetensors` (parameters under their
//! own names so a `VarBuilder` loads the model directly, plus `_optim.m.*`, `_optim.v.*` moments and
//! `_ema.*` averages) and `checkpoint.json` ([`TrainState`]: config, step, RNG state, data position,
//! and the name of the safetensors file). Each is written to a temporary file, fsynced and renamed;
//! the JSON goes last, so it is the commit point: a crash at any moment leaves the previous
//! checkpoint intact and readable.

use crate::{Error, Result};
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Key prefix of the Adam moments in a checkpoint (`_optim.m.<name>`, `_optim.v.<name>`).
pub const OPTIM_PREFIX: &str = "_optim.";
/// Key prefix of the EMA tensors in a checkpoint.
pub const EMA_PREFIX: &str = "_ema.";
/// File name of the JSON commit record inside a run folder.
pub const STATE_FILE: &str = "checkpoint.json";

/// The exact position of a ChaCha8 stream, so a resumed run draws the same numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex.
    pub seed: String,
    /// The stream id.
    pub stream: u64,
    /// Words consumed so far (u128 as a decimal string: JSON numbers lose precision past 2^53).
    pub word_pos: String,
}

impl RngState {
    /// Captures the position of `rng`.
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        let seed = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        Self { seed, stream: rng.get_stream(), word_pos: rng.get_word_pos().to_string() }
    }

    /// Rebuilds a generator at the captured position.
    pub fn restore(&self) -> Result<ChaCha8Rng> {
        let bad = |what: &str| Error::Invalid(format!("RNG state: bad {what}"));
        if self.seed.len() != 64 {
            return Err(bad("seed length"));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad("seed hex"))?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().map_err(|_| bad("word position"))?);
        Ok(rng)
    }
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Position of the training RNG after `step` steps.
    pub rng: RngState,
    /// The caller's data cursor (e.g. index into the shuffled epoch order).
    pub data_pos: u64,
    /// Adam's update count (equals `step` unless steps were skipped).
    pub optim_t: u64,
    /// The safetensors file holding this checkpoint's tensors, relative to the run folder.
    pub tensors_file: String,
    /// The full run configuration (model + training), as the caller serialised it.
    pub config: serde_json::Value,
}

/// Writes `bytes` to `path` atomically: temporary file in the same folder, fsync, rename, fsync
/// of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path);
    Ok(())
}

/// Saves named tensors as safetensors, atomically (see [`write_atomic`]).
pub fn save_tensors_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = tmp_path(path);
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path);
    Ok(())
}

/// Reads the commit record of a run folder, if there is one.
pub fn read_state(run_dir: &Path) -> Result<Option<TrainState>> {
    let path = run_dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint { path: path.clone(), reason: format!("not a valid checkpoint record: {e}") })?;
    Ok(Some(state))
}

/// Loads the tensors of the committed checkpoint of a run folder.
pub fn load_tensors(
    run_dir: &Path,
    state: &TrainState,
    device: &candle_core::Device,
) -> Result<HashMap<String, Tensor>> {
    let path = run_dir.join(&state.tensors_file);
    if !path.exists() {
        return Err(Error::Checkpoint { path, reason: "tensor file named by checkpoint.json is missing".into() });
    }
    Ok(candle_core::safetensors::load(&path, device)?)
}

/// The tensor `key` of a checkpoint's `tensors` (read from the file `path`), checked against the
/// `expected` shape when one is given; `what` names the kind of tensor in the errors
/// ("missing {what} '{key}'", "{what} '{key}': expected shape ..."), both [`Error::Checkpoint`].
pub fn checked_tensor<'t>(
    tensors: &'t HashMap<String, Tensor>,
    key: &str,
    what: &str,
    expected: Option<&[usize]>,
    path: &Path,
) -> Result<&'t Tensor> {
    let t = tensors
        .get(key)
        .ok_or_else(|| Error::Checkpoint { path: path.to_path_buf(), reason: format!("missing {what} '{key}'") })?;
    match expected {
        Some(dims) if t.dims() != dims => Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("{what} '{key}': expected shape {dims:?}, found {:?}", t.dims()),
        }),
        _ => Ok(t),
    }
}

/// Sets each variable `(name, var)` to the tensor of that name in `tensors` (read from the file
/// `path`, named in the errors), converted to the variable's dtype. A missing name or another
/// shape is a [`Error::Checkpoint`].
pub fn assign_vars<'a>(
    vars: impl IntoIterator<Item = &'a (String, candle_core::Var)>,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let t = checked_tensor(tensors, name, "parameter", Some(var.dims()), path)?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Path of the tensors of the committed checkpoint of a run folder (for loading a model for
/// inference with `VarBuilder::from_mmaped_safetensors`).
pub fn committed_tensors_path(run_dir: &Path) -> Result<PathBuf> {
    let state = read_state(run_dir)?.ok_or_else(|| Error::Checkpoint {
        path: run_dir.join(STATE_FILE),
        reason: "no checkpoint in this run folder (train first)".into(),
    })?;
    Ok(run_dir.join(state.tensors_file))
}

/// The committed checkpoint of a run folder, for loading a model for inference: its state (with
/// the run's config) and an f32 `VarBuilder` over its tensors.
pub fn committed_checkpoint(
    run_dir: &Path,
    device: &candle_core::Device,
) -> Result<(TrainState, candle_nn::VarBuilder<'static>)> {
    let state = read_state(run_dir)?.ok_or_else(|| Error::Checkpoint {
        path: run_dir.join(STATE_FILE),
        reason: "no checkpoint in this run folder".into(),
    })?;
    let path = run_dir.join(&state.tensors_file);
    // SAFETY: the checkpoint file is ours and not modified while mapped.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[path], candle_core::DType::F32, device)? };
    Ok((state, vb))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Best effort: makes the rename durable; some filesystems refuse to open a folder, which is fine.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn rng_state_round_trip_continues_the_stream() -> Result<()> {
        let mut a = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..13 {
            let _: u32 = a.random();
        }
        let mut b = RngState::capture(&a).restore()?;
        let xs: Vec<u64> = (0..5).map(|_| a.random()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.random()).collect();
        assert_eq!(xs, ys);
        Ok(())
    }
}

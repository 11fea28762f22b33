//! Checkpoint weights behind a candle `VarBuilder`, with errors that name the file and the tensor.
//!
//! Sources: one or more safetensors files (a diffusers folder, sharded or not, memory-mapped), a
//! PyTorch `.pt` pickle (the official release format, via `candle_core::pickle`), or seeded random
//! weights (benchmarks). Every lookup is checked against the shape the model expects; the first
//! failure is kept in full (file, key, expected vs found) and replaces candle's terse message.

use crate::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a tensor lives.
enum Source {
    /// Index into `WeightStore::files` / `mmaps`.
    Safetensors(usize),
    /// Already in memory (pickle checkpoints).
    Memory(Tensor),
}

struct Entry {
    file: usize,
    shape: Vec<usize>,
    dtype: DType,
    source: Source,
}

/// The tensors of a checkpoint, indexed by key, with the file each came from.
pub struct WeightStore {
    files: Vec<PathBuf>,
    mmaps: Vec<Option<MmapedSafetensors>>,
    entries: HashMap<String, Entry>,
    first_error: Mutex<Option<Error>>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore").field("files", &self.files).field("tensors", &self.entries.len()).finish()
    }
}

fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        _ => return None,
    })
}

impl WeightStore {
    /// Memory-maps safetensors files (e.g. all shards of one model).
    pub fn from_safetensors(paths: &[PathBuf]) -> Result<Self> {
        let mut store = Self { files: vec![], mmaps: vec![], entries: HashMap::new(), first_error: Mutex::new(None) };
        for (i, p) in paths.iter().enumerate() {
            if !p.exists() {
                return Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
            }
            // SAFETY: the file is opened read-only; like every mmap reader we rely on nobody
            // truncating a checkpoint while it is being read.
            let mm = unsafe { MmapedSafetensors::new(p) }
                .map_err(|e| Error::Invalid(format!("{}: not a valid safetensors file: {e}", p.display())))?;
            for (name, view) in mm.tensors() {
                let dtype = candle_dtype(view.dtype()).unwrap_or(DType::U8);
                store.entries.insert(
                    name,
                    Entry { file: i, shape: view.shape().to_vec(), dtype, source: Source::Safetensors(i) },
                );
            }
            store.files.push(p.clone());
            store.mmaps.push(Some(mm));
        }
        Ok(store)
    }

    /// Reads a PyTorch pickle checkpoint (`torch.save` of a state dict, optionally under `key`,
    /// e.g. "model" or "state_dict"), stripping `strip_prefix` from every key (e.g. "net.").
    pub fn from_pth(path: &Path, key: Option<&str>, strip_prefix: Option<&str>) -> Result<Self> {
        Self::from_pth_renamed(path, key, |k| {
            Some(match strip_prefix {
                Some(p) => k.strip_prefix(p).unwrap_or(k).to_string(),
                None => k.to_string(),
            })
        })
    }

    /// Reads a PyTorch pickle checkpoint, mapping every key through `rename` (None drops the tensor).
    pub fn from_pth_renamed(path: &Path, key: Option<&str>, rename: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
        }
        let tensors = candle_core::pickle::read_all_with_key(path, key)
            .map_err(|e| Error::Invalid(format!("{}: cannot read PyTorch checkpoint: {e}", path.display())))?;
        let mut entries = HashMap::new();
        for (name, t) in tensors {
            let Some(name) = rename(&name) else { continue };
            entries
                .insert(name, Entry { file: 0, shape: t.dims().to_vec(), dtype: t.dtype(), source: Source::Memory(t) });
        }
        Ok(Self { files: vec![path.to_path_buf()], mmaps: vec![None], entries, first_error: Mutex::new(None) })
    }

    /// Tensors from memory (tests, converted checkpoints); `origin` names them in errors.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &Path) -> Self {
        let entries = tensors
            .into_iter()
            .map(|(k, t)| (k, Entry { file: 0, shape: t.dims().to_vec(), dtype: t.dtype(), source: Source::Memory(t) }))
            .collect();
        Self { files: vec![origin.to_path_buf()], mmaps: vec![None], entries, first_error: Mutex::new(None) }
    }

    /// The keys of every tensor, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// The file every tensor came from (the first one when there are several).
    pub fn path(&self) -> &Path {
        self.files.first().map(PathBuf::as_path).unwrap_or(Path::new("<memory>"))
    }

    fn record(&self, e: Error) -> candle_core::Error {
        let msg = e.to_string();
        if let Ok(mut slot) = self.first_error.lock() {
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        candle_core::Error::Msg(msg)
    }

    fn fetch(&self, name: &str, expected: Option<&Shape>, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(entry) = self.entries.get(name) else {
            let expected = expected.map(|s| s.dims().to_vec()).unwrap_or_default();
            let path = if self.files.len() == 1 { self.files[0].clone() } else { self.files_label() };
            return Err(self.record(Error::MissingTensor { path, key: name.to_string(), expected }));
        };
        let path = self.files[entry.file].clone();
        if let Some(s) = expected {
            if s.dims() != entry.shape.as_slice() {
                return Err(self.record(Error::ShapeMismatch {
                    path,
                    key: name.to_string(),
                    expected: s.dims().to_vec(),
                    found: entry.shape.clone(),
                }));
            }
        }
        if !entry.dtype.is_float() {
            return Err(self.record(Error::DtypeMismatch { path, key: name.to_string(), found: entry.dtype }));
        }
        let t = match &entry.source {
            Source::Safetensors(i) => match &self.mmaps[*i] {
                Some(mm) => mm.load(name, dev)?,
                None => return Err(candle_core::Error::Msg(format!("{name}: no mapped file"))),
            },
            Source::Memory(t) => t.to_device(dev)?,
        };
        t.to_dtype(dtype)
    }

    fn files_label(&self) -> PathBuf {
        let names: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        PathBuf::from(names.join(" + "))
    }

    /// Takes the first detailed error recorded during a load, if any.
    fn take_error(&self) -> Option<Error> {
        self.first_error.lock().ok().and_then(|mut s| s.take())
    }
}

struct Backend(Arc<WeightStore>);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.fetch(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.fetch(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.entries.contains_key(name)
    }
}

/// Seeded random weights (normal, std 0.02) for benchmarks of the real architecture without a download.
struct RandomBackend {
    counter: Mutex<u64>,
    seed: u64,
}

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        _name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = {
            let mut c = self.counter.lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
            *c += 1;
            *c
        };
        // A counter mixed into the seed keeps tensors distinct. candle cannot seed its CPU generator
        // (`set_seed` fails there), so the CPU draws from our own seeded stream; a GPU seeds its own.
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(n);
        if dev.is_cpu() {
            return crate::pipeline::seeded_noise(s.dims(), seed, DType::F32, dev)
                .and_then(|t| Ok((t * 0.02)?.to_dtype(dtype)?))
                .map_err(|e| candle_core::Error::Msg(e.to_string()));
        }
        dev.set_seed(seed)?;
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("random weights have no unchecked tensor `{name}`")))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Builds a module from `store` on `device` in `dtype`; a failed lookup surfaces as the detailed error.
pub fn build<T>(
    store: &Arc<WeightStore>,
    dtype: DType,
    device: &Device,
    f: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let vb = VarBuilder::from_backend(Box::new(Backend(store.clone())), dtype, device.clone());
    match f(vb) {
        Ok(t) => Ok(t),
        Err(e) => Err(store.take_error().unwrap_or(e)),
    }
}

/// Builds a module with seeded random weights (benchmarks).
pub fn build_random<T>(seed: u64, dtype: DType, device: &Device, f: impl FnOnce(VarBuilder) -> Result<T>) -> Result<T> {
    let vb = VarBuilder::from_backend(Box::new(RandomBackend { counter: Mutex::new(0), seed }), dtype, device.clone());
    f(vb)
}

/// The safetensors files of a diffusers component folder: the shards named by
/// `*.safetensors.index.json` when there is one, else `diffusion_pytorch_model.safetensors` /
/// `model.safetensors`, else every `*.safetensors` file in it.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut index = None;
    let mut files = vec![];
    for entry in rd {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".safetensors.index.json") {
            index = Some(p);
        } else if name.ends_with(".safetensors") {
            files.push(p);
        }
    }
    if let Some(idx) = index {
        let text = std::fs::read_to_string(&idx).map_err(|e| Error::io(&idx, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Config { path: idx.clone(), source: e })?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            Error::Invalid(format!("{}: no `weight_map` object in the safetensors index", idx.display()))
        })?;
        let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
        shards.sort();
        shards.dedup();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    files.sort();
    // The standard single-file names win over stray safetensors in the folder.
    for name in ["diffusion_pytorch_model.safetensors", "model.safetensors"] {
        if let Some(f) = files.iter().find(|f| f.file_name().is_some_and(|n| n == name)) {
            return Ok(vec![f.clone()]);
        }
    }
    if files.is_empty() {
        return Err(Error::Invalid(format!("{}: no .safetensors file in this folder", dir.display())));
    }
    Ok(files)
}

/// Opens the weights of a component folder (safetensors) or of a single `.safetensors` / `.pt` file.
pub fn open(path: &Path) -> Result<Arc<WeightStore>> {
    let store = if path.is_dir() {
        WeightStore::from_safetensors(&safetensors_files(path)?)?
    } else {
        match path.extension().and_then(|e| e.to_str()) {
            Some("pt") | Some("pth") | Some("bin") => WeightStore::from_pth(path, None, None)?,
            _ => WeightStore::from_safetensors(&[path.to_path_buf()])?,
        }
    };
    Ok(Arc::new(store))
}

/// Reads and parses a JSON config file.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), source: e })
}

/// Loads every tensor of a safetensors file into memory (inputs / outputs of parity runs).
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Invalid(format!("{}: cannot read safetensors: {e}", path.display())))
}

/// Writes tensors to a safetensors file atomically (temporary file, then rename).
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| Error::Invalid(format!("{}: cannot write safetensors: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Takes a named tensor out of a map, with an error naming the file when it is absent.
pub fn take(map: &HashMap<String, Tensor>, key: &str, path: &Path) -> Result<Tensor> {
    map.get(key).cloned().ok_or_else(|| Error::MissingTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected: vec![],
    })
}

#[cfg(test)]
mod random_weight_tests {
    use super::*;

    /// `vw bench-dit --device cpu` used to fail here: candle cannot seed its CPU generator.
    #[test]
    fn random_weights_build_on_cpu_and_repeat_with_the_seed() -> Result<()> {
        let dev = Device::Cpu;
        let make = |seed| {
            build_random(seed, DType::F32, &dev, |vb| {
                Ok((vb.get((3, 5), "a")?.flatten_all()?.to_vec1::<f32>()?, vb.get(7, "b")?.to_vec1::<f32>()?))
            })
        };
        let (a0, b0) = make(1)?;
        assert_eq!((a0.clone(), b0.clone()), make(1)?);
        assert_ne!(a0, make(2)?.0);
        assert_ne!(a0[..5], b0[..5], "two tensors of one model draw different values");
        let std = (a0.iter().chain(&b0).map(|v| v * v).sum::<f32>() / 22.0).sqrt();
        assert!((0.005..0.05).contains(&std), "std {std}");
        Ok(())
    }
}

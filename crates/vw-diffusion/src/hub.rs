//! Finding a diffusers-layout model: a local folder, or a Hugging Face Hub repo (fetched into the
//! standard hub cache; with `HF_HUB_OFFLINE=1` only the cache is read).
//!
//! Layout: `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, each with its
//! own config and (sharded) safetensors; only the components a caller asks for are fetched.

use crate::weights;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The pipeline's components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The DiT (`transformer/`).
    Transformer,
    /// The Wan VAE (`vae/`).
    Vae,
    /// The T5 encoder (`text_encoder/`).
    TextEncoder,
    /// The tokenizer (`tokenizer/`).
    Tokenizer,
    /// The scheduler config (`scheduler/`).
    Scheduler,
}

impl Component {
    /// The subfolder name.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Transformer => "transformer",
            Self::Vae => "vae",
            Self::TextEncoder => "text_encoder",
            Self::Tokenizer => "tokenizer",
            Self::Scheduler => "scheduler",
        }
    }

    /// The config file of the component.
    fn config_file(self) -> &'static str {
        match self {
            Self::Tokenizer => "tokenizer.json",
            Self::Scheduler => "scheduler_config.json",
            _ => "config.json",
        }
    }

    /// Candidate weight files: the sharded index first, then the single file.
    fn weight_files(self) -> &'static [&'static str] {
        match self {
            Self::Transformer | Self::Vae => {
                &["diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"]
            }
            Self::TextEncoder => &["model.safetensors.index.json", "model.safetensors"],
            Self::Tokenizer | Self::Scheduler => &[],
        }
    }

    /// All components, in download order.
    pub const ALL: [Component; 5] = [Self::Scheduler, Self::Tokenizer, Self::Vae, Self::Transformer, Self::TextEncoder];
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only access.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// A model: a local folder, or a Hub repo id.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A folder holding the diffusers layout.
    Local(PathBuf),
    /// `owner/name` on the Hub.
    Hub(String),
}

impl ModelSource {
    /// A path that exists is local; anything else is read as a Hub repo id.
    pub fn parse(model: &str) -> Self {
        let p = Path::new(model);
        if p.exists() {
            Self::Local(p.to_path_buf())
        } else {
            Self::Hub(model.to_string())
        }
    }

    /// The local folder of one component, fetching it from the Hub (or finding it in the cache) if needed.
    pub fn component(&self, c: Component) -> Result<PathBuf> {
        match self {
            Self::Local(root) => {
                let d = root.join(c.dir());
                // A component folder given directly (e.g. `--model path/to/transformer`) is accepted too.
                let d = if d.is_dir() { d } else { root.clone() };
                if !d.join(c.config_file()).exists() {
                    return Err(Error::ModelNotFound {
                        model: root.display().to_string(),
                        reason: format!("no {}/{} here", c.dir(), c.config_file()),
                    });
                }
                Ok(d)
            }
            Self::Hub(repo) => fetch_component(repo, c),
        }
    }
}

fn hub_file(repo: &str, file: &str) -> Result<PathBuf> {
    let err = |reason: String| Error::ModelNotFound { model: repo.to_string(), reason };
    if offline() {
        let cache = hf_hub::Cache::from_env();
        return cache
            .model(repo.to_string())
            .get(file)
            .ok_or_else(|| err(format!("{file} is not in the hub cache and HF_HUB_OFFLINE is set")));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| err(format!("cannot reach the Hub: {e}")))?;
    api.model(repo.to_string()).get(file).map_err(|e| err(format!("{file}: {e}")))
}

/// Fetches (or finds in the cache) one component of a Hub repo; returns its local folder.
pub fn fetch_component(repo: &str, c: Component) -> Result<PathBuf> {
    let cfg = hub_file(repo, &format!("{}/{}", c.dir(), c.config_file()))?;
    let dir = cfg.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut last_err = None;
    for w in c.weight_files() {
        match hub_file(repo, &format!("{}/{w}", c.dir())) {
            Ok(p) => {
                if w.ends_with(".index.json") {
                    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                    let v: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| Error::Config { path: p.clone(), source: e })?;
                    let mut shards: Vec<String> = v
                        .get("weight_map")
                        .and_then(|m| m.as_object())
                        .map(|m| m.values().filter_map(|s| s.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    shards.sort();
                    shards.dedup();
                    for s in shards {
                        hub_file(repo, &format!("{}/{s}", c.dir()))?;
                    }
                }
                last_err = None;
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    if c == Component::Tokenizer {
        // Optional companions of tokenizer.json; absence is fine.
        for f in ["tokenizer_config.json", "special_tokens_map.json"] {
            let _ = hub_file(repo, &format!("{}/{f}", c.dir()));
        }
    }
    Ok(dir)
}

/// Fetches every component of a repo into the cache (what `vw download` does); returns the folders.
pub fn download_all(repo: &str, with_text_encoder: bool) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for c in Component::ALL {
        if c == Component::TextEncoder && !with_text_encoder {
            continue;
        }
        out.push(fetch_component(repo, c)?);
    }
    Ok(out)
}

/// Reads a component's config.
pub fn component_config<T: serde::de::DeserializeOwned>(dir: &Path, c: Component) -> Result<T> {
    weights::read_config(&dir.join(c.config_file()))
}

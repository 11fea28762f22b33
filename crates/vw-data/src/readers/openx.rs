//! Open-X Embodiment in its RLDS form: TFRecord shards written by TFDS, one `tf.train.Example` per
//! episode, with the `steps` sequence flattened into per-step lists under keys like
//! `steps/observation/image` (one encoded JPEG/PNG per step) and `steps/action` (step-major floats).
//!
//! Datasets name their camera and action keys differently (`image`, `rgb`, `wrist_image`; an `action`
//! vector or a dict of parts), so the keys are configurable; several action keys are concatenated.

use crate::dataset::{Clip, ClipDataset, ClipSpec};
use crate::readers::example::{parse_example, Example, Feature};
use crate::readers::tfrecord::{index_records, read_record_at, TfRecordReader};
use crate::readers::video::{clip_from_frames, decode_image};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Which features of an RLDS episode to read.
#[derive(Clone, Debug)]
pub struct OpenXConfig {
    /// The clip shape.
    pub spec: ClipSpec,
    /// Encoded image per step.
    pub image_key: String,
    /// Float action features, concatenated per step (e.g. `steps/action`, or
    /// `steps/action/world_vector`, `steps/action/rotation_delta`, `steps/action/gripper_closedness_action`).
    pub action_keys: Vec<String>,
    /// Language instruction per step (bytes); the first step's is used.
    pub language_key: String,
    /// Control frequency of the dataset in Hz (RLDS does not store it; most Open-X sets run at 3–15 Hz).
    pub source_fps: f32,
}

impl OpenXConfig {
    /// Keys of the common layout (`steps/observation/image`, `steps/action`), 10 Hz.
    pub fn new(spec: ClipSpec) -> Self {
        Self {
            spec,
            image_key: "steps/observation/image".into(),
            action_keys: vec!["steps/action".into()],
            language_key: "steps/language_instruction".into(),
            source_fps: 10.0,
        }
    }
}

/// One episode, images still encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenXEpisode {
    /// Encoded image of each step.
    pub images: Vec<Vec<u8>>,
    /// (steps, action_dim) row-major.
    pub actions: Vec<f32>,
    /// Width of an action row.
    pub action_dim: usize,
    /// The instruction, if the episode has one.
    pub language: Option<String>,
}

impl OpenXEpisode {
    /// Extracts an episode from a parsed Example; `what` names it in errors.
    pub fn from_example(ex: &Example, cfg: &OpenXConfig, what: &str) -> Result<Self> {
        let missing = |key: &str| Error::MissingKey { what: what.to_string(), key: key.to_string() };
        let images = match ex.get(&cfg.image_key) {
            Some(Feature::Bytes(v)) => v.clone(),
            Some(other) => return Err(mismatch(what, &cfg.image_key, "bytes_list", other.kind())),
            None => return Err(missing(&cfg.image_key)),
        };
        let steps = images.len();
        if steps == 0 {
            return Err(Error::malformed(what, format!("`{}` has no images", cfg.image_key)));
        }
        // Concatenate the action parts per step.
        let mut parts = Vec::new();
        for key in &cfg.action_keys {
            let v = match ex.get(key) {
                Some(Feature::Float(v)) => v.clone(),
                Some(Feature::Int64(v)) => v.iter().map(|&x| x as f32).collect(),
                Some(other) => return Err(mismatch(what, key, "float_list", other.kind())),
                None => return Err(missing(key)),
            };
            if !v.len().is_multiple_of(steps) {
                return Err(Error::Mismatch {
                    what: what.to_string(),
                    key: key.clone(),
                    expected: format!("a multiple of {steps} steps"),
                    found: format!("{} values", v.len()),
                });
            }
            parts.push((v.len() / steps, v));
        }
        let action_dim: usize = parts.iter().map(|(d, _)| d).sum();
        let mut actions = Vec::with_capacity(steps * action_dim);
        for s in 0..steps {
            for (d, v) in &parts {
                actions.extend_from_slice(&v[s * d..(s + 1) * d]);
            }
        }
        let language = match ex.get(&cfg.language_key) {
            Some(Feature::Bytes(v)) => v.first().map(|b| String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        Ok(Self { images, actions, action_dim, language })
    }

    /// Decodes the sampled steps into a clip.
    pub fn to_clip(&self, cfg: &OpenXConfig, id: String) -> Result<Clip> {
        let idx = cfg.spec.sample_indices(0, self.images.len(), cfg.source_fps, &id)?;
        let frames = idx
            .iter()
            .map(|&i| decode_image(&self.images[i], &format!("{id} step {i}")))
            .collect::<Result<Vec<_>>>()?;
        let mut clip = clip_from_frames(&frames, &cfg.spec, id)?;
        clip.language = self.language.clone();
        if self.action_dim > 0 {
            let d = self.action_dim;
            let acts = idx.iter().flat_map(|&i| self.actions[i * d..(i + 1) * d].iter().copied()).collect();
            clip = clip.with_actions(acts, d)?;
        }
        Ok(clip)
    }
}

fn mismatch(what: &str, key: &str, expected: &str, found: &str) -> Error {
    Error::Mismatch { what: what.into(), key: key.into(), expected: expected.into(), found: found.into() }
}

/// The TFRecord shards of a dataset directory (`*.tfrecord*`), or the file itself.
pub fn shard_paths(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = e.map_err(|e| Error::io(path, e))?.path();
        if p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".tfrecord")) {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::malformed(path.display(), "no *.tfrecord* shards"));
    }
    Ok(out)
}

/// Streams episodes from shards in order, one record at a time.
pub fn episodes<'a>(path: &Path, cfg: &'a OpenXConfig) -> Result<impl Iterator<Item = Result<OpenXEpisode>> + 'a> {
    let shards = shard_paths(path)?;
    Ok(shards.into_iter().flat_map(move |shard| {
        let records: Box<dyn Iterator<Item = Result<Vec<u8>>>> = match TfRecordReader::open(&shard) {
            Ok(r) => Box::new(r),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        records.enumerate().map(move |(i, rec)| {
            let what = format!("{} record {i}", shard.display());
            OpenXEpisode::from_example(&parse_example(&rec?, &what)?, cfg, &what)
        })
    }))
}

/// An indexed Open-X dataset: one clip per episode (from its first step), random access by record offset.
pub struct OpenXDataset {
    records: Vec<(PathBuf, u64)>,
    cfg: OpenXConfig,
}

impl OpenXDataset {
    /// Indexes every record of every shard (reads headers only).
    pub fn open(path: &Path, cfg: OpenXConfig) -> Result<Self> {
        let mut records = Vec::new();
        for shard in shard_paths(path)? {
            for (offset, _) in index_records(&shard)? {
                records.push((shard.clone(), offset));
            }
        }
        Ok(Self { records, cfg })
    }

    /// Reads episode `index` without decoding images.
    pub fn episode(&self, index: usize) -> Result<OpenXEpisode> {
        let (shard, offset) =
            self.records.get(index).ok_or_else(|| Error::Invalid(format!("episode {index} out of range")))?;
        let what = format!("{} @{offset}", shard.display());
        OpenXEpisode::from_example(&parse_example(&read_record_at(shard, *offset)?, &what)?, &self.cfg, &what)
    }
}

impl ClipDataset for OpenXDataset {
    fn len(&self) -> usize {
        self.records.len()
    }
    fn get(&self, index: usize) -> Result<Clip> {
        let ep = self.episode(index)?;
        let (shard, offset) = &self.records[index];
        ep.to_clip(&self.cfg, format!("{} @{offset}", shard.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readers::example::encode_example;
    use crate::readers::tfrecord::write_record;

    fn png(value: u8) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(32, 24, image::Rgb([value, 255 - value, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// An RLDS-style episode: `steps` PNGs with red = 20 * step, actions [step, -step, 0.5].
    fn episode_example(steps: usize) -> Example {
        let mut ex = Example::new();
        ex.insert("steps/observation/image".into(), Feature::Bytes((0..steps).map(|s| png(20 * s as u8)).collect()));
        ex.insert(
            "steps/action".into(),
            Feature::Float((0..steps).flat_map(|s| [s as f32, -(s as f32), 0.5]).collect()),
        );
        ex.insert("steps/language_instruction".into(), Feature::Bytes(vec![b"pick up the cube".to_vec(); steps]));
        ex.insert("steps/is_first".into(), Feature::Int64((0..steps).map(|s| (s == 0) as i64).collect()));
        ex
    }

    fn write_shard(path: &Path, episodes: &[Example]) {
        let mut buf = Vec::new();
        for e in episodes {
            write_record(&mut buf, &encode_example(e)).unwrap();
        }
        std::fs::write(path, buf).unwrap();
    }

    fn cfg() -> OpenXConfig {
        // 5 frames at 16 fps from a 16 Hz source: steps 0..4.
        OpenXConfig { source_fps: 16.0, ..OpenXConfig::new(ClipSpec::tiny()) }
    }

    #[test]
    fn reads_episodes_and_clips() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join("ds-train.tfrecord-00000-of-00002"), &[episode_example(6), episode_example(5)]);
        write_shard(&dir.path().join("ds-train.tfrecord-00001-of-00002"), &[episode_example(7)]);
        let cfg = cfg();
        let eps: Vec<OpenXEpisode> = episodes(dir.path(), &cfg).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(eps.iter().map(|e| e.images.len()).collect::<Vec<_>>(), vec![6, 5, 7]);
        assert_eq!(eps[0].action_dim, 3);
        let ds = OpenXDataset::open(dir.path(), cfg).unwrap();
        assert_eq!(ds.len(), 3);
        let clip = ds.get(2).unwrap();
        assert_eq!((clip.num_frames, clip.height, clip.width), (5, 16, 24));
        let reds: Vec<u8> = (0..5).map(|t| clip.frames[t * 16 * 24 * 3]).collect();
        assert_eq!(reds, vec![0, 20, 40, 60, 80]);
        assert_eq!(clip.actions.as_ref().unwrap()[3..6], [1.0, -1.0, 0.5]);
        assert_eq!(clip.language.as_deref(), Some("pick up the cube"));
    }

    #[test]
    fn split_action_keys_are_concatenated() {
        let mut ex = episode_example(5);
        ex.insert("steps/action/grip".into(), Feature::Float(vec![1.0, 0.0, 1.0, 0.0, 1.0]));
        let cfg = OpenXConfig { action_keys: vec!["steps/action".into(), "steps/action/grip".into()], ..cfg() };
        let ep = OpenXEpisode::from_example(&ex, &cfg, "t").unwrap();
        assert_eq!(ep.action_dim, 4);
        assert_eq!(ep.actions[4..8], [1.0, -1.0, 0.5, 0.0]);
    }

    #[test]
    fn malformed_episodes_are_errors() {
        let cfg = cfg();
        let mut ex = episode_example(5);
        ex.remove("steps/action");
        assert!(matches!(OpenXEpisode::from_example(&ex, &cfg, "t"), Err(Error::MissingKey { .. })));
        let mut ex = episode_example(5);
        ex.insert("steps/action".into(), Feature::Float(vec![0.0; 7]));
        assert!(matches!(OpenXEpisode::from_example(&ex, &cfg, "t"), Err(Error::Mismatch { .. })));
        let mut ex = episode_example(5);
        ex.insert("steps/observation/image".into(), Feature::Float(vec![0.0; 5]));
        let err = OpenXEpisode::from_example(&ex, &cfg, "t").unwrap_err().to_string();
        assert!(err.contains("expected bytes_list"), "{err}");
        // A corrupt JPEG/PNG payload fails at decode time with the step named.
        let mut ex = episode_example(5);
        ex.insert("steps/observation/image".into(), Feature::Bytes(vec![b"\x89PNG broken".to_vec(); 5]));
        let ep = OpenXEpisode::from_example(&ex, &cfg, "t").unwrap();
        let err = ep.to_clip(&cfg, "t".into()).unwrap_err().to_string();
        assert!(err.contains("step 0"), "{err}");
        // Too few steps for the clip.
        let ep = OpenXEpisode::from_example(&episode_example(4), &cfg, "t").unwrap();
        assert!(matches!(ep.to_clip(&cfg, "t".into()), Err(Error::ClipTooShort { .. })));
        // Bad CRC and truncation in a shard.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tfrecord");
        write_shard(&p, &[episode_example(5)]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let ds = OpenXDataset::open(&p, cfg.clone()).unwrap();
        let err = ds.get(0).unwrap_err().to_string();
        assert!(err.contains("data CRC mismatch"), "{err}");
        let n = bytes.len();
        std::fs::write(&p, &bytes[..n - 10]).unwrap();
        assert!(OpenXDataset::open(&p, cfg.clone()).is_err());
        assert!(episodes(&p, &cfg).unwrap().next().unwrap().is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(OpenXDataset::open(empty.path(), cfg).is_err());
    }
}

//! LeRobot datasets, codebase v2.x: `meta/info.json` (fps, episode count, path templates, features),
//! one parquet frame table per episode (`data/chunk-000/episode_000000.parquet`: `frame_index`,
//! `timestamp`, `action` as a list of floats, ...) and, for `video` features, one mp4 per episode and
//! camera, decoded through the same ffmpeg path as video folders. `image` features (PNG/JPEG bytes in a
//! `{bytes, path}` struct column) are decoded in-process.
//!
//! v3.0 (several episodes per file, addressed through `meta/episodes/`) is refused with a clear error.

use crate::dataset::{Clip, ClipDataset, ClipSpec};
use crate::readers::video::{clip_from_frames, decode_image, read_video_ffmpeg, FfmpegOptions};
use crate::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One entry of `info.json`'s `features`.
#[derive(Clone, Debug, Deserialize)]
pub struct FeatureInfo {
    /// `video`, `image`, `float32`, `int64`, ...
    pub dtype: String,
    /// Shape per frame.
    #[serde(default)]
    pub shape: Vec<usize>,
}

/// The fields of `meta/info.json` this reader uses (official names).
#[derive(Clone, Debug, Deserialize)]
pub struct LeRobotInfo {
    /// `v2.0`, `v2.1`, ...
    pub codebase_version: String,
    /// Frames per second of every episode.
    pub fps: f32,
    /// Episodes in the dataset.
    pub total_episodes: usize,
    /// Episodes per chunk folder.
    #[serde(default = "default_chunks")]
    pub chunks_size: usize,
    /// Python format string of a frame table, e.g. `data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet`.
    pub data_path: String,
    /// Python format string of a video, with `{video_key}`; absent for image-only datasets.
    #[serde(default)]
    pub video_path: Option<String>,
    /// Feature name → dtype and shape.
    pub features: BTreeMap<String, FeatureInfo>,
}

fn default_chunks() -> usize {
    1000
}

/// Expands `{name}` and `{name:0Nd}` fields of a Python format string.
pub fn format_path(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or_else(|| Error::Invalid(format!("unclosed `{{` in `{template}`")))?;
        let field = &rest[open + 1..open + close];
        let (name, fmt) = field.split_once(':').unwrap_or((field, ""));
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Invalid(format!("unknown field `{name}` in `{template}`")))?;
        let width: usize = fmt.trim_start_matches('0').trim_end_matches('d').parse().unwrap_or(0);
        let pad = if fmt.starts_with('0') { '0' } else { ' ' };
        out.extend(std::iter::repeat_n(pad, width.saturating_sub(value.len())));
        out.push_str(&value);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Which parts of a LeRobot dataset to read.
#[derive(Clone, Debug)]
pub struct LeRobotConfig {
    /// The clip shape.
    pub spec: ClipSpec,
    /// Camera feature; default: the first `video` or `image` feature in name order.
    pub camera: Option<String>,
    /// Action column.
    pub action_key: String,
    /// The ffmpeg child's settings (video features).
    pub ffmpeg: FfmpegOptions,
}

impl LeRobotConfig {
    /// First camera, `action`, default ffmpeg.
    pub fn new(spec: ClipSpec) -> Self {
        Self { spec, camera: None, action_key: "action".into(), ffmpeg: FfmpegOptions::default() }
    }
}

/// A LeRobot v2 dataset: one clip per episode, from its first frame.
pub struct LeRobotDataset {
    root: PathBuf,
    info: LeRobotInfo,
    camera: String,
    cfg: LeRobotConfig,
}

/// The frame table of one episode: actions per frame, and encoded images for `image` cameras.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeTable {
    /// (frames, action_dim) row-major.
    pub actions: Vec<f32>,
    /// Width of an action row.
    pub action_dim: usize,
    /// Encoded image per frame, when the camera is an `image` feature.
    pub images: Vec<Vec<u8>>,
    /// Number of frames.
    pub len: usize,
}

fn field_floats(f: &Field) -> Option<Vec<f32>> {
    match f {
        Field::ListInternal(list) => list
            .elements()
            .iter()
            .map(|e| match e {
                Field::Float(x) => Some(*x),
                Field::Double(x) => Some(*x as f32),
                _ => None,
            })
            .collect(),
        Field::Float(x) => Some(vec![*x]),
        Field::Double(x) => Some(vec![*x as f32]),
        _ => None,
    }
}

fn field_image_bytes(f: &Field) -> Option<Vec<u8>> {
    match f {
        Field::Group(row) => row.get_column_iter().find_map(|(n, v)| match (n.as_str(), v) {
            ("bytes", Field::Bytes(b)) => Some(b.data().to_vec()),
            _ => None,
        }),
        Field::Bytes(b) => Some(b.data().to_vec()),
        _ => None,
    }
}

/// Reads the action column (and optionally an image column) of one episode's parquet table.
pub fn read_episode_table(path: &Path, action_key: &str, image_key: Option<&str>) -> Result<EpisodeTable> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| Error::malformed(&what, format!("parquet: {e}")))?;
    let columns: Vec<String> =
        reader.metadata().file_metadata().schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    for key in std::iter::once(action_key).chain(image_key) {
        if !columns.iter().any(|c| c == key) {
            return Err(Error::MissingKey { what: what.clone(), key: key.to_string() });
        }
    }
    let rows = reader.get_row_iter(None).map_err(|e| Error::malformed(&what, format!("parquet: {e}")))?;
    let (mut actions, mut images, mut dim, mut len) = (Vec::new(), Vec::new(), None, 0usize);
    for (i, row) in rows.enumerate() {
        let row: Row = row.map_err(|e| Error::malformed(&what, format!("parquet row {i}: {e}")))?;
        for (name, field) in row.get_column_iter() {
            if name == action_key {
                let v = field_floats(field).ok_or_else(|| Error::Mismatch {
                    what: format!("{what} row {i}"),
                    key: action_key.into(),
                    expected: "a list of floats".into(),
                    found: format!("{field:?}").chars().take(60).collect(),
                })?;
                if *dim.get_or_insert(v.len()) != v.len() {
                    return Err(Error::malformed(
                        &what,
                        format!("row {i}: action of {} values, earlier rows {dim:?}", v.len()),
                    ));
                }
                actions.extend(v);
            } else if Some(name.as_str()) == image_key {
                let b = field_image_bytes(field).ok_or_else(|| Error::Mismatch {
                    what: format!("{what} row {i}"),
                    key: name.clone(),
                    expected: "an image struct {bytes, path}".into(),
                    found: format!("{field:?}").chars().take(60).collect(),
                })?;
                images.push(b);
            }
        }
        len += 1;
    }
    if len == 0 {
        return Err(Error::malformed(&what, "empty frame table"));
    }
    Ok(EpisodeTable { actions, action_dim: dim.unwrap_or(0), images, len })
}

impl LeRobotDataset {
    /// Opens a dataset root (the folder holding `meta/info.json`).
    pub fn open(root: &Path, cfg: LeRobotConfig) -> Result<Self> {
        let info_path = root.join("meta").join("info.json");
        let text = std::fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: LeRobotInfo = serde_json::from_str(&text).map_err(|e| Error::malformed(info_path.display(), e))?;
        if !info.codebase_version.starts_with("v2") {
            return Err(Error::Invalid(format!(
                "{}: codebase_version {} is not supported (this reader reads LeRobot v2.x; v3 packs several episodes per file)",
                info_path.display(),
                info.codebase_version
            )));
        }
        let camera = match &cfg.camera {
            Some(c) => c.clone(),
            None => info
                .features
                .iter()
                .find(|(_, f)| f.dtype == "video" || f.dtype == "image")
                .map(|(k, _)| k.clone())
                .ok_or_else(|| Error::MissingKey {
                    what: info_path.display().to_string(),
                    key: "a video/image feature".into(),
                })?,
        };
        let feature = info.features.get(&camera);
        let feature =
            feature.ok_or_else(|| Error::MissingKey { what: info_path.display().to_string(), key: camera.clone() })?;
        if feature.dtype == "video" && info.video_path.is_none() {
            return Err(Error::MissingKey { what: info_path.display().to_string(), key: "video_path".into() });
        }
        Ok(Self { root: root.to_path_buf(), info, camera, cfg })
    }

    /// The parsed `info.json`.
    pub fn info(&self) -> &LeRobotInfo {
        &self.info
    }

    fn fields(&self, episode: usize) -> Vec<(&'static str, String)> {
        vec![
            ("episode_chunk", (episode / self.info.chunks_size.max(1)).to_string()),
            ("episode_index", episode.to_string()),
            ("video_key", self.camera.clone()),
        ]
    }

    /// Path of an episode's parquet table.
    pub fn table_path(&self, episode: usize) -> Result<PathBuf> {
        Ok(self.root.join(format_path(&self.info.data_path, &self.fields(episode))?))
    }

    /// Path of an episode's video for the chosen camera.
    pub fn video_path(&self, episode: usize) -> Result<PathBuf> {
        let t = self.info.video_path.as_deref().ok_or_else(|| Error::Invalid("dataset has no video_path".into()))?;
        Ok(self.root.join(format_path(t, &self.fields(episode))?))
    }

    /// Reads an episode's frame table.
    pub fn table(&self, episode: usize) -> Result<EpisodeTable> {
        let is_image = self.info.features.get(&self.camera).is_some_and(|f| f.dtype == "image");
        read_episode_table(&self.table_path(episode)?, &self.cfg.action_key, is_image.then_some(self.camera.as_str()))
    }
}

impl ClipDataset for LeRobotDataset {
    fn len(&self) -> usize {
        self.info.total_episodes
    }

    fn get(&self, episode: usize) -> Result<Clip> {
        if episode >= self.len() {
            return Err(Error::Invalid(format!("episode {episode} out of range")));
        }
        let spec = &self.cfg.spec;
        let table = self.table(episode)?;
        let id = format!("{} episode {episode}", self.root.display());
        let idx = spec.sample_indices(0, table.len, self.info.fps, &id)?;
        let mut clip = if table.images.is_empty() {
            let mut c = read_video_ffmpeg(&self.video_path(episode)?, spec, &self.cfg.ffmpeg)?;
            c.id = id;
            c
        } else {
            let frames = idx
                .iter()
                .map(|&i| decode_image(&table.images[i], &format!("{id} frame {i}")))
                .collect::<Result<Vec<_>>>()?;
            clip_from_frames(&frames, spec, id)?
        };
        if table.action_dim > 0 {
            let d = table.action_dim;
            let acts = idx.iter().flat_map(|&i| table.actions[i * d..(i + 1) * d].iter().copied()).collect();
            clip = clip.with_actions(acts, d)?;
        }
        Ok(clip)
    }
}

/// Writes a LeRobot v2.0 episode table with `frame_index`, `timestamp`, `action` (list<float>) and
/// optionally an image struct column (tests, benches, converters).
pub fn write_episode_table(
    path: &Path,
    fps: f32,
    actions: &[Vec<f32>],
    images: Option<(&str, &[Vec<u8>])>,
) -> Result<()> {
    use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let what = path.display().to_string();
    let pq = |e: parquet::errors::ParquetError| Error::malformed(&what, format!("parquet write: {e}"));
    let mut msg = String::from(
        "message schema { REQUIRED INT64 frame_index; REQUIRED FLOAT timestamp; \
         OPTIONAL group action (LIST) { REPEATED group list { OPTIONAL FLOAT element; } }",
    );
    if let Some((key, _)) = images {
        msg.push_str(&format!(
            " OPTIONAL group {key} {{ OPTIONAL BYTE_ARRAY bytes; OPTIONAL BYTE_ARRAY path (UTF8); }}"
        ));
    }
    msg.push_str(" }");
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(&msg).map_err(pq)?);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = SerializedFileWriter::new(file, schema, std::sync::Arc::new(WriterProperties::builder().build()))
        .map_err(pq)?;
    let n = actions.len();
    let mut rg = w.next_row_group().map_err(pq)?;
    let mut col_index = 0;
    while let Some(mut col) = rg.next_column().map_err(pq)? {
        match col_index {
            0 => {
                let v: Vec<i64> = (0..n as i64).collect();
                col.typed::<Int64Type>().write_batch(&v, None, None).map_err(pq)?;
            }
            1 => {
                let v: Vec<f32> = (0..n).map(|i| i as f32 / fps).collect();
                col.typed::<FloatType>().write_batch(&v, None, None).map_err(pq)?;
            }
            2 => {
                // Levels of a nullable list of nullable floats: def 3 = value present; rep 1 = same row.
                let (mut vals, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                for row in actions {
                    for (j, &x) in row.iter().enumerate() {
                        vals.push(x);
                        def.push(3);
                        rep.push(if j == 0 { 0 } else { 1 });
                    }
                }
                col.typed::<FloatType>().write_batch(&vals, Some(&def), Some(&rep)).map_err(pq)?;
            }
            3 => {
                let imgs = images.map(|(_, i)| i).unwrap_or(&[]);
                let vals: Vec<ByteArray> = imgs.iter().map(|b| ByteArray::from(b.clone())).collect();
                col.typed::<ByteArrayType>().write_batch(&vals, Some(&vec![2; vals.len()]), None).map_err(pq)?;
            }
            _ => {
                let vals: Vec<ByteArray> =
                    (0..n).map(|i| ByteArray::from(format!("frame_{i:06}.png").as_str())).collect();
                col.typed::<ByteArrayType>().write_batch(&vals, Some(&vec![2; n]), None).map_err(pq)?;
            }
        }
        col.close().map_err(pq)?;
        col_index += 1;
    }
    rg.close().map_err(pq)?;
    w.close().map_err(pq)?;
    Ok(())
}

/// The `info.json` of a v2.0 dataset with one camera (`dtype` `video` or `image`) and an action of `dim`.
pub fn info_json(fps: f32, episodes: usize, camera: &str, dtype: &str, dim: usize, hw: (usize, usize)) -> String {
    let mut features = serde_json::json!({
        "action": {"dtype": "float32", "shape": [dim]},
        "frame_index": {"dtype": "int64", "shape": [1]},
        "timestamp": {"dtype": "float32", "shape": [1]},
    });
    features[camera] =
        serde_json::json!({"dtype": dtype, "shape": [hw.0, hw.1, 3], "names": ["height", "width", "channel"]});
    serde_json::json!({
        "codebase_version": "v2.0",
        "robot_type": "synthetic",
        "fps": fps,
        "total_episodes": episodes,
        "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(v: u8) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(24, 16, image::Rgb([v, 3, 4]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// Episode e: n frames with red = 10 * frame + e, action [frame, e].
    fn write_dataset(root: &Path, episodes: usize, n: usize) {
        std::fs::create_dir_all(root.join("meta")).unwrap();
        std::fs::write(
            root.join("meta/info.json"),
            info_json(16.0, episodes, "observation.image", "image", 2, (16, 24)),
        )
        .unwrap();
        for e in 0..episodes {
            let actions: Vec<Vec<f32>> = (0..n).map(|i| vec![i as f32, e as f32]).collect();
            let imgs: Vec<Vec<u8>> = (0..n).map(|i| png((10 * i + e) as u8)).collect();
            let p = root.join(format!("data/chunk-000/episode_{e:06}.parquet"));
            write_episode_table(&p, 16.0, &actions, Some(("observation.image", &imgs))).unwrap();
        }
    }

    #[test]
    fn python_format_strings() {
        let f =
            [("episode_chunk", "0".to_string()), ("episode_index", "42".to_string()), ("video_key", "cam".to_string())];
        let p =
            format_path("videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4", &f).unwrap();
        assert_eq!(p, "videos/chunk-000/cam/episode_000042.mp4");
        assert!(format_path("{nope}", &f).is_err());
        assert!(format_path("{episode_index", &f).is_err());
    }

    #[test]
    fn image_dataset_reads_frames_and_actions() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, 7);
        let ds = LeRobotDataset::open(dir.path(), LeRobotConfig::new(ClipSpec::tiny())).unwrap();
        assert_eq!(ds.len(), 2);
        let table = ds.table(1).unwrap();
        assert_eq!((table.len, table.action_dim, table.images.len()), (7, 2, 7));
        let clip = ds.get(1).unwrap();
        let reds: Vec<u8> = (0..5).map(|t| clip.frames[t * 16 * 24 * 3]).collect();
        assert_eq!(reds, vec![1, 11, 21, 31, 41]);
        assert_eq!(clip.actions.unwrap(), vec![0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 3.0, 1.0, 4.0, 1.0]);
    }

    #[test]
    fn video_dataset_goes_through_ffmpeg() {
        let opts = FfmpegOptions::default();
        if !crate::readers::video::ffmpeg_available(&opts) {
            eprintln!("SKIPPED: no ffmpeg binary (apt-get install ffmpeg)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("meta")).unwrap();
        std::fs::write(root.join("meta/info.json"), info_json(16.0, 1, "observation.images.top", "video", 2, (16, 24)))
            .unwrap();
        let frames = root.join("png");
        std::fs::create_dir_all(&frames).unwrap();
        for i in 0..6 {
            std::fs::write(frames.join(format!("f_{i:03}.png")), png(40 * i as u8)).unwrap();
        }
        let vdir = root.join("videos/chunk-000/observation.images.top");
        std::fs::create_dir_all(&vdir).unwrap();
        let ok = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-framerate", "16", "-i"])
            .arg(frames.join("f_%03d.png"))
            .args(["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"])
            .arg(vdir.join("episode_000000.mp4"))
            .status()
            .unwrap();
        assert!(ok.success());
        let actions: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32, 0.5]).collect();
        write_episode_table(&root.join("data/chunk-000/episode_000000.parquet"), 16.0, &actions, None).unwrap();
        let ds = LeRobotDataset::open(root, LeRobotConfig::new(ClipSpec::tiny())).unwrap();
        let clip = ds.get(0).unwrap();
        let reds: Vec<u8> = (0..5).map(|t| clip.frames[t * 16 * 24 * 3]).collect();
        assert_eq!(reds, vec![0, 40, 80, 120, 160]);
        assert_eq!(clip.action_dim, 2);
    }

    #[test]
    fn malformed_lerobot_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, 7);
        let cfg = LeRobotConfig::new(ClipSpec::tiny());
        // Missing action column.
        let ds =
            LeRobotDataset::open(dir.path(), LeRobotConfig { action_key: "actions".into(), ..cfg.clone() }).unwrap();
        assert!(matches!(ds.get(0), Err(Error::MissingKey { .. })));
        // Truncated parquet file (the footer is at the end).
        let p = dir.path().join("data/chunk-000/episode_000001.parquet");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 20]).unwrap();
        let ds = LeRobotDataset::open(dir.path(), cfg.clone()).unwrap();
        let err = ds.get(1).unwrap_err().to_string();
        assert!(err.contains("episode_000001.parquet"), "{err}");
        // Corrupt data pages behind an intact footer.
        let mut bad = bytes.clone();
        for b in &mut bad[4..bytes.len() / 2] {
            *b ^= 0x5a;
        }
        std::fs::write(&p, &bad).unwrap();
        assert!(ds.get(1).is_err());
        // Wrong dtype: the action column holds ints.
        let wrong = dir.path().join("wrong.parquet");
        write_episode_table(&wrong, 16.0, &[vec![1.0]], None).unwrap();
        assert!(read_episode_table(&wrong, "timestamp", None).is_ok());
        assert!(matches!(read_episode_table(&wrong, "frame_index", None), Err(Error::Mismatch { .. })));
        assert!(matches!(read_episode_table(&wrong, "timestamp", Some("frame_index")), Err(Error::Mismatch { .. })));
        // info.json problems.
        let info = dir.path().join("meta/info.json");
        std::fs::write(
            &info,
            r#"{"codebase_version": "v3.0", "fps": 30, "total_episodes": 1, "data_path": "x", "features": {}}"#,
        )
        .unwrap();
        let err = LeRobotDataset::open(dir.path(), cfg.clone()).err().unwrap().to_string();
        assert!(err.contains("v3.0"), "{err}");
        std::fs::write(&info, r#"{"codebase_version": "v2.0"}"#).unwrap();
        assert!(LeRobotDataset::open(dir.path(), cfg.clone()).is_err());
        std::fs::write(
            &info,
            r#"{"codebase_version": "v2.0", "fps": 30, "total_episodes": 1, "data_path": "x", "features": {}}"#,
        )
        .unwrap();
        assert!(matches!(LeRobotDataset::open(dir.path(), cfg), Err(Error::MissingKey { .. })));
    }
}

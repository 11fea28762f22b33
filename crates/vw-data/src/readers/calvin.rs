//! CALVIN: a split folder (`training/`, `validation/`) of one-frame `episode_XXXXXXX.npz` files with
//! `rgb_static` (200×200×3 u8), `rgb_gripper` (84×84×3 u8), `actions` / `rel_actions` (7 f64) and
//! `robot_obs` (15 f64); `ep_start_end_ids.npy`, an (N, 2) integer array of inclusive frame ranges;
//! and `lang_annotations/auto_lang_ann.npy`, a pickled dict whose `info.indx` lists annotated
//! (start, end) windows and `language.ann` their instructions.
//!
//! Clips are the language windows when the annotation file is present and readable (and
//! `use_language` is on), otherwise consecutive non-overlapping windows inside each episode range.

use crate::dataset::{Clip, ClipDataset, ClipSpec};
use crate::readers::npy::{read_npy, DType, NpyArray, Npz};
use crate::readers::pickle::{parse_pickle, Value};
use crate::readers::video::clip_from_frames;
use crate::{Error, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Which parts of CALVIN to read.
#[derive(Clone, Debug)]
pub struct CalvinConfig {
    /// The clip shape.
    pub spec: ClipSpec,
    /// Camera key: `rgb_static` or `rgb_gripper`.
    pub camera: String,
    /// Action key: `rel_actions` (normalised deltas) or `actions` (absolute).
    pub action_key: String,
    /// Recording rate (CALVIN's simulator steps at 30 Hz).
    pub source_fps: f32,
    /// Use the language-annotated windows as clips when `auto_lang_ann.npy` exists.
    pub use_language: bool,
}

impl CalvinConfig {
    /// Static camera, relative actions, 30 Hz, language windows.
    pub fn new(spec: ClipSpec) -> Self {
        Self {
            spec,
            camera: "rgb_static".into(),
            action_key: "rel_actions".into(),
            source_fps: 30.0,
            use_language: true,
        }
    }
}

/// One CALVIN frame.
#[derive(Clone, Debug, PartialEq)]
pub struct CalvinFrame {
    /// Static camera image.
    pub rgb_static: RgbImage,
    /// Gripper camera image.
    pub rgb_gripper: RgbImage,
    /// Absolute action (7).
    pub actions: Vec<f32>,
    /// Relative action (7).
    pub rel_actions: Vec<f32>,
    /// Proprioception (15).
    pub robot_obs: Vec<f32>,
}

/// A clip window: inclusive frame range plus its instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct CalvinWindow {
    /// First frame id.
    pub start: usize,
    /// Last frame id (inclusive).
    pub end: usize,
    /// Instruction of a language window.
    pub language: Option<String>,
}

/// The path of frame `id` in a split folder.
pub fn frame_path(dir: &Path, id: usize) -> PathBuf {
    dir.join(format!("episode_{id:07}.npz"))
}

fn npy_image(arr: NpyArray, what: &str, key: &str) -> Result<RgbImage> {
    let found = format!("{:?} {:?}", arr.dtype, arr.shape);
    if arr.dtype != DType::U8 || arr.shape.len() != 3 || arr.shape[2] != 3 {
        return Err(Error::Mismatch { what: what.into(), key: key.into(), expected: "U8 [H, W, 3]".into(), found });
    }
    let (h, w) = (arr.shape[0] as u32, arr.shape[1] as u32);
    RgbImage::from_raw(w, h, arr.data).ok_or_else(|| Error::malformed(what, format!("{key}: bad image buffer")))
}

fn vector(arr: NpyArray, what: &str, key: &str, len: usize) -> Result<Vec<f32>> {
    let found = format!("{:?} {:?}", arr.dtype, arr.shape);
    let v = arr.to_f32().filter(|v| arr.shape.len() == 1 && v.len() == len);
    v.ok_or_else(|| Error::Mismatch { what: what.into(), key: key.into(), expected: format!("numeric [{len}]"), found })
}

/// Reads one frame file.
pub fn read_frame(path: &Path) -> Result<CalvinFrame> {
    let what = path.display().to_string();
    let mut npz = Npz::open(path)?;
    Ok(CalvinFrame {
        rgb_static: npy_image(npz.get("rgb_static")?, &what, "rgb_static")?,
        rgb_gripper: npy_image(npz.get("rgb_gripper")?, &what, "rgb_gripper")?,
        actions: vector(npz.get("actions")?, &what, "actions", 7)?,
        rel_actions: vector(npz.get("rel_actions")?, &what, "rel_actions", 7)?,
        robot_obs: vector(npz.get("robot_obs")?, &what, "robot_obs", 15)?,
    })
}

/// Reads `ep_start_end_ids.npy`: inclusive (start, end) frame ranges.
pub fn read_episode_ranges(path: &Path) -> Result<Vec<(usize, usize)>> {
    let what = path.display().to_string();
    let arr = read_npy(path)?;
    let found = format!("{:?} {:?}", arr.dtype, arr.shape);
    let ids = arr.to_i64().filter(|_| arr.shape.len() == 2 && arr.shape[1] == 2);
    let ids = ids.ok_or_else(|| Error::Mismatch {
        what: what.clone(),
        key: "ep_start_end_ids".into(),
        expected: "integer [N, 2]".into(),
        found,
    })?;
    ids.chunks_exact(2)
        .map(|c| match (usize::try_from(c[0]), usize::try_from(c[1])) {
            (Ok(s), Ok(e)) if s <= e => Ok((s, e)),
            _ => Err(Error::malformed(&what, format!("bad episode range [{}, {}]", c[0], c[1]))),
        })
        .collect()
}

/// Reads `auto_lang_ann.npy`: (start, end, instruction) per annotated window.
pub fn read_language(path: &Path) -> Result<Vec<CalvinWindow>> {
    let what = path.display().to_string();
    let arr = read_npy(path)?;
    if arr.dtype != DType::Object {
        return Err(Error::Mismatch {
            what,
            key: "auto_lang_ann".into(),
            expected: "a pickled dict".into(),
            found: format!("{:?}", arr.dtype),
        });
    }
    let value = parse_pickle(&arr.data, &what)?;
    // np.save(dict) pickles a 0-d object array holding the dict; accept a bare pickled dict too.
    let dict = match value.ndarray_items() {
        Some(items) => items.first().cloned().unwrap_or(Value::None),
        None => value,
    };
    let missing = |key: &str| Error::MissingKey { what: what.clone(), key: key.into() };
    let indx =
        dict.get("info").and_then(|i| i.get("indx")).and_then(Value::as_seq).ok_or_else(|| missing("info.indx"))?;
    let ann = dict
        .get("language")
        .and_then(|l| l.get("ann"))
        .and_then(Value::as_seq)
        .ok_or_else(|| missing("language.ann"))?;
    if indx.len() != ann.len() {
        return Err(Error::malformed(&what, format!("{} windows but {} instructions", indx.len(), ann.len())));
    }
    indx.iter()
        .zip(ann)
        .enumerate()
        .map(|(i, (w, a))| {
            let pair = w.as_seq().filter(|p| p.len() == 2);
            let se =
                pair.and_then(|p| Some((usize::try_from(p[0].as_int()?).ok()?, usize::try_from(p[1].as_int()?).ok()?)));
            let (start, end) = se
                .filter(|(s, e)| s <= e)
                .ok_or_else(|| Error::malformed(&what, format!("info.indx[{i}] is not a (start, end) pair")))?;
            let language =
                a.as_str().ok_or_else(|| Error::malformed(&what, format!("language.ann[{i}] is not a string")))?;
            Ok(CalvinWindow { start, end, language: Some(language.to_string()) })
        })
        .collect()
}

/// A CALVIN split as clips.
pub struct CalvinDataset {
    dir: PathBuf,
    episodes: Vec<(usize, usize)>,
    windows: Vec<CalvinWindow>,
    cfg: CalvinConfig,
}

impl CalvinDataset {
    /// Opens a split folder (the one holding `ep_start_end_ids.npy`).
    pub fn open(dir: &Path, cfg: CalvinConfig) -> Result<Self> {
        let episodes = read_episode_ranges(&dir.join("ep_start_end_ids.npy"))?;
        let lang = dir.join("lang_annotations").join("auto_lang_ann.npy");
        let windows = if cfg.use_language && lang.is_file() {
            read_language(&lang)?
        } else {
            let span = cfg.spec.source_span(cfg.source_fps).max(1);
            episodes
                .iter()
                .flat_map(|&(s, e)| {
                    (s..=e).step_by(span).filter(move |&w| w + span - 1 <= e).map(move |w| CalvinWindow {
                        start: w,
                        end: w + span - 1,
                        language: None,
                    })
                })
                .collect()
        };
        Ok(Self { dir: dir.to_path_buf(), episodes, windows, cfg })
    }

    /// Inclusive frame ranges of the recorded episodes.
    pub fn episodes(&self) -> &[(usize, usize)] {
        &self.episodes
    }

    /// The clip windows.
    pub fn windows(&self) -> &[CalvinWindow] {
        &self.windows
    }

    /// Streams the frames of episode `index` in order.
    pub fn episode_frames(&self, index: usize) -> impl Iterator<Item = Result<CalvinFrame>> + '_ {
        let (s, e) = self.episodes.get(index).copied().unwrap_or((1, 0));
        (s..=e).map(move |id| read_frame(&frame_path(&self.dir, id)))
    }
}

impl ClipDataset for CalvinDataset {
    fn len(&self) -> usize {
        self.windows.len()
    }

    fn get(&self, index: usize) -> Result<Clip> {
        let w = self.windows.get(index).ok_or_else(|| Error::Invalid(format!("clip {index} out of range")))?;
        let id = format!("{} frames {}..={}", self.dir.display(), w.start, w.end);
        let idx = self.cfg.spec.sample_indices(0, w.end - w.start + 1, self.cfg.source_fps, &id)?;
        let (mut frames, mut actions) = (Vec::with_capacity(idx.len()), Vec::with_capacity(idx.len() * 7));
        for i in idx {
            let path = frame_path(&self.dir, w.start + i);
            let what = path.display().to_string();
            let mut npz = Npz::open(&path)?;
            frames.push(npy_image(npz.get(&self.cfg.camera)?, &what, &self.cfg.camera)?);
            actions.extend(vector(npz.get(&self.cfg.action_key)?, &what, &self.cfg.action_key, 7)?);
        }
        let mut clip = clip_from_frames(&frames, &self.cfg.spec, id)?.with_actions(actions, 7)?;
        clip.language = w.language.clone();
        Ok(clip)
    }
}

/// Writes a synthetic CALVIN split (tests, benches): frame `id` has red = id % 256 and actions = id.
pub fn write_synthetic(dir: &Path, ranges: &[(usize, usize)], size: usize) -> Result<()> {
    use crate::readers::npy::write_npz;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let f64s = |v: Vec<f64>| NpyArray {
        shape: vec![v.len()],
        dtype: DType::F64,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    for &(s, e) in ranges {
        for id in s..=e {
            let img = |n: usize| NpyArray {
                shape: vec![n, n, 3],
                dtype: DType::U8,
                data: (0..n * n).flat_map(|p| [(id % 256) as u8, (p % 256) as u8, 9]).collect(),
            };
            let (st, gr) = (img(size), img(size / 2 + 1));
            let act = f64s(vec![id as f64; 7]);
            let rel = f64s(vec![-(id as f64); 7]);
            let obs = f64s(vec![0.25; 15]);
            write_npz(
                &frame_path(dir, id),
                &[
                    ("rgb_static", &st),
                    ("rgb_gripper", &gr),
                    ("actions", &act),
                    ("rel_actions", &rel),
                    ("robot_obs", &obs),
                ],
            )?;
        }
    }
    let ids: Vec<i64> = ranges.iter().flat_map(|&(s, e)| [s as i64, e as i64]).collect();
    let arr = NpyArray {
        shape: vec![ranges.len(), 2],
        dtype: DType::I64,
        data: ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let p = dir.join("ep_start_end_ids.npy");
    std::fs::write(&p, arr.to_npy_bytes()).map_err(|e| Error::io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CalvinConfig {
        // 5 frames at 15 fps from 30 Hz: every other frame, a span of 9.
        CalvinConfig { spec: ClipSpec { fps: 15.0, ..ClipSpec::tiny() }, ..CalvinConfig::new(ClipSpec::tiny()) }
    }

    /// A protocol-2 pickle of {'info': {'indx': [(s, e), ...]}, 'language': {'ann': [...]}}.
    fn lang_pickle(windows: &[(usize, usize, &str)]) -> Vec<u8> {
        let mut p = b"\x80\x02}(".to_vec();
        let s = |p: &mut Vec<u8>, t: &str| {
            p.push(b'X');
            p.extend((t.len() as u32).to_le_bytes());
            p.extend(t.as_bytes());
        };
        s(&mut p, "info");
        p.extend(b"}");
        s(&mut p, "indx");
        p.extend(b"](");
        for &(a, b, _) in windows {
            p.push(b'J');
            p.extend((a as i32).to_le_bytes());
            p.push(b'J');
            p.extend((b as i32).to_le_bytes());
            p.push(0x86);
        }
        p.extend(b"es");
        s(&mut p, "language");
        p.extend(b"}");
        s(&mut p, "ann");
        p.extend(b"](");
        for &(_, _, t) in windows {
            s(&mut p, t);
        }
        p.extend(b"esu.");
        p
    }

    fn write_lang(dir: &Path, pickle: Vec<u8>) {
        std::fs::create_dir_all(dir.join("lang_annotations")).unwrap();
        let arr = NpyArray { shape: vec![], dtype: DType::Object, data: pickle };
        std::fs::write(dir.join("lang_annotations/auto_lang_ann.npy"), arr.to_npy_bytes()).unwrap();
    }

    #[test]
    fn windows_without_language() {
        let dir = tempfile::tempdir().unwrap();
        write_synthetic(dir.path(), &[(100, 119), (120, 127)], 8).unwrap();
        let ds = CalvinDataset::open(dir.path(), cfg()).unwrap();
        assert_eq!(ds.episodes(), &[(100, 119), (120, 127)]);
        // Span 9: windows at 100 and 109 in the first episode; the second (8 frames) is too short.
        assert_eq!(ds.windows().iter().map(|w| (w.start, w.end)).collect::<Vec<_>>(), vec![(100, 108), (109, 117)]);
        let clip = ds.get(1).unwrap();
        let reds: Vec<u8> = (0..5).map(|t| clip.frames[t * 16 * 24 * 3]).collect();
        assert_eq!(reds, vec![109, 111, 113, 115, 117]);
        assert_eq!(clip.actions.as_ref().unwrap()[7..14], [-111.0; 7]);
        let frames: Vec<CalvinFrame> = ds.episode_frames(1).collect::<Result<_>>().unwrap();
        assert_eq!(frames.len(), 8);
        assert_eq!((frames[0].actions[0], frames[0].rgb_gripper.width(), frames[0].robot_obs.len()), (120.0, 5, 15));
    }

    #[test]
    fn language_windows_from_the_pickled_annotations() {
        let dir = tempfile::tempdir().unwrap();
        write_synthetic(dir.path(), &[(0, 29)], 8).unwrap();
        write_lang(dir.path(), lang_pickle(&[(2, 12, "open the drawer"), (15, 29, "push the block left")]));
        let ds = CalvinDataset::open(dir.path(), cfg()).unwrap();
        assert_eq!(ds.len(), 2);
        let clip = ds.get(1).unwrap();
        assert_eq!(clip.language.as_deref(), Some("push the block left"));
        assert_eq!(clip.frames[0], 15);
        let off = CalvinDataset::open(dir.path(), CalvinConfig { use_language: false, ..cfg() }).unwrap();
        assert_eq!(off.len(), 3);
    }

    #[test]
    fn malformed_calvin_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_synthetic(dir.path(), &[(0, 9)], 8).unwrap();
        let ds = CalvinDataset::open(dir.path(), cfg()).unwrap();
        // Wrong dtype: a float image.
        let f = NpyArray { shape: vec![8, 8, 3], dtype: DType::F32, data: vec![0; 8 * 8 * 3 * 4] };
        let a = NpyArray { shape: vec![7], dtype: DType::F64, data: vec![0; 56] };
        crate::readers::npy::write_npz(&frame_path(dir.path(), 2), &[("rgb_static", &f), ("rel_actions", &a)]).unwrap();
        let err = ds.get(0).unwrap_err().to_string();
        assert!(err.contains("episode_0000002.npz") && err.contains("expected U8"), "{err}");
        // Missing key.
        crate::readers::npy::write_npz(&frame_path(dir.path(), 2), &[("rel_actions", &a)]).unwrap();
        assert!(matches!(ds.get(0), Err(Error::MissingKey { .. })));
        assert!(matches!(read_frame(&frame_path(dir.path(), 2)), Err(Error::MissingKey { .. })));
        // Truncated npz.
        let bytes = std::fs::read(frame_path(dir.path(), 4)).unwrap();
        std::fs::write(frame_path(dir.path(), 2), &bytes[..bytes.len() - 30]).unwrap();
        assert!(ds.get(0).is_err());
        // Missing frame file.
        std::fs::remove_file(frame_path(dir.path(), 2)).unwrap();
        assert!(matches!(ds.get(0), Err(Error::Io { .. })));
        // Float episode ranges.
        let bad = NpyArray {
            shape: vec![1, 2],
            dtype: DType::F64,
            data: [0f64, 9.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        std::fs::write(dir.path().join("ep_start_end_ids.npy"), bad.to_npy_bytes()).unwrap();
        assert!(matches!(CalvinDataset::open(dir.path(), cfg()), Err(Error::Mismatch { .. })));
        // Language file: truncated pickle, missing key.
        write_synthetic(dir.path(), &[(0, 9)], 8).unwrap();
        let good = lang_pickle(&[(0, 9, "x")]);
        write_lang(dir.path(), good[..good.len() - 3].to_vec());
        assert!(CalvinDataset::open(dir.path(), cfg()).is_err());
        write_lang(dir.path(), b"\x80\x02}.".to_vec());
        assert!(matches!(CalvinDataset::open(dir.path(), cfg()), Err(Error::MissingKey { .. })));
    }
}

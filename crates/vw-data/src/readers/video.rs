//! Video clips: image-sequence folders, GIFs, and `.mp4` (or any container ffmpeg reads).
//!
//! Every path ends in the same place: `num_frames` frames sampled at the target fps (nearest source
//! frame, as ffmpeg's `fps` filter), each scaled to cover the target size and centre-cropped.
//!
//! mp4 is decoded by an `ffmpeg` child process that writes raw rgb24 frames into a pipe, with the
//! fps/scale/crop done in its filter graph (docs/data.md says why). Image sequences and GIFs are pure Rust.

use crate::dataset::{Clip, ClipDataset, ClipSpec};
use crate::{Error, Result};
use image::{imageops, RgbImage};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Scales `img` to cover `width`×`height` (aspect kept) and crops the centre; bilinear (triangle) filter.
pub fn fit_frame(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w, h) = (width as u32, height as u32);
    if img.width() == w && img.height() == h {
        return img.clone();
    }
    // Crop first (in source pixels, to the target aspect), then resize: less work than resize-then-crop.
    let (sw, sh) = (img.width() as f64, img.height() as f64);
    let target = width as f64 / height as f64;
    let (cw, ch) = if sw / sh > target { ((sh * target).round(), sh) } else { (sw, (sw / target).round()) };
    let (cw, ch) = ((cw as u32).clamp(1, img.width()), (ch as u32).clamp(1, img.height()));
    let (x0, y0) = ((img.width() - cw) / 2, (img.height() - ch) / 2);
    let cropped = imageops::crop_imm(img, x0, y0, cw, ch).to_image();
    if cw == w && ch == h {
        return cropped;
    }
    imageops::resize(&cropped, w, h, imageops::FilterType::Triangle)
}

/// Decodes an encoded PNG/JPEG (or any format the `image` crate was built with) into RGB.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes).map_err(|e| Error::malformed(what, format!("image: {e}")))?;
    Ok(img.to_rgb8())
}

/// Concatenates fitted frames into a clip.
pub fn clip_from_frames(frames: &[RgbImage], spec: &ClipSpec, id: String) -> Result<Clip> {
    let mut data = Vec::with_capacity(spec.num_frames * spec.height * spec.width * 3);
    for f in frames {
        data.extend_from_slice(fit_frame(f, spec.width, spec.height).as_raw());
    }
    Clip::new(data, frames.len(), spec.height, spec.width, id)
}

const FRAME_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

/// A folder of numbered frames (`frame_00000.png ...`), with an optional `episode.json` sidecar.
#[derive(Clone, Debug)]
pub struct ImageSequence {
    /// The folder.
    pub dir: PathBuf,
    /// Frame files in numeric order.
    pub frames: Vec<PathBuf>,
    /// Source frame rate: the sidecar's `fps` when present, else the caller's default.
    pub fps: Option<f32>,
    /// The sidecar's instruction: `language`, `instruction`, or CraftWorld's `recipe.structure`.
    pub language: Option<String>,
    /// Per-source-frame actions from the sidecar's `truth[i].action` (numeric fields in key order;
    /// CraftWorld: `dx, dy, grip`), with the row width.
    pub actions: Option<(Vec<f32>, usize)>,
}

fn frame_number(p: &Path) -> Option<u64> {
    let stem = p.file_stem()?.to_str()?;
    let digits: String = stem.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

impl ImageSequence {
    /// Lists the frames of `dir`; errors when it has none or a sidecar is not valid JSON.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut frames = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = entry.map_err(|e| Error::io(dir, e))?.path();
            if p.is_file() && has_ext(&p, &FRAME_EXTS) {
                frames.push(p);
            }
        }
        if frames.is_empty() {
            return Err(Error::malformed(dir.display(), "no PNG/JPEG frames in the folder"));
        }
        // Numeric order (frame_2 before frame_10), ties by name.
        frames.sort_by(|a, b| (frame_number(a), a).cmp(&(frame_number(b), b)));
        let sidecar = dir.join("episode.json");
        let (mut fps, mut language, mut actions) = (None, None, None);
        if sidecar.is_file() {
            let text = std::fs::read_to_string(&sidecar).map_err(|e| Error::io(&sidecar, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::malformed(sidecar.display(), e))?;
            fps = v.get("fps").and_then(|f| f.as_f64()).map(|f| f as f32);
            language = ["language", "instruction"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|s| s.as_str()).map(str::to_string))
                .or_else(|| v.pointer("/recipe/structure").and_then(|s| s.as_str()).map(str::to_string));
            actions = sidecar_actions(&v, frames.len()).map_err(|e| Error::malformed(sidecar.display(), e))?;
        }
        Ok(Self { dir: dir.to_path_buf(), frames, fps, language, actions })
    }

    /// Decodes the clip starting at frame `start`; `default_fps` applies when the sidecar has no `fps`.
    pub fn read_clip(&self, spec: &ClipSpec, start: usize, default_fps: f32) -> Result<Clip> {
        let what = self.dir.display().to_string();
        let fps = self.fps.unwrap_or(default_fps);
        let idx = spec.sample_indices(start, self.frames.len(), fps, &what)?;
        let mut frames = Vec::with_capacity(idx.len());
        let mut last: Option<(usize, RgbImage)> = None;
        for i in idx {
            // Sampling can repeat a frame (upsampling, padding): decode it once.
            let img = match &last {
                Some((j, img)) if *j == i => img.clone(),
                _ => {
                    let p = &self.frames[i];
                    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
                    fit_frame(&decode_image(&bytes, &p.display().to_string())?, spec.width, spec.height)
                }
            };
            last = Some((i, img.clone()));
            frames.push(img);
        }
        let mut clip = clip_from_frames(&frames, spec, what)?;
        clip.language = self.language.clone();
        if let Some((acts, dim)) = &self.actions {
            let rows = spec.sample_indices(start, self.frames.len(), fps, &self.dir.display().to_string())?;
            let picked = rows.iter().flat_map(|&i| acts[i * dim..(i + 1) * dim].iter().copied()).collect();
            clip = clip.with_actions(picked, *dim)?;
        }
        Ok(clip)
    }
}

/// `truth[i].action` of a sidecar as (rows, width); `None` when the sidecar has no per-frame actions.
fn sidecar_actions(v: &serde_json::Value, frames: usize) -> std::result::Result<Option<(Vec<f32>, usize)>, String> {
    let Some(truth) = v.get("truth").and_then(|t| t.as_array()) else { return Ok(None) };
    if truth.len() != frames {
        return Err(format!("`truth` has {} entries for {frames} frames", truth.len()));
    }
    let mut out = Vec::new();
    let mut dim = None;
    for (i, t) in truth.iter().enumerate() {
        let Some(action) = t.get("action").and_then(|a| a.as_object()) else { return Ok(None) };
        let row: Vec<f32> = action.values().filter_map(|x| x.as_f64()).map(|x| x as f32).collect();
        if *dim.get_or_insert(row.len()) != row.len() {
            return Err(format!("truth[{i}].action has {} numbers, earlier rows {}", row.len(), dim.unwrap_or(0)));
        }
        out.extend(row);
    }
    Ok(dim.filter(|&d| d > 0).map(|d| (out, d)))
}

/// Decodes a GIF clip: frames are composited by the decoder and sampled by their display times.
pub fn read_gif(path: &Path, spec: &ClipSpec) -> Result<Clip> {
    use image::AnimationDecoder;
    let what = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let dec = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(f))
        .map_err(|e| Error::malformed(&what, format!("gif: {e}")))?;
    // Display start time (ms) of each frame; only frames some output time lands on are kept.
    let mut starts = Vec::new();
    let mut frames: Vec<RgbImage> = Vec::new();
    let mut t = 0f64;
    let end_needed = (spec.num_frames.saturating_sub(1)) as f64 * 1000.0 / spec.fps as f64;
    for frame in dec.into_frames() {
        let frame = frame.map_err(|e| Error::malformed(&what, format!("gif frame {}: {e}", frames.len())))?;
        let (num, den) = frame.delay().numer_denom_ms();
        // Browsers treat delays under 20 ms as 100 ms; so do we, or "0-delay" GIFs would collapse.
        let mut delay = num as f64 / den.max(1) as f64;
        if delay < 20.0 {
            delay = 100.0;
        }
        starts.push(t);
        frames.push(image::DynamicImage::ImageRgba8(frame.into_buffer()).to_rgb8());
        t += delay;
        if t > end_needed + 1e-6 {
            break;
        }
    }
    if frames.is_empty() {
        return Err(Error::malformed(&what, "gif has no frames"));
    }
    let mut picked = Vec::with_capacity(spec.num_frames);
    for k in 0..spec.num_frames {
        let tk = k as f64 * 1000.0 / spec.fps as f64;
        if tk >= t - 1e-6 && !spec.pad_short {
            return Err(Error::ClipTooShort { what, needed: spec.num_frames, available: picked.len() });
        }
        // The frame on screen at time tk.
        let i = starts.partition_point(|&s| s <= tk + 1e-6).saturating_sub(1);
        picked.push(frames[i].clone());
    }
    clip_from_frames(&picked, spec, what)
}

/// How the `ffmpeg` child is run.
#[derive(Clone, Debug, PartialEq)]
pub struct FfmpegOptions {
    /// The binary (default: `$VW_FFMPEG`, else `ffmpeg` on `PATH`).
    pub binary: PathBuf,
    /// Decoder threads per child (0 = ffmpeg's choice); 1 when many loader workers run in parallel.
    pub threads: usize,
    /// Seconds to skip at the start of each clip.
    pub start_seconds: f64,
}

impl Default for FfmpegOptions {
    fn default() -> Self {
        let binary = std::env::var_os("VW_FFMPEG").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("ffmpeg"));
        Self { binary, threads: 0, start_seconds: 0.0 }
    }
}

/// Whether the ffmpeg binary of `opts` runs (tests skip the mp4 path without it).
pub fn ffmpeg_available(opts: &FfmpegOptions) -> bool {
    Command::new(&opts.binary)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running ffmpeg decode of one file, yielding rgb24 frames of the spec's size.
pub struct FfmpegFrames {
    child: Child,
    stdout: std::process::ChildStdout,
    frame_bytes: usize,
    what: String,
    produced: usize,
    wanted: usize,
    finished: bool,
}

impl FfmpegFrames {
    /// Starts ffmpeg on `path`: sample at `spec.fps`, scale to cover, centre-crop, stop after `num_frames`.
    pub fn spawn(path: &Path, spec: &ClipSpec, opts: &FfmpegOptions) -> Result<Self> {
        let what = path.display().to_string();
        if !path.is_file() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such video file")));
        }
        let (w, h) = (spec.width, spec.height);
        let filter = format!(
            "fps={fps},scale={w}:{h}:force_original_aspect_ratio=increase:flags=bilinear,crop={w}:{h}",
            fps = spec.fps
        );
        let mut cmd = Command::new(&opts.binary);
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-threads"]).arg(opts.threads.to_string());
        if opts.start_seconds > 0.0 {
            cmd.arg("-ss").arg(format!("{}", opts.start_seconds));
        }
        cmd.arg("-i").arg(path);
        cmd.args(["-an", "-sn", "-vf", filter.as_str(), "-frames:v"]).arg(spec.num_frames.to_string());
        cmd.args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::Ffmpeg {
            what: what.clone(),
            detail: format!(
                "cannot run `{}` ({e}); install ffmpeg (apt-get install ffmpeg) or set VW_FFMPEG",
                opts.binary.display()
            ),
        })?;
        let stdout =
            child.stdout.take().ok_or_else(|| Error::Ffmpeg { what: what.clone(), detail: "no stdout".into() })?;
        Ok(Self { child, stdout, frame_bytes: w * h * 3, what, produced: 0, wanted: spec.num_frames, finished: false })
    }

    /// Reads the next frame into `buf` (resized to one frame); `Ok(false)` at the end of the video.
    pub fn read_frame(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        if self.finished || self.produced >= self.wanted {
            return Ok(false);
        }
        buf.resize(self.frame_bytes, 0);
        let mut got = 0;
        while got < self.frame_bytes {
            let n = self
                .stdout
                .read(&mut buf[got..])
                .map_err(|e| Error::Ffmpeg { what: self.what.clone(), detail: e.to_string() })?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            self.finish()?;
            return Ok(false);
        }
        if got < self.frame_bytes {
            self.finish()?;
            return Err(Error::Ffmpeg { what: self.what.clone(), detail: format!("partial frame ({got} bytes)") });
        }
        self.produced += 1;
        Ok(true)
    }

    /// Waits for the child and turns a non-zero exit into an error carrying its stderr.
    fn finish(&mut self) -> Result<()> {
        self.finished = true;
        let status = self.child.wait().map_err(|e| Error::Ffmpeg { what: self.what.clone(), detail: e.to_string() })?;
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut s) = self.child.stderr.take() {
                let _ = s.read_to_string(&mut stderr);
            }
            let stderr = stderr.trim();
            let detail = if stderr.is_empty() { format!("exited with {status}") } else { stderr.to_string() };
            return Err(Error::Ffmpeg { what: self.what.clone(), detail });
        }
        Ok(())
    }
}

impl Drop for FfmpegFrames {
    fn drop(&mut self) {
        if !self.finished {
            // We stopped reading early: the child would block on a full pipe forever.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Decodes one clip from an mp4 (or any ffmpeg-readable file) through the ffmpeg pipe.
pub fn read_video_ffmpeg(path: &Path, spec: &ClipSpec, opts: &FfmpegOptions) -> Result<Clip> {
    let what = path.display().to_string();
    let mut dec = FfmpegFrames::spawn(path, spec, opts)?;
    let frame_bytes = spec.width * spec.height * 3;
    let mut data = Vec::with_capacity(spec.num_frames * frame_bytes);
    let mut frame = Vec::new();
    let mut n = 0;
    while dec.read_frame(&mut frame)? {
        data.extend_from_slice(&frame);
        n += 1;
    }
    if n < spec.num_frames {
        if n == 0 || !spec.pad_short {
            return Err(Error::ClipTooShort { what, needed: spec.num_frames, available: n });
        }
        let last = data[(n - 1) * frame_bytes..].to_vec();
        for _ in n..spec.num_frames {
            data.extend_from_slice(&last);
        }
    }
    Clip::new(data, spec.num_frames, spec.height, spec.width, what)
}

/// One clip source inside a video folder.
#[derive(Clone, Debug)]
pub enum VideoItem {
    /// A video file decoded through ffmpeg.
    Video(PathBuf),
    /// A GIF.
    Gif(PathBuf),
    /// An image-sequence folder.
    Frames(ImageSequence),
}

impl VideoItem {
    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            VideoItem::Video(p) | VideoItem::Gif(p) => p,
            VideoItem::Frames(s) => &s.dir,
        }
    }
}

/// Configuration of a [`VideoFolder`].
#[derive(Clone, Debug)]
pub struct VideoFolderConfig {
    /// The clip shape.
    pub spec: ClipSpec,
    /// Source fps of image sequences without an `episode.json` `fps` (default: the target fps, i.e. every frame).
    pub default_fps: Option<f32>,
    /// The ffmpeg child's settings.
    pub ffmpeg: FfmpegOptions,
}

impl VideoFolderConfig {
    /// Defaults for `spec`.
    pub fn new(spec: ClipSpec) -> Self {
        Self { spec, default_fps: None, ffmpeg: FfmpegOptions::default() }
    }
}

const VIDEO_EXTS: [&str; 5] = ["mp4", "mov", "mkv", "webm", "avi"];

/// A folder of clips (the Video-CraftBench layout, or CraftWorld's output): video files, GIFs and
/// image-sequence sub-folders, one clip each, sorted by path. Nested folders are searched too.
pub struct VideoFolder {
    items: Vec<VideoItem>,
    cfg: VideoFolderConfig,
}

impl VideoFolder {
    /// Scans `root` (recursively) for clips.
    pub fn open(root: &Path, cfg: VideoFolderConfig) -> Result<Self> {
        let mut items = Vec::new();
        scan(root, &mut items)?;
        items.sort_by(|a, b| a.path().cmp(b.path()));
        if items.is_empty() {
            return Err(Error::malformed(root.display(), "no video files, GIFs or frame folders found"));
        }
        Ok(Self { items, cfg })
    }

    /// The clips found.
    pub fn items(&self) -> &[VideoItem] {
        &self.items
    }

    /// Decodes one item.
    pub fn read(&self, item: &VideoItem) -> Result<Clip> {
        let spec = &self.cfg.spec;
        match item {
            VideoItem::Video(p) => read_video_ffmpeg(p, spec, &self.cfg.ffmpeg),
            VideoItem::Gif(p) => read_gif(p, spec),
            VideoItem::Frames(s) => s.read_clip(spec, 0, self.cfg.default_fps.unwrap_or(spec.fps)),
        }
    }

    /// Streams the clips in path order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Clip>> + '_ {
        self.items.iter().map(move |it| self.read(it))
    }
}

fn scan(dir: &Path, items: &mut Vec<VideoItem>) -> Result<()> {
    let mut has_frames = false;
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            subdirs.push(p);
        } else if has_ext(&p, &VIDEO_EXTS) {
            items.push(VideoItem::Video(p));
        } else if has_ext(&p, &["gif"]) {
            items.push(VideoItem::Gif(p));
        } else if has_ext(&p, &FRAME_EXTS) {
            has_frames = true;
        }
    }
    if has_frames {
        items.push(VideoItem::Frames(ImageSequence::open(dir)?));
    }
    for d in subdirs {
        scan(&d, items)?;
    }
    Ok(())
}

impl ClipDataset for VideoFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn get(&self, index: usize) -> Result<Clip> {
        let item = self.items.get(index).ok_or_else(|| Error::Invalid(format!("clip {index} out of range")))?;
        self.read(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame i: a horizontal gradient plus 10*i in red, so frames are told apart by their red channel.
    fn frame(i: usize, w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(10 * i as u32 % 256) as u8, (x * 255 / w.max(1)) as u8, (y * 3) as u8])
        })
    }

    fn write_sequence(dir: &Path, n: usize, w: u32, h: u32) {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..n {
            frame(i, w, h).save(dir.join(format!("frame_{i:05}.png"))).unwrap();
        }
    }

    #[test]
    fn fit_frame_covers_and_crops_the_centre() {
        // 40x20 source into 10x10: crop the centre 20x20, then halve.
        let img = RgbImage::from_fn(40, 20, |x, _| image::Rgb([x as u8, 0, 0]));
        let out = fit_frame(&img, 10, 10);
        assert_eq!(out.dimensions(), (10, 10));
        // Centre crop starts at x = 10; output pixel 0 averages source columns 10 and 11 (bilinear).
        let r0 = out.get_pixel(0, 5)[0];
        assert!((10..=12).contains(&r0), "{r0}");
        assert_eq!(fit_frame(&img, 40, 20), img);
    }

    #[test]
    fn image_sequence_is_sampled_in_numeric_order_with_the_sidecar_fps() {
        let dir = tempfile::tempdir().unwrap();
        let ep = dir.path().join("episode_0000");
        write_sequence(&ep, 12, 24, 16);
        // A frame named without padding must still sort numerically.
        std::fs::rename(ep.join("frame_00002.png"), ep.join("frame_2.png")).unwrap();
        let truth: Vec<String> =
            (0..12).map(|i| format!(r#"{{"action": {{"dx": {i}, "dy": -1.5, "grip": 1}}}}"#)).collect();
        let sidecar = format!(r#"{{"fps": 32, "recipe": {{"structure": "tower3"}}, "truth": [{}]}}"#, truth.join(","));
        std::fs::write(ep.join("episode.json"), sidecar).unwrap();
        let seq = ImageSequence::open(&ep).unwrap();
        assert_eq!(seq.fps, Some(32.0));
        let spec = ClipSpec::tiny(); // 5 frames at 16 fps from a 32 fps source: every other frame
        let clip = seq.read_clip(&spec, 1, 16.0).unwrap();
        let reds: Vec<u8> = (0..5).map(|t| clip.frames[t * 16 * 24 * 3]).collect();
        assert_eq!(reds, vec![10, 30, 50, 70, 90]);
        assert_eq!(clip.language.as_deref(), Some("tower3"));
        assert_eq!(clip.action_dim, 3);
        assert_eq!(clip.actions.as_ref().unwrap()[..6], [1.0, -1.5, 1.0, 3.0, -1.5, 1.0]);
        // 12 frames at 32 fps cannot give 5 frames at 16 fps from frame 4 (needs 4 + 9).
        assert!(matches!(seq.read_clip(&spec, 4, 16.0), Err(Error::ClipTooShort { needed: 13, .. })));
    }

    #[test]
    fn corrupt_frames_and_sidecars_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_sequence(dir.path(), 6, 24, 16);
        let p = dir.path().join("frame_00003.png");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let seq = ImageSequence::open(dir.path()).unwrap();
        let err = seq.read_clip(&ClipSpec::tiny(), 0, 16.0).unwrap_err().to_string();
        assert!(err.contains("frame_00003.png"), "{err}");
        std::fs::write(dir.path().join("episode.json"), "{not json").unwrap();
        assert!(ImageSequence::open(dir.path()).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(ImageSequence::open(empty.path()).is_err());
    }

    #[test]
    fn gif_frames_follow_their_delays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gif");
        {
            let f = std::fs::File::create(&p).unwrap();
            let mut enc = image::codecs::gif::GifEncoder::new(f);
            // 4 frames of 125 ms each; sampled at 16 fps (62.5 ms) each shows twice.
            let frames = (0..4).map(|i| {
                let rgba = image::DynamicImage::ImageRgb8(frame(i * 5, 24, 16)).to_rgba8();
                image::Frame::from_parts(rgba, 0, 0, image::Delay::from_numer_denom_ms(125, 1))
            });
            enc.encode_frames(frames).unwrap();
        }
        let spec = ClipSpec { num_frames: 8, ..ClipSpec::tiny() };
        let clip = read_gif(&p, &spec).unwrap();
        let reds: Vec<u8> = (0..8).map(|t| clip.frames[t * 16 * 24 * 3]).collect();
        // GIF palettes quantise colours: compare frame identity, not exact values.
        for k in 0..4 {
            assert_eq!(reds[2 * k], reds[2 * k + 1]);
        }
        assert!(reds[0] < reds[2] && reds[2] < reds[4] && reds[4] < reds[6], "{reds:?}");
        let long = ClipSpec { num_frames: 9, ..ClipSpec::tiny() };
        assert!(matches!(read_gif(&p, &long), Err(Error::ClipTooShort { .. })));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 40]).unwrap();
        assert!(read_gif(&p, &spec).is_err());
        std::fs::write(&p, b"GIF89a garbage").unwrap();
        assert!(read_gif(&p, &spec).is_err());
    }

    #[test]
    fn folder_finds_every_kind_of_clip() {
        let dir = tempfile::tempdir().unwrap();
        write_sequence(&dir.path().join("ep_b"), 5, 24, 16);
        write_sequence(&dir.path().join("nested/ep_a"), 5, 48, 32);
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let folder = VideoFolder::open(dir.path(), VideoFolderConfig::new(ClipSpec::tiny())).unwrap();
        assert_eq!(folder.len(), 2);
        let clips: Vec<Clip> = folder.iter().collect::<Result<_>>().unwrap();
        assert!(clips[0].id.ends_with("ep_b") && clips[1].id.ends_with("ep_a"));
        assert_eq!(clips[1].frames.len(), 5 * 16 * 24 * 3);
        assert!(VideoFolder::open(
            &dir.path().join("nested/ep_a/frame_00000.png"),
            VideoFolderConfig::new(ClipSpec::tiny())
        )
        .is_err());
    }

    /// Encodes PNG frames losslessly (libx264rgb -qp 0) so the ffmpeg path must return them exactly.
    fn encode_lossless(frames_dir: &Path, out: &Path, fps: u32) -> bool {
        Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-framerate", fps.to_string().as_str(), "-i"])
            .arg(frames_dir.join("frame_%05d.png"))
            .args(["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"])
            .arg(out)
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn mp4_through_ffmpeg_matches_the_image_sequence_path() {
        let opts = FfmpegOptions::default();
        if !ffmpeg_available(&opts) {
            eprintln!("SKIPPED: no ffmpeg binary (apt-get install ffmpeg)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let frames_dir = dir.path().join("frames");
        write_sequence(&frames_dir, 20, 24, 16);
        let mp4 = dir.path().join("clip.mp4");
        assert!(encode_lossless(&frames_dir, &mp4, 32));
        // Same size as the source (no resize), 32 -> 16 fps: the two paths must agree exactly.
        let spec = ClipSpec::tiny();
        let via_ffmpeg = read_video_ffmpeg(&mp4, &spec, &opts).unwrap();
        let via_png = ImageSequence::open(&frames_dir).unwrap().read_clip(&spec, 0, 32.0).unwrap();
        assert_eq!(via_ffmpeg.frames, via_png.frames);
        // Resized: both scale 48x32 -> 24x16 bilinearly; filters differ in detail, so compare loosely.
        let big_dir = dir.path().join("big");
        write_sequence(&big_dir, 20, 48, 32);
        let big = dir.path().join("big.mp4");
        assert!(encode_lossless(&big_dir, &big, 32));
        let a = read_video_ffmpeg(&big, &spec, &opts).unwrap();
        let b = ImageSequence::open(&big_dir).unwrap().read_clip(&spec, 0, 32.0).unwrap();
        let mad: f64 = a.frames.iter().zip(&b.frames).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>()
            / a.frames.len() as f64;
        assert!(mad < 4.0, "mean abs diff {mad}");
        // Too short: 20 frames at 32 fps give 10 at 16 fps.
        let long = ClipSpec { num_frames: 11, ..spec.clone() };
        assert!(matches!(read_video_ffmpeg(&mp4, &long, &opts), Err(Error::ClipTooShort { available: 10, .. })));
        let padded = ClipSpec { pad_short: true, ..long };
        assert_eq!(read_video_ffmpeg(&mp4, &padded, &opts).unwrap().num_frames, 11);
        // Truncated and garbage files fail with ffmpeg's message.
        let bytes = std::fs::read(&mp4).unwrap();
        let bad = dir.path().join("bad.mp4");
        std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
        assert!(read_video_ffmpeg(&bad, &spec, &opts).is_err());
        std::fs::write(&bad, b"not a video at all").unwrap();
        let err = read_video_ffmpeg(&bad, &spec, &opts).unwrap_err();
        assert!(matches!(err, Error::Ffmpeg { .. }), "{err}");
        // A missing binary names the fix.
        let none = FfmpegOptions { binary: "/nonexistent/ffmpeg".into(), ..opts };
        let err = read_video_ffmpeg(&mp4, &spec, &none).unwrap_err().to_string();
        assert!(err.contains("apt-get install ffmpeg"), "{err}");
    }
}

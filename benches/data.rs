//! Data-loading throughput: decode + resize of a 480×832 H.264 mp4 through the ffmpeg pipe, the
//! pure-Rust resize used by image sequences, and the loader end to end; plus `ffmpeg -benchmark` on the
//! same file and filter graph as the reference. Needs an `ffmpeg` binary (skips without one).
//!
//! cargo bench --bench data            (docs/data.md, "Throughput", has the numbers)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vw_data::readers::video::{
    ffmpeg_available, fit_frame, read_video_ffmpeg, FfmpegOptions, VideoFolder, VideoFolderConfig,
};
use vw_data::{ClipSpec, Loader, LoaderConfig};

/// A 480×832, 24 fps, 6 s x264 clip (yuv420p, the usual web/dataset encoding) of ffmpeg's moving test pattern.
fn make_clip(path: &Path) -> bool {
    Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=832x480:rate=24", "-t", "6"])
        .args(["-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// `ffmpeg -benchmark` with the reader's exact filter graph, output discarded: frames/s of ffmpeg alone.
fn ffmpeg_reference(path: &Path, spec: &ClipSpec, threads: usize) -> Option<f64> {
    let (w, h) = (spec.width, spec.height);
    let vf = format!("fps={},scale={w}:{h}:force_original_aspect_ratio=increase:flags=bilinear,crop={w}:{h}", spec.fps);
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-benchmark", "-threads", threads.to_string().as_str(), "-i"])
        .arg(path)
        .args([
            "-an",
            "-vf",
            vf.as_str(),
            "-frames:v",
            spec.num_frames.to_string().as_str(),
            "-pix_fmt",
            "rgb24",
            "-f",
            "null",
            "-",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let rtime: f64 = text.split("rtime=").nth(1)?.split('s').next()?.parse().ok()?;
    Some(spec.num_frames as f64 / rtime)
}

fn bench(c: &mut Criterion) {
    let opts = FfmpegOptions { threads: 2, ..FfmpegOptions::default() };
    if !ffmpeg_available(&opts) {
        eprintln!("data bench skipped: no ffmpeg binary (apt-get install ffmpeg)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("clip_480x832.mp4");
    assert!(make_clip(&clip), "ffmpeg could not encode the test clip");
    let official = ClipSpec::official();
    let small = ClipSpec { height: 240, width: 416, ..ClipSpec::official() };
    for (name, spec) in [("official 93x480x832", &official), ("93x240x416", &small)] {
        for threads in [1, 2] {
            if let Some(fps) = ffmpeg_reference(&clip, spec, threads) {
                eprintln!("ffmpeg -benchmark -threads {threads} ({name} @16fps, rgb24, to null): {fps:.0} frames/s");
            }
        }
    }

    let mut g = c.benchmark_group("mp4_decode_resize");
    g.sample_size(10).measurement_time(std::time::Duration::from_secs(20));
    g.throughput(Throughput::Elements(official.num_frames as u64));
    for threads in [1, 2] {
        let opts = FfmpegOptions { threads, ..FfmpegOptions::default() };
        g.bench_function(format!("ffmpeg pipe -> 93x480x832 rgb24, {threads} thread(s)"), |b| {
            b.iter(|| read_video_ffmpeg(&clip, &official, &opts).expect("decode"))
        });
    }
    let opts2 = FfmpegOptions { threads: 2, ..FfmpegOptions::default() };
    g.bench_function("ffmpeg pipe -> 93x240x416 rgb24, 2 threads", |b| {
        b.iter(|| read_video_ffmpeg(&clip, &small, &opts2).expect("decode"))
    });
    g.finish();

    // The pure-Rust path (image sequences, GIFs, Open-X, CALVIN, LeRobot images): resize cost per frame.
    let frame = image::RgbImage::from_fn(832, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut g = c.benchmark_group("rust_resize");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    g.bench_function("fit_frame 832x480 -> 416x240 (triangle)", |b| b.iter(|| fit_frame(&frame, 416, 240)));
    g.bench_function("fit_frame 640x480 -> 832x480 (cover+crop)", |b| {
        let src = image::imageops::resize(&frame, 640, 480, image::imageops::FilterType::Nearest);
        b.iter(|| fit_frame(&src, 832, 480))
    });
    g.finish();

    // End to end: 4 clips through the loader (2 workers, 1 ffmpeg thread each) into (B, C, T, H, W) f32.
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for i in 0..4 {
        std::fs::copy(&clip, folder.join(format!("clip_{i}.mp4"))).expect("copy");
    }
    let mut cfg = VideoFolderConfig::new(official.clone());
    cfg.ffmpeg.threads = 1;
    let ds = Arc::new(VideoFolder::open(&folder, cfg).expect("folder"));
    let loader_cfg = LoaderConfig { batch_size: 1, num_workers: 2, prefetch: 1, ..Default::default() };
    let loader = Loader::new(ds, loader_cfg, candle_core::Device::Cpu).expect("loader");
    let mut g = c.benchmark_group("loader");
    g.sample_size(10).measurement_time(std::time::Duration::from_secs(30));
    g.throughput(Throughput::Elements(4 * official.num_frames as u64));
    g.bench_function("4 mp4 clips -> 4 batches (1,3,93,480,832) f32, 2 workers", |b| {
        b.iter(|| loader.epoch(0).inspect(|b| assert!(b.is_ok(), "batch failed")).count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Reading the conditioning image and writing generated frames (PNG per frame + an animated GIF),
//! each file written to a temporary name and renamed.

use crate::{Error, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Reads an image file as RGB.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).map_err(|e| Error::Invalid(format!("{}: cannot read image: {e}", path.display())))?;
    Ok(img.to_rgb8())
}

fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `frame_0000.png`, ... and `video.gif` into `dir`; returns the GIF's path.
pub fn save_frames(frames: &[RgbImage], fps: f64, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (i, f) in frames.iter().enumerate() {
        let p = dir.join(format!("frame_{i:04}.png"));
        atomic_write(&p, |tmp| {
            f.save_with_format(tmp, image::ImageFormat::Png)
                .map_err(|e| Error::Invalid(format!("{}: {e}", tmp.display())))
        })?;
    }
    let gif = dir.join("video.gif");
    atomic_write(&gif, |tmp| write_gif(frames, fps, tmp))?;
    Ok(gif)
}

fn write_gif(frames: &[RgbImage], fps: f64, path: &Path) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let err = |e: image::ImageError| Error::Invalid(format!("{}: {e}", path.display()));
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(f), 10);
    enc.set_repeat(Repeat::Infinite).map_err(err)?;
    let delay = image::Delay::from_numer_denom_ms(1000, fps.max(1.0).round() as u32);
    for fr in frames {
        let rgba = image::DynamicImage::ImageRgb8(fr.clone()).to_rgba8();
        enc.encode_frame(image::Frame::from_parts(rgba, 0, 0, delay)).map_err(err)?;
    }
    Ok(())
}

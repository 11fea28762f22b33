//! Images and videos as tensors, and back: the one convention every crate uses. Pixels map to [-1, 1]
//! (`x / 127.5 - 1`), channels first; a video is (3, T, H, W). Also PNG / GIF writers and a frame strip
//! for reports.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::{Rgb, RgbImage};
use std::path::Path;

/// One image as a (3, H, W) f32 tensor in [-1, 1].
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = p.0[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_vec(data, (3, h, w), device)?)
}

/// Frames of equal size as a (3, T, H, W) f32 tensor in [-1, 1].
pub fn frames_to_tensor(frames: &[RgbImage], device: &Device) -> Result<Tensor> {
    let first = frames.first().ok_or_else(|| Error::Invalid("frames_to_tensor: no frames".into()))?;
    let (w, h, t) = (first.width() as usize, first.height() as usize, frames.len());
    let mut data = vec![0f32; 3 * t * h * w];
    for (ti, f) in frames.iter().enumerate() {
        if f.width() as usize != w || f.height() as usize != h {
            return Err(Error::Invalid(format!(
                "frames_to_tensor: frame {ti} is {}x{}, expected {w}x{h}",
                f.width(),
                f.height()
            )));
        }
        for (i, p) in f.pixels().enumerate() {
            for c in 0..3 {
                data[(c * t + ti) * h * w + i] = p.0[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (3, t, h, w), device)?)
}

/// A (3, H, W) tensor of any float dtype in [-1, 1] (values outside are clamped) back to an image.
pub fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = t.dims3()?;
    if c != 3 {
        return Err(Error::Invalid(format!("tensor_to_image: expected 3 channels, found shape {:?}", t.dims())));
    }
    let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([0, 1, 2].map(|k| to_u8(data[k * h * w + i])))
    }))
}

/// A (3, T, H, W) tensor in [-1, 1] back to frames.
pub fn tensor_to_frames(t: &Tensor) -> Result<Vec<RgbImage>> {
    let (c, n, h, w) = t.dims4()?;
    if c != 3 {
        return Err(Error::Invalid(format!("tensor_to_frames: expected (3, T, H, W), found {:?}", t.dims())));
    }
    let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok((0..n)
        .map(|ti| {
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let i = y as usize * w + x as usize;
                Rgb([0, 1, 2].map(|k| to_u8(data[(k * n + ti) * h * w + i])))
            })
        })
        .collect())
}

fn to_u8(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// Frames laid out left to right in rows of `per_row`, with a 1-pixel dark gap, for reports.
pub fn strip(frames: &[RgbImage], per_row: usize) -> RgbImage {
    let Some(first) = frames.first() else { return RgbImage::new(1, 1) };
    let (w, h) = (first.width(), first.height());
    let per_row = per_row.clamp(1, frames.len()) as u32;
    let rows = (frames.len() as u32).div_ceil(per_row);
    let mut out = RgbImage::from_pixel(per_row * (w + 1) - 1, rows * (h + 1) - 1, Rgb([20, 20, 20]));
    for (i, f) in frames.iter().enumerate() {
        let (ox, oy) = ((i as u32 % per_row) * (w + 1), (i as u32 / per_row) * (h + 1));
        for (x, y, p) in f.enumerate_pixels() {
            if x < w && y < h {
                out.put_pixel(ox + x, oy + y, *p);
            }
        }
    }
    out
}

/// Writes an image as PNG.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Invalid(format!("{}: writing PNG: {e}", path.display())))
}

/// Writes frames as a looping GIF with `delay_ms` per frame (rounded to 10 ms).
pub fn write_gif(path: &Path, frames: &[RgbImage], delay_ms: u32) -> Result<()> {
    let first = frames.first().ok_or_else(|| Error::Invalid(format!("{}: no frames to write", path.display())))?;
    let (w, h) = (first.width(), first.height());
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(Error::Invalid(format!("{}: {w}x{h} is too large for GIF", path.display())));
    };
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let gif_err = |e: gif::EncodingError| Error::Invalid(format!("{}: writing GIF: {e}", path.display()));
    let mut enc = gif::Encoder::new(std::io::BufWriter::new(file), w16, h16, &[]).map_err(gif_err)?;
    enc.set_repeat(gif::Repeat::Infinite).map_err(gif_err)?;
    for (i, f) in frames.iter().enumerate() {
        if f.width() != w || f.height() != h {
            return Err(Error::Invalid(format!("{}: frame {i} has another size", path.display())));
        }
        let mut frame = gif::Frame::from_rgb_speed(w16, h16, f.as_raw(), 10);
        frame.delay = (delay_ms / 10).min(u16::MAX as u32) as u16;
        enc.write_frame(&frame).map_err(gif_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_frames_through_tensor() {
        let a = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8 * 50, y as u8 * 100, 255]));
        let b = RgbImage::from_fn(5, 3, |x, y| Rgb([0, x as u8, y as u8]));
        let t = frames_to_tensor(&[a.clone(), b.clone()], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 2, 3, 5]);
        // Channel 2 of frame 0 is all 255 -> 1.0.
        let v: f32 = t.get(2).unwrap().get(0).unwrap().mean_all().unwrap().to_scalar().unwrap();
        assert!((v - 1.0).abs() < 1e-6);
        assert_eq!(tensor_to_frames(&t).unwrap(), vec![a.clone(), b]);
        assert_eq!(tensor_to_image(&image_to_tensor(&a, &Device::Cpu).unwrap()).unwrap(), a);
    }

    #[test]
    fn mismatched_frames_are_an_error() {
        let a = RgbImage::new(4, 4);
        let b = RgbImage::new(4, 5);
        assert!(frames_to_tensor(&[a, b], &Device::Cpu).is_err());
        assert!(frames_to_tensor(&[], &Device::Cpu).is_err());
    }

    #[test]
    fn gif_and_strip_write() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<RgbImage> = (0..3).map(|i| RgbImage::from_pixel(8, 6, Rgb([i * 80, 10, 200]))).collect();
        let s = strip(&frames, 2);
        assert_eq!((s.width(), s.height()), (17, 13));
        assert_eq!(s.get_pixel(9, 0).0, [80, 10, 200]);
        assert_eq!(s.get_pixel(0, 7).0, [160, 10, 200]);
        assert_eq!(s.get_pixel(9, 7).0, [20, 20, 20]);
        let path = dir.path().join("a.gif");
        write_gif(&path, &frames, 100).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..6], b"GIF89a");
    }
}

//! Animated GIF strips: several videos of one episode (expert, each method's prediction) side by
//! side, one animation frame per time step.

use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// An RGB frame, row-major `(H, W, 3)` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width * 3` bytes.
    pub rgb: Vec<u8>,
}

/// Frames of one video `(C, T, H, W)` (C = 3, or 1 for grey) with values in `[-1, 1]`.
pub fn frames_from_video(video: &Tensor) -> Result<Vec<Frame>> {
    let (c, t, h, w) = video.dims4()?;
    if c != 3 && c != 1 {
        return Err(Error::Invalid(format!("frames_from_video needs 1 or 3 channels, got shape {:?}", video.dims())));
    }
    let v = video.to_dtype(DType::F32)?.permute((1, 2, 3, 0))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let to_u8 = |x: f32| (((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
    Ok((0..t)
        .map(|f| {
            let px = &v[f * h * w * c..(f + 1) * h * w * c];
            let rgb = if c == 3 {
                px.iter().map(|&x| to_u8(x)).collect()
            } else {
                px.iter().flat_map(|&x| [to_u8(x); 3]).collect()
            };
            Frame { height: h, width: w, rgb }
        })
        .collect())
}

/// Writes videos side by side (a 2-pixel white gutter between them) as one looping GIF at
/// `delay_cs` hundredths of a second per frame, upscaled `scale` times with nearest neighbours.
/// Shorter videos hold their last frame.
pub fn write_gif_strip(path: &Path, videos: &[Vec<Frame>], delay_cs: u16, scale: usize) -> Result<()> {
    let first =
        videos.first().and_then(|v| v.first()).ok_or_else(|| Error::Invalid("gif strip of no frames".into()))?;
    let (h, w) = (first.height, first.width);
    if videos.iter().flatten().any(|f| (f.height, f.width) != (h, w) || f.rgb.len() != h * w * 3)
        || videos.iter().any(|v| v.is_empty())
    {
        return Err(Error::Invalid(format!(
            "gif strip {}: every video needs frames of one size {h}x{w}",
            path.display()
        )));
    }
    let scale = scale.max(1);
    let gutter = 2;
    let cw = videos.len() * (w * scale + gutter) - gutter;
    let ch = h * scale;
    if cw > u16::MAX as usize || ch > u16::MAX as usize {
        return Err(Error::Invalid(format!("gif strip {}: {cw}x{ch} is too large", path.display())));
    }
    let len = videos.iter().map(|v| v.len()).max().unwrap_or(0);
    let mut bytes = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut bytes, cw as u16, ch as u16, &[])
            .map_err(|e| Error::Invalid(format!("gif {}: {e}", path.display())))?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(|e| Error::Invalid(format!("gif {}: {e}", path.display())))?;
        for t in 0..len {
            let mut canvas = vec![255u8; cw * ch * 3];
            for (k, v) in videos.iter().enumerate() {
                let f = &v[t.min(v.len() - 1)];
                let x0 = k * (w * scale + gutter);
                for y in 0..ch {
                    for x in 0..w * scale {
                        let src = ((y / scale) * w + x / scale) * 3;
                        let dst = (y * cw + x0 + x) * 3;
                        canvas[dst..dst + 3].copy_from_slice(&f.rgb[src..src + 3]);
                    }
                }
            }
            // speed 10: a good palette quickly; frames are small.
            let mut frame = gif::Frame::from_rgb_speed(cw as u16, ch as u16, &canvas, 10);
            frame.delay = delay_cs;
            enc.write_frame(&frame).map_err(|e| Error::Invalid(format!("gif {}: {e}", path.display())))?;
        }
    }
    super::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn strip_round_trip() {
        let dev = Device::Cpu;
        let v = Tensor::rand(-1f32, 1.0, (3, 4, 8, 6), &dev).unwrap();
        let frames = frames_from_video(&v).unwrap();
        assert_eq!(frames.len(), 4);
        let px = v.i((.., 0, 0, 0)).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(frames[0].rgb[0], ((px[0] + 1.0) * 127.5).round() as u8);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.gif");
        write_gif_strip(&p, &[frames.clone(), frames[..2].to_vec()], 10, 2).unwrap();
        let mut dec = gif::DecodeOptions::new();
        dec.set_color_output(gif::ColorOutput::RGBA);
        let mut d = dec.read_info(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!((d.width(), d.height()), (2 * 12 + 2, 16));
        let mut n = 0;
        while d.read_next_frame().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        assert!(write_gif_strip(&p, &[], 10, 1).is_err());
    }

    use candle_core::IndexOp;
}

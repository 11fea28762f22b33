//! Video quality: PSNR and SSIM between frames, matching scikit-image's
//! `peak_signal_noise_ratio` and `structural_similarity` (defaults: 7×7 uniform window, sample
//! covariance, K1 = 0.01, K2 = 0.03, mean over the window-valid interior, channels averaged).

use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// A borrowed image: `data` is row-major `(H, W, C)`.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    /// Pixel values, `height * width * channels` of them.
    pub data: &'a [f32],
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels (interleaved).
    pub channels: usize,
}

impl<'a> ImageView<'a> {
    /// Wraps a slice, checking its length against the shape.
    pub fn new(data: &'a [f32], height: usize, width: usize, channels: usize) -> Result<Self> {
        if data.len() != height * width * channels {
            return Err(Error::Invalid(format!(
                "image buffer has {} values, expected {height}x{width}x{channels} = {}",
                data.len(),
                height * width * channels
            )));
        }
        Ok(Self { data, height, width, channels })
    }

    fn same_shape(&self, other: &ImageView) -> Result<()> {
        if (self.height, self.width, self.channels) != (other.height, other.width, other.channels) {
            return Err(Error::Invalid(format!(
                "image shapes differ: {}x{}x{} vs {}x{}x{}",
                self.height, self.width, self.channels, other.height, other.width, other.channels
            )));
        }
        Ok(())
    }
}

/// Mean squared error between two images of the same shape.
pub fn mse(a: ImageView, b: ImageView) -> Result<f64> {
    a.same_shape(&b)?;
    if a.data.is_empty() {
        return Err(Error::Invalid("mse of empty images".into()));
    }
    let s: f64 = a.data.iter().zip(b.data).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum();
    Ok(s / a.data.len() as f64)
}

/// Peak signal-to-noise ratio in dB; `f64::INFINITY` for identical images.
pub fn psnr(a: ImageView, b: ImageView, data_range: f64) -> Result<f64> {
    let m = mse(a, b)?;
    Ok(10.0 * (data_range * data_range / m).log10())
}

/// Window side of the SSIM filter (scikit-image's default).
pub const SSIM_WIN: usize = 7;

/// Structural similarity (scikit-image defaults); 1.0 for identical images.
pub fn ssim(a: ImageView, b: ImageView, data_range: f64) -> Result<f64> {
    a.same_shape(&b)?;
    let (h, w, c) = (a.height, a.width, a.channels);
    if h < SSIM_WIN || w < SSIM_WIN {
        return Err(Error::Invalid(format!("ssim needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {h}x{w}")));
    }
    let mut total = 0.0;
    for ch in 0..c {
        let x: Vec<f64> = (0..h * w).map(|i| a.data[i * c + ch] as f64).collect();
        let y: Vec<f64> = (0..h * w).map(|i| b.data[i * c + ch] as f64).collect();
        total += ssim_plane(&x, &y, h, w, data_range);
    }
    Ok(total / c as f64)
}

/// Inclusive-exclusive 2D prefix sums, `(h+1) x (w+1)`.
fn integral(v: &[f64], h: usize, w: usize) -> Vec<f64> {
    let mut s = vec![0.0; (h + 1) * (w + 1)];
    for i in 0..h {
        let mut row = 0.0;
        for j in 0..w {
            row += v[i * w + j];
            s[(i + 1) * (w + 1) + j + 1] = s[i * (w + 1) + j + 1] + row;
        }
    }
    s
}

fn ssim_plane(x: &[f64], y: &[f64], h: usize, w: usize, range: f64) -> f64 {
    let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
    let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
    let xy: Vec<f64> = x.iter().zip(y).map(|(a, b)| a * b).collect();
    let (ix, iy, ixx, iyy, ixy) =
        (integral(x, h, w), integral(y, h, w), integral(&xx, h, w), integral(&yy, h, w), integral(&xy, h, w));
    let np = (SSIM_WIN * SSIM_WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    let box_mean = |s: &[f64], i0: usize, j0: usize| {
        let (i1, j1) = (i0 + SSIM_WIN, j0 + SSIM_WIN);
        (s[i1 * (w + 1) + j1] - s[i0 * (w + 1) + j1] - s[i1 * (w + 1) + j0] + s[i0 * (w + 1) + j0]) / np
    };
    // The crop of `pad` pixels in scikit-image keeps exactly the windows that lie inside the image,
    // so the boundary mode of its filter never matters.
    let mut sum = 0.0;
    let mut n = 0usize;
    for i0 in 0..=h - SSIM_WIN {
        for j0 in 0..=w - SSIM_WIN {
            let (ux, uy) = (box_mean(&ix, i0, j0), box_mean(&iy, i0, j0));
            let vx = cov_norm * (box_mean(&ixx, i0, j0) - ux * ux);
            let vy = cov_norm * (box_mean(&iyy, i0, j0) - uy * uy);
            let vxy = cov_norm * (box_mean(&ixy, i0, j0) - ux * uy);
            let num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
            let den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
            sum += num / den;
            n += 1;
        }
    }
    sum / n as f64
}

/// Per-frame PSNR and SSIM of two videos, averaged over frames and batch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct VideoQuality {
    /// Mean PSNR in dB over frames whose PSNR is finite; `inf` if every frame is identical.
    pub psnr: f64,
    /// Mean SSIM over all frames.
    pub ssim: f64,
    /// Frames compared.
    pub frames: usize,
}

/// Compares two videos `(B, C, T, H, W)` with values in `[-1, 1]` (data range 2) frame by frame.
pub fn video_quality(a: &Tensor, b: &Tensor) -> Result<VideoQuality> {
    if a.dims() != b.dims() || a.rank() != 5 {
        return Err(Error::Invalid(format!(
            "video_quality needs two (B, C, T, H, W) videos of one shape, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let (bsz, c, t, h, w) = a.dims5()?;
    // (B, T, H, W, C) so that every frame is one contiguous interleaved image.
    let to_vec = |v: &Tensor| -> Result<Vec<f32>> {
        Ok(v.to_dtype(DType::F32)?.permute((0, 2, 3, 4, 1))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (va, vb) = (to_vec(a)?, to_vec(b)?);
    let per = h * w * c;
    let (mut psnr_sum, mut psnr_n, mut ssim_sum) = (0.0, 0usize, 0.0);
    for f in 0..bsz * t {
        let ia = ImageView::new(&va[f * per..(f + 1) * per], h, w, c)?;
        let ib = ImageView::new(&vb[f * per..(f + 1) * per], h, w, c)?;
        let p = psnr(ia, ib, 2.0)?;
        if p.is_finite() {
            psnr_sum += p;
            psnr_n += 1;
        }
        ssim_sum += ssim(ia, ib, 2.0)?;
    }
    let frames = bsz * t;
    let psnr = if psnr_n == 0 { f64::INFINITY } else { psnr_sum / psnr_n as f64 };
    Ok(VideoQuality { psnr, ssim: ssim_sum / frames.max(1) as f64, frames })
}

/// The frame-weighted mean of several videos' [`VideoQuality`]: each video's PSNR counts by its frames
/// when finite (a video identical to its reference adds none), its SSIM always.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VideoQualityMean {
    psnr_sum: f64,
    psnr_frames: usize,
    ssim_sum: f64,
    frames: usize,
}

impl VideoQualityMean {
    /// Adds one video's quality.
    pub fn add(&mut self, q: &VideoQuality) {
        if q.psnr.is_finite() {
            self.psnr_sum += q.psnr * q.frames as f64;
            self.psnr_frames += q.frames;
        }
        self.ssim_sum += q.ssim * q.frames as f64;
        self.frames += q.frames;
    }

    /// The mean over every frame added (PSNR `inf` when no video had a finite one); `None` before any
    /// frame.
    pub fn mean(&self) -> Option<VideoQuality> {
        (self.frames > 0).then(|| VideoQuality {
            psnr: if self.psnr_frames == 0 { f64::INFINITY } else { self.psnr_sum / self.psnr_frames as f64 },
            ssim: self.ssim_sum / self.frames as f64,
            frames: self.frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize, c: usize, k: f32) -> Vec<f32> {
        (0..h * w * c).map(|i| ((i as f32 * k).sin() + 1.0) / 2.0).collect()
    }

    #[test]
    fn quality_means_weigh_videos_by_frames_and_skip_infinite_psnr() {
        let mut m = VideoQualityMean::default();
        assert_eq!(m.mean(), None);
        m.add(&VideoQuality { psnr: f64::INFINITY, ssim: 1.0, frames: 2 });
        assert_eq!(m.mean(), Some(VideoQuality { psnr: f64::INFINITY, ssim: 1.0, frames: 2 }));
        m.add(&VideoQuality { psnr: 20.0, ssim: 0.5, frames: 1 });
        m.add(&VideoQuality { psnr: 30.0, ssim: 0.8, frames: 3 });
        let q = m.mean().unwrap();
        assert!((q.psnr - 27.5).abs() < 1e-12 && (q.ssim - (2.0 + 0.5 + 2.4) / 6.0).abs() < 1e-12, "{q:?}");
        assert_eq!(q.frames, 6);
    }

    #[test]
    fn identical_images() {
        let a = ramp(9, 11, 3, 0.37);
        let v = ImageView::new(&a, 9, 11, 3).unwrap();
        assert_eq!(psnr(v, v, 1.0).unwrap(), f64::INFINITY);
        assert!((ssim(v, v, 1.0).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn psnr_hand_computed() {
        // Every pixel off by 0.1 with range 1: MSE 0.01, PSNR = 10 log10(100) = 20 dB.
        let a = vec![0.5f32; 16];
        let b = vec![0.6f32; 16];
        let p = psnr(ImageView::new(&a, 4, 4, 1).unwrap(), ImageView::new(&b, 4, 4, 1).unwrap(), 1.0).unwrap();
        assert!((p - 20.0).abs() < 1e-4, "{p}");
    }

    #[test]
    fn ssim_constant_images_hand_computed() {
        // Constant images: variances vanish, SSIM = (2 ux uy + C1) / (ux^2 + uy^2 + C1).
        let (a, b) = (vec![0.2f32; 64], vec![0.4f32; 64]);
        let s = ssim(ImageView::new(&a, 8, 8, 1).unwrap(), ImageView::new(&b, 8, 8, 1).unwrap(), 1.0).unwrap();
        let c1 = 0.01f64.powi(2);
        let (x, y) = (0.2f32 as f64, 0.4f32 as f64);
        let want = (2.0 * x * y + c1) / (x * x + y * y + c1);
        assert!((s - want).abs() < 1e-9, "{s} vs {want}");
    }

    #[test]
    fn rejects_bad_shapes() {
        let a = vec![0.0f32; 36];
        assert!(ImageView::new(&a, 6, 7, 1).is_err());
        let v = ImageView::new(&a, 6, 6, 1).unwrap();
        assert!(ssim(v, v, 1.0).is_err());
    }
}

#[cfg(test)]
mod skimage_tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        h: usize,
        w: usize,
        c: usize,
        a: Vec<f32>,
        b: Vec<f32>,
        psnr: f64,
        ssim: f64,
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    /// Values from scikit-image, written by `tools/eval_quality_fixture.py`.
    #[test]
    fn matches_scikit_image() {
        let fx: Fixture = serde_json::from_str(include_str!("../tests/fixtures/quality.json")).unwrap();
        assert_eq!(fx.cases.len(), 4);
        for cs in fx.cases {
            let a = ImageView::new(&cs.a, cs.h, cs.w, cs.c).unwrap();
            let b = ImageView::new(&cs.b, cs.h, cs.w, cs.c).unwrap();
            let p = psnr(a, b, 1.0).unwrap();
            let s = ssim(a, b, 1.0).unwrap();
            assert!((p - cs.psnr).abs() < 1e-4, "psnr {p} vs skimage {}", cs.psnr);
            // scikit-image filters float32 input in float32.
            assert!((s - cs.ssim).abs() < 2e-5, "ssim {s} vs skimage {}", cs.ssim);
        }
    }
}

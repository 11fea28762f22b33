//! Video2World: first frame(s) + text embedding -> video, as diffusers' `Cosmos2VideoToWorldPipeline`.
//!
//! The conditioning frames are VAE-encoded (posterior mean), normalised, and kept clean through
//! sampling: at every step their latents are fed at the tiny conditioning timestep and their
//! x0 prediction is replaced by the clean latents. Classifier-free guidance uses the reference's
//! form `x0 + w * (x0 - x0_uncond)`. The pipeline owns the loop, the progress bar and the seed.

use crate::dit::{CosmosTransformer3DModel, DitInput};
use crate::scheduler::{EdmPrecond, FlowMatchEulerScheduler, FlowMatchSchedulerConfig};
use crate::vae::AutoencoderKLWan;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rand::{Rng, SeedableRng};

/// Settings of one generation (the reference's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Output height in pixels (multiple of 16).
    pub height: usize,
    /// Output width in pixels (multiple of 16).
    pub width: usize,
    /// Output frames (1 + 4k).
    pub num_frames: usize,
    /// Sampling steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance weight; <= 1 disables the unconditional pass.
    pub guidance_scale: f64,
    /// Frames per second (scales RoPE time).
    pub fps: f64,
    /// Noise scale at which the conditioning frames are presented.
    pub sigma_conditioning: f64,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            height: 704,
            width: 1280,
            num_frames: 93,
            num_inference_steps: 35,
            guidance_scale: 7.0,
            fps: 16.0,
            sigma_conditioning: 0.0001,
            seed: 0,
            progress: true,
        }
    }
}

/// DiT + VAE + scheduler config. Text embeddings come from [`crate::t5::T5TextEncoder`] or a file.
#[derive(Debug, Clone)]
pub struct Video2WorldPipeline {
    /// The denoiser.
    pub transformer: CosmosTransformer3DModel,
    /// The video autoencoder.
    pub vae: AutoencoderKLWan,
    /// The sampler's config.
    pub scheduler: FlowMatchSchedulerConfig,
}

/// Seeded standard-normal noise (Box-Muller over a ChaCha stream), built on the CPU then moved.
pub fn seeded_noise(shape: &[usize], seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        v.push((r * (std::f64::consts::TAU * u2).cos()) as f32);
        v.push((r * (std::f64::consts::TAU * u2).sin()) as f32);
    }
    v.truncate(n);
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

impl Video2WorldPipeline {
    /// Loads transformer, VAE and scheduler config from a local folder or Hub repo. The VAE is kept
    /// in f32 (it is small and the reference decodes in the VAE's own dtype); the DiT takes `dtype`.
    pub fn load(source: &crate::hub::ModelSource, dtype: DType, device: &Device) -> Result<Self> {
        use crate::hub::Component;
        let transformer = CosmosTransformer3DModel::load(&source.component(Component::Transformer)?, dtype, device)?;
        let vae = AutoencoderKLWan::load(&source.component(Component::Vae)?, DType::F32, device)?;
        let scheduler = match source.component(Component::Scheduler) {
            Ok(d) => crate::hub::component_config(&d, Component::Scheduler)?,
            Err(_) => FlowMatchSchedulerConfig::cosmos(),
        };
        Ok(Self { transformer, vae, scheduler })
    }

    /// Latent frames for `num_frames` video frames.
    pub fn latent_frames(&self, num_frames: usize) -> usize {
        (num_frames - 1) / self.vae.config().temporal_factor() + 1
    }

    /// Samples latents (B, z, T', H/8, W/8), unnormalised back to VAE scale is left to [`Self::decode`].
    ///
    /// `cond_video` (B, 3, Tc, H, W) in [-1, 1]: the given frames (an image is Tc = 1).
    /// `prompt_embeds` / `negative_embeds` (B, S, text_dim). `noise`, if given, replaces the seeded
    /// initial noise (unit variance; it is scaled by sigma_max here).
    pub fn generate_latents(
        &self,
        cond_video: &Tensor,
        prompt_embeds: &Tensor,
        negative_embeds: Option<&Tensor>,
        opts: &GenerateOptions,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _, tc, h, w) = cond_video.dims5()?;
        if !opts.height.is_multiple_of(16) || !opts.width.is_multiple_of(16) || (h, w) != (opts.height, opts.width) {
            return Err(Error::Invalid(format!(
                "video2world: frames are {h}x{w}, expected {}x{} (multiples of 16)",
                opts.height, opts.width
            )));
        }
        let tf = self.vae.config().temporal_factor();
        if opts.num_frames == 0 || !(opts.num_frames - 1).is_multiple_of(tf) {
            return Err(Error::Invalid(format!("video2world: num_frames {} must be 1 + {tf}k", opts.num_frames)));
        }
        let device = cond_video.device().clone();
        let vae_dtype = DType::F32;
        // Pad the given frames to the clip length with the last one (or keep the last num_frames).
        let (video, n_cond_lat) = if tc >= opts.num_frames {
            (cond_video.narrow(2, tc - opts.num_frames, opts.num_frames)?, self.latent_frames(opts.num_frames))
        } else {
            let last = cond_video.narrow(2, tc - 1, 1)?;
            let pad = last.broadcast_as((b, 3, opts.num_frames - tc, h, w))?;
            (Tensor::cat(&[cond_video, &pad.contiguous()?], 2)?, (tc - 1) / tf + 1)
        };
        let sched_cfg = self.scheduler.clone().with_cosmos_defaults();
        let mut sched = FlowMatchEulerScheduler::new(sched_cfg);
        sched.set_timesteps(opts.num_inference_steps)?;
        let sigma_data = sched.sigma_data();

        let mut cond_lat = vec![];
        for i in 0..b {
            cond_lat.push(self.vae.encode(&video.narrow(0, i, 1)?.to_dtype(vae_dtype)?)?);
        }
        let cond_lat = self.vae.normalize_latents(&Tensor::cat(&cond_lat, 0)?.to_dtype(DType::F32)?, sigma_data)?;
        let (_, zc, tl, hl, wl) = cond_lat.dims5()?;
        let noise = match noise {
            Some(n) => n.to_dtype(DType::F32)?.to_device(&device)?,
            None => seeded_noise(&[b, zc, tl, hl, wl], opts.seed, DType::F32, &device)?,
        };
        if noise.dims() != [b, zc, tl, hl, wl] {
            return Err(Error::Invalid(format!(
                "noise has shape {:?}, expected {:?}",
                noise.dims(),
                [b, zc, tl, hl, wl]
            )));
        }
        let mut latents = (noise * sched.sigma_max())?;

        let ind: Vec<f32> = (0..tl).map(|t| if t < n_cond_lat { 1.0 } else { 0.0 }).collect();
        let ind = Tensor::from_vec(ind, (1, 1, tl, 1, 1), &device)?;
        let not_ind = ind.affine(-1.0, 1.0)?;
        let cond_mask = ind.broadcast_as((b, 1, tl, hl, wl))?.contiguous()?;
        let padding_mask = Tensor::zeros((1, 1, opts.height, opts.width), DType::F32, &device)?;
        let sc = opts.sigma_conditioning as f32;
        let t_cond = sc / (sc + 1.0);
        let keep_clean =
            |x: &Tensor| -> Result<Tensor> { Ok(ind.broadcast_mul(&cond_lat)?.add(&not_ind.broadcast_mul(x)?)?) };

        let cfg_on = opts.guidance_scale > 1.0;
        let neg = match (cfg_on, negative_embeds) {
            (true, Some(n)) => Some(n),
            (true, None) => {
                return Err(Error::Invalid("guidance_scale > 1 needs negative prompt embeddings".into()));
            }
            _ => None,
        };
        let dt = self.transformer.dtype();
        // One batched forward for the conditional and unconditional passes when the text shapes agree.
        let batched = neg.is_some_and(|n| n.dims() == prompt_embeds.dims());
        let text_both = match (batched, neg) {
            (true, Some(n)) => Some(Tensor::cat(&[prompt_embeds, n], 0)?),
            _ => None,
        };

        let steps = opts.num_inference_steps;
        let bar = if opts.progress {
            let pb = indicatif::ProgressBar::new(steps as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {elapsed}/{duration}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.set_message("sampling");
            pb
        } else {
            indicatif::ProgressBar::hidden()
        };
        for i in 0..steps {
            let sigma = sched.sigmas()[i];
            let pc = EdmPrecond::new(sigma);
            let x_in = keep_clean(&(&latents * pc.c_in as f64)?)?.to_dtype(dt)?;
            let ts: Vec<f32> = (0..tl).map(|t| if t < n_cond_lat { t_cond } else { pc.t }).collect();
            let ts = Tensor::from_vec(ts, (1, tl), &device)?.broadcast_as((b, tl))?.contiguous()?;
            let denoise = |out: &Tensor, lat: &Tensor| -> Result<Tensor> {
                let x0 = ((lat * pc.c_skip as f64)? + (out.to_dtype(DType::F32)? * pc.c_out as f64)?)?;
                keep_clean(&x0.to_dtype(dt)?.to_dtype(DType::F32)?)
            };
            let x0 = if let Some(text) = &text_both {
                let x2 = Tensor::cat(&[&x_in, &x_in], 0)?;
                let ts2 = Tensor::cat(&[&ts, &ts], 0)?;
                let cm2 = Tensor::cat(&[&cond_mask, &cond_mask], 0)?;
                let out = self.transformer.forward(&DitInput {
                    latents: &x2,
                    timestep: &ts2,
                    text,
                    text_mask: None,
                    condition_mask: Some(&cm2),
                    padding_mask: Some(&padding_mask),
                    fps: Some(opts.fps),
                })?;
                let c = denoise(&out.narrow(0, 0, b)?, &latents)?;
                let u = denoise(&out.narrow(0, b, b)?, &latents)?;
                (&c + ((&c - &u)? * opts.guidance_scale)?)?
            } else {
                let run = |text: &Tensor| -> Result<Tensor> {
                    let out = self.transformer.forward(&DitInput {
                        latents: &x_in,
                        timestep: &ts,
                        text,
                        text_mask: None,
                        condition_mask: Some(&cond_mask),
                        padding_mask: Some(&padding_mask),
                        fps: Some(opts.fps),
                    })?;
                    denoise(&out, &latents)
                };
                let c = run(prompt_embeds)?;
                match neg {
                    Some(n) => {
                        let u = run(n)?;
                        (&c + ((&c - &u)? * opts.guidance_scale)?)?
                    }
                    None => c,
                }
            };
            let v = ((&latents - x0)? / sigma as f64)?;
            latents = sched.step(&v, &latents)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(latents)
    }

    /// Latents from the sampler -> video (B, 3, T, H, W) in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let sigma_data = self.scheduler.clone().with_cosmos_defaults().sigma_data.unwrap_or(1.0);
        let z = self.vae.denormalize_latents(&latents.to_dtype(DType::F32)?, sigma_data)?;
        self.vae.decode(&z)
    }
}

/// An RGB image -> (1, 3, 1, H, W) in [-1, 1] on `device` (resized to `height` x `width` if needed).
pub fn image_to_video_tensor(img: &RgbImage, height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let img = if (img.height() as usize, img.width() as usize) != (height, width) {
        image::imageops::resize(img, width as u32, height as u32, image::imageops::FilterType::Triangle)
    } else {
        img.clone()
    };
    let data: Vec<f32> = img.pixels().flat_map(|p| p.0.map(|c| c as f32 / 127.5 - 1.0)).collect();
    let t = Tensor::from_vec(data, (height, width, 3), device)?;
    Ok(t.permute((2, 0, 1))?.reshape((1, 3, 1, height, width))?)
}

/// Video (B, 3, T, H, W) in [-1, 1] -> the frames of sample 0 (the reference's `postprocess_video` rounding).
pub fn video_to_frames(video: &Tensor) -> Result<Vec<RgbImage>> {
    let (_, c, t, h, w) = video.dims5()?;
    if c != 3 {
        return Err(Error::Invalid(format!("expected 3 channels, got {c}")));
    }
    let v = ((video.get(0)?.to_dtype(DType::F32)? * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
    let v = (v * 255.0)?.round()?.permute((1, 2, 3, 0))?.contiguous()?; // (T, H, W, 3)
    let data = v.flatten_all()?.to_vec1::<f32>()?;
    let frame = h * w * 3;
    Ok((0..t)
        .map(|i| {
            let px: Vec<u8> = data[i * frame..(i + 1) * frame].iter().map(|x| *x as u8).collect();
            RgbImage::from_raw(w as u32, h as u32, px).unwrap_or_else(|| RgbImage::new(w as u32, h as u32))
        })
        .collect())
}

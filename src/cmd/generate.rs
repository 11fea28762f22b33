//! `vw generate`: image + prompt -> video with Cosmos-Predict2 video2world.

use clap::Args;
use std::path::PathBuf;
use vw_diffusion::hub::{Component, ModelSource};
use vw_diffusion::pipeline::{image_to_video_tensor, video_to_frames};
use vw_diffusion::{GenerateOptions, T5TextEncoder, Video2WorldPipeline};

/// Arguments of `vw generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// `--policy CKPT`: plan the task's latent codes with an AR policy instead of running the diffusion model.
    #[command(flatten)]
    pub policy: super::generate_policy::PolicyArgs,
    /// Model: a local diffusers folder or a Hub repo id.
    #[arg(long, default_value = "nvidia/Cosmos-Predict2-2B-Video2World")]
    pub model: String,
    /// The first frame.
    #[arg(long)]
    pub image: PathBuf,
    /// What should happen (encoded by the model's T5).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Negative prompt for guidance (the reference's default is used when omitted and guidance is on).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Precomputed prompt embeddings (safetensors with `prompt_embeds` [, `negative_prompt_embeds`]); skips T5.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// Output height (multiple of 16).
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    /// Output width (multiple of 16).
    #[arg(long, default_value_t = 832)]
    pub width: usize,
    /// Frames (1 + 4k).
    #[arg(long, default_value_t = 93)]
    pub frames: usize,
    /// Sampling steps.
    #[arg(long, default_value_t = 35)]
    pub steps: usize,
    /// Classifier-free guidance weight (<= 1 turns it off).
    #[arg(long, default_value_t = 7.0)]
    pub guidance: f64,
    /// Frames per second.
    #[arg(long, default_value_t = 16.0)]
    pub fps: f64,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (frames as PNG + video.gif).
    #[arg(long, default_value = "generated")]
    pub out: PathBuf,
}

/// The reference pipeline's default negative prompt.
const DEFAULT_NEGATIVE_PROMPT: &str = "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. Overall, the video is of poor quality.";

/// Runs `vw generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.policy.policy.is_some() {
        return super::generate_policy::run(&args.policy, &args.image, &args.out, &args.device);
    }
    let device = args.device.open()?;
    let dtype = args.device.dtype.dtype();
    let src = ModelSource::parse(&args.model);
    let pipe = Video2WorldPipeline::load(&src, dtype, &device)?;
    let cfg_on = args.guidance > 1.0;
    let (pos, neg) = match &args.embeddings {
        Some(p) => {
            let t = vw_diffusion::weights::load_tensors(p, &device)?;
            let pos = vw_diffusion::weights::take(&t, "prompt_embeds", p)?;
            (pos, t.get("negative_prompt_embeds").cloned())
        }
        None => {
            let te = src.component(Component::TextEncoder)?;
            let tok = src.component(Component::Tokenizer)?;
            let mut enc = T5TextEncoder::load(&te, Some(&tok), dtype, &device)?;
            let max = vw_diffusion::t5::MAX_SEQUENCE_LENGTH;
            let pos = enc.encode(&[args.prompt.as_str()], max)?;
            let neg = if cfg_on {
                let n = args.negative_prompt.as_deref().unwrap_or(DEFAULT_NEGATIVE_PROMPT);
                Some(enc.encode(&[n], max)?)
            } else {
                None
            };
            (pos, neg)
        }
    };
    let img = vw_diffusion::video_io::load_image(&args.image)?;
    let cond = image_to_video_tensor(&img, args.height, args.width, &device)?;
    let opts = GenerateOptions {
        height: args.height,
        width: args.width,
        num_frames: args.frames,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        fps: args.fps,
        seed: args.seed,
        ..GenerateOptions::default()
    };
    let latents = pipe.generate_latents(&cond, &pos, neg.as_ref(), &opts, None)?;
    let frames = video_to_frames(&pipe.decode(&latents)?)?;
    let gif = vw_diffusion::video_io::save_frames(&frames, args.fps, &args.out)?;
    println!("wrote {} frames to {} and {}", frames.len(), args.out.display(), gif.display());
    Ok(())
}

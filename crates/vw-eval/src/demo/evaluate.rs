//! Scoring execution videos predicted from a first frame: every method (and the two sanity rows)
//! goes through the same judge, the same step-end frames and the same PSNR / SSIM against the
//! expert, so the numbers are comparable by construction.

use crate::report::{Frame, MethodResult};
use crate::{completed_prefix, video_quality, EpisodeOutcome, Result, StepSuccess};
use candle_core::{Device, Tensor};
use image::RgbImage;
use vw_data::craftworld::{Episode, Judge};
use vw_data::image_tensor::{frames_to_tensor, tensor_to_frames};

/// Something that turns the first frame of an episode into an execution video.
pub trait VideoPredictor {
    /// Table row label.
    fn name(&self) -> String;
    /// One sentence saying what it is.
    fn description(&self) -> String;
    /// Predicts `frames` frames that follow `first` (`(3, H, W)` in `[-1, 1]`); returns
    /// `(3, T, H, W)` with `T <= frames` (without the first frame). A method may stop early.
    fn predict(&mut self, first: &Tensor, frames: usize) -> Result<Tensor>;
}

/// The expert's own video: the judge must give it 100% at every step.
pub struct ExpertVideo<'a> {
    /// Episodes in the order they will be asked for.
    pub episodes: &'a [Episode],
    /// Next episode to return.
    pub next: usize,
}

/// `episodes[*next]`, advancing the cursor: predictors that replay one episode per call use it.
pub(crate) fn next_episode<'a>(episodes: &'a [Episode], next: &mut usize, who: &str) -> Result<&'a Episode> {
    let ep = episodes.get(*next).ok_or_else(|| crate::Error::Invalid(format!("{who}: no more episodes")))?;
    *next += 1;
    Ok(ep)
}

impl VideoPredictor for ExpertVideo<'_> {
    fn name(&self) -> String {
        "expert video (judge check)".into()
    }
    fn description(&self) -> String {
        "The scripted expert's rendered video of the episode: the judge must score it 100%.".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> Result<Tensor> {
        let ep = next_episode(self.episodes, &mut self.next, "ExpertVideo")?;
        let v = frames_to_tensor(&ep.frames[1..(1 + frames).min(ep.frames.len())], first.device()).map_err(data_err)?;
        Ok(v)
    }
}

/// The first frame repeated: nothing moves, so no step may be judged complete.
pub struct RepeatFirstFrame;

impl VideoPredictor for RepeatFirstFrame {
    fn name(&self) -> String {
        "first frame repeated (judge check)".into()
    }
    fn description(&self) -> String {
        "The first frame copied for the whole episode: the judge must score it 0% at every step.".into()
    }
    fn predict(&mut self, first: &Tensor, frames: usize) -> Result<Tensor> {
        Ok(first.unsqueeze(1)?.repeat((1, frames, 1, 1))?)
    }
}

pub(crate) fn data_err(e: vw_data::Error) -> crate::Error {
    crate::Error::Invalid(format!("vw-data: {e}"))
}

/// What one method produced on the evaluation episodes.
pub struct Scored {
    /// Aggregated metrics (no probe / codebook / chain: callers add those).
    pub result: MethodResult,
    /// Per-episode judge outcomes.
    pub outcomes: Vec<EpisodeOutcome>,
    /// The predicted videos of the first `keep_videos` episodes, context frame first, as RGB frames.
    pub videos: Vec<Vec<RgbImage>>,
}

/// Predicts every episode from its first frame, judges the frame at the end of each recipe step
/// (frame `(k+1) * frames_per_step` of the video, the same index as the expert's step end; missing
/// frames fail), and compares the video with the expert's frame by frame.
pub fn score_method(
    predictor: &mut dyn VideoPredictor,
    episodes: &[Episode],
    frames_per_step: usize,
    keep_videos: usize,
    device: &Device,
) -> Result<Scored> {
    let mut outcomes = Vec::with_capacity(episodes.len());
    let mut videos = Vec::new();
    let mut quality = crate::VideoQualityMean::default();
    for ep in episodes {
        let first = frames_to_tensor(&ep.frames[..1], device).map_err(data_err)?.squeeze(1)?;
        let horizon = ep.frames.len() - 1;
        let pred = predictor.predict(&first, horizon)?;
        let pred_frames = tensor_to_frames(&pred).map_err(data_err)?;
        let mut full = Vec::with_capacity(pred_frames.len() + 1);
        full.push(ep.frames[0].clone());
        full.extend(pred_frames);
        let judge = Judge::for_episode(ep);
        let ends: Vec<RgbImage> =
            (0..ep.num_steps()).map_while(|k| full.get((k + 1) * frames_per_step).cloned()).collect();
        let done = judge.step_success(&ends, &ep.recipe);
        outcomes.push(EpisodeOutcome { steps: ep.num_steps(), completed: completed_prefix(&done) });
        // Quality on the frames both videos have.
        let n = pred.dim(1)?.min(horizon);
        if n > 0 {
            let expert = frames_to_tensor(&ep.frames[1..1 + n], device).map_err(data_err)?.unsqueeze(0)?;
            quality.add(&video_quality(&expert, &pred.narrow(1, 0, n)?.unsqueeze(0)?)?);
        }
        if videos.len() < keep_videos {
            videos.push(full);
        }
    }
    let success =
        StepSuccess::from_outcomes(&outcomes).ok_or_else(|| crate::Error::Invalid("no evaluation episodes".into()))?;
    let quality = quality.mean();
    let result = MethodResult {
        name: predictor.name(),
        description: predictor.description(),
        success,
        quality,
        codebook: None,
        probe: None,
        chain: None,
    };
    Ok(Scored { result, outcomes, videos })
}

/// An RGB image as a report frame.
pub fn frame_of(img: &RgbImage) -> Frame {
    Frame { height: img.height() as usize, width: img.width() as usize, rgb: img.as_raw().clone() }
}

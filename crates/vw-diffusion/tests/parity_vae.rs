//! Wan2.1 VAE parity with diffusers: encode, decode (chunked with the feature cache), streaming.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, io};
use vw_diffusion::weights::read_config;
use vw_diffusion::{AutoencoderKLWan, AutoencoderKLWanConfig};

fn load() -> AutoencoderKLWan {
    AutoencoderKLWan::load(&fixture("vae"), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn tiny_config_matches_fixture_config() {
    let cfg: AutoencoderKLWanConfig = read_config(&fixture("vae").join("config.json")).unwrap();
    assert_eq!(cfg, AutoencoderKLWanConfig::tiny());
    assert_eq!((cfg.spatial_factor(), cfg.temporal_factor()), (8, 4));
}

#[test]
fn encode_matches_diffusers() {
    let vae = load();
    let t = io("vae");
    let (mean, logvar) = vae.encode_moments(&t["video"]).unwrap();
    assert_close("encode mean", &mean, &t["mean"], 1e-4);
    assert_close("encode logvar", &logvar, &t["logvar"], 1e-4);
    assert_close("encode image", &vae.encode(&t["image"]).unwrap(), &t["image_mean"], 1e-4);
}

#[test]
fn decode_matches_diffusers() {
    let vae = load();
    let t = io("vae");
    let out = vae.decode(&t["z"]).unwrap();
    assert_eq!(out.dims(), &[1, 3, 13, 24, 16]);
    assert_close("decode", &out, &t["decoded"], 1e-4);
    assert_close("decode image", &vae.decode(&t["z_image"]).unwrap(), &t["decoded_image"], 1e-4);
}

#[test]
fn streaming_decode_yields_1_then_4_frames_equal_to_full_decode() {
    let vae = load();
    let t = io("vae");
    let z = &t["z"];
    let mut s = vae.decode_stream();
    let mut frames = vec![];
    for i in 0..z.dim(2).unwrap() {
        let f = s.next(&z.narrow(2, i, 1).unwrap()).unwrap();
        assert_eq!(f.dim(2).unwrap(), if i == 0 { 1 } else { 4 });
        frames.push(f);
    }
    assert_close("stream", &Tensor::cat(&frames, 2).unwrap(), &t["decoded"], 1e-4);
    assert!(s.next(z).is_err(), "a multi-frame chunk must be refused");
}

#[test]
fn latent_normalisation_round_trips() {
    let vae = load();
    let z = &io("vae")["z"];
    let n = vae.normalize_latents(z, 1.0).unwrap();
    // Channel 1 has mean -0.2, std 0.5.
    let c1 = ((z.narrow(1, 1, 1).unwrap() + 0.2).unwrap() / 0.5).unwrap();
    assert_close("normalise", &n.narrow(1, 1, 1).unwrap(), &c1, 1e-6);
    assert_close("round trip", &vae.denormalize_latents(&n, 1.0).unwrap(), z, 1e-6);
}

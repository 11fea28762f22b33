//! Readers against fixtures written by the real producers' libraries (tools/gen_data_fixtures.py:
//! numpy, pyarrow), and a cheap in-CI version of the fuzz targets: garbage in → error, never a panic.

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vw_data::readers::calvin::{read_frame, read_language, CalvinConfig, CalvinDataset};
use vw_data::readers::example::{encode_example, parse_example, Example, Feature};
use vw_data::readers::lerobot::{LeRobotConfig, LeRobotDataset};
use vw_data::readers::npy::{parse_npy, parse_npz, DType, NpyArray};
use vw_data::readers::pickle::parse_pickle;
use vw_data::readers::tfrecord::{write_record, TfRecordReader};
use vw_data::{ClipDataset, ClipSpec, Loader, LoaderConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn calvin_fixture_written_by_numpy() {
    let dir = fixtures().join("calvin/training");
    // Odd frames were written by np.savez_compressed (deflate), even ones by np.savez (stored).
    for id in [3, 4] {
        let f = read_frame(&dir.join(format!("episode_{id:07}.npz"))).unwrap();
        assert_eq!(f.rgb_static.get_pixel(5, 2).0, [id as u8; 3]);
        assert_eq!(f.rgb_gripper.dimensions(), (4, 4));
        assert_eq!(f.actions, (0..7).map(|k| (k + id) as f32).collect::<Vec<_>>());
        assert!((f.rel_actions[1] + (1 + id) as f32 / 10.0).abs() < 1e-6);
        assert_eq!((f.robot_obs[0], f.robot_obs[14]), (0.0, 1.0));
    }
    // numpy 2's pickle of a dict holding lists, tuples and a float32 ndarray.
    let windows = read_language(&dir.join("lang_annotations/auto_lang_ann.npy")).unwrap();
    assert_eq!(windows.len(), 2);
    assert_eq!((windows[1].start, windows[1].end), (7, 10));
    assert_eq!(windows[1].language.as_deref(), Some("push the red block left"));
    // 4 frames at 30 fps -> 3 frames at 15 fps (frames 0, 2, 4 would need 5): use 2 frames at 15 fps.
    let spec = ClipSpec { num_frames: 2, height: 4, width: 4, fps: 15.0, pad_short: false };
    let ds = CalvinDataset::open(&dir, CalvinConfig::new(spec)).unwrap();
    let clip = ds.get(1).unwrap();
    assert_eq!((clip.frames[0], clip.frames[4 * 4 * 3]), (7, 9));
    assert_eq!(clip.action_dim, 7);
    assert!((clip.actions.as_ref().unwrap()[7] + 0.9).abs() < 1e-6); // rel_actions[0] of frame 9
}

#[test]
fn lerobot_fixture_written_by_pyarrow() {
    // pyarrow writes snappy-compressed pages, list<float> actions and {bytes, path} image structs.
    let spec = ClipSpec { num_frames: 3, height: 8, width: 12, fps: 5.0, pad_short: false };
    let ds = LeRobotDataset::open(&fixtures().join("lerobot"), LeRobotConfig::new(spec)).unwrap();
    assert_eq!(ds.len(), 2);
    let clip = ds.get(1).unwrap();
    // 10 fps -> 5 fps: frames 0, 2, 4 with red = 10 * frame + episode.
    let reds: Vec<u8> = (0..3).map(|t| clip.frames[t * 8 * 12 * 3]).collect();
    assert_eq!(reds, vec![1, 21, 41]);
    assert_eq!(clip.frames[3 * 3 + 1], 60); // green = column * 20 at column 3
    assert_eq!(clip.actions.unwrap(), vec![0.0, 1.0, 0.5, 2.0, 1.0, 0.5, 4.0, 1.0, 0.5]);
}

#[test]
fn loader_over_a_real_reader() {
    let spec = ClipSpec { num_frames: 3, height: 8, width: 12, fps: 5.0, pad_short: false };
    let ds = Arc::new(LeRobotDataset::open(&fixtures().join("lerobot"), LeRobotConfig::new(spec)).unwrap());
    let loader =
        Loader::new(ds, LoaderConfig { batch_size: 2, ..Default::default() }, candle_core::Device::Cpu).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.video.dims(), &[2, 3, 3, 8, 12]);
    assert_eq!(batch.actions.unwrap().dims(), &[2, 3, 3]);
    let v = batch.video.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
}

/// Valid inputs of each parser, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let arr = NpyArray { shape: vec![2, 3], dtype: DType::F32, data: (0..24).collect() };
    let npz = std::fs::read(fixtures().join("calvin/training/episode_0000003.npz")).unwrap();
    let npz_stored = std::fs::read(fixtures().join("calvin/training/episode_0000004.npz")).unwrap();
    let lang = std::fs::read(fixtures().join("calvin/training/lang_annotations/auto_lang_ann.npy")).unwrap();
    let mut ex = Example::new();
    ex.insert("steps/action".into(), Feature::Float(vec![1.0, 2.0]));
    ex.insert("steps/observation/image".into(), Feature::Bytes(vec![b"xyz".to_vec()]));
    ex.insert("steps/is_first".into(), Feature::Int64(vec![1, 0]));
    let mut tfr = Vec::new();
    write_record(&mut tfr, &encode_example(&ex)).unwrap();
    vec![arr.to_npy_bytes(), npz, npz_stored, lang, encode_example(&ex), tfr]
}

/// Runs every parser on `bytes`; they may fail but must return.
fn all_parsers(bytes: &[u8]) {
    let _ = parse_npy(bytes, "g");
    let _ = parse_npz(bytes, "g");
    let _ = parse_example(bytes, "g");
    let _ = parse_pickle(bytes, "g");
    if bytes.len() > 128 {
        // Object arrays hand their payload to the unpickler.
        let _ = parse_npy(bytes, "g").map(|a| parse_pickle(&a.data, "g"));
    }
    for rec in TfRecordReader::new(bytes, "g").take(4).flatten() {
        let _ = parse_example(&rec, "g");
    }
}

#[test]
fn garbage_in_error_out_never_a_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    // Random bytes, with and without each format's magic.
    let magics: [&[u8]; 4] = [b"", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"\x80\x04\x95"];
    for i in 0..3000 {
        let len = rng.random_range(0..300);
        let mut bytes: Vec<u8> = magics[i % 4].to_vec();
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        all_parsers(&bytes);
    }
    // Mutations of valid inputs reach much deeper: flips, truncations, splices.
    let seeds = seeds();
    for i in 0..3000 {
        let mut b = seeds[i % seeds.len()].clone();
        match i % 3 {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let p = rng.random_range(0..b.len());
                    b[p] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => b.truncate(rng.random_range(0..b.len())),
            _ => {
                let p = rng.random_range(0..b.len());
                let q = rng.random_range(p..b.len());
                let chunk = b[p..q].to_vec();
                let at = rng.random_range(0..b.len());
                b.splice(at..at, chunk);
            }
        }
        all_parsers(&b);
    }
    // Every cut or single bit flip of a framed record must be an error, not a silent success.
    let tfr = &seeds[5];
    for cut in 1..tfr.len() {
        assert!(parse_tfrecord_all(&tfr[..cut]).is_err(), "cut {cut}");
    }
    for bit in 0..tfr.len() * 8 {
        let mut b = tfr.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(parse_tfrecord_all(&b).is_err(), "bit {bit}");
    }
}

fn parse_tfrecord_all(bytes: &[u8]) -> vw_data::Result<usize> {
    let mut n = 0;
    for r in TfRecordReader::new(bytes, "g") {
        r?;
        n += 1;
    }
    Ok(n)
}

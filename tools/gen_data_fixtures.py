#!/usr/bin/env python3
"""Writes the small reader fixtures under crates/vw-data/tests/fixtures/ with the real producers'
libraries (numpy for CALVIN's npz/npy and pickled language annotations, pyarrow for LeRobot's parquet),
so the Rust readers are checked against bytes they did not write themselves.

    /work/.venv-torch/bin/pip install numpy pyarrow   # if missing
    /work/.venv-torch/bin/python tools/gen_data_fixtures.py

Deterministic: every value is a function of its index. Total size is a few tens of kB.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent / "crates" / "vw-data" / "tests" / "fixtures"


def png_bytes(value: int) -> bytes:
    """A 12x8 RGB PNG with red = value, green = column * 20 (written with zlib by hand: no PIL needed)."""
    import struct
    import zlib

    w, h = 12, 8
    raw = b"".join(b"\x00" + bytes(sum(([value, x * 20, 7] for x in range(w)), [])) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def calvin(out: Path) -> None:
    """Frames 3..=10 (two episodes), 8x8 static / 4x4 gripper images with red = frame id."""
    split = out / "training"
    (split / "lang_annotations").mkdir(parents=True)
    for i in range(3, 11):
        arrays = dict(
            rgb_static=np.full((8, 8, 3), i, dtype=np.uint8),
            rgb_gripper=np.full((4, 4, 3), 100 + i, dtype=np.uint8),
            actions=np.arange(7, dtype=np.float64) + i,
            rel_actions=-(np.arange(7, dtype=np.float64) + i) / 10,
            robot_obs=np.linspace(0, 1, 15),
            scene_obs=np.zeros(24),
            depth_static=np.zeros((8, 8), dtype=np.float32),
        )
        # Both np.savez flavours occur in the wild: stored and deflated members.
        save = np.savez_compressed if i % 2 else np.savez
        save(split / f"episode_{i:07d}.npz", **arrays)
    np.save(split / "ep_start_end_ids.npy", np.array([[3, 6], [7, 10]]))
    ann = {
        "language": {
            "ann": ["open the drawer", "push the red block left"],
            "task": ["open_drawer", "push_red_block_left"],
            "emb": np.ones((2, 1, 4), dtype=np.float32),
        },
        "info": {"episodes": [], "indx": [(3, 6), (7, 10)]},
    }
    np.save(split / "lang_annotations" / "auto_lang_ann.npy", ann, allow_pickle=True)


def lerobot(out: Path) -> None:
    """A v2.0 dataset with one `image` camera, 2 episodes of 6 frames at 10 fps, action [frame, episode, 0.5]."""
    (out / "meta").mkdir(parents=True)
    data = out / "data" / "chunk-000"
    data.mkdir(parents=True)
    info = {
        "codebase_version": "v2.0",
        "robot_type": "fixture",
        "fps": 10,
        "total_episodes": 2,
        "total_frames": 12,
        "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None,
        "features": {
            "observation.image": {"dtype": "image", "shape": [8, 12, 3], "names": ["height", "width", "channel"]},
            "action": {"dtype": "float32", "shape": [3], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        },
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    for e in range(2):
        n = 6
        table = pa.table(
            {
                "observation.image": pa.array(
                    [{"bytes": png_bytes(10 * i + e), "path": f"frame_{i:06d}.png"} for i in range(n)],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                ),
                "action": pa.array([[float(i), float(e), 0.5] for i in range(n)], type=pa.list_(pa.float32())),
                "frame_index": pa.array(range(n), type=pa.int64()),
                "episode_index": pa.array([e] * n, type=pa.int64()),
                "timestamp": pa.array([i / 10 for i in range(n)], type=pa.float32()),
            }
        )
        # pyarrow's default (snappy) compression, as LeRobot's writer uses.
        pq.write_table(table, data / f"episode_{e:06d}.parquet")


def main() -> None:
    for name, fn in [("calvin", calvin), ("lerobot", lerobot)]:
        out = ROOT / name
        shutil.rmtree(out, ignore_errors=True)
        fn(out)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote fixtures under {ROOT} ({total} bytes)")


if __name__ == "__main__":
    main()

# make bench   (or alone: python scripts/bench_store.py [--videos 16 --repeats 5])
"""What read-time chunk checksums cost: the store reader's samples/s with and without crc32c
-> bench/results/store_reader.json.

Two stores hold the same random float16 features, written by the real writer
(pipeline.store.write_shard) with `checksums=True` (every chunk carries a crc32c the reader
checks: the default) and `checksums=False`. A sample is what the trainer reads for one
question: T of the F stored frames of each frame modality (FeatureStore.get(..., frames=...)).
Two feature shapes: the tiny preset's and the full preset's (BLIP-2 ViT-g, 257 x 1408 tokens per
frame). The page cache is warm (a first pass is not counted), so the figure is the CPU cost of
decoding and checking, not the disk's; the two stores are read interleaved, median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.store import FeatureStore, ShardSpec  # noqa: E402
from pipeline.store import init_store, write_shard  # noqa: E402

SHAPES = {"tiny": (8, 50, 64), "full": (8, 257, 1408)}  # (F stored frames, tokens, dim) per modality
HASHES = {"rgb": "bench", "depth": "bench"}


def build(root: Path, shape: tuple, videos: int, shard_size: int, checksums: bool) -> None:
    """A store of `videos` videos with rgb and depth of `shape` (the same values for either `checksums`)."""
    rng = np.random.default_rng(0)
    init_store(root, dataset="bench", hashes=HASHES)
    ids = [f"v{i:04d}" for i in range(videos)]
    for s in range(0, videos, shard_size):
        chunk = ids[s:s + shard_size]
        payload = [{"video_id": v, "failed": None, "errors": [], "frame_indices": np.arange(shape[0]),
                    "timestamps": np.arange(shape[0]) * 0.5, "features": {
                        m: rng.standard_normal(shape).astype(np.float16) for m in HASHES}} for v in chunk]
        write_shard(root, ShardSpec(f"all-{s // shard_size:05d}", "all", tuple(chunk)), payload, hashes=HASHES,
                    checksums=checksums)


def read_sample(fs: FeatureStore, vid: str, pick: np.ndarray) -> None:
    for m in HASHES:
        fs.get(vid, m, frames=pick)


def frame_reads(fs: FeatureStore, ids: list[str], num_frames: int, frames: int) -> dict:
    """Seconds per read of T frames of one video and modality: the reader's one read per frame
    chunk against Zarr's orthogonal selection (what the reader used before), medians."""
    pick = np.arange(0, num_frames, num_frames // frames)[:frames]
    out = {}
    for name, read in (("per_frame", lambda a, row: np.stack([a[row, int(f)] for f in pick])),
                       ("orthogonal", lambda a, row: a.get_orthogonal_selection((row, pick)))):
        times = []
        for vid in ids:
            shard_dir, row = fs._locate(vid)
            array = fs._array(shard_dir, "rgb")
            t0 = time.perf_counter()
            read(array, row)
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times), 5)
    return out


def measure(tmp: Path, name: str, shape: tuple, args) -> dict:
    """Samples/s of each store, read sample by sample in alternation (A B B A ...: a change of the
    machine's load hits both alike), wall and CPU time of this process; medians over the repeats."""
    stores = {}
    for kind, checksums in (("crc32c", True), ("none", False)):
        root = tmp / f"{name}_{kind}"
        build(root, shape, args.videos, args.shard_size, checksums)
        stores[kind] = FeatureStore(root)
    ids = stores["crc32c"].video_ids
    rates = {k: {"wall": [], "cpu": []} for k in stores}
    for rep in range(args.repeats + 1):  # round 0 warms the page cache: not counted
        rng = np.random.default_rng(rep)
        spent = {k: [0.0, 0.0] for k in stores}
        for i, vid in enumerate(rng.permutation(ids)):
            pick = np.sort(rng.choice(shape[0], size=args.frames, replace=False))
            for kind in (list(stores) if i % 2 == 0 else list(stores)[::-1]):
                w0, c0 = time.perf_counter(), time.process_time()
                read_sample(stores[kind], vid, pick)
                spent[kind][0] += time.perf_counter() - w0
                spent[kind][1] += time.process_time() - c0
        if rep:
            for kind, (wall, cpu) in spent.items():
                rates[kind]["wall"].append(len(ids) / wall)
                rates[kind]["cpu"].append(len(ids) / cpu)
    med = {k: {t: round(statistics.median(v), 1) for t, v in r.items()} for k, r in rates.items()}
    return {"frame_read_s": frame_reads(stores["crc32c"], ids, shape[0], args.frames),"shape_per_modality": list(shape), "modalities": list(HASHES), "frames_read": args.frames,
            "samples_per_s": med, "cost_wall": round(1 - med["crc32c"]["wall"] / med["none"]["wall"], 4),
            "cost_cpu": round(1 - med["crc32c"]["cpu"] / med["none"]["cpu"], 4), "runs": rates}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4, help="T: stored frames read per modality per sample")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "store_reader.json"))
    args = parser.parse_args(argv)
    logging.getLogger("crema.store").setLevel(logging.ERROR)  # the no-checksum store's warning, by design
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        result = {"what": "store reader samples/s with and without read-time crc32c chunk checksums",
                  "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "videos": args.videos,
                  "repeats": args.repeats, **{name: measure(Path(tmp), name, shape, args)
                                              for name, shape in SHAPES.items()}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name in SHAPES:
        r, sps = result[name], result[name]["samples_per_s"]
        print(f"{name} {r['shape_per_modality']}: samples/s with crc32c {sps['crc32c']['wall']} (per CPU-second "
              f"{sps['crc32c']['cpu']}), without {sps['none']['wall']} ({sps['none']['cpu']}); cost {r['cost_wall']:+.1%} "
              f"wall, {r['cost_cpu']:+.1%} CPU; T frames of one modality: {r['frame_read_s']['per_frame'] * 1e3:.1f} ms "
              f"per frame chunk, {r['frame_read_s']['orthogonal'] * 1e3:.1f} ms by orthogonal selection")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""scripts/bench_reference.py's reference side on three tiny demo videos: the ffmpeg JPEG dump holds
the project's stored frames, the depth PNGs hold the model's depth, and a reference training step
(files -> preprocessing -> frozen encoders -> the trainer's optimizer step) trains the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.datasets import load_dataset
from core.features import modality_hashes, modality_views, resolve_features
from core.store import ShardSpec
from pipeline.decode import DecodeConfig, decode_video
from pipeline.demo import ensure_demo
from pipeline.store import init_store, write_shard
from scripts import bench_reference as br

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    data = ["dataset=demo", f"dataset.root={tmp}/demo", "dataset.num_videos=3"]
    cfg = br.compose("extract", [*data, "features=tiny"])
    ensure_demo(cfg.dataset)
    features = resolve_features(cfg.features)
    videos = load_dataset(cfg.dataset).videos
    reference = br.Reference(tmp / "files", features, videos, "stored")
    summary = reference.run()
    return {"tmp": tmp, "data": data, "features": features, "videos": videos, "ref": reference, "summary": summary}


def test_jpeg_dump_holds_the_projects_stored_frames(ref):
    dec = ref["features"]["decode"]
    for v in ref["videos"]:
        project = decode_video(v.path, DecodeConfig(num_frames_stored=dec["num_frames_stored"],
                                                    max_side=dec["max_side"], audio=False))
        manifest = ref["ref"].manifest(v.video_id)
        assert manifest["stored"] == project["frame_indices"].tolist()
        jpegs = sorted((ref["ref"].folder(v.video_id) / "frames").glob("*.jpg"))
        assert len(jpegs) == len(set(manifest["stored"] + manifest["next"]))
        frames = br.read_rgb(ref["ref"].frame_paths(v.video_id))
        nxt = br.read_rgb(ref["ref"].frame_paths(v.video_id, "next"))
        assert frames.shape == project["frames"].shape
        # the same pictures up to JPEG and colour-conversion rounding
        assert np.abs(frames.astype(float) - project["frames"]).mean() < 4.0
        assert np.abs(nxt.astype(float) - project["next_frames"]).mean() < 4.0
    assert ref["summary"]["disk_bytes"] > 0 and set(ref["summary"]["phase_seconds"]) == {
        "decode", "depth", "flow", "normal", "pointcloud", "audio"}


def test_depth_pngs_hold_the_models_depth_within_png_quantisation(ref):
    stage = br.build_extractor(ref["features"]["extractors"]["depth"])
    v = ref["videos"][0]
    depth = stage.predict(br.read_rgb(ref["ref"].frame_paths(v.video_id)))
    stored = br.read_depth_png(ref["ref"].frame_paths(v.video_id, sub="depth", ext="png"))
    assert stored.shape == depth.shape and depth.std() > 0.01      # an input-dependent map, not a constant
    assert np.abs(stored - depth).max() <= 0.5 / br.DEPTH_SCALE + 1e-6
    for sub in ("flow", "normal"):
        pngs = ref["ref"].frame_paths(v.video_id, sub=sub, ext="png")
        assert all(p.is_file() for p in pngs) and br.read_rgb(pngs).shape == depth.shape + (3,)


def _random_store(ref, cfg) -> None:
    """A store of random features with the tiny preset's shapes (the step test needs the model
    widths and the questions, not real features)."""
    from extractors.audio import AudioExtractor
    from extractors.encoder import EncoderExtractor
    from extractors.pointcloud import PointCloudExtractor

    from omegaconf import OmegaConf

    ext = {k: OmegaConf.create(v) for k, v in ref["features"]["extractors"].items()}
    spec = {**EncoderExtractor.spec_for(ext["encoder"]), **AudioExtractor.spec_for(ext["audio"]),
            **PointCloudExtractor.spec_for(ext["pointcloud"])}
    mods = list(cfg.model.modalities)
    hashes = modality_hashes(cfg.features, mods)
    init_store(Path(cfg.store), dataset="demo", hashes=hashes, features=modality_views(cfg.features, mods))
    rng = np.random.default_rng(0)
    payload = []
    for v in ref["videos"]:
        feats = {k: rng.standard_normal(shape).astype(np.float16) for k, (shape, _) in spec.items()}
        feats["pointcloud_xyz"] = rng.integers(0, 256, spec["pointcloud_xyz"][0]).astype(np.uint8)
        f = spec["rgb"][0][0]
        payload.append({"video_id": v.video_id, "features": feats, "frame_indices": np.arange(f),
                        "timestamps": np.arange(f) * 0.1, "errors": []})
    write_shard(Path(cfg.store), ShardSpec("train-00000", "train", tuple(v.video_id for v in ref["videos"])),
                payload, hashes=hashes)


def test_a_reference_step_encodes_the_files_and_trains(ref):
    tmp = ref["tmp"]
    _random_store(ref, br.compose("train", [*ref["data"], "features=tiny", f"store={tmp}/store"]))
    trainer = br.make_trainer(tmp / "store", [*ref["data"], "trainer.data.num_workers=0"], tmp / "run", 1, "tiny")
    ext = ref["features"]["extractors"]
    encoders = br.FrozenEncoders(br.build_extractor(ext["encoder"]), br.build_extractor(ext["audio"]))
    ds, sampler, loader = br.reference_loader(trainer, ref["ref"].root, encoders.encoder, dict(ext["depth"]["render"]))
    batch = next(iter(loader))
    encoders(batch)
    store = trainer.store
    for m in trainer.modalities:
        shape = store.modalities[m]["shape"]
        got = batch["features"][m]
        assert got.dtype == torch.float16
        if m in br.IMAGE_MODALITIES:  # T sampled frames of the stored frames' token grids
            assert tuple(got.shape[1:]) == (trainer.model.config.num_frames, *shape[1:])
        elif m == "audio":
            assert tuple(got.shape[1:]) == tuple(shape)
    before = {k: v.detach().clone() for k, v in trainer.model.trainable_state().items()}
    losses = trainer.optimizer_step([batch])
    after = trainer.model.trainable_state()
    assert set(losses) == set(trainer.modalities) and all(np.isfinite(v) for v in losses.values())
    # LoRA's B starts at zero, which weight decay alone cannot move: only gradients through the
    # encoded files can make it non-zero, for every modality
    woke = [k for k in before if "lora_B" in k and not before[k].any() and after[k].detach().any()]
    assert {m for m in trainer.modalities if any(f".{m}." in k for k in woke)} == set(trainer.modalities), woke[:8]


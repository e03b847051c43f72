"""Sensor streams (Touch-QA's GelSight video, Thermal-QA's thermal camera): named by the adapter,
decoded in the same pass as the RGB video at its frames' timestamps, encoded like rgb."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import released
from core.datasets import load_dataset
from core.features import config_hash, resolve_features
from core.schema import VideoEntry
from core.store import ShardSpec
from extractors.encoder import EncoderExtractor
from media import write_video
from pipeline.decode import DecodeConfig, DecodeError, decode_stream, decode_video, nearest_frames
from pipeline.graph import DecodeStage, initial_payload
from presets import extractor_preset

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_extract(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="extract", overrides=list(overrides))


def bar_left_edge(frame: np.ndarray) -> int:
    """x of the white bar media.write_video draws (its left edge)."""
    return int(np.argmax(frame.mean(axis=(0, 2)) > 128))


def test_nearest_frames():
    times = np.array([0.0, 0.05, 0.1, 0.15, 0.2])
    assert nearest_frames(times, np.array([0.0, 0.06, 0.13, 0.5, -1.0])).tolist() == [0, 1, 3, 4, 0]


def test_a_stream_is_sampled_at_the_rgb_frames_times(tmp_path):
    # RGB at 10 fps moves its bar 2 px per frame; the sensor at 20 fps moves 1 px per frame: at
    # time t both bars are at 4 + 20 t, so matched frames show the bar at the same place.
    rgb = write_video(tmp_path / "video.mp4", frames=20, fps=10, size=(96, 48), step=2, audio=False)
    sensor = write_video(tmp_path / "gelsight.mp4", frames=40, fps=20, size=(96, 48), step=1, audio=False)
    decoded = decode_video(str(rgb), DecodeConfig(num_frames_stored=5, max_side=None, audio=False), 2, 18)
    frames = decode_stream(str(sensor), decoded["timestamps"], max_side=None)
    assert frames.shape == decoded["frames"].shape and frames.dtype == np.uint8
    got = [bar_left_edge(f) for f in frames]
    want = [bar_left_edge(f) for f in decoded["frames"]]
    assert got == want and len(set(got)) == 5, (got, want)
    assert decode_stream(str(sensor), decoded["timestamps"], max_side=48).shape[1:3] == (24, 48)
    with pytest.raises(DecodeError, match="file not found"):
        decode_stream(str(tmp_path / "absent.mp4"), decoded["timestamps"], None)


def test_adapters_name_the_sensor_streams(tmp_path):
    root = released.touchqa(tmp_path / "touch")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        touch = compose(config_name=None, overrides=["+dataset=touchqa", f"dataset.root={root}"]).dataset
        thermal = compose(config_name=None, overrides=["+dataset=thermalqa",
                                                       f"dataset.root={released.thermalqa(tmp_path / 'th')}"]).dataset
    by_id = {v.video_id: v for v in load_dataset(touch).videos}
    assert by_id["20220516_190814_q12"].streams == (("touch", str(root / "20220516_190814" / "gelsight.mp4")),)
    (root / "touch_clips").mkdir()
    (root / "touch_clips" / "22.mp4").write_bytes(b"x")  # the pre-trimmed tactile clip beside clips/22.mp4
    by_id = {v.video_id: v for v in load_dataset(touch).videos}
    assert by_id["20220519_120000_q22"].streams == (("touch", str(root / "touch_clips" / "22.mp4")),)
    first = load_dataset(thermal).videos[0]
    assert first.streams == (("thermal", str(tmp_path / "th" / "20230301_101010" / "RGBT_T.mp4")),)


def test_streams_enter_the_decode_config_only_when_requested():
    demo = resolve_features(compose_extract().features)
    assert "streams" not in demo["decode"]  # stores without sensor streams keep their hash
    cfg = compose_extract("dataset=touchqa", "features.modalities=[rgb,touch]")
    touch = resolve_features(cfg.features)
    assert touch["decode"]["streams"] == ["touch"] and touch["extractors"]["encoder"]["modalities"] == ["rgb", "touch"]
    assert list(touch["extractors"]) == ["encoder"]
    assert config_hash(cfg.features) != config_hash(compose_extract("dataset=touchqa", "features.modalities=[rgb]").features)


def test_the_decode_stage_reads_a_stream_and_lists_a_missing_one(tmp_path):
    rgb = write_video(tmp_path / "a.mp4", frames=12, fps=10, size=(64, 48))
    sensor = write_video(tmp_path / "a_touch.mp4", frames=12, fps=10, size=(32, 24), audio=False)
    entries = [VideoEntry("a", str(rgb), "train", streams=(("touch", str(sensor)),)),
               VideoEntry("b", str(rgb), "train", streams=(("touch", str(tmp_path / "gone.mp4")),))]
    payload = initial_payload(ShardSpec("s", "train", ("a", "b")), entries)
    stage = DecodeStage({"num_frames_stored": 3, "max_side": None, "audio": False, "streams": ["touch"]})
    a, b = stage.run(payload)["videos"]
    assert a["images"]["touch"].shape == (3, 24, 32, 3) and not a["errors"] and not a["failed"]
    assert "touch" not in b["images"] and not b["failed"]  # the RGB record survives
    assert b["errors"][0]["stage"] == "decode" and "touch stream" in b["errors"][0]["reason"]
    assert "gone.mp4" in b["errors"][0]["reason"]


def test_the_encoder_encodes_a_stream_of_another_size_like_rgb():
    cfg = extractor_preset("encoder_tiny")
    cfg.num_frames_stored, cfg.modalities = 2, ["rgb", "thermal"]
    enc = EncoderExtractor(cfg)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    thermal = rng.integers(0, 255, (2, 36, 48, 3), dtype=np.uint8)
    video = {"video_id": "v", "frames": frames, "images": {"thermal": thermal}}
    out = enc({"videos": [video]})["videos"][0]["features"]
    assert out["thermal"].shape == out["rgb"].shape == (2, cfg.tokens, cfg.dim)
    assert np.array_equal(out["rgb"], enc.encode(frames)) and np.array_equal(out["thermal"], enc.encode(thermal))

"""Decode keeps what it stores: frames at their stored size, upright, sampled by presentation time,
and the PyAV fallback decodes only near the wanted frames (pipeline/decode.py's module doc)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import pipeline.decode as dec
from media import bar_frame, write_vfr_video, write_video
from pipeline.decode import DECODE_VERSION, DecodeConfig, decode_stream, decode_video, target_size

CONF = Path(__file__).resolve().parents[1] / "conf"
DECODERS = ["torchcodec", "decord", "pyav"]


def _refuse(*args, **kwargs):
    raise RuntimeError("decord refused (test)")


@pytest.fixture
def decoder(request, monkeypatch):
    """Runs the test once per decoder: that decoder alone is tried (the same cases for each
    decoder are the parity test: same frames by presentation time, same rotation, same size)."""
    monkeypatch.setattr(dec, "DEFAULT_DECODERS", (request.param,))
    return request.param


def bar_x(frame: np.ndarray) -> int:
    """Left edge of the vertical white bar (write_video's content)."""
    return int(np.argmax(frame[..., 0].mean(axis=0) > 128))


@pytest.mark.parametrize("decoder", DECODERS, indirect=True)
def test_variable_frame_rate_is_sampled_by_presentation_time(tmp_path, decoder):
    # Ten frames with a one-second hole: shown at 0.0 .. 0.4 s and 1.5 .. 1.9 s. The span is
    # [0, 1.9 + mean interval 0.2111) = [0, 2.111); four equal parts have their middles at
    # 0.264, 0.792, 1.319 and 1.847 s, where frames 2, 4, 4 and 8 are on screen. (Counting frames
    # instead of time would keep frames 1, 3, 6, 8.)
    times = [0.0, 0.1, 0.2, 0.3, 0.4, 1.5, 1.6, 1.7, 1.8, 1.9]
    path = write_vfr_video(tmp_path / "vfr.mp4", times)
    out = decode_video(str(path), DecodeConfig(num_frames_stored=4, max_side=None))
    assert out["decoder"] == decoder and out["num_frames"] == 10
    assert out["frame_indices"].tolist() == [2, 4, 4, 8]
    np.testing.assert_allclose(out["timestamps"], [0.2, 0.4, 0.4, 1.8], atol=1e-3)  # the frames' own times
    assert [bar_x(f) for f in out["frames"]] == [bar_x(bar_frame(i)) for i in (2, 4, 4, 8)]
    assert [bar_x(f) for f in out["next_frames"]] == [bar_x(bar_frame(i)) for i in (3, 5, 5, 9)]
    # A trim in source frames [5, 10) is the span [1.5, 2.111): middles at 1.653 and 1.958 s.
    trimmed = decode_video(str(path), DecodeConfig(num_frames_stored=2, max_side=None, audio=False), 5, 10)
    assert trimmed["frame_indices"].tolist() == [6, 9]
    np.testing.assert_allclose(trimmed["timestamps"], [1.6, 1.9], atol=1e-3)


@pytest.mark.parametrize("decoder", DECODERS, indirect=True)
def test_constant_frame_rate_keeps_the_segment_midpoints(tmp_path, decoder):
    path = write_video(tmp_path / "v.mp4", frames=30, fps=10, audio=False)
    for count, start, end in [(4, None, None), (8, None, None), (3, 6, 24), (5, 2, 3), (40, None, None)]:
        out = decode_video(str(path), DecodeConfig(num_frames_stored=count, max_side=None, audio=False), start, end)
        assert out["frame_indices"].tolist() == dec.segment_indices(30, count, start, end).tolist(), (count, start, end)
        np.testing.assert_allclose(out["timestamps"], out["frame_indices"] / 10, atol=1e-3)


@pytest.mark.parametrize("rotation", [90, -90, 180])
@pytest.mark.parametrize("decoder", DECODERS, indirect=True)
def test_rotation_metadata_is_applied(tmp_path, decoder, rotation):
    upright = write_video(tmp_path / "plain.mp4", size=(96, 64), audio=False)
    turned = write_video(tmp_path / "turned.mp4", size=(96, 64), audio=False, rotation=rotation)
    cfg = DecodeConfig(num_frames_stored=3, max_side=None, audio=False)
    ref = decode_video(str(upright), cfg)
    out = decode_video(str(turned), cfg)
    assert out["decoder"] == decoder
    k = (rotation // 90) % 4
    want = np.rot90(ref["frames"], k, axes=(1, 2))  # counter-clockwise, as the display matrix says
    assert out["frames"].shape == want.shape == ((3, 96, 64, 3) if k % 2 else (3, 64, 96, 3))
    assert np.abs(out["frames"].astype(int) - want).mean() < 1.0
    assert out["next_frames"].shape == want.shape
    # With a size cap the upright frame is capped: 96 tall x 64 wide -> 80 x 53.
    small = decode_video(str(turned), DecodeConfig(num_frames_stored=3, max_side=80, audio=False))
    assert small["decoder"] == decoder and small["frames"].shape[1:3] == ((80, 53) if k % 2 else (53, 80))
    half = np.rot90(decode_video(str(upright), DecodeConfig(num_frames_stored=3, max_side=80, audio=False))["frames"],
                    k, axes=(1, 2))
    assert np.abs(small["frames"].astype(int) - half).mean() < 12  # resampled in another order, same picture


def test_a_turned_video_decord_gets_wrong_is_decoded_upright_by_pyav(tmp_path):
    # decord 0.6 turns frames itself but fails on some sizes (a 64 x 48 quarter turn, a 180 degree
    # turn scaled to 48 px): PyAV takes those.
    cfg = DecodeConfig(num_frames_stored=3, max_side=None, audio=False, decoders=("decord", "pyav"))
    upright = write_video(tmp_path / "plain.mp4", size=(64, 48), audio=False)
    turned = write_video(tmp_path / "turned.mp4", size=(64, 48), audio=False, rotation=90)
    out = decode_video(str(turned), cfg)
    assert out["frames"].shape == (3, 64, 48, 3)
    assert np.abs(out["frames"].astype(int) - np.rot90(decode_video(str(upright), cfg)["frames"], 1, axes=(1, 2))).mean() < 1


def test_a_decord_that_ignores_the_rotation_is_refused(tmp_path, monkeypatch):
    """A decord that returned the unturned picture, squeezed to the size asked for, is caught on
    the first frame (so PyAV decodes the video)."""
    import cv2
    import decord

    real = decord.VideoReader
    upright = write_video(tmp_path / "plain.mp4", size=(96, 64), audio=False)
    turned = write_video(tmp_path / "turned.mp4", size=(96, 64), audio=False, rotation=90)

    class Unturned:
        def __init__(self, path, width=-1, height=-1, **kw):
            self.inner = real(str(upright), **kw)
            self.size = (width, height)

        def get_batch(self, idx):
            arr = self.inner.get_batch(idx).asnumpy()
            return decord.nd.array(np.stack([cv2.resize(f, self.size, interpolation=cv2.INTER_AREA) for f in arr]))

    monkeypatch.setattr(decord, "VideoReader", Unturned)
    with pytest.raises(dec.DecodeError, match="did not apply"):
        dec._decord_reader(str(turned), None)
    out = decode_video(str(turned), DecodeConfig(num_frames_stored=3, max_side=None, audio=False,
                                                 decoders=("decord", "pyav")))
    assert out["decoder"] == "pyav" and out["frames"].shape == (3, 96, 64, 3)


@pytest.mark.parametrize("decoder", DECODERS, indirect=True)
def test_sensor_streams_are_upright_and_capped_too(tmp_path, decoder):
    turned = write_video(tmp_path / "touch.mp4", size=(96, 64), audio=False, rotation=90)
    frames = decode_stream(str(turned), np.array([0.0, 0.55, 1.0]), max_side=48)
    assert frames.shape == (3, 48, 32, 3)


@pytest.mark.parametrize(("size", "max_side"), [((102, 78), 64), ((64, 48), 64), ((48, 96), 50), ((160, 90), 33)])
def test_decord_decodes_at_the_stored_size(tmp_path, size, max_side):
    """decord asked for the stored size returns what full-size decoding + resizing returned."""
    path = write_video(tmp_path / "v.mp4", size=size, frames=12, audio=False, step=3)
    only = ("decord",)
    out = decode_video(str(path), DecodeConfig(num_frames_stored=3, max_side=max_side, audio=False, decoders=only))
    old = decode_video(str(path), DecodeConfig(num_frames_stored=3, max_side=None, audio=False,
                                               decoders=("decord", "pyav")))  # decord fails on some full sizes
    before = dec._resize(old["frames"], max_side)  # the previous way: full size, then cv2 INTER_AREA
    assert out["decoder"] == "decord" and out["frames"].shape == before.shape
    w, h = target_size(size[0], size[1], max_side)
    assert out["frames"].shape == (3, h, w, 3) and out["next_frames"].shape == (3, h, w, 3)
    assert np.abs(out["frames"].astype(int) - before).mean() < 8
    assert [bar_x(f) for f in out["frames"]] == [bar_x(f) for f in before]


def test_the_pyav_fallback_keeps_only_the_wanted_frames(tmp_path, monkeypatch):
    """A long-ish file through PyAV: it seeks, decodes a fraction of the video, converts only the
    wanted frames and never holds many RGB frames (a decoder that kept every frame fails all three)."""
    n, size = 600, (160, 120)
    path = write_video(tmp_path / "long.mp4", frames=n, fps=25, size=size, audio=False, gop=25, step=1)
    monkeypatch.setattr(dec, "_decode_decord", _refuse)
    for key in dec.pyav_stats:
        monkeypatch.setitem(dec.pyav_stats, key, 0)
    tracemalloc.start()
    try:
        out = decode_video(str(path), DecodeConfig(num_frames_stored=4, max_side=64, audio=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["decoder"] == "pyav" and out["frame_indices"].tolist() == dec.segment_indices(n, 4).tolist()
    assert [bar_x(f) for f in out["frames"]] == [round(bar_x(bar_frame(i, size, 1)) * 64 / 160)
                                                for i in out["frame_indices"]]
    assert dec.pyav_stats["converted"] == 8  # 4 stored frames + their next frames, each converted once
    assert dec.pyav_stats["seeks"] >= 4 and dec.pyav_stats["decoded"] < n // 4
    one_source_frame = size[0] * size[1] * 3
    assert peak < 10 * one_source_frame, peak  # every frame as RGB would be 600 of them


def test_the_pyav_fallback_without_seeking_still_decodes_right(tmp_path, monkeypatch):
    """When a seek lands after its frame, decoding restarts from the beginning without seeking."""
    path = write_video(tmp_path / "v.mp4", frames=60, fps=10, size=(96, 48), audio=False, gop=10, step=1)
    ref = decode_video(str(path), DecodeConfig(num_frames_stored=4, max_side=None, audio=False))
    monkeypatch.setattr(dec, "_decode_decord", _refuse)
    real = dec._key_before
    monkeypatch.setattr(dec, "_key_before", lambda keys, t: keys[-1] if real(keys, t) is not None else None)
    out = decode_video(str(path), DecodeConfig(num_frames_stored=4, max_side=None, audio=False))
    assert out["frame_indices"].tolist() == ref["frame_indices"].tolist()
    assert [bar_x(f) for f in out["frames"]] == [bar_x(f) for f in ref["frames"]]


@pytest.mark.parametrize("decoder", DECODERS, indirect=True)
def test_audio_is_decoded_over_the_clips_span_only(tmp_path, decoder):
    # 4 s at 10 fps; 440 Hz for 2 s then 880 Hz. The clip [frames 10, 30) is [1 s, 3 s): half of each.
    path = write_video(tmp_path / "v.mp4", frames=40, fps=10, tone_change_s=2.0)
    whole = decode_video(str(path), DecodeConfig(num_frames_stored=2))
    clip = decode_video(str(path), DecodeConfig(num_frames_stored=2), 10, 30)
    assert abs(whole["audio"].size - 64000) < 2000
    assert abs(clip["audio"].size - 32000) < 400

    def peak_hz(x):
        return np.argmax(np.abs(np.fft.rfft(x[:8000]))) * 16000 / 8000

    assert abs(peak_hz(clip["audio"][2000:]) - 440) < 5 and abs(peak_hz(clip["audio"][22000:]) - 880) < 5


def test_the_decode_version_is_in_the_presets_and_checked():
    for preset in ("tiny", "full"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            node = compose(config_name="extract", overrides=[f"features={preset}"]).features.decode
        assert node.version == DECODE_VERSION
        assert DecodeConfig.from_cfg(node).version == DECODE_VERSION
    with pytest.raises(ValueError, match="version 1 is not available"):
        DecodeConfig(version=1)


def test_sampling_by_time_falls_back_to_counting_without_a_usable_clock():
    assert dec.sample_by_time(np.arange(10) / 10, 4)[0].tolist() == [1, 3, 6, 8]
    for broken in (np.zeros(10), np.r_[np.arange(5), np.arange(5)] / 10, np.full(10, np.nan)):
        idx, span = dec.sample_by_time(broken, 4, fps=10)
        assert idx.tolist() == dec.segment_indices(10, 4).tolist() and span == (0.0, 1.0)

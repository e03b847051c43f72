"""torchcodec beside decord and PyAV: the same frames on the media kinds decord cannot open (AV1)
or that stress seeking (a long file), the decoder order and device switch, and NVDEC on a GPU.
(Rotation, variable frame rate, sensor streams and audio spans run for every decoder in
tests/test_decode_cost.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import pipeline.decode as dec
from media import bar_frame, write_video
from pipeline.decode import DecodeConfig, DecodeError, decode_stream, decode_video
from test_decode_cost import CONF, bar_x


def _decode(path, decoders, **kw) -> dict:
    cfg = DecodeConfig(**{"num_frames_stored": 4, "max_side": None, "audio": False, **kw}, decoders=decoders)
    return decode_video(str(path), cfg)


def _same(a: dict, b: dict, tol: float = 2.0) -> None:
    assert a["frame_indices"].tolist() == b["frame_indices"].tolist()
    np.testing.assert_allclose(a["timestamps"], b["timestamps"], atol=1e-6)
    assert a["frames"].shape == b["frames"].shape and a["next_frames"].shape == b["next_frames"].shape
    assert np.abs(a["frames"].astype(int) - b["frames"]).mean() < tol
    assert [bar_x(f) for f in a["frames"]] == [bar_x(f) for f in b["frames"]]
    assert [bar_x(f) for f in a["next_frames"]] == [bar_x(f) for f in b["next_frames"]]


def test_av1_decord_cannot_open_is_decoded_by_torchcodec_as_pyav_does(tmp_path):
    path = write_video(tmp_path / "av1.mp4", size=(96, 64), frames=20, audio=False, codec="libsvtav1")
    with pytest.raises(DecodeError, match="decord: .*cannot find video stream"):
        _decode(path, ("decord",))
    tc, pyav = _decode(path, ("torchcodec",)), _decode(path, ("pyav",))
    assert tc["decoder"] == "torchcodec" and pyav["decoder"] == "pyav"
    _same(tc, pyav)
    assert [bar_x(f) for f in tc["frames"]] == [bar_x(bar_frame(i, (96, 64))) for i in tc["frame_indices"]]
    # In the chain, decord's refusal hands the file on: the payload names who decoded it.
    assert _decode(path, ("decord", "torchcodec", "pyav"))["decoder"] == "torchcodec"


def test_a_long_file_gives_the_same_frames_from_every_decoder(tmp_path):
    n, size = 600, (160, 120)
    path = write_video(tmp_path / "long.mp4", frames=n, fps=25, size=size, audio=False, gop=25, step=1)
    outs = {d: _decode(path, (d,), num_frames_stored=6, max_side=64) for d in dec.DECODERS}
    assert {o["decoder"] for o in outs.values()} == set(dec.DECODERS)
    assert outs["torchcodec"]["frames"].shape == (6, 48, 64, 3)
    assert outs["torchcodec"]["frame_indices"].tolist() == dec.segment_indices(n, 6).tolist()
    _same(outs["torchcodec"], outs["pyav"], tol=8.0)  # resampled by other scalers: same picture
    _same(outs["torchcodec"], outs["decord"], tol=8.0)


def test_every_decoder_refusing_names_each_reason(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(DecodeError, match=r"undecodable video \(torchcodec: .+; decord: .+; PyAV: .+\)"):
        _decode(bad, ("torchcodec", "decord", "pyav"))


def test_the_decoder_order_and_device_are_runtime_switches_in_the_presets():
    for preset in ("tiny", "full"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            measured = compose(config_name="extract", overrides=[f"features={preset}"]).features.decode
        assert DecodeConfig.from_cfg(measured).decoders == dec.DEFAULT_DECODERS == ("pyav", "decord", "torchcodec")
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            node = compose(config_name="extract", overrides=[f"features={preset}",
                                                               "features.decode.resources.decoders=[pyav]",
                                                               "features.decode.resources.device=cuda"]).features
        cfg = DecodeConfig.from_cfg(node.decode)
        assert cfg.decoders == ("pyav",) and cfg.device == "cuda"
    from core.features import hashed_view

    assert "decoders" not in str(hashed_view(node))  # which decoder ran is recorded per video, not hashed
    with pytest.raises(ValueError, match=r"decoders \['nvdec'\]: choose from"):
        DecodeConfig(decoders=("nvdec",))
    with pytest.raises(ValueError, match="device 'gpu': choose from"):
        DecodeConfig(device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVDEC needs a CUDA GPU")
def test_torchcodec_on_the_gpu_gives_the_cpu_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", size=(256, 144), frames=40, audio=False, rotation=90)
    gpu = _decode(path, ("torchcodec",), device="cuda", max_side=128)
    _same(gpu, _decode(path, ("torchcodec",), max_side=128), tol=8.0)
    streams = decode_stream(str(path), gpu["timestamps"], 64, DecodeConfig(decoders=("torchcodec",), device="cuda"))
    assert streams.shape == (4, 64, 36, 3)

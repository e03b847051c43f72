import numpy as np
import pytest

from media import write_broken_set, write_video
from pipeline.decode import DecodeConfig, DecodeError, decode_video, segment_indices


def test_segment_indices_are_midpoints_and_respect_trim():
    assert segment_indices(80, 4).tolist() == [10, 30, 50, 70]
    assert segment_indices(100, 4, start=20, end=60).tolist() == [25, 35, 45, 55]
    assert segment_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # short videos repeat frames
    with pytest.raises(DecodeError, match="empty frame range"):
        segment_indices(10, 4, start=12)


def test_decord_decodes_frames_next_frames_timestamps_and_audio(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=20, fps=10, step=2)
    out = decode_video(str(path), DecodeConfig(num_frames_stored=4, max_side=None, decoders=("decord",)))
    assert out["decoder"] == "decord"
    assert out["frames"].shape == (4, 48, 64, 3) and out["frames"].dtype == np.uint8
    assert out["frame_indices"].tolist() == [2, 7, 12, 17]
    np.testing.assert_allclose(out["timestamps"], out["frame_indices"] / 10, atol=1e-3)
    # next_frames are the source frames right after each stored one: the bar moved 2 px right
    col = lambda f: np.argmax(f[..., 0].mean(0) > 128)  # noqa: E731
    assert [col(b) - col(a) for a, b in zip(out["frames"], out["next_frames"])] == [2, 2, 2, 2]
    assert out["audio"].dtype == np.float32 and abs(out["audio"].size - 32000) < 4000
    spectrum = np.abs(np.fft.rfft(out["audio"][4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 5  # 1 Hz bins over 16000 samples


def test_resize_caps_the_longer_side(tmp_path):
    path = write_video(tmp_path / "v.mp4", size=(128, 96))
    out = decode_video(str(path), DecodeConfig(num_frames_stored=2, max_side=64))
    assert out["frames"].shape == (2, 48, 64, 3) and out["next_frames"].shape == (2, 48, 64, 3)


def test_pyav_fallback_when_decord_rejects(tmp_path, monkeypatch):
    import pipeline.decode as dec

    path = write_video(tmp_path / "v.mp4")
    ref = decode_video(str(path), DecodeConfig(num_frames_stored=4, decoders=("decord", "pyav")))
    assert ref["decoder"] == "decord"

    def reject(*a, **k):
        raise RuntimeError("decord says no")

    monkeypatch.setattr(dec, "_decode_decord", reject)
    out = decode_video(str(path), DecodeConfig(num_frames_stored=4, decoders=("decord", "pyav")))
    assert out["decoder"] == "pyav"
    assert out["frame_indices"].tolist() == ref["frame_indices"].tolist()
    assert np.abs(out["frames"].astype(int) - ref["frames"].astype(int)).mean() < 2.0


def test_bad_inputs_raise_with_reasons_and_partial_inputs_decode(tmp_path):
    media = write_broken_set(tmp_path)
    cfg = DecodeConfig(num_frames_stored=4)
    expected = {"missing": "file not found", "zero_byte": "empty file", "truncated": "undecodable video",
                "corrupt": "undecodable video"}
    for name, needle in expected.items():
        with pytest.raises(DecodeError, match=needle):
            decode_video(str(media[name]), cfg)
    silent = decode_video(str(media["no_audio"]), cfg)
    assert silent["audio"] is None and silent["audio_note"] == "no audio stream" and silent["frames"].shape[0] == 4
    single = decode_video(str(media["one_frame"]), cfg)
    assert single["num_frames"] == 1 and single["next_frames"] is None and single["frame_indices"].tolist() == [0] * 4


def test_image_folder_is_a_video(tmp_path):
    import cv2

    for i in range(6):
        img = np.full((30, 40, 3), i * 40, np.uint8)
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), img)
    out = decode_video(str(tmp_path), DecodeConfig(num_frames_stored=3, image_fps=3.0))
    assert out["decoder"] == "images" and out["audio"] is None
    assert out["frame_indices"].tolist() == [1, 3, 5]
    assert [int(f[0, 0, 0]) for f in out["frames"]] == [40, 120, 200]

"""The synthetic demo: real mp4 files that decode with decord, whose answers agree with the pixels
and the audio, generated deterministically and idempotently."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import decord
import numpy as np
import pytest

from pipeline.demo import (
    COLOURS,
    DIRECTIONS,
    MARKER,
    QTYPES,
    SOUNDS,
    DemoParams,
    generate_demo,
    plan_demo,
    questions_for,
)
from core.schema import SPLITS

SMALL = 10
# Image coordinates: x grows rightwards, y downwards. Written out here, not imported, so a sign
# error in the generator cannot cancel out.
DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SR = 16000


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), seed=7, num_videos=SMALL)


def _rows(root: Path) -> dict[str, list[dict]]:
    return {s: json.loads((root / "annotations" / f"{s}.json").read_text()) for s in SPLITS}


def _specs_by_video(seed: int, num_videos: int) -> dict:
    return {s.video_id: s for s in plan_demo(DemoParams(seed=seed, num_videos=num_videos))}


def _frames(path: Path) -> np.ndarray:
    return decord.VideoReader(str(path), ctx=decord.cpu(0)).get_batch(list(range(30))).asnumpy()


def _audio(path: Path) -> np.ndarray:
    return decord.AudioReader(str(path), sample_rate=SR, mono=True)[:].asnumpy()[0]


def _colour_mask(frames: np.ndarray, colour: str) -> np.ndarray:
    # Interior pixels survive yuv420p within a small distance; object colours are >70 apart.
    diff = frames.astype(np.float32) - np.array(COLOURS[colour], np.float32)
    return np.linalg.norm(diff, axis=-1) < 40


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    assert len(xs) > 20, "object not found in the decoded frame"
    return np.array([xs.mean(), ys.mean()])


def _classify_sound(audio: np.ndarray) -> str:
    """Name the sound from decoded samples alone: energy, dominant frequency and its trend, gating."""
    if np.sqrt(np.mean(audio**2)) < 1e-3:
        return "silence"
    win, hop = 1024, 512
    frames = np.stack([audio[i : i + win] * np.hanning(win) for i in range(0, len(audio) - win, hop)])
    spectrum = np.abs(np.fft.rfft(frames, axis=1))
    loud = spectrum.max(axis=1) > 0.2 * spectrum.max()
    peaks = np.fft.rfftfreq(win, 1 / SR)[spectrum.argmax(axis=1)][loud]
    third = max(1, len(peaks) // 3)
    if peaks[-third:].mean() - peaks[:third].mean() > 1000:
        return "a rising tone"
    short = audio[: len(audio) // 320 * 320].reshape(-1, 320)  # 20 ms blocks
    rms = np.sqrt((short**2).mean(axis=1))
    quiet = np.mean(rms < 0.1 * rms.max())
    if 0.3 < quiet < 0.7:
        assert 800 < np.median(peaks) < 1200
        return "a beeping tone"
    return "a low tone" if np.median(peaks) < 1000 else "a high tone"


def test_layout_and_schema(small_demo):
    rows = _rows(small_demo)
    videos = sorted(p.name for p in (small_demo / "videos").iterdir())
    assert videos == [f"demo_{i:04d}.mp4" for i in range(SMALL)]
    split_of = {}
    for split, items in rows.items():
        assert len(items) % 3 == 0 and items
        for row in items:
            assert set(row) == {"video", "num_option", "qid", "a0", "a1", "a2", "a3", "a4", "answer", "question"}
            assert row["num_option"] == 5 and 0 <= row["answer"] < 5
            assert len({row[f"a{i}"] for i in range(5)}) == 5
            qtype, video, n = row["qid"].split("_", 1)[0], row["video"], row["qid"].rsplit("_", 1)[1]
            assert row["qid"] == f"{qtype}_{video}_{n}" and qtype in QTYPES
            assert split_of.setdefault(video, split) == split  # split by video, never by question
    assert collections.Counter(split_of.values()) == {"train": 6, "val": 2, "test": 2}
    marker = json.loads((small_demo / MARKER).read_text())
    assert marker["params"]["num_videos"] == SMALL and marker["qa"] == {"train": 18, "val": 6, "test": 6}


def test_videos_decode_with_expected_shape_and_audio(small_demo):
    for path in sorted((small_demo / "videos").glob("*.mp4")):
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        assert len(reader) == 30
        assert reader[0].shape == (120, 160, 3)
        assert reader.get_avg_fps() == pytest.approx(10.0)
        samples = decord.AudioReader(str(path), sample_rate=SR, mono=True).shape
        assert samples[0] == 1 and abs(samples[1] - 3 * SR) <= 2048  # AAC pads to whole frames


def test_motion_answers_match_pixels(small_demo):
    specs = _specs_by_video(7, SMALL)
    checked = collections.Counter()
    for split_rows in _rows(small_demo).values():
        for row in (r for r in split_rows if r["qid"].startswith("motion")):
            answer = row[f"a{row['answer']}"]
            colour = row["question"].split("the ", 1)[1].split()[0]
            frames = _frames(small_demo / "videos" / f"{row['video']}.mp4")
            move = _centroid(_colour_mask(frames[-1], colour)) - _centroid(_colour_mask(frames[0], colour))
            if answer == "it does not move":
                assert np.abs(move).max() < 1.0, (row["qid"], move)
            else:
                expected = np.array(DIRECTION_VECTORS[answer], float)
                assert move @ expected > 20 and abs(move @ expected[::-1]) < 2, (row["qid"], answer, move)
            assert answer == specs[row["video"]].direction
            checked[answer] += 1
    assert len(checked) >= 4  # the check ran on several directions, "no motion" included or not


def test_sound_answers_match_decoded_audio(small_demo):
    seen = set()
    for split_rows in _rows(small_demo).values():
        for row in (r for r in split_rows if r["qid"].startswith("sound")):
            answer = row[f"a{row['answer']}"]
            assert _classify_sound(_audio(small_demo / "videos" / f"{row['video']}.mp4")) == answer, row["qid"]
            seen.add(answer)
    assert seen == set(SOUNDS)  # every class appears (10 clips, balanced) and is told apart


def test_depth_answers_match_occlusion(small_demo):
    specs = _specs_by_video(7, SMALL)
    for split_rows in _rows(small_demo).values():
        for row in (r for r in split_rows if r["qid"].startswith("depth")):
            spec = specs[row["video"]]
            assert row[f"a{row['answer']}"] == f"the {spec.near.name}"
            assert f"the {spec.far.name}" in [row[f"a{i}"] for i in range(5)]
            frames = _frames(small_demo / "videos" / f"{row['video']}.mp4")
            near = _colour_mask(frames, spec.near.colour).sum(axis=(1, 2))
            far = _colour_mask(frames, spec.far.colour).sum(axis=(1, 2))
            # The nearer object stays whole; the farther one loses area only while they overlap.
            assert near.min() > 0.85 * near.max(), row["qid"]
            assert far[15] < 0.8 * far[0] and far[-1] > 0.85 * far[0], (row["qid"], far[[0, 15, -1]])
            # The cue is temporal: the first and last frames show no occlusion at all...
            assert far[0] > 0.85 * far.max()
            # ...but evaluation's T=4 segment-midpoint frames catch it.
            midpoints = [int((i + 0.5) * len(far) / 4) for i in range(4)]
            assert min(far[midpoints]) < 0.9 * far[0], (row["qid"], far[midpoints])


def test_answer_letters_and_values_are_balanced():
    params = DemoParams(seed=0, num_videos=120)
    by_split = collections.defaultdict(list)
    for spec in plan_demo(params):
        by_split[spec.split].extend(questions_for(spec))
    assert {s: len(r) for s, r in by_split.items()} == {"train": 252, "val": 54, "test": 54}
    for split, rows in by_split.items():
        for qtype, values in (("motion", DIRECTIONS), ("sound", SOUNDS)):
            mine = [r for r in rows if r["qid"].startswith(qtype)]
            letters = collections.Counter(r["answer"] for r in mine)
            answers = collections.Counter(r[f"a{r['answer']}"] for r in mine)
            assert set(answers) == set(values) and set(letters) == set(range(5))
            assert max(letters.values()) - min(letters.values()) <= 1, (split, qtype, letters)
            assert max(answers.values()) - min(answers.values()) <= 1, (split, qtype, answers)
        depth = [r for r in rows if r["qid"].startswith("depth")]
        letters = collections.Counter(r["answer"] for r in depth)
        assert max(letters.values()) - min(letters.values()) <= 1
    specs = plan_demo(params)
    # Size is no shortcut for depth: the nearer object is the larger one about half of the time.
    larger = np.mean([s.near.size > s.far.size for s in specs])
    assert 0.35 < larger < 0.65


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = generate_demo(tmp_path / "a", seed=3, num_videos=4)
    b = generate_demo(tmp_path / "b", seed=3, num_videos=4)
    c = generate_demo(tmp_path / "c", seed=4, num_videos=4)
    assert _rows(a) == _rows(b) and _rows(a) != _rows(c)
    for name in [f"demo_{i:04d}.mp4" for i in range(4)]:
        assert np.array_equal(_frames(a / "videos" / name), _frames(b / "videos" / name))
        assert np.array_equal(_audio(a / "videos" / name), _audio(b / "videos" / name))
        digest = [hashlib.sha256((r / "videos" / name).read_bytes()).hexdigest() for r in (a, b)]
        assert digest[0] == digest[1]  # threads=1 x264: bit-identical files


def test_second_call_is_a_no_op_and_new_params_regenerate(tmp_path, capsys):
    root = generate_demo(tmp_path, seed=1, num_videos=3)
    marker = (root / MARKER).read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (root / "videos").iterdir()}
    capsys.readouterr()
    generate_demo(tmp_path, seed=1, num_videos=3)
    assert capsys.readouterr().out == ""
    assert (root / MARKER).read_text() == marker
    assert {p: p.stat().st_mtime_ns for p in (root / "videos").iterdir()} == stamps

    generate_demo(tmp_path, seed=1, num_videos=4)
    assert "parameters changed (num_videos 3 -> 4)" in capsys.readouterr().out
    assert json.loads((root / MARKER).read_text())["params"]["num_videos"] == 4
    assert len(list((root / "videos").iterdir())) == 4


def test_killed_run_is_redone(tmp_path):
    root = generate_demo(tmp_path, seed=2, num_videos=3)
    # A run killed mid-way leaves no marker, maybe a temp folder and a truncated annotation file.
    (root / MARKER).unlink()
    (root / ".demo-tmp-dead").mkdir()
    (root / "annotations" / "train.json").write_text("[")
    generate_demo(tmp_path, seed=2, num_videos=3)
    assert not (root / ".demo-tmp-dead").exists()
    assert len(json.loads((root / "annotations" / "train.json").read_text())) == 3
    assert json.loads((root / MARKER).read_text())["params"]["seed"] == 2

    # Edited annotations no longer match the marker's hash: regenerated too.
    (root / "annotations" / "val.json").write_text("[]")
    generate_demo(tmp_path, seed=2, num_videos=3)
    assert len(json.loads((root / "annotations" / "val.json").read_text())) == 3


def test_refuses_to_overwrite_foreign_files(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "my_holiday.mp4").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="my_holiday.mp4"):
        generate_demo(tmp_path, num_videos=3)
    assert (tmp_path / "videos" / "my_holiday.mp4").read_bytes() == b"precious"


@pytest.mark.parametrize("kwargs", [{"num_videos": 2}, {"width": 161}, {"fps": 1}])
def test_rejects_unusable_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError, match="demo"):
        generate_demo(tmp_path, **kwargs)


def test_make_demo_script(tmp_path, capsys):
    from scripts.make_demo import main

    root = main(["--root", str(tmp_path / "d"), "--seed", "5", "--num-videos", "3"])
    assert "demo: 3 videos, 9 QA" in capsys.readouterr().out
    assert json.loads((root / MARKER).read_text())["params"]["seed"] == 5

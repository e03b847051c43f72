"""Dataset adapters on annotation files written by the tests, including broken ones, and every
conf/dataset/*.yaml composed with Hydra."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from core.datasets import ADAPTERS, AnnotationError, load_dataset
from core.schema import QARecord, VideoEntry, safe_video_id
from pipeline.demo import ensure_demo

CONF = Path(__file__).resolve().parents[1] / "conf"


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _cfg(name: str, root: Path, **extra) -> dict:
    return {
        "name": name, "root": str(root), "video_dir": str(root / "videos"),
        "annotations": {s: str(root / f"{s}.json") for s in ("train", "val", "test")}, **extra,
    }


def _mc(video, qid, answer=1, **extra) -> dict:
    row = {"video": video, "num_option": 5, "qid": qid, "answer": answer, "question": f"what about {video}"}
    row.update({f"a{i}": f"option {i} of {qid}" for i in range(5)})
    row.update(extra)
    return row


# ----------------------------------------------------------------------------- registry


def test_registry_names_every_dataset_config():
    configs = {p.stem for p in (CONF / "dataset").glob("*.yaml")}
    assert set(ADAPTERS) == configs == {"demo", "nextqa", "music_avqa", "sqa3d", "touchqa", "thermalqa", "videos"}


def test_unknown_adapter_is_named():
    with pytest.raises(ValueError, match="'nope'.*known adapters"):
        load_dataset({"name": "nope"})


def test_adapter_key_overrides_name(tmp_path):
    for split in ("train", "val", "test"):
        _write(tmp_path / f"{split}.json", [_mc(f"v{split}", f"TN_v{split}_0")])
    index = load_dataset(_cfg("my_nextqa_copy", tmp_path, adapter="nextqa"))
    assert index.name == "my_nextqa_copy" and len(index.videos) == 3


# ----------------------------------------------------------------------------- NExT-QA


@pytest.fixture
def nextqa_dir(tmp_path) -> Path:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "1001.webm").write_bytes(b"x")  # only the second extension exists
    (tmp_path / "videos" / "1002.mp4").write_bytes(b"x")
    _write(tmp_path / "train.json", [_mc("1001", "CW_1001_0", 3), _mc("1002", "TN_1002_1", 0), _mc("1001", "DC_1001_2", 4)])
    _write(tmp_path / "val.json", [_mc("1003", "CW_1003_0", 2)])
    # 1002 is in test as well: listed once, under train.
    _write(tmp_path / "test.json", [_mc("1002", "TC_1002_5", 1), _mc("1004", "TP_1004_0", 0)])
    return tmp_path


def test_nextqa_reads_sevila_rows(nextqa_dir):
    index = load_dataset(_cfg("nextqa", nextqa_dir, video_exts=[".mp4", "webm"]))
    assert [v.video_id for v in index.videos] == ["1001", "1002", "1003", "1004"]
    assert [v.split for v in index.videos] == ["train", "train", "val", "test"]
    assert index.videos[0].path == str(nextqa_dir / "videos" / "1001.webm")
    # A missing video is not the adapter's business: kept, with the first extension guessed.
    assert index.videos[3].path == str(nextqa_dir / "videos" / "1004.mp4")
    first = index.qa["train"][0]
    assert first == QARecord(
        qid="CW_1001_0", video_id="1001", split="train", question="what about 1001",
        answer="option 3 of CW_1001_0", options=tuple(f"option {i} of CW_1001_0" for i in range(5)),
        answer_idx=3, qtype="CW",
    )
    assert [q.qtype for q in index.qa["test"]] == ["TC", "TP"]
    assert {s: len(q) for s, q in index.qa.items()} == {"train": 3, "val": 1, "test": 2}


def test_nextqa_unsafe_video_names_get_stable_ids(tmp_path):
    _write(tmp_path / "train.json", [_mc("1164/3238737531", "CW_x_0")])
    cfg = _cfg("nextqa", tmp_path)
    cfg["annotations"] = {"train": cfg["annotations"]["train"]}
    index = load_dataset(cfg)
    assert index.videos[0].video_id == safe_video_id("1164/3238737531") == load_dataset(cfg).videos[0].video_id
    assert index.videos[0].video_id.startswith("1164_3238737531-")
    assert index.videos[0].path == str(tmp_path / "videos" / "1164" / "3238737531.mp4")


def test_val_from_train_carves_whole_videos(tmp_path):
    rows = [_mc(f"{v:04d}", f"CW_{v:04d}_{n}") for v in range(200) for n in range(2)]
    _write(tmp_path / "train.json", rows)
    _write(tmp_path / "test.json", [_mc("9999", "CW_9999_0")])
    cfg = _cfg("nextqa", tmp_path, val_from_train=0.1)
    cfg["annotations"]["val"] = None
    index = load_dataset(cfg)
    train_videos = {q.video_id for q in index.qa["train"]}
    val_videos = {q.video_id for q in index.qa["val"]}
    assert not train_videos & val_videos and len(train_videos | val_videos) == 200
    assert 8 <= len(val_videos) <= 35  # ~10% of 200, by hash
    assert all(v.split == "val" for v in index.videos if v.video_id in val_videos)
    assert all(q.split == "val" for q in index.qa["val"])
    assert {q.video_id for q in load_dataset(cfg).qa["val"]} == val_videos  # deterministic


BAD_NEXTQA = {
    "missing key": ([_mc("1", "CW_1_0"), {k: v for k, v in _mc("2", "CW_2_0").items() if k != "answer"}], "row 1 \\(qid='CW_2_0'\\): key 'answer' is missing"),
    "answer out of range": ([_mc("1", "CW_1_0", answer=5)], "key 'answer' is 5, outside 0..4"),
    "answer not an int": ([_mc("1", "CW_1_0", answer="B")], "key 'answer' must be an integer"),
    "missing option": ([{k: v for k, v in _mc("1", "CW_1_0").items() if k != "a4"}], "key 'a4' is missing"),
    "duplicate qid": ([_mc("1", "CW_1_0"), _mc("2", "CW_1_0")], "rows 0 and 1 share qid 'CW_1_0'"),
    "not a list": ({"video": "1"}, "top level is a dict, not a list"),
    "row not an object": (["CW_1_0"], "row 0 is a str, not an object"),
    "malformed json": ('[{"video": "1",', "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_NEXTQA), ids=list(BAD_NEXTQA))
def test_nextqa_errors_name_file_row_and_key(tmp_path, case):
    content, message = BAD_NEXTQA[case]
    path = _write(tmp_path / "train.json", content)
    cfg = _cfg("nextqa", tmp_path)
    cfg["annotations"] = {"train": str(path)}
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(cfg)
    assert str(path) in str(err.value)
    if case != "duplicate qid":
        assert "expected NExT-QA SeViLA format" in str(err.value)


def test_missing_annotation_file_names_path_and_schema(tmp_path):
    cfg = _cfg("nextqa", tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(cfg)
    assert str(tmp_path / "train.json") in str(err.value) and '"num_option"' in str(err.value)


# ----------------------------------------------------------------------------- demo


def test_demo_is_generated_by_the_pipeline_and_read_by_the_adapter(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+dataset=demo", f"dataset.root={tmp_path}/demo", "dataset.num_videos=3"])
    with pytest.raises(AnnotationError, match="make extract DATASET=demo"):
        load_dataset(cfg.dataset)  # reading never generates (the trainer only reads)
    ensure_demo(cfg.dataset)
    index = load_dataset(cfg.dataset)
    assert [v.video_id for v in index.videos] == ["demo_0000", "demo_0001", "demo_0002"]
    assert all(Path(v.path).is_file() for v in index.videos)
    assert {s: len(q) for s, q in index.qa.items()} == {"train": 3, "val": 3, "test": 3}
    assert {q.qtype for q in index.qa["train"]} == {"motion", "sound", "depth"}
    assert all(q.answer == q.options[q.answer_idx] for qs in index.qa.values() for q in qs)
    marker = (tmp_path / "demo" / "DEMO_DONE.json").stat().st_mtime_ns
    ensure_demo(cfg.dataset)  # second use finds it complete: does not regenerate
    assert (tmp_path / "demo" / "DEMO_DONE.json").stat().st_mtime_ns == marker


# ----------------------------------------------------------------------------- MUSIC-AVQA


def _avqa(video_id, qid, content, values, answer="yes", qtype='["Audio-Visual", "Existential"]') -> dict:
    return {"video_id": video_id, "question_id": qid, "type": qtype, "question_content": content,
            "templ_values": values, "anser": answer, "question_deleted": 0}


def test_music_avqa_fills_slots_in_order_and_lowercases(tmp_path):
    _write(tmp_path / "train.json", [
        _avqa("00000823", 7, "Is the <Object> on the left louder than the <Object> on the right?", '["Cello", "piano"]'),
        _avqa("00000824", 8, "How many instruments are sounding?", "[]", answer="two", qtype='["Audio", "Counting"]'),
    ])
    _write(tmp_path / "val.json", [_avqa("00000825", 9, "What is the <LR> instrument?", "['left']", answer="acoustic_guitar")])
    _write(tmp_path / "test.json", [_avqa("00000823", 10, "Is there a <Object>?", '["flute"]', answer="no")])
    index = load_dataset(_cfg("music_avqa", tmp_path))
    q = index.qa["train"][0]
    assert q.question == "is the cello on the left louder than the piano on the right?"
    assert (q.qid, q.answer, q.options, q.answer_idx, q.qtype) == ("7", "yes", (), None, "Audio-Visual/Existential")
    assert q.extra["type"] == ["Audio-Visual", "Existential"]
    assert index.qa["val"][0].question == "what is the left instrument?"
    assert index.qa["val"][0].answer == "acoustic guitar" and index.qa["val"][0].extra["anser"] == "acoustic_guitar"
    assert [v.video_id for v in index.videos] == ["00000823", "00000824", "00000825"]
    assert index.videos[0] == VideoEntry("00000823", str(tmp_path / "videos" / "00000823.mp4"), "train")


@pytest.mark.parametrize(
    "row, key",
    [
        ({k: v for k, v in _avqa("1", 3, "Is it?", "[]").items() if k != "anser"}, "anser"),
        (_avqa("1", 3, "Is the <Object> left of the <Object>?", '["cello"]'), "templ_values"),
        (_avqa("1", 3, "Is the <Object> here?", "cello"), "templ_values"),
        (_avqa("1", 3, "Is it?", "[]", qtype="Audio"), "type"),
    ],
    ids=["no anser", "too few values", "values not a list", "type not a list"],
)
def test_music_avqa_errors(tmp_path, row, key):
    path = _write(tmp_path / "train.json", [_avqa("0", 2, "Is it?", "[]"), row])
    cfg = _cfg("music_avqa", tmp_path)
    cfg["annotations"] = {"train": str(path)}
    with pytest.raises(ValueError) as err:
        load_dataset(cfg)
    message = str(err.value)
    assert str(path) in message and "row 1 (question_id=3)" in message and f"key {key!r}" in message
    assert "MUSIC-AVQA json_update format" in message


# ----------------------------------------------------------------------------- SQA3D


def _sqa(scene, qid, question="What is in front of me?", answers=("table",)) -> dict:
    return {"scene_id": scene, "situation": f"I am standing in {scene}.", "question": question,
            "answers": list(answers), "question_id": qid}


def test_sqa3d_scene_is_mp4_or_frame_folder(tmp_path):
    (tmp_path / "videos" / "scene0001_00").mkdir(parents=True)
    (tmp_path / "videos" / "scene0000_00.mp4").write_bytes(b"x")
    _write(tmp_path / "train.json", [_sqa("scene0000_00", 1), _sqa("scene0001_00", 2, "Is the door open?", ("yes", "yeah"))])
    _write(tmp_path / "val.json", [_sqa("scene0002_00", 3, "Which way should I go?")])
    _write(tmp_path / "test.json", [_sqa("scene0000_00", 4, "Can I sit down?")])
    index = load_dataset(_cfg("sqa3d", tmp_path, video_exts=[".mp4"]))
    paths = {v.video_id: v.path for v in index.videos}
    assert paths == {
        "scene0000_00": str(tmp_path / "videos" / "scene0000_00.mp4"),
        "scene0001_00": str(tmp_path / "videos" / "scene0001_00"),
        "scene0002_00": str(tmp_path / "videos" / "scene0002_00"),  # neither exists: frames folder
    }
    q = index.qa["train"][1]
    assert (q.qid, q.answer, q.qtype, q.options) == ("2", "yes", "Is", ())
    assert q.extra == {"situation": "I am standing in scene0001_00.", "answers": ["yes", "yeah"]}
    assert [x.qtype for x in index.qa["train"] + index.qa["val"] + index.qa["test"]] == ["What", "Is", "Which", "Can"]


@pytest.mark.parametrize("row, key", [
    (_sqa("scene0", 5, answers=()), "answers"),
    ({k: v for k, v in _sqa("scene0", 5).items() if k != "situation"}, "situation"),
    ({k: v for k, v in _sqa("scene0", 5).items() if k != "scene_id"}, "scene_id"),
])
def test_sqa3d_errors(tmp_path, row, key):
    path = _write(tmp_path / "train.json", [row])
    cfg = _cfg("sqa3d", tmp_path)
    cfg["annotations"] = {"train": str(path)}
    with pytest.raises(ValueError) as err:
        load_dataset(cfg)
    assert str(path) in str(err.value) and "question_id=5" in str(err.value) and f"key {key!r}" in str(err.value)
    assert "SQA_{train,val,test}.json" in str(err.value)


# ----------------------------------------------------------------------------- Touch-QA / Thermal-QA


@pytest.mark.parametrize("name", ["touchqa", "thermalqa"])
def test_trimmed_clips(tmp_path, name):
    clip = lambda vid, qid, start, end: _mc("session_01", qid, video_id=vid, question_id=qid, start=start, end=end)
    _write(tmp_path / "train.json", [clip("s01_a", "q1", 0, 30), clip("s01_b", "q2", 31.0, 60), clip("s01_a", "q3", 0, 30)])
    _write(tmp_path / "val.json", [clip("s01_c", "q4", "61", "90")])
    _write(tmp_path / "test.json", [clip("s01_a", "q5", 0, 30)])
    index = load_dataset(_cfg(name, tmp_path))
    path = str(tmp_path / "videos" / "session_01.mp4")
    assert index.videos == [
        VideoEntry("s01_a", path, "train", 0, 30), VideoEntry("s01_b", path, "train", 31, 60),
        VideoEntry("s01_c", path, "val", 61, 90),
    ]
    assert index.qa["test"][0].video_id == "s01_a" and index.qa["train"][1].extra == {"question_id": "q2"}


@pytest.mark.parametrize("rows, message", [
    ([{**_mc("v", "q1"), "video_id": "c", "question_id": 1, "start": 5}], "key 'end' is missing"),
    ([{**_mc("v", "q1"), "video_id": "c", "question_id": 1, "start": 9, "end": 3}], "key 'end' must satisfy 0 <= start <= end"),
    ([{**_mc("v", "q1"), "video_id": "c", "question_id": 1, "start": 1.5, "end": 3}], "key 'start' must be a whole number"),
    ([{**_mc("v", "q1"), "question_id": 1, "start": 1, "end": 3}], "key 'video_id' is missing"),
])
def test_trimmed_errors(tmp_path, rows, message):
    path = _write(tmp_path / "train.json", rows)
    cfg = _cfg("touchqa", tmp_path)
    cfg["annotations"] = {"train": str(path)}
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(cfg)
    assert str(path) in str(err.value) and "qid='q1'" in str(err.value) and '"start": <frame>' in str(err.value)


def test_one_clip_id_cannot_mean_two_trims(tmp_path):
    rows = [{**_mc("v", f"q{i}"), "video_id": "c", "question_id": i, "start": 0, "end": end} for i, end in enumerate((10, 20))]
    cfg = _cfg("thermalqa", tmp_path)
    cfg["annotations"] = {"train": str(_write(tmp_path / "train.json", rows))}
    with pytest.raises(ValueError, match="video_id 'c' names two different clips.*qid 'q1'"):
        load_dataset(cfg)


# ----------------------------------------------------------------------------- plain videos


@pytest.fixture
def video_tree(tmp_path) -> Path:
    root = tmp_path / "clips"
    for rel in ["b.mp4", "a/one.MKV", "a/deeper/two.webm", "a/notes.txt", ".hidden/x.mp4", "a/.x.mp4", "with space.mp4"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def test_videos_from_folder(video_tree):
    index = load_dataset({"name": "videos", "path": str(video_tree), "video_exts": [".mp4", ".mkv", ".webm"]})
    assert index.qa == {} and {v.split for v in index.videos} == {"all"}
    rels = ["a/deeper/two.webm", "a/one.MKV", "b.mp4", "with space.mp4"]
    assert [v.path for v in index.videos] == [str(video_tree / r) for r in rels]
    assert [v.video_id for v in index.videos] == [safe_video_id(r) for r in rels]
    assert index.videos[2].video_id == "b.mp4"
    flat = load_dataset({"name": "videos", "path": str(video_tree), "recursive": False, "video_exts": [".mp4"]})
    assert [v.video_id for v in flat.videos] == ["b.mp4", safe_video_id("with space.mp4")]


def test_videos_from_list_file(video_tree, tmp_path):
    outside = tmp_path / "elsewhere" / "c.mp4"
    listing = _write(video_tree / "list.txt", "\n".join([
        "# my clips", "b.mp4", "  ./a/one.MKV  ", "", "b.mp4", str(outside), "missing/gone.mp4",
    ]))
    index = load_dataset({"name": "videos", "path": str(listing)})
    assert [v.path for v in index.videos] == [
        str(video_tree / "b.mp4"), str(video_tree / "a" / "one.MKV"), str(outside), str(video_tree / "missing" / "gone.mp4"),
    ]
    assert [v.video_id for v in index.videos][:2] == ["b.mp4", safe_video_id("a/one.MKV")]


def test_videos_errors(tmp_path):
    with pytest.raises(ValueError, match="make extract DATASET=videos DATA="):
        load_dataset({"name": "videos", "path": None})
    with pytest.raises(FileNotFoundError, match="neither a folder nor a list file"):
        load_dataset({"name": "videos", "path": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos with extensions"):
        load_dataset({"name": "videos", "path": str(tmp_path / "empty")})


# ----------------------------------------------------------------------------- configs

EXPECTED_MODALITIES = {
    "nextqa": ["rgb", "depth", "flow", "normal"],
    "music_avqa": ["rgb", "audio", "flow", "depth", "normal"],
    "sqa3d": ["rgb", "pointcloud", "depth", "normal"],
    "touchqa": ["rgb", "flow", "depth", "normal"],
    "thermalqa": ["rgb", "flow", "depth", "normal"],
    "demo": ["rgb", "depth", "flow", "normal", "pointcloud", "audio"],
    "videos": ["rgb", "depth", "flow", "normal", "pointcloud", "audio"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MODALITIES))
def test_dataset_configs_compose(name, monkeypatch):
    monkeypatch.setenv("CREMA_DATA", "/data/crema")
    monkeypatch.delenv("DATA", raising=False)
    text = (CONF / "dataset" / f"{name}.yaml").read_text()
    assert text.startswith(f"# make extract DATASET={name}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+dataset={name}"]).dataset
    assert cfg.name == name and list(cfg.modalities) == EXPECTED_MODALITIES[name]
    assert all(e.startswith(".") for e in cfg.video_exts)
    if name == "videos":
        assert cfg.path is None
        return
    assert cfg.root == f"/data/crema/{name}" and cfg.video_dir.startswith(cfg.root + "/")
    for split in ("train", "val", "test"):
        assert cfg.annotations[split] is None or cfg.annotations[split].startswith(cfg.root + "/")


def test_videos_config_takes_data_from_command_line_or_env(video_tree, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+dataset=videos", f"dataset.path={video_tree}"]).dataset
        assert len(load_dataset(cfg).videos) == 4
        monkeypatch.setenv("DATA", os.fspath(video_tree / "a"))
        cfg = compose(config_name=None, overrides=["+dataset=videos"]).dataset
        assert [v.video_id for v in load_dataset(cfg).videos] == [safe_video_id("deeper/two.webm"), safe_video_id("one.MKV")]

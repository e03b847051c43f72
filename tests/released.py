"""Dataset folders in each dataset's RELEASED layout, written from the format descriptions (field
names and types as released), with tiny stand-in media (empty files: only existence is checked).

Every folder has several questions per video/recording, at least one missing media file, and
(Thermal-QA) a row without `end`. `EXPECTED[name]` is what `make data` must count per split
with the default config and only `dataset.root` set.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1))
    return path


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def sevila(video: str, qid: str, answer: int = 2, question: str = "what does the man do after sitting down?") -> dict:
    """One NExT-QA SeViLA row."""
    return {"video": video, "num_option": 5, "qid": qid, **{f"a{i}": f"option {i} of {qid}" for i in range(5)},
            "answer": answer, "question": question}


# ----------------------------------------------------------------------------- NExT-QA (SeViLA json)

def nextqa(root: Path) -> Path:
    write_json(root / "train.json", [
        sevila("1106/4010069381", "CH_4010069381_6", 0), sevila("1106/4010069381", "TN_4010069381_7", 4),
        sevila("1107/5003000001", "DC_5003000001_0", 1), sevila("1108/6000000002", "CW_6000000002_1", 3),
    ])
    write_json(root / "val.json", [
        sevila("1106/4010069381", "TC_4010069381_9", 2), sevila("0000/2440175990", "DO_2440175990_0", 1),
    ])
    touch(root, "videos/1106/4010069381.mp4", "videos/1107/5003000001.mp4", "videos/1108/6000000002.mp4")
    return root  # videos/0000/2440175990.mp4 is missing


# ----------------------------------------------------------------------------- NExT-QA (original CSVs)

CSV_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
              "a0", "a1", "a2", "a3", "a4"]


def csv_row(video: int, qid: int, qtype: str, answer: int) -> list:
    return [video, 900, 640, 480, f"why did the boy run ({qid})", answer, qid, qtype,
            *[f"reason {i}" for i in range(5)]]


def write_csv(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([CSV_HEADER, *rows])
    return path


def nextqa_csv(root: Path) -> Path:
    write_csv(root / "train.csv", [csv_row(4010069381, 6, "CH", 0), csv_row(4010069381, 7, "TN", 4),
                                   csv_row(5003000001, 0, "DC", 1)])
    write_csv(root / "val.csv", [csv_row(2440175990, 0, "CW", 3)])
    # qid 6 of 4010069381 exists in train too: qids number questions per video and split
    write_csv(root / "test.csv", [csv_row(4010069381, 6, "TP", 2), csv_row(5003000001, 3, "DL", 0)])
    write_json(root / "map_vid_vidorID.json", {"4010069381": "1106/4010069381", "5003000001": "1107/5003000001",
                                               "2440175990": "0000/2440175990"})
    touch(root, "videos/1106/4010069381.mp4", "videos/1107/5003000001.mp4")
    return root  # videos/0000/2440175990.mp4 is missing


# ----------------------------------------------------------------------------- MUSIC-AVQA (json_update)

def avqa(video_id: str, qid: int, content: str, values: str, answer: str, qtype: str) -> dict:
    return {"video_id": video_id, "question_id": qid, "type": qtype, "question_content": content,
            "templ_values": values, "anser": answer, "question_deleted": 0}


def music_avqa(root: Path) -> Path:
    counting = '["Audio", "Counting"]'
    write_json(root / "json_update" / "avqa-train.json", [
        avqa("00000823", 1, "How many instruments are sounding in the video?", "[]", "two", counting),
        avqa("00000823", 2, "Is the <Object> in the video always playing?", '["cello"]', "yes",
             '["Visual", "Existential"]'),
        avqa("va00000001", 3, "How many <Object> are in the video?", '["piano"]', "one", counting),
    ])
    write_json(root / "json_update" / "avqa-val.json", [
        avqa("sa00000002", 4, "Is there a <Object> sound?", '["flute"]', "no", '["Audio", "Existential"]')])
    write_json(root / "json_update" / "avqa-test.json", [
        avqa("00000824", 5, "Where is the <FL> sounding instrument?", '["first"]', "left",
             '["Audio-Visual", "Location"]')])
    touch(root, "videos/00000823.mp4", "videos/va00000001.mp4", "videos/sa00000002.mp4")
    return root  # videos/00000824.mp4 is missing


# ----------------------------------------------------------------------------- SQA3D (ScanQA format)

def sqa(scene: str, qid: int, question: str, answer: str = "table") -> dict:
    return {"answers": [answer], "object_ids": [], "object_names": [], "question": question,
            "situation": f"I am sitting on the bed of {scene} facing the window.", "question_id": qid,
            "scene_id": scene, "position": [0.1, -0.4, 0.0, 0.0, 0.0, 0.7071, 0.7071]}


def sqa3d(root: Path) -> Path:
    fmt = root / "ScanQA_format"
    write_json(fmt / "SQA_train.json", [
        sqa("scene0000_00", 220602000000, "What is on my left?"),
        sqa("scene0000_00", 220602000001, "How many chairs are behind me?", "two"),
        sqa("scene0001_00", 220602000002, "Can I see the door from here?", "yes"),
    ])
    # order, not position, decides: "How" is tested before "Which"; lower-case "is" is not "Is"
    write_json(fmt / "SQA_val.json", [sqa("scene0001_00", 220602000003, "Which way, and How far?", "left"),
                                      sqa("scene0002_00", 220602000004, "Where is the sink?", "behind")])
    write_json(fmt / "SQA_test.json", [sqa("scene0000_00", 220602000005, "Is the lamp on?", "no")])
    touch(root, "Video/scene0000_00.mp4", "Video/scene0001_00.mp4")
    return root  # Video/scene0002_00.mp4 is missing


# ----------------------------------------------------------------------------- Touch-QA / Thermal-QA

def trimmed(video_id: str, question_id: int, start: int, end: int | None, bare: bool = False) -> dict:
    """A SeViLA row plus the recording, question_id and window (no `end` key when end is None).
    `video` and `qid` are not documented for these datasets: `bare` rows lack them."""
    row = {**sevila(f"{video_id}/{question_id}", f"TP_{video_id}_{question_id}", 1, "is the surface soft?"),
           "video_id": video_id, "question_id": question_id, "start": start}
    if bare:
        row = {k: v for k, v in row.items() if k not in ("video", "qid")}
    return row if end is None else {**row, "end": end}


def touchqa(root: Path) -> Path:
    write_json(root / "touch_train.json", [
        trimmed("20220516_190814", 11, 0, 30), trimmed("20220516_190814", 12, 30, 90),
        trimmed("20220516_190814", 13, 0, 30),  # the same window as 11: still its own clip
        trimmed("20220517_101500", 14, 5, 50),
    ])
    write_json(root / "touch_val.json", [
        trimmed("20220518_090000", 21, 0, 60),   # its recording is missing
        trimmed("20220519_120000", 22, 10, 40),  # its recording is missing but clips/22.mp4 exists
    ])
    touch(root, "20220516_190814/video.mp4", "20220517_101500/video.mp4", "clips/22.mp4")
    return root


def thermalqa(root: Path) -> Path:
    write_json(root / "thermalqa_train.json", [
        trimmed("20230301_101010", 1, 0, 45), trimmed("20230301_101010", 2, 45, None),  # no end
        trimmed("20230302_111111", 3, 12, 36, bare=True),
    ])
    write_json(root / "thermalqa_val.json", [trimmed("20230303_121212", 4, 3, 9)])
    touch(root, "20230301_101010/RGBD_RGB.mp4", "20230302_111111/RGBD_RGB.mp4")
    return root  # 20230303_121212/RGBD_RGB.mp4 is missing


WRITERS = {"nextqa": nextqa, "nextqa_csv": nextqa_csv, "music_avqa": music_avqa, "sqa3d": sqa3d,
           "touchqa": touchqa, "thermalqa": thermalqa}


def counts(questions: int, videos: int, found: int) -> dict:
    return {"questions": questions, "videos": videos, "media_found": found, "media_missing": videos - found}


# nextqa's, touchqa's and thermalqa's train/val split comes from val_from_train (a hash of the
# video or recording), so only their test split and the train + val total are fixed (CARVED).
EXPECTED = {
    "nextqa_csv": {"train": counts(3, 2, 2), "val": counts(1, 1, 0), "test": counts(2, 2, 2)},
    "music_avqa": {"train": counts(3, 2, 2), "val": counts(1, 1, 1), "test": counts(1, 1, 0)},
    "sqa3d": {"train": counts(3, 2, 2), "val": counts(2, 2, 1), "test": counts(1, 1, 1)},
}
CARVED = {"nextqa": (counts(2, 2, 1), 4), "touchqa": (counts(2, 2, 1), 4), "thermalqa": (counts(1, 1, 0), 3)}

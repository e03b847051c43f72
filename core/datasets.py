"""Dataset adapters: each turns one dataset's own annotation files into a `DatasetIndex`.

`ADAPTERS` is the one flat registry (name -> function taking the dataset's config as a plain dict);
`load_dataset(cfg)` picks the adapter from `cfg.adapter` or else `cfg.name`, so a copy of a config
under another name (e.g. `conf/dataset/nextqa_small.yaml` with `adapter: nextqa`) reuses a reader.

Shared rules:
* video_id always comes from `core.schema.safe_video_id` of the dataset's own id (never a row index);
* a video used by several splits is listed once in `videos`, under the first of train, val, test;
* a broken annotation file raises an error naming the file, the row (index and qid) and the key,
  and stating the expected schema; a missing *video file* is not an error here (the extraction
  pipeline records it per video in its failures manifest), so such videos stay in `videos`
  (`scripts/data.py`, `make data`, counts them);
* strict where a released format is explicit, tolerant where it is silent (the `video` and `qid`
  of Touch-QA/Thermal-QA rows are optional and only kept).

The default paths in conf/dataset/<name>.yaml are each dataset's released layout under
`dataset.root` (the yaml's header draws the tree).

Optional keys every annotated dataset understands:
* `val_from_train: 0.1` when the dataset ships no validation split: moves a deterministic
  ~10% of the TRAIN videos (by a hash of video_id; of the recording for Touch/Thermal clips)
  into "val", so model selection never looks at the test split (the reference selected
  checkpoints on test);
* `video_exts`: extensions tried, in order, when an annotation names a video without one.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from core.modalities import STREAMS
from core.schema import SPLITS, DatasetIndex, QARecord, VideoEntry, safe_video_id

DEFAULT_VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")

NEXTQA_SCHEMA = (
    'NExT-QA SeViLA format (train.json, val.json): a JSON list of {"video": "<vidor folder>/<id>" '
    '(media at <video_dir>/<video>.mp4), "num_option": 5, "qid": "<type>_<video>_<n>", "a0": ..., "a4": <option texts>, '
    '"answer": <int index into a0..>, "question": ...}'
)
NEXTQA_CSV_OPTIONS = 5  # a0..a4
NEXTQA_CSV_COLUMNS = ("video", "question", "answer", "qid", "type", *(f"a{i}" for i in range(NEXTQA_CSV_OPTIONS)))
NEXTQA_CSV_SCHEMA = (
    "NExT-QA CSV format ({train,val,test}.csv, rows counted from 0 after the header): columns "
    "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4 (video: a key of map_vid_vidorID.json; "
    "answer: int index into a0..a4; qid: int, unique per video; type: CW, CH, TN, TC, TP, DL, DC or DO)"
)
TRIMMED_SCHEMA = (
    'Touch-QA/Thermal-QA format (touch_{train,val}.json, thermalqa_{train,val}.json): a JSON list of SeViLA rows '
    '{"num_option", "a0".., "answer": <int index>, "question", "qid" (optional), "video" (optional)} plus '
    '"video_id": <recording folder>, "question_id": <int>, "start": <frame>, "end": <frame> '
    "(frame numbers at the recording's native fps; Thermal-QA may omit end: to the end of the recording)"
)
MUSIC_AVQA_SCHEMA = (
    'MUSIC-AVQA json_update format: a JSON list of {"video_id", "question_id", '
    '"type": "[\\"Audio\\", \\"Counting\\"]", '
    '"question_content": "... <Object> ...", "templ_values": "[\\"cello\\"]" (a JSON-encoded list), "anser": <answer>}'
)
SQA3D_SCHEMA = (
    'SQA3D in the ScanQA format (ScanQA_format/SQA_{train,val,test}.json, what 3D-LLM and CREMA read): a JSON list '
    'of {"scene_id": "scene0000_00", "situation", "question", "answers": [<answer>, ...], "question_id": <int>, '
    '"position": [7 floats], "object_ids": [...], "object_names": [...]}'
)

Pair = tuple[VideoEntry, QARecord]


class AnnotationError(ValueError):
    """A malformed annotation file or row; the message names the file, row and key."""


# ----------------------------------------------------------------------------- entry point


def load_dataset(cfg: Mapping | DictConfig) -> DatasetIndex:
    """Build the `DatasetIndex` for the dataset config node `cfg` (e.g. `cfg.dataset` of a Hydra app)."""
    conf = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    adapter = conf.get("adapter") or conf.get("name")
    if adapter not in ADAPTERS:
        raise ValueError(
            f"dataset config names adapter {adapter!r}, which does not exist; known adapters: {sorted(ADAPTERS)}. "
            f"Set `name:` (or `adapter:`) in conf/dataset/<name>.yaml to one of them."
        )
    return ADAPTERS[adapter](conf)


# ----------------------------------------------------------------------------- shared helpers


def _require_file(path: str | os.PathLike, schema: str, key: str = "dataset.annotations") -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"annotation file {path} does not exist; expected {schema}. Fix {key} or dataset.root "
            f"(`make data DATASET=<name> DATA=<root>` checks a dataset folder)."
        )


def _read_rows(path: str | os.PathLike, schema: str) -> list[dict]:
    _require_file(path, schema)
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err}); expected {schema}") from err
    if not isinstance(rows, list):
        raise AnnotationError(f"{path}: top level is a {type(rows).__name__}, not a list; expected {schema}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise AnnotationError(f"{path}: row {i} is a {type(row).__name__}, not an object; expected {schema}")
    return rows


def _json_rows(path: str | os.PathLike, schema: str, id_key: str | tuple[str, ...]) -> list["_Row"]:
    """The rows of a JSON annotation file, each wrapped so its errors name file, row and ids."""
    return [_Row(path, i, row, schema, id_key) for i, row in enumerate(_read_rows(path, schema))]


class _Row:
    """Key access on one annotation row whose errors say which file, row, qid and key."""

    def __init__(self, path, index: int, row: dict, schema: str, id_key: str | tuple[str, ...]):
        self.path, self.index, self.row, self.schema = path, index, row, schema
        ids = ", ".join(f"{k}={row[k]!r}" for k in ((id_key,) if isinstance(id_key, str) else id_key) if k in row)
        self.ref = f"row {index}" + (f" ({ids})" if ids else "")

    def error(self, key: str, problem: str) -> AnnotationError:
        return AnnotationError(f"{self.path}: {self.ref}: key {key!r} {problem}; expected {self.schema}")

    def __getitem__(self, key: str):
        if key not in self.row:
            raise self.error(key, "is missing")
        return self.row[key]

    def text(self, key: str) -> str:
        value = self[key]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return str(value).strip()

    def integer(self, key: str) -> int:
        value = self[key]
        if isinstance(value, bool):
            raise self.error(key, f"must be an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(key, f"must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise self.error(key, f"must be a whole number, got {value!r}")
        return int(number)


def _exts(cfg: dict) -> tuple[str, ...]:
    exts = cfg.get("video_exts") or DEFAULT_VIDEO_EXTS
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in exts)


class _MediaResolver:
    """Maps an annotation's video name to a path: the name as given if it has a known extension,
    else the first `<name><ext>` that exists, else a frame directory `<name>/` if it exists, else
    `<name><first ext>` (the pipeline reports it missing later).

    A name that leads outside `video_dir` (`../x`, `/etc/passwd`) is an error of its row unless
    the dataset config sets `allow_absolute_paths: true`: an annotation file is data, and data
    must not pick which files on this machine get read into a store.
    """

    def __init__(self, video_dir, exts: tuple[str, ...], *, allow_outside: bool = False):
        self.video_dir, self.exts, self.allow_outside = Path(video_dir), exts, allow_outside
        self._cache: dict[str, str] = {}

    @classmethod
    def from_cfg(cls, cfg: dict) -> "_MediaResolver":
        return cls(cfg["video_dir"], _exts(cfg), allow_outside=bool(cfg.get("allow_absolute_paths", False)))

    def __call__(self, name: str, row: "_Row | None" = None, key: str = "video") -> str:
        if name not in self._cache:
            self._check_inside(name, row, key)
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _check_inside(self, name: str, row: "_Row | None", key: str) -> None:
        if self.allow_outside or _inside(self.video_dir, name):
            return
        problem = (f"is {name!r}, which leads outside the video folder {self.video_dir}; name videos relative to "
                   f"it, or set dataset.allow_absolute_paths=true if this annotation file is trusted")
        raise row.error(key, problem) if row is not None else AnnotationError(f"video name {problem}")

    def _resolve(self, name: str) -> str:
        base = self.video_dir / name
        if base.suffix.lower() in self.exts:
            return str(base)
        candidates = [base.with_name(base.name + ext) for ext in self.exts]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        return str(base) if base.is_dir() else str(candidates[0])


def _inside(folder: Path, name: str) -> bool:
    """True when `folder/name` stays under `folder` by its spelling (symlinks inside a dataset
    folder that point elsewhere are the user's own layout, so they are not followed here)."""
    if os.path.isabs(name) or name.startswith("~"):
        return False
    parts = Path(os.path.normpath(name)).parts
    return bool(parts) and parts[0] != ".."


def _annotation_paths(cfg: dict) -> dict[str, str]:
    paths = {s: p for s, p in (cfg.get("annotations") or {}).items() if p}
    unknown = sorted(set(paths) - set(SPLITS))
    if unknown:
        raise ValueError(f"dataset {cfg.get('name')!r}: annotations has unknown splits {unknown}; use {list(SPLITS)}")
    if not paths:
        raise ValueError(
            f"dataset {cfg.get('name')!r}: no annotation files configured (dataset.annotations.train/val/test)"
        )
    return paths


def _check_unique_qids(pairs: list[Pair], path) -> None:
    seen: dict[str, int] = {}
    for i, (_, qa) in enumerate(pairs):
        if qa.qid in seen:
            raise AnnotationError(
                f"{path}: rows {seen[qa.qid]} and {i} share qid {qa.qid!r}; qids must be unique per split"
            )
        seen[qa.qid] = i


def _hash_fraction(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 2**32


def _carve_val(per_split: dict[str, list[Pair]], fraction: float, name) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"dataset {name!r}: val_from_train={fraction} must be in (0, 1)")
    if per_split.get("val"):
        raise ValueError(
            f"dataset {name!r}: val_from_train is set but a val annotation file is configured too; keep one"
        )
    keep, moved = [], []
    for video, qa in per_split.get("train", []):
        # Whole recordings move (Touch/Thermal clips of one recording stay on one side).
        if _hash_fraction(qa.extra.get("recording") or video.video_id) < fraction:
            moved.append((dataclasses.replace(video, split="val"), dataclasses.replace(qa, split="val")))
        else:
            keep.append((video, qa))
    per_split["train"], per_split["val"] = keep, moved


def _index(name: str, per_split: dict[str, list[Pair]]) -> DatasetIndex:
    """Dedupe videos (first of train, val, test wins) and check a video_id means one clip."""
    videos: dict[str, VideoEntry] = {}
    for split in SPLITS:
        for video, qa in per_split.get(split, []):
            first = videos.setdefault(video.video_id, video)
            if (first.path, first.start, first.end) != (video.path, video.start, video.end):
                raise AnnotationError(
                    f"dataset {name!r}: video_id {video.video_id!r} names two different clips "
                    f"({first.path} [{first.start}, {first.end}] in {first.split} and {video.path} "
                    f"[{video.start}, {video.end}] at qid {qa.qid!r} in {split}); one id must mean one clip"
                )
    qa = {split: [q for _, q in per_split[split]] for split in SPLITS if split in per_split}
    return DatasetIndex(name=name, videos=list(videos.values()), qa=qa)


def _read_split_files(cfg: dict, read_file: Callable[[str, str], list[Pair]]) -> DatasetIndex:
    per_split = {split: read_file(path, split) for split, path in _annotation_paths(cfg).items()}
    if cfg.get("val_from_train"):
        _carve_val(per_split, float(cfg["val_from_train"]), cfg.get("name"))
    return _index(cfg["name"], per_split)


# ----------------------------------------------------------------------------- NExT-QA family


def _multiple_choice(r: _Row) -> tuple[tuple[str, ...], int]:
    num = r.integer("num_option")
    if num < 2:
        raise r.error("num_option", f"must be at least 2, got {num}")
    return _options(r, num)


def _options(r: _Row, num: int) -> tuple[tuple[str, ...], int]:
    options = tuple(r.text(f"a{j}") for j in range(num))
    answer = r.integer("answer")
    if not 0 <= answer < num:
        raise r.error("answer", f"is {answer}, outside 0..{num - 1} (num_option={num})")
    return options, answer


def _qid_prefix(qid: str) -> str:
    return qid.split("_", 1)[0] if "_" in qid else ""


def _sevila_pairs(path: str, split: str, cfg: dict) -> list[Pair]:
    resolve = _MediaResolver.from_cfg(cfg)
    pairs = []
    for r in _json_rows(path, NEXTQA_SCHEMA, "qid"):
        video_name, qid = r.text("video"), r.text("qid")
        options, answer = _multiple_choice(r)
        video_id = safe_video_id(video_name)
        qa = QARecord(
            qid=qid, video_id=video_id, split=split, question=r.text("question"),
            answer=options[answer], options=options, answer_idx=answer, qtype=_qid_prefix(qid),
        )
        pairs.append((VideoEntry(video_id, resolve(video_name, r, "video"), split), qa))
    _check_unique_qids(pairs, path)
    return pairs


def nextqa(cfg: dict) -> DatasetIndex:
    """NExT-QA in the SeViLA multiple-choice format; qtype is the qid prefix (CW, TN, DC, ...)."""
    return _read_split_files(cfg, lambda path, split: _sevila_pairs(path, split, cfg))


def _read_csv(path: str, schema: str, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV file as dicts; a short row lacks its missing cells (so `_Row` names them)."""
    _require_file(path, schema)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        lacking = [c for c in columns if c not in (reader.fieldnames or [])]
        if lacking:
            raise AnnotationError(f"{path}: the header lacks column(s) {lacking}; expected {schema}")
        return [{k: v for k, v in row.items() if k is not None and v is not None} for row in reader]


def _video_map(path: str) -> dict[str, str]:
    what = "NExT-QA's map_vid_vidorID.json: a JSON object {<video id>: \"<vidor folder>/<id>\"}"
    _require_file(path, what, key="dataset.video_map")
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err}); expected {what}") from err
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise AnnotationError(f"{path}: expected {what}")
    return {str(k): v for k, v in mapping.items()}


def _nextqa_csv_pairs(path: str, split: str, cfg: dict, vidor: dict[str, str]) -> list[Pair]:
    resolve = _MediaResolver.from_cfg(cfg)
    pairs = []
    for i, row in enumerate(_read_csv(path, NEXTQA_CSV_SCHEMA, NEXTQA_CSV_COLUMNS)):
        r = _Row(path, i, row, NEXTQA_CSV_SCHEMA, ("video", "qid"))
        video, number, qtype = r.text("video"), r.integer("qid"), r.text("type")
        if video not in vidor:
            raise r.error("video", f"is {video!r}, which is not a key of {cfg['video_map']}")
        options, answer = _options(r, NEXTQA_CSV_OPTIONS)
        # The same id as the SeViLA adapter gives this video (both derive it from the vidor path).
        video_id = safe_video_id(vidor[video])
        qa = QARecord(
            qid=f"{qtype}_{video}_{number}", video_id=video_id, split=split, question=r.text("question"),
            answer=options[answer], options=options, answer_idx=answer, qtype=qtype,
        )
        pairs.append((VideoEntry(video_id, resolve(vidor[video], r, "video"), split), qa))
    _check_unique_qids(pairs, path)
    return pairs


def nextqa_csv(cfg: dict) -> DatasetIndex:
    """NExT-QA's own CSV release ({train,val,test}.csv + map_vid_vidorID.json). Question ids are
    `<type>_<video>_<qid>` (the CSV's qid numbers questions within a video); qtype is `type`."""
    vidor = _video_map(cfg["video_map"])
    return _read_split_files(cfg, lambda path, split: _nextqa_csv_pairs(path, split, cfg, vidor))


# ----------------------------------------------------------------------------- Touch-QA / Thermal-QA


def _window(r: _Row, end_required: bool) -> tuple[int, int | None]:
    start = r.integer("start")
    if start < 0:
        raise r.error("start", f"must be >= 0, got {start}")
    if not end_required and r.row.get("end") is None:
        return start, None  # Thermal-QA: the clip runs to the end of the recording
    end = r.integer("end")
    if end < start:
        raise r.error("end", f"must satisfy 0 <= start <= end, got start={start}, end={end}")
    return start, end


class _Recordings:
    """Where a Touch/Thermal question's media is: a pre-trimmed `<clips_dir>/<question_id>.<ext>`
    when one exists (no trim), else `<video_dir>/<video_id>/<recording_file>` cut to frames [start, end)."""

    def __init__(self, cfg: dict):
        self.video_dir, self.recording_file = Path(cfg["video_dir"]), cfg["recording_file"]
        self.clips_dir = Path(cfg["clips_dir"]) if cfg.get("clips_dir") else None
        self.exts = _exts(cfg)
        # the sensor stream beside the RGB video: {modality: {"file": name in the recording folder,
        # "clips_dir": folder of pre-trimmed clips (optional)}}
        self.streams = {m: dict(s) for m, s in (cfg.get("streams") or {}).items()}
        unknown = [m for m in self.streams if m not in STREAMS]
        if unknown:
            raise ValueError(f"dataset {cfg.get('name')!r}: streams {unknown} are not stream modalities "
                             f"{list(STREAMS)} (core/modalities.py)")

    @staticmethod
    def _find(folder, question_id: int, exts) -> str | None:
        if not folder:
            return None
        found = (Path(folder) / f"{question_id}{ext}" for ext in exts)
        return next((str(p) for p in found if p.is_file()), None)

    def clip(self, question_id: int) -> str | None:
        return self._find(self.clips_dir, question_id, self.exts)

    def recording(self, video_id: str) -> str:
        return str(self.video_dir / video_id / self.recording_file)

    def sensor_streams(self, video_id: str, question_id: int, trimmed: bool) -> tuple[tuple[str, str], ...]:
        """(modality, path) of each sensor stream: the recording's file (sampled at the RGB frames'
        times, so the same window), or, when the RGB clip is pre-trimmed, the stream's pre-trimmed
        clip (the recording's times would not match a clip that starts at 0). A pre-trimmed clip
        without its stream counterpart names the expected file: decode lists it as missing."""
        out = []
        for m, spec in self.streams.items():
            if not trimmed:
                out.append((m, str(self.video_dir / video_id / spec["file"])))
            elif spec.get("clips_dir"):
                found = self._find(spec["clips_dir"], question_id, self.exts)
                out.append((m, found or str(Path(spec["clips_dir"]) / f"{question_id}{self.exts[0]}")))
        return tuple(out)


def _trimmed_pairs(path: str, split: str, cfg: dict, end_required: bool) -> list[Pair]:
    media = _Recordings(cfg)
    pairs = []
    for r in _json_rows(path, TRIMMED_SCHEMA, ("question_id", "qid")):
        recording, question_id = r.text("video_id"), r.integer("question_id")
        if not cfg.get("allow_absolute_paths") and not _inside(media.video_dir, recording):
            raise r.error("video_id", f"is {recording!r}, which leads outside the video folder {media.video_dir}; "
                                      f"or set dataset.allow_absolute_paths=true if this annotation file is trusted")
        options, answer = _multiple_choice(r)
        start, end = _window(r, end_required)
        clip = media.clip(question_id)
        # One clip per question: several questions ask about different windows of one recording.
        video_id = safe_video_id(f"{recording}_q{question_id}")
        streams = media.sensor_streams(recording, question_id, trimmed=bool(clip))
        video = VideoEntry(video_id, clip, split, streams=streams) if clip else \
            VideoEntry(video_id, media.recording(recording), split, start, end, streams=streams)
        row_qid = str(r.row.get("qid") or "").strip()  # not documented: kept when present
        qa = QARecord(
            qid=str(question_id), video_id=video_id, split=split, question=r.text("question"),
            answer=options[answer], options=options, answer_idx=answer, qtype=_qid_prefix(row_qid),
            extra={"recording": recording, "qid": row_qid, "start": start, "end": end},
        )
        pairs.append((video, qa))
    _check_unique_qids(pairs, path)
    return pairs


def touchqa(cfg: dict) -> DatasetIndex:
    """Touch-QA: SeViLA rows plus the recording (`video_id`), `question_id` and a start/end frame window."""
    return _read_split_files(cfg, lambda path, split: _trimmed_pairs(path, split, cfg, end_required=True))


def thermalqa(cfg: dict) -> DatasetIndex:
    """Thermal-QA: as Touch-QA, but `end` may be absent (the clip then runs to the recording's end)."""
    return _read_split_files(cfg, lambda path, split: _trimmed_pairs(path, split, cfg, end_required=False))


def demo(cfg: dict) -> DatasetIndex:
    """The synthetic demo, read as NExT-QA. It is generated by the extraction program on first
    use (pipeline.demo.ensure_demo); reading never generates it."""
    missing = [p for p in _annotation_paths(cfg).values() if not Path(p).is_file()]
    if missing:
        raise AnnotationError(
            f"the demo dataset is not generated yet under {cfg['root']} ({missing[0]} is missing): "
            f"`make extract DATASET=demo` generates it (or `python scripts/make_demo.py`)")
    return nextqa(cfg)


# ----------------------------------------------------------------------------- MUSIC-AVQA

_SLOT = re.compile(r"<[^<>]+>")


def _json_list(r: _Row, key: str) -> list:
    value = r[key]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:  # a few released files use Python-literal quoting ('...')
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise r.error(key, f"must be a JSON-encoded list, got {r[key]!r}") from None
    if not isinstance(value, list):
        raise r.error(key, f"must be a JSON-encoded list, got {r[key]!r}")
    return value


def _fill_slots(r: _Row) -> str:
    """Fill each <Slot> in order with the next templ_values entry (positionally: the reference's
    str.replace filled a repeated slot such as two <Object>s with the first value twice)."""
    template = r.text("question_content")
    values = [str(v) for v in _json_list(r, "templ_values")]
    slots = _SLOT.findall(template)
    if len(slots) > len(values):
        raise r.error("templ_values", f"has {len(values)} values for {len(slots)} slots {slots} in {template!r}")
    filled = iter(values)
    return _SLOT.sub(lambda _: next(filled), template)


def music_avqa(cfg: dict) -> DatasetIndex:
    """MUSIC-AVQA `json_update` files: open-ended, question lower-cased, answer from "anser"."""
    resolve = _MediaResolver.from_cfg(cfg)

    def read(path: str, split: str) -> list[Pair]:
        pairs = []
        for r in _json_rows(path, MUSIC_AVQA_SCHEMA, "question_id"):
            raw_id = r.text("video_id")
            video_id = safe_video_id(raw_id)
            types = [str(t) for t in _json_list(r, "type")]
            raw_answer = r.text("anser")
            qa = QARecord(
                qid=r.text("question_id"), video_id=video_id, split=split,
                question=_fill_slots(r).lower(),
                # The released answers use '_' inside multi-word names (acoustic_guitar).
                answer=raw_answer.replace("_", " "),
                qtype="/".join(types), extra={"type": types, "anser": raw_answer},
            )
            pairs.append((VideoEntry(video_id, resolve(raw_id, r, "video_id"), split), qa))
        _check_unique_qids(pairs, path)
        return pairs

    return _read_split_files(cfg, read)


# ----------------------------------------------------------------------------- SQA3D

# The reference's breakdown: the first of these found in the question (a case-sensitive
# substring test, in this order), else SQA3D_OTHER, spelt as the reference's results spell it.
SQA3D_QTYPES = ("What", "How", "Can", "Is", "Which")
SQA3D_OTHER = "Other"


def _sqa3d_qtype(question: str) -> str:
    return next((t for t in SQA3D_QTYPES if t in question), SQA3D_OTHER)


def sqa3d(cfg: dict) -> DatasetIndex:
    """SQA3D in the ScanQA format. The "video" is the scene's egocentric video
    `<video_dir>/<scene_id>.mp4`, or a folder `<video_dir>/<scene_id>/` of frames when that exists."""
    resolve = _MediaResolver.from_cfg(cfg)

    def read(path: str, split: str) -> list[Pair]:
        pairs = []
        for r in _json_rows(path, SQA3D_SCHEMA, "question_id"):
            scene = r.text("scene_id")
            answers = r["answers"]
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise r.error("answers", f"must be a non-empty list of strings, got {r['answers']!r}")
            question = r.text("question")
            video_id = safe_video_id(scene)
            qa = QARecord(
                qid=r.text("question_id"), video_id=video_id, split=split, question=question,
                answer=answers[0], qtype=_sqa3d_qtype(question),
                extra={"situation": r.text("situation"), "answers": list(answers)},
            )
            pairs.append((VideoEntry(video_id, resolve(scene, r, "scene_id"), split), qa))
        _check_unique_qids(pairs, path)
        return pairs

    return _read_split_files(cfg, read)


# ----------------------------------------------------------------------------- plain videos


def _walk_videos(folder: Path, exts: tuple[str, ...], recursive: bool) -> list[tuple[str, Path]]:
    found, seen_dirs = [], set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen_dirs:  # a symlink loop
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                full = Path(current) / name
                found.append((full.relative_to(folder).as_posix(), full))
    return sorted(found)


def _read_list_file(path: Path) -> list[tuple[str, Path]]:
    """(id path, full path) per listed video. The id path is relative to the list's folder, or, for
    the videos outside it (absolute paths, ../), to the deepest folder they share: a list of
    absolute paths gets the same ids as its folder would, never the mangled absolute path."""
    base = Path(os.path.normpath(path.parent.absolute()))
    fulls = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            fulls.append(Path(os.path.normpath(base / Path(line).expanduser())))
    outside = [f for f in fulls if not f.is_relative_to(base)]
    shared = Path(os.path.commonpath([f.parent for f in outside])) if outside else base
    return [(f.relative_to(base if f.is_relative_to(base) else shared).as_posix(), f) for f in fulls]


def videos(cfg: dict) -> DatasetIndex:
    """Every video under a folder (recursive, `video_exts`) or listed in a text file (one path per
    line, `#` comments, relative paths against the list file's folder). Split "all", no questions."""
    source = cfg.get("path")
    if not source:
        raise ValueError(
            "dataset 'videos' needs a folder of videos or a list file: "
            "`make extract DATASET=videos DATA=/path/to/videos` (or dataset.path=/path on the command line)"
        )
    source = Path(source).expanduser()
    if source.is_dir():
        found = _walk_videos(source, _exts(cfg), bool(cfg.get("recursive", True)))
        if not found:
            raise ValueError(f"no videos with extensions {list(_exts(cfg))} under {source}; set dataset.video_exts")
    elif source.is_file():
        found = _read_list_file(source)
        if not found:
            raise ValueError(f"video list {source} names no videos (one path per line, '#' starts a comment)")
    else:
        raise FileNotFoundError(f"dataset.path {source} is neither a folder nor a list file")
    entries: dict[str, VideoEntry] = {}
    for rel, full in found:
        video_id = safe_video_id(rel)
        first = entries.setdefault(video_id, VideoEntry(video_id, str(full), "all"))
        if first.path != str(full):  # the same file listed twice is one video; two files are two
            raise AnnotationError(
                f"dataset {cfg.get('name', 'videos')!r}: {first.path} and {full} both map to video_id "
                f"{video_id!r}; rename one of them (each video needs its own id, or one would be dropped)")
    return DatasetIndex(name=cfg.get("name", "videos"), videos=list(entries.values()), qa={})


ADAPTERS: dict[str, Callable[[dict], DatasetIndex]] = {
    "nextqa": nextqa,
    "nextqa_csv": nextqa_csv,
    "demo": demo,
    "music_avqa": music_avqa,
    "sqa3d": sqa3d,
    "touchqa": touchqa,
    "thermalqa": thermalqa,
    "videos": videos,
}

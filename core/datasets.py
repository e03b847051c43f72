"""Dataset adapters: each turns one dataset's own annotation files into a `DatasetIndex`.

`ADAPTERS` is the one flat registry (name -> function taking the dataset's config as a plain dict);
`load_dataset(cfg)` picks the adapter from `cfg.adapter` or else `cfg.name`, so a copy of a config
under another name (e.g. `conf/dataset/nextqa_small.yaml` with `adapter: nextqa`) reuses a reader.

Shared rules:
* video_id always comes from `core.schema.safe_video_id` of the dataset's own id (never a row index);
* a video used by several splits is listed once in `videos`, under the first of train, val, test;
* a broken annotation file raises an error naming the file, the row (index and qid) and the key,
  and stating the expected schema; a missing *video file* is not an error here (the extraction
  pipeline records it per video in its failures manifest), so such videos stay in `videos`.

Optional keys every annotated dataset understands:
* `val_from_train: 0.1` when the dataset ships no validation split: moves a deterministic
  ~10% of the TRAIN videos (by a hash of video_id) into "val", so model selection never
  looks at the test split (the reference selected checkpoints on test);
* `video_exts`: extensions tried, in order, when an annotation names a video without one.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from core.schema import SPLITS, DatasetIndex, QARecord, VideoEntry, safe_video_id

DEFAULT_VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")

NEXTQA_SCHEMA = (
    'NExT-QA SeViLA format: a JSON list of {"video": <file name without extension>, "num_option": 5, '
    '"qid": "<type>_<video>_<n>", "a0": ..., "a4": <option texts>, "answer": <int index into a0..>, "question": ...}'
)
TRIMMED_SCHEMA = NEXTQA_SCHEMA.replace(
    '"question": ...}', '"question": ..., "video_id": <clip id>, "question_id": ..., "start": <frame>, "end": <frame>}'
).replace("NExT-QA SeViLA format", "Touch-QA/Thermal-QA format (SeViLA plus clip fields)")
MUSIC_AVQA_SCHEMA = (
    'MUSIC-AVQA json_update format: a JSON list of {"video_id", "question_id", '
    '"type": "[\\"Audio\\", \\"Counting\\"]", '
    '"question_content": "... <Object> ...", "templ_values": "[\\"cello\\"]" (a JSON-encoded list), "anser": <answer>}'
)
SQA3D_SCHEMA = (
    '3D-LLM SQA3D format (SQA_{train,val,test}.json): a JSON list of {"scene_id", "situation", "question", '
    '"answers": [<answer>, ...], "question_id"}'
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


def _read_rows(path: str | os.PathLike, schema: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file {path} does not exist; expected {schema}. Fix dataset.annotations or dataset.root."
        )
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


class _Row:
    """Key access on one annotation row whose errors say which file, row, qid and key."""

    def __init__(self, path, index: int, row: dict, schema: str, id_key: str):
        self.path, self.index, self.row, self.schema = path, index, row, schema
        self.ref = f"row {index}" + (f" ({id_key}={row[id_key]!r})" if id_key in row else "")

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
    the `default` guess (the pipeline reports it missing later)."""

    def __init__(self, video_dir, exts: tuple[str, ...], prefer_dir: bool = False):
        self.video_dir, self.exts, self.prefer_dir = Path(video_dir), exts, prefer_dir
        self._cache: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> str:
        base = self.video_dir / name
        if base.suffix.lower() in self.exts:
            return str(base)
        candidates = [base.with_name(base.name + ext) for ext in self.exts]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        if base.is_dir() or self.prefer_dir:
            return str(base)
        return str(candidates[0])


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
        if _hash_fraction(video.video_id) < fraction:
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
    options = tuple(r.text(f"a{j}") for j in range(num))
    answer = r.integer("answer")
    if not 0 <= answer < num:
        raise r.error("answer", f"is {answer}, outside 0..{num - 1} (num_option={num})")
    return options, answer


def _sevila_pairs(path: str, split: str, cfg: dict, trimmed: bool) -> list[Pair]:
    schema = TRIMMED_SCHEMA if trimmed else NEXTQA_SCHEMA
    resolve = _MediaResolver(cfg["video_dir"], _exts(cfg))
    pairs = []
    for i, row in enumerate(_read_rows(path, schema)):
        r = _Row(path, i, row, schema, "qid")
        video_name, qid = r.text("video"), r.text("qid")
        options, answer = _multiple_choice(r)
        start = end = None
        extra = {}
        if trimmed:
            start, end = r.integer("start"), r.integer("end")
            if not 0 <= start <= end:
                raise r.error("end", f"must satisfy 0 <= start <= end, got start={start}, end={end}")
            video_id = safe_video_id(r.text("video_id"))
            extra["question_id"] = r["question_id"]
        else:
            video_id = safe_video_id(video_name)
        video = VideoEntry(video_id, resolve(video_name), split, start, end)
        qa = QARecord(
            qid=qid, video_id=video_id, split=split, question=r.text("question"),
            answer=options[answer], options=options, answer_idx=answer,
            qtype=qid.split("_", 1)[0] if "_" in qid else "", extra=extra,
        )
        pairs.append((video, qa))
    _check_unique_qids(pairs, path)
    return pairs


def nextqa(cfg: dict) -> DatasetIndex:
    """NExT-QA in the SeViLA multiple-choice format; qtype is the qid prefix (CW, TN, DC, ...)."""
    return _read_split_files(cfg, lambda path, split: _sevila_pairs(path, split, cfg, trimmed=False))


def trimmed_sevila(cfg: dict) -> DatasetIndex:
    """Touch-QA / Thermal-QA: SeViLA rows plus a clip id and start/end frame numbers to trim."""
    return _read_split_files(cfg, lambda path, split: _sevila_pairs(path, split, cfg, trimmed=True))


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
    resolve = _MediaResolver(cfg["video_dir"], _exts(cfg))

    def read(path: str, split: str) -> list[Pair]:
        pairs = []
        for i, row in enumerate(_read_rows(path, MUSIC_AVQA_SCHEMA)):
            r = _Row(path, i, row, MUSIC_AVQA_SCHEMA, "question_id")
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
            pairs.append((VideoEntry(video_id, resolve(raw_id), split), qa))
        _check_unique_qids(pairs, path)
        return pairs

    return _read_split_files(cfg, read)


# ----------------------------------------------------------------------------- SQA3D

_SQA3D_QTYPES = {"what": "What", "is": "Is", "how": "How", "can": "Can", "which": "Which"}


def _sqa3d_qtype(question: str) -> str:
    """SQA3D's breakdown by the question's first word (What/Is/How/Can/Which/Other)."""
    words = question.split()
    return _SQA3D_QTYPES.get(words[0].lower().strip("?,.") if words else "", "Other")


def sqa3d(cfg: dict) -> DatasetIndex:
    """SQA3D as released by 3D-LLM. The "video" is the scene: `<video_dir>/<scene_id>.mp4` or a
    folder `<video_dir>/<scene_id>/` of multi-view frames, whichever exists (the folder if neither)."""
    resolve = _MediaResolver(cfg["video_dir"], _exts(cfg), prefer_dir=True)

    def read(path: str, split: str) -> list[Pair]:
        pairs = []
        for i, row in enumerate(_read_rows(path, SQA3D_SCHEMA)):
            r = _Row(path, i, row, SQA3D_SCHEMA, "question_id")
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
            pairs.append((VideoEntry(video_id, resolve(scene), split), qa))
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
    base = path.parent
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        full = Path(os.path.normpath(base / Path(line).expanduser()))
        found.append((os.path.normpath(line), full))
    return found


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
        entries.setdefault(video_id, VideoEntry(video_id, str(full), "all"))
    return DatasetIndex(name=cfg.get("name", "videos"), videos=list(entries.values()), qa={})


ADAPTERS: dict[str, Callable[[dict], DatasetIndex]] = {
    "nextqa": nextqa,
    "demo": demo,
    "music_avqa": music_avqa,
    "sqa3d": sqa3d,
    "touchqa": trimmed_sevila,
    "thermalqa": trimmed_sevila,
    "videos": videos,
}

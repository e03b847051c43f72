"""Experiment tracking (trainer/tracking.py) on the real Trainer, in process, on test_train_recipe's small
store: TensorBoard events read back with tensorboard's own EventAccumulator, a W&B offline run read
back from its .wandb file, and resumes that log no step twice."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from test_train_recipe import MODS, compose_train, write_fixture
from trainer import tracking
from trainer.recipe import Trainer

# 16 training questions, batch 8: 2 optimizer steps per epoch, 4 in all. Every modality exits at
# the end of epoch 1 (tau tiny): the early-exit events are logged.
RUN = ("trainer.batch_size=8", "trainer.early_exit.enabled=true", "trainer.early_exit.tau=1e-9",
       "trainer.early_exit.start_epoch=1")


def train(cfg) -> Trainer:
    trainer = Trainer(cfg)
    try:
        if trainer.train().finished:
            trainer.test()
    finally:
        trainer.close()
    return trainer


def rows(run_dir: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_the_scalars_and_config_and_a_resume_logs_no_step_twice(tmp_path):
    cfg = compose_train(tmp_path, *RUN, "trainer.max_steps=3")
    write_fixture(tmp_path, cfg)
    train(cfg)  # steps 1-3; checkpoints last-000002-e001 (end of epoch 0) and last-000003-e001
    run_dir = Path(cfg.run_dir)
    # a kill after step 3 was logged but before its checkpoint was durable: the resume starts at step 2
    (run_dir / "checkpoints" / "last-000003-e001").rename(run_dir / "gone")
    train(compose_train(tmp_path, *RUN))  # steps 3-4 again, validation, early exits, test
    tb = scalars(run_dir / "tensorboard")
    steps = rows(run_dir, "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # metrics.jsonl: each step once
    for m in MODS:
        assert tb[f"loss/{m}"] == [(r["step"], pytest.approx(r["loss"][m], rel=1e-6)) for r in steps]
        assert tb[f"grad_norm/{m}"] == [(r["step"], pytest.approx(r["grad_norm"][m], rel=1e-6)) for r in steps]
        assert tb[f"early_exit/{m}"] == [(4, 1.0)]
        assert [s for s, _ in tb[f"epoch/grad_norm/{m}"]] == [2, 4]
    assert tb["lr"] == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in steps]
    evals = rows(run_dir, "eval")
    assert tb["val/strict"] == [(r["step"], pytest.approx(r["strict"])) for r in evals] and len(evals) == 2
    test_row = rows(run_dir, "test")[0]
    for qtype, acc in test_row["by_qtype"].items():  # per question type, on val and test
        assert tb[f"test/strict/{qtype}"] == [(4, pytest.approx(acc["strict"]))]
        assert [s for s, _ in tb[f"val/strict/{qtype}"]] == [2, 4]
    assert len(test_row["by_qtype"]) >= 2
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.01" in config and f"run_dir: {run_dir}" in config
    exits = acc.Tensors("early_exit/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "epoch 1 (step 4)" in exits and all(m in exits for m in MODS)
    # The event files do hold step 3 twice (two sessions); the resumed session's START at step 3
    # is what makes TensorBoard's readers drop the first copy.
    raw = [e.step for f in sorted((run_dir / "tensorboard").iterdir())
           for e in EventFileLoader(str(f)).Load() if e.HasField("summary") and e.summary.value[0].tag == "loss/rgb"]
    assert sorted(raw) == [1, 2, 3, 3, 4]


def test_logger_none_writes_no_events_and_a_bad_name_is_refused(tmp_path):
    assert tracking.backends("none") == [] and tracking.backends(["tensorboard", "wandb"]) == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match=r"trainer.logger='tensorbord': unknown \['tensorbord'\]"):
        compose_and_check(tmp_path, "trainer.logger=tensorbord")
    assert tracking.build("tensorboard", None, run_dir=tmp_path, run_id="x", resume_step=0, config={},
                          is_main=False).outputs == []  # other ranks log nothing
    assert not (tmp_path / "tensorboard").exists()


def compose_and_check(tmp_path, *overrides):
    from trainer.config import TrainerConfig

    return TrainerConfig.from_cfg(compose_train(tmp_path, *overrides).trainer)


# ---------------------------------------------------------------------- W&B offline


def wandb_records(path: Path):
    """The records of a .wandb file, parsed with wandb's own protobuf (wandb 0.31 ships no Python
    reader): a 7-byte header, then LevelDB-log style 32 KiB blocks of (crc32, length, type) chunks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one record is complete
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record
        elif kind == 0:
            break


def wandb_history(folder: Path) -> tuple[dict, dict[int, dict]]:
    """(run config, step -> logged values) of one offline run folder."""
    config, history = {}, {}
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(items.pop("_step"), {}).update(items)
    return config, history


def test_wandb_offline_writes_a_run_that_a_resume_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    over = ("trainer.logger=wandb", f"trainer.wandb.dir={tmp_path / 'wb'}", "trainer.epochs=1", "trainer.batch_size=8")
    cfg = compose_train(tmp_path, *over, "trainer.max_steps=1")
    write_fixture(tmp_path, cfg)
    first = train(cfg)
    second = train(compose_train(tmp_path, *over))  # resumes at step 1: step 2, validation, test
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{first.run_id}") for r in runs)  # one W&B run id
    assert second.run_id == first.run_id and not (Path(cfg.run_dir) / "tensorboard").exists()
    config, before = wandb_history(runs[0])
    _, after = wandb_history(runs[1])
    assert sorted(before) == [1] and sorted(after) == [2]
    assert config["trainer"]["lr"] == 0.01 and config["trainer"]["logger"] == "wandb"
    steps = {r["step"]: r for r in rows(Path(cfg.run_dir), "step")}
    for step, logged in {**before, **after}.items():
        assert logged["lr"] == pytest.approx(steps[step]["lr"])
        assert {m: logged[f"loss/{m}"] for m in MODS} == pytest.approx(steps[step]["loss"])
    assert after[2]["val/strict"] == pytest.approx(rows(Path(cfg.run_dir), "eval")[0]["strict"])
    assert "test/strict" in after[2] and any(k.startswith("test/strict/") for k in after[2])


def test_a_resumed_tensorboard_hides_what_the_killed_session_logged_after_the_checkpoint(tmp_path):
    for resume_step, steps in ((0, range(1, 6)), (2, range(3, 5))):  # killed after step 5, resumed at 2
        board = tracking.TensorBoard(tmp_path, resume_step)
        for step in steps:
            board.scalars({"loss/rgb": float(10 * resume_step + step)}, step)
        board.close()
    assert scalars(tmp_path)["loss/rgb"] == [(1, 1.0), (2, 2.0), (3, 23.0), (4, 24.0)]  # no 3, 4 or 5 of the first

"""Checkpoints that are checked (issue 26), in process on a small real store: checksums verified
at every load with a fallback to the newest valid last-*, a run identity that refuses another
run's checkpoints or data, eval refusing other feature hashes, metrics rows kept exactly, a
failed save cleaning up after itself. The kill tests are tests/test_checkpoint_kill.py."""

from __future__ import annotations

import json
import logging
import resource
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from test_train_recipe import CONF, MODS, compose_train, write_fixture
from trainer import checkpoint
from trainer.evaluate import load_for_eval, run_eval
from trainer.recipe import Trainer

BASE = ("trainer.checkpoint_every=2", "trainer.keep_last=2")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run stopped at max_steps=6 (4 steps an epoch): last-000004-e001 and last-000006-e001, best-000004-e000."""
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = compose_train(tmp, *BASE, "trainer.max_steps=6")
    write_fixture(tmp, cfg)
    Trainer(cfg).train()
    return tmp


@pytest.fixture
def run(base, tmp_path):
    """A copy of the base run; `run(*overrides)` composes a config on it (same store)."""
    shutil.copytree(base / "run", tmp_path / "run")

    def make(*overrides: str):
        return compose_train(base, *BASE, f"run_dir={tmp_path}/run", *overrides)
    make.dir = tmp_path / "run"
    make.ckpts = tmp_path / "run" / "checkpoints"
    return make


def _lasts(ckpts: Path) -> list[str]:
    return [d.name for d in checkpoint.checkpoints(ckpts, "last")]


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a high bit of the last tensor's last float: a changed weight, a file that still parses
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped bit": ("model.safetensors", _flip_bit),
    "truncated": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000])),
    "missing rng": ("rng.safetensors", Path.unlink),
    "torn state": ("state.json", lambda p: p.write_text(p.read_text()[:200])),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_from_a_corrupt_last_to_the_newest_valid_one(run, damage, capsys):
    file, spoil = DAMAGE[damage]
    assert _lasts(run.ckpts) == ["last-000004-e001", "last-000006-e001"]
    spoil(run.ckpts / "last-000006-e001" / file)
    trainer = Trainer(run("trainer.max_steps=6"))
    assert trainer.state.step == 4 and trainer.resumed_from.name == "last-000004-e001"
    err = capsys.readouterr().err
    assert f"error: {run.ckpts}/last-000006-e001/{file}" in err  # the file is named
    assert _lasts(run.ckpts) == ["last-000004-e001"]              # the corrupt one is set aside, kept
    assert len(list(run.ckpts.glob("corrupt-last-000006-e001-*"))) == 1


def test_no_valid_last_left_is_refused_not_restarted(run):
    for name in _lasts(run.ckpts):
        _flip_bit(run.ckpts / name / "optimizer.safetensors")
    with pytest.raises(checkpoint.CorruptCheckpoint, match="no valid last checkpoint") as exc:
        Trainer(run("trainer.max_steps=6"))
    assert exc.value.exit_code == 3
    assert len(_lasts(run.ckpts)) == 2 and (run.dir / "metrics.jsonl").stat().st_size > 0  # nothing wiped


def test_eval_refuses_a_best_checkpoint_with_a_flipped_bit(run):
    best = checkpoint.resolve(run.ckpts, "best")
    load_for_eval(best, torch.device("cpu"))
    _flip_bit(best / "model.safetensors")
    with pytest.raises(checkpoint.CorruptCheckpoint, match=f"{best}/model.safetensors differs from the sha256"):
        load_for_eval(best, torch.device("cpu"))


def test_resume_from_a_best_checkpoint_is_an_answer_not_a_keyerror(run):
    best = checkpoint.resolve(run.ckpts, "best")
    with pytest.raises(checkpoint.CheckpointError, match="holds weights only"):
        Trainer(run(f"trainer.resume={best}"))


def test_another_run_in_the_run_dir_is_refused_naming_the_keys(run):
    """Case 2: with last-*/state.json gone, a run with another lr and batch size used to start
    over beside the old run's best-* and report it as its own."""
    for name in _lasts(run.ckpts):
        (run.ckpts / name / checkpoint.STATE).unlink()
    with pytest.raises(checkpoint.RunMismatch, match=r"best-000004-e000 belongs to another run") as exc:
        Trainer(run("trainer.lr=0.02", "trainer.batch_size=2"))
    assert "trainer.batch_size (4 then, 2 now)" in str(exc.value) and "trainer.lr (0.01 then, 0.02 now)" in str(exc.value)
    assert exc.value.exit_code == 4


@pytest.mark.parametrize("change, key", [("trainer.early_exit.tau=1.8", "trainer.early_exit.tau"),
                                         ("trainer.bf16=false", "trainer.bf16"),
                                         ("trainer.early_exit.enabled=true", "trainer.early_exit.enabled")])
def test_resume_refuses_settings_that_change_results(run, change, key):
    with pytest.raises(checkpoint.RunMismatch, match=key):
        Trainer(run("trainer.max_steps=6", change))


def test_resume_accepts_settings_that_change_no_result(run):
    trainer = Trainer(run("trainer.max_steps=6", "trainer.data.num_workers=1", "trainer.eval_batch_size=3",
                          "trainer.keep_last=3", "trainer.log_every=2"))
    assert trainer.state.step == 6


def test_resume_refuses_a_store_with_the_same_hashes_and_other_videos(base, run, tmp_path):
    """Case 4: the same feature hashes, two training videos fewer (re-extracted with failures)."""
    other = tmp_path / "other"
    cfg = compose_train(other)
    write_fixture(other, cfg, lacking={"vid00": ["rgb"], "vid01": ["flow"]})
    with pytest.raises(checkpoint.RunMismatch, match=r"data\.train\.questions \(16 then, 12 now\)"):
        Trainer(run("trainer.max_steps=6", f"store={other}/store"))


def test_max_steps_below_the_current_step_trains_nothing(run):
    trainer = Trainer(run("trainer.max_steps=3"))
    rows = (run.dir / "metrics.jsonl").read_text()
    trainer.train()
    assert trainer.state.step == 6 and (run.dir / "metrics.jsonl").read_text() == rows


def test_a_torn_metrics_line_is_skipped_reported_and_dropped_on_resume(run, caplog):
    log_path = run.dir / "metrics.jsonl"
    kept = log_path.read_text()
    log_path.write_text(kept + '{"event": "step", "loss": {"rg')  # a kill in the middle of a row
    trainer = Trainer(run("trainer.max_steps=6"))
    assert log_path.read_text() == kept                   # rewritten to what the checkpoint saw
    log_path.write_text(kept + '{"event": "st\n' + kept.splitlines(keepends=True)[-1])
    with caplog.at_level(logging.WARNING):
        rows = trainer.log.read()
    assert len(rows) == kept.count("\n") + 1
    assert f"{log_path} line {kept.count(chr(10)) + 1} is torn" in caplog.text


def test_a_failed_save_removes_its_partial_copy(run):
    """Case 6, disk full: a write that fails (here: the file size limit, EFBIG) leaves no .tmp-*
    behind, names the checkpoint and keeps the previous one the newest."""
    trainer = Trainer(run("trainer.max_steps=8"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))  # model fits, the optimizer does not
    try:
        with pytest.raises(checkpoint.SaveFailed, match=r"writing checkpoint .*last-000006-e001 failed") as exc:
            trainer._save_last()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "last-000006-e001 is the newest" in str(exc.value) and exc.value.exit_code == 5
    assert not list(run.ckpts.glob(".tmp-*"))
    assert checkpoint.verify(run.ckpts / "last-000006-e001")["step"] == 6  # the same name was never touched


def test_leftover_temporaries_are_cleaned_at_start(run):
    (run.ckpts / ".tmp-last-000008-e002-abcdef").mkdir()
    (run.ckpts / ".tmp-last-000008-e002-abcdef" / "model.safetensors").write_bytes(b"x" * 100)
    (run.dir / ".tmp-metrics.jsonl.1234abcd").write_text("{}")
    Trainer(run("trainer.max_steps=6"))
    assert not list(run.ckpts.glob(".tmp-*")) and not list(run.dir.glob(".tmp-*"))


def test_eval_refuses_features_of_another_config_unless_asked(run, base, tmp_path):
    """Case 5: audio extracted with another audio config; only what the evaluated modalities read counts."""
    other = tmp_path / "other"
    changed = "features.extractors.audio.seed=1"
    write_fixture(other, compose_train(other, changed))

    def eval_cfg(*extra):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="eval", overrides=[
                "dataset=nextqa", f"dataset.root={other}",
                *[f"dataset.annotations.{s}={other}/ann/{s}.json" for s in ("train", "val", "test")],
                "dataset.val_from_train=null", f"dataset.modalities=[{','.join(MODS)}]", "features=tiny",
                changed, f"store={other}/store", f"run_dir={run.dir}", "eval.split=val",
                "trainer.data.num_workers=0", *extra])
    with pytest.raises(checkpoint.RunMismatch, match=r"other features than the store's: audio \(\w+ trained, \w+ here\)\. "):
        run_eval(eval_cfg("eval.modalities=[rgb,audio]"))
    assert run_eval(eval_cfg("eval.modalities=[rgb,flow]"))[0]["summary"]["n"] == 4  # audio not read: accepted
    assert run_eval(eval_cfg("eval.modalities=[rgb,audio]", "eval.allow_other_features=true"))[0]["summary"]["n"] == 4


def test_eval_default_pick_is_the_best_of_the_run_that_wrote_the_newest_last(run):
    """The best a run's newest last-* names, not the newest best-* folder found."""
    ckpts = run.ckpts
    stray = ckpts / "best-000099-e009"
    shutil.copytree(ckpts / "best-000004-e000", stray)
    assert checkpoint.resolve(ckpts, "best").name == "best-000004-e000"


def test_saving_a_position_twice_keeps_the_valid_copy(run):
    trainer = Trainer(run("trainer.max_steps=6"))
    before = (run.ckpts / "last-000006-e001" / checkpoint.STATE).read_text()
    trainer._save_last()  # the same position again: a no-op, never a delete-then-rename
    assert (run.ckpts / "last-000006-e001" / checkpoint.STATE).read_text() == before
    assert not list(run.ckpts.glob(".tmp-*"))


def test_resume_from_an_earlier_last_recomputes_the_rest_exactly(run):
    """trainer.resume=<an earlier last-*>: the later ones are dropped and recomputed, bitwise."""
    def rows():
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    want, weights = rows(), load_file(str(run.ckpts / "last-000006-e001" / "model.safetensors"))
    trainer = Trainer(run("trainer.max_steps=6", f"trainer.resume={run.ckpts / 'last-000004-e001'}"))
    assert trainer.state.step == 4 and _lasts(run.ckpts) == ["last-000004-e001"]
    trainer.train()
    assert rows() == want
    got = load_file(str(run.ckpts / "last-000006-e001" / "model.safetensors"))
    assert all(torch.equal(got[k], weights[k]) for k in weights)

"""`make inspect` (trainer/inspection.py, scripts/inspect_ckpt.py): what a real checkpoint of the Trainer
holds, each mismatch with another config, a converted reference release, corrupt and missing ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_import_ckpt import REF_ORDER, compose_import, reference_state
from test_train_recipe import AUD, MODS, VIT, compose_train, write_fixture, train_overrides
from trainer import checkpoint
from trainer.inspection import find, holdings, mismatches
from trainer.recipe import Trainer
from trainer.released import import_reference

ROOT = Path(__file__).resolve().parents[1]
ONE_STEP = ("trainer.batch_size=8", "trainer.max_steps=1", "trainer.logger=none")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One optimizer step of the real Trainer on test_train_recipe's store: a last-* checkpoint."""
    tmp = tmp_path_factory.mktemp("inspect")
    cfg = compose_train(tmp, *ONE_STEP)
    write_fixture(tmp, cfg)
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    return tmp, trainer


def test_the_holdings_of_a_trained_checkpoint(trained):
    tmp, trainer = trained
    directory = find(tmp / "run")  # the run folder: its newest last-*
    assert directory.name == "last-000001-e000"
    view = holdings(directory)
    assert view["origin"]["how"].startswith("trained here") and view["run_id"] == trainer.run_id
    assert view["modalities"] == MODS and view["fused_modalities"] == ["flow", "audio"] and view["resumable"]
    assert view["trained"]["steps"] == 1 and view["trained"]["early_exits"] == {} and not view["trained"]["finished"]
    assert view["feature_hashes"] == trainer.store.hashes and view["weights"].startswith("random-init backbone")
    assert view["model_config_hash"] == checkpoint.run_id_of(checkpoint.read_state(directory)["model_config"])
    own = trainer.model.trainable_state()
    assert view["parameters"] == sum(p.numel() for p in own.values())
    assert sum(r["tensors"] for r in view["modules"].values()) == len(own)
    assert list(view["modules"]) == ["MMQA-rgb", "MMQA-flow", "MMQA-audio", "fusion"]
    for m in MODS:
        row = view["modules"][f"MMQA-{m}"]
        assert row["LoRA"] == sum(p.numel() for p in trainer.model.mmqa.lora_parameters(m))
        assert row["query tokens"] == trainer.model.mmqa.heads[m].query_tokens.numel()
    assert view["modules"]["MMQA-audio"]["audio input"] > 0 and "audio input" not in view["modules"]["MMQA-rgb"]


def test_the_same_config_matches_and_each_difference_is_named(trained):
    tmp, _ = trained
    directory = find(tmp / "run")
    state = checkpoint.read_state(directory)
    assert mismatches(state, compose_train(tmp, *ONE_STEP)) == []
    found = mismatches(state, compose_train(tmp, *ONE_STEP, "model.num_query_tokens=16", "trainer.lr=0.02",
                                                  "model.modalities=[rgb,flow]"), store=Path(tmp / "store"))
    assert found == [
        {"key": "model.modalities", "checkpoint": MODS, "config": ["rgb", "flow"], "affects": "load"},
        {"key": "model.num_query_tokens", "checkpoint": 8, "config": 16, "affects": "load"},
        {"key": "trainer.lr", "checkpoint": 0.01, "config": 0.02, "affects": "resume"},
    ]
    # other features: their hash per modality, and a store made with other settings
    other = mismatches(state, compose_train(tmp, *ONE_STEP, "features.decode.max_side=128"))
    assert {m["key"] for m in other} >= {f"features.{m}" for m in MODS}


def test_the_cli_names_the_mismatch_and_refuses_a_corrupt_checkpoint(trained):
    tmp, _ = trained
    run = [sys.executable, "scripts/inspect_ckpt.py", f"ckpt={tmp / 'run'}"]
    config = [o for o in train_overrides(tmp, *ONE_STEP) if not o.startswith("run_dir=")]
    proc = subprocess.run([*run, *config, "model.num_query_tokens=16"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "| model.num_query_tokens | 8 | 16 | load |" in proc.stdout and "1 mismatches" in proc.stdout
    assert "| MMQA-audio |" in proc.stdout and "checksums    verified" in proc.stdout
    last = json.loads(proc.stdout.strip().splitlines()[-1])  # the JSON line is last
    assert last["mismatches"] == [{"key": "model.num_query_tokens", "checkpoint": 8, "config": 16, "affects": "load"}]
    broken = tmp / "broken"
    shutil.copytree(find(tmp / "run"), broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "scripts/inspect_ckpt.py", f"ckpt={broken}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {broken / 'model.safetensors'} differs from the sha256 "
                                                f"recorded at save (a flipped or overwritten byte)"]
    with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint at {tmp / 'nowhere'}"):
        find(tmp / "nowhere")


def test_a_converted_reference_checkpoint_says_so(tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "musicavqa_tiny.pth"
    torch.save({"model": reference_state(REF_ORDER, layers=2, width=64, rank=8, queries=8, vision=VIT, llm=256,
                                         audio=AUD, frozen=False)}, src)
    directory = import_reference(compose_import(f"src={src}", "features=tiny", "keep_ignored=false",
                                                "modalities=[rgb,audio,flow]", f"dest={tmp_path / 'imported'}"))
    view = holdings(find(tmp_path / "imported"))
    assert view["origin"]["how"] == "converted from the reference (make import-ckpt)"
    assert view["origin"]["file"] == str(src) and view["origin"]["reference_modalities"] == "rgb_audio_flow"
    assert view["trained"] is None and view["feature_hashes"] == {} and view["modalities"] == REF_ORDER
    assert not view["resumable"] and view["kind"] == "best"
    # its features are the reference's: only the model and the prompt are compared
    cfg = compose_train(tmp_path, "model.num_query_tokens=4")
    found = mismatches(checkpoint.read_state(directory), cfg)
    assert {m["key"] for m in found} >= {"model.num_query_tokens"}
    assert not any(m["key"].startswith("features.") for m in found)

"""The weights preflight (issue 27): every missing model named at once, with a runnable download
command, offline and in seconds, before any work; `make weights` checks and downloads.

The lookups run against real files: a Hugging Face cache laid out as huggingface_hub lays it out
(models--org--name/refs + snapshots/<commit>/), torch.hub's checkpoint folder and BEATs' file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core.features import resolve_features
from core.weights import WeightsMissingError, hub_weights, missing_message, preflight
from extractors.weights import features_weights
from model.weights import crema_weights

ROOT = Path(__file__).resolve().parents[1]
BLIP2 = ("Salesforce/blip2-flan-t5-xl", "0eb0d3b46c14c1f8c7680bca2693baafdb90bb28")
T5 = ("google/flan-t5-xl", "7d6315df2c2fb742f0f5b556879d730926ca9001")
FULL_EXTRACT = ["Intel/zoedepth-nyu-kitti", "unimatch_scale2_refine6-mixdata-398760b1.ckpt",
                "Salesforce/blip2-flan-t5-xl", "BEATs_iter3_plus_AS2M.pt"]


def cache_model(cache: Path, model_id: str, commit: str, ref: str | None = None, files=("model.safetensors",)):
    """A model in huggingface_hub's cache layout (what `hf download` leaves)."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("config.json", *files):
        (snap / name).write_text("{}")
    if ref:
        (repo / "refs").mkdir()
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """An empty Hugging Face cache and torch.hub folder, whatever the machine running the tests has."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def full_features(tmp_path: Path, dataset: str = "music_avqa") -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="extract", overrides=[f"dataset={dataset}", "features=full",
                      f"features.extractors.audio.resources.local_path={tmp_path / 'beats'}"])
    return resolve_features(cfg.features)


def model_config(preset: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["dataset=nextqa", f"features={preset}"]).model


def test_full_extract_names_every_missing_stage_model_then_none_once_present(machine):
    needed = features_weights(full_features(machine))
    assert sorted(w.name for w in needed if not w.present) == sorted(FULL_EXTRACT)
    message = missing_message(needed)
    assert message.count(".venv/bin/hf download") == 2 and message.count("curl -L -o") == 2
    assert "--revision 0eb0d3b46c14c1f8c7680bca2693baafdb90bb28" in message

    cache = machine / "hub"
    cache_model(cache, "Intel/zoedepth-nyu-kitti", "a" * 40, ref="main")   # revision: main, through refs/
    cache_model(cache, *BLIP2)
    (machine / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (machine / "torch" / "hub" / "checkpoints" / FULL_EXTRACT[1]).write_bytes(b"x")
    (machine / "beats").mkdir()
    (machine / "beats" / FULL_EXTRACT[3]).write_bytes(b"x")
    assert [w.name for w in features_weights(full_features(machine)) if not w.present] == []


def test_a_cache_entry_without_weights_or_at_another_revision_is_missing(machine):
    cache_model(machine / "hub", BLIP2[0], "b" * 40, files=())             # config only, other commit
    assert not hub_weights("t", *BLIP2, None, key="k").present
    cache_model(machine / "hub", BLIP2[0], BLIP2[1], files=())              # pinned commit, no weights
    assert not hub_weights("t", *BLIP2, None, key="k").present


def test_tiny_presets_need_nothing(machine):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="extract", overrides=["dataset=demo", "features=tiny"])
    assert features_weights(resolve_features(cfg.features)) == []
    assert crema_weights(model_config("tiny")) == []
    preflight([])  # nothing missing: quiet


def test_full_model_needs_blip2_and_t5_with_its_tokenizer(machine):
    model = model_config("full")
    with pytest.raises(WeightsMissingError) as err:
        preflight(crema_weights(model))
    assert "Salesforce/blip2-flan-t5-xl" in str(err.value) and "google/flan-t5-xl" in str(err.value)
    cache_model(machine / "hub", *BLIP2)
    cache_model(machine / "hub", *T5)                                       # no tokenizer file
    assert [w.name for w in crema_weights(model) if not w.present] == ["google/flan-t5-xl"]
    (machine / "hub" / "models--google--flan-t5-xl" / "snapshots" / T5[1] / "spiece.model").write_text("")
    preflight(crema_weights(model))
    # a local folder given in place of the hub id is looked at, not the cache
    local = machine / "t5-copy"
    local.mkdir()
    model.t5_model = str(local)
    missing = [w for w in crema_weights(model) if not w.present]
    assert [w.name for w in missing] == [str(local)] and f"--local-dir {local}" in missing[0].command


def _run(script: str, *overrides: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"scripts/{script}.py", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def bare_env(tmp_path):
    return {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "TORCH_HOME": str(tmp_path / "torch"),
            "HF_HUB_OFFLINE": "0"}


@pytest.mark.slow
def test_extract_without_weights_exits_2_at_once_naming_all_and_creating_no_store(tmp_path, bare_env):
    out = tmp_path / "out"
    run = _run("extract", "dataset=videos", f"dataset.path={tmp_path / 'no-videos'}", "features=full",
               f"out={out}", f"features.extractors.audio.resources.local_path={tmp_path / 'beats'}", env=bare_env)
    assert run.returncode == 2, run.stderr
    text = run.stdout + run.stderr
    assert "Traceback" not in text and len(text.splitlines()) < 30
    assert all(name in run.stderr for name in FULL_EXTRACT)
    assert "make weights DATASET=videos FEATURES=full" in run.stderr
    assert not out.exists()  # nothing that could block the next run


@pytest.mark.slow
def test_train_full_without_weights_names_blip2_and_t5(tmp_path, bare_env):
    run = _run("train", "dataset=nextqa", "features=full", f"out={tmp_path}", f"run_dir={tmp_path / 'run'}",
               env=bare_env)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "Salesforce/blip2-flan-t5-xl" in run.stderr and "google/flan-t5-xl" in run.stderr
    assert ".venv/bin/hf download google/flan-t5-xl --revision" in run.stderr


@pytest.mark.slow
def test_make_weights_check_lists_each_model_once_and_exits_2(bare_env):
    run = subprocess.run(["make", "-s", "weights", "DATASET=nextqa", "CHECK=1"], cwd=ROOT, env=bare_env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    # nextqa has no audio: depth, flow, the encoder (BLIP-2, also the trainer's) and Flan-T5
    assert run.stderr.count("  - ") == 4 and "(extract encoder stage, train model.blip2" in run.stderr
    demo = subprocess.run(["make", "-s", "weights", "DATASET=demo", "CHECK=1"], cwd=ROOT, env=bare_env,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0 and "all 0 model(s)" in demo.stdout


@pytest.mark.slow
def test_eval_of_a_full_size_checkpoint_without_weights_names_them(tmp_path, bare_env):
    """The model of an eval comes from the checkpoint's model_config: its frozen parts are looked up."""
    ckpt = tmp_path / "best-000001"
    ckpt.mkdir()
    model = {k: v for k, v in OmegaConf.to_container(model_config("full")).items() if not str(v).startswith("${")}
    (ckpt / "state.json").write_text(json.dumps({"model_config": model, "prompt": {}}))
    run = _run("eval", "dataset=nextqa", "features=full", f"ckpt={ckpt}", f"run_dir={tmp_path / 'run'}", env=bare_env)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "Salesforce/blip2-flan-t5-xl (eval model.blip2" in run.stderr and "google/flan-t5-xl" in run.stderr


def test_predict_and_the_app_preflight_a_full_size_checkpoint_before_loading_it(machine):
    """make predict and make app (Ask) load a checkpoint through Asker.load: the checkpoint's
    frozen parts and its modalities' extractor models are looked up first, as train does."""
    from app.backend import USER_ERRORS
    from app.predict import Asker

    ckpt = machine / "best-000001"
    ckpt.mkdir()
    model = {k: v for k, v in OmegaConf.to_container(model_config("full")).items() if not str(v).startswith("${")}
    (ckpt / "state.json").write_text(json.dumps({"model_config": {**model, "modalities": ["rgb", "depth"]}, "prompt": {}}))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        features = compose(config_name="predict", overrides=["dataset=nextqa", "features=full"]).features
    with pytest.raises(WeightsMissingError) as err:
        Asker.load(ckpt, features, device="cpu")
    text = str(err.value)
    assert isinstance(err.value, USER_ERRORS)  # the app shows it as a one-line error, not a traceback
    assert "Salesforce/blip2-flan-t5-xl (predict model.blip2" in text and "google/flan-t5-xl (predict" in text
    assert "Intel/zoedepth-nyu-kitti (extract depth stage" in text and "unimatch" not in text  # its modalities only

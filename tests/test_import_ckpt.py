"""CREMA's released checkpoints (model/reference_ckpt.py, trainer/released.py, scripts/import_ckpt.py).

The reference state dicts here are built from the reference's code (Yui010206/CREMA a76043b,
lavis/models/crema_models/crema.py + blip2.py's LoRA_Multimodal_QFormer), written out below by
hand, not by the converter: full-size layouts on the meta device (shape arithmetic), tiny ones as
real .pth files that go through the CLI, load strictly, evaluate, start a training run, and convert
back to the very same tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from model.crema import crema
from model.reference_ckpt import ConversionError, modality_order, project_key, reference_key, to_project
from trainer import checkpoint
from trainer.evaluate import load_for_eval, run_eval
from trainer.recipe import Trainer
from trainer.released import export_reference, import_reference, model_config
from trainer.warm_start import warm_start
from test_train_recipe import AUD, MODS, VIT, compose_train, write_fixture

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FRAME_REF = ("rgb", "depth", "flow", "norm")


def reference_state(modalities: list[str], *, layers: int, width: int, rank: int, queries: int, vision: int,
                    llm: int, audio: int = 768, make=torch.randn, frozen: bool = True) -> dict:
    """A CREMA state dict in the reference's key layout (`modalities`: its names, its order)."""
    sd = {}
    # crema.py: `<m>_gradsel_embed` zeros (1, g), g = the rgb LoRA weights' size, registered in modality order
    g = layers * 2 * 2 * rank * width if "rgb" in modalities else 0
    for m in modalities:
        sd[f"{m}_gradsel_embed"] = torch.zeros(1, g, device="meta" if make is not torch.randn else None)
    for i in range(layers):  # blip2.py: LoRA on every layer's self-attention query and value
        for proj in ("query", "value"):
            base = f"Qformer.bert.encoder.layer.{i}.attention.self.{proj}"
            if frozen:
                sd[f"{base}.w.weight"], sd[f"{base}.w.bias"] = make(width, width), make(width)
            for m in modalities:
                sd[f"{base}.w_a_{m}.weight"] = make(rank, width)
                sd[f"{base}.w_b_{m}.weight"] = make(width, rank)
    for m in modalities:
        sd[f"query_tokens_{m}"] = make(1, queries, width)
        sd[f"t5_proj_{m}.weight"], sd[f"t5_proj_{m}.bias"] = make(llm, width), make(llm)
        sd[f"ln_{m}.weight"], sd[f"ln_{m}.bias"] = make(vision), make(vision)
        if m == "audio":
            sd["projection_audio.weight"], sd["projection_audio.bias"] = make(vision, audio), make(vision)
    if len(modalities) > 1:  # 'espresso' in task: nn.Sequential(nn.Linear(2048 * (M - 1), 2048))
        sd["fusion.0.weight"], sd["fusion.0.bias"] = make(llm, llm * (len(modalities) - 1)), make(llm)
    if frozen:
        sd["Qformer.bert.embeddings.LayerNorm.weight"] = make(width)
        sd["Qformer.bert.embeddings.position_ids"] = torch.arange(8)[None]
        sd["t5_model.shared.weight"] = make(16, llm)
    return sd


def meta(*shape):
    return torch.empty(*shape, device="meta")


def compose_import(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="import_ckpt", overrides=["src=unused.pth", *overrides])


@pytest.mark.parametrize("name, ref_modalities", [
    ("nextqa_vdfn", ["rgb", "depth", "flow", "norm"]),
    ("musicavqa_vadfn", ["rgb", "audio", "flow", "depth", "norm"]),
    ("sqa3d_v3dn", ["rgb", "pc", "depth", "norm"]),
])
def test_full_size_reference_layouts_map_strictly_onto_crema_full(name, ref_modalities):
    state = reference_state(ref_modalities, layers=12, width=768, rank=64, queries=32, vision=1408, llm=2048,
                            make=meta)
    ckpt = {"model": state, "config": {"model": {"modalities": "_".join(ref_modalities), "task": "espresso-concat-seq"}}}
    order = modality_order(ckpt, state)
    config = model_config(compose_import("features=full"), state, order)
    model = crema(config, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.trainable_state().items()}
    conv = to_project(state, order, shapes)
    assert set(conv.tensors) == set(shapes)                      # strict: every parameter, nothing else
    assert {reference_key(k) for k in conv.tensors} | set(conv.ignored) == set(state)  # every key accounted for
    per_mmqa = {m: sum(p.numel() for p in ps) for m, ps in model.module_parameters().items()}
    for m in order:  # the spec's 3,961,600 (+ audio's 768 -> 1408 projection; points: no LayerNorm, 2 x 1408 less)
        extra = {"audio": 768 * 1408 + 1408, "pointcloud": -2 * 1408}.get(m, 0)
        assert per_mmqa[m] == 3_961_600 + extra
    assert per_mmqa["fusion"] == 2048 * 2048 * (len(order) - 1) + 2048
    assert model.config.fused_modalities == order[1:]            # the fusion's columns in the reference's order
    assert conv.ignored["rgb_gradsel_embed"].startswith("a placeholder")
    assert tuple(state["rgb_gradsel_embed"].shape) == (1, 2_359_296)
    if "pc" in ref_modalities and "mmqa.heads.pointcloud.ln.weight" not in shapes:
        assert "no LayerNorm" in conv.ignored["ln_pc.weight"]


def test_every_rule_maps_both_ways():
    for key in ["Qformer.bert.encoder.layer.11.attention.self.value.w_b_norm.weight", "query_tokens_pc",
                "t5_proj_audio.bias", "ln_depth.weight", "projection_audio.weight", "fusion.0.bias"]:
        ours, _ = project_key(key)
        assert reference_key(ours) == key
    assert project_key("Qformer.bert.encoder.layer.0.attention.self.query.w_a_smell.weight") is None
    with pytest.raises(ConversionError, match="'touch' has no counterpart"):
        reference_key("mmqa.heads.touch.query_tokens")


def test_the_modality_order_comes_from_the_file_or_must_be_given():
    state = reference_state(["rgb", "norm", "depth", "flow"], layers=1, width=8, rank=2, queries=2, vision=8,
                            llm=8, frozen=False)
    assert modality_order({}, state) == ["rgb", "normal", "depth", "flow"]   # the gradsel placeholders' order
    assert modality_order({}, state, ["rgb", "depth", "normal", "flow"]) == ["rgb", "depth", "normal", "flow"]
    no_hint = {k: v for k, v in state.items() if not k.endswith("gradsel_embed")}
    with pytest.raises(ConversionError, match="records no modality order"):
        modality_order({}, no_hint)
    with pytest.raises(ConversionError, match=r"\['audio'\] have no weights"):
        modality_order({"config": {"model": {"modalities": "rgb_audio_norm_depth_flow"}}}, state)


def test_an_unknown_key_or_a_missing_parameter_is_refused_by_name():
    state = reference_state(["rgb"], layers=2, width=8, rank=2, queries=2, vision=8, llm=8, frozen=False)
    shapes = {project_key(k)[0]: tuple(v.shape) for k, v in state.items() if project_key(k)}
    to_project(state, ["rgb"], shapes)
    with pytest.raises(ConversionError, match="match no rule.*mystery_head.weight"):
        to_project({**state, "mystery_head.weight": torch.zeros(1)}, ["rgb"], shapes)
    lost = dict(state)
    del lost["Qformer.bert.encoder.layer.1.attention.self.value.w_b_rgb.weight"]
    with pytest.raises(ConversionError, match="lacks 1 parameters.*layer.1.attention.self.value.w_b_rgb"):
        to_project(lost, ["rgb"], shapes)
    # LoRA of a layer the preset's Q-Former lacks is refused, never dropped as "frozen Q-Former"
    one_layer = {k: v for k, v in shapes.items() if ".layer.1." not in k}
    with pytest.raises(ConversionError, match="do not fit the model preset.*layer.1.*DATASET=<name>"):
        to_project(state, ["rgb"], one_layer)


# ---------------------------------------------------------------------- tiny: real files, CLI, eval, train

REF_ORDER = ["rgb", "audio", "flow"]  # MUSIC-AVQA's run script order (modalities='rgb_audio_flow')


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny LAVIS-style fine-tuned checkpoint file of crema_tiny's sizes, converted by the real CLI."""
    tmp = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    state = reference_state(REF_ORDER, layers=2, width=64, rank=8, queries=8, vision=VIT, llm=256, audio=AUD)
    src = tmp / "musicavqa_tiny.pth"
    torch.save({"model": state, "config": {"model": {"modalities": "_".join(REF_ORDER)}}, "epoch": 19,
                "optimizer": {"state": {}, "param_groups": []}, "scaler": None}, src)
    proc = subprocess.run([sys.executable, "scripts/import_ckpt.py", f"src={src}", "dataset=nextqa", "features=tiny",
                           f"dest={tmp / 'imported'}", f"hydra.run.dir={tmp / 'hydra'}"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "src": src, "state": state, "out": proc.stdout, "ckpt": tmp / "imported"}


def test_the_cli_converts_loads_strictly_and_keeps_every_tensor(released):
    directory = checkpoint.resolve(released["ckpt"], "best")
    assert "tensors mapped for modalities ['rgb', 'audio', 'flow']" in released["out"]
    assert "the frozen BLIP-2 Q-Former" in released["out"] and "optimizer state" in released["out"]
    model, _, state = load_for_eval(directory, torch.device("cpu"))  # checkpoint.load_model: strict
    assert model.modalities == REF_ORDER and model.config.fused_modalities == ["audio", "flow"]
    assert set(state["imported_from"]["ignored_keys"]) | {reference_key(k) for k in model.trainable_state()} \
        == set(released["state"]) | {"config", "epoch", "optimizer", "scaler"}
    for key, value in model.trainable_state().items():
        assert torch.equal(value, released["state"][reference_key(key)]), key


def test_converting_back_gives_the_same_tensors_bit_for_bit(released):
    back = export_reference(compose_import(f"src={released['ckpt']}", f"dest={released['tmp'] / 'back.pth'}"))
    again = torch.load(back, weights_only=True)["model"]
    assert list(again) == list(released["state"])  # the whole state dict, in its order (keep_ignored=true)
    for key, value in released["state"].items():
        assert again[key].dtype == value.dtype and torch.equal(again[key], value), key
    # the checkpoint's own file holds exactly the source's tensors
    saved = load_file(str(checkpoint.resolve(released["ckpt"], "best") / "model.safetensors"))
    mapped = {k: v for k, v in released["state"].items() if project_key(k) is not None}
    assert len(saved) == len(mapped) and all(torch.equal(saved[project_key(k)[0]], v) for k, v in mapped.items())
    # keep_ignored=false: only what the model uses comes back (still the same tensors)
    lean = import_reference(compose_import(f"src={released['src']}", "features=tiny", "keep_ignored=false",
                                           f"dest={released['tmp'] / 'lean'}"))
    again = torch.load(export_reference(compose_import(f"src={lean}", f"dest={released['tmp'] / 'lean.pth'}")),
                       weights_only=True)["model"]
    assert set(again) == set(mapped) and all(torch.equal(again[k], v) for k, v in mapped.items())


def test_a_converted_checkpoint_evaluates_on_this_projects_features(released, tmp_path):
    train_cfg = compose_train(tmp_path)
    write_fixture(tmp_path, train_cfg)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ecfg = compose(config_name="eval", overrides=[
            "dataset=nextqa", f"dataset.root={tmp_path}", *[f"dataset.annotations.{s}={tmp_path}/ann/{s}.json"
                                                             for s in ("train", "val", "test")],
            "dataset.val_from_train=null", f"dataset.modalities=[{','.join(MODS)}]", "features=tiny",
            f"store={train_cfg.store}", f"run_dir={tmp_path}/run", f"ckpt={released['ckpt']}",
            "trainer.data.num_workers=0", "eval.combinations=[[rgb],all]"])
    results = run_eval(ecfg)
    assert [r["modalities"] for r in results] == [["rgb"], REF_ORDER]
    assert all(r["summary"]["n"] == 4 and len(r["rows"]) == 4 for r in results)


def test_model_init_starts_training_from_the_converted_weights(released, tmp_path):
    cfg = compose_train(tmp_path, f"model.init={released['ckpt']}")  # training order [rgb, flow, audio]
    write_fixture(tmp_path, cfg)
    trainer = Trainer(cfg)
    own = trainer.model.trainable_state()
    for key, value in own.items():
        if not key.startswith("fusion."):
            assert torch.equal(value, released["state"][reference_key(key)]), key
    # the file fuses [audio, flow], this run [flow, audio]: the fusion's columns differ, it starts fresh
    assert not torch.equal(own["fusion.linear.weight"], released["state"]["fusion.0.weight"])
    with pytest.raises(checkpoint.CheckpointError, match="convert.*make import-ckpt SRC="):
        warm_start(trainer.model, released["src"])  # the reference's .pth itself


def test_cli_user_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/import_ckpt.py", f"src={tmp_path / 'nope.pth'}",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: no file at {tmp_path / 'nope.pth'}" in proc.stderr

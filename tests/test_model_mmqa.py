"""MMQA: LoRA placement and scale, frozen parts, per-modality heads, the 3D position encoding."""

from __future__ import annotations

import math
import re

import pytest
import torch

from model.mmqa import sinusoid_table, voxel_position_table
from peft.tuners.lora import LoraLayer

from presets import build

MODS = ["rgb", "depth", "flow", "audio", "pointcloud"]
VISION, AUDIO = 48, 32


def tiny(**kw):
    return build("crema_tiny", vision_width=VISION, audio_width=AUDIO, **{"modalities": MODS, **kw})


def fake_batch(mods=MODS, b=2, t=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, t, 9, VISION, generator=g) for m in mods if m not in ("audio", "pointcloud")}
    if "audio" in mods:
        feats["audio"] = torch.randn(b, 2, 6, AUDIO, generator=g)
    batch = {"features": feats, "masks": {}, "xyz": {},
             "present": {m: torch.ones(b, dtype=torch.bool) for m in mods},
             "prompt": ["Question: which way? Option A: left Option B: right"] * b,
             "target": ["Option B"] * b, "answer": ["right"] * b, "answer_idx": torch.tensor([1] * b),
             "num_options": torch.tensor([2] * b),
             "options": [("left", "right")] * b}
    if "pointcloud" in mods:
        feats["pointcloud"] = torch.randn(b, 30, VISION, generator=g)
        batch["masks"]["pointcloud"] = torch.ones(b, 30, dtype=torch.bool)
        batch["xyz"]["pointcloud"] = torch.randint(0, 256, (b, 30, 3), generator=g)
    return batch


def lora_layers(model):
    return {name: mod for name, mod in model.mmqa.qformer.named_modules() if isinstance(mod, LoraLayer)}


def test_lora_targets_exactly_self_attention_query_and_value():
    model = tiny()
    layers = lora_layers(model)
    n = model.mmqa.qformer.base_model.model.config.num_hidden_layers
    expected = {f"base_model.model.encoder.layer.{i}.attention.attention.{p}" for i in range(n) for p in ("query", "value")}
    assert set(layers) == expected
    assert not any("crossattention" in k or k.endswith(".key") for k in layers)
    # the tiny Q-Former does have cross-attention: the pattern had something to tell apart
    assert any(re.search(r"crossattention\.attention\.query$", k) for k, _ in model.mmqa.qformer.named_modules())
    for layer in layers.values():
        assert sorted(layer.lora_A.keys()) == sorted(MODS)  # one adapter per modality, named after it
        for m in MODS:
            assert layer.scaling[m] == 1.0
            assert layer.r[m] == 8
            assert layer.lora_dropout[m].p == pytest.approx(0.1)
            assert torch.count_nonzero(layer.lora_B[m].weight) == 0
            assert torch.count_nonzero(layer.lora_A[m].weight) == layer.lora_A[m].weight.numel()


def test_lora_a_is_kaiming_uniform():
    layer = next(iter(lora_layers(tiny()).values()))
    w = layer.lora_A["rgb"].weight
    bound = math.sqrt(6 / ((1 + 5) * w.shape[1]))  # kaiming_uniform_(a=sqrt(5)) bound
    assert w.abs().max() <= bound + 1e-6
    assert w.abs().max() > 0.8 * bound


def test_one_step_changes_only_the_stepping_modality_and_fusion():
    torch.manual_seed(0)
    model = tiny()
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("llm.") for n in frozen) and any("qformer.base_model" in n for n in frozen)
    trainable = {n: p.detach().clone() for n, p in model.trainable_state().items()}
    opt = torch.optim.AdamW(model.trainable_state().values(), lr=1e-2)
    loss = model(fake_batch(), grad_modalities=["flow"])
    loss.backward()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
    with_grad = {n for n, p in model.trainable_state().items() if p.grad is not None}
    assert with_grad and all(".flow." in n or "fusion" in n for n in with_grad), with_grad
    assert any("lora_B.flow" in n for n in with_grad) and any("fusion" in n for n in with_grad)
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    moved = {n for n, p in model.trainable_state().items() if not torch.equal(p, trainable[n])}
    assert moved == with_grad


def test_heads_are_keyed_by_modality_and_audio_has_its_input_projection():
    model = tiny()
    assert list(model.mmqa.heads) == MODS
    assert model.mmqa.heads["audio"].input_proj.in_features == AUDIO
    assert model.mmqa.heads["audio"].input_proj.out_features == VISION
    assert all(model.mmqa.heads[m].input_proj is None for m in MODS if m != "audio")
    tokens = model.mmqa("audio", torch.randn(2, 2, 6, AUDIO))
    assert tokens.shape == (2, 2, 8, model.llm.config.d_model)  # 2 chunks x 8 queries


def test_lora_off_is_the_plain_qformer_path():
    model = tiny().eval()
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["rgb"].weight.normal_()
    x = torch.randn(1, 4, 9, VISION)
    with_lora = model.mmqa("rgb", x)
    without = model.mmqa("rgb", x, use_lora=False)
    assert not torch.allclose(with_lora, without)
    # the plain path equals running the base Q-Former with no adapters injected at all
    head = model.mmqa.heads["rgb"]
    base = model.mmqa.qformer.base_model.model
    with model.mmqa.qformer.disable_adapter():
        ref = base(query_embeds=head.query_tokens.expand(4, -1, -1), encoder_hidden_states=head.ln(x[0])).last_hidden_state
    assert torch.allclose(without[0], head.proj(ref), atol=1e-6)


def test_voxel_position_encoding():
    table = sinusoid_table(256, 16)
    assert table.shape == (256, 16)
    assert torch.allclose(table[0, 0::2], torch.zeros(8)) and torch.allclose(table[0, 1::2], torch.ones(8))
    assert table[5, 0] == pytest.approx(math.sin(5.0), abs=1e-6)
    odd = voxel_position_table(256, 1408)
    assert odd.shape == (256, 469)  # 469 per axis, 3 x 469 = 1407, padded to 1408
    model = tiny()
    xyz = torch.tensor([[0, 0, 0], [1, 2, 3]])
    enc = model.mmqa.voxel_encoding(xyz)
    per_axis = VISION // 3
    assert enc.shape == (2, VISION)
    assert torch.allclose(enc[1, per_axis:2 * per_axis], sinusoid_table(256, per_axis)[2])
    assert model.mmqa.voxel_pe_scale == 0.01
    # fixed, not a parameter and not saved
    assert "voxel_table" not in dict(model.named_parameters()) and not any("voxel" in k for k in model.state_dict())


def test_pointcloud_respects_its_padding_mask():
    model = tiny().eval()
    feats = torch.randn(1, 1, 10, VISION)
    xyz = torch.randint(0, 256, (1, 1, 10, 3))
    mask = torch.tensor([[[1] * 6 + [0] * 4]], dtype=torch.bool)
    a = model.mmqa("pointcloud", feats, mask=mask, xyz=xyz)
    feats2 = feats.clone()
    feats2[..., 6:, :] = 100.0  # padded points must not matter
    b = model.mmqa("pointcloud", feats2, mask=mask, xyz=xyz)
    assert torch.allclose(a, b, atol=1e-5)

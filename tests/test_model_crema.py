"""CREMA assembly: fusion layouts, answering, composition, presets, parameter counts, metrics."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import ByT5Tokenizer

from core.hub import ModelUnavailableError
from core.schema import QARecord
from model.config import CremaConfig
from model.fusion import EspressoFusion, align_to_frames, assemble
from model.pretrained import resolve
from model.scoring import choice_token_ids
from presets import build, preset, trainer_preset
from scripts.params import table
from test_model_mmqa import VISION, fake_batch, tiny
from trainer.metrics import chance_level, gqa_match, score, strict_match, summarize
from trainer.prompts import prompt_text, target_text


def seq_len(model, batch, **kw):
    embeds, mask = model.encoder_inputs(batch, **kw)
    assert embeds.shape[:2] == mask.shape
    return embeds.shape[1]


def test_espresso_sequence_does_not_grow_with_modalities_and_concat_does():
    batch = fake_batch()
    prompt = len(ByT5Tokenizer()(batch["prompt"][0]).input_ids)
    prefix = len(ByT5Tokenizer()("Frame 1: ", add_special_tokens=False).input_ids)
    q, t = 8, 4
    esp = tiny(fusion="espresso", espresso_mode="concat").eval()
    assert seq_len(esp, batch) == 2 * t * (prefix + q) + prompt
    assert seq_len(esp, batch, modalities=["rgb", "flow"]) == seq_len(esp, batch)
    add = tiny(fusion="espresso", espresso_mode="add").eval()
    assert seq_len(add, batch) == t * (prefix + q) + prompt
    plain = tiny(fusion="concat").eval()
    frames = t * (prefix + 3 * q)  # rgb, depth, flow per frame
    assert seq_len(plain, batch) == frames + 2 * q + q + prompt  # + 2 audio chunks + 1 point cloud


def test_espresso_fusion_is_one_linear_then_self_gating():
    torch.manual_seed(0)
    fusion = EspressoFusion(["flow", "audio"], 6)
    flow, audio = torch.randn(2, 4, 3, 6), torch.randn(2, 2, 3, 6)
    aligned = {"flow": flow, "audio": align_to_frames("audio", audio, 4)}
    assert torch.allclose(aligned["audio"][:, 3], audio.mean(1))  # chunk mean, repeated over frames
    x = fusion.linear(torch.cat([flow, aligned["audio"]], -1))
    assert torch.allclose(fusion(aligned), x * torch.sigmoid(x))
    # a modality left out contributes zeros (zero-shot composition)
    y = fusion.linear(torch.cat([flow, torch.zeros_like(flow)], -1))
    assert torch.allclose(fusion({"flow": flow}), y * torch.sigmoid(y))


def test_missing_modality_is_zeroed_and_masked():
    t, q, d = 2, 3, 5
    tokens = {"rgb": torch.ones(2, t, q, d), "audio": torch.ones(2, 2, q, d)}
    present = {"rgb": torch.tensor([True, True]), "audio": torch.tensor([True, False])}
    seq = assemble(tokens, present, [torch.zeros(1, d)] * t, fusion=None, espresso_mode="concat")
    embeds, mask = seq.build()
    audio_mask = mask[:, -2 * q:]
    assert audio_mask[0].all() and not audio_mask[1].any()
    assert embeds[1, -2 * q:].abs().sum() == 0


def test_multiple_choice_reads_the_letter_after_option():
    tok = ByT5Tokenizer()
    prefix, letters = choice_token_ids(tok)
    assert tok.decode(prefix) == "Option " and tok.decode(letters[:5]) == "ABCDE"
    model = tiny(choice_scoring="letter", loss="lm").eval()
    batch = fake_batch()
    preds = model.predict(batch)
    assert all(p["choice"] in (0, 1) and p["text"] == ("left", "right")[p["choice"]] for p in preds)
    # the choice is the argmax of the letter logits after the teacher-forced "Option " prefix
    embeds, mask = model.encoder_inputs(batch)
    dec = torch.tensor([[0] + prefix] * 2)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec).logits[:, -1]
    assert [p["choice"] for p in preds] == logits[:, letters[:2]].argmax(-1).tolist()


def test_option_text_scoring_ranks_each_options_likelihood():
    model = tiny(choice_scoring="option_text", loss="lm").eval()
    batch = fake_batch()
    batch["options"] = [("left", "right"), ("up", "down", "it does not move")]
    batch["num_options"] = torch.tensor([2, 3])
    preds = model.predict(batch)
    embeds, mask = model.encoder_inputs(batch)
    for row, opts in enumerate(batch["options"]):
        means = []
        for text in opts:  # one option at a time, through the plain LM loss
            ids = model.tokenizer([text], return_tensors="pt").input_ids
            loss = model.llm(inputs_embeds=embeds[row:row + 1], attention_mask=mask[row:row + 1], labels=ids).loss
            means.append(-float(loss))
        assert preds[row]["choice"] == max(range(len(opts)), key=means.__getitem__)
        assert preds[row]["text"] == opts[preds[row]["choice"]]
    # training targets follow the scoring: the answer text, not "Option X"
    ids = model.tokenizer(batch["answer"], return_tensors="pt").input_ids
    expect = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=ids).loss
    assert torch.allclose(model(batch), expect)


def test_options_loss_is_cross_entropy_over_the_ranked_options_and_lm_for_open_ended():
    model = tiny(choice_scoring="option_text", loss="options").eval()
    batch = fake_batch(b=3)
    batch["options"] = [("left", "right"), ("up", "down", "it does not move"), ()]
    batch["num_options"] = torch.tensor([2, 3, 0])
    batch["answer_idx"] = torch.tensor([1, 2, -1])
    batch["answer"] = ["right", "it does not move", "a dog"]
    embeds, mask = model.encoder_inputs(batch)
    terms = []
    for row in (0, 1):  # the options' mean token log-likelihoods, as predict ranks them
        means = []
        for text in batch["options"][row]:
            ids = model.tokenizer([text], return_tensors="pt").input_ids
            means.append(-model.llm(inputs_embeds=embeds[row:row + 1], attention_mask=mask[row:row + 1], labels=ids).loss)
        logp = torch.log_softmax(torch.stack(means), dim=0)
        terms.append(-logp[int(batch["answer_idx"][row])])
    ids = model.tokenizer(["a dog"], return_tensors="pt").input_ids  # open-ended: the LM loss on its answer
    terms.append(model.llm(inputs_embeds=embeds[2:], attention_mask=mask[2:], labels=ids).loss)
    loss = model(batch)
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    loss.backward()  # the loss reaches the trainable parts
    assert all(p.grad is not None for p in model.mmqa.heads["rgb"].parameters())
    with pytest.raises(ValueError, match="option_text"):
        CremaConfig(choice_scoring="letter", loss="options")
    with pytest.raises(ValueError, match="model.loss"):
        CremaConfig(loss="hinge")


def test_open_ended_uses_beam_search_text():
    model = tiny().eval()
    batch = fake_batch()
    batch["num_options"] = torch.tensor([0, 0])
    preds = model.predict(batch)
    assert all(p["choice"] is None and isinstance(p["text"], str) for p in preds)


def test_zero_shot_composition_and_lora_off():
    model = tiny().eval()
    with torch.no_grad():
        for p in model.mmqa.lora_parameters("flow"):
            p.add_(0.05 * torch.randn_like(p))
    batch = fake_batch()
    full = model.encoder_inputs(batch)[0]
    sub = model.encoder_inputs(batch, modalities=["flow", "rgb"])[0]
    off = model.encoder_inputs(batch, modalities=["rgb", "flow"], lora_off=["flow"])[0]
    assert full.shape == sub.shape == off.shape
    assert not torch.allclose(full, sub) and not torch.allclose(sub, off)
    with pytest.raises(ValueError, match="trained on"):
        model.encoder_inputs(batch, modalities=["rgb", "thermal"])


def test_tiny_preset_is_identical_in_every_build():
    a, b = tiny(), tiny()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = tiny(seed=1)
    assert not torch.equal(c.mmqa.heads["rgb"].query_tokens, a.mmqa.heads["rgb"].query_tokens)


def test_full_preset_counts_3961600_per_mmqa_on_meta():
    model = build("crema_full", device="meta", modalities=["rgb", "depth", "audio", "pointcloud"])
    rows = dict(table(model))
    assert rows["MMQA-rgb"] == [2_359_296, 24_576, 2_816, 1_574_912, 0, 3_961_600]
    assert rows["MMQA-depth"][-1] == 3_961_600
    assert rows["MMQA-pointcloud"] == [2_359_296, 24_576, 0, 1_574_912, 0, 3_961_600 - 2_816]  # no LayerNorm
    assert rows["MMQA-audio"][-1] == 3_961_600 + 768 * 1408 + 1408  # its Linear to the ViT width
    assert rows["fusion (espresso)"][-1] == 3 * 2048 * 2048 + 2048
    assert next(model.parameters()).device.type == "meta"


def test_full_preset_offline_error_names_id_revision_and_config_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as err:
        resolve("Salesforce/blip2-flan-t5-xl", "0eb0d3b46c14c1f8c7680bca2693baafdb90bb28",
                config_key="model.blip2", patterns=["config.json"])
    msg = str(err.value)
    assert "hf download Salesforce/blip2-flan-t5-xl --revision 0eb0d3b46c14c1f8c7680bca2693baafdb90bb28" in msg
    assert "model.blip2=" in msg
    with pytest.raises(ModelUnavailableError, match="holds no config.json"):
        resolve(str(tmp_path / "absent"), "main", config_key="model.t5_model", patterns=[])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        CremaConfig(modalities=["rgb", "smell"])
    with pytest.raises(ValueError, match="no rgb"):
        CremaConfig(modalities=["flow", "audio"], fusion="espresso")
    CremaConfig(modalities=["flow", "audio"], fusion="concat")


def test_prompts_and_targets():
    r = QARecord(qid="motion_v_0", video_id="v", split="train", question="Which way?", answer="left",
                 options=("up", "left"), answer_idx=1, qtype="motion")
    prompt = trainer_preset("full").prompt  # CREMA's prompt
    assert prompt_text(r, prompt).startswith(
        "Question: Which way? Option A: up Option B: left Considering")
    assert target_text(r) == "Option B"


def test_metrics_strict_and_lenient():
    assert strict_match(" Acoustic  Guitar", "acoustic guitar")
    assert not strict_match("guitar", "acoustic guitar")
    assert gqa_match("guitar", "acoustic guitar") and gqa_match("2", "two")
    assert not gqa_match("", "indoor")  # empty -> "unanswerable", never a substring match
    assert score({"choice": 2, "text": "x"}, "x", 2) == {"strict": 1, "lenient": 1}
    assert score({"choice": None, "text": "in"}, "indoor", -1) == {"strict": 0, "lenient": 1}
    rows = [{"qtype": "a", "strict": 1, "lenient": 1, "num_options": 5},
            {"qtype": "b", "strict": 0, "lenient": 1, "num_options": 5}]
    s = summarize(rows)
    assert s["strict"] == 50.0 and s["lenient"] == 100.0 and s["by_qtype"]["b"]["strict"] == 0.0
    assert chance_level(rows) == pytest.approx(20.0)


def test_audio_width_is_required():
    with pytest.raises(ValueError, match="audio_width"):
        build("crema_tiny", vision_width=VISION, modalities=["rgb", "audio"])


def test_espresso_concat_lays_tokens_out_in_the_references_order():
    """crema.py (espresso-concat): [P1 R1 ... PT RT] then [P1 ... PT] then [F1 ... FT], where Pi is
    "Frame i: ", Ri frame i's RGB tokens and Fi its fused tokens; the fused block's mask follows
    the fused modalities' presence."""
    torch.manual_seed(0)
    b, t, q, d = 2, 3, 2, 4
    fusion = EspressoFusion(["flow"], d)
    tokens = {"rgb": torch.randn(b, t, q, d), "flow": torch.randn(b, t, q, d)}
    present = {"rgb": torch.tensor([True, True]), "flow": torch.tensor([True, False])}
    prefixes = [torch.full((2, d), float(100 + i)) for i in range(t)]  # two "tokens" per prefix
    embeds, mask = assemble(tokens, present, prefixes, fusion=fusion, espresso_mode="concat").build()
    flow = tokens["flow"] * present["flow"].float()[:, None, None, None]
    fused = fusion({"flow": flow})
    expected = torch.cat([torch.cat([prefixes[i].expand(b, -1, -1), tokens["rgb"][:, i]], 1) for i in range(t)]
                         + [torch.cat(prefixes).expand(b, -1, -1), fused.reshape(b, t * q, d)], 1)
    assert torch.equal(embeds, expected)
    head = t * (2 + q) + 2 * t
    assert mask[1, :head].all() and not mask[1, head:].any() and mask[0].all()


def test_point_features_get_no_layernorm_in_the_full_preset():
    """The reference adds the voxel position encoding to the point features as they are (its
    ln_pc is never called): scaling the input points scales what reaches the Q-Former."""
    assert preset("crema_full")["point_layernorm"] is False and preset("crema_tiny")["point_layernorm"] is True
    seen = []
    feats, xyz = torch.randn(1, 1, 30, VISION), torch.randint(0, 256, (1, 1, 30, 3))
    for flag in (False, True):
        model = tiny(point_layernorm=flag).eval()
        hook = model.mmqa.qformer.register_forward_pre_hook(
            lambda mod, args, kw: seen.append((flag, kw["encoder_hidden_states"].clone())), with_kwargs=True)
        with torch.no_grad():
            model.mmqa("pointcloud", feats, xyz=xyz)
        hook.remove()
    (_, raw), (_, normed) = seen
    plain = tiny(point_layernorm=False)  # the unused LayerNorm is neither trained, saved nor counted
    ln = {id(p) for p in plain.mmqa.heads["pointcloud"].ln.parameters()}
    assert not ln & {id(p) for p in plain.mmqa.modality_parameters("pointcloud")}
    assert not any(".heads.pointcloud.ln." in n for n in plain.trainable_state())
    assert dict(table(plain))["MMQA-pointcloud"][2] == 0 and dict(table(plain))["MMQA-rgb"][2] > 0
    encoding = model.mmqa.voxel_pe_scale * model.mmqa.voxel_encoding(xyz)
    assert torch.allclose(raw, (feats + encoding).reshape(1, 30, VISION), atol=1e-6)
    assert not torch.allclose(normed, raw, atol=1e-3)


def test_open_ended_decoding_follows_the_datasets_beams_and_length():
    """trainer.decoding reaches generate: max_new_tokens bounds the answer, length_penalty is passed on."""
    model = tiny().eval()
    batch = fake_batch()
    batch["num_options"] = torch.tensor([0, 0])
    seen = []
    original = model.llm.generate
    model.llm.generate = lambda **kw: seen.append(kw) or original(**kw)
    short = model.predict(batch, decoding={"num_beams": 2, "length_penalty": -1.0, "max_new_tokens": 1,
                                           "min_length": 1})
    assert seen[-1]["length_penalty"] == -1.0 and seen[-1]["num_beams"] == 2 and seen[-1]["max_new_tokens"] == 1
    assert all(len(model.tokenizer(p["text"], add_special_tokens=False).input_ids) <= 1 for p in short)


class Float32Allocations(TorchDispatchMode):
    """Counts the float32 elements every aten op creates while active (factories and results)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and func._schema.name.startswith(("aten::empty", "aten::_to_copy")):
                self.elements += t.numel()
        return out


def test_full_preset_builds_its_frozen_llm_in_bf16_and_keeps_the_trainable_parts_float32():
    model = build("crema_full", device="meta", modalities=["rgb", "audio"])
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}  # CPU: auto is bf16
    assert {p.dtype for p in model.trainable_state().values()} == {torch.float32}
    assert {p.dtype for p in model.mmqa.qformer.parameters()} == {torch.float32}  # 0.1 B: kept exact


def test_a_bf16_llm_is_built_without_a_float32_copy_and_trains_with_float32_grads():
    # a mid-size T5 (~21 M parameters): a float32 copy of it would dwarf everything else built
    t5 = {**preset("crema_tiny")["t5"], "d_model": 512, "d_ff": 2048, "num_layers": 2, "num_decoder_layers": 2,
          "vocab_size": 4096}
    with Float32Allocations() as seen:
        model = tiny(t5=t5, frozen_dtype="bfloat16", choice_scoring="letter", loss="lm", modalities=["rgb", "depth"])
    llm_elements = sum(p.numel() for p in model.llm.parameters())
    others = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("llm."))
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert seen.elements < others + llm_elements // 4, (seen.elements, others, llm_elements)
    model.train()
    loss = model(fake_batch(mods=["rgb", "depth"]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.trainable_state().values() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads[:4])
    preds = model.eval().predict(fake_batch(mods=["rgb", "depth"]))
    assert all(p["choice"] in (0, 1) for p in preds)


def test_frozen_dtype_is_checked():
    with pytest.raises(ValueError, match="model.frozen_dtype"):
        CremaConfig(frozen_dtype="float16")


@pytest.mark.parametrize("scoring", ["letter", "option_text"])
def test_choice_scores_are_what_predict_ranks(scoring):
    model = tiny(choice_scoring=scoring, loss="lm", modalities=["rgb", "depth"]).eval()
    batch = fake_batch(mods=["rgb", "depth"], b=3)
    batch["options"] = [("left", "right"), ("up", "down", "it does not move"), ()]
    batch["num_options"] = torch.tensor([2, 3, 0])
    scores = model.choice_scores(batch)
    assert scores.shape == (3, 3)
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores[2]).all() and torch.isfinite(scores[1]).all()
    mc = {**batch, "features": {m: f[:2] for m, f in batch["features"].items()}, "prompt": batch["prompt"][:2],
          "options": batch["options"][:2], "num_options": batch["num_options"][:2],
          "present": {m: p[:2] for m, p in batch["present"].items()}}  # no beam search for the open-ended row
    assert [p["choice"] for p in model.predict(mc)] == scores[:2].argmax(-1).tolist()
    alone = model.choice_scores(batch, modalities=["rgb"])
    assert not torch.allclose(alone[:2, :2], scores[:2, :2])

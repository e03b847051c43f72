"""The training recipe on a small real store: frame sampling, missing-modality policy, the early
exit rule, checkpoint contents after a sequential epoch, strict loading, resume exactness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from core.features import modality_hashes, modality_views
from core.store import FeatureStore, ShardSpec
from pipeline.store import init_store, write_shard
from trainer import checkpoint
from trainer.data import sample_frames, sample_points
from presets import build
from trainer.evaluate import load_for_eval, run_eval
from trainer.config import TrainerConfig
from trainer.optim import build_optimizer, lavis_lr, should_exit, warmup_cosine
from trainer.metrics import Scoring
from trainer.recipe import Trainer
from scripts.score import rescore

CONF = Path(__file__).resolve().parents[1] / "conf"
MODS = ["rgb", "flow", "audio"]
F, TOKENS, VIT, AUD = 6, 5, 24, 16


def train_overrides(tmp: Path, *overrides: str) -> list[str]:
    """The Hydra overrides of a small run on `write_fixture`'s store (also a scripts/train.py command line)."""
    ann = tmp / "ann"
    return ["dataset=nextqa", f"dataset.root={tmp}", f"dataset.annotations.train={ann}/train.json",
            f"dataset.annotations.val={ann}/val.json", f"dataset.annotations.test={ann}/test.json",
            "dataset.val_from_train=null", f"dataset.modalities=[{','.join(MODS)}]",
            "features=tiny", f"store={tmp}/store", f"run_dir={tmp}/run", "trainer.batch_size=4",
            "trainer.eval_batch_size=8", "trainer.epochs=2", "trainer.warmup_steps=2", "trainer.data.num_workers=0",
            "trainer.log_every=1", "model.num_frames=3", *overrides]


def compose_train(tmp: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=train_overrides(tmp, *overrides))


def write_fixture(tmp: Path, cfg, *, videos: int = 12, lacking: dict | None = None) -> None:
    """A store with real shards (pipeline.store) of random features, and NExT-QA style questions."""
    lacking = lacking or {}
    rng = np.random.default_rng(0)
    ids = [f"vid{i:02d}" for i in range(videos)]
    root = Path(cfg.store)
    h = modality_hashes(cfg.features, ["rgb", "flow", "audio"])
    init_store(root, dataset=cfg.dataset.name, hashes=h, features=modality_views(cfg.features, list(h)))
    payload = []
    for vid in ids:
        feats = {m: rng.standard_normal((F, TOKENS, VIT)).astype(np.float16) for m in ("rgb", "flow")}
        feats["audio"] = rng.standard_normal((2, TOKENS, AUD)).astype(np.float16)
        for m in lacking.get(vid, []):
            del feats[m]
        payload.append({"video_id": vid, "features": feats, "frame_indices": np.arange(F) * 3,
                        "timestamps": np.arange(F) * 0.3, "errors": [{"stage": m, "reason": "test"} for m in lacking.get(vid, [])]})
    write_shard(root, ShardSpec("train-00000", "train", tuple(ids)), payload, hashes=h)
    ann = tmp / "ann"
    ann.mkdir(exist_ok=True)
    splits = {"train": ids[:8], "val": ids[8:10], "test": ids[10:]}
    for split, vids in splits.items():
        rows = [{"video": v, "num_option": 3, "qid": f"{t}_{v}_{k}", "a0": "red", "a1": "green", "a2": "blue",
                 "answer": int(rng.integers(3)), "question": f"What {t}?"}
                for v in vids for k, t in enumerate(("colour", "shape"))]
        (ann / f"{split}.json").write_text(json.dumps(rows))


@pytest.fixture
def setup(tmp_path):
    def make(*overrides, **kw):
        cfg = compose_train(tmp_path, *overrides)
        if not Path(cfg.store).exists():
            write_fixture(tmp_path, cfg, **kw)
        return cfg
    return make


# ---------------------------------------------------------------------- pure functions


def test_frame_sampling_picks_one_frame_per_segment():
    assert sample_frames(8, 4).tolist() == [1, 3, 5, 7]           # midpoints at evaluation
    assert sample_frames(4, 4).tolist() == [0, 1, 2, 3]
    assert sample_frames(2, 4).tolist() == [0, 0, 1, 1]           # fewer stored frames: repeat
    rng = np.random.default_rng(0)
    draws = np.stack([sample_frames(12, 4, rng) for _ in range(200)])
    for t in range(4):
        assert set(draws[:, t]) == {3 * t, 3 * t + 1, 3 * t + 2}  # uniform inside segment t only
    assert sample_points(10, 20).tolist() == list(range(10))
    even = sample_points(10_000, 5000)
    assert len(set(even.tolist())) == 5000 and even[0] == 0 and even[-1] == 9998
    rand = sample_points(10_000, 5000, np.random.default_rng(1))
    assert len(np.unique(rand)) == 5000 and rand.max() > 9000      # uniform over all points, not a head


def test_early_exit_rule_on_synthetic_histories():
    flat = [1.0, 1.0, 1.0, 1.0, 1.0]
    assert not should_exit(flat, 1.3, epoch=5, tau=1.4, start_epoch=5)
    assert should_exit(flat, 1.5, epoch=5, tau=1.4, start_epoch=5)
    assert not should_exit(flat, 9.0, epoch=4, tau=1.4, start_epoch=5)    # before start_epoch: never
    assert not should_exit([], 9.0, epoch=5, tau=1.4, start_epoch=0)      # nothing to compare with
    assert should_exit([2.0, 1.0, 0.5, 0.5], 1.5, epoch=4, tau=1.4, start_epoch=4)  # > 1.4 x mean(1.0)
    assert not should_exit([2.0, 1.0, 0.5, 0.5], 1.4, epoch=4, tau=1.4, start_epoch=4)  # not strictly above
    assert should_exit([1.0], 1.9, epoch=1, tau=1.8, start_epoch=1) and not should_exit([1.0], 1.7, epoch=1, tau=1.8, start_epoch=1)


def test_warmup_then_cosine():
    kw = dict(warmup_steps=10, total_steps=110, lr=1e-3, min_lr=1e-5)
    assert warmup_cosine(0, **kw) == pytest.approx(1e-4)
    assert warmup_cosine(9, **kw) == pytest.approx(1e-3)
    assert warmup_cosine(60, **kw) == pytest.approx((1e-3 + 1e-5) / 2)
    assert warmup_cosine(110, **kw) == pytest.approx(1e-5)


def test_lavis_schedule_warms_up_inside_epoch_0_then_steps_the_cosine_per_epoch():
    kw = dict(steps_per_epoch=100, epochs=5, warmup_steps=10, warmup_start_lr=1e-8, lr=1e-3, min_lr=0.0)
    assert lavis_lr(0, **kw) == pytest.approx(1e-8)
    assert lavis_lr(5, **kw) == pytest.approx(1e-8 + (1e-3 - 1e-8) * 0.5)
    assert lavis_lr(10, **kw) == lavis_lr(99, **kw) == pytest.approx(1e-3)      # epoch 0 holds lr after warm-up
    cos = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(1, 5)]
    for e, want in enumerate(cos, 1):
        assert lavis_lr(100 * e, **kw) == lavis_lr(100 * e + 99, **kw) == pytest.approx(want)  # constant per epoch
    longer = {**kw, "warmup_steps": 250}
    assert lavis_lr(99, **longer) < 1e-3 and lavis_lr(100, **longer) == pytest.approx(cos[0])  # cut at epoch 1
    # the optimizer follows it step by step (the scheduler is stepped once per optimizer step)
    param = torch.nn.Parameter(torch.zeros(2, 2))
    opt, sched = build_optimizer({"w": param}, lr=1e-3, min_lr=0.0, weight_decay=0.05, betas=(0.9, 0.999),
                                 warmup_steps=10, steps_per_epoch=100, epochs=5, schedule="lavis",
                                 warmup_start_lr=1e-8)
    seen = []
    for _ in range(300):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lavis_lr(k, **kw) for k in range(300)])


# The reference's values (run_scripts/crema/finetune/*.sh over lavis/projects/crema/train/*.yaml):
# lr, min lr, warm-up steps, epochs, global batch, max new tokens, and the prompt's opening/normaliser.
REFERENCE = {
    "nextqa": (5e-5, 0.0, 500, 5, 16, 10, "Question: {question} {options} Considering", "none"),
    "music_avqa": (2e-4, 0.0, 1000, 20, 72, 10, "Question: {question} Based on the frames and audio", "blip_question"),
    "sqa3d": (2e-4, 1e-5, 1000, 20, 8, 40, "Question: {question} Based on the frames and 3D Model", "blip_question"),
}


@pytest.mark.parametrize("dataset", list(REFERENCE))
def test_the_full_preset_is_the_references_recipe_per_dataset(dataset):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        tc = TrainerConfig.from_cfg(compose(config_name="train", overrides=[f"dataset={dataset}", "features=full"]).trainer)
    lr, min_lr, warmup, epochs, batch, new_tokens, opening, normalize = REFERENCE[dataset]
    assert (tc.lr, tc.min_lr, tc.warmup_steps, tc.epochs, tc.global_batch) == (lr, min_lr, warmup, epochs, batch)
    assert tc.schedule == "lavis" and tc.warmup_start_lr == 1e-8 and not tc.early_exit.enabled
    assert tc.batch_size * tc.grad_accum(1) == tc.global_batch
    assert (tc.decoding.num_beams, tc.decoding.length_penalty, tc.decoding.max_new_tokens) == (5, -1.0, new_tokens)
    template = tc.prompt.multiple_choice if dataset == "nextqa" else tc.prompt.open_ended
    assert template.startswith(opening) and tc.prompt.normalize == normalize
    if dataset == "sqa3d":
        assert tc.prompt.situation == "{situation}. {prompt}"


def test_music_avqa_reaches_its_global_batch_by_accumulation_and_early_exit_is_a_preset():
    """What `python scripts/train.py dataset=music_avqa features=full --cfg job` prints (the same
    composition): 72 = 24 per device x 3 accumulation on one device, x 1 on the reference's 3 GPUs;
    2 GPUs cannot reach 72 with 24 each, and say so."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose(config_name="train", overrides=["dataset=music_avqa", "features=full"]).trainer
        trainer = OmegaConf.to_container(node, resolve=True)
    assert (trainer["global_batch"], trainer["batch_size"], trainer["lr"], trainer["min_lr"]) == (72, 24, 2e-4, 0.0)
    assert trainer["decoding"]["length_penalty"] == -1.0 and trainer["early_exit"]["enabled"] is False
    tc = TrainerConfig.from_cfg(trainer)
    assert (tc.grad_accum(1), tc.grad_accum(3)) == (3, 1)
    with pytest.raises(ValueError, match=r"global_batch=72 is not a multiple of trainer.batch_size=24 x 2 ranks"):
        tc.grad_accum(2)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for dataset, tau in (("music_avqa", 1.4), ("sqa3d", 1.8)):
            ee = compose(config_name="train", overrides=[f"dataset={dataset}", "features=full",
                                                         f"+trainer/early_exit={dataset}"]).trainer.early_exit
            assert ee.enabled and ee.tau == tau
    with pytest.raises(ValueError, match="global_batch=72 is not a multiple of trainer.batch_size=10"):
        TrainerConfig.from_cfg({**trainer, "batch_size": 10})


# ---------------------------------------------------------------------- data


def test_dataset_aligns_frame_modalities_and_applies_the_missing_policy(setup):
    cfg = setup("trainer.data.missing=drop", lacking={"vid01": ["audio"], "vid02": ["flow"]})
    trainer = Trainer(cfg)
    train = trainer.data["train"]
    assert train.summary()["missing"] == {"audio": 2, "flow": 2} and train.dropped == 4
    assert {r.video_id for r in train.records}.isdisjoint({"vid01", "vid02"})
    # aligned: flow's sampled frames are the same stored frames as rgb's
    store = FeatureStore(cfg.store)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        s = train[0]
        rgb_all = store.get(s["video_id"], "rgb")
        flow_all = store.get(s["video_id"], "flow")
        idx = [int(np.where((rgb_all == f).all(axis=(1, 2)))[0][0]) for f in s["features"]["rgb"]]
        assert np.array_equal(s["features"]["flow"], flow_all[idx])
        assert idx[0] in (0, 1) and idx[1] in (2, 3) and idx[2] in (4, 5)
    assert np.array_equal(train[3]["features"]["rgb"], train[3]["features"]["rgb"])  # deterministic per epoch

    cfg0 = compose_train(Path(cfg.store).parent, "trainer.data.missing=zero", "run_dir=" + str(Path(cfg.run_dir) / "z"))
    zero = Trainer(cfg0).data["train"]
    assert zero.dropped == 0 and zero.summary()["missing"] == {"audio": 2, "flow": 2}
    s = next(zero[i] for i, r in enumerate(zero.records) if r.video_id == "vid01")
    assert not s["present"]["audio"] and s["present"]["rgb"] and not s["features"]["audio"].any()
    assert (Path(cfg0.run_dir) / "metrics.jsonl").read_text().count('"policy": "zero"') == 3


# ---------------------------------------------------------------------- training


def _step_losses(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "step"}


def test_sequential_epoch_checkpoint_holds_every_modality(setup):
    cfg = setup("trainer.epochs=1")
    trainer = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.trainable_state().items()}
    trainer.train()
    last = checkpoint.resolve(Path(cfg.run_dir) / "checkpoints", "last")
    saved = load_file(str(last / "model.safetensors"))
    own = trainer.model.trainable_state()
    assert set(saved) == set(own)
    for m in MODS:
        names = [k for k in saved if f".{m}." in k or f"heads.{m}." in k]
        assert any("lora_A" in k for k in names) and any("query_tokens" in k for k in names), m
        # every modality trained (moved) and was saved with its trained values
        assert any(not torch.equal(saved[k], before[k]) for k in names), m
        assert all(torch.equal(saved[k], own[k].detach().cpu()) for k in names)
    assert any(k.startswith("fusion.") for k in saved)
    # one loss per modality pass per step
    assert set(_step_losses(Path(cfg.run_dir))[1]) == set(MODS)
    opt = load_file(str(last / "optimizer.safetensors"))
    assert all(any(k.startswith(f"{n}::") for k in opt) for n in saved)
    best = checkpoint.resolve(Path(cfg.run_dir) / "checkpoints", "best")
    model, _, state = load_for_eval(best, torch.device("cpu"))
    assert state["model_config"]["modalities"] == MODS
    assert (Path(cfg.run_dir) / "curves.png").stat().st_size > 10_000


def test_strict_loading_refuses_unknown_and_missing_keys(setup):
    cfg = setup("trainer.epochs=1", "trainer.max_steps=1")
    trainer = Trainer(cfg)
    trainer.train()
    last = checkpoint.resolve(Path(cfg.run_dir) / "checkpoints", "last")
    fewer = build("crema_tiny", vision_width=VIT, audio_width=AUD, modalities=["rgb", "flow"], num_frames=3)
    with pytest.raises(checkpoint.CheckpointError, match=r"unknown keys .*audio"):
        checkpoint.load_model(fewer, last)
    more = build("crema_tiny", vision_width=VIT, audio_width=AUD, modalities=MODS + ["depth"], num_frames=3)
    with pytest.raises(checkpoint.CheckpointError, match=r"missing keys .*depth"):
        checkpoint.load_model(more, last)


def test_resume_continues_exactly(setup, tmp_path):
    n, k = 5, 2  # 2 epochs of 4 steps: the resume point is mid-epoch, the end crosses an epoch
    straight = setup(f"trainer.max_steps={n}")
    Trainer(straight).train()
    ref = _step_losses(Path(straight.run_dir))

    resumed_dir = f"run_dir={tmp_path}/resumed"
    Trainer(compose_train(tmp_path, f"trainer.max_steps={k}", resumed_dir)).train()
    part = Trainer(compose_train(tmp_path, f"trainer.max_steps={n}", resumed_dir))
    assert part.state.step == k and part.state.samples == k * part.tc.global_batch
    part.train()
    got = _step_losses(Path(tmp_path / "resumed"))
    assert sorted(got) == sorted(ref) == list(range(1, n + 1))
    for step in ref:
        assert got[step] == ref[step], step  # bit-identical losses, every modality pass
    a = Trainer(compose_train(tmp_path, f"trainer.max_steps={n}", resumed_dir)).model.trainable_state()
    b = load_file(str(checkpoint.resolve(Path(straight.run_dir) / "checkpoints", "last") / "model.safetensors"))
    assert all(torch.equal(a[key].detach(), b[key]) for key in b)


def test_resume_refuses_a_run_with_other_settings(setup):
    cfg = setup("trainer.max_steps=1")
    Trainer(cfg).train()
    with pytest.raises(checkpoint.CheckpointError, match="trainer"):
        Trainer(compose_train(Path(cfg.store).parent, "trainer.max_steps=2", "trainer.lr=0.5"))


def test_answer_tokens_are_the_train_answers(setup):
    cfg = setup("model.answer_tokens=true", "model.t5.vocab_size=400", "trainer.epochs=1", "trainer.max_steps=1")
    trainer = Trainer(cfg)
    assert trainer.model.config.phrase_tokens == ["blue", "green", "red"]  # the train split's answers, sorted
    tok = trainer.model.tokenizer
    assert tok("red", add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids("red")]


def test_eval_uses_the_prompt_the_checkpoint_was_trained_with(setup, tmp_path):
    trained = "Trained {question}"
    cfg = setup("trainer.epochs=1", "trainer.max_steps=2", f"trainer.prompt.multiple_choice='{trained}'")
    Trainer(cfg).train()
    ckpt = checkpoint.resolve(Path(cfg.run_dir) / "checkpoints", "last")
    _, prompt, _ = load_for_eval(ckpt, torch.device("cpu"))
    assert prompt.multiple_choice == trained
    # the eval app composes another trainer preset (another prompt): the checkpoint's still wins
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ecfg = compose(config_name="eval", overrides=[
            "dataset=nextqa", f"dataset.root={tmp_path}", *[f"dataset.annotations.{s}={tmp_path}/ann/{s}.json"
                                                             for s in ("train", "val", "test")],
            "dataset.val_from_train=null", f"dataset.modalities=[{','.join(MODS)}]", "features=tiny",
            "trainer=full", f"store={cfg.store}", f"run_dir={cfg.run_dir}", f"ckpt={ckpt}", "eval.split=val",
            "trainer.data.num_workers=0"])
    assert ecfg.trainer.prompt.multiple_choice != trained
    results = run_eval(ecfg)
    saved = json.loads((Path(cfg.run_dir) / "eval" / "val.json").read_text())
    assert saved["prompt"]["multiple_choice"] == trained and results[0]["summary"]["n"] == 4
    # make eval writes the per-question predictions that make score re-scores without the model
    lines = (Path(cfg.run_dir) / "eval" / "val.predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and all({"qid", "qtype", "prediction", "answer", "choice", "answer_idx"} <= set(r) for r in rows)
    rescored = rescore(rows, Scoring.from_dataset(ecfg.dataset))[results[0]["label"]]
    assert rescored["strict"] == results[0]["summary"]["strict"] and "by_group" in rescored

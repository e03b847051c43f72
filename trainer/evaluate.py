"""Evaluation: scoring a model on a split, the report, and the eval recipe of a saved checkpoint.

`run_eval(cfg)` is what scripts/eval.py calls: it rebuilds the model a checkpoint was trained
with (model config AND prompt come from the checkpoint, never from the current config), then
evaluates any subset of its modalities, with LoRA switched off per modality if asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from core.datasets import load_dataset
from core.util import pick_device, to_plain
from model.config import CremaConfig
from model.crema import Crema, crema
from trainer import checkpoint, distributed
from trainer.config import DecodingConfig, PromptConfig, TrainerConfig
from trainer.data import eval_loader, open_store, split_datasets, to_device
from trainer.metrics import Scoring, chance_level, qtype_table, score, summarize

log = logging.getLogger(__name__)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on GPU only; CPU runs in float32."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: Crema, loader, device: torch.device, *, modalities=None, lora_off=(), bf16=True,
             desc="eval", scoring: Scoring | None = None,
             decoding: DecodingConfig | None = None) -> tuple[dict, list[dict]]:
    """(summary with strict and reference accuracy overall, per question type and group;
    per-question rows). `decoding` (the dataset's beam search) overrides the model's defaults."""
    rows = predict_rows(model, loader, device, modalities=modalities, lora_off=lora_off, bf16=bf16, desc=desc,
                        scoring=scoring, decoding=decoding)
    return summarize_rows(rows, scoring), rows


@torch.no_grad()
def evaluate_split(model: Crema, ds, device: torch.device, *, batch_size: int, num_workers: int, bf16=True,
                   desc="eval", scoring: Scoring | None = None,
                   decoding: DecodingConfig | None = None) -> tuple[dict, list[dict]]:
    """`evaluate` of a whole split by every data-parallel rank at once: each rank predicts its
    share (data.eval_loader), the rows are gathered back into the split's order, and every rank
    scores every question exactly once (the same summary on every rank)."""
    world = distributed.world_size()
    loader = eval_loader(ds, batch_size, num_workers, rank=distributed.rank(), world=world)
    mine = predict_rows(model, loader, device, bf16=bf16, desc=desc, scoring=scoring, decoding=decoding)
    parts = distributed.all_gather_objects(mine)
    # rank r read questions r, r + world, ...: question i is the (i // world)-th row of rank i % world
    rows = [parts[i % world][i // world] for i in range(sum(len(p) for p in parts))]
    return summarize_rows(rows, scoring), rows


def predict_rows(model: Crema, loader, device: torch.device, *, modalities=None, lora_off=(), bf16=True,
                 desc="eval", scoring: Scoring | None = None, decoding: DecodingConfig | None = None) -> list[dict]:
    """One scored row per question of `loader`, in its order."""
    was_training = model.training
    model.eval()
    rows = []
    gen = dataclasses.asdict(decoding) if decoding is not None else None
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not distributed.is_main()):
        with autocast(device, bf16):
            preds = model.predict(to_device(batch, device), modalities=modalities, lora_off=lora_off, decoding=gen)
        for i, p in enumerate(preds):
            answer_idx = int(batch["answer_idx"][i])
            s = score(p, batch["answer"][i], answer_idx, scoring)
            rows.append({"qid": batch["qid"][i], "qtype": batch["qtype"][i], "prediction": p["text"],
                         "choice": p["choice"], "answer": batch["answer"][i], "answer_idx": answer_idx,
                         "num_options": len(batch["options"][i]), **s})
    model.train(was_training)
    return rows


def summarize_rows(rows: list[dict], scoring: Scoring | None) -> dict:
    summary = summarize(rows, scoring)
    summary["chance"] = chance_level(rows)
    return summary


PREDICTION_KEYS = ("qid", "qtype", "prediction", "answer", "choice", "answer_idx", "num_options")


def write_predictions(path: Path, results: list[dict]) -> Path:
    """One JSON line per question and modality subset (what `make score` re-scores)."""
    with open(path, "w") as f:
        for r in results:
            for row in r["rows"]:
                f.write(json.dumps({"modalities": r["label"], **{k: row[k] for k in PREDICTION_KEYS}}) + "\n")
    return path


def write_report(path: Path, results: dict, ckpt: Path, modalities: list[str]) -> str:
    """report.md: per-question-type tables (strict EM and the reference's lenient score)."""
    parts = [f"# Results of {ckpt}", "", f"Modalities: {', '.join(modalities)}", ""]
    for split, summary in results.items():
        chance = f" (chance {summary['chance']:.1f}%)" if summary.get("chance") is not None else ""
        parts += [qtype_table(summary, f"{split}{chance}"), ""]
    text = "\n".join(parts)
    Path(path).write_text(text)
    print(text)
    return text


def load_for_eval(directory: Path, device: torch.device) -> tuple[Crema, PromptConfig, dict]:
    """(the model a checkpoint was trained with, its weights loaded strictly; the prompt it was
    trained with; the checkpoint's state)."""
    state = checkpoint.verify(directory)
    if "prompt" not in state:
        raise checkpoint.CheckpointError(f"{directory}/{checkpoint.STATE} has no prompt config; it was written "
                                         f"by an older version of the trainer: train again to evaluate it")
    model = crema(CremaConfig.from_dict(state["model_config"]))
    checkpoint.load_model(model, directory)
    return model.to(device).eval(), PromptConfig(**state["prompt"]), state


def check_features(directory: Path, state: dict, hashes: dict, modalities: list[str], *, allow_other: bool) -> None:
    """Refuse features whose per-modality hash differs from those the checkpoint was trained on,
    for the modalities evaluated (RunMismatch naming them), unless `allow_other` (then a warning)."""
    if "imported_from" in state:  # the reference's own extraction: no hash of ours to compare with
        log.info("%s was converted from %s: its features config is the reference's, not compared with the store's",
                 directory, state["imported_from"].get("file"))
        return
    trained = state.get("feature_hashes", {})
    differ = [f"{m} ({trained.get(m, '<none>')} trained, {hashes.get(m)} here)"
              for m in modalities if trained.get(m) != hashes.get(m)]
    if not differ:
        return
    what = f"{directory} was trained on other features than the store's: {', '.join(differ)}"
    if not allow_other:
        raise checkpoint.RunMismatch(f"{what}. Evaluate on the store made with the checkpoint's features config, or "
                                     f"pass eval.allow_other_features=true to compare across features deliberately.")
    log.warning("%s; evaluating anyway (eval.allow_other_features=true)", what)


def _subsets(chosen: dict, trained: list[str]) -> list[list[str]]:
    combos = chosen["combinations"] or [chosen["modalities"]]
    return [list(trained) if c == "all" else ([c] if isinstance(c, str) else list(c)) for c in combos]


def run_eval(cfg: DictConfig) -> list[dict]:
    """Evaluate `cfg.ckpt` on `cfg.eval.split` for every modality subset asked (conf/eval.yaml);
    prints a table per subset and a comparison, writes `<eval.output>/<split>.json`."""
    tc = TrainerConfig.from_cfg(cfg.trainer)
    device = pick_device(cfg.device)
    directory = checkpoint.resolve(cfg.ckpt, "best")
    model, prompt, state = load_for_eval(directory, device)
    chosen = to_plain(cfg.eval)
    read = sorted({m for mods in _subsets(chosen, model.modalities) for m in mods})
    store = open_store(cfg, read)
    check_features(directory, state, store.hashes, read, allow_other=chosen["allow_other_features"])
    split = chosen["split"]
    ds = split_datasets(load_dataset(cfg.dataset), store, model.modalities, model.config.num_frames,
                        data=tc.data, prompt=prompt, splits=(split,))[split]
    loader = eval_loader(ds, tc.eval_batch_size, tc.data.num_workers)
    scoring = Scoring.from_dataset(cfg.dataset)
    results = []
    for mods in _subsets(chosen, model.modalities):
        off = [m for m in chosen["lora_off"] if m in mods]
        label = "+".join(mods) + (f" (LoRA off: {','.join(off)})" if off else "")
        summary, rows = evaluate(model, loader, device, modalities=mods, lora_off=off, bf16=tc.bf16, desc=label,
                                 scoring=scoring, decoding=tc.decoding)
        results.append({"modalities": mods, "lora_off": off, "label": label, "summary": summary, "rows": rows})
        print(qtype_table(summary, f"{split}: {label}") + "\n")
    chance = results[0]["summary"]["chance"]
    print(f"| {split} ({len(ds)} questions{f', chance {chance:.1f}%' if chance is not None else ''}) "
          f"| strict EM % | reference ({scoring.reference}) % |\n|---|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['summary']['strict']:.1f} | {r['summary']['lenient']:.1f} |")
    out = Path(chosen["output"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.json"
    path.write_text(json.dumps({"checkpoint": str(directory), "split": split, "prompt": dataclasses.asdict(prompt),
                                "data": ds.summary(), "results": results}, indent=1))
    print(f"predictions and summaries: {path}")
    print(f"per-question predictions (make score PRED=...): {write_predictions(out / f'{split}.predictions.jsonl', results)}")
    return results

# make eval DATASET=demo ARGS="eval.combinations=[[rgb],[rgb,flow],[rgb,audio],all]"
#   == python scripts/eval.py dataset=demo eval.combinations=[[rgb],[rgb,flow],[rgb,audio],all]
"""Evaluate a trained CREMA checkpoint on cached features, with any subset of its modalities
(zero-shot composition) and LoRA switched off per modality (Hydra app over conf/eval.yaml)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from model import checkpoint
from model.metrics import qtype_table
from model.pretrained import PretrainedWeightsError
from model.recipe import eval_loader, evaluate, load_for_eval, open_store, pick_device, split_datasets
from pipeline.store import StoreError

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _subsets(cfg: DictConfig, trained: list[str]) -> list[list[str]]:
    chosen = OmegaConf.to_container(cfg.eval, resolve=True)
    combos = chosen["combinations"] or [chosen["modalities"]]
    return [list(trained) if c == "all" else ([c] if isinstance(c, str) else list(c)) for c in combos]


def run(cfg: DictConfig) -> list[dict]:
    device = pick_device(cfg.device)
    directory = checkpoint.resolve(cfg.ckpt, "best")
    model, state = load_for_eval(directory, device)
    store = open_store(cfg)
    if state.get("store_config_hash") not in (None, store.config_hash):
        print(f"warning: {directory} was trained on features {state['store_config_hash']}, "
              f"evaluating on {store.config_hash}", file=sys.stderr)
    split = cfg.eval.split
    ds = split_datasets(cfg, store, model.modalities, model.config.num_frames, splits=(split,))[split]
    loader = eval_loader(ds, cfg.trainer.eval_batch_size, cfg.trainer.data.num_workers)
    lora_off = list(cfg.eval.lora_off)
    results = []
    for mods in _subsets(cfg, model.modalities):
        off = [m for m in lora_off if m in mods]
        label = "+".join(mods) + (f" (LoRA off: {','.join(off)})" if off else "")
        summary, rows = evaluate(model, loader, device, modalities=mods, lora_off=off, bf16=cfg.trainer.bf16,
                                 desc=label)
        results.append({"modalities": mods, "lora_off": off, "label": label, "summary": summary, "rows": rows})
        print(qtype_table(summary, f"{split}: {label}") + "\n")
    chance = results[0]["summary"]["chance"]
    print(f"| {split} ({len(ds)} questions{f', chance {chance:.1f}%' if chance is not None else ''}) "
          f"| strict EM % | lenient (reference) % |\n|---|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['summary']['strict']:.1f} | {r['summary']['lenient']:.1f} |")
    out = Path(cfg.eval.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.json"
    path.write_text(json.dumps({"checkpoint": str(directory), "split": split, "data": ds.summary(),
                                "results": results}, indent=1))
    print(f"predictions and summaries: {path}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        run(cfg)
    except (StoreError, PretrainedWeightsError, checkpoint.CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

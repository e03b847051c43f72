# make params ARGS="model=crema_full"  == python scripts/params.py model=crema_full
# (also: python scripts/params.py model=crema_tiny dataset=demo   -- takes widths from the demo store)
"""Print the trainable parameters of every module for a model preset, built on the meta device
(shapes only: no weights are loaded or allocated). The full preset shows 3,961,600 per MMQA."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

CONF = Path(__file__).resolve().parent.parent / "conf"
COLUMNS = ("LoRA", "query tokens", "LayerNorm", "projection", "audio input", "total")


def _n(params) -> int:
    return sum(p.numel() for p in params)


def table(model) -> list[tuple[str, list[int]]]:
    """Rows (module, counts per COLUMNS): one per modality's MMQA, then the fusion."""
    rows = []
    for m in model.modalities:
        head = model.mmqa.heads[m]
        parts = [_n(model.mmqa.lora_parameters(m)), head.query_tokens.numel(),
                 _n(head.ln.parameters()) if model.mmqa.uses_ln(m) else 0,
                 _n(head.proj.parameters()), _n(head.input_proj.parameters()) if head.input_proj is not None else 0]
        rows.append((f"MMQA-{m}", parts + [sum(parts)]))
    if model.fusion is not None:
        n = _n(model.fusion.parameters())
        rows.append(("fusion (espresso)", [0, 0, 0, 0, 0, n]))
    return rows


def main(argv: list[str]) -> None:
    overrides = ["model=crema_full", *argv]  # the full preset unless the command line says otherwise
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    widths = {}
    if cfg.model.get("vision_width") is None:  # the tiny preset sizes itself from the store
        from trainer.data import feature_widths, open_store
        widths = feature_widths(open_store(cfg))
    model = instantiate(cfg.model, device="meta", **widths, _convert_="all")
    print(f"{cfg.model._target_.rsplit('.', 1)[-1]} on the meta device (no weights), modalities "
          f"{', '.join(model.modalities)}, fusion {model.config.fusion}")
    print(f"| module | {' | '.join(COLUMNS)} |\n|---|{'---:|' * len(COLUMNS)}")
    rows = table(model)
    for name, counts in rows:
        print(f"| {name} | " + " | ".join(f"{c:,}" if c else "-" for c in counts) + " |")
    trainable = sum(c[-1] for _, c in rows)
    qformer = sum(p.numel() for n, p in model.mmqa.qformer.named_parameters() if "lora_" not in n)
    llm = _n(model.llm.parameters())
    print(f"| **trainable, all** | | | | | | **{trainable:,}** |")
    print(f"\nfrozen: Q-Former {qformer:,}, T5 {llm:,}")
    # The alternative CREMA compares with: fine-tuning BLIP-2's whole query path per modality.
    head = model.mmqa.heads[model.modalities[0]]
    full_path = qformer + head.query_tokens.numel() + _n(head.proj.parameters()) + _n(head.ln.parameters())
    per_mmqa = rows[0][1][-1]
    print(f"one MMQA-{model.modalities[0]}: {per_mmqa:,} vs fine-tuning the BLIP-2 query path "
          f"(Q-Former + query tokens + projection + LN): {full_path:,} -> {100 * (1 - per_mmqa / full_path):.1f}% fewer")


if __name__ == "__main__":
    main(sys.argv[1:])

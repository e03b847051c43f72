# make bench   (runs: python scripts/bench_train.py [dataset=demo] [--steps 6])
# Needs the demo store: make extract DATASET=demo. Writes bench/results/train.json.
"""Trainer benchmarks on the real demo store, same model, same batches:

1. step time when training from cached features (this project) against the same step with the
   frozen image encoder computing every image modality's tokens inside it (the reference's
   way; decoding and preprocessing are NOT counted, which only flatters the reference);
2. the store reader's samples/s (DataLoader over the feature store, 0 and 2 workers) against
   the trainer's consumption (samples/s of a modality-sequential optimizer step).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from core.modalities import FRAME

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (allocations, lazy inits)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def reader_rate(dataset, batch_size: int, workers: int, batches: int) -> float:
    from trainer.data import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    n, t0 = 0, None
    for i, batch in enumerate(loader):
        if i == 1:  # the first batch includes worker start-up: not counted
            n, t0 = 0, time.perf_counter()
        n += len(batch["qid"])
        if i >= batches:
            break
    return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    parser.add_argument("--out", default=str(ROOT / "bench/results/train.json"))
    args, overrides = parser.parse_known_args(argv)

    from extractors.encoder import build_random
    from trainer.data import to_device
    from trainer.recipe import Trainer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"run_dir={ROOT}/bench/tmp/train", "trainer.resume=never", "trainer.data.num_workers=0",
            "trainer.max_steps=0", *overrides])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    trainer = Trainer(cfg)
    trainer.model.train()
    image_mods = [m for m in trainer.modalities if m in FRAME]
    dataset = trainer.data["train"]
    bs = trainer.tc.batch_size
    batch = next(iter(trainer.train_loader))
    batch = to_device(batch, trainer.device)

    cached = timed(lambda: trainer.optimizer_step([batch]), args.steps)

    # The reference's way: the frozen encoder (the extractor's own class and config) runs inside
    # every step on each image modality's frames, then the identical optimizer step.
    vit, _ = build_random(cfg.features.extractors.encoder)
    vit = vit.to(trainer.device).eval().requires_grad_(False)
    size = vit.config.image_size
    pixels = {m: torch.randn(bs * trainer.model.config.num_frames, 3, size, size, device=trainer.device)
              for m in image_mods}

    def encoder_step():
        with torch.no_grad():
            for m in image_mods:
                tokens = vit(pixel_values=pixels[m]).last_hidden_state
                batch["features"][m] = tokens.reshape(*batch["features"][m].shape).to(batch["features"][m].dtype)
        trainer.optimizer_step([batch])

    with_encoder = timed(encoder_step, args.steps)
    readers = {f"workers_{w}": reader_rate(dataset, bs, w, batches=12) for w in (0, 2)}
    step_s = statistics.median(cached)
    result = {
        "what": "CREMA trainer step: cached features vs frozen image encoder inside the step; store reader vs consumption",
        "dataset": cfg.dataset.name, "store": str(cfg.store), "device": str(trainer.device),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "model": "crema_tiny" if not trainer.model.config.pretrained else "crema_full",
        "modalities": trainer.modalities, "image_modalities_encoded_in_step": image_mods,
        "batch_size": bs, "num_frames": trainer.model.config.num_frames,
        "encoder": {"class": type(vit).__name__, "image_size": size, "hidden_size": vit.config.hidden_size,
                    "layers": vit.config.num_hidden_layers},
        "step_seconds": {"cached_features": step_s, "encoder_in_step": statistics.median(with_encoder),
                         "cached_all": cached, "encoder_all": with_encoder},
        "speedup_cached_vs_encoder": statistics.median(with_encoder) / step_s,
        "reader_samples_per_s": readers,
        "trainer_samples_per_s": bs / step_s,
        "reader_headroom": {k: v / (bs / step_s) for k, v in readers.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"step (batch {bs}, {len(trainer.modalities)} modality passes): cached {step_s * 1000:.0f} ms, "
          f"encoder in step {statistics.median(with_encoder) * 1000:.0f} ms "
          f"(x{result['speedup_cached_vs_encoder']:.2f}); reader {readers['workers_0']:.0f} samples/s (0 workers), "
          f"{readers['workers_2']:.0f} (2 workers) vs trainer {bs / step_s:.1f} samples/s -> {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

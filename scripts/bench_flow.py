# make bench   (runs: python scripts/bench_flow.py [--pairs 8] [--full-pairs 2])
"""Flow stage cost on this machine -> bench/results/flow.json (summarised in docs/benchmarks.md).

UniMatch (the paper's flow model, ptlflow) against RAFT (torchvision), both through the flow
stage's own path (resize / pad / network / rescale) with random-init weights on the CPU:
1. the demo's stored resolution with the small variants (tiny UniMatch preset, RAFT-small);
2. the full preset's stored resolution (640 px on the longer side) with the full-size models
   (UniMatch gmflow-scale2-regrefine6, RAFT-large), for a handful of frame pairs.
Random weights cost the same as trained ones: the numbers are the price of the architecture.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def stage(preset: str, **overrides):
    """A flow stage from conf/extractor/<preset>.yaml (with its defaults), random-init on the CPU."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from extractors.flow import FlowExtractor

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=f"extractor/{preset}").extractor
    OmegaConf.set_struct(cfg, False)
    cfg.random_init = cfg.get("random_init") or True
    cfg.seed, cfg.num_frames_stored = 0, 1
    cfg.resources.device = "cpu"
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return FlowExtractor(cfg)


def pairs_per_second(flow, height: int, width: int, pairs: int) -> dict:
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 255, (pairs, height, width, 3), dtype=np.uint8) for _ in range(2))
    flow.predict(first[:1], second[:1])  # warm-up: allocations, lazy inits
    t0 = time.perf_counter()
    out = flow.predict(first, second)
    seconds = time.perf_counter() - t0
    assert out.shape == (pairs, 2, height, width)
    params = sum(p.numel() for p in flow.backend.model.parameters())
    return {"pairs": pairs, "seconds": round(seconds, 2), "pairs_per_s": round(pairs / seconds, 3),
            "params": params}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8, help="frame pairs at the demo's size")
    ap.add_argument("--full-pairs", type=int, default=2, help="frame pairs at the full preset's size")
    ap.add_argument("--out", default=str(ROOT / "bench/results/flow.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    demo_hw, full_hw = (120, 160), (360, 640)  # the demo's clips; a 16:9 video at max_side 640
    runs = {
        "demo size, small models": {
            "unimatch (flow_unimatch_tiny)": pairs_per_second(stage("flow_unimatch_tiny"), *demo_hw, args.pairs),
            "raft_small": pairs_per_second(stage("flow_raft", **{"raft.arch": "raft_small", "raft.weights": "C_T_V2"}),
                                           *demo_hw, args.pairs),
        },
        "full preset size, full-size models": {
            "unimatch gmflow-scale2-regrefine6": pairs_per_second(stage("flow_unimatch"), *full_hw, args.full_pairs),
            "raft_large": pairs_per_second(stage("flow_raft"), *full_hw, args.full_pairs),
        },
    }
    result = {"what": "flow stage pairs/s on the CPU, random-init weights, through FlowExtractor.predict",
              "sizes": {"demo size, small models": list(demo_hw), "full preset size, full-size models": list(full_hw)},
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for group, models in runs.items():
        h, w = result["sizes"][group]
        line = ", ".join(f"{name} {r['pairs_per_s']:.2f} pairs/s ({r['params'] / 1e6:.1f}M params)"
                         for name, r in models.items())
        print(f"flow, {group} ({w}x{h}): {line}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

# python scripts/make_demo.py --root data/demo --seed 0 --num-videos 120
"""Generate only the synthetic demo dataset (videos + NExT-QA-format annotations).

`make extract DATASET=demo` does this on its own; this script is for people who want the data
without the pipeline. Re-running with the same arguments does nothing; other arguments regenerate.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.demo import generate_demo


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(os.environ.get("CREMA_DATA", "data")) / "demo"
    parser.add_argument("--root", type=Path, default=default_root, help=f"output folder (default {default_root})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-videos", type=int, default=120)
    args = parser.parse_args(argv)
    return generate_demo(args.root, seed=args.seed, num_videos=args.num_videos)


if __name__ == "__main__":
    main()

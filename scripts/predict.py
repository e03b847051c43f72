# make predict VIDEO=data/demo/videos/demo_0003.mp4 QUESTION="which way does it move?" OPTIONS="left|right|up|down|it does not move"
#   == python scripts/predict.py predict.video=... predict.question="..." 'predict.options=["left","right"]' [ckpt=...]
"""Ask a trained checkpoint a question about one video: extraction in this process, the answer,
option scores, each modality alone and left out; the last line is the result as JSON."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from app.predict import Asker, PredictError, describe
from core.hub import ModelUnavailableError

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    p = cfg.predict
    try:
        if not p.video or not p.question:
            raise PredictError("give a video and a question: make predict VIDEO=<file> QUESTION=\"...\" "
                               "[OPTIONS=\"a|b|c\"] [CKPT=<checkpoint>]")
        asker = Asker.load(cfg.ckpt, cfg.features, device=cfg.device, max_points=cfg.trainer.data.max_points)
        result = asker.ask(asker.extract(p.video), str(p.question), list(p.options or []))
    except (PredictError, ModelUnavailableError, ValueError) as exc:  # user-fixable
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(describe(result)))
    line = json.dumps(result)
    if p.json:
        Path(p.json).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

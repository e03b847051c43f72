# make app [ARGS="app.port=8080 app.host=0.0.0.0"]
#   == python scripts/webapp.py [app.port=8080]
"""Serve the web app (Ask, Explore a store) on app.host:app.port; see conf/app.yaml."""

from __future__ import annotations

import warnings

import hydra
from omegaconf import DictConfig

from app.web import serve

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(version_base="1.3", config_path="../conf", config_name="app")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()

# make export FORMAT=h5 DATASET=demo ARGS="export.layout=stacked"   (== python scripts/export.py dataset=demo export.layout=stacked)
"""Export a feature store to HDF5, one file per store key (Hydra app over conf/export.yaml).
Exit 2 with one `error: ...` line when the store, a modality or an option is not usable."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from core.store import StoreError
from core.util import to_plain
from pipeline.h5io import H5Error, export_store


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    ex = cfg.export
    try:
        if cfg.format != "h5":
            raise H5Error(f"format={cfg.format!r}: only h5 is supported")
        done = export_store(cfg.store, modality=to_plain(ex.modality), layout=ex.layout, out_dir=ex.dir,
                            compression=ex.compression, level=ex.level)
    except (StoreError, H5Error, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(2)
    for r in done:
        print(f"wrote {r['path']}: {r['modality']} {r['layout']}, {r['videos']} videos {r['dtype']} "
              f"{tuple(r['shape'])}" + (f", {r['skipped']} skipped (lacking it)" if r["skipped"] else ""))


if __name__ == "__main__":
    main()

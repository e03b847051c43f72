# make import FORMAT=h5 OUT=/tmp/imp ARGS="import.path=rgb.h5"   (== python scripts/import_features.py out=/tmp/imp import.path=rgb.h5)
"""Import HDF5 feature files (either layout, one store key each) into a new store (Hydra app over
conf/import.yaml). Exit 2 with one `error: ...` line when a file or the target is not usable."""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from core.util import to_plain
from pipeline.h5io import H5Error, import_h5


@hydra.main(version_base="1.3", config_path="../conf", config_name="import")
def main(cfg: DictConfig) -> None:
    im = cfg["import"]  # `import` is a Python keyword: no attribute access
    try:
        if cfg.format != "h5":
            raise H5Error(f"format={cfg.format!r}: only h5 is supported")
        if OmegaConf.is_missing(im, "path"):
            raise H5Error("say which file(s) to import: import.path=<file.h5> (or a list [a.h5,b.h5])")
        out = import_h5(to_plain(im.path), root=cfg.store, dataset=cfg.dataset.name, modalities=to_plain(im.modality),
                        split=im.split, shard_size=im.shard_size, config_hash=im.config_hash, features=cfg.features,
                        overwrite=im.overwrite, compression=im.compression, ids_key=im.ids_key,
                        array_key=im.array_key, max_video_mb=im.max_video_mb, max_videos=im.max_videos)
    except (H5Error, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out['store']}: {out['videos']} videos in {out['shards']} shards, layouts {out['layouts']}")
    # the files carry each modality's hash; the store's config_hash combines them (so it is not in any file)
    per_modality = ", ".join(f"{m} {h}" for m, h in sorted(out["hashes"].items()))
    print(f"config hashes {per_modality} from {out['hash_from']}; the store's combined config_hash {out['config_hash']}")
    if out["renamed_ids"]:
        raw, safe = out["renamed_example"]
        print(f"{out['renamed_ids']} ids were not safe video ids and were made safe as the datasets do "
              f"(core.schema.safe_video_id), e.g. {raw!r} -> {safe!r}")
    print(json.dumps({k: out[k] for k in ("store", "config_hash", "videos", "shards", "modalities")}))


if __name__ == "__main__":
    main()

"""The one table of modalities: what each is, where it is stored, which stages produce it.

Every part of the project reads this table (the pipeline's stage selection, the store's keys,
the model's per-modality handling, the trainer's feature widths, the benchmarks); no other
module lists the modalities.

    name        kind    store keys                    stages that produce it          encoder     stream
    rgb         frame   rgb                           encoder                         encoder     -
    depth       frame   depth                         depth, encoder                  encoder     -
    flow        frame   flow                          flow, encoder                   encoder     -
    normal      frame   normal                        depth, normal, encoder          encoder     -
    audio       clip    audio                         audio                           audio       -
    pointcloud  points  pointcloud, pointcloud_xyz    depth, encoder, pointcloud      pointcloud  -
    touch       frame   touch                         encoder                         encoder     yes
    thermal     frame   thermal                       encoder                         encoder     yes

- frame: one frozen-ViT token grid per stored frame, on the SAME frame indices for every frame
  modality (rgb is the frames themselves; depth/flow/normal are rendered to images first);
- clip: one input per clip (audio: chunks of the track, each a token grid of the audio encoder);
- points: one point cloud per clip ([P, dim] features lifted from rgb tokens + [P, 3] voxel ints).

`stages` is the set of extractor stages (conf/extractor/*.yaml) a modality needs; the order the
stages run in comes from their `needs:` / `provides:` (core.features.stage_order). `encoder` is
the stage whose output is stored as the modality's features. A `stream` modality is a sensor
video of its own recorded beside the RGB one (Touch-QA's GelSight video, Thermal-QA's thermal
camera): the dataset adapter names its file (`VideoEntry.streams`), the decode stage reads it in
the same pass as the RGB video at the RGB frames' timestamps, and the image encoder encodes it.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("frame", "clip", "points")


@dataclass(frozen=True)
class Modality:
    name: str
    kind: str                      # frame | clip | points
    store_keys: tuple[str, ...]    # arrays per video in the store (the first one is the features)
    stages: tuple[str, ...]        # extractor stages that must run to produce it
    encoder: str                   # the stage that writes its features
    stream: bool = False           # decoded from a sensor video of its own (not derived from RGB)


def _table(*rows: Modality) -> dict[str, Modality]:
    table: dict[str, Modality] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"modality {row.name!r} listed twice")
        if row.kind not in KINDS:
            raise ValueError(f"modality {row.name!r}: kind {row.kind!r} is not one of {KINDS}")
        table[row.name] = row
    return table


MODALITIES: dict[str, Modality] = _table(
    Modality("rgb", "frame", ("rgb",), ("encoder",), "encoder"),
    Modality("depth", "frame", ("depth",), ("depth", "encoder"), "encoder"),
    Modality("flow", "frame", ("flow",), ("flow", "encoder"), "encoder"),
    Modality("normal", "frame", ("normal",), ("depth", "normal", "encoder"), "encoder"),
    Modality("audio", "clip", ("audio",), ("audio",), "audio"),
    Modality("pointcloud", "points", ("pointcloud", "pointcloud_xyz"), ("depth", "encoder", "pointcloud"),
             "pointcloud"),
    # Appended last on purpose: the store writes keys in table order (stores made before stay
    # byte-identical).
    Modality("touch", "frame", ("touch",), ("encoder",), "encoder", stream=True),
    Modality("thermal", "frame", ("thermal",), ("encoder",), "encoder", stream=True),
)

NAMES: tuple[str, ...] = tuple(MODALITIES)
FRAME: tuple[str, ...] = tuple(m for m, row in MODALITIES.items() if row.kind == "frame")
STREAMS: tuple[str, ...] = tuple(m for m, row in MODALITIES.items() if row.stream)
# The modality whose frames are the video itself: point clouds lift its tokens, espresso fusion
# fuses the others onto its tokens.
BASE = "rgb"
# Every per-video feature array the store can hold, in the order shards write them.
STORE_KEYS: tuple[str, ...] = tuple(k for row in MODALITIES.values() for k in row.store_keys)


def kind(name: str) -> str:
    """frame | clip | points; a clear error for a name that is not a modality."""
    return get(name).kind


def get(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; choose from {list(NAMES)}") from None


def check(names, what: str) -> list[str]:
    """`names` as a list, or a ValueError naming the config key (`what`) and the unknown ones."""
    names = list(names)
    unknown = [m for m in names if m not in MODALITIES]
    if unknown:
        raise ValueError(f"{what}: unknown modalities {unknown}; choose from {list(NAMES)}")
    return names

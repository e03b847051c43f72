"""CREMA's released checkpoints (the reference's parameter names) <-> this project's names.

    make import-ckpt SRC=crema/v2_ckpt/nextqa_vdfn.pth DATASET=nextqa   (scripts/import_ckpt.py)

The reference (GitHub Yui010206/CREMA a76043b, lavis/models/crema_models/crema.py with
lavis/models/blip2_models/blip2.py's LoRA_Multimodal_QFormer) names one modality's MMQA
`query_tokens_<m>`, `t5_proj_<m>`, `ln_<m>` and, inside the LAVIS Q-Former, a LoRA pair per
self-attention query/value `Qformer.bert.encoder.layer.<i>.attention.self.<query|value>.w_<a|b>_<m>`
(nn.Linear without bias: the same [r, in] / [out, r] shapes as peft's lora_A / lora_B, scale 1).
Audio adds `projection_audio`; the espresso fusion is `fusion.0` (a one-Linear nn.Sequential).
Its modality names differ: norm = normal, pc = pointcloud.

Every key of a reference state dict is accounted for: MAPPED (a rule below), IGNORED (a rule
with its reason: frozen parts this project loads or extracts itself, unused placeholders), or
refused as unknown. The conversion changes no tensor (no cast, no copy of values), so converting
back gives the same tensors bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

# reference modality name -> this project's
MODALITY_NAMES = {"rgb": "rgb", "depth": "depth", "flow": "flow", "norm": "normal", "audio": "audio", "pc": "pointcloud"}
REFERENCE_NAMES = {ours: ref for ref, ours in MODALITY_NAMES.items()}

# (reference key, project key): {ref} / {mod} are the two names of one modality; other fields copy.
RULES = (
    ("Qformer.bert.encoder.layer.{layer}.attention.self.{proj}.w_a_{ref}.weight",
     "mmqa.qformer.base_model.model.encoder.layer.{layer}.attention.attention.{proj}.lora_A.{mod}.weight"),
    ("Qformer.bert.encoder.layer.{layer}.attention.self.{proj}.w_b_{ref}.weight",
     "mmqa.qformer.base_model.model.encoder.layer.{layer}.attention.attention.{proj}.lora_B.{mod}.weight"),
    ("query_tokens_{ref}", "mmqa.heads.{mod}.query_tokens"),
    ("t5_proj_{ref}.{part}", "mmqa.heads.{mod}.proj.{part}"),
    ("ln_{ref}.{part}", "mmqa.heads.{mod}.ln.{part}"),
    ("projection_{ref}.{part}", "mmqa.heads.{mod}.input_proj.{part}"),   # audio only
    ("fusion.0.{part}", "fusion.linear.{part}"),
)

# reference key pattern -> why it is not converted (checked after RULES)
IGNORED = (
    (r"[a-z]+_gradsel_embed", "a placeholder of the reference's gradient-selection experiment: never used in its "
                              "forward (zeros), wrongly counted as trainable"),
    (r"Qformer\..*", "the frozen BLIP-2 Q-Former: this project loads it from model.blip2 (LAVIS names, same weights)"),
    (r"visual_encoder\..*", "the frozen EVA ViT-g: this project's features are extracted beforehand (make extract)"),
    (r"audio_encoder\..*", "the frozen BEATs audio encoder: its features are extracted beforehand (make extract)"),
    (r"t5_model\..*", "the frozen Flan-T5: this project loads it from model.t5_model"),
    (r"(ln_vision|t5_proj)\.(weight|bias)|query_tokens", "BLIP-2's own single-modality head: the reference's "
                                                         "model has none by that name (its load is strict=False)"),
)
# keys a rule maps that a model may lack: then left, for this reason
UNUSED = (
    (r"ln_pc\.(weight|bias)", "unused by the reference's forward: point features get the position encoding with "
                              "no LayerNorm (and this model has none)"),
)
# top-level entries of a LAVIS checkpoint besides "model"
IGNORED_ENTRIES = {"optimizer": "the reference's optimizer state: a run started from a converted checkpoint "
                                "starts its own schedule (as the reference's runs from crema_initial.pth do)",
                   "scaler": "the reference's AMP loss scaler", "epoch": "the reference's epoch counter",
                   "iters": "the reference's iteration counter (its iteration-based runner)",
                   "config": "read for the modality order, not converted"}
CANONICAL_ORDER = tuple(MODALITY_NAMES)  # rgb, depth, flow, norm, audio, pc: the blocks of crema.py


class ConversionError(ValueError):
    """A reference checkpoint this converter cannot account for completely."""


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    out = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>[A-Za-z0-9]+)" for i, p in enumerate(parts))
    return re.compile(out + r"\Z")


_COMPILED = [(_regex(ref), ref, _regex(ours), ours) for ref, ours in RULES]


def project_key(ref_key: str) -> tuple[str, str | None] | None:
    """(project key, project modality or None for the fusion) of a reference key; None: no rule."""
    for ref_re, _, _, ours in _COMPILED:
        match = ref_re.match(ref_key)
        if match:
            fields_ = match.groupdict()
            ref = fields_.pop("ref", None)
            if ref is not None and ref not in MODALITY_NAMES:
                return None
            mod = MODALITY_NAMES.get(ref) if ref else None
            return ours.format(**fields_, mod=mod), mod
    return None


def reference_key(key: str) -> str:
    """The reference's name of a project key (ConversionError when no rule gives one)."""
    for _, ref, ours_re, _ in _COMPILED:
        match = ours_re.match(key)
        if match:
            fields_ = match.groupdict()
            mod = fields_.pop("mod", None)
            if mod is not None and mod not in REFERENCE_NAMES:
                raise ConversionError(f"modality {mod!r} has no counterpart in the reference (it has "
                                      f"{sorted(REFERENCE_NAMES)})")
            return ref.format(**fields_, ref=REFERENCE_NAMES.get(mod))
    raise ConversionError(f"parameter {key!r} has no name in the reference's layout")


def ignore_reason(ref_key: str, rules=IGNORED) -> str | None:
    for pattern, reason in rules:
        if re.fullmatch(pattern, ref_key):
            return reason
    return None


@dataclass
class Conversion:
    """A reference state dict split into what this project loads and what it leaves, with why."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # project key -> the same tensor
    ignored: dict[str, str] = field(default_factory=dict)            # reference key -> reason
    modalities: list[str] = field(default_factory=list)              # project names, the reference's order

    def summary(self) -> dict:
        """Counts per reason (state.json and the CLI print it)."""
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"mapped": len(self.tensors), "ignored": reasons}


def unwrap(ckpt) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, ignored top-level entries) of a loaded reference file: a LAVIS checkpoint
    {"model": ..., "optimizer": ..., "config": ..., ...} or a bare state dict."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f"expected a dict (a state dict or a LAVIS checkpoint), got {type(ckpt).__name__}")
    if "model" not in ckpt:
        return ckpt, {}
    unknown = sorted(set(ckpt) - {"model", *IGNORED_ENTRIES})
    if unknown:
        raise ConversionError(f"top-level entries {unknown} besides 'model': not a LAVIS checkpoint this "
                              f"converter knows (known: {sorted(IGNORED_ENTRIES)})")
    return ckpt["model"], {k: IGNORED_ENTRIES[k] for k in ckpt if k != "model"}


def modality_order(ckpt: dict, state: dict, override: list[str] | None = None) -> list[str]:
    """The reference's modality order (project names): it fixes the fusion's input columns.

    From `override` (project names), else the checkpoint's own config (model.modalities, e.g.
    "rgb_audio_flow"), else the order of the `<m>_gradsel_embed` placeholders (registered in the
    reference's modality order), else the canonical order when at most one modality is fused.
    """
    present = [MODALITY_NAMES[m.group(1)] for k in state if (m := re.fullmatch(r"query_tokens_([a-z]+)", k))
               and m.group(1) in MODALITY_NAMES]
    if override:
        order = list(override)
    elif isinstance(ckpt.get("config"), dict) and (ckpt["config"].get("model") or {}).get("modalities"):
        names = str(ckpt["config"]["model"]["modalities"]).split("_")
        order = [MODALITY_NAMES.get(n.split("-")[0], n) for n in names]
    elif any(k.endswith("_gradsel_embed") for k in state):
        order = [MODALITY_NAMES.get(k[: -len("_gradsel_embed")], k) for k in state if k.endswith("_gradsel_embed")]
    else:
        order = [MODALITY_NAMES[r] for r in CANONICAL_ORDER if MODALITY_NAMES[r] in present]
        if "fusion.0.weight" in state and len(order) > 2:
            raise ConversionError(f"the file fuses {len(order) - 1} modalities but records no modality order; "
                                  f"give it as the reference's run script does, e.g. modalities=[{','.join(order)}]")
    absent = [m for m in order if m not in present]
    if absent:
        raise ConversionError(f"modalities {absent} have no weights in the file (it has {present}); the reference "
                              f"saves only parameters that required grad: pass modalities=[...] with those it has")
    return order


def to_project(state: dict[str, torch.Tensor], modalities: list[str], shapes: dict[str, tuple]) -> Conversion:
    """Split a reference state dict for a model with `modalities` whose trainable parameters have
    `shapes` (project key -> shape). Every trainable parameter must be found (strict), every
    reference key mapped or ignored with its reason."""
    out = Conversion(modalities=list(modalities))
    unknown, misfit, reshaped = [], [], []
    for key, tensor in state.items():
        target = project_key(key)
        if target is None:
            reason = ignore_reason(key)
            if reason is None:
                unknown.append(key)
            else:
                out.ignored[key] = reason
            continue
        ours, mod = target
        if ours in shapes:
            if tuple(tensor.shape) != tuple(shapes[ours]):
                reshaped.append(f"{key} {tuple(tensor.shape)} vs {tuple(shapes[ours])}")
            out.tensors[ours] = tensor
        elif mod is not None and mod not in modalities:
            out.ignored[key] = f"modality {REFERENCE_NAMES[mod]} not converted (modalities={list(modalities)})"
        elif (reason := ignore_reason(key, UNUSED)) is not None:
            out.ignored[key] = reason
        else:  # e.g. LoRA of a layer the preset's Q-Former does not have: never silently dropped
            misfit.append(key)
    if unknown:
        raise ConversionError(f"{len(unknown)} keys match no rule of model/reference_ckpt.py, e.g. {unknown[:5]}")
    if misfit or reshaped:
        raise ConversionError(f"{len(misfit) + len(reshaped)} tensors do not fit the model preset, e.g. "
                              f"{(misfit + reshaped)[:3]}: choose the preset the file was trained with "
                              f"(DATASET=<name> selects features=full, i.e. crema_full; or model=..., model.* keys)")
    missing = sorted(set(shapes) - set(out.tensors))
    if missing:
        raise ConversionError(f"the file lacks {len(missing)} parameters of the model, e.g. "
                              f"{[reference_key(k) for k in missing[:4]]}")
    return out


def to_reference(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A project state dict in the reference's names (the same tensors)."""
    return {reference_key(k): v for k, v in tensors.items()}


def architecture(state: dict[str, torch.Tensor], modalities: list[str]) -> dict:
    """The model.* sizes a reference state dict implies (they override the preset's)."""
    first = REFERENCE_NAMES[modalities[0]]

    def size(key: str, dim: int) -> int:
        if key not in state:
            raise ConversionError(f"the file has no {key}: not a CREMA checkpoint of modality {first}")
        return int(state[key].shape[dim])

    # every ln_<m> normalises Q-Former inputs (audio's after its projection): the ViT width
    out = {"num_query_tokens": size(f"query_tokens_{first}", 1), "vision_width": size(f"ln_{first}.weight", 0),
           "lora_rank": size(f"Qformer.bert.encoder.layer.0.attention.self.query.w_a_{first}.weight", 0),
           "fusion": "espresso" if "fusion.0.weight" in state else "concat"}
    if "projection_audio.weight" in state:
        out["audio_width"] = int(state["projection_audio.weight"].shape[1])
    return out


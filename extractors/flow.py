"""Optical-flow stage: forward flow from each stored frame to the source frame right after it.

Backends (`cfg.backend`):
- `farneback`: OpenCV's dense Farneback flow. No weights; the fallback that always works.
- `raft`: torchvision's RAFT (raft_large / raft_small) with its released weights.
- `ptlflow`: any model ptlflow ships with checkpoint loading, UniMatch (the paper's choice) by
  default; an optional extra (`uv sync --extra flow`).

All backends take uint8 RGB pairs at the source size and return flow at the source size in
source pixels; learned backends may run at a smaller size (`max_side`) and are padded to their
stride, and their flow is scaled back. Adds maps.flow float32 [F, 2, H, W] (dx then dy: a point
at (x, y) in frame t is at (x + dx, y + dy) in the next frame) and images.flow uint8
[F, H, W, 3] (standard colour wheel, extractors.render.flow_to_image).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.hub import ModelUnavailableError, seeded
from core.util import to_plain
from extractors import hub, render


class FarnebackBackend:
    """OpenCV Farneback on grey frames; parameters straight from `cfg.farneback`."""

    def __init__(self, cfg, device, dtype):
        self.params = dict(cfg.farneback)
        self.meta = {"model_id": "opencv:calcOpticalFlowFarneback", "revision": None,
                     "resolved_revision": None, "source": "opencv", "params": to_plain(cfg.farneback)}

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import cv2

        out = []
        for a, b in zip(first, second):
            ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
            flow = cv2.calcOpticalFlowFarneback(ga, gb, None, **self.params)  # [H, W, 2] (dx, dy)
            out.append(flow.transpose(2, 0, 1))
        return np.stack(out).astype(np.float32)


def _resize_for(height: int, width: int, max_side: int | None, min_side: int) -> tuple[int, int]:
    """The size a learned model runs at: longer side capped at max_side, shorter side at least
    min_side (what the network can take), aspect kept. Padding to the model's stride happens
    separately, so no pixel is stretched just for divisibility."""
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    if min(height, width) * scale < min_side:
        scale = min_side / min(height, width)
    return max(min_side, round(height * scale)), max(min_side, round(width * scale))


class _LearnedBackend:
    """Shared resize / pad / un-pad / rescale around a torch flow network (RAFT, UniMatch)."""

    stride = 8     # inputs are padded to a multiple of this
    min_side = 8   # and resized up to at least this

    def __init__(self, cfg, device, dtype):
        self.device, self.dtype = device, dtype
        self.max_side = cfg.get("max_side")
        self.batch_size = int((cfg.get("resources") or {}).get("batch_size", 4))

    def _network(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        height, width = first.shape[1:3]
        rh, rw = _resize_for(height, width, self.max_side, self.min_side)
        ph, pw = math.ceil(rh / self.stride) * self.stride, math.ceil(rw / self.stride) * self.stride
        out = []
        for start in range(0, len(first), self.batch_size):
            pair = [torch.from_numpy(np.ascontiguousarray(x[start:start + self.batch_size])).permute(0, 3, 1, 2)
                    for x in (first, second)]
            pair = [p.to(self.device, torch.float32) for p in pair]
            if (rh, rw) != (height, width):
                pair = [F.interpolate(p, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
                        for p in pair]
            # Replicate-pad right/bottom to the stride: the flow of real pixels keeps their coordinates.
            pair = [F.pad(p, (0, pw - rw, 0, ph - rh), mode="replicate") for p in pair]
            flow = self._network(*pair).float()[:, :, :rh, :rw]
            if (rh, rw) != (height, width):
                flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
                flow = flow * torch.tensor([width / rw, height / rh], device=flow.device).view(1, 2, 1, 1)
            out.append(flow.cpu().numpy())
        return np.concatenate(out).astype(np.float32)


class RaftBackend(_LearnedBackend):
    """torchvision RAFT. Weights come from download.pytorch.org (torchvision's own cache, under
    $TORCH_HOME/hub/checkpoints) or from `resources.local_path` (a state-dict file)."""

    # RAFT's 4-level correlation pyramid needs feature maps >= 16 cells, i.e. 128 px inputs.
    min_side = 128

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        from torchvision.models import optical_flow

        self.num_flow_updates = int(cfg.raft.num_flow_updates)
        builder = getattr(optical_flow, cfg.raft.arch)  # raft_large | raft_small

        def build_random(c):
            with seeded(c.seed):
                return builder(weights=None)

        model, self.meta = hub.build_or_load(
            cfg, build_random, lambda c, _dtype, local_path: _load_raft(builder, c.raft.arch, c.raft.weights, local_path))
        self.model = model.to(device, dtype).eval()
        self.meta = {**self.meta, "arch": cfg.raft.arch, "num_flow_updates": self.num_flow_updates}

    def _network(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        # RAFT expects [-1, 1] (what torchvision's Raft_*_Weights.transforms() produce).
        a, b = (x.to(self.dtype) / 127.5 - 1.0 for x in (first, second))
        return self.model(a, b, num_flow_updates=self.num_flow_updates)[-1]


def _load_raft(builder, arch: str, weights_name: str, local_path: str | None):
    from torchvision.models import optical_flow

    enum = getattr(optical_flow, {"raft_large": "Raft_Large_Weights", "raft_small": "Raft_Small_Weights"}[arch])
    weights = enum[weights_name]
    meta = {"model_id": f"torchvision:{arch}", "revision": weights_name, "resolved_revision": weights.url,
            "source": local_path or weights.url}
    if local_path:
        model = builder(weights=None)
        model.load_state_dict(torch.load(local_path, map_location="cpu", weights_only=True))
        return model, meta
    try:
        return builder(weights=weights), meta
    except Exception as exc:  # offline and not in torch's cache
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelUnavailableError(
            f"torchvision {arch} weights {weights_name!r} are not available: not in $TORCH_HOME/hub/checkpoints "
            f"and the download failed ({type(exc).__name__}: {first}).\n"
            f"Pre-download them on a machine with network access:\n"
            f"    curl -L -o {weights.url.rsplit('/', 1)[-1]} {weights.url}\n"
            f"then either copy the file into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/) "
            f"or point the config at it:\n"
            f"    features.extractors.flow.resources.local_path=/path/to/{weights.url.rsplit('/', 1)[-1]}"
        ) from None


class PtlflowBackend(_LearnedBackend):
    """A ptlflow model (UniMatch by default) with ptlflow's checkpoint loading."""

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        ptlflow = _import_ptlflow()
        name, ckpt = cfg.ptlflow.model, cfg.ptlflow.ckpt

        def build_random(c):
            # random_init: true builds the registered model as it is (full size); a mapping gives
            # constructor arguments of the same class (a tiny UniMatch: fewer layers/refinements)
            spec = to_plain(c.random_init)
            kwargs = dict(spec.get("model") or {}) if isinstance(spec, dict) else {}
            with seeded(c.seed):
                return ptlflow.get_model_reference(name)(**kwargs)

        model, self.meta = hub.build_or_load(
            cfg, build_random, lambda c, _dtype, local_path: _load_ptlflow(ptlflow, name, ckpt, local_path))
        self.model = model.to(device, dtype).eval()
        # Padding to the model's stride here too (ptlflow would pad two-sided, then crop) keeps
        # one padding rule for every learned backend.
        self.stride = int(getattr(model, "output_stride", 8) or 8)
        self.meta = {**self.meta, "arch": name}

    def _network(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.model({"images": ptlflow_images(first, second, self.dtype)})["flows"][:, 0]


def _import_ptlflow():
    """ptlflow (a locked dependency) without its import-time chatter: it prints that optional
    CUDA kernels (xFormers, alt_cuda_corr) are absent and timm warns about old module paths."""
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import ptlflow
    return ptlflow


def ptlflow_images(first: torch.Tensor, second: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """RGB uint8-valued [B, 3, H, W] pairs -> ptlflow's input: [B, 2, 3, H, W] in [0, 1], BGR
    channel order (ptlflow models expect cv2-loaded images and convert to RGB themselves)."""
    # contiguous: frames arrive channels-last (from numpy), and ptlflow reshapes with .view
    return (torch.stack([first, second], dim=1).flip(2).to(dtype) / 255.0).contiguous()


def _load_ptlflow(ptlflow, name: str, ckpt: str, local_path: str | None):
    url = getattr(ptlflow.get_model_reference(name), "pretrained_checkpoints", {}).get(ckpt)
    meta = {"model_id": f"ptlflow:{name}", "revision": ckpt, "resolved_revision": url, "source": local_path or url}
    try:
        return ptlflow.get_model(name, ckpt_path=local_path or ckpt), meta
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        fetch = f"curl -L -o {url.rsplit('/', 1)[-1]} {url}" if url else \
            f"python -c \"import ptlflow; ptlflow.get_model('{name}', ckpt_path='{ckpt}')\""
        raise ModelUnavailableError(
            f"ptlflow model {name!r} checkpoint {ckpt!r} is not available ({type(exc).__name__}: {first}).\n"
            f"Pre-download it on a machine with network access:\n"
            f"    {fetch}\n"
            f"then either copy it into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/) "
            f"or point the config at it:\n"
            f"    features.extractors.flow.resources.local_path=/path/to/{(url or 'the.ckpt').rsplit('/', 1)[-1]}"
        ) from None


BACKENDS = {"farneback": FarnebackBackend, "raft": RaftBackend, "ptlflow": PtlflowBackend}


class FlowExtractor:
    """Forward optical flow (and its colour rendering) for every stored frame of every video."""

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.backend not in BACKENDS:
            raise ValueError(f"unknown flow backend {cfg.backend!r}; choose from {sorted(BACKENDS)}")
        device, dtype, _, _ = hub.runtime(cfg)
        self.backend = BACKENDS[cfg.backend](cfg, device, dtype)
        self.meta = {**self.backend.meta, "backend": cfg.backend, "dtype": str(dtype).removeprefix("torch.")}

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """Per-video features this stage adds (none: flow only feeds maps and images)."""
        return {}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    def predict(self, frames: np.ndarray, next_frames: np.ndarray) -> np.ndarray:
        """uint8 [F, H, W, 3] pairs -> float32 flow [F, 2, H, W] (dx, dy) in source pixels."""
        if frames.shape != next_frames.shape:
            raise ValueError(f"frames {frames.shape} and next_frames {next_frames.shape} differ")
        return self.backend(frames, next_frames)

    def __call__(self, batch: dict) -> dict:
        for video in batch["videos"]:
            if video.get("failed"):
                continue
            if video.get("next_frames") is None:
                video.setdefault("errors", []).append(
                    {"stage": self.cfg.name, "reason": "no next frame to compute flow against (one-frame video)"})
                continue
            flow = self.predict(np.asarray(video["frames"]), np.asarray(video["next_frames"]))
            video.setdefault("maps", {})["flow"] = flow
            video.setdefault("images", {})["flow"] = render.flow_to_image(flow)
            video.setdefault("model_meta", {})[self.cfg.name] = dict(self.meta)
        return batch

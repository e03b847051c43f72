"""How the modalities' LLM-space tokens become one LLM encoder sequence.

`espresso` (CREMA's current fusion): every non-RGB modality's tokens are aligned per (frame,
query) -- audio averaged over its chunks then repeated over the T frames, a point cloud repeated
over T -- concatenated along channels, passed through one Linear (D * (M-1) -> D) and self-gated
(x * sigmoid(x)). Then `concat`, in the reference's order: each "Frame i: " prefix followed by
RGB's tokens of frame i, then all the prefixes again ("Frame 1: ... Frame T: ", nothing between
them), then the fused tokens of every frame; or `add`: the fused tokens are added onto RGB's.
Either way the sequence does not grow with the number of modalities.

`concat` (v1): every modality's tokens in the sequence: per frame "Frame i: " then each frame
modality's tokens of that frame, then the clip-level modalities (audio chunks, point cloud).
"""

from __future__ import annotations

import torch
from torch import nn

from core.modalities import BASE, FRAME


class EspressoFusion(nn.Module):
    """One Linear over the channel-concatenated non-RGB tokens, then self-gating."""

    def __init__(self, modalities: list[str], width: int):
        super().__init__()
        self.modalities = list(modalities)
        self.linear = nn.Linear(width * len(self.modalities), width)

    def forward(self, aligned: dict[str, torch.Tensor]) -> torch.Tensor:
        """aligned[m]: [B, T, Q, D] for any subset of the fused modalities -> [B, T, Q, D].

        A modality left out at inference (zero-shot composition) contributes zeros, which is the
        same as dropping its columns of the Linear.
        """
        ref = next(iter(aligned.values()))
        parts = [aligned[m] if m in aligned else torch.zeros_like(ref) for m in self.modalities]
        x = self.linear(torch.cat(parts, dim=-1))
        return x * torch.sigmoid(x)


def align_to_frames(modality: str, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[B, n, Q, D] -> [B, T, Q, D]: frames as they are, audio chunk-averaged, 3D repeated."""
    if modality in FRAME:
        return tokens
    pooled = tokens.mean(dim=1, keepdim=True)
    return pooled.expand(-1, num_frames, -1, -1)


class Sequence:
    """An LLM encoder input under construction: embedding blocks and their attention masks."""

    def __init__(self, batch: int, device: torch.device):
        self.batch, self.device = batch, device
        self.embeds: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def add(self, embeds: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """embeds [B, L, D] (or [L, D], shared by the batch); keep [B] bool masks whole samples."""
        if embeds.dim() == 2:
            embeds = embeds.unsqueeze(0).expand(self.batch, -1, -1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        if keep is not None:
            mask = mask * keep.long()[:, None]
        self.embeds.append(embeds)
        self.masks.append(mask)

    def build(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.embeds[-1].dtype
        return torch.cat([e.to(dtype) for e in self.embeds], dim=1), torch.cat(self.masks, dim=1)


def assemble(
    tokens: dict[str, torch.Tensor],
    present: dict[str, torch.Tensor],
    prefixes: list[torch.Tensor],
    *,
    fusion: EspressoFusion | None,
    espresso_mode: str,
) -> Sequence:
    """Lay out the modality tokens (tokens[m]: [B, n, Q, D], present[m]: [B] bool).

    Samples whose modality is missing (zero-mask policy) have that modality's tokens zeroed and,
    where they stand in the sequence on their own, masked out of attention.
    """
    first = next(iter(tokens.values()))
    seq = Sequence(first.shape[0], first.device)
    tokens = {m: t * present[m].to(t.dtype)[:, None, None, None] for m, t in tokens.items()}
    fused_in = [m for m in (fusion.modalities if fusion is not None else []) if m in tokens]
    if fusion is None or BASE not in tokens or not fused_in:
        _plain(seq, tokens, present, prefixes)
        return seq
    num_frames = tokens[BASE].shape[1]
    fused = fusion({m: align_to_frames(m, tokens[m], num_frames) for m in fused_in})
    fused_present = torch.stack([present[m] for m in fused_in]).any(dim=0)
    rgb, rgb_present = tokens[BASE], present[BASE]
    if espresso_mode == "add":
        for t, prefix in enumerate(prefixes):
            seq.add(prefix)
            seq.add(rgb[:, t] + fused[:, t], keep=rgb_present | fused_present)
        return seq
    for t, prefix in enumerate(prefixes):
        seq.add(prefix)
        seq.add(rgb[:, t], keep=rgb_present)
    # the reference concatenates its prefix block and its fused block whole (crema.py, espresso-concat)
    for prefix in prefixes:
        seq.add(prefix)
    seq.add(fused.reshape(fused.shape[0], -1, fused.shape[-1]), keep=fused_present)
    return seq


def _plain(seq: Sequence, tokens: dict, present: dict, prefixes: list[torch.Tensor]) -> None:
    frame_mods = [m for m in tokens if m in FRAME]
    if frame_mods:
        for t, prefix in enumerate(prefixes):
            seq.add(prefix)
            for m in frame_mods:
                seq.add(tokens[m][:, t], keep=present[m])
    for m in tokens:
        if m not in FRAME:
            t = tokens[m]
            seq.add(t.reshape(t.shape[0], -1, t.shape[-1]), keep=present[m])

"""MMQA: one frozen BLIP-2 Q-Former shared by every modality, with a LoRA adapter and a small
trainable head per modality.

Per modality m (keyed by name everywhere, never copy-pasted):
- a peft LoRA adapter named m on the Q-Former's SELF-attention query and value projections
  (rank r, alpha = r so the scale is exactly 1; A Kaiming-uniform, B zeros);
- `heads[m]`: query tokens, a LayerNorm on the cached encoder tokens, a projection into the LLM
  embedding space, and for audio a Linear from the audio width to the ViT width.
Point clouds get a fixed sinusoidal encoding of their voxel xyz added after the LayerNorm.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Blip2QFormerModel

from core.modalities import kind

# Full-match regex over module names: the self-attention query/value of every layer, and not
# `layer.N.crossattention.attention.query` (cross-attention) nor any key projection.
SELF_ATTENTION_QV = r"encoder\.layer\.\d+\.attention\.attention\.(query|value)"


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """[num_positions, dim] fixed encoding: (sin, cos) pairs over geometric frequencies."""
    channels = dim + dim % 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, channels, 2, dtype=torch.float64) / channels))
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)
    return table[:, :dim].float()


def voxel_position_table(num_positions: int, width: int) -> torch.Tensor:
    """[num_positions, 3, width // 3]: one sinusoidal table per axis (x, y, z use the same one)."""
    per_axis = width // 3
    if per_axis < 1:
        raise ValueError(f"point-cloud feature width {width} is too small for a per-axis encoding")
    return sinusoid_table(num_positions, per_axis)


class ModalityHead(nn.Module):
    """The trainable, non-LoRA part of one modality's MMQA."""

    def __init__(self, *, num_query_tokens: int, qformer_width: int, vision_width: int, llm_width: int,
                 input_width: int | None = None):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_width))
        # Audio tokens are not ViT tokens: a Linear brings them to the width the Q-Former reads.
        self.input_proj = nn.Linear(input_width, vision_width) if input_width is not None else None
        self.ln = nn.LayerNorm(vision_width)
        self.proj = nn.Linear(qformer_width, llm_width)


class MMQA(nn.Module):
    """The shared frozen Q-Former with one LoRA adapter and one `ModalityHead` per modality."""

    def __init__(self, qformer: Blip2QFormerModel, modalities: list[str], *, llm_width: int,
                 num_query_tokens: int, lora_rank: int, lora_dropout: float, audio_width: int | None,
                 voxel_positions: int = 256, voxel_pe_scale: float = 0.01, point_layernorm: bool = False):
        super().__init__()
        self.modalities = list(modalities)
        qcfg = qformer.config
        vision_width = qcfg.encoder_hidden_size
        lora = LoraConfig(r=lora_rank, lora_alpha=lora_rank, lora_dropout=lora_dropout,
                          target_modules=SELF_ATTENTION_QV, bias="none", init_lora_weights=True)
        for p in qformer.parameters():
            p.requires_grad_(False)
        self.qformer = get_peft_model(qformer, lora, adapter_name=self.modalities[0])
        for m in self.modalities[1:]:
            self.qformer.add_adapter(m, lora)
        self.heads = nn.ModuleDict({
            m: ModalityHead(num_query_tokens=num_query_tokens, qformer_width=qcfg.hidden_size,
                            vision_width=vision_width, llm_width=llm_width,
                            input_width=audio_width if kind(m) == "clip" else None)
            for m in self.modalities
        })
        for head in self.heads.values():
            nn.init.normal_(head.query_tokens, std=qcfg.initializer_range)
        self.voxel_pe_scale = voxel_pe_scale
        self.point_layernorm = point_layernorm
        if any(kind(m) == "points" for m in self.modalities):
            # Fixed, not trained and not saved: rebuilt identically from the config.
            self.register_buffer("voxel_table", voxel_position_table(voxel_positions, vision_width),
                                 persistent=False)
        self._lora = {m: [p for n, p in self.qformer.named_parameters() if f".{m}." in n and "lora_" in n]
                      for m in self.modalities}
        for m in self.modalities:
            if not self._lora[m]:
                raise RuntimeError(f"peft created no LoRA weights for {m!r} (target {SELF_ATTENTION_QV})")
        self._active = self.modalities[0]
        for m in self.modalities:
            if not self.uses_ln(m):
                self.heads[m].ln.requires_grad_(False)
        self.set_trainable(self.modalities)

    # ------------------------------------------------------------------ parameters

    def lora_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self._lora[modality])

    def uses_ln(self, modality: str) -> bool:
        """Whether the modality's features pass its head's LayerNorm (not point features, unless
        point_layernorm: the reference's ln_pc exists but is never called)."""
        return kind(modality) != "points" or self.point_layernorm

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Every trainable parameter of one modality's MMQA (LoRA + head); an unused LayerNorm is
        neither trained, saved nor counted."""
        head = self.heads[modality]
        unused = set() if self.uses_ln(modality) else {id(p) for p in head.ln.parameters()}
        return self.lora_parameters(modality) + [p for p in head.parameters() if id(p) not in unused]

    def set_trainable(self, modalities) -> None:
        """requires_grad=True for these modalities' MMQA, False for the rest (frozen parts stay frozen)."""
        wanted = set(modalities)
        for m in self.modalities:
            for p in self.modality_parameters(m):
                p.requires_grad_(m in wanted)

    # ------------------------------------------------------------------ forward

    @contextlib.contextmanager
    def adapter(self, modality: str, enabled: bool = True) -> Iterator[None]:
        """Run the shared Q-Former with `modality`'s LoRA (or with none: the plain BLIP-2 path)."""
        if not enabled:
            with self.qformer.disable_adapter():
                yield
            return
        if self._active != modality:
            # peft's set_adapter also rewrites requires_grad of every adapter; keep ours.
            flags = [(p, p.requires_grad) for m in self.modalities for p in self._lora[m]]
            self.qformer.set_adapter(modality)
            for p, flag in flags:
                p.requires_grad_(flag)
            self._active = modality
        yield

    def voxel_encoding(self, xyz: torch.Tensor) -> torch.Tensor:
        """[..., 3] integer voxel coordinates -> [..., vision_width] (per-axis tables, zero-padded)."""
        table = self.voxel_table
        parts = [table[xyz[..., axis].long()] for axis in range(3)]
        enc = torch.cat(parts, dim=-1)
        pad = self.qformer.base_model.model.config.encoder_hidden_size - enc.shape[-1]
        return nn.functional.pad(enc, (0, pad))

    def forward(self, modality: str, feats: torch.Tensor, mask: torch.Tensor | None = None,
                xyz: torch.Tensor | None = None, use_lora: bool = True) -> torch.Tensor:
        """Encoder tokens [*lead, N, W] (+ mask [*lead, N]) -> LLM-space tokens [*lead, Q, D].

        Each leading index (a frame, an audio chunk, a point cloud) passes the Q-Former on its own.
        """
        head = self.heads[modality]
        x = feats.to(head.ln.weight.dtype)
        if head.input_proj is not None:
            x = head.input_proj(x)
        if self.uses_ln(modality):
            x = head.ln(x)
        if kind(modality) == "points":
            if xyz is None:
                raise ValueError(f"{modality} features need their voxel xyz")
            x = x + self.voxel_pe_scale * self.voxel_encoding(xyz).to(x.dtype)
        lead = x.shape[:-2]
        x = x.reshape(-1, *x.shape[-2:])
        if mask is not None:
            mask = mask.reshape(-1, mask.shape[-1]).long()
        queries = head.query_tokens.expand(x.shape[0], -1, -1)
        with self.adapter(modality, enabled=use_lora):
            out = self.qformer(query_embeds=queries, encoder_hidden_states=x,
                               encoder_attention_mask=mask).last_hidden_state
        out = head.proj(out)
        return out.reshape(*lead, *out.shape[-2:])

"""The CREMA model (MMQA per modality + fusion + frozen T5) and its builder.

    model = build_crema(**preset_fields, vision_width=48, audio_width=32, modalities=["rgb", "flow", "audio"])
    loss = model(batch)                        # batch: see trainer/data.py (collate)
    preds = model.predict(batch, modalities=["rgb", "flow"], lora_off=["flow"])

The presets are conf/model/crema_full.yaml (BLIP-2's Q-Former + Flan-T5-XL, loaded by hub id or
local folder; on the meta device for parameter counts) and crema_tiny.yaml (random-init parts
of the same transformers classes, seeded: every process builds identical weights). Hydra
instantiates `build_crema` with a preset's keys; the builder reads no files of its own.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn
from transformers import (Blip2QFormerConfig, Blip2QFormerModel, T5Config,
                          T5ForConditionalGeneration)

from core.hub import seeded
from core.modalities import kind
from model.config import CremaConfig
from model.fusion import EspressoFusion, assemble
from model.mmqa import MMQA
from model.scoring import choice_token_ids, mean_token_logprob
from model.tokenizer import phrase_tokenizer


class Crema(nn.Module):
    """Trainable: every modality's MMQA (LoRA + head) and the fusion. Frozen: Q-Former, T5."""

    def __init__(self, config: CremaConfig, mmqa: MMQA, llm: T5ForConditionalGeneration, tokenizer=None):
        super().__init__()
        self.config = config
        self.mmqa = mmqa
        self.llm = llm
        for p in self.llm.parameters():
            p.requires_grad_(False)
        width = llm.config.d_model
        fused = config.fused_modalities
        self.fusion = EspressoFusion(fused, width) if fused else None
        self.tokenizer = tokenizer
        if tokenizer is not None:
            self.prefix_ids = [tokenizer(config.frame_prefix.format(i=i + 1), add_special_tokens=False).input_ids
                               for i in range(config.num_frames)]
            self.choice_prefix, self.letter_ids = choice_token_ids(tokenizer)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    # ------------------------------------------------------------------ parameters

    def module_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters grouped by owner: one entry per modality, plus "fusion"."""
        groups = {m: self.mmqa.modality_parameters(m) for m in self.modalities}
        if self.fusion is not None:
            groups["fusion"] = list(self.fusion.parameters())
        return groups

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable parameter of EVERY modality, by name, whatever its requires_grad is now."""
        wanted = {id(p) for ps in self.module_parameters().values() for p in ps}
        return {n: p for n, p in self.named_parameters() if id(p) in wanted}

    # ------------------------------------------------------------------ encoder input

    def modality_tokens(self, batch: dict, modalities: list[str], *, lora_off=()) -> dict[str, torch.Tensor]:
        """LLM-space tokens per modality, [B, n, Q, D] (n: frames, audio chunks, or 1 point cloud).
        Builds a graph only when called with grad enabled."""
        tokens = {}
        for m in modalities:
            feats = batch["features"][m]
            mask = batch.get("masks", {}).get(m)
            xyz = batch.get("xyz", {}).get(m)
            if kind(m) == "points":  # one cloud per sample: a leading "frame" axis of 1
                feats, mask, xyz = feats[:, None], mask[:, None] if mask is not None else None, xyz[:, None]
            tokens[m] = self.mmqa(m, feats, mask=mask, xyz=xyz, use_lora=m not in lora_off)
        return tokens

    def encoder_inputs(self, batch: dict, *, modalities=None, grad_modalities=None, lora_off=(), cached=None):
        """(inputs_embeds [B, L, D], attention_mask [B, L]) for the T5 encoder.

        Only `grad_modalities` (None: all) build a graph; the others run under no_grad, or are
        taken from `cached` (tokens computed earlier with the same weights) when given.
        """
        modalities = self._check_subset(modalities)
        cached = cached or {}
        with_grad = [m for m in modalities if grad_modalities is None or m in grad_modalities]
        todo = [m for m in modalities if m not in with_grad and m not in cached]
        tokens = self.modality_tokens(batch, with_grad, lora_off=lora_off)
        with torch.no_grad():
            tokens.update(self.modality_tokens(batch, todo, lora_off=lora_off))
        tokens = {m: tokens[m] if m in tokens else cached[m] for m in modalities}
        device = next(iter(tokens.values())).device
        embed = self.llm.get_input_embeddings()
        prefixes = [embed(torch.tensor(ids, device=device)) for ids in self.prefix_ids]
        present = {m: batch["present"][m].to(device) for m in modalities}
        seq = assemble(tokens, present, prefixes, fusion=self.fusion, espresso_mode=self.config.espresso_mode)
        prompt = self.tokenizer(list(batch["prompt"]), padding="longest", truncation=True,
                                max_length=self.config.max_prompt_tokens, return_tensors="pt").to(device)
        seq.add(embed(prompt.input_ids))
        seq.masks[-1] = prompt.attention_mask.long()
        return seq.build()

    def _check_subset(self, modalities) -> list[str]:
        if modalities is None:
            return self.modalities
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown or not modalities:
            raise ValueError(f"modalities {list(modalities)}: this model was trained on {self.modalities}; "
                             f"evaluate any non-empty subset of those")
        return [m for m in self.modalities if m in modalities]  # config order, whatever the caller's

    # ------------------------------------------------------------------ training / inference

    def forward(self, batch: dict, *, grad_modalities: Iterable[str] | None = None, modalities=None,
                lora_off=(), cached=None) -> torch.Tensor:
        """The training loss (`config.loss`). Only `grad_modalities` (None: all) build a graph.

        lm: LM loss on the target text. options: cross-entropy over each multiple-choice question's
        options, scored as `predict` ranks them (mean token log-likelihood); open-ended questions
        in the batch keep the LM loss, and the two are averaged over the batch's questions.
        """
        embeds, mask = self.encoder_inputs(batch, modalities=modalities, grad_modalities=grad_modalities,
                                           lora_off=lora_off, cached=cached)
        if self.config.loss == "options":
            num_options = batch["num_options"].tolist()
            mc = [i for i, n in enumerate(num_options) if n > 0]
            oe = [i for i, n in enumerate(num_options) if n == 0]
            total = embeds.new_zeros(())
            if mc:
                scores = self._option_scores(embeds[mc], mask[mc], [batch["options"][i] for i in mc])
                target = batch["answer_idx"][mc].to(embeds.device).long()
                total = total + nn.functional.cross_entropy(scores, target, reduction="sum")
            if oe:
                total = total + self._lm_loss(embeds[oe], mask[oe], [batch["answer"][i] for i in oe]) * len(oe)
            return total / len(num_options)
        # letter scoring learns "Option X"; option_text scoring learns the answer text itself
        texts = batch["target"] if self.config.choice_scoring == "letter" else batch["answer"]
        return self._lm_loss(embeds, mask, list(texts))

    def _targets(self, texts: list[str], device: torch.device):
        """(tokenised texts, labels with padding as -100) for teacher forcing."""
        target = self.tokenizer(texts, padding="longest", truncation=True,
                                max_length=self.config.max_answer_tokens, return_tensors="pt").to(device)
        return target, target.input_ids.masked_fill(target.attention_mask == 0, -100)

    def _lm_loss(self, embeds: torch.Tensor, mask: torch.Tensor, texts: list[str]) -> torch.Tensor:
        target, labels = self._targets(texts, embeds.device)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                       decoder_attention_mask=target.attention_mask)
        # in float32: a bf16 LLM's log-softmax over 32k tokens would round the loss
        logits = out.logits.float()
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    @torch.no_grad()
    def predict(self, batch: dict, *, modalities=None, lora_off=(), decoding: dict | None = None) -> list[dict]:
        """Per sample {"choice": index or None, "text": answer text}.

        Multiple choice, `choice_scoring=letter` (CREMA): argmax of the letter tokens' logits at
        the position after "Option" (the T5 decoder is fed that prefix), over the question's
        options. `option_text`: the option whose text is most likely as the answer (mean token
        log-likelihood). Open-ended: beam search with `decoding` (num_beams, length_penalty,
        max_new_tokens, min_length: the dataset's, trainer.decoding); None: the model config's
        beams and length, the default length penalty.
        """
        embeds, mask = self.encoder_inputs(batch, modalities=modalities, lora_off=lora_off)
        num_options = batch["num_options"].tolist()
        out: list[dict] = [{} for _ in num_options]
        mc = [i for i, n in enumerate(num_options) if n > 0]
        oe = [i for i, n in enumerate(num_options) if n == 0]
        if mc:
            scores = self._choice_scores(embeds[mc], mask[mc], [batch["options"][i] for i in mc],
                                         [num_options[i] for i in mc])
            for row, i in enumerate(mc):
                choice = int(scores[row].argmax())
                out[i] = {"choice": choice, "text": batch["options"][i][choice]}
        if oe:
            # ids the tokenizer cannot spell (a random preset's vocabulary rounded up past its
            # tokenizer) are never generated
            unused = list(range(len(self.tokenizer), self.llm.config.vocab_size))
            search = decoding or {"num_beams": self.config.num_beams, "max_new_tokens": self.config.max_new_tokens}
            gen = self.llm.generate(inputs_embeds=embeds[oe], attention_mask=mask[oe], do_sample=False,
                                    suppress_tokens=unused or None, **search)
            for i, text in zip(oe, self.tokenizer.batch_decode(gen, skip_special_tokens=True)):
                out[i] = {"choice": None, "text": text.strip()}
        return out

    @torch.no_grad()
    def choice_scores(self, batch: dict, *, modalities=None, lora_off=()) -> torch.Tensor:
        """[B, max options]: the score `predict` ranks each multiple-choice option by (its letter's
        logit, or its text's mean token log-likelihood, per `choice_scoring`); -inf past a
        question's options and on every open-ended row."""
        embeds, mask = self.encoder_inputs(batch, modalities=modalities, lora_off=lora_off)
        counts = batch["num_options"].tolist()
        scores = torch.full((len(counts), max(counts, default=0)), float("-inf"), device=embeds.device)
        mc = [i for i, n in enumerate(counts) if n > 0]
        if mc:
            picked = self._choice_scores(embeds[mc], mask[mc], [batch["options"][i] for i in mc], [counts[i] for i in mc])
            scores[mc, :picked.shape[1]] = picked
        return scores

    def _choice_scores(self, embeds: torch.Tensor, mask: torch.Tensor, options: list, counts: list[int]):
        """[N, max(counts)]: the scores of N multiple-choice questions, -inf past each one's count."""
        if self.config.choice_scoring == "letter":
            scores = self._letter_scores(embeds, mask)
        else:
            scores = self._option_scores(embeds, mask, options)
        scores = scores[:, :max(counts)]
        columns = torch.arange(scores.shape[1], device=scores.device)
        limit = torch.tensor(counts, device=scores.device)
        return scores.masked_fill(columns[None, :] >= limit[:, None], float("-inf"))

    def _letter_scores(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start = self.llm.config.decoder_start_token_id
        dec = torch.tensor([[start] + list(self.choice_prefix)] * embeds.shape[0], device=embeds.device)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec).logits
        return logits[:, -1, self.letter_ids].float()

    def _option_scores(self, embeds: torch.Tensor, mask: torch.Tensor, options: list) -> torch.Tensor:
        """[N, max options]: mean log-likelihood of each option's text (-inf where none)."""
        encoded = self.llm.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        pairs = [(row, k, text) for row, opts in enumerate(options) for k, text in enumerate(opts)]
        rows = torch.tensor([p[0] for p in pairs], device=embeds.device)
        target, labels = self._targets([p[2] for p in pairs], embeds.device)
        logits = self.llm(encoder_outputs=(encoded[rows],), attention_mask=mask[rows], labels=labels).logits
        mean = mean_token_logprob(logits, target.input_ids, target.attention_mask)
        scores = torch.full((len(options), max(len(o) for o in options)), float("-inf"), device=embeds.device)
        scores[rows, torch.tensor([p[1] for p in pairs], device=embeds.device)] = mean
        return scores


# ---------------------------------------------------------------------- builders

def crema(config: CremaConfig, *, device: str | torch.device | None = None) -> Crema:
    """Build a CREMA model. device="meta" builds shapes only (no weights, no tokenizer)."""
    if config.vision_width is None:
        raise ValueError("model.vision_width is unset: the trainer takes it from the feature store; "
                         "when building by hand pass vision_width= (the ViT token width)")
    if "audio" in config.modalities and config.audio_width is None:
        raise ValueError("model.audio_width is unset: pass the audio encoder's token width")
    meta = device is not None and torch.device(device).type == "meta"
    with seeded(config.seed), (torch.device("meta") if meta else contextlib.nullcontext()):
        if config.pretrained and not meta:
            qformer, llm, tokenizer, init = _load_frozen(config)
        else:
            qformer, llm, tokenizer, init = _random_frozen(config)
        if qformer.config.encoder_hidden_size != config.vision_width:
            raise ValueError(f"the Q-Former reads {qformer.config.encoder_hidden_size}-wide tokens but "
                             f"model.vision_width={config.vision_width}: features and model do not match")
        mmqa = MMQA(qformer, config.modalities, llm_width=llm.config.d_model,
                    num_query_tokens=config.num_query_tokens, lora_rank=config.lora_rank,
                    lora_dropout=config.lora_dropout, audio_width=config.audio_width,
                    voxel_positions=config.voxel_positions, voxel_pe_scale=config.voxel_pe_scale,
                    point_layernorm=config.point_layernorm)
        if init is not None:
            _init_heads(mmqa, init)
        return Crema(config, mmqa, llm, tokenizer)


def frozen_dtype(config: CremaConfig) -> torch.dtype:
    """The frozen LLM's dtype (`model.frozen_dtype`). auto: bfloat16 unless the device cannot
    compute it (a GPU older than Ampere: float16 would overflow T5, so float32 there). CPU bf16
    matmuls work in torch, and a Flan-T5-XL in float32 alone is ~11 GiB."""
    if config.frozen_dtype == "auto":
        no_bf16 = torch.cuda.is_available() and not torch.cuda.is_bf16_supported()
        return torch.float32 if no_bf16 else torch.bfloat16
    return getattr(torch, config.frozen_dtype)


def _random_frozen(config: CremaConfig):
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**{**config.qformer, "encoder_hidden_size": config.vision_width}))
    # built in its dtype from the start: a float32 copy first would double the build's peak memory
    llm = T5ForConditionalGeneration._from_config(T5Config(**config.t5), dtype=frozen_dtype(config))
    tokenizer = phrase_tokenizer(config.phrase_tokens) if config.tokenizer == "byt5" else None
    if tokenizer is not None and len(tokenizer) > llm.config.vocab_size:
        raise ValueError(f"model.t5.vocab_size={llm.config.vocab_size} < the tokenizer's {len(tokenizer)} tokens "
                         f"(ByT5's 384 + {len(config.phrase_tokens)} phrase tokens): raise model.t5.vocab_size")
    return qformer.eval(), llm.eval(), tokenizer, None


def _load_frozen(config: CremaConfig):
    from model.pretrained import load_blip2, load_t5

    qformer, init = load_blip2(config.blip2, config.blip2_revision)
    llm, tokenizer = load_t5(config.t5_model, config.t5_revision, frozen_dtype(config))
    if config.tokenizer == "byt5":
        tokenizer = phrase_tokenizer(config.phrase_tokens)
    return qformer.eval(), llm.eval(), tokenizer, init


def _init_heads(mmqa: MMQA, init: dict[str, torch.Tensor]) -> None:
    """Every modality starts from BLIP-2's query tokens and language projection; the modalities
    whose inputs are ViT tokens also from its vision post-LayerNorm (audio's LN reads projected
    audio tokens, so it starts from the identity)."""
    with torch.no_grad():
        for m, head in mmqa.heads.items():
            head.query_tokens.copy_(init["query_tokens"].reshape(head.query_tokens.shape))
            head.proj.weight.copy_(init["proj.weight"])
            head.proj.bias.copy_(init["proj.bias"])
            if m != "audio":
                head.ln.weight.copy_(init["ln.weight"])
                head.ln.bias.copy_(init["ln.bias"])


def build_crema(*, device: str | torch.device | None = None, init: str | None = None, **fields) -> Crema:
    """Build from a preset's keys (what Hydra instantiates: `_target_: model.crema.build_crema`).
    `init` (model.init, a checkpoint to start from) is not part of the architecture: the trainer
    applies it after building (trainer/warm_start.py)."""
    return crema(CremaConfig(**fields), device=device)

"""Audio stage: a fixed number of fbank chunks per video, each encoded to a token sequence.

Front end (CREMA's): 16 kHz mono, 128-bin Kaldi-style log-mel fbank, 25 ms window, 10 ms hop,
`chunks` windows of `chunk_frames` frames (full: 2 x 512, about 10 s). The windows are centred in
`chunks` equal segments of the clip, so they cover a long clip evenly; a short clip repeats
samples across windows and is zero-padded (in the fbank domain) to the window length.

Encoder: transformers' ASTModel with its own ASTFeatureExtractor (fbank + AudioSet
normalisation): the `audio` preset. CREMA's BEATs (iter3+ AS2M, not in transformers) is
extractors/beats.py, the full preset's choice; `add_audio_features` serves both. AST differs:
- normalisation: AST's (x + 4.27) / (2 * 4.57) instead of BEATs' (x - 15.42) / (2 * 6.56);
  each encoder gets the statistics it was trained with.
- tokens: AST's overlapping 16x16 patches (stride 10) give 2 + 12 x 50 = 602 tokens x 768 per
  512-frame chunk, BEATs gives 256 x 768; the trainer's audio projection takes any count.
- length: the AST checkpoint was trained on 1024-frame inputs. A 512-frame chunk uses the
  centre 50 of its 101 time positions (the AST authors' own rule for shorter inputs), done
  once at load time (`fit_time_positions`).

Adds features.audio float16 [chunks, tokens, dim]; a video without an audio stream gets an
error entry instead (audio-less is not a failure for the visual modalities).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from core.hub import seeded, snapshot
from core.util import to_plain
from extractors import hub


def ast_grid(num_mel_bins: int, frames: int, patch: int, f_stride: int, t_stride: int) -> tuple[int, int]:
    """AST's (frequency, time) patch grid for an input of `frames` fbank frames."""
    return (num_mel_bins - patch) // f_stride + 1, (frames - patch) // t_stride + 1


def fit_time_positions(pos: torch.Tensor, freq: int, t_src: int, t_dst: int) -> torch.Tensor:
    """AST position embeddings [1, 2 + freq * t_src, D] -> [1, 2 + freq * t_dst, D].

    Shorter inputs take the centre t_dst time positions (the AST authors' rule); longer ones
    interpolate linearly along time. The two leading (cls, distillation) positions are kept.
    """
    if t_src == t_dst:
        return pos
    special, grid = pos[:, :2], pos[:, 2:].reshape(1, freq, t_src, -1)
    if t_dst < t_src:
        start = t_src // 2 - t_dst // 2
        grid = grid[:, :, start:start + t_dst]
    else:
        grid = torch.nn.functional.interpolate(grid.permute(0, 3, 1, 2), size=(freq, t_dst), mode="bilinear",
                                               align_corners=False).permute(0, 2, 3, 1)
    return torch.cat([special, grid.reshape(1, freq * t_dst, -1)], dim=1)


def build_random(cfg):
    """Random-init ASTModel for `chunk_frames`-frame inputs (tiny presets)."""
    from transformers import ASTConfig, ASTModel

    kwargs = to_plain(cfg.random_init)["model"]
    config = ASTConfig(**kwargs, hidden_size=int(cfg.dim), num_mel_bins=int(cfg.num_mel_bins),
                       max_length=int(cfg.chunk_frames), patch_size=int(cfg.patch_size),
                       frequency_stride=int(cfg.frequency_stride), time_stride=int(cfg.time_stride))
    with seeded(cfg.seed):
        return ASTModel(config)


def load_pretrained(cfg, dtype: torch.dtype, local_path: str | None):
    """The AST checkpoint (hub or local), its position embeddings fitted to `chunk_frames`."""
    from transformers import ASTModel

    snap = snapshot(cfg.model_id, cfg.revision, local_path, allow_patterns=["*.json", "*.safetensors"],
                        config_key="features.extractors.audio.resources.local_path")
    # A classification checkpoint: ASTModel strips its `audio_spectrogram_transformer.` prefix.
    source = ASTModel.from_pretrained(snap.path, dtype=torch.float32)
    return adapt_length(source, int(cfg.chunk_frames)).to(dtype), snap.meta()


def adapt_length(source, frames: int):
    """A copy of an ASTModel for `frames`-frame inputs, sharing every weight but the time
    positions (fitted with fit_time_positions)."""
    import copy

    from transformers import ASTModel

    src_cfg = source.config
    if src_cfg.max_length == frames:
        return source
    config = copy.deepcopy(src_cfg)
    config.max_length = frames
    freq, t_src = ast_grid(src_cfg.num_mel_bins, src_cfg.max_length, src_cfg.patch_size,
                           src_cfg.frequency_stride, src_cfg.time_stride)
    _, t_dst = ast_grid(src_cfg.num_mel_bins, frames, src_cfg.patch_size, src_cfg.frequency_stride,
                        src_cfg.time_stride)
    state = source.state_dict()
    key = "embeddings.position_embeddings"
    state[key] = fit_time_positions(state[key], freq, t_src, t_dst)
    with torch.device("meta"):
        model = ASTModel(config)
    model.load_state_dict(state, assign=True)
    return model


def chunk_windows(num_samples: int, chunks: int, window: int) -> list[tuple[int, int]]:
    """(start, stop) sample ranges of `chunks` windows centred in equal segments of the clip."""
    out = []
    for c in range(chunks):
        centre = (c + 0.5) * num_samples / chunks
        start = int(round(centre - window / 2))
        start = max(0, min(start, num_samples - window)) if num_samples > window else 0
        out.append((start, min(num_samples, start + window)))
    return out


class AudioExtractor:
    """AST token features for `chunks` fbank windows of each video's audio track."""

    def __init__(self, cfg):
        from transformers import ASTFeatureExtractor

        self.cfg = cfg
        self.device, self.dtype, _, _ = hub.runtime(cfg)
        model, meta = hub.build_or_load(cfg, build_random, load_pretrained)
        self.model = model.to(self.device, self.dtype).eval()
        # The model's own front end, set to the chunk length and this config's statistics. Its
        # numpy path warns that Kaldi's 128-bin mel bank has an empty low filter: that is the
        # bank AST was trained with, so the warning is silenced here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            self.features = ASTFeatureExtractor(sampling_rate=int(cfg.sample_rate),
                                                num_mel_bins=int(cfg.num_mel_bins),
                                                max_length=int(cfg.chunk_frames), mean=float(cfg.norm_mean),
                                                std=float(cfg.norm_std), do_normalize=True)
        expected = self.spec_for(cfg)["audio"][0][1:]
        got = (self.model.embeddings.position_embeddings.shape[1], self.model.config.hidden_size)
        if tuple(expected) != got:
            raise ValueError(f"audio config says tokens x dim = {tuple(expected)} but the model gives {got}")
        self.meta = {**meta, "architecture": type(model).__name__, "dtype": str(self.dtype).removeprefix("torch."),
                     "chunks": int(cfg.chunks), "chunk_frames": int(cfg.chunk_frames),
                     "norm": [float(cfg.norm_mean), float(cfg.norm_std)]}

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """features.audio: (chunks, 2 + freq * time patches, dim) float16."""
        freq, time = ast_grid(int(cfg.num_mel_bins), int(cfg.chunk_frames), int(cfg.patch_size),
                              int(cfg.frequency_stride), int(cfg.time_stride))
        return {"audio": ((int(cfg.chunks), 2 + freq * time, int(cfg.dim)), "float16")}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 mono samples -> float16 [chunks, tokens, dim]."""
        sr = int(self.cfg.sample_rate)
        # Samples spanned by chunk_frames frames of 25 ms every 10 ms.
        window = (int(self.cfg.chunk_frames) - 1) * sr // 100 + sr * 25 // 1000
        pieces = [audio[a:b] for a, b in chunk_windows(len(audio), int(self.cfg.chunks), window)]
        inputs = self.features(pieces, sampling_rate=sr, return_tensors="pt")["input_values"]
        hidden = self.model(input_values=inputs.to(self.device, self.dtype)).last_hidden_state
        return hidden.to(torch.float16).cpu().numpy()

    def __call__(self, batch: dict) -> dict:
        return add_audio_features(batch, self.cfg, self.encode, self.meta)


def add_audio_features(batch: dict, cfg, encode, meta: dict) -> dict:
    """features.audio = encode(samples) for every decoded video of a batch (any audio encoder);
    a video without a usable track gets an error entry for this stage instead."""
    min_samples = int(cfg.sample_rate) * 25 // 1000  # one fbank window
    for video in batch["videos"]:
        if video.get("failed"):
            continue
        audio = video.get("audio")
        if audio is None or len(audio) < min_samples:
            reason = "no audio stream" if audio is None else f"audio track too short ({len(audio)} samples)"
            video.setdefault("errors", []).append({"stage": cfg.name, "reason": reason})
            continue
        sr = video.get("audio_sr", cfg.sample_rate)
        if int(sr) != int(cfg.sample_rate):
            raise ValueError(f"video {video['video_id']}: audio at {sr} Hz, the audio stage needs "
                             f"{cfg.sample_rate} Hz (set the decoder's audio_sr)")
        video.setdefault("features", {})["audio"] = encode(np.asarray(audio, np.float32))
        video.setdefault("model_meta", {})[cfg.name] = dict(meta)
    return batch

"""BEATs (iter3+ AS2M), CREMA's audio encoder, written here (it is not in transformers) and
loading Microsoft's released checkpoint file as it is.

    make extract DATASET=music_avqa        (features=full: conf/extractor/audio_beats.yaml)

The released `BEATs_iter3_plus_AS2M.pt` is a torch pickle {"cfg": dict, "model": state dict};
the modules below carry the parameter names of that state dict, so it loads with strict=True.
Architecture (BEATs paper, arXiv 2212.09058; read from Microsoft's unilm/beats for understanding):
- 16x16 patches of the [frames, 128] fbank (Conv2d, no bias) -> LayerNorm(512) -> Linear 512->768;
  frames x bins patches in time-major order: 512 frames x 128 bins -> 32 x 8 = 256 tokens;
- a convolutional position encoding (grouped Conv1d, kernel 128, weight-normalised over the
  kernel axis, the last output frame dropped, GELU) added to the tokens, then LayerNorm;
- 12 post-LayerNorm Transformer layers with DeepNorm residual scaling ((2 x layers)^(1/4)),
  bucketed relative position bias (one table shared by all layers) scaled per query by a gate
  computed from the query ("gated relative position", as in WavLM).

Front end (the reference's `BeatsAudioProcessor`): 16 kHz mono scaled to 16-bit range, Kaldi
fbank (128 bins, 25 ms povey window, 10 ms hop, pre-emphasis 0.97, no dither), normalised
(x - 15.41663) / (2 x 6.55582), zero-padded AFTER normalisation to whole 512-frame chunks; its
training processor takes the first `chunks` x 512 frames (`placement: start`).
Adds features.audio float16 [chunks, 256, 768].
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.hub import ModelUnavailableError, seeded
from core.util import file_sha256, to_plain
from extractors import hub
from extractors.audio import add_audio_features, chunk_windows

# The download the README of Microsoft's unilm/beats links (a signed URL valid until 2033).
BEATS_URL = ("https://valle.blob.core.windows.net/share/BEATs/BEATs_iter3_plus_AS2M.pt?sv=2020-08-04"
             "&st=2023-03-01T07%3A51%3A05Z&se=2033-03-02T07%3A51%3A00Z&sr=c&sp=rl"
             "&sig=QJXmSJG9DbMKf48UDIU1MfzIro8HQOf3sqlNXiflY1I%3D")
PLACEMENTS = ("start", "spread")  # see conf/extractor/audio_beats.yaml
KALDI_EPS = float(np.finfo(np.float32).eps)  # Kaldi's log floor on mel energies


@dataclass
class BeatsConfig:
    """The architecture keys of a released checkpoint's `cfg` (defaults: iter3+ AS2M). Training-only
    keys (dropouts, layer drop, gradient decay) are not needed for inference and are ignored."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = False

    @classmethod
    def from_dict(cls, cfg: dict) -> "BeatsConfig":
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in cfg.items() if k in known})
        if out.activation_fn != "gelu":
            raise ValueError(f"BEATs activation_fn={out.activation_fn!r}: only gelu (every released BEATs) is built")
        return out


# ---------------------------------------------------------------------- modules


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is g * v / |v|, the norm taken per kernel position (weight_norm, dim=2),
    stored as the released file stores it (weight_g [1, 1, K], weight_v, bias)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.groups, self.padding = groups, kernel // 2
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel * channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.weight_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
        weight = self.weight_v * (self.weight_g / norm)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


def relative_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """[L, L] bucket of (key - query) offsets: half the buckets per direction, exact up to a
    quarter of them, logarithmic up to max_distance, clamped beyond."""
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    exact = half // 2
    side = (rel > 0).long() * half
    dist = rel.abs()
    far = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return side + torch.where(dist < exact, dist, far)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with a (gated) bucketed relative position bias."""

    def __init__(self, cfg: BeatsConfig, *, owns_table: bool):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.cfg = cfg
        if cfg.relative_position_embedding and owns_table:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def position_bias(self, length: int, device) -> torch.Tensor:
        """[H, L, L] bias from the shared bucket table."""
        buckets = relative_buckets(length, self.cfg.num_buckets, self.cfg.max_distance, device)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def _gate(self, q: torch.Tensor) -> torch.Tensor:
        """[B, H, L, 1] per-query scale of the position bias, from the unscaled query."""
        b, h, n, _ = q.shape
        a, c = torch.sigmoid(self.grep_linear(q).view(b, h, n, 2, 4).sum(-1)).chunk(2, dim=-1)
        return a * (c * self.grep_a - 1.0) + 2.0

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        # Scores as the released model computes them: scaled down by 32, max-subtracted, scaled
        # back: the same softmax, but no fp16 overflow in q.k.
        scores = (q * (self.head_dim ** -0.5 / 32)) @ k.transpose(-1, -2)
        scores = (scores - scores.amax(dim=-1, keepdim=True)) * 32
        if bias is not None:
            scores = scores + (self._gate(q) * bias if self.cfg.gru_rel_pos else bias)
        attn = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Self-attention + GELU FFN, post-LayerNorm with DeepNorm residual scaling (or pre-LN)."""

    def __init__(self, cfg: BeatsConfig, *, owns_table: bool):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = RelativeSelfAttention(cfg, owns_table=owns_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.pre_norm = cfg.layer_norm_first
        self.alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x).float()).to(x.dtype))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(self.self_attn_layer_norm(x), bias)
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, bias))
        return self.final_layer_norm(x * self.alpha + self._ffn(x))


class BeatsEncoder(nn.Module):
    """Convolutional position encoding + the Transformer layers."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups))
        self.trim = 1 if cfg.conv_pos % 2 == 0 else 0  # an even kernel yields one extra frame
        self.layers = nn.ModuleList(EncoderLayer(cfg, owns_table=i == 0) for i in range(cfg.encoder_layers))
        table = getattr(self.layers[0].self_attn, "relative_attention_bias", None)
        for layer in list(self.layers)[1:]:
            if table is not None:  # ONE table: the released file lists it under every layer
                layer.self_attn.relative_attention_bias = table
        self.layer_norm = nn.LayerNorm(dim)
        self.pre_norm = cfg.layer_norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_conv(x.transpose(1, 2))
        pos = pos[..., : pos.shape[-1] - self.trim]
        x = x + F.gelu(pos).transpose(1, 2)
        if not self.pre_norm:
            x = self.layer_norm(x)
        first = self.layers[0].self_attn
        bias = first.position_bias(x.shape[1], x.device) if hasattr(first, "relative_attention_bias") else None
        if bias is not None:
            bias = bias.to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return self.layer_norm(x) if self.pre_norm else x


class Beats(nn.Module):
    """BEATs: normalised fbank [B, frames, bins] -> tokens [B, frames/16 * bins/16, dim]."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.encoder = BeatsEncoder(cfg)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(fbank.unsqueeze(1)).flatten(2).transpose(1, 2)
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x)


# ---------------------------------------------------------------------- loading


def beats_file(cfg) -> Path:
    """Where the released checkpoint lies: resources.local_path (a file, or a folder holding
    `checkpoint_file`)."""
    res = cfg.get("resources") or {}
    path = Path(str(res.get("local_path") or "models/beats")).expanduser()
    return path / cfg.checkpoint_file if path.is_dir() or not path.suffix else path


def missing_weights(path: Path, cfg) -> ModelUnavailableError:
    """The error for a checkpoint that is not there: which file, where to get it, the key to set."""
    name = cfg.checkpoint_file
    return ModelUnavailableError("\n".join([
        f"BEATs checkpoint {name} is not available: no file at {path.resolve()}.",
        "BEATs is not on the Hugging Face hub; download it (Microsoft unilm/beats README) on a machine with network:",
        f"    mkdir -p models/beats && curl -L -o models/beats/{name} '{BEATS_URL}'",
        "Then copy it here and point the config at it, e.g.",
        f"    features.extractors.audio.resources.local_path=models/beats/{name}",
        "or choose the AST audio encoder instead: extractor@features.extractors.audio=audio",
    ]))


def load_beats(path: Path) -> tuple[Beats, dict]:
    """(BEATs with the file's weights loaded strictly, its provenance). The file is read with
    weights_only=True: a checkpoint that needs arbitrary unpickling is refused."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, HTML error page saved as .pt, ...
        raise ModelUnavailableError(f"{path} is not a readable BEATs checkpoint ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); download it again") from None
    if not isinstance(ckpt, dict) or not {"cfg", "model"} <= set(ckpt):
        raise ModelUnavailableError(f"{path} is not a BEATs checkpoint: expected a dict with 'cfg' and 'model'")
    cfg = BeatsConfig.from_dict(ckpt["cfg"])
    with torch.device("meta"):
        model = Beats(cfg)
    # A fine-tuned BEATs also carries its AudioSet classifier: not needed for features.
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("predictor.")}
    own = set(model.state_dict())
    missing, unknown = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unknown:
        raise ModelUnavailableError(f"{path} is not in the BEATs layout its cfg describes: {len(missing)} missing keys "
                                    f"{missing[:4]}, {len(unknown)} unknown keys {unknown[:4]}; is it a BEATs checkpoint?")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # a shape that its cfg does not give
        raise ModelUnavailableError(f"{path}: {str(exc).splitlines()[-1].strip()[:300]}") from None
    meta = {"model_id": "microsoft/BEATs", "revision": path.name, "resolved_revision": f"sha256:{file_sha256(path)}",
            "source": str(path)}
    return model.eval(), meta


def build_random(cfg) -> Beats:
    """BEATs of `cfg.random_init.model`'s architecture (BeatsConfig's defaults: iter3+ AS2M), seeded."""
    spec = to_plain(cfg.random_init)
    with seeded(cfg.seed):
        return Beats(BeatsConfig.from_dict((spec.get("model") if isinstance(spec, dict) else None) or {})).eval()


@functools.lru_cache(maxsize=4)
def _kaldi_bank(sample_rate: int, num_mel_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(povey window, Kaldi mel filters) for 25 ms frames, built once per process."""
    from transformers.audio_utils import mel_filter_bank, window_function

    frame = sample_rate * 25 // 1000
    fft = 1 << (frame - 1).bit_length()
    with warnings.catch_warnings():
        # Kaldi's 128-bin bank has an empty lowest filter at 16 kHz: it is the bank BEATs was trained on.
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        mel = mel_filter_bank(num_frequency_bins=fft // 2 + 1, num_mel_filters=num_mel_bins, min_frequency=20.0,
                              max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm=None,
                              mel_scale="kaldi", triangularize_in_mel_space=True)
    return window_function(frame, "povey", periodic=False), mel


def kaldi_fbank(samples: np.ndarray, sample_rate: int, num_mel_bins: int) -> np.ndarray:
    """[frames, bins] log-mel fbank as Kaldi (and torchaudio.compliance.kaldi.fbank's defaults)
    compute it: 16-bit range input, 25 ms povey window, 10 ms hop, DC removed and pre-emphasis
    0.97 per frame, 512-point FFT, power spectrum, Kaldi mel bank from 20 Hz, log floored at eps."""
    from transformers.audio_utils import spectrogram

    frame, hop = sample_rate * 25 // 1000, sample_rate * 10 // 1000
    if len(samples) < frame:
        return np.zeros((0, num_mel_bins), np.float32)
    window, mel = _kaldi_bank(sample_rate, num_mel_bins)
    spec = spectrogram(samples.astype(np.float64) * 32768.0, window, frame_length=frame, hop_length=hop,
                       fft_length=1 << (frame - 1).bit_length(), power=2.0, center=False, preemphasis=0.97,
                       mel_filters=mel, log_mel="log", mel_floor=KALDI_EPS, remove_dc_offset=True,
                       dtype=np.float64)
    return spec.T.astype(np.float32)


def start_windows(num_samples: int, chunks: int, frames: int, sample_rate: int) -> list[tuple[int, int]]:
    """(start, stop) samples of `chunks` consecutive `frames`-frame windows from the clip's start."""
    hop, frame = sample_rate * 10 // 1000, sample_rate * 25 // 1000
    span = (frames - 1) * hop + frame
    return [(min(c * frames * hop, num_samples), min(c * frames * hop + span, num_samples)) for c in range(chunks)]


class BeatsExtractor:
    """BEATs token features for `chunks` 512-frame fbank windows of each video's audio track."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device, self.dtype, _, _ = hub.runtime(cfg)
        path = beats_file(cfg)
        if cfg.get("random_init"):  # weights=random: the same architecture, seeded random weights
            model, meta = build_random(cfg), hub.random_init_meta(Beats, cfg)
        elif not path.is_file():
            raise missing_weights(path, cfg)
        else:
            model, meta = load_beats(path)
        expected = self.spec_for(cfg)["audio"][0][1:]
        p, dim = model.cfg.input_patch_size, model.cfg.encoder_embed_dim
        got = ((int(cfg.chunk_frames) // p) * (int(cfg.num_mel_bins) // p), dim)
        if tuple(expected) != got:
            raise ValueError(f"audio config says tokens x dim = {tuple(expected)} but {path} gives {got} "
                             f"(patch {p}, width {dim}): set features.extractors.audio.patch_size / dim")
        self.model = model.to(self.device, self.dtype)
        self.meta = {**meta, "architecture": "BEATs", "dtype": str(self.dtype).removeprefix("torch."),
                     "chunks": int(cfg.chunks), "chunk_frames": int(cfg.chunk_frames),
                     "placement": str(cfg.placement), "norm": [float(cfg.norm_mean), float(cfg.norm_std)]}

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """features.audio: (chunks, frames/patch x bins/patch, dim) float16."""
        if cfg.placement not in PLACEMENTS:
            raise ValueError(f"features.extractors.audio.placement={cfg.placement!r}: choose from {list(PLACEMENTS)}")
        p = int(cfg.patch_size)
        tokens = (int(cfg.chunk_frames) // p) * (int(cfg.num_mel_bins) // p)
        return {"audio": ((int(cfg.chunks), tokens, int(cfg.dim)), "float16")}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    def fbank_chunks(self, audio: np.ndarray) -> torch.Tensor:
        """[chunks, chunk_frames, bins]: normalised fbank windows, zero-padded after normalisation."""
        cfg, sr = self.cfg, int(self.cfg.sample_rate)
        frames, bins = int(cfg.chunk_frames), int(cfg.num_mel_bins)
        if cfg.placement == "start":
            windows = start_windows(len(audio), int(cfg.chunks), frames, sr)
        else:
            span = (frames - 1) * sr // 100 + sr * 25 // 1000
            windows = chunk_windows(len(audio), int(cfg.chunks), span)
        out = np.zeros((len(windows), frames, bins), np.float32)
        for i, (a, b) in enumerate(windows):
            fb = kaldi_fbank(audio[a:b], sr, bins)[:frames]
            out[i, : len(fb)] = (fb - float(cfg.norm_mean)) / (2 * float(cfg.norm_std))
        return torch.from_numpy(out)

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 mono samples -> float16 [chunks, tokens, dim]."""
        hidden = self.model(self.fbank_chunks(audio).to(self.device, self.dtype))
        return hidden.to(torch.float16).cpu().numpy()

    def __call__(self, batch: dict) -> dict:
        return add_audio_features(batch, self.cfg, self.encode, self.meta)

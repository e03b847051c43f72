"""BEATs (extractors/beats.py): the full-size architecture on the meta device, a checkpoint file in
the released layout ({'cfg': ..., 'model': state dict}, random weights) loaded strictly and run on
the audio track of a real test video, the reference's front end, the missing-weights error, and
the full features preset choosing it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core.hub import ModelUnavailableError
from extractors.beats import Beats, BeatsConfig, BeatsExtractor, kaldi_fbank, relative_buckets
from media import write_video
from pipeline.decode import decode_audio
from presets import CONF, extractor_preset

ITER3_PLUS = {  # the `cfg` of BEATs_iter3_plus_AS2M.pt that the architecture depends on
    "input_patch_size": 16, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
    "deep_norm": True, "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True,
    "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True, "finetuned_model": False,
    # training-only keys the released cfg also carries
    "dropout": 0.0, "attention_dropout": 0.0, "encoder_layerdrop": 0.05, "layer_wise_gradient_decay_ratio": 0.6,
}
TINY = {**ITER3_PLUS, "embed_dim": 24, "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 48,
        "encoder_attention_heads": 4, "conv_pos": 8, "conv_pos_groups": 4, "num_buckets": 32, "max_distance": 64}


def released_layout(c: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released BEATs state dict, written out from Microsoft's unilm/beats modules
    (BEATs, TransformerEncoder, TransformerSentenceEncoderLayer, MultiheadAttention): the shared
    relative-position table appears under every layer, the weight-normed position conv as g and v."""
    e, d, f, h, k = c["embed_dim"], c["encoder_embed_dim"], c["encoder_ffn_embed_dim"], c["encoder_attention_heads"], \
        c["conv_pos"]
    p = c["input_patch_size"]
    out = {"patch_embedding.weight": (e, 1, p, p), "layer_norm.weight": (e,), "layer_norm.bias": (e,),
           "post_extract_proj.weight": (d, e), "post_extract_proj.bias": (d,),
           "encoder.pos_conv.0.weight_g": (1, 1, k), "encoder.pos_conv.0.weight_v": (d, d // c["conv_pos_groups"], k),
           "encoder.pos_conv.0.bias": (d,), "encoder.layer_norm.weight": (d,), "encoder.layer_norm.bias": (d,)}
    for i in range(c["encoder_layers"]):
        a = f"encoder.layers.{i}.self_attn"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{a}.{proj}.weight"], out[f"{a}.{proj}.bias"] = (d, d), (d,)
        out[f"{a}.relative_attention_bias.weight"] = (c["num_buckets"], h)
        out[f"{a}.grep_linear.weight"], out[f"{a}.grep_linear.bias"], out[f"{a}.grep_a"] = (8, d // h), (8,), (1, h, 1, 1)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            out[f"encoder.layers.{i}.{ln}.weight"] = out[f"encoder.layers.{i}.{ln}.bias"] = (d,)
        out[f"encoder.layers.{i}.fc1.weight"], out[f"encoder.layers.{i}.fc1.bias"] = (f, d), (f,)
        out[f"encoder.layers.{i}.fc2.weight"], out[f"encoder.layers.{i}.fc2.bias"] = (d, f), (d,)
    return out


def write_released(path, cfg: dict, seed: int = 0) -> dict:
    """A random-weight checkpoint file in the released layout; returns its state dict."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) * 0.2 for k, shape in released_layout(cfg).items()}
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    for i in range(1, cfg["encoder_layers"]):  # one shared table, saved once per layer
        state[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = table.clone()
    for k in state:
        if k.endswith("norm.weight"):
            state[k] = 1 + state[k]
    torch.save({"cfg": cfg, "model": state}, path)
    return state


def beats_config(local_path, **overrides):
    cfg = extractor_preset("audio_beats")
    cfg.resources.device = "cpu"
    cfg.resources.local_path = str(local_path)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_full_size_beats_has_90m_parameters_and_gives_2_x_256_x_768():
    # Shape arithmetic of iter3+ (patch 16, 512 -> 768, 12 layers of 768/3072, conv 128/16 groups):
    patch = 512 * 16 * 16 + 2 * 512 + 512 * 768 + 768
    pos_conv = 768 * 48 * 128 + 128 + 768
    layer = 4 * (768 * 768 + 768) + (64 * 8 + 8) + 12 + 2 * 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768)
    expected = patch + pos_conv + 12 * layer + 320 * 12 + 2 * 768  # the relative table counted once
    with torch.device("meta"):
        model = Beats(BeatsConfig.from_dict(ITER3_PLUS))
        tokens = model(torch.empty(2, 512, 128))
    assert sum(p.numel() for p in model.parameters()) == expected == 90_311_792
    assert set(model.state_dict()) == set(released_layout(ITER3_PLUS))
    assert all(tuple(v.shape) == released_layout(ITER3_PLUS)[k] for k, v in model.state_dict().items())
    assert tuple(tokens.shape) == (2, 256, 768)
    assert BeatsExtractor.spec_for(extractor_preset("audio_beats"))["audio"] == ((2, 256, 768), "float16")


def test_relative_buckets_are_exact_near_and_logarithmic_far():
    b = relative_buckets(1000, 320, 800)
    assert b[0, 0] == 0 and b[5, 4] == 1 and b[4, 5] == 161          # exact within 80, keys after: +160
    assert b[0, 79] == 160 + 79 and b[0, 80] == 160 + 80             # log region starts at 80
    assert b[0, 999] == b[0, 800] == 319 and b[999, 0] == 159         # clamped at max_distance
    assert torch.all(b[0, 81:800].diff() >= 0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The audio track of a real test video (4 s of a 440 Hz tone, AAC), decoded as extraction does."""
    path = write_video(tmp_path_factory.mktemp("beats") / "tone.mp4", frames=40, fps=10)
    audio, reason = decode_audio(str(path), 16000)
    assert reason is None and len(audio) > 60_000
    return audio


def test_a_released_layout_file_loads_strictly_and_encodes_a_real_audio_track(tmp_path, clip):
    path = tmp_path / "BEATs_iter3_plus_AS2M.pt"
    write_released(path, TINY)
    ext = BeatsExtractor(beats_config(tmp_path, dim=32))  # a folder: the preset's file name inside it
    batch = {"videos": [{"video_id": "tone", "audio": clip, "audio_sr": 16000}]}
    feats = ext(batch)["videos"][0]["features"]["audio"]
    assert feats.shape == (2, 256, 32) and feats.dtype == np.float16 and np.isfinite(feats).all()
    # 4 s of sound fill chunk 0 (5.12 s) partly; chunk 1 is all padding: they must differ
    assert np.abs(feats[0].astype(np.float32) - feats[1].astype(np.float32)).mean() > 1e-2
    meta = batch["videos"][0]["model_meta"]["audio"]
    assert meta["architecture"] == "BEATs" and meta["resolved_revision"].startswith("sha256:")
    # the weights came from the file: another file gives other features
    write_released(path, TINY, seed=1)
    other = BeatsExtractor(beats_config(path, dim=32)).encode(clip)
    assert np.abs(other.astype(np.float32) - feats.astype(np.float32)).max() > 1e-2


def test_the_front_end_is_the_references_normalised_fbank_zero_padded_after(tmp_path, clip):
    write_released(tmp_path / "b.pt", TINY)
    ext = BeatsExtractor(beats_config(tmp_path / "b.pt", dim=32))
    chunks = ext.fbank_chunks(clip).numpy()
    full = (kaldi_fbank(clip, 16000, 128) - 15.41663) / (2 * 6.55582)
    n = len(full)
    assert chunks.shape == (2, 512, 128) and 300 < n < 512
    np.testing.assert_allclose(chunks[0, :n], full, atol=1e-5)   # chunk 0: the clip's first frames
    assert not chunks[0, n:].any() and not chunks[1].any()        # then zeros AFTER normalisation


def test_a_file_in_another_layout_is_refused_by_name(tmp_path):
    state = write_released(tmp_path / "b.pt", TINY)
    del state["encoder.layers.1.fc2.bias"]
    torch.save({"cfg": TINY, "model": state}, tmp_path / "b.pt")
    with pytest.raises(ModelUnavailableError, match="1 missing keys .*encoder.layers.1.fc2.bias"):
        BeatsExtractor(beats_config(tmp_path / "b.pt", dim=32))


def test_missing_weights_name_the_file_the_download_and_the_config_key(tmp_path):
    with pytest.raises(ModelUnavailableError) as info:
        BeatsExtractor(beats_config(tmp_path / "nowhere"))
    msg = str(info.value)
    assert f"no file at {tmp_path / 'nowhere' / 'BEATs_iter3_plus_AS2M.pt'}" in msg
    assert "curl -L -o models/beats/BEATs_iter3_plus_AS2M.pt 'https://valle.blob.core.windows.net/share/BEATs/" in msg
    assert "features.extractors.audio.resources.local_path=models/beats/BEATs_iter3_plus_AS2M.pt" in msg


def test_the_full_preset_extracts_audio_with_beats_and_tiny_keeps_ast():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        full = compose(config_name="extract", overrides=["dataset=music_avqa", "features=full"])
        tiny = compose(config_name="extract", overrides=["dataset=demo", "features=tiny"])
    assert full.features.extractors.audio._target_ == "extractors.beats.BeatsExtractor"
    assert full.features.extractors.audio.norm_mean == 15.41663
    assert tiny.features.extractors.audio._target_ == "extractors.audio.AudioExtractor"

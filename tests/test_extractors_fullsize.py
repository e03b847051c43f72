"""Full-size architectures, built on the meta device (no weights, no memory): the shapes and
parameter counts docs/models.md states, and agreement with what the full presets declare."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from presets import extractor_preset
from extractors.audio import AudioExtractor, adapt_length
from extractors.encoder import EncoderExtractor

CONF = Path(__file__).resolve().parents[1] / "conf" / "extractor"

# BLIP-2's EVA-CLIP ViT-g as configured in Salesforce/blip2-flan-t5-xl (39 of EVA's 40 blocks).
VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
             image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True)
# ZoeD-NK: BEiT-L/384 backbone, two metric bin heads (NYU 10 m, KITTI 80 m) and the router.
ZOE_NK = dict(bin_configurations=[{"name": "nyu", "n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0},
                                  {"name": "kitti", "n_bins": 64, "min_depth": 1e-3, "max_depth": 80.0}],
              num_patch_transformer_layers=4, patch_transformer_hidden_size=128,
              patch_transformer_intermediate_size=1024, patch_transformer_num_attention_heads=4)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preset(name: str):
    cfg = extractor_preset(name)
    cfg.num_frames_stored = 16
    return cfg


def test_vit_g_gives_257_by_1408_tokens_and_986m_parameters():
    from transformers import Blip2VisionConfig, Blip2VisionModel

    with torch.device("meta"):
        vit = Blip2VisionModel(Blip2VisionConfig(**VIT_G))
        tokens = vit.encoder(inputs_embeds=vit.embeddings(torch.empty(2, 3, 224, 224))).last_hidden_state
    assert tuple(tokens.shape) == (2, 257, 1408)
    assert count(vit) == 985_952_256
    spec = EncoderExtractor.spec_for(preset("encoder"))
    assert spec["rgb"] == ((16, 257, 1408), "float16") and set(spec) == {"rgb", "depth", "flow", "normal"}
    assert EncoderExtractor.tokens_of(vit.config) == 257


def test_ast_with_512_frame_chunks_gives_602_tokens_of_768():
    from transformers import ASTConfig, ASTModel

    with torch.device("meta"):
        source = ASTModel(ASTConfig())  # the AudioSet checkpoint's architecture: 1024 frames
    assert count(source) == 86_187_264 and source.embeddings.position_embeddings.shape[1] == 1214
    model = adapt_length(source, 512)
    with torch.device("meta"):
        hidden = model(input_values=torch.empty(2, 512, 128)).last_hidden_state
    assert tuple(hidden.shape) == (2, 602, 768)
    assert count(model) == 86_187_264 - (1214 - 602) * 768
    assert AudioExtractor.spec_for(preset("audio"))["audio"] == ((2, 602, 768), "float16")


def test_zoedepth_nyu_kitti_has_two_bin_heads_and_335m_parameters():
    from transformers import ZoeDepthConfig, ZoeDepthForDepthEstimation

    with torch.device("meta"):
        model = ZoeDepthForDepthEstimation(ZoeDepthConfig(**ZOE_NK))
    assert set(model.metric_head.seed_bin_regressors) == {"nyu", "kitti"}
    assert count(model) == 334_560_859
    assert count(model.backbone) > 300_000_000  # BEiT-L carries most of it


def test_depth_anything_v2_metric_small_has_its_published_24_8m_parameters():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            image_size=518, patch_size=14, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
            reassemble_hidden_size=384, head_hidden_size=32, depth_estimation_type="metric", max_depth=20))
    assert count(model) == 24_785_089


@pytest.mark.parametrize("arch, weights", [("raft_large", "C_T_SKHT_V2"), ("raft_small", "C_T_V2")])
def test_raft_parameter_counts_match_torchvision_weight_metadata(arch, weights):
    from torchvision.models import optical_flow

    enum = getattr(optical_flow, {"raft_large": "Raft_Large_Weights", "raft_small": "Raft_Small_Weights"}[arch])
    with torch.device("meta"):
        model = getattr(optical_flow, arch)(weights=None)
    assert count(model) == enum[weights].meta["num_params"]
    if arch == "raft_large":
        assert preset("flow_raft").raft.weights == weights

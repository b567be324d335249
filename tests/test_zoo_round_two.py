"""The LoRA zoo, round two (issue 26): more transformers architectures from small configs, torchvision
video and segmentation models, and Wav2Vec2 (a positional conv under ``parametrizations.weight_norm``).

Each goes through the checks of ``tests/zoo_check.py`` (as ``tests/test_zoo.py``): ``lora_all(model, r=4,
example_input=x)`` -> attach -> identity at init -> one training step moves every LoRA and no base
parameter -> merged == unmerged (tied weights: ``merge(untie=True)``) -> unmerge and detach exact.

Run ``python tests/test_zoo_round_two.py [names]`` to print each model's result and time.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest
import torch
from torch import nn
from zoo_check import Entry, ids, image, params, report, run_zoo_model, tiny_wav2vec2, tv_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # within the tiny vocabulary
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
DECODER = dict(SIZES, max_position_embeddings=32)
ENCODER = dict(SIZES, max_position_embeddings=40)  # (RoBERTa's positions start after padding_idx)
GQA = dict(DECODER, num_key_value_heads=1)  # grouped KV heads where the architecture has them
SEQ2SEQ_SIZES = dict(
    vocab_size=64,
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
)
OPT = dict(
    vocab_size=64,
    hidden_size=32,
    ffn_dim=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=32,
    word_embed_proj_dim=32,
)
DISTILBERT = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32)
HF_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=8,
)
HF_SWIN = dict(
    image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=8
)
WHISPER = dict(
    SEQ2SEQ_SIZES,
    num_mel_bins=16,
    max_source_positions=16,
    max_target_positions=32,
    decoder_start_token_id=1,
    **TOKENS,
)
SEGMENTATION = dict(weights_backbone=None, num_classes=4)


def _hf(model_class: str, config_class: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**kw))

    return build


def _clip() -> nn.Module:
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            **TOKENS,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    return transformers.CLIPModel(cfg)


_wav2vec2 = tiny_wav2vec2


TEXT = lambda: {"input_ids": ids(2, 8)}  # noqa: E731
SEQ2SEQ = lambda: {"input_ids": ids(2, 8), "decoder_input_ids": ids(2, 5)}  # noqa: E731
PIXELS = lambda: {"pixel_values": image(1, 3, 32, 32)()}  # noqa: E731
CLIP_IN = lambda: {"input_ids": ids(2, 8), "pixel_values": image(1, 3, 32, 32)()}  # noqa: E731
AUDIO = lambda: {"input_values": image(1, 800)()}  # noqa: E731
WHISPER_IN = lambda: {"input_features": image(1, 16, 32)(), "decoder_input_ids": ids(1, 5)}  # noqa: E731

ZOO_TWO: list[Entry] = [
    ("hf/llama", _hf("LlamaForCausalLM", "LlamaConfig", **GQA), TEXT, False, False),
    ("hf/mistral", _hf("MistralForCausalLM", "MistralConfig", **GQA), TEXT, False, False),
    ("hf/qwen2", _hf("Qwen2ForCausalLM", "Qwen2Config", **GQA), TEXT, False, False),
    ("hf/gemma", _hf("GemmaForCausalLM", "GemmaConfig", head_dim=16, **GQA), TEXT, True, False),
    ("hf/phi3", _hf("Phi3ForCausalLM", "Phi3Config", **TOKENS, **DECODER), TEXT, False, False),
    ("hf/opt", _hf("OPTForCausalLM", "OPTConfig", **OPT), TEXT, True, False),
    ("hf/gpt_neox", _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **DECODER), TEXT, False, False),
    (
        "hf/bloom",
        _hf("BloomForCausalLM", "BloomConfig", vocab_size=64, hidden_size=32, n_layer=2, n_head=2),
        TEXT,
        True,
        False,
    ),
    ("hf/falcon", _hf("FalconForCausalLM", "FalconConfig", **SIZES), TEXT, True, False),
    ("hf/roberta", _hf("RobertaForSequenceClassification", "RobertaConfig", **ENCODER), TEXT, False, False),
    (
        "hf/distilbert",
        _hf("DistilBertForSequenceClassification", "DistilBertConfig", **DISTILBERT),
        TEXT,
        False,
        False,
    ),
    (
        "hf/albert",
        _hf("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16, **ENCODER),
        TEXT,
        False,
        False,
    ),
    (
        "hf/deberta_v2",
        _hf("DebertaV2ForSequenceClassification", "DebertaV2Config", **ENCODER),
        TEXT,
        False,
        False,
    ),
    (
        "hf/bart",
        _hf("BartForConditionalGeneration", "BartConfig", max_position_embeddings=32, **SEQ2SEQ_SIZES),
        SEQ2SEQ,
        True,
        False,
    ),
    ("hf/vit", _hf("ViTForImageClassification", "ViTConfig", **HF_VIT), PIXELS, False, False),
    (
        "hf/convnext",
        _hf(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            num_labels=8,
        ),
        PIXELS,
        False,
        False,
    ),
    ("hf/swin", _hf("SwinForImageClassification", "SwinConfig", **HF_SWIN), PIXELS, False, False),
    ("hf/clip", _clip, CLIP_IN, False, False),
    ("hf/wav2vec2", _wav2vec2, AUDIO, False, False),
    (
        "hf/whisper",
        _hf("WhisperForConditionalGeneration", "WhisperConfig", **WHISPER),
        WHISPER_IN,
        True,
        False,
    ),
    ("tv/r3d_18", tv_model("video.r3d_18", num_classes=8), image(1, 3, 4, 32, 32), False, False),
    (
        "tv/lraspp_mobilenet_v3_large",
        tv_model("segmentation.lraspp_mobilenet_v3_large", **SEGMENTATION),
        image(1, 3, 64, 64),
        False,
        False,
    ),
    (
        "tv/deeplabv3_mobilenet_v3_large",
        tv_model("segmentation.deeplabv3_mobilenet_v3_large", aux_loss=False, **SEGMENTATION),
        image(1, 3, 64, 64),
        False,
        False,
    ),
]

# ---- issue 26, items 2 and 3: shared modules and experts (more such models go HERE, in this list) --------
# - a module shared by several parents: timm "coat_lite_tiny" (item 2, merged) is in tests/test_zoo.py;
# - mixture-of-experts with fused 3-D expert parameters (item 3, merged): a tiny Mixtral and a tiny
#   Qwen2-MoE, whose experts lora_all reaches with param= (the adapt_weight LoRAs: gate_up_proj, down_proj).
MOE = dict(GQA, num_experts_per_tok=2)
SHARED_AND_EXPERTS: list[Entry] = [
    (
        "hf/mixtral",
        _hf("MixtralForCausalLM", "MixtralConfig", num_local_experts=4, **MOE),
        TEXT,
        False,
        False,
    ),
    (
        "hf/qwen2_moe",
        _hf(
            "Qwen2MoeForCausalLM",
            "Qwen2MoeConfig",
            num_experts=4,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            **MOE,
        ),
        TEXT,
        False,
        False,
    ),
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, build, make_input, tied", params(ZOO_TWO + SHARED_AND_EXPERTS))
def test_lora_all_end_to_end_round_two(name, build, make_input, tied):
    run_zoo_model(build, make_input, tied)


def test_round_two_covers_the_architectures_of_issue_26():
    names = {n for n, *_ in ZOO_TWO}
    for arch in (
        "llama",
        "mistral",
        "qwen2",
        "gemma",
        "phi3",
        "opt",
        "gpt_neox",
        "bloom",
        "falcon",
        "roberta",
        "distilbert",
        "albert",
        "deberta_v2",
        "bart",
        "vit",
        "convnext",
        "swin",
        "clip",
        "wav2vec2",
        "whisper",
    ):
        assert f"hf/{arch}" in names
    assert sum(n.startswith("tv/") for n in names) >= 3


def test_wav2vec2_in_the_zoo_is_parametrized():
    conv = _wav2vec2().wav2vec2.encoder.pos_conv_embed.conv
    assert torch.nn.utils.parametrize.is_parametrized(conv, "weight")


if __name__ == "__main__":
    import sys

    report(ZOO_TWO + SHARED_AND_EXPERTS, sys.argv[1:])

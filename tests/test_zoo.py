"""The LoRA zoo: ``lora_all`` end to end on 44 architectures from timm, torchvision and transformers.

Each model (smallest variant or a small config of the same classes, random weights, small input) goes
through ``strategies.lora_all(model, r=4, example_input=x)`` -> ``attach`` and the four checks of
``tests/zoo_check.py`` (identity at init, one training step moves every LoRA and no base parameter,
merged == unmerged, unmerge and detach exact). ``tests/test_zoo_round_two.py`` runs the same checks on
more architectures.

Run ``python tests/test_zoo.py`` to print each model's result and time.
"""

from __future__ import annotations

import os

import pytest
from torch import nn
from zoo_check import Entry, ids, image, output, params, report, run_zoo_model, timm_model, tv_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

IMG = (1, 3, 64, 64)


# the short names this file (and tests/test_roundtrip_law.py, which imports them) use
_timm, _tv, _ids, _img, _out = timm_model, tv_model, ids, image, output


def _tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=8
    )


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertForSequenceClassification(cfg)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def _t5() -> nn.Module:
    cfg = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0
    )
    return transformers.T5ForConditionalGeneration(cfg)


TEXT = lambda: {"input_ids": _ids(2, 8)}  # noqa: E731
SEQ2SEQ = lambda: {"input_ids": _ids(2, 8), "decoder_input_ids": _ids(2, 5)}  # noqa: E731
SMALL_VIT = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)

# (id, model builder, input builder, tied weights, slow)
ZOO: list[Entry] = [
    ("timm/vit_tiny", _timm("vit_tiny_patch16_224", img_size=64, depth=2), _img(*IMG), False, False),
    ("timm/deit_tiny", _timm("deit_tiny_patch16_224", img_size=64, depth=2), _img(*IMG), False, False),
    (
        "timm/swin_tiny",
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=64,
            window_size=4,
            embed_dim=32,
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 2, 4),
        ),
        _img(*IMG),
        False,
        False,
    ),
    ("timm/convnext_atto", _timm("convnext_atto"), _img(*IMG), False, False),
    ("timm/efficientnet_b0", _timm("efficientnet_b0"), _img(*IMG), False, False),
    ("timm/tf_efficientnet_b0", _timm("tf_efficientnet_b0"), _img(*IMG), False, False),
    ("timm/mobilenetv3_small_050", _timm("mobilenetv3_small_050"), _img(*IMG), False, False),
    ("timm/regnetx_002", _timm("regnetx_002"), _img(*IMG), False, False),
    ("timm/levit_128s", _timm("levit_128s", img_size=64), _img(*IMG), False, False),
    ("timm/maxvit_pico", _timm("maxvit_rmlp_pico_rw_256", img_size=64), _img(*IMG), False, False),
    ("timm/coatnet_nano", _timm("coatnet_nano_rw_224", img_size=64), _img(*IMG), False, False),
    ("timm/beit", _timm("beit_base_patch16_224", **SMALL_VIT), _img(*IMG), False, False),
    (
        "timm/eva02_tiny",
        _timm("eva02_tiny_patch14_224", img_size=56, depth=2),
        _img(1, 3, 56, 56),
        False,
        False,
    ),
    ("timm/mixer_s16", _timm("mixer_s16_224", img_size=64), _img(*IMG), False, False),
    ("timm/poolformer_s12", _timm("poolformer_s12"), _img(*IMG), False, False),
    (
        "timm/convit_tiny",
        _timm("convit_tiny", img_size=64, depth=2, local_up_to_layer=1),
        _img(*IMG),
        False,
        False,
    ),
    ("timm/pit_ti", _timm("pit_ti_224", img_size=64), _img(*IMG), False, False),
    ("timm/cait_xxs24", _timm("cait_xxs24_224", img_size=64, depth=2), _img(*IMG), False, False),
    ("timm/xcit_nano", _timm("xcit_nano_12_p16_224", img_size=64, depth=2), _img(*IMG), False, False),
    ("timm/pvt_v2_b0", _timm("pvt_v2_b0"), _img(*IMG), False, False),
    ("timm/mobilevit_xxs", _timm("mobilevit_xxs"), _img(*IMG), False, False),
    ("timm/edgenext_xx_small", _timm("edgenext_xx_small"), _img(*IMG), False, False),
    ("timm/ghostnet_050", _timm("ghostnet_050"), _img(*IMG), False, False),
    ("timm/repvgg_a0", _timm("repvgg_a0"), _img(*IMG), False, False),
    ("timm/mobileone_s0", _timm("mobileone_s0"), _img(*IMG), False, False),
    ("timm/fastvit_t8", _timm("fastvit_t8"), _img(*IMG), False, False),
    ("timm/nf_regnet_b0", _timm("nf_regnet_b0"), _img(*IMG), False, False),
    ("timm/lcnet_050", _timm("lcnet_050"), _img(*IMG), False, False),
    ("timm/efficientformerv2_s0", _timm("efficientformerv2_s0", img_size=64), _img(*IMG), False, False),
    ("timm/resmlp_12", _timm("resmlp_12_224", img_size=64), _img(*IMG), False, False),
    ("timm/hiera_tiny", _timm("hiera_tiny_224", img_size=64), _img(*IMG), False, False),
    ("timm/mambaout_femto", _timm("mambaout_femto"), _img(*IMG), False, False),
    ("timm/inception_next_atto", _timm("inception_next_atto"), _img(*IMG), False, False),
    ("timm/coat_lite_tiny", _timm("coat_lite_tiny", img_size=64), _img(*IMG), False, False),
    ("tv/resnet18", _tv("resnet18"), _img(*IMG), False, False),
    ("tv/mobilenet_v3_small", _tv("mobilenet_v3_small"), _img(*IMG), False, False),
    ("tv/efficientnet_b0", _tv("efficientnet_b0"), _img(*IMG), False, False),
    ("tv/vit_small_config", _tv_vit, _img(1, 3, 32, 32), False, False),
    ("tv/convnext_tiny", _tv("convnext_tiny"), _img(*IMG), False, True),
    ("tv/swin_t", _tv("swin_t"), _img(*IMG), False, True),
    ("tv/regnet_y_400mf", _tv("regnet_y_400mf"), _img(*IMG), False, False),
    ("tv/shufflenet_v2_x0_5", _tv("shufflenet_v2_x0_5"), _img(*IMG), False, False),
    ("hf/bert", _bert, TEXT, False, False),
    ("hf/gpt2", _gpt2, TEXT, True, False),
    ("hf/t5", _t5, SEQ2SEQ, True, False),
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, build, make_input, tied", params(ZOO))
def test_lora_all_end_to_end(name, build, make_input, tied):
    run_zoo_model(build, make_input, tied)


def test_zoo_has_at_least_40_architectures_from_three_libraries():
    assert len(ZOO) >= 40
    assert {n.split("/")[0] for n, *_ in ZOO} == {"timm", "tv", "hf"}


if __name__ == "__main__":
    import sys

    report(ZOO, sys.argv[1:])

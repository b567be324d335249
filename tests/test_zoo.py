"""The LoRA zoo: ``lora_all`` end to end on 44 architectures from timm, torchvision and transformers.

Each model (smallest variant or a small config of the same classes, random weights, small input) goes
through ``strategies.lora_all(model, r=4, example_input=x)`` -> ``attach`` and must be:

1. identity at init: outputs exactly equal to the bare model's;
2. alive: one optimizer step moves every LoRA add-in and no base parameter (a LoRA whose hook never
   runs gets no gradient and would be caught here);
3. mergeable: with every ``lora_B`` set to random values, merged outputs equal unmerged outputs within
   1e-3 of the LoRA's own effect (tied weights — GPT-2's and T5's ``lm_head`` — need ``untie=True``;
   plain ``merge()`` refuses and names the tie);
4. exact to undo: ``unmerge()`` gives the unmerged outputs bit for bit, and ``detach()`` the bare model's
   state_dict, classes, hooks and ``requires_grad`` flags.

Run ``python tests/test_zoo.py`` to print each model's result and time.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import pytest
import torch
from torch import nn

import addin_studio as studio

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

IMG = (1, 3, 64, 64)


def _timm(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=8, **kw)


def _tv(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None, **kw)


def _tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                             mlp_dim=64, num_classes=8)


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertForSequenceClassification(cfg)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def _t5() -> nn.Module:
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg)


def _ids(*shape: int) -> torch.Tensor:
    return torch.randint(1, 64, shape, generator=torch.Generator().manual_seed(1))


def _img(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(1))


TEXT = lambda: {"input_ids": _ids(2, 8)}  # noqa: E731
SEQ2SEQ = lambda: {"input_ids": _ids(2, 8), "decoder_input_ids": _ids(2, 5)}  # noqa: E731
SMALL_VIT = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)

# (id, model builder, input builder, tied weights, slow)
ZOO: list[tuple[str, Callable[[], nn.Module], Callable[[], Any], bool, bool]] = [
    ("timm/vit_tiny", _timm("vit_tiny_patch16_224", img_size=64, depth=2), _img(*IMG), False, False),
    ("timm/deit_tiny", _timm("deit_tiny_patch16_224", img_size=64, depth=2), _img(*IMG), False, False),
    ("timm/swin_tiny", _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=32,
                             depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)), _img(*IMG), False, False),
    ("timm/convnext_atto", _timm("convnext_atto"), _img(*IMG), False, False),
    ("timm/efficientnet_b0", _timm("efficientnet_b0"), _img(*IMG), False, False),
    ("timm/tf_efficientnet_b0", _timm("tf_efficientnet_b0"), _img(*IMG), False, False),
    ("timm/mobilenetv3_small_050", _timm("mobilenetv3_small_050"), _img(*IMG), False, False),
    ("timm/regnetx_002", _timm("regnetx_002"), _img(*IMG), False, False),
    ("timm/levit_128s", _timm("levit_128s", img_size=64), _img(*IMG), False, False),
    ("timm/maxvit_pico", _timm("maxvit_rmlp_pico_rw_256", img_size=64), _img(*IMG), False, False),
    ("timm/coatnet_nano", _timm("coatnet_nano_rw_224", img_size=64), _img(*IMG), False, False),
    ("timm/beit", _timm("beit_base_patch16_224", **SMALL_VIT), _img(*IMG), False, False),
    ("timm/eva02_tiny", _timm("eva02_tiny_patch14_224", img_size=56, depth=2), _img(1, 3, 56, 56),
     False, False),
    ("timm/mixer_s16", _timm("mixer_s16_224", img_size=64), _img(*IMG), False, False),
    ("timm/poolformer_s12", _timm("poolformer_s12"), _img(*IMG), False, False),
    ("timm/convit_tiny", _timm("convit_tiny", img_size=64, depth=2, local_up_to_layer=1), _img(*IMG),
     False, False),
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


def _out(model: nn.Module, x: Any) -> torch.Tensor:
    out = model(**x) if isinstance(x, dict) else model(x)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out[0]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_zoo_model(build: Callable[[], nn.Module], make_input: Callable[[], Any], tied: bool) -> dict:
    """Run the four checks on one model; returns numbers for the report (asserts on failure)."""
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # zero-initialized heads and gains would starve every LoRA of gradient
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    x = make_input()
    classes = {n: type(m) for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = _state(model)
    with torch.no_grad():
        bare = _out(model, x)

    cfg = studio.strategies.lora_all(model, r=4, example_input=x)
    att = studio.attach(model, cfg, example_input=x)
    weight = sum(p.method == "adapt_weight" for p in cfg.placements)
    # 1. identity at init
    with torch.no_grad():
        assert torch.equal(_out(model, x), bare)
    # 2. one step moves every LoRA and no base parameter
    lora_before = {n: p.detach().clone() for n, p in att.addins.named_parameters()}
    opt = torch.optim.SGD(att.parameters(), lr=0.1)
    _out(model, x).float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    after = dict(att.addins.named_parameters())
    dead = [key for key in att.addins if all(torch.equal(lora_before[f"{key}.{n}"], after[f"{key}.{n}"])
                                             for n in ("lora_A", "lora_B"))]
    assert not dead, f"LoRA add-ins that did not move: {dead}"
    base = {k: v for k, v in model.state_dict().items() if not k.startswith(att._child_name + ".")}
    assert all(torch.equal(state[k], v) for k, v in base.items()), "a base parameter moved"
    # 3. merged == unmerged within 1e-3 of the LoRA's effect
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for addin in att.addins.values():
            addin.lora_B.copy_(torch.randn(addin.lora_B.shape, generator=gen) * 0.05)
        unmerged = _out(model, x)
        effect = (unmerged - bare).abs().max().item()
        assert effect > 0
        if tied:
            with pytest.raises(ValueError, match="tied weights"):
                att.merge()
        att.merge(untie=tied)
        merged = _out(model, x)
        diff = (merged - unmerged).abs().max().item()
        assert diff <= 1e-3 * effect, f"merged differs by {diff:.3g}, LoRA effect {effect:.3g}"
        # 4. exact undo
        att.unmerge()
        assert torch.equal(_out(model, x), unmerged)
    att.detach()
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.state_dict().keys() == state.keys()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(_out(model, x), bare)
    return {"placements": len(cfg.placements), "adapt_weight": weight, "effect": effect, "diff": diff}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, build, make_input, tied", [
    pytest.param(n, b, i, t, id=n, marks=[pytest.mark.slow] if slow else [])
    for n, b, i, t, slow in ZOO])
def test_lora_all_end_to_end(name, build, make_input, tied):
    run_zoo_model(build, make_input, tied)


def test_zoo_has_at_least_40_architectures_from_three_libraries():
    assert len(ZOO) >= 40
    assert {n.split("/")[0] for n, *_ in ZOO} == {"timm", "tv", "hf"}


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    total = time.perf_counter()
    for name, build, make_input, tied, _ in ZOO:
        if len(sys.argv) > 1 and not any(a in name for a in sys.argv[1:]):
            continue
        start = time.perf_counter()
        try:
            r = run_zoo_model(build, make_input, tied)
            result = (f"ok  {r['placements']:3d} LoRAs ({r['adapt_weight']} adapt_weight), "
                      f"merge diff {r['diff']:.1e} / effect {r['effect']:.1e}")
        except Exception as exc:  # report every model
            result = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        print(f"{name:28s} {time.perf_counter() - start:5.1f}s  {result}", flush=True)
    print(f"total {time.perf_counter() - total:.1f}s")

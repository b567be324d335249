"""Activation checkpointing: hooks run again when a checkpointed block is recomputed in the backward
pass. Gradients must equal the non-checkpointed run, for ``{inout}`` LoRA and ``{in}``...``{out}``
Adapters, inside one block and across blocks, with ``use_reentrant`` False and True."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import addin_studio as studio

timm = pytest.importorskip("timm")

LORA = "(LoRA.adapt_output, r=4): ...->(blocks[0:3].attn.qkv){inout1}->..."
IN_BLOCK = (
    "(Adapter.adapt_across_output, bottleneck=8): "
    "...->(blocks[1].norm2){in1}->...->(blocks[1].mlp){out1}->..."
)
# {in} in block 0, {out} in block 1: recomputing block 1 does not re-run the {in} point. The LoRA on the
# patch embedding sits upstream of {in}, so its gradient shows whether the path through the add-in's
# input survives recomputation.
ACROSS = (
    "(LoRA.adapt_output, r=2): ...->(patch_embed.proj){inout1}->...\n"
    "(Adapter.adapt_across_output, bottleneck=8): "
    "...->(blocks[0].norm1){in1}->...->(blocks[1].mlp){out1}->..."
)


def _vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=3,
        num_classes=5,
        embed_dim=48,
        num_heads=2,
    )


def _perturb(att) -> None:
    """Move every add-in off its identity start (B / up are zeros), so every gradient is non-trivial."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _vit_grads(config: str, checkpointing: bool, reentrant: bool) -> dict[str, torch.Tensor]:
    model = _vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    att = studio.attach(model, config, example_input=x)
    _perturb(att)
    model.set_grad_checkpointing(checkpointing)
    previous = timm.layers.use_reentrant_ckpt()
    timm.layers.set_reentrant_ckpt(reentrant)
    try:
        # reentrant checkpointing only tracks gradients through a block input that requires grad
        x = x.clone().requires_grad_(reentrant)
        model(x).square().sum().backward()
    finally:
        timm.layers.set_reentrant_ckpt(previous)
    grads = {f"addins.{n}": p.grad.clone() for n, p in att.addins.named_parameters()}
    if x.grad is not None:
        grads["input"] = x.grad
    return grads


def _assert_same(expected: dict, got: dict) -> None:
    assert sorted(expected) == sorted(got)
    for k in expected:
        assert float(expected[k].abs().max()) > 0, k  # a real gradient, not an untouched add-in
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("config", [LORA, IN_BLOCK], ids=["lora-inout", "adapter-in-block"])
def test_timm_checkpointing_gives_the_same_gradients(config, reentrant):
    _assert_same(_vit_grads(config, False, reentrant), _vit_grads(config, True, reentrant))


def test_timm_non_reentrant_across_blocks_gives_the_same_gradients():
    _assert_same(_vit_grads(ACROSS, False, False), _vit_grads(ACROSS, True, False))


def test_timm_reentrant_across_blocks_refuses_instead_of_losing_gradients():
    with pytest.raises(
        RuntimeError,
        match=r"use_reentrant=True recomputes a block .* blocks\.1\.mlp"
        r"|blocks\.1\.mlp.*use_reentrant=True",
    ):
        _vit_grads(ACROSS, True, True)


def test_recomputation_keeps_the_across_input_only_until_the_next_forward():
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    att = studio.attach(model, ACROSS, example_input=x)
    model.set_grad_checkpointing(True)
    ((_, run),) = [v for k, v in att._run_actions.items() if k.startswith("Adapter")]
    model(x).sum().backward()
    assert run.last is not None  # kept for a recomputation
    assert run.addin.inputs_cache is None
    clone = pickle.loads(pickle.dumps(model))
    assert all(a.last is None for h in clone.blocks[1].mlp._forward_hooks.values() for a in h.actions)
    with torch.no_grad():
        model.eval()
        model(x)
    assert run.last is None  # inference keeps nothing
    att.detach()
    assert run.last is None and not model.blocks[1].mlp._forward_hooks


# -- transformers ------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2Model(cfg)


HF = {
    "bert-lora": (
        _bert,
        "(LoRA.adapt_output, r=4): ...->(encoder.layer[0:2].attention.self.query){inout1}->...",
    ),
    "bert-adapter-across": (
        _bert,
        "(LoRA.adapt_output, r=2): "
        "...->(encoder.layer[0].attention.self.value){inout1}->...\n"
        "(Adapter.adapt_across_output, bottleneck=8): "
        "...->(encoder.layer[0].attention.output)"
        "{in1}->...->(encoder.layer[1].output.dense){out1}->...",
    ),
    "gpt2-adapter-inout": (_gpt2, "(Adapter.adapt_output, bottleneck=8): ...->(h[0:2].mlp){inout1}->..."),
    "gpt2-adapter-across": (
        _gpt2,
        "(Adapter.adapt_across_output, bottleneck=8): ...->(h[0].ln_2){in1}->...->(h[1].mlp){out1}->...",
    ),
}


def _hf_grads(name: str, checkpointing: bool, reentrant: bool) -> dict[str, torch.Tensor]:
    build, config = HF[name]
    model = build()
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    att = studio.attach(model, config, example_input={"input_ids": ids})
    _perturb(att)
    model.train()
    if checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # renamed activation_checkpointing_enable in 5.x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model(input_ids=ids).last_hidden_state.square().sum().backward()
    return {n: p.grad.clone() for n, p in att.addins.named_parameters()}


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name", ["bert-lora", "gpt2-adapter-inout"])
def test_transformers_checkpointing_gives_the_same_gradients(name, reentrant):
    _assert_same(_hf_grads(name, False, reentrant), _hf_grads(name, True, reentrant))


@pytest.mark.parametrize("name", ["bert-adapter-across", "gpt2-adapter-across"])
def test_transformers_checkpointing_across_layers(name):
    """Non-reentrant (transformers' default) recomputes with the kept ``{in}`` feature; reentrant refuses."""
    _assert_same(_hf_grads(name, False, False), _hf_grads(name, True, False))
    with pytest.raises(RuntimeError, match="use_reentrant=True"):
        _hf_grads(name, True, True)

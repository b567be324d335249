"""Compare our LoRA with Hugging Face PEFT on identical weights (a helper for the tests, not a test).

``compare(make_model, x, peft_kwargs, ours)`` builds PEFT's model and ours from the same base weights,
copies PEFT's (perturbed) adapter tensors into our add-ins, and checks outputs, gradients (input and
every adapter tensor), merged weights, and that unmerge/detach restore the base bit for bit.
"""
from __future__ import annotations

import copy

import torch

import addin_studio as studio

# PEFT's adapter tensor names (without the adapter name) -> ours
PEFT_TO_OURS = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B", "lora_B.bias": "lora_bias",
                "lora_magnitude_vector.weight": "lora_magnitude",
                "lora_embedding_A": "lora_A", "lora_embedding_B": "lora_B",
                "trainable_tokens_delta": "rows"}  # trainable tokens: the new rows themselves


def peft_tensors(peft_model, strict: bool = True) -> dict[tuple[str, str], torch.nn.Parameter]:
    """``{(module path, our name): PEFT parameter}`` for PEFT's LoRA tensors (``strict``: no others)."""
    found = {}
    for name, p in peft_model.named_parameters():
        if "lora_" not in name and "trainable_tokens_delta" not in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".default", "").replace(".base_layer", "") \
            .replace(".token_adapter", "")
        for suffix, ours in PEFT_TO_OURS.items():
            if name.endswith("." + suffix):
                found[(name[: -len(suffix) - 1], ours)] = p
                break
        else:
            if strict:
                raise AssertionError(f"unexpected PEFT tensor {name}")
    return found


def our_tensors(att) -> dict[tuple[str, str], torch.nn.Parameter]:
    found = {}
    for _, placement, addin in att.entries:
        for n, p in addin.named_parameters():
            found[(placement.target.module, n)] = p
    return found


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".addins" not in k
            and not k.startswith("addins")}


def perturb_peft(peft_model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_tensors(peft_model, strict=False).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def compare(make_model, x, peft_config, ours, *, rtol=1e-5, atol=1e-6, perturb=True, merge=True,
            layout=None):
    """Build both, check equality; return ``(peft_model, our_model, attachment)``.

    ``ours``: a config string or a function ``model -> Config``.
    """
    import peft

    base = make_model()
    before = _state(base)
    pm = peft.get_peft_model(copy.deepcopy(base), copy.deepcopy(peft_config))
    model = copy.deepcopy(base)
    att = studio.attach(model, ours(model) if callable(ours) else ours)
    theirs, mine = peft_tensors(pm), our_tensors(att)
    assert set(theirs) == set(mine), (sorted(theirs), sorted(mine))
    # the inits (PiSSA/OLoRA, DoRA magnitudes) come out equal, and so do the residual base weights
    moving = {placement.target.module for _, placement, a in att.entries if getattr(a, "moves_base", 0)}
    for key, p in theirs.items():
        q = mine[key]
        if key[1] in ("lora_A", "lora_B") and key[0] not in moving:
            continue  # random inits
        p_ours = _to_ours(key, p, q, layout)
        torch.testing.assert_close(q, p_ours, rtol=1e-4, atol=1e-5, msg=lambda m: f"init of {key}: {m}")
    if perturb:
        perturb_peft(pm)
    with torch.no_grad():
        for key, p in theirs.items():
            mine[key].copy_(_to_ours(key, p, mine[key], layout))
    pm.train(False)
    model.train(False)
    xa = x.clone().requires_grad_(x.is_floating_point())
    xb = x.clone().requires_grad_(x.is_floating_point())
    out_p, out_o = pm(xa), model(xb)
    torch.testing.assert_close(out_o, out_p, rtol=rtol, atol=atol)
    out_p.square().sum().backward()
    out_o.square().sum().backward()
    if x.is_floating_point():
        torch.testing.assert_close(xb.grad, xa.grad, rtol=rtol * 10, atol=atol * 10)
    for key, p in theirs.items():
        ref = _to_ours(key, p.grad, mine[key], layout)
        # the inputs reach 89 (PEFT's arange inputs): absolute error scales with the gradient's size
        torch.testing.assert_close(mine[key].grad, ref, rtol=rtol * 10,
                                   atol=atol * 10 * max(1.0, float(ref.abs().max())), msg=lambda m: f"gradient of {key}: {m}")
    if merge:
        residual = _state(model)
        att.merge()
        pm.base_model.merge_adapter()
        merged_p = {k.removeprefix("base_model.model.").replace(".base_layer", "").replace(".token_adapter", "")
                    .replace(".modules_to_save.default", ""): v
                    for k, v in pm.state_dict().items() if "lora_" not in k and "original_module" not in k}
        for k, v in _state(model).items():
            torch.testing.assert_close(v, merged_p[k], rtol=rtol, atol=atol, msg=lambda m: f"merged {k}: {m}")
        pm.base_model.unmerge_adapter()
        att.unmerge()
        for k, v in _state(model).items():
            assert torch.equal(v, residual[k]), f"unmerge changed {k}"
    att.detach()
    for k, v in _state(model).items():
        assert torch.equal(v, before[k]), f"detach did not restore {k}"
    return pm, model


def _to_ours(key, t, like, layout):
    if t.shape == like.shape:
        return t
    if t.numel() == like.numel():  # conv factors: PEFT's [r, in, k, k] / [out, r, 1, 1]
        return t.reshape(like.shape)
    if t.shape == like.shape[::-1]:
        return t.t()
    raise AssertionError(f"{key}: PEFT {tuple(t.shape)} vs ours {tuple(like.shape)}")

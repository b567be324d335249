"""Compare our LoRA with Hugging Face PEFT on identical weights (a helper for the tests, not a test).

``compare(make_model, x, peft_kwargs, ours)`` builds PEFT's model and ours from the same base weights,
copies PEFT's (perturbed) adapter tensors and buffers into our add-ins, and checks outputs, gradients
(input and every adapter tensor; a tensor PEFT freezes, e.g. MiCA's ``lora_B``, has none in either),
merged weights, and that unmerge/detach restore the base bit for bit. ``train_steps=n`` also runs ``n``
SGD steps in training mode on both (same seed, so base dropout masks agree) and checks each step's
outputs, gradients and buffers (VeLoRA's projection). ``grads="math"`` checks our gradients against
:func:`math_grads` instead of PEFT's (PEFT 0.22's ``nn.MultiheadAttention`` LoRA unmerges before backward,
so its in_proj and input gradients are those of ``W``, not ``W + scale * B @ A``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import addin_studio as studio

# PEFT's adapter tensor names (without the adapter name) -> ours
PEFT_TO_OURS = {
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_B.bias": "lora_bias",
    "lora_magnitude_vector.weight": "lora_magnitude",
    "lora_embedding_A": "lora_A",
    "lora_embedding_B": "lora_B",
    "lora_diag": "lora_diag",
    "trainable_tokens_delta": "rows",  # trainable tokens: the new rows themselves
    **{f"lora_monteclora_sampler.{n}": f"lora_monteclora.{n}" for n in ("std_prior", "expert_weights_prior")},
}
# PEFT's adapter buffers -> ours
PEFT_BUFFERS = {
    "lora_velora_embed": "lora_velora_embed",
    **{
        f"lora_monteclora_sampler.{n}": f"lora_monteclora.{n}"
        for n in ("gaussian_var_prior", "expert_weights")
    },
}
# our tensors that start random (unless the init is deterministic)
RANDOM_INITS = (
    "lora_A",
    "lora_B",
    "lora_diag",
    "lora_monteclora.std_prior",
    "lora_monteclora.expert_weights_prior",
)
# inits that do not draw random numbers, so PEFT's and ours must agree before any copying
DETERMINISTIC_INITS = ("pissa", "olora", "mica")


def peft_tensors(peft_model, strict: bool = True) -> dict[tuple[str, str], torch.nn.Parameter]:
    """``{(module path, our name): PEFT parameter}`` for PEFT's LoRA tensors (``strict``: no others)."""
    found = {}
    for name, p in peft_model.named_parameters():
        if "lora_" not in name and "trainable_tokens_delta" not in name:
            continue
        name = (
            name.removeprefix("base_model.model.")
            .replace(".default", "")
            .replace(".base_layer", "")
            .replace(".token_adapter", "")
        )
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


def peft_buffers(peft_model) -> dict[tuple[str, str], torch.Tensor]:
    """``{(module path, our name): PEFT buffer}`` for PEFT's LoRA adapter buffers."""
    found = {}
    for name, b in peft_model.named_buffers():
        name = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".default", "")
        for theirs, ours in PEFT_BUFFERS.items():
            if name.endswith("." + theirs):
                found[(name[: -len(theirs) - 1], ours)] = b
    return found


def share_noise(peft_model, att) -> None:
    """Give our MonteCLoRA layers PEFT's pre-drawn noise samples (PEFT draws them from the global RNG at
    init, in an order no other code reproduces), so training forwards can be compared."""
    for name, module in peft_model.named_modules():
        samplers = getattr(module, "lora_monteclora_sampler", None)
        if samplers is None or "default" not in samplers:
            continue
        path = name.removeprefix("base_model.model.")
        for _, placement, addin in att.entries:
            if placement.target.module == path:
                theirs = samplers["default"].sampler
                addin.lora_monteclora.noise = [dict(s) for s in theirs.buffer]
                addin.lora_monteclora.index = theirs.index


def our_buffers(att) -> dict[tuple[str, str], torch.Tensor]:
    """Our add-ins' persistent buffers (their state; not caches such as TrainableTokens' row index)."""
    return {
        (placement.target.module, n): b
        for _, placement, addin in att.entries
        for n, b in addin.named_buffers()
        if n in addin.state_dict()
    }


def peft_mha_fixed() -> bool:
    """Whether the installed PEFT computes ``nn.MultiheadAttention`` LoRA as ``W + scale * B @ A`` on
    in_proj and on out_proj (PEFT >= 0.22; 0.21 added out_proj's update twice, huggingface/peft PR #3774)."""
    import peft
    from packaging.version import Version

    return Version(Version(peft.__version__).base_version) >= Version("0.22.0")


def math_grads(base: nn.Module, att, x: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
    """The gradients of ``loss = out.square().sum()`` at the merged weights, computed without LoRA code:
    ``base`` (the unadapted model) called through ``torch.func.functional_call`` with every adapted
    parameter replaced by ``W + scaling * B @ A`` of fresh leaf copies of our factors (plain LoRA, not
    conv; transposed onto transformers ``Conv1D`` / ``nn.Embedding`` weights as our layouts say). Returns
    ``({(module path, "lora_A" / "lora_B"): gradient}, the input's gradient or None)``.

    An ``nn.Embedding``'s ``padding_idx`` keeps its weight row from learning; a LoRA on it (ours and
    PEFT's: ``F.embedding(ids, A.t(), padding_idx)``) keeps only A's padding column from learning, B
    still learns from padding tokens: the reference says the same (that column detached, no padding_idx)."""
    base = copy.deepcopy(base)
    modules = dict(base.named_modules())
    params = {n: p.detach() for n, p in base.named_parameters()}
    leaves = {}
    for _, placement, addin in att.entries:
        path = placement.target.module
        assert not (addin.is_conv or addin.dora), f"math_grads: plain matrices only ({path})"
        a, b = (t.detach().clone().requires_grad_() for t in (addin.lora_A, addin.lora_B))
        leaves[(path, "lora_A")], leaves[(path, "lora_B")] = a, b
        pad = getattr(modules[path], "padding_idx", None) if addin.is_embedding else None
        if pad is not None:
            column = torch.zeros(a.shape[1], dtype=torch.bool)
            column[pad] = True
            a = torch.where(column, a.detach(), a)
            modules[path].padding_idx = None
        name = f"{path}.{addin.param}"
        delta = addin.scaling * (b @ a)
        params[name] = params[name] + (delta.t() if addin.transposed else delta)
    xr = x.clone().requires_grad_(x.is_floating_point())
    functional_call(base, params, (xr,)).square().sum().backward()
    return {k: t.grad for k, t in leaves.items()}, xr.grad


def _state(model):
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if ".addins" not in k and not k.startswith("addins")
    }


def _snapshot(model) -> tuple:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    )


def from_peft_refusal(model, directory, **kwargs) -> str:
    """``studio.from_peft(model, directory, **kwargs)`` raises a ValueError and leaves ``model`` as it
    was (tensors, ``requires_grad``, hooks, no add-ins); returns the message."""
    before = _snapshot(model)
    with pytest.raises(ValueError) as info:
        studio.from_peft(model, directory, **kwargs)
    after = _snapshot(model)
    assert not hasattr(model, "addins")
    assert after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])
    assert after[1:] == before[1:]
    return str(info.value)


def perturb_peft(peft_model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_tensors(peft_model, strict=False).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def compare(
    make_model,
    x,
    peft_config,
    ours,
    *,
    rtol=1e-5,
    atol=1e-6,
    perturb=True,
    merge=True,
    layout=None,
    train_steps=0,
    grads="peft",
):
    """Build both, check equality; return ``(peft_model, our_model, attachment)``.

    ``ours``: a config string or a function ``model -> Config``; ``grads``: ``"peft"`` (ours equal
    PEFT's) or ``"math"`` (ours equal :func:`math_grads`; no training steps).
    """
    assert grads in ("peft", "math") and not (grads == "math" and train_steps)
    import peft

    base = make_model()
    before = _state(base)
    pm = peft.get_peft_model(copy.deepcopy(base), copy.deepcopy(peft_config))
    model = copy.deepcopy(base)
    att = studio.attach(model, ours(model) if callable(ours) else ours)
    theirs, mine = peft_tensors(pm), our_tensors(att)
    assert set(theirs) == set(mine), (sorted(theirs), sorted(mine))
    buffers_p, buffers_o = peft_buffers(pm), our_buffers(att)
    assert set(buffers_p) == set(buffers_o), (sorted(buffers_p), sorted(buffers_o))
    # the inits (PiSSA/OLoRA/MiCA, DoRA magnitudes) come out equal, and so do the residual base weights
    fixed = {
        placement.target.module
        for _, placement, a in att.entries
        if getattr(a, "init", None) in DETERMINISTIC_INITS
    }
    for key, p in theirs.items():
        q = mine[key]
        assert q.requires_grad == p.requires_grad, (
            f"{key}: requires_grad {q.requires_grad}, PEFT's {p.requires_grad}"
        )
        if key[1] in RANDOM_INITS and key[0] not in fixed:
            continue  # random inits
        p_ours = _to_ours(key, p, q, layout)
        torch.testing.assert_close(q, p_ours, rtol=1e-4, atol=1e-5, msg=lambda m: f"init of {key}: {m}")
    if perturb:
        perturb_peft(pm)
    with torch.no_grad():
        for key, p in theirs.items():
            mine[key].copy_(_to_ours(key, p, mine[key], layout))
        for key, b in buffers_p.items():
            buffers_o[key].copy_(b)
    pm.train(False)
    model.train(False)
    xa = x.clone().requires_grad_(x.is_floating_point())
    xb = x.clone().requires_grad_(x.is_floating_point())
    out_p, out_o = pm(xa), model(xb)
    torch.testing.assert_close(out_o, out_p, rtol=rtol, atol=atol)
    out_p.square().sum().backward()
    out_o.square().sum().backward()
    if grads == "math":
        expected, x_grad = math_grads(base, att, x)
        assert set(expected) == set(mine), (sorted(expected), sorted(mine))
        if x_grad is not None:
            torch.testing.assert_close(xb.grad, x_grad, rtol=rtol * 10, atol=atol * 10)
        for key, g in expected.items():
            torch.testing.assert_close(
                mine[key].grad,
                g,
                rtol=rtol * 10,
                atol=atol * 10 * max(1.0, float(g.abs().max())),
                msg=lambda m: f"gradient of {key} (vs the math): {m}",
            )
    else:
        if x.is_floating_point():
            torch.testing.assert_close(xb.grad, xa.grad, rtol=rtol * 10, atol=atol * 10)
        _same_grads(theirs, mine, layout, rtol, atol)
    if train_steps:
        share_noise(pm, att)
        _train(pm, model, x, theirs, mine, buffers_o, train_steps, layout, rtol, atol)
    if merge:
        residual = _state(model)
        att.merge()
        pm.base_model.merge_adapter()
        merged_p = {
            k.removeprefix("base_model.model.")
            .replace(".base_layer", "")
            .replace(".token_adapter", "")
            .replace(".modules_to_save.default", ""): v
            for k, v in pm.state_dict().items()
            if "lora_" not in k and "original_module" not in k
        }
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


def _same_grads(theirs, mine, layout, rtol, atol, step=""):
    for key, p in theirs.items():
        if p.grad is None:
            assert mine[key].grad is None, f"{key} has a gradient{step}; PEFT's has none"
            continue
        ref = _to_ours(key, p.grad, mine[key], layout)
        # the inputs reach 89 (PEFT's arange inputs): absolute error scales with the gradient's size
        torch.testing.assert_close(
            mine[key].grad,
            ref,
            rtol=rtol * 10,
            atol=atol * 10 * max(1.0, float(ref.abs().max())),
            msg=lambda m: f"gradient of {key}{step}: {m}",
        )


def _train(pm, model, x, theirs, mine, buffers_o, steps, layout, rtol, atol):
    """``steps`` SGD steps in training mode on both models, each on its own input, checked step by step;
    both models are back in eval mode afterwards."""
    keys = sorted(k for k, p in theirs.items() if p.requires_grad)
    opt_p = torch.optim.SGD([theirs[k] for k in keys], lr=1e-4)
    opt_o = torch.optim.SGD([mine[k] for k in keys], lr=1e-4)
    pm.train(True)
    model.train(True)
    for step in range(steps):
        opt_p.zero_grad()
        opt_o.zero_grad()
        xs = x + step if not x.is_floating_point() else x * (1 + 0.5 * step)
        torch.manual_seed(step)  # the base model's own dropout draws the same masks in both
        out_p = pm(xs)
        torch.manual_seed(step)
        out_o = model(xs)
        torch.testing.assert_close(out_o, out_p, rtol=rtol, atol=atol, msg=lambda m: f"step {step}: {m}")
        out_p.square().sum().backward()
        out_o.square().sum().backward()
        _same_grads(theirs, mine, layout, rtol, atol, f" at training step {step}")
        for key, b in peft_buffers(pm).items():  # PEFT replaces its buffer tensors when it updates them
            torch.testing.assert_close(buffers_o[key], b, msg=lambda m: f"{key} at step {step}: {m}")
        opt_p.step()
        opt_o.step()
        assert all(bool(torch.isfinite(mine[k]).all()) for k in keys), f"training step {step} diverged"
    pm.train(False)
    model.train(False)


def _to_ours(key, t, like, layout):
    if t.shape == like.shape:
        return t
    if t.numel() == like.numel():  # conv factors: PEFT's [r, in, k, k] / [out, r, 1, 1]
        return t.reshape(like.shape)
    if t.shape == like.shape[::-1]:
        return t.t()
    raise AssertionError(f"{key}: PEFT {tuple(t.shape)} vs ours {tuple(like.shape)}")

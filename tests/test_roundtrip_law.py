"""One round-trip law on every zoo model and the common BatchNorm CNNs: what you trained is what you ship.

attach ``lora_all`` -> train a few steps with the Trainer (train mode) -> the trained model's eval outputs
must be reproduced, within 1e-5 of their size, by:
1. ``att.save`` -> ``studio.load`` on a fresh copy of the base;
2. the Trainer's best-epoch file -> ``studio.load``;
3. ``att.export_peft`` -> ``peft.PeftModel.from_pretrained`` on a fresh base, wherever PEFT can express
   the config (conv LoRA in PEFT's layout; a refusal must be a ValueError that says why);
and ``detach()`` must give back the original state_dict bit for bit (BatchNorm statistics included).

Run ``python tests/test_roundtrip_law.py`` to print the table (model x path x max relative difference).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.config import Config, Placement

sys.path.insert(0, str(Path(__file__).parent))
from test_zoo import IMG, ZOO, _img, _out, _timm  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")
_peft_version = tuple(int(p) for p in peft.__version__.split(".")[:2])

# the BatchNorm CNNs users bring most (timm; torchvision's resnet18, efficientnet_b0 and
# mobilenet_v3_small are in the zoo already)
BN_CNNS = [
    ("timm/resnet18", _timm("resnet18"), _img(*IMG), False, False),
    ("timm/mobilenetv3_large_100", _timm("mobilenetv3_large_100"), _img(*IMG), False, False),
]
TOL = 1e-5


def _fresh(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # as the zoo: zero-initialized heads and gains would starve the LoRAs
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.02)
    return model


def _batch(x: Any) -> Any:
    """Two different samples (the zoo's inputs hold one)."""
    if isinstance(x, dict):
        return {k: torch.cat([v, v.flip(-1)]) for k, v in x.items()}
    return torch.cat([x, x.flip(-1)])


def _peft_layout(cfg: Config, model: nn.Module) -> Config:
    """Conv LoRA in PEFT's layout (the balanced layout is not PEFT's), so that export_peft can run; grouped
    (depthwise) convs left out: PEFT's layout needs a rank divisible by their groups."""
    modules = dict(model.named_modules())
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    placements = []
    for p in cfg.placements:
        m = modules[p.target.module]
        if isinstance(m, convs) and m.groups > 1:
            continue
        if isinstance(m, convs):
            p = Placement(p.addin, p.method, p.source, p.target, {**p.settings, "layout": "peft"})
        placements.append(p)
    return Config(placements, cfg.trainable, running_stats=cfg.running_stats)


def _scaled_loss(logits: torch.Tensor, _: Any) -> torch.Tensor:
    """A loss of the outputs' size (random-weight deep nets without batch statistics give huge outputs)."""
    logits = logits.float()
    return (logits / logits.detach().abs().max().clamp_min(1e-6)).square().mean()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def run_roundtrip(build: Callable[[], nn.Module], make_input: Callable[[], Any]) -> dict[str, Any]:
    """The law on one model; returns {path: max relative difference or the refusal} (asserts on failure)."""
    x = _batch(make_input())
    model = _fresh(build)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = _peft_layout(studio.strategies.lora_all(model, r=4, example_input=x), model)
    att = studio.attach(model, cfg, example_input=x)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = studio.Trainer(
            model,
            [(x, torch.zeros(2, dtype=torch.long))] * 2,
            epochs=1,
            lr=1e-2,
            progress=False,
            attachment=att,
            checkpoint_dir=tmp,
            scheduler=None,
            loss_fn=_scaled_loss,
        )
        trainer.fit()
        model.eval()
        with torch.no_grad():
            trained = _out(model, x)
            assert _rel(trained, _out(_fresh(build), x)) > 1e-4, "training changed nothing"
        att.save(Path(tmp) / "adapters.safetensors")
        for name, path in (
            ("save/load", Path(tmp) / "adapters.safetensors"),
            ("best epoch", trainer.best_checkpoint),
        ):
            fresh = _fresh(build)
            with studio.load(fresh, path), torch.no_grad():
                result[name] = _rel(_out(fresh, x), trained)
        try:
            att.export_peft(Path(tmp) / "peft")
        except ValueError as exc:
            result["PEFT"] = f"refused: {str(exc).splitlines()[0]}"
        else:
            pm = peft.PeftModel.from_pretrained(_fresh(build), str(Path(tmp) / "peft")).eval()
            with torch.no_grad():
                result["PEFT"] = _rel(_out(pm, x), trained)
    att.detach()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert model.state_dict().keys() == state.keys() and not changed, f"detach left {changed[:3]} changed"
    for path, diff in result.items():
        assert isinstance(diff, str) or diff <= TOL, f"{path}: outputs differ by {diff:.2e} of their size"
    return result


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "name, build, make_input",
    [
        pytest.param(n, b, i, id=n, marks=[pytest.mark.slow] if slow else [])
        for n, b, i, _, slow in ZOO + BN_CNNS
    ],
)
def test_every_file_reproduces_the_trained_model(name, build, make_input):
    result = run_roundtrip(build, make_input)
    # PEFT expresses every config here but those it cannot compute: each refusal says why
    if isinstance(result["PEFT"], str) or name in REFUSED_BY_PEFT:
        assert REFUSED_BY_PEFT.get(name, "(PEFT expresses it)") in str(result["PEFT"])


_NEVER_CALLED = "is never called as a module (its parent reads its weight)"
_OWN_FORWARD = "with a forward of its own"
REFUSED_BY_PEFT: dict[str, str] = {
    "timm/beit": _NEVER_CALLED,
    "timm/eva02_tiny": _NEVER_CALLED,
    "tv/swin_t": _NEVER_CALLED,
    "timm/tf_efficientnet_b0": _OWN_FORWARD,
    "timm/nf_regnet_b0": _OWN_FORWARD,
}
if _peft_version < (0, 22):  # PEFT < 0.22 adds MultiheadAttention's out_proj update twice
    REFUSED_BY_PEFT["tv/vit_small_config"] = "MultiheadAttention"


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"{'model':28s} {'save/load':>10s} {'best epoch':>10s}  PEFT")
    for name, build, make_input, _, _ in ZOO + BN_CNNS:
        if len(sys.argv) > 1 and not any(a in name for a in sys.argv[1:]):
            continue
        start = time.perf_counter()
        try:
            r = run_roundtrip(build, make_input)
            peft_cell = r["PEFT"][:90] if isinstance(r["PEFT"], str) else f"{r['PEFT']:.1e}"
            print(
                f"{name:28s} {r['save/load']:10.1e} {r['best epoch']:10.1e}  {peft_cell}   "
                f"({time.perf_counter() - start:.1f}s)",
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - report every model
            print(f"{name:28s} FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:150]}", flush=True)

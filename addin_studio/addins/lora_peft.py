"""LoRA's PEFT form: ``peft_type`` LORA on ``nn.Linear`` layers (``lora_A``/``lora_B`` as PEFT names them)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement, Point
from .interop import PeftEntry, PeftImport, PeftMapping
from .peft_patterns import pattern_value

_PARTS = ("lora_A", "lora_B")


class LoraPeft(PeftMapping):
    """LoRA <-> PEFT ``LoraConfig``: ranks/alphas as ``r``/``lora_alpha`` plus per-module patterns."""

    peft_type = "LORA"

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        dropouts = set()
        for e in entries:
            path = e.placement.target.module
            if e.placement.method != "adapt_output":
                raise ValueError(f"PEFT export covers LoRA.adapt_output only; '{e.key}' is "
                                 f"LoRA.{e.placement.method}")
            if not isinstance(e.module, nn.Linear):
                raise ValueError(f"PEFT export covers LoRA on nn.Linear layers; '{path}' is a "
                                 f"{type(e.module).__name__}")
            if path in ranks:
                raise ValueError(f"two LoRAs on '{path}' cannot be one PEFT adapter")
            tensors[f"{path}.lora_A.weight"] = e.addin.lora_A
            tensors[f"{path}.lora_B.weight"] = e.addin.lora_B
            ranks[path] = e.addin.r
            alphas[path] = e.addin.alpha
            dropouts.add(e.addin.dropout)
        if len(dropouts) > 1:
            raise ValueError(f"PEFT has one lora_dropout per adapter; these LoRAs use {sorted(dropouts)}")
        r = _most_common(ranks.values())
        alpha = _most_common(alphas.values())
        config = {
            "r": r, "lora_alpha": _num(alpha), "lora_dropout": dropouts.pop(), "bias": "none",
            "target_modules": sorted(ranks), "exclude_modules": None,
            "rank_pattern": {f"^{m}$": v for m, v in ranks.items() if v != r},
            "alpha_pattern": {f"^{m}$": _num(v) for m, v in alphas.items() if v != alpha},
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "layers_to_transform": None, "layers_pattern": None, "lora_bias": False,
        }
        return tensors, config

    def claims(self, name: str) -> bool:
        return any(f".{part}." in name for part in _PARTS)

    def read(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: nn.Module,
             addin: str, source: str) -> list[PeftImport]:
        for flag in ("use_dora", "use_rslora", "fan_in_fan_out"):
            if config.get(flag):
                raise ValueError(f"{source}: {flag}=true is not supported")
        if config.get("bias", "none") != "none":
            raise ValueError(f"{source}: bias={config.get('bias')!r} is not supported (only 'none')")
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            for part in _PARTS:
                module, marker, rest = name.partition(f".{part}.")
                if marker:
                    if rest not in ("weight", "default.weight"):
                        raise ValueError(f"{source}: unexpected key 'base_model.model.{name}'")
                    pairs.setdefault(module, {})[part] = t
                    break
        if not pairs:
            raise ValueError(f"{source} holds no LoRA weights")
        modules = dict(model.named_modules())
        for path in pairs:
            if path not in modules:
                raise ValueError(f"the adapter has LoRA weights for module '{path}', which this "
                                 f"{type(model).__name__} does not have")
            if not isinstance(modules[path], nn.Linear):
                raise ValueError(f"from_peft imports LoRA on nn.Linear layers; the adapter's '{path}' is "
                                 f"a {type(modules[path]).__name__} (PEFT's conv LoRA has another layout)")
        order = {name: i for i, name in enumerate(modules)}
        out = []
        for path in sorted(pairs, key=order.__getitem__):
            pair = pairs[path]
            if set(pair) != set(_PARTS):
                raise ValueError(f"the adapter's LoRA for '{path}' lacks {(set(_PARTS) - set(pair)).pop()}")
            for part, t in pair.items():
                if t.dim() != 2 or min(t.shape) < 1:
                    raise ValueError(f"{source}: the adapter's {part} for '{path}' has shape "
                                     f"{tuple(t.shape)}; LoRA factors are non-empty matrices")
            alpha = pattern_value(config.get("alpha_pattern"), path, config.get("lora_alpha", 8), source,
                                  "alpha_pattern")
            settings: dict[str, Any] = {"r": int(pair["lora_A"].shape[0]), "alpha": alpha}
            if config.get("lora_dropout"):
                settings["dropout"] = float(config["lora_dropout"])
            point = Point(path, "post")
            out.append(PeftImport(Placement(addin, "adapt_output", point, point, settings), dict(pair)))
        return out


def _most_common(values: Any) -> Any:
    values = list(values)
    return max(set(values), key=values.count)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x

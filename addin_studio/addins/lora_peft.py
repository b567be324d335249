"""LoRA's PEFT form: ``peft_type`` LORA on ``nn.Linear`` layers (``lora_A``/``lora_B`` as PEFT names them)."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement, Point
from .interop import PeftEntry, PeftImport, PeftMapping

_PARTS = ("lora_A", "lora_B")
_MAGNITUDE = "lora_magnitude_vector"
# LoraConfig fields whose non-empty values change what the adapter computes in ways we do not model
_UNSUPPORTED = ("target_parameters", "trainable_token_indices", "layer_replication", "kasa_config",
                "velora_config", "monteclora_config", "use_qalora", "alora_invocation_tokens",
                "arrow_config", "loftq_config", "megatron_config", "corda_config", "eva_config")
_INITS = {True: "kaiming", "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def _variant(addin: Any) -> dict[str, Any]:
    """The settings of a LoRA that PEFT holds once per adapter (its LoraConfig flags)."""
    return {"use_rslora": addin.rslora, "use_dora": addin.dora, "lora_bias": hasattr(addin, "lora_bias"),
            "init_lora_weights": {v: k for k, v in _INITS.items()}[addin.init]}


class LoraPeft(PeftMapping):
    """LoRA <-> PEFT ``LoraConfig``: ranks/alphas as ``r``/``lora_alpha`` plus per-module patterns."""

    peft_type = "LORA"

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        dropouts = set()
        variants: dict[str, set] = {}
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
            if hasattr(e.addin, "lora_bias"):
                tensors[f"{path}.lora_B.bias"] = e.addin.lora_bias
            if e.addin.dora:
                tensors[f"{path}.{_MAGNITUDE}"] = e.addin.lora_magnitude
            for flag, value in _variant(e.addin).items():
                variants.setdefault(flag, set()).add(value)
            ranks[path] = e.addin.r
            alphas[path] = e.addin.alpha
            dropouts.add(e.addin.dropout)
        if len(dropouts) > 1:
            raise ValueError(f"PEFT has one lora_dropout per adapter; these LoRAs use {sorted(dropouts)}")
        for flag, values in variants.items():
            if len(values) > 1:
                raise ValueError(f"PEFT has one {flag} per adapter; these LoRAs mix "
                                 f"{sorted(values, key=str)}")
        r = _most_common(ranks.values())
        alpha = _most_common(alphas.values())
        config = {
            "r": r, "lora_alpha": _num(alpha), "lora_dropout": dropouts.pop(), "bias": "none",
            "target_modules": sorted(ranks), "exclude_modules": None,
            "rank_pattern": {f"^{m}$": v for m, v in ranks.items() if v != r},
            "alpha_pattern": {f"^{m}$": _num(v) for m, v in alphas.items() if v != alpha},
            "fan_in_fan_out": False, "layers_to_transform": None, "layers_pattern": None,
            **{flag: values.pop() for flag, values in variants.items()},
        }
        return tensors, config

    def claims(self, name: str) -> bool:
        return any(f".{part}." in name for part in _PARTS) or f".{_MAGNITUDE}" in name

    def read(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: nn.Module,
             addin: str, source: str) -> list[PeftImport]:
        for flag in ("fan_in_fan_out",) + _UNSUPPORTED:
            if config.get(flag):
                raise ValueError(f"{source}: {flag}={config[flag]!r} is not supported")
        if config.get("bias", "none") != "none":
            raise ValueError(f"{source}: bias={config.get('bias')!r} is not supported (only 'none'; "
                             f"a bias on B is lora_bias=true)")
        init = config.get("init_lora_weights", True)
        if init is False:
            init = True
        if not isinstance(init, (bool, str)) or init not in _INITS:
            raise ValueError(f"{source}: init_lora_weights={init!r} is not supported (true, 'gaussian', "
                             f"'pissa' or 'olora')")
        variant: dict[str, Any] = {"rslora": bool(config.get("use_rslora")),
                                   "dora": bool(config.get("use_dora")),
                                   "bias": bool(config.get("lora_bias")), "init": _INITS[init]}
        variant = {k: v for k, v in variant.items() if v not in (False, "kaiming")}
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            module, marker, rest = name.partition(f".{_MAGNITUDE}")
            if marker and rest in ("", ".weight", ".default.weight"):
                pairs.setdefault(module, {})["lora_magnitude"] = t
                continue
            for part in _PARTS:
                module, marker, rest = name.partition(f".{part}.")
                if marker:
                    if part == "lora_B" and rest in ("bias", "default.bias"):
                        pairs.setdefault(module, {})["lora_bias"] = t
                        break
                    if rest not in ("weight", "default.weight"):
                        raise ValueError(f"{source}: unexpected key 'base_model.model.{name}'")
                    pairs.setdefault(module, {})[part] = t
                    break
            else:
                raise ValueError(f"{source}: unexpected key 'base_model.model.{name}'")
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
            want = set(_PARTS) | ({"lora_bias"} if variant.get("bias") else set()) | \
                ({"lora_magnitude"} if variant.get("dora") else set())
            if set(pair) != want:
                missing, extra = want - set(pair), set(pair) - want
                raise ValueError(f"the adapter's LoRA for '{path}' "
                                 + (f"lacks {sorted(missing)[0]}" if missing else
                                    f"has {sorted(extra)[0]}, which its config does not switch on"))
            alpha = _pattern_value(config.get("alpha_pattern") or {}, path, config.get("lora_alpha", 8))
            settings: dict[str, Any] = {"r": int(pair["lora_A"].shape[0]), "alpha": alpha}
            if config.get("lora_dropout"):
                settings["dropout"] = float(config["lora_dropout"])
            settings.update(variant)
            point = Point(path, "post")
            out.append(PeftImport(Placement(addin, "adapt_output", point, point, settings), dict(pair)))
        return out


def _most_common(values: Any) -> Any:
    values = list(values)
    return max(set(values), key=values.count)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _pattern_value(patterns: Mapping[str, Any], path: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: the first key that matches the end of ``path``."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{key.lstrip('^').rstrip('$')})", path):
            return value
    return default

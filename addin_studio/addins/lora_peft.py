"""LoRA's PEFT form: ``peft_type`` LORA on ``nn.Linear``, transformers ``Conv1D`` (PEFT's
``fan_in_fan_out``) and ``nn.Embedding`` layers, tensors named as PEFT names them (``lora_A.weight`` /
``lora_B.weight``; ``lora_embedding_A`` / ``lora_embedding_B`` for embeddings, same layouts as ours)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement, Point
from .interop import PeftEntry, PeftImport, PeftMapping
from .peft_patterns import pattern_value

_PARTS = ("lora_A", "lora_B")
_EMBEDDING_PARTS = {"lora_embedding_A": "lora_A", "lora_embedding_B": "lora_B"}
_KINDS = "nn.Linear, nn.Embedding and transformers Conv1D layers"


def _peft_kind(module: nn.Module) -> str | None:
    """"linear", "conv1d" or "embedding" for the layers PEFT's LoRA shares our layout with, else None."""
    from .lora import is_hf_conv1d

    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return None  # PEFT reaches an out_proj only through its MultiheadAttention
    if isinstance(module, nn.Linear):
        return "linear"
    if is_hf_conv1d(module):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


class LoraPeft(PeftMapping):
    """LoRA <-> PEFT ``LoraConfig``: ranks/alphas as ``r``/``lora_alpha`` plus per-module patterns."""

    peft_type = "LORA"

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        dropouts = set()
        fan_in_fan_out = False  # PEFT switches it per layer as it meets Linear or Conv1D layers
        for e in entries:
            path = e.placement.target.module
            kind = _peft_kind(e.module)
            if kind is None:
                why = (" (PEFT 0.21's MultiheadAttention LoRA adds its out_proj update twice, so it "
                       "would not compute what ours does)") if isinstance(
                    e.module, (nn.MultiheadAttention, nn.modules.linear.NonDynamicallyQuantizableLinear)) else ""
                raise ValueError(f"PEFT export covers LoRA on {_KINDS}; '{path}' is a "
                                 f"{type(e.module).__name__}{why}")
            if e.placement.method not in ("adapt_output", "adapt_weight") or \
                    getattr(e.addin, "param", "weight") != "weight":
                raise ValueError(f"PEFT export covers LoRA.adapt_output and LoRA.adapt_weight on a "
                                 f"layer's weight; '{e.key}' is not one")
            if path in ranks:
                raise ValueError(f"two LoRAs on '{path}' cannot be one PEFT adapter")
            if kind == "embedding":
                tensors[f"{path}.lora_embedding_A"] = e.addin.lora_A
                tensors[f"{path}.lora_embedding_B"] = e.addin.lora_B
            else:
                tensors[f"{path}.lora_A.weight"] = e.addin.lora_A
                tensors[f"{path}.lora_B.weight"] = e.addin.lora_B
            fan_in_fan_out |= kind == "conv1d"
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
            "fan_in_fan_out": fan_in_fan_out, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "layers_to_transform": None, "layers_pattern": None, "lora_bias": False,
        }
        return tensors, config

    def claims(self, name: str) -> bool:
        return any(f".{part}." in name for part in _PARTS) or \
            any(name.endswith(f".{part}") or f".{part}." in name for part in _EMBEDDING_PARTS)

    def read(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: nn.Module,
             addin: str, source: str) -> list[PeftImport]:
        for flag in ("use_dora", "use_rslora"):  # fan_in_fan_out: the layer's kind says it
            if config.get(flag):
                raise ValueError(f"{source}: {flag}=true is not supported")
        if config.get("bias", "none") != "none":
            raise ValueError(f"{source}: bias={config.get('bias')!r} is not supported (only 'none')")
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            for embedding_part, part in _EMBEDDING_PARTS.items():
                module, marker, rest = name.partition(f".{embedding_part}")
                if marker and rest in ("", ".default"):
                    pairs.setdefault(module, {})[part] = t
                    break
            else:
                _pair(name, t, pairs, source)
        if not pairs:
            raise ValueError(f"{source} holds no LoRA weights")
        modules = dict(model.named_modules())
        for path in pairs:
            if path not in modules:
                raise ValueError(f"the adapter has LoRA weights for module '{path}', which this "
                                 f"{type(model).__name__} does not have")
            if _peft_kind(modules[path]) is None:
                raise ValueError(f"from_peft imports LoRA on {_KINDS}; the adapter's '{path}' is "
                                 f"a {type(modules[path]).__name__} (PEFT's conv LoRA has another layout)")
        from .lora import WEIGHT_METHOD, hook_problem  # lora.py imports this module

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
            method = WEIGHT_METHOD if hook_problem(modules[path]) else "adapt_output"
            if method == WEIGHT_METHOD:
                settings.pop("dropout", None)
            out.append(PeftImport(Placement(addin, method, point, point, settings), dict(pair)))
        return out


def _pair(name: str, t: torch.Tensor, pairs: dict, source: str) -> None:
    for part in _PARTS:
        module, marker, rest = name.partition(f".{part}.")
        if marker:
            if rest not in ("weight", "default.weight"):
                raise ValueError(f"{source}: unexpected key 'base_model.model.{name}'")
            pairs.setdefault(module, {})[part] = t
            return


def _most_common(values: Any) -> Any:
    values = list(values)
    return max(set(values), key=values.count)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x

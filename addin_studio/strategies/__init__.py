"""GIFt-style fine-tuning strategies that produce a :class:`~addin_studio.Config`.

>>> cfg = studio.strategies.lora_all(model, r=3)          # doctest: +SKIP
>>> cfg = studio.strategies.lora(model, targets=["qkv"], r=8, alpha=16)   # doctest: +SKIP
"""

from .capabilities import Claim, ModuleCap, ModuleInfo, ParamCap, ParamInfo, Strategy, place, placement
from .fact import fact
from .partial import layernorm, partial_k
from .prefix import prefix_tuning
from .ready import bitfit, full, head_only, lora, lora_all, lora_all_strategy

__all__ = [
    "Claim",
    "ModuleCap",
    "ModuleInfo",
    "ParamCap",
    "ParamInfo",
    "Strategy",
    "bitfit",
    "fact",
    "full",
    "head_only",
    "layernorm",
    "lora",
    "lora_all",
    "lora_all_strategy",
    "partial_k",
    "place",
    "placement",
    "prefix_tuning",
]

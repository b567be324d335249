"""LoRA, the built-in low-rank adapter, and its variants (one module each).

- ``layout.py``: where LoRA applies (layer kinds, the ``[h, w]`` matrix on each, ``layout=peft``,
  ``hook_problem``); ``grouped.py``: PEFT's grouped-conv form (``layout=peft`` on ``groups > 1``).
- ``core.py``: the ``LoRA`` add-in: rank, alpha, dropout, where it applies, the output hook and the
  weight method; it calls its variant object and never branches on which variant it is.
- ``variant.py``: ``LoraVariant`` (plain LoRA with ``rslora`` and the inits of ``inits.py``), the registry
  and the validation that picks one variant per LoRA; a variant each in ``bias.py``, ``dora.py``,
  ``velora.py``, ``kasa.py``, ``monteclora.py`` and ``mica.py``.
- ``experts.py``: LoRA on fused mixture-of-experts parameters (``param=`` on a 3-D weight: one update per
  expert, PEFT's ``target_parameters`` layout).
- ``peft.py``: LoRA's Hugging Face PEFT form (``LoraConfig``), with ``peft_variants.py`` for the
  variants' sub-configs.

The modules ``addins/lora_*.py`` are the old paths of these, kept as re-exports.
"""

from __future__ import annotations

from .layout import WEIGHT_METHOD, check_lora_target, default_param, hook_problem, is_hf_conv1d, lora_shape
from .core import LoRA, publish_settings  # noqa: E402  (after layout: core builds on it)
from .experts import fused_expert_params  # noqa: E402
from . import bias, dora, velora, kasa, monteclora, mica  # noqa: E402,F401  (each registers its variant)
from .variant import VARIANTS, LoraVariant, Setting, make_variant, register_variant  # noqa: E402

__all__ = [
    "LoRA",
    "LoraVariant",
    "Setting",
    "VARIANTS",
    "WEIGHT_METHOD",
    "check_lora_target",
    "default_param",
    "fused_expert_params",
    "hook_problem",
    "is_hf_conv1d",
    "lora_shape",
    "make_variant",
    "publish_settings",
    "register_variant",
]

"""The variant of a LoRA: one object chosen once, at construction (as PEFT's ``LoraVariant``).

:class:`LoraVariant` is plain LoRA with the two settings every variant shares: ``rslora`` (the scaling)
and ``init`` (kaiming, gaussian, pissa, olora; ``inits.py``). Each subclass, in its own module, is one
variant: ``bias.py`` (``bias=true``), ``dora.py`` (``dora=true``), ``velora.py``, ``kasa.py``,
``monteclora.py`` and ``mica.py`` (``init=mica``). A variant owns its switch and settings (validated
here, once), the parameters it adds to the LoRA, its forward, its weight and merge rules, and its fields
and tensors in PEFT's ``LoraConfig``. The core LoRA (``core.py``) calls these hooks and never asks which
variant it has.

Adding a variant is writing one module: a subclass decorated with :func:`register_variant` (its
``switch`` and ``settings`` join LoRA's settings, the Studio's form and the config-string checks), imported
in ``addins/lora/__init__.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .inits import BASE_MOVING_INITS, INITS, gaussian_init, lora_scaling, matrix_of, svd_init

if TYPE_CHECKING:
    from .core import LoRA


@dataclass(frozen=True)
class Setting:
    """One setting a config string may give LoRA: its name, default, type (as an annotation string, which
    the engine checks values against) and its one-line help (the Studio's settings form shows it)."""

    name: str
    default: Any
    annotation: str
    help: str


#: the settings every variant shares (plain LoRA has them too)
SHARED_SETTINGS = (
    Setting("rslora", False, "bool", "scale by alpha/sqrt(r) (rsLoRA) instead of alpha/r"),
    Setting("init", "kaiming", "str", "how A and B start: kaiming (B zero), gaussian, pissa, olora or mica"),
)
#: the variant classes, in the order their settings are listed (:func:`register_variant`)
VARIANTS: list[type[LoraVariant]] = []
#: called after each registration (LoRA refreshes its public signature: ``core.publish_settings``)
LISTENERS: list[Callable[[], None]] = []


def register_variant(cls: type[LoraVariant]) -> type[LoraVariant]:
    """Class decorator: make a :class:`LoraVariant` subclass one LoRA can be (by its switch or init)."""
    VARIANTS.append(cls)
    for listener in LISTENERS:
        listener()
    return cls


def variant_settings() -> list[Setting]:
    """Every variant setting LoRA takes: the shared ones, then each variant's switch and settings."""
    out = list(SHARED_SETTINGS)
    for cls in VARIANTS:
        out += ([cls.switch] if cls.switch else []) + list(cls.settings)
    return out


def exposed_names() -> list[str]:
    """Every name ``lora.<name>`` may read from a variant (:meth:`LoraVariant.exposed`)."""
    names = ["rslora", "init"]
    for cls in VARIANTS:
        names += ([cls.switch.name] if cls.flag_attribute and cls.switch else []) + list(cls.attributes)
    return names


class LoraVariant:
    """Plain LoRA: ``out + scaling * B(A(dropout(x)))``, the weight ``W + scaling * B @ A``.

    The hooks take the LoRA (``lora``: its factors ``lora_A``/``lora_B``, ``scaling``, ``transposed``,
    ``is_conv``, ...) and, where they act on the layer, the layer (``module``)."""

    #: the on/off setting that chooses this variant (``dora``); None: chosen otherwise (``init_value``)
    switch: ClassVar[Setting | None] = None
    #: the ``init`` value that chooses this variant (MiCA's ``init=mica``)
    init_value: ClassVar[str | None] = None
    #: its own settings, which refine its switch (``velora_groups``)
    settings: ClassVar[tuple[Setting, ...]] = ()
    #: whether ``lora.<switch>`` reads as a flag on every LoRA (``lora.dora``, as before the variants split)
    flag_attribute: ClassVar[bool] = False
    #: the names ``lora.<name>`` reads from the variant (``lora.kasa_beta``)
    attributes: ClassVar[tuple[str, ...]] = ()
    #: PEFT ``LoraConfig`` fields of a LoRA that is not this variant (``{"use_dora": False}``)
    peft_off: ClassVar[dict[str, Any]] = {}
    #: PEFT's adapter tensor (key suffix after the module) -> the LoRA's tensor this variant adds
    peft_tensor_names: ClassVar[dict[str, str]] = {}

    def __init__(self, rslora: bool = False, init: str = "kaiming") -> None:
        self.rslora = rslora
        self.init = init

    # --- what it is -------------------------------------------------------------------------------
    @classmethod
    def label(cls) -> str:
        """How a config string chooses it: ``dora=true`` or ``init=mica``."""
        return f"{cls.switch.name}=true" if cls.switch else f"init={cls.init_value}"

    @classmethod
    def chosen(cls, values: Mapping[str, Any], init: str) -> bool:
        """Whether these settings choose this variant."""
        return bool(values[cls.switch.name]) if cls.switch else init == cls.init_value

    @classmethod
    def check_init(cls, init: str) -> None:
        """Refuse an ``init`` this variant cannot start from (``ValueError``)."""

    @classmethod
    def combination_error(cls, other: type[LoraVariant]) -> str:
        """The message refusing this variant together with ``other``."""
        return f"LoRA {cls.label()} cannot be combined with {other.label()} (PEFT has one variant per layer)"

    def exposed(self) -> dict[str, Any]:
        """The settings ``lora.<name>`` reads (``rslora``, ``init``, the variants' flags, ``attributes``)."""
        out = {"rslora": self.rslora, "init": self.init}
        out.update(
            {cls.switch.name: isinstance(self, cls) for cls in VARIANTS if cls.flag_attribute and cls.switch}
        )
        out.update({name: getattr(self, name) for name in self.attributes})
        return out

    def describe(self) -> list[str]:
        """Its settings as ``extra_repr`` shows them (``rslora=true``, ``dora=true``, ``init=pissa``)."""
        flags = ["rslora=true"] if self.rslora else []
        if self.switch:
            flags.append(f"{self.switch.name}=true")
        return flags + ([f"init={self.init}"] if self.init != "kaiming" else [])

    # --- building the LoRA ------------------------------------------------------------------------
    def scaling(self, r: int, alpha: float) -> float:
        """``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``)."""
        return lora_scaling(r, alpha, self.rslora)

    def check_target(self, lora: LoRA, module: nn.Module, param: str | None) -> None:
        """Refuse a layer this variant does not work on (``ValueError``), before anything is built."""

    def init_factors(self, lora: LoRA, weight: torch.Tensor, h: int, w: int) -> None:
        """Start ``lora_A`` / ``lora_B`` (``B @ A`` is ``[h, w]``) from ``init``."""
        if lora.is_embedding and self.init in ("kaiming", "gaussian"):
            # PEFT's nn.Embedding LoRA (either init): A zeros, B ~ N(0, 1); B @ A is zero all the same
            nn.init.zeros_(lora.lora_A)
            nn.init.normal_(lora.lora_B)
        elif self.init == "gaussian":
            gaussian_init(lora.lora_A, lora.r)
        elif self.init in BASE_MOVING_INITS:
            check_float(weight, f"init={self.init}")
            with torch.no_grad():
                A, B = svd_init(
                    self.init, matrix_of(weight.detach().float(), h, w, lora.transposed), lora.r, lora.scaling
                )
                lora.lora_A.copy_(A)
                lora.lora_B.copy_(B)
        else:
            nn.init.kaiming_uniform_(lora.lora_A, a=math.sqrt(5))

    def add_parameters(self, lora: LoRA, module: nn.Module, weight: torch.Tensor, w: int) -> None:
        """Register this variant's parameters and buffers on ``lora`` (``lora_magnitude``, ...)."""

    @property
    def moves_base(self) -> bool:
        """Whether attach moves part of the base weight into the adapter (PiSSA/OLoRA)."""
        return self.init in BASE_MOVING_INITS

    def move_base(self, lora: LoRA, module: nn.Module) -> None:
        """PiSSA/OLoRA: leave the residual ``W - scaling * B @ A`` in the base weight."""
        if self.moves_base:
            weight = module._parameters[lora.param]
            weight.copy_((weight.float() - lora.delta().float()).to(weight.dtype))

    # --- computing ---------------------------------------------------------------------------------
    def weight_method_problem(self, lora: LoRA) -> str | None:
        """Why ``adapt_weight`` cannot compute this variant, or None."""
        return None

    def product(self, lora: LoRA) -> torch.Tensor:
        """``B @ A`` (``[h, w]``, unscaled)."""
        return lora.lora_B @ lora.lora_A

    def finish_branch(self, lora: LoRA, out: torch.Tensor) -> torch.Tensor:
        """The LoRA branch's output (``lora.forward``) after ``scaling * B(A(x))``."""
        return out

    def adapt_output(
        self, lora: LoRA, module: nn.Module, x: torch.Tensor, outputs: torch.Tensor
    ) -> torch.Tensor:
        """The output hook: the layer's ``outputs`` for its input ``x`` with the update."""
        return lora.plain_output(module, x, outputs)

    def adapt_weight(self, lora: LoRA, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with, given the update ``delta`` in the weight's dtype."""
        return weight + delta

    # --- merging -----------------------------------------------------------------------------------
    #: whether ``merge`` adds to the stored weight what the hook adds to the output
    merge_adds: ClassVar[bool] = True

    def merge_problem(self, lora: LoRA, module: nn.Module) -> str | None:
        """Why this variant cannot be folded into ``module``, or None."""
        return None

    def merge(self, lora: LoRA, module: nn.Module, weight: torch.Tensor) -> None:
        """Fold the update into the stored ``weight`` (in place)."""
        weight.add_(lora.delta().to(weight.dtype))

    def loss(self, lora: LoRA) -> torch.Tensor:
        """The variant's regularizer for the training loss (KaSA, MonteCLoRA); zero for the others."""
        return lora.lora_A.new_zeros(())

    # --- PEFT --------------------------------------------------------------------------------------
    def peft_fields(self) -> dict[str, Any]:
        """This LoRA's ``LoraConfig`` fields that PEFT holds once per adapter (hashable values)."""
        init = True if self.init == "kaiming" else self.init
        fields = {"use_rslora": self.rslora, "init_lora_weights": init}
        for cls in VARIANTS:
            fields.update(cls.peft_off)
        return fields

    def peft_tensors(self, lora: LoRA) -> dict[str, torch.Tensor]:
        """``{PEFT key suffix: tensor}`` of the tensors this variant adds (PEFT's shapes)."""
        out = {}
        for theirs, ours in self.peft_tensor_names.items():
            owner, _, leaf = ours.rpartition(".")
            out[theirs] = getattr(lora.get_submodule(owner) if owner else lora, leaf)
        return out

    @classmethod
    def settings_from_peft(cls, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Our settings for this variant from a PEFT ``LoraConfig`` (empty when it does not choose it)."""
        return {}


class PeftOrderVariant(LoraVariant):
    """A variant whose output hook runs in PEFT's order of operations (VeLoRA, KaSA, MonteCLoRA):
    ``outputs + B(between(project(dropout(x)))) * scaling``."""

    def project(self, lora: LoRA, x: torch.Tensor) -> torch.Tensor:
        """``A x`` (the rank-r tensor)."""
        return F.linear(x, lora.lora_A)

    def between(self, lora: LoRA, h: torch.Tensor) -> torch.Tensor:
        """What happens between A and B."""
        return h

    def adapt_output(
        self, lora: LoRA, module: nn.Module, x: torch.Tensor, outputs: torch.Tensor
    ) -> torch.Tensor:
        if lora.dropout and lora.training:
            x = F.dropout(x, lora.dropout, True)
        h = self.between(lora, self.project(lora, x))
        return outputs + F.linear(h, lora.lora_B) * lora.scaling


def check_float(weight: torch.Tensor, what: str) -> None:
    """Refuse a weight an SVD/QR init cannot start from."""
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"LoRA {what} needs a float weight, not {weight.dtype}")


def check_flag(name: str, value: object) -> None:
    """Refuse an on/off setting that is not a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"LoRA {name} must be true or false, got {value!r}")


def make_variant(given: Mapping[str, Any]) -> LoraVariant:
    """The one variant object for these settings (validated: types, one variant per layer, each variant's
    own settings). Settings not given take their defaults; a variant's settings are read only when it is
    chosen."""
    values = {s.name: s.default for s in variant_settings()}
    unknown = sorted(set(given) - set(values))
    if unknown:
        raise TypeError(f"LoRA got an unexpected keyword argument '{unknown[0]}'")
    values.update(given)
    check_flag("rslora", values["rslora"])
    for cls in VARIANTS:
        if cls.switch:
            check_flag(cls.switch.name, values[cls.switch.name])
    init = "kaiming" if values["init"] is True else values["init"]
    if not isinstance(init, str) or init.lower() not in INITS:
        raise ValueError(f"LoRA init must be one of {', '.join(INITS)}, got {values['init']!r}")
    init = init.lower()
    chosen = [cls for cls in VARIANTS if cls.chosen(values, init)]
    for cls in chosen:
        cls.check_init(init)
    if len(chosen) > 1:
        raise ValueError(chosen[0].combination_error(chosen[1]))
    cls = chosen[0] if chosen else LoraVariant
    return cls(rslora=values["rslora"], init=init, **{s.name: values[s.name] for s in cls.settings})

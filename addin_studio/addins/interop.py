"""How an add-in class describes its own interchange formats (today: Hugging Face PEFT adapters).

An add-in class opts in by setting the class attribute ``peft`` to a :class:`PeftMapping`; the default
(``None``, also for factories that are not ``AddinBase`` subclasses) means "no PEFT form". The generic
checkpoint code (``addin_studio.checkpoint``) dispatches on this attribute and never names an add-in,
so a new method (DoRA, IA³, ...) brings its mapping with it instead of growing the checkpoint module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement


@dataclass(frozen=True)
class PeftEntry:
    """One attached add-in, as an export sees it: its key, placement, instance and target module."""

    key: str
    placement: Placement
    addin: nn.Module
    module: nn.Module


@dataclass
class PeftImport:
    """One placement read from a PEFT adapter and the tensors to load into the add-in it builds.

    ``state`` uses the add-in's own ``state_dict`` names (e.g. ``{"lora_A": ..., "lora_B": ...}``).
    """

    placement: Placement
    state: dict[str, torch.Tensor] = field(default_factory=dict)


class PeftMapping:
    """The PEFT form of one add-in class: ``peft_type`` plus the mapping to and from it.

    Tensor names passed in and out are relative to the model (``"blocks.0.attn.qkv.lora_A.weight"``);
    the generic code adds/strips PEFT's ``base_model.model.`` prefix and handles ``modules_to_save``.
    """

    peft_type: str = ""
    lead: str = "base_model.model."  # what PEFT's file puts before model-relative tensor names
    bare: frozenset[str] = frozenset()  # tensors the file names as they are (e.g. prompt_embeddings)

    def task_type(self, model: nn.Module) -> str | None:
        """The ``task_type`` the exported ``adapter_config.json`` names (PEFT picks its model class by
        it); ``None`` by default."""
        return None

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and the ``adapter_config.json`` fields this type owns, for ``entries``
        (all of this class). Raise ``ValueError`` naming the placement that PEFT cannot hold."""
        raise NotImplementedError

    def claims(self, name: str) -> bool:
        """Whether a tensor of a PEFT adapter (model-relative name) belongs to this type's weights;
        the tensors no mapping claims are ``modules_to_save``."""
        raise NotImplementedError

    def read(
        self,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        model: nn.Module,
        addin: str,
        source: str,
    ) -> list[PeftImport]:
        """The placements (add-in name ``addin``) an adapter's ``config`` and claimed ``tensors``
        describe for ``model``. Raise ``ValueError`` (mentioning ``source``) for what cannot be read."""
        raise NotImplementedError


def peft_mapping(addin: Any) -> PeftMapping | None:
    """The :class:`PeftMapping` of an add-in class or instance, or ``None`` when it has none."""
    cls = addin if isinstance(addin, type) else type(addin)
    mapping = getattr(cls, "peft", None)
    return mapping if isinstance(mapping, PeftMapping) else None


def peft_mappings() -> dict[str, tuple[str, PeftMapping]]:
    """``{peft_type: (add-in name, mapping)}`` over the registered add-ins."""
    from .registry import available_addins

    found: dict[str, tuple[str, PeftMapping]] = {}
    for name, factory in available_addins().items():
        mapping = peft_mapping(factory)
        if mapping is not None and mapping.peft_type not in found:
            found[mapping.peft_type] = (name, mapping)
    return found

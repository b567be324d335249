"""FacT as a strategy: the paper's placement (every block's qkv, proj, fc1 and fc2) in one call."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from torch import nn

from ..config import Config
from .capabilities import placement
from ..config.paths import is_index, split_path
from .partial import _with_head
from ..addins.lora import hook_problem
from ..graph import ModuleGraph
from .ready import _never_run, _target_check

FACT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _by_role(paths: Iterable[str]) -> list[str]:
    """Paths grouped by their role (the path with block indices left out), roles in model order, so
    that each role's blocks emit as one range: every qkv, then every proj, ..."""
    roles: dict[tuple[str, ...], list[str]] = {}
    for path in paths:
        roles.setdefault(tuple("#" if is_index(s) else s for s in split_path(path)), []).append(path)
    return [p for group in roles.values() for p in group]


def fact(
    model: nn.Module,
    r: int = 8,
    kind: str = "tt",
    scale: float = 1.0,
    dropout: float = 0.1,
    targets: str | Sequence[str] = FACT_TARGETS,
    head: bool | str | None = True,
    example_input: Any = None,
    graph: ModuleGraph | None = None,
) -> Config:
    """FacT-TT (``kind="tt"``) or FacT-TK (``"tk"``) of rank ``r`` on the ``nn.Linear`` layers named by
    ``targets`` — by default a timm ViT's attention ``qkv`` and ``proj`` and MLP ``fc1`` and ``fc2`` in
    every block, as the paper — with their factors shared; the classifier ``head`` trains too
    (``True``: timm's ``get_classifier()`` and the usual names; a path; ``None``/``False``: none).

    As :func:`lora`, a layer that never runs as a module in the traced forward pass (``example_input`` or
    ``graph``; e.g. a qkv whose parent reads its weight, as in BEiT and EVA) or whose own forward changes
    its weight gets ``adapt_weight`` (with ``dropout=0``: the weight method has no branch to drop out).

    Args:
        model: The model to adapt.
        r: The FacT rank.
        kind: ``"tt"`` or ``"tk"``.
        scale: The scale of the update.
        dropout: The dropout probability inside the FacT branch.
        targets: Names matched against the end of each module path, or one regular expression that must
            match a whole path (as :func:`lora`).
        head: ``True``: the classifier found as :func:`head_only` finds it trains; a path names it;
            ``None``/``False``: none.
        example_input: An input for one traced forward pass, as for :func:`lora`.
        graph: A :class:`ModuleGraph` traced with an example input, instead of ``example_input``.

    Returns:
        The config.

    Raises:
        ValueError: ``kind`` is neither ``"tt"`` nor ``"tk"``, or ``targets`` match no ``nn.Linear``.
    """
    if kind not in ("tt", "tk"):
        raise ValueError(f"strategies.fact: kind must be 'tt' or 'tk', got {kind!r}")
    matches = _target_check(targets)
    paths = _by_role(path for path, m in model.named_modules() if isinstance(m, nn.Linear) and matches(path))
    if not paths:
        raise ValueError(
            "strategies.fact: targets "
            f"{list(targets) if not isinstance(targets, str) else targets!r} match no nn.Linear "
            f"layer of {type(model).__name__}"
        )
    settings: dict = {"r": r}
    if scale != 1.0:
        settings["scale"] = scale
    if dropout != 0.1:
        settings["dropout"] = dropout
    name = f"FacT_{kind}"
    never_run = _never_run(model, example_input, graph)
    modules = dict(model.named_modules())

    def place(path: str):
        if path in never_run or hook_problem(modules[path]):
            return placement(path, name, "adapt_weight", **{**settings, "dropout": 0.0})
        return placement(path, name, "adapt_output", **settings)

    return Config(tuple(place(p) for p in paths), _with_head(model, [], head))


__all__ = ["FACT_TARGETS", "fact"]

"""Trainable tokens: train only some rows of an embedding (Hugging Face PEFT's ``trainable_token_indices``
and ``TrainableTokensConfig``).

A weight method: while attached, the layer's ``weight`` reads ``W`` with the listed rows replaced by the
add-in's own copy of them (``rows``, ``[len(indices), dim]``, starting as those rows of ``W``, so the model
is unchanged at attach). Only ``rows`` train; the stored weight never changes, so detach is exact, and
``merge()`` writes the rows into the weight (unmerge restores it bit for bit). Typical use: new tokens
added to a vocabulary, without training the whole embedding.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement, Point
from .base import AddinBase, PointInfo, weight_method
from .interop import PeftEntry, PeftImport, PeftMapping
from .registry import register_addin

_RANGE = re.compile(r"^\s*(\d+)\s*(?::\s*(\d+)\s*)?$")
TOKEN_KEY = "token_adapter.trainable_tokens_delta"  # PEFT's name inside a LoRA adapter
STANDALONE_KEY = "trainable_tokens_delta"  # ... and in a TrainableTokensConfig adapter


def parse_indices(indices: Any, rows: int | None = None) -> list[int]:
    """``indices`` as a list of ints: an int, a list/tuple of ints, or a string of comma-separated
    numbers and end-exclusive ranges (``"0, 10, 32000:32004"``). With ``rows`` (the layer's), a range
    past the end or more indices than rows is refused before it is expanded. Raises ``ValueError``."""
    if isinstance(indices, bool):
        raise ValueError(f"TrainableTokens indices must be token numbers, got {indices!r}")
    if isinstance(indices, int):
        return [indices]
    if isinstance(indices, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise ValueError(f"TrainableTokens indices must be whole numbers, got {list(indices)!r}")
        bad = [i for i in indices if rows is not None and not 0 <= i < rows]
        if bad:
            raise ValueError(
                f"TrainableTokens index {bad[0]} is out of range: the layer has {rows} rows "
                f"(tokens 0 to {rows - 1})"
            )
        return list(indices)
    if not isinstance(indices, str):
        raise ValueError(
            f"TrainableTokens indices must be a number, a list of numbers or a string like "
            f'"0, 10, 32000:32004", got {indices!r}'
        )
    out: list[int] = []
    for part in indices.split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(
                f"TrainableTokens indices: {part.strip()!r} is not a token number or a range "
                f"'start:end' (in {indices!r})"
            )
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) is not None else start + 1
        if end <= start:
            raise ValueError(f"TrainableTokens indices: the range {part.strip()!r} is empty")
        if rows is not None and end > rows:
            raise ValueError(
                f"TrainableTokens index {end - 1} is out of range: the layer has {rows} rows "
                f"(tokens 0 to {rows - 1})"
            )
        if rows is not None and len(out) + end - start > rows:
            raise ValueError(
                f"TrainableTokens indices list more tokens than the layer's {rows} rows: some "
                f"are listed twice"
            )
        out.extend(range(start, end))
    return out


def format_indices(indices: Sequence[int]) -> str:
    """The canonical string form of ``indices`` (runs of 3 or more consecutive numbers as ranges)."""
    parts, i = [], 0
    while i < len(indices):
        j = i
        while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{indices[i]}:{indices[j] + 1}")
        else:
            parts.extend(str(k) for k in indices[i : j + 1])
        i = j + 1
    return ", ".join(parts)


@register_addin
class TrainableTokens(AddinBase):
    """Train the listed rows of an embedding's weight (its token vectors), nothing else of it::

        (TrainableTokens.adapt_weight, indices="0, 10"): ...->(emb){inout1}->...
        (TrainableTokens.adapt_weight, indices="32000:32008"): ...->(transformer.wte){inout1}->...

    ``indices`` (token numbers and end-exclusive ranges, comma-separated: ``"0, 10, 32000:32008"``).
    Works on any layer with a 2-D ``weight`` whose rows are tokens (``nn.Embedding``; an untied
    ``lm_head`` Linear). The adapted rows are what *this* layer reads: with tied input/output
    embeddings the other layer keeps reading the stored weight, and ``merge()`` refuses (or
    ``merge(untie=True)``), as for any weight method on a tied parameter. Parameter: ``rows``
    ``[len(indices), dim]``.
    """

    offers = ("adapt_weight",)  # the methods a string may name

    def __init__(self, point: PointInfo, indices: Any) -> None:
        super().__init__()
        module = point.module
        if point.side != "post":
            raise ValueError(
                f"TrainableTokens adapts a layer's weight: write ({point.path}){{inout1}} with "
                f"adapt_weight, not a point before it"
            )
        weight = getattr(module, "_parameters", {}).get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(
                f"TrainableTokens needs a layer with a 2-D weight of token rows (nn.Embedding), "
                f"not {type(module).__name__}"
            )
        if not weight.is_floating_point():
            raise ValueError(f"TrainableTokens needs a floating-point weight, not {weight.dtype}")
        found = parse_indices(indices, weight.shape[0])
        if not found:
            raise ValueError("TrainableTokens needs at least one token index")
        bad = [i for i in found if not 0 <= i < weight.shape[0]]
        if bad:
            raise ValueError(
                f"TrainableTokens index {bad[0]} is out of range: the layer has "
                f"{weight.shape[0]} rows (tokens 0 to {weight.shape[0] - 1})"
            )
        twice = sorted({i for i in found if found.count(i) > 1})
        if twice:
            raise ValueError(f"TrainableTokens index {twice[0]} is listed twice")
        self.indices = found
        self.register_buffer(
            "_index", torch.tensor(found, dtype=torch.long, device=weight.device), persistent=False
        )
        self.rows = nn.Parameter(weight.detach()[self._index].clone())

    def extra_repr(self) -> str:
        return f"indices=[{format_indices(self.indices)}], rows={tuple(self.rows.shape)}"

    @weight_method()
    def adapt_weight(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the listed rows replaced by ``rows``."""
        return weight.index_copy(0, self._index.to(weight.device), self.rows.to(weight.dtype))


class TrainableTokensPeft(PeftMapping):
    """PEFT's ``TrainableTokensConfig`` (``peft_type`` TRAINABLE_TOKENS; tensors
    ``<module>.trainable_tokens_delta``, the new rows themselves), and the same tensors inside a LoRA
    adapter (``trainable_token_indices``, ``<module>.token_adapter.trainable_tokens_delta``)."""

    peft_type = "TRAINABLE_TOKENS"
    joins = ("LORA",)  # a LoRA adapter can hold these tensors too

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, indices = _export(entries, STANDALONE_KEY)
        lists = {tuple(v) for v in indices.values()}
        if len(lists) > 1:
            raise ValueError(
                "PEFT's TrainableTokensConfig has one token_indices list for all its layers; "
                "these TrainableTokens list different tokens"
            )
        return tensors, {
            "target_modules": sorted(indices),
            "token_indices": list(lists.pop()),
            "init_weights": True,
        }

    def export_joined(
        self, entries: Sequence[PeftEntry], host: str
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and config fields these entries add to a ``host`` (LORA) adapter."""
        tensors, indices = _export(entries, TOKEN_KEY)
        return tensors, {"trainable_token_indices": indices}

    def claims(self, name: str) -> bool:
        return name.endswith("." + STANDALONE_KEY)

    def read(
        self,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        model: nn.Module,
        addin: str,
        source: str,
    ) -> list[PeftImport]:
        targets = config.get("target_modules")
        if isinstance(targets, str):
            raise ValueError(
                f"{source}: field 'target_modules' as a pattern is not supported for trainable "
                f"tokens; list the embedding layers"
            )
        indices = config.get("token_indices")
        if not isinstance(targets, list) or not targets:
            raise ValueError(f"{source}: field 'target_modules' must list the embedding layers")
        modules = dict(model.named_modules())
        spec = {}
        for name in targets:
            path = _resolve(name, modules, model, source)
            spec[path] = indices
        return read_tokens(spec, tensors, STANDALONE_KEY, model, addin, source)


TrainableTokens.peft = TrainableTokensPeft()  # type: ignore[misc]


def _export(entries: Sequence[PeftEntry], key: str) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    tensors: dict[str, torch.Tensor] = {}
    indices: dict[str, list[int]] = {}
    for e in entries:
        path = e.placement.target.module
        if e.placement.method != "adapt_weight":
            raise ValueError(f"PEFT export covers TrainableTokens.adapt_weight; '{e.key}' is not one")
        if not isinstance(e.module, nn.Embedding):
            raise ValueError(
                f"PEFT export covers trainable tokens on nn.Embedding layers; '{path}' is a "
                f"{type(e.module).__name__}"
            )
        if path in indices:
            raise ValueError(f"two TrainableTokens on '{path}' cannot be one PEFT adapter")
        tensors[f"{path}.{key}"] = e.addin.rows
        indices[path] = list(e.addin.indices)
    return tensors, indices


def _resolve(name: str, modules: Mapping[str, nn.Module], model: nn.Module, source: str) -> str:
    """A PEFT module name (full path or a suffix of one, as PEFT matches it) -> our module path."""
    if name in modules:
        return name
    found = [p for p in modules if p.endswith("." + name)]
    if len(found) != 1:
        raise ValueError(
            f"{source}: trainable tokens for module '{name}', which this "
            f"{type(model).__name__} "
            + ("does not have" if not found else f"has {len(found)} of ({', '.join(found)})")
        )
    return found[0]


def token_layers(spec: Any, model: nn.Module, source: str) -> dict[str, Any]:
    """LoraConfig's ``trainable_token_indices`` as ``{module path: indices}``: a dict names the layers, a
    list means the model's input embedding (``get_input_embeddings()``, else the one ``embed_tokens``)."""
    modules = dict(model.named_modules())
    if isinstance(spec, dict):
        return {_resolve(str(k), modules, model, source): v for k, v in spec.items()}
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    path = next((p for p, m in modules.items() if m is embedding), None) if embedding is not None else None
    return {path or _resolve("embed_tokens", modules, model, source): spec}


def read_tokens(
    spec: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    key: str,
    model: nn.Module,
    addin: str,
    source: str,
) -> list[PeftImport]:
    """The TrainableTokens placements for ``{module path: indices}`` and their ``rows`` (tensor
    ``<path>.<key>``). Refuses a layer whose weight is tied to another's (PEFT would adapt both)."""
    modules = dict(model.named_modules())
    ties: dict[int, list[str]] = {}  # a module shared by several parents holds its weight once: no tie
    for mod_path, module in modules.items():
        for n, p in module._parameters.items():
            if p is not None:
                ties.setdefault(id(p), []).append(f"{mod_path}.{n}" if mod_path else n)
    out = []
    seen = set()
    for path, indices in spec.items():
        weight = getattr(modules[path], "_parameters", {}).get("weight")
        rows = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() else None
        if not isinstance(indices, list):  # PEFT writes lists; our string form is no PEFT value
            raise ValueError(
                f"{source}: the token indices for '{path}' must be a list of token numbers, got "
                f"{type(indices).__name__} {indices!r:.60}"
            )
        try:
            found = parse_indices(indices, rows)
        except ValueError as exc:
            raise ValueError(f"{source}: the token indices for '{path}': {exc}") from None
        twice = next((i for n, i in enumerate(found) if i in found[:n]), None)
        if twice is not None:
            raise ValueError(f"{source}: the token indices for '{path}' list token {twice} twice")
        name = f"{path}.{key}"
        if name not in tensors:
            raise ValueError(f"{source}: the adapter trains tokens of '{path}' but holds no '{name}'")
        seen.add(name)
        others = [n for n in ties.get(id(weight), ()) if n != f"{path}.weight"] if weight is not None else []
        if others:
            raise ValueError(
                f"{source}: trainable tokens on '{path}', whose weight is tied to "
                f"{', '.join(repr(o) for o in others)}: PEFT adapts both; from_peft imports "
                f"trainable tokens on untied layers only"
            )
        point = Point(path, "post")
        settings = {"indices": format_indices(found)}
        out.append(
            PeftImport(
                Placement(
                    "TrainableTokens" if key == TOKEN_KEY else addin, "adapt_weight", point, point, settings
                ),
                {"rows": tensors[name]},
            )
        )
    extra = sorted(n for n in tensors if n not in seen and n.endswith(key))
    if extra:
        raise ValueError(
            f"{source}: tensor 'base_model.model.{extra[0]}' belongs to no layer the config's "
            f"token indices name"
        )
    return out

"""The settings form of an add-in, read from its factory's signature and docstring (no Jupyter here).

``schema(factory)`` lists the settings a config string may give it (the engine passes ``point``,
``source_point`` and ``shared`` itself); ``convert(field, text)`` turns what a user typed into the value
written in the string, with a clear ValueError for bad input. A factory's ``setting_choices``
(``{"layout": ("balanced", "peft")}`` on LoRA) lists the values a text setting takes: the form offers
them as a list.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from ..engine.resolve import ENGINE_ARGUMENTS

RESERVED = {"self", *ENGINE_ARGUMENTS}


@dataclass(frozen=True)
class Field:
    """One setting: ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``optional`` accepts none;
    ``depends``: the on/off setting it refines (``velora_groups`` -> ``velora``), shown only when that
    one is on; ``choices``: the values a text setting takes (from the factory's ``setting_choices``)."""

    name: str
    kind: str
    default: Any
    optional: bool
    help: str
    depends: str = ""
    choices: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """JSON-ready (a default that is not a plain value is shown by its repr)."""
        d = asdict(self)
        if not isinstance(self.default, (bool, int, float, str, type(None))):
            d["default"] = repr(self.default)
        d["choices"] = list(self.choices)
        return d


def _kind(annotation: Any, default: Any) -> tuple[str, bool]:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if annotation is inspect.Parameter.empty:
        text = ""
    optional = default is None or "None" in text or "Optional" in text
    for kind, python in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(default, python):
            return kind, optional
    for kind in ("bool", "float", "int", "str"):  # float before int: "float | int" is a number
        if re.search(rf"\b{kind}\b", text):
            return kind, optional
    return "str", optional


def _help(doc: str, name: str) -> str:
    """The docstring's one-line help for ``name``: ``name: text`` (Args) or ````name```` (text)."""
    for line in doc.splitlines():
        m = re.match(rf"\s*{re.escape(name)}\s*(\([^)]*\))?\s*:\s*(.+)", line)
        if m:
            return m.group(2).strip()
    m = re.search(rf"``{re.escape(name)}``\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)", doc)
    if m:
        return " ".join(m.group(1).split())
    return ""


def schema(factory: Callable) -> list[Field]:
    """The settings ``factory`` takes, in signature order."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    doc = inspect.getdoc(factory) or ""
    if isinstance(factory, type):
        doc += "\n" + (inspect.getdoc(factory.__init__) or "")
    choices = getattr(factory, "setting_choices", None)
    choices = choices if isinstance(choices, dict) else {}
    out = []
    for p in sig.parameters.values():
        if p.name in RESERVED or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        default = None if p.default is p.empty else p.default
        kind, optional = _kind(p.annotation, default)
        listed = choices.get(p.name, ())
        listed = tuple(str(c) for c in listed) if kind == "str" and isinstance(listed, (tuple, list)) else ()
        out.append(
            Field(
                p.name,
                kind,
                default,
                optional and p.default is not p.empty,
                _help(doc, p.name),
                choices=listed,
            )
        )
    switches = {f.name for f in out if f.kind == "bool"}
    return [
        replace(f, depends=f.name.split("_", 1)[0])
        if "_" in f.name and f.name.split("_", 1)[0] in switches
        else f
        for f in out
    ]


def convert(field: Field, text: Any) -> Any:
    """A typed-in value as the setting's type; ValueError names the setting when it cannot be."""
    if not isinstance(text, str):
        text = "" if text is None else str(text).lower() if isinstance(text, bool) else str(text)
    raw = text.strip()
    if raw == "" or raw.lower() == "none":
        if field.optional:
            return None
        if raw == "":
            return field.default
        raise ValueError(f"setting {field.name!r} needs a {field.kind}, not none")
    try:
        if field.kind == "bool":
            if raw.lower() in ("true", "1", "yes", "on"):
                return True
            if raw.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if field.kind == "int":
            return int(raw)
        if field.kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"setting {field.name!r} needs a {field.kind}, got {raw!r}") from None
    if field.choices and raw not in field.choices:
        raise ValueError(f"setting {field.name!r} is one of {', '.join(field.choices)}; got {raw!r}")
    return raw

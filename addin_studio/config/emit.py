"""Canonical emission: ``str(Config)``.

One entry per line. Consecutive placements that differ only by block indices that step by one are
written as one entry with ranges (``blocks[0:12].attn.qkv``), so strategies' configs stay short.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

from .model import Config, Placement
from .paths import is_index, split_path

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def emit(cfg: Config) -> str:
    lines = [_entry(run) for run in _runs(cfg.placements)]
    if cfg.trainable:
        lines.append("trainable(" + ", ".join(_compress_patterns(cfg.trainable)) + ")")
    if cfg.running_stats:
        lines.append("running_stats(" + ", ".join(_compress_patterns(cfg.running_stats)) + ")")
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """A setting value as it is written in a string."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "none"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"setting value {value!r} is not finite: a config string holds finite "
                             f"numbers only")
        text = repr(value)
        return text if any(c in text for c in ".eE") or "n" in text else text + ".0"
    text = str(value)
    if _BARE.match(text) and text.lower() not in ("true", "false", "none"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- runs of placements that compress into ranges ---------------------------------------------------
def _paths(p: Placement) -> list[str]:
    return [p.source.module] if p.source.module == p.target.module else [p.source.module, p.target.module]


def _template(p: Placement) -> tuple:
    temps = tuple(tuple("#" if is_index(s) else s for s in split_path(path)) for path in _paths(p))
    return (p.addin, p.method, tuple(sorted((k, repr(v)) for k, v in p.settings.items())),
            p.source.side, p.target.side, p.source.module == p.target.module, temps)


def _indices(p: Placement) -> list[int]:
    return [int(s) for path in _paths(p) for s in split_path(path) if is_index(s)]


def _runs(placements: Sequence[Placement]) -> list[tuple[Placement, int, list[int]]]:
    """Group consecutive placements into (first, length, delta) runs."""
    runs: list[tuple[Placement, int, list[int]]] = []
    i = 0
    while i < len(placements):
        first = placements[i]
        n, delta = 1, None
        if i + 1 < len(placements) and _template(placements[i + 1]) == _template(first):
            d = [b - a for a, b in zip(_indices(first), _indices(placements[i + 1]))]
            if d and all(x in (0, 1) for x in d) and any(d):
                delta = d
                while (i + n < len(placements) and _template(placements[i + n]) == _template(first)
                       and [b - a for a, b in zip(_indices(first), _indices(placements[i + n]))]
                       == [x * n for x in delta]):
                    n += 1
        runs.append((first, n, delta or []))
        i += n
    return runs


def _fmt(path: str, starts: list[int], delta: list[int], n: int) -> str:
    """Format a dotted path, turning the index positions with delta 1 into ranges."""
    out = ""
    for seg in split_path(path):
        if is_index(seg):
            d = delta.pop(0) if delta else 0
            start = starts.pop(0)
            out += f"[{start}:{start + n}]" if (d and n > 1) else f"[{seg}]"
        else:
            out += ("." if out else "") + seg
    return out


def _entry(run: tuple[Placement, int, list[int]]) -> str:
    p, n, delta = run
    starts, delta = _indices(p), list(delta)
    header = f"({p.addin}.{p.method}"
    for key in sorted(p.settings):
        header += f", {key}={format_value(p.settings[key])}"
    header += ")"
    src = _fmt(p.source.module, starts, delta, n)
    if p.source == p.target:
        body = f"{{inout1}}({src})" if p.source.side == "pre" else f"({src}){{inout1}}"
        return f"{header}: ...->{body}->..."
    if p.source.module == p.target.module:  # pre -> post of one module
        return f"{header}: ...->{{in1}}({src}){{out1}}->..."
    dst = _fmt(p.target.module, starts, delta, n)
    a = f"{{in1}}({src})" if p.source.side == "pre" else f"({src}){{in1}}"
    b = f"{{out1}}({dst})" if p.target.side == "pre" else f"({dst}){{out1}}"
    return f"{header}: ...->{a}->...->{b}->..."


def _compress_patterns(patterns: Sequence[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(patterns):
        segs = split_path(patterns[i])
        temp = ["#" if is_index(s) else s for s in segs]
        idx = [int(s) for s in segs if is_index(s)]
        n, delta = 1, None
        if i + 1 < len(patterns):
            nsegs = split_path(patterns[i + 1])
            if ["#" if is_index(s) else s for s in nsegs] == temp and idx:
                d = [b - a for a, b in zip(idx, [int(s) for s in nsegs if is_index(s)])]
                if all(x in (0, 1) for x in d) and any(d):
                    delta = d
                    while i + n < len(patterns):
                        ns = split_path(patterns[i + n])
                        if (["#" if is_index(s) else s for s in ns] != temp or
                                [b - a for a, b in zip(idx, [int(s) for s in ns if is_index(s)])]
                                != [x * n for x in delta]):
                            break
                        n += 1
        out.append(_fmt(patterns[i], list(idx), list(delta or []), n))
        i += n
    return out

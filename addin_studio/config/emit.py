"""Canonical emission: ``str(Config)``.

One entry per line. Placements with the same add-in, method and settings that repeat, step by
step, with block indices advancing by one are written as one entry with ranges: ``blocks[0:12].attn.qkv``,
or several labels whose ranges advance together (``(layer1[0:2].conv1){inout1}->...->(layer1[0:2].conv2)
{inout2}``, the order ``layer1.0.conv1, layer1.0.conv2, layer1.1.conv1, ...``). Placements of one block
that start no such run share a line (at most ``MAX_PLAIN``). The order of the placements is kept, so
``parse(str(cfg)) == cfg``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Sequence

from .model import Config, Placement
from .paths import is_index, split_path

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def emit(cfg: Config) -> str:
    lines = _lines(cfg.placements)
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
            raise ValueError(
                f"setting value {value!r} is not finite: a config string holds finite numbers only"
            )
        text = repr(value)
        return text if any(c in text for c in ".eE") or "n" in text else text + ".0"
    text = str(value)
    if _BARE.match(text) and text.lower() not in ("true", "false", "none"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- entries: runs of placements that compress into ranges ------------------------------------------
#: the most placements one step of a ranged entry holds (a block's convolutions, a layer's projections)
MAX_PERIOD = 32
#: the most placements an entry without ranges holds (placements of one block, written on one line)
MAX_PLAIN = 8


@functools.lru_cache(maxsize=4096)  # each path is split several times in a row while emitting
def _split(path: str) -> tuple[str, ...]:
    return tuple(split_path(path))


def _paths(p: Placement) -> list[str]:
    return [p.source.module] if p.source.module == p.target.module else [p.source.module, p.target.module]


def _head(p: Placement) -> tuple:
    return (p.addin, p.method, tuple(sorted((k, repr(v)) for k, v in p.settings.items())))


def _template(p: Placement) -> tuple:
    temps = tuple(tuple("#" if is_index(s) else s for s in _split(path)) for path in _paths(p))
    return (_head(p), p.source.side, p.target.side, p.source.module == p.target.module, temps)


def _indices(p: Placement) -> list[int]:
    return [int(s) for path in _paths(p) for s in _split(path) if is_index(s)]


def _block(p: Placement) -> str:
    """The repeated container a placement sits in: its source path up to its first index (``layer2.0``),
    or the whole path when it has none (such placements get a line each)."""
    segs = _split(p.source.module)
    for i, seg in enumerate(segs):
        if is_index(seg):
            return ".".join(segs[: i + 1])
    return p.source.module


class _Group:
    """``count`` steps of ``width`` placements: entry ``first..first + width * count`` of the config,
    written as one line; ``deltas[j]`` says which indices of placement ``j`` step by one (ranges)."""

    def __init__(self, first: int, width: int, count: int, deltas: list[list[int]]) -> None:
        self.first, self.width, self.count, self.deltas = first, width, count, deltas

    @property
    def end(self) -> int:
        return self.first + self.width * self.count


class _Planner:
    """Splits placements into entries, deterministically and in order (``parse`` gives them back in
    the same order): the longest run of steps first, else the placements of one block on one line."""

    def __init__(self, placements: Sequence[Placement]) -> None:
        self.items = placements
        self.temps, self.idx, self.blocks = [], [], []
        for p in placements:  # one placement at a time: its paths are split once (cached)
            self.temps.append(_template(p))
            self.idx.append(_indices(p))
            self.blocks.append(_block(p))
        self.heads = [t[0] for t in self.temps]
        n = len(placements)
        # the next placement with the same template (a step can only end there) and the end of the
        # stretch with this header: each start is tried against a few candidates, not MAX_PERIOD
        self.next_same = [n] * n
        last: dict[tuple, int] = {}
        self.head_end = [n] * n
        for i in range(n - 1, -1, -1):
            self.next_same[i] = last.get(self.temps[i], n)
            last[self.temps[i]] = i
            if i + 1 < n and self.heads[i + 1] == self.heads[i]:
                self.head_end[i] = self.head_end[i + 1]
            else:
                self.head_end[i] = i + 1

    def _delta(self, a: int, b: int) -> list[int] | None:
        if self.temps[a] != self.temps[b]:
            return None
        d = [y - x for x, y in zip(self.idx[a], self.idx[b])]
        return d if d and all(x in (0, 1) for x in d) and any(d) else None

    def _run(self, i: int, k: int) -> _Group | None:
        """Steps of ``k`` placements from ``i`` whose indices advance by one per step (at least 2)."""
        items = self.items
        if i + 2 * k > len(items):
            return None
        deltas = []
        for j in range(k):
            d = self._delta(i + j, i + k + j)
            if d is None:
                return None
            deltas.append(d)
        n = 2
        while i + (n + 1) * k <= len(items) and all(
            self.temps[i + n * k + j] == self.temps[i + j]
            and [y - x for x, y in zip(self.idx[i + j], self.idx[i + n * k + j])] == [x * n for x in d]
            for j, d in enumerate(deltas)
        ):
            n += 1
        return _Group(i, k, n, deltas)

    def best_run(self, i: int) -> _Group | None:
        """The run from ``i`` that covers the most placements (the fewest placements per step on a tie)."""
        best: _Group | None = None
        j = self.next_same[i]  # a step of k placements: placement i + k repeats placement i
        while j - i <= MAX_PERIOD and j <= self.head_end[i]:  # one entry has one header
            run = self._run(i, j - i)
            if run is not None and (best is None or run.end > best.end):
                best = run
            j = self.next_same[j] if j < len(self.items) else len(self.items) + MAX_PERIOD + 1
        return best

    def groups(self) -> list[_Group]:
        out: list[_Group] = []
        i, n = 0, len(self.items)
        while i < n:
            run = self.best_run(i)
            if run is None:
                j, block = i + 1, self.blocks[i]
                while (
                    j < n
                    and j - i < MAX_PLAIN
                    and self.heads[j] == self.heads[i]
                    and self.blocks[j] == block
                    and self.best_run(j) is None
                ):
                    j += 1
                run = _Group(i, j - i, 1, [[] for _ in range(j - i)])
            out.append(run)
            i = run.end
        return out


def entry_spans(placements: Sequence[Placement]) -> list[tuple[int, int]]:
    """``(start, end)`` of the placements each line of the canonical string holds, in order."""
    return [(g.first, g.end) for g in _Planner(placements).groups()]


def _lines(placements: Sequence[Placement]) -> list[str]:
    """The placement lines of the canonical string."""
    plan = _Planner(placements)
    return [
        _entry(
            list(placements[g.first : g.first + g.width]),
            g.count,
            g.deltas,
            plan.idx[g.first : g.first + g.width],
        )
        for g in plan.groups()
    ]


def _fmt(path: str, starts: list[int], delta: list[int], n: int) -> str:
    """Format a dotted path, turning the index positions with delta 1 into ranges."""
    out = ""
    for seg in _split(path):
        if is_index(seg):
            d = delta.pop(0) if delta else 0
            start = starts.pop(0)
            out += f"[{start}:{start + n}]" if (d and n > 1) else f"[{seg}]"
        else:
            out += ("." if out else "") + seg
    return out


def _points(p: Placement, number: int, n: int, delta: list[int], starts: list[int]) -> str:
    """The chain elements of one placement, labelled ``number`` (``starts``: its indices)."""
    starts, delta = list(starts), list(delta)
    src = _fmt(p.source.module, starts, delta, n)
    if p.source == p.target:
        return f"{{inout{number}}}({src})" if p.source.side == "pre" else f"({src}){{inout{number}}}"
    if p.source.module == p.target.module:  # pre -> post of one module
        return f"{{in{number}}}({src}){{out{number}}}"
    dst = _fmt(p.target.module, starts, delta, n)
    a = f"{{in{number}}}({src})" if p.source.side == "pre" else f"({src}){{in{number}}}"
    b = f"{{out{number}}}({dst})" if p.target.side == "pre" else f"({dst}){{out{number}}}"
    return f"{a}->...->{b}"


def _entry(step: list[Placement], n: int, deltas: list[list[int]], starts: list[list[int]]) -> str:
    """One line: the placements of the first step, the number of steps, their deltas and indices."""
    p = step[0]
    header = f"({p.addin}.{p.method}"
    for key in sorted(p.settings):
        header += f", {key}={format_value(p.settings[key])}"
    header += ")"
    body = "->...->".join(_points(q, j + 1, n, d, i) for j, (q, d, i) in enumerate(zip(step, deltas, starts)))
    return f"{header}: ...->{body}->..."


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
                        if ["#" if is_index(s) else s for s in ns] != temp or [
                            b - a for a, b in zip(idx, [int(s) for s in ns if is_index(s)])
                        ] != [x * n for x in delta]:
                            break
                        n += 1
        out.append(_fmt(patterns[i], list(idx), list(delta or []), n))
        i += n
    return out

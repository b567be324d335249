"""``print(model)`` line by line, each line tagged with the module it belongs to.

Re-creates ``nn.Module.__repr__`` (and ``nn.ModuleList``'s compression of repeated blocks) while
keeping track of paths. A module with its own ``__repr__`` keeps its text; all its lines map to it.
If the re-creation does not reproduce ``repr(model)`` exactly, the lines are still returned but
``exact`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class Line:
    text: str
    path: str | None = None  # module this line belongs to ("" for the root)
    head: bool = False  # first line of the module: carries its pre point
    tail: bool = False  # last line of the module: carries its post point
    group: str | None = None  # inside a compressed "(0-11): 12 x Block(" block: "blocks:0:12"
    range: str | None = None  # on the "(0-11): 12 x ..." line itself: "0:12"
    point: str | None = None  # module of the line's points when it differs from ``path``

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, False)}


def _custom_repr(module: nn.Module) -> bool:
    cls_repr = type(module).__repr__
    return cls_repr not in (nn.Module.__repr__, nn.ModuleList.__repr__)


def _lines(module: nn.Module, path: str, group: str | None) -> list[Line]:
    if _custom_repr(module):
        text = repr(module).split("\n")
        out = [Line(t, path, group=group) for t in text]
    elif isinstance(module, nn.ModuleList) and type(module).__repr__ is nn.ModuleList.__repr__:
        out = _module_list(module, path, group)
    else:
        out = _plain(module, path, group)
    out[0].head = True
    out[-1].tail = True
    return out


def _join(prefix: str, path: str, child: list[Line]) -> list[Line]:
    """``(key): <child repr>`` indented by two spaces (torch's ``_addindent``)."""
    first = Line(
        prefix + child[0].text,
        child[0].path,
        child[0].head,
        child[0].tail,
        child[0].group,
        child[0].range,
        child[0].point,
    )
    rest = [
        Line(("  " + c.text) if c.text.strip() else "", c.path, c.head, c.tail, c.group, c.range, c.point)
        for c in child[1:]
    ]
    return [first] + rest


def _indent_first(block: list[Line]) -> list[Line]:
    """torch joins child blocks with ``"\n  "``: only a block's first line gains two spaces."""
    first = block[0]
    return [
        Line("  " + first.text, first.path, first.head, first.tail, first.group, first.range, first.point)
    ] + block[1:]


def _sub(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _plain(module: nn.Module, path: str, group: str | None) -> list[Line]:
    extra = module.extra_repr()
    extra_lines = extra.split("\n") if extra else []
    children: list[list[Line]] = []
    for key, child in module._modules.items():
        if child is None:
            children.append([Line(f"({key}): None", None, group=group)])
            continue
        children.append(_join(f"({key}): ", _sub(path, key), _lines(child, _sub(path, key), group)))
    name = module._get_name() + "("
    if len(extra_lines) == 1 and not children:
        return [Line(name + extra_lines[0] + ")", path, group=group)]
    if not extra_lines and not children:
        return [Line(name + ")", path, group=group)]
    out = [Line(name, path, group=group)]
    for t in extra_lines:
        out.append(Line("  " + t if t.strip() else "", path, group=group))
    for block in children:
        out.extend(_indent_first(block))
    out.append(Line(")", path, group=group))
    return out


def _module_list(module: nn.ModuleList, path: str, group: str | None) -> list[Line]:
    items = list(module)
    if not items:
        return [Line(module._get_name() + "()", path, group=group)]
    reprs = [repr(x) for x in items]
    runs = [[0, 0]]
    for i in range(1, len(reprs)):
        if reprs[i] == reprs[runs[-1][0]]:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    out = [Line(module._get_name() + "(", path, group=group)]
    for start, end in runs:
        child_path = _sub(path, str(start))
        if start == end:
            block = _join(f"({start}): ", child_path, _lines(items[start], child_path, group))
        else:
            n = end - start + 1
            ranged = group is None  # no ranges inside ranges
            tag = f"{path}:{start}:{end + 1}" if ranged else group
            block = _join(f"({start}-{end}): {n} x ", child_path, _lines(items[start], child_path, tag))
            if ranged:  # the line stands for blocks start..end: a range, like a collapsed group
                block[0].point, block[0].path, block[0].range = child_path, path, f"{start}:{end + 1}"
        out.extend(_indent_first(block))
    out.append(Line(")", path, group=group))
    return out


def printout(model: nn.Module) -> tuple[list[Line], bool]:
    """The lines of ``print(model)`` with their modules, and whether they match it exactly."""
    lines = _lines(model, "", None)
    return lines, "\n".join(line.text for line in lines) == repr(model)

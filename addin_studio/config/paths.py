"""Module paths: the dotted names ``print(model)`` shows and their config-string spelling."""

from __future__ import annotations

import re

_INDEX = re.compile(r"^\d+$")


def split_path(path: str) -> list[str]:
    """``"blocks[3].attn"`` or ``"blocks.3.attn"`` -> ``["blocks", "3", "attn"]``."""
    if not path:
        return []
    return [seg for seg in re.split(r"\.|\[|\]", path) if seg != ""]


def to_dotted(path: str) -> str:
    """Normalise a config-string path to the dotted form of ``named_modules``."""
    return ".".join(split_path(path))


def format_path(path: str) -> str:
    """Dotted path -> config-string spelling: ``"blocks.3.attn"`` -> ``"blocks[3].attn"``.

    Args:
        path: A module path (dotted or already in config-string form).

    Returns:
        The path with numeric segments written as ``[i]``.
    """
    out = ""
    for seg in split_path(path):
        if _INDEX.match(seg):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + seg
    return out


def is_index(segment: str) -> bool:
    return bool(_INDEX.match(segment))

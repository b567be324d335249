"""PEFT ``rank_pattern`` / ``alpha_pattern`` keys, matched without a backtracking regex engine.

PEFT treats a key as a regular expression matched against the end of a module path
(``(.*\\.)?(key)$``). A file can hold any key, and ``re`` on a key like ``(.*.*.*.*)*x`` runs for
minutes. We accept the subset real adapters use — literal names, ``.`` (any character), ``\\.`` (a
dot), ``.*`` / ``.+`` and anchors ``^`` ``$`` — and match it with a set-of-states simulation that is
linear in the path's length for a fixed key. Anything else is a ValueError naming the key.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

MAX_KEY_CHARS = 500
_LITERAL = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/:")

# a compiled key: a list of tokens ("lit", ch) | ("any",) | ("star",) | ("plus",)
Token = tuple


def compile_key(key: str, source: str, field: str) -> list[Token]:
    """Tokens of a rank/alpha pattern key; ValueError for a key outside the supported subset."""
    if not isinstance(key, str):
        raise ValueError(f"{source}: field '{field}' has a key of type {type(key).__name__}, not a string")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(
            f"{source}: field '{field}' has a key of {len(key)} characters (at most {MAX_KEY_CHARS})"
        )
    body = key[1:] if key.startswith("^") else key
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    tokens: list[Token] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in ".-_/":
            tokens.append(("lit", body[i + 1]))
            i += 2
            continue
        if ch == ".":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt in "*+":
                tokens.append(("star",) if nxt == "*" else ("plus",))
                i += 2
                continue
            tokens.append(("any",))
            i += 1
            continue
        if ch in _LITERAL:
            tokens.append(("lit", ch))
            i += 1
            continue
        raise ValueError(
            f"{source}: field '{field}' key {key[:60]!r} uses {ch!r}; supported in pattern "
            f"keys: names, '.', '\\.', '.*', '.+', '^' and '$'"
        )
    return tokens


def key_matches(tokens: list[Token], path: str) -> bool:
    """PEFT's rule ``(.*\\.)?(key)$``: the key matches the whole path or a suffix that starts after a
    dot. One pass of a set-of-states simulation: O(len(path) * len(tokens)), no backtracking."""
    m = len(tokens)

    def close(active: list[bool]) -> list[bool]:
        for j in range(m):  # '.*' may match nothing: a forward sweep reaches past runs of stars
            if active[j] and tokens[j][0] == "star":
                active[j + 1] = True
        return active

    active = close([True] + [False] * m)
    for ch in path:
        nxt = [False] * (m + 1)
        for j in range(m):
            if not active[j]:
                continue
            kind = tokens[j][0]
            if kind == "any" or (kind == "lit" and tokens[j][1] == ch):
                nxt[j + 1] = True
            elif kind == "star":
                nxt[j] = True
            elif kind == "plus":  # one character consumed: stay for more, or move on
                nxt[j] = True
                nxt[j + 1] = True
        if ch == ".":
            nxt[0] = True  # the key may start after any dot
        active = close(nxt)
    return active[m]


def pattern_value(patterns: Any, path: str, default: Any, source: str, field: str) -> Any:
    """The value of the first key of ``patterns`` (a JSON object) that matches ``path``, else
    ``default``; every malformed key or value is a ValueError naming ``source`` and ``field``."""
    if patterns is None:
        return default
    if not isinstance(patterns, Mapping):
        raise ValueError(f"{source}: field '{field}' must be an object, got {type(patterns).__name__}")
    for key, value in patterns.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(
                f"{source}: field '{field}' key {str(key)[:60]!r} has value {value!r}; a "
                f"finite number is needed"
            )
        if key_matches(compile_key(key, source, field), path):
            return value
    return default


def listed_by_peft(names: Any, path: str) -> bool:
    """PEFT's rule for a list of module names (``target_modules``, ``feedforward_modules``, ...): ``path``
    is one of them or ends with ``.<name>``."""
    return any(path == n or path.endswith("." + n) for n in names)

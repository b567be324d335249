"""ConfigError: every mistake in a config string or placement, with a position and a hint."""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A bad config string or a placement that cannot be applied.

    Attributes:
        message: what is wrong, in one sentence.
        text: the config string the error refers to (or ``None``).
        position: 0-based offset into ``text`` where the problem is (or ``None``).
        hint: a suggested fix (or ``None``).
    """

    def __init__(
        self, message: str, text: str | None = None, position: int | None = None, hint: str | None = None
    ) -> None:
        self.message = message
        self.text = text
        self.position = position
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        if self.text is not None and self.position is not None:
            parts.append(caret_view(self.text, self.position))
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def __str__(self) -> str:  # keep in sync if attributes are changed after construction
        return self._render()

    def __reduce__(self):
        return (type(self), (self.message, self.text, self.position, self.hint))


def caret_view(text: str, position: int) -> str:
    """Show the line of ``text`` that holds ``position`` with a caret under it."""
    position = max(0, min(position, len(text)))
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    end = len(text) if end == -1 else end
    line = text[start:end]
    line_no = text.count("\n", 0, start) + 1
    prefix = f"  line {line_no}: " if "\n" in text else "  "
    return f"{prefix}{line}\n{' ' * (len(prefix) + position - start)}^"


def did_you_mean(word: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """Closest matches of ``word`` among ``candidates`` (best first)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not found:
        # fall back on suffix matches ("qkv" -> "blocks.0.attn.qkv")
        tail = word.split(".")[-1]
        found = [c for c in candidates if c.split(".")[-1] == tail][:n]
    return found

"""MkDocs hooks for the docs site (loaded by ``hooks:`` in mkdocs.yml).

The docs mark code blocks that the docs test must not run as ```` ```python no-run ````. Python-Markdown's
fenced_code does not accept words after the language, so the marker is dropped before rendering.
"""

from __future__ import annotations

import re

_NO_RUN = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*python[ \t]+no-run[ \t]*$", re.MULTILINE
)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Render ```` ```python no-run ```` fences as ordinary Python code blocks."""
    return _NO_RUN.sub(r"\g<indent>\g<fence>python", markdown)

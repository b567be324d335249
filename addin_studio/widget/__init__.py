"""The Studio widget: click a model's graph to place add-ins; see docs/widget.md."""

from .studio import Studio

__all__ = ["Studio"]

"""The hook engine: attach add-ins at config-string points, detach them cleanly."""

from .attachment import AddinDict, Attachment, attach, register_io

__all__ = ["AddinDict", "Attachment", "attach", "register_io"]

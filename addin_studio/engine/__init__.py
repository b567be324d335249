"""The hook engine: attach add-ins at config-string points, detach them cleanly."""
from .attachment import AddinDict, Attachment, attach

__all__ = ["AddinDict", "Attachment", "attach"]

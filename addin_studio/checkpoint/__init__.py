"""Adapter-only checkpoints (safetensors) and Hugging Face PEFT adapter directories. No pickle anywhere.

- ``adapters.py``: :func:`save_attachment` / :func:`load` (our own format, re-attach from the file alone)
- ``peft.py``: :func:`export_peft` / :func:`from_peft` (generic; each add-in class owns its PEFT form)
- ``fingerprint.py``: the model fingerprint a checkpoint carries and the checks against it
- ``files.py``: safetensors read/write

Importing this package registers ``save``/``export_peft`` with the engine, so ``Attachment.save`` and
``Attachment.export_peft`` work without the engine importing this package (``addin_studio`` imports it).
"""
from ..engine import register_io
from .adapters import FORMAT, load, save_attachment
from .peft import PEFT_CONFIG, PEFT_WEIGHTS, export_peft, from_peft

register_io(save=save_attachment, export_peft=export_peft)

__all__ = ["FORMAT", "PEFT_CONFIG", "PEFT_WEIGHTS", "export_peft", "from_peft", "load", "save_attachment"]

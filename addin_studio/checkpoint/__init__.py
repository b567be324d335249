"""Adapter-only checkpoints (safetensors) and Hugging Face PEFT adapter directories. No pickle anywhere.

- ``adapters.py``: the writer behind ``att.save`` / :func:`load` (our own format, re-attach from the file
  alone); :func:`save_attachment` is an alias of ``att.save``
- ``peft.py``: the writer behind ``att.export_peft`` / :func:`from_peft` (generic; each add-in class owns
  its PEFT form); :func:`export_peft` is an alias of ``att.export_peft``
- ``fingerprint.py``: the model fingerprint a checkpoint carries and the checks against it
- ``files.py``: safetensors read/write

Importing this package registers ``save``/``export_peft`` with the engine, so ``Attachment.save`` and
``Attachment.export_peft`` work without the engine importing this package (``addin_studio`` imports it).
"""

from ..engine import register_io
from .adapters import FORMAT, _write_attachment, load, save_attachment
from .peft import PEFT_CONFIG, PEFT_WEIGHTS, _write_peft, export_peft, from_peft

register_io(save=_write_attachment, export_peft=_write_peft)  # one writer per job: att.save, att.export_peft

__all__ = ["FORMAT", "PEFT_CONFIG", "PEFT_WEIGHTS", "export_peft", "from_peft", "load", "save_attachment"]

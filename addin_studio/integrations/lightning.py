"""PyTorch Lightning: adapter-only Lightning checkpoints and an ``Attachment.save`` file.

An attached model trains inside any ``LightningModule`` (the optimizer you return from
``configure_optimizers`` should take the trainable parameters, e.g. ``att.parameters()``).
:class:`AdapterCheckpoint` keeps Lightning's ``.ckpt`` files small — their ``state_dict`` holds only the
add-ins and the base parameters the config keeps trainable — and writes ``att.save`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch import nn

__all__ = ["AdapterCheckpoint", "trainable_keys"]


def trainable_keys(module: nn.Module, attachment: Any) -> set[str]:
    """``state_dict`` keys of ``module`` that belong to the add-ins (parameters and buffers) or are
    trainable base parameters."""
    keys = {n for n, p in module.named_parameters() if p.requires_grad}
    for prefix, child in module.named_modules():
        if child is attachment.addins:
            keys |= {f"{prefix}.{k}" if prefix else k for k in child.state_dict()}
    return keys


class AdapterCheckpoint(Callback):
    """Drop the frozen base weights from Lightning checkpoints and write ``attachment.save`` files.

    - every ``.ckpt`` Lightning writes (e.g. by ``ModelCheckpoint``) keeps only :func:`trainable_keys`
      in its ``state_dict`` (so give your ``LightningModule`` ``strict_loading = False`` to resume from one);
    - ``dirpath/<filename>`` is written by ``attachment.save`` at the end of every ``every_n_epochs``-th
      training epoch and when training ends, on global rank 0 only. ``dirpath`` defaults to
      ``trainer.default_root_dir``. Re-attach with ``studio.load(model, path)``.
    """

    def __init__(
        self,
        attachment: Any,
        dirpath: str | Path | None = None,
        filename: str = "adapters.safetensors",
        every_n_epochs: int = 1,
    ) -> None:
        if not callable(getattr(attachment, "save", None)):
            raise TypeError(
                f"AdapterCheckpoint needs an Attachment (from studio.attach), got {type(attachment).__name__}"
            )
        if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an integer >= 0, got {every_n_epochs!r}")
        self.attachment = attachment
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.every_n_epochs = every_n_epochs
        self.written: list[Path] = []

    def _write(self, trainer: Any) -> None:
        if not trainer.is_global_zero:
            return
        path = (self.dirpath or Path(trainer.default_root_dir)) / self.filename
        self.attachment.save(path)
        self.written.append(path)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        keep = trainable_keys(pl_module, self.attachment)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._write(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer)

"""Hugging Face ``transformers.Trainer``: write adapter-only checkpoints with ``Attachment.save``.

An attached model trains in ``transformers.Trainer`` as it is: the Trainer's optimizer takes the
parameters with ``requires_grad=True``, i.e. the add-ins (and what the config keeps trainable). Its own
checkpoints hold the whole model; add :class:`SaveAdaptersCallback` to also get the small,
re-attachable adapter file, and pass ``save_strategy="no"`` when that is all you want.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["SaveAdaptersCallback"]


class SaveAdaptersCallback(TrainerCallback):
    """Write ``attachment.save(...)`` next to every Trainer checkpoint and at the end of training.

    Files: ``<output_dir>/checkpoint-<step>/<filename>`` whenever the Trainer saves (with
    ``save_strategy="no"`` it never does) and ``<output_dir>/<filename>`` when training ends. Only the
    main process writes (``state.is_world_process_zero``). Re-attach a file with ``studio.load(model, path)``.
    """

    def __init__(self, attachment: Any, filename: str = "adapters.safetensors") -> None:
        if not callable(getattr(attachment, "save", None)):
            raise TypeError(
                f"SaveAdaptersCallback needs an Attachment (from studio.attach), got "
                f"{type(attachment).__name__}"
            )
        self.attachment = attachment
        self.filename = filename
        self.written: list[Path] = []

    def _write(self, directory: Path, state: Any) -> None:
        if not state.is_world_process_zero:
            return
        path = directory / self.filename
        self.attachment.save(path)
        self.written.append(path)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write(Path(args.output_dir), state)

"""Re-attach from a file: attach, fill the add-ins and kept-trainable weights, or leave the model
untouched."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..config import Config
from ..engine import Attachment, attach


def attach_filled(
    model: nn.Module,
    cfg: Config,
    fill: Callable[[Attachment], None],
    base: Mapping[str, nn.Parameter],
    base_tensors: Mapping[str, torch.Tensor],
    **attach_kwargs: Any,
) -> Attachment:
    """Attach ``cfg``, let ``fill(att)`` check and load the add-ins' tensors, then copy ``base_tensors``
    into the base parameters ``base``. Any error detaches again, so the model is as it was."""
    att = attach(model, cfg, **attach_kwargs)
    try:
        fill(att)
        with torch.no_grad():
            for name, t in base_tensors.items():
                base[name].copy_(t)
    except BaseException:
        att.detach()
        raise
    return att

"""Training: the Trainer, its callbacks, metrics and learning-rate schedules."""

from .callbacks import Callback, LambdaCallback, ProgressBar
from .checkpointing import save_adapters, save_trainable
from .metrics import AverageMeter, accuracy, topk_correct
from .schedulers import lr_factor
from .trainer import Trainer

__all__ = [
    "Trainer",
    "Callback",
    "LambdaCallback",
    "ProgressBar",
    "accuracy",
    "topk_correct",
    "AverageMeter",
    "lr_factor",
    "save_adapters",
    "save_trainable",
]

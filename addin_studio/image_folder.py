"""Your own images: a folder with one sub-folder per class, split into training and validation loaders.

Layouts (the class names are the sub-folder names, sorted):

- ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*.png`` — the given split is used;
- ``DIR/<class>/*.png`` plus ``DIR/val/<class>/*.png`` — ``val/`` is the validation split;
- ``DIR/<class>/*.png`` only — a seeded, class-stratified split holds out ``val_fraction``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS as IMAGE_EXTENSIONS

from .data import loaders_from_dataset


@dataclass
class ImageFolderData:
    """The loaders of an image folder and what they hold."""

    train: DataLoader
    val: DataLoader | None
    classes: list[str]
    num_train: int
    num_val: int


class _ClassFolder(ImageFolder):
    """torchvision's ImageFolder with a given class list (the training split's) and no train/val folders."""

    def __init__(self, root: str, transform: Callable | None, classes: list[str] | None) -> None:
        self._wanted = classes
        super().__init__(root, transform=transform)

    def find_classes(self, directory):  # noqa: ANN001 - torchvision's signature
        found, _ = super().find_classes(directory)
        names = self._wanted if self._wanted is not None else [c for c in found if c not in ("train", "val")]
        missing = [c for c in names if c not in found]
        if missing:
            raise ValueError(f"{directory} has no class folder {missing[0]!r} (the training classes are "
                             f"{', '.join(names)})")
        return names, {c: i for i, c in enumerate(names)}


def _image_folder(root: Path, transform: Callable | None, classes: list[str] | None = None) -> Dataset:
    try:
        return _ClassFolder(str(root), transform, classes)
    except FileNotFoundError as exc:
        raise ValueError(f"no images in {root}: {exc}") from None


def image_folder_loaders(root: str | Path, *, train_transform: Callable | None = None,
                         val_transform: Callable | None = None, batch_size: int = 32, val_fraction: float = 0.2,
                         seed: int = 0, num_workers: int = 0) -> ImageFolderData:
    """Training and validation loaders over an image folder (layouts in the module docstring).

    ``train_transform``/``val_transform`` turn a PIL image into a tensor — e.g.
    ``NamedModel.transforms(train=True)`` from :func:`addin_studio.models.create_model`, which follows the
    model's own data configuration. Labels are class indices in ``classes`` order.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root = root / "val" if (root / "val").is_dir() else None
    train_set = _image_folder(train_root, train_transform)
    classes = list(train_set.classes)
    if len(classes) < 2:
        raise ValueError(f"{train_root} needs at least two class folders (one per class), found "
                         f"{classes or 'none'}")
    if val_root is not None:
        val_set = _image_folder(val_root, val_transform, classes)
        train, val = loaders_from_dataset(train_set, val_dataset=val_set, batch_size=batch_size, seed=seed,
                                          num_workers=num_workers)
        return ImageFolderData(train, val, classes, len(train_set), len(val_set))
    labels = torch.tensor(train_set.targets)
    plain = _image_folder(train_root, val_transform)  # the held-out images get the evaluation transform
    train, val = loaders_from_dataset(train_set, val_fraction=val_fraction, batch_size=batch_size, seed=seed,
                                      num_workers=num_workers, labels=labels)
    if val is not None:
        val = DataLoader(torch.utils.data.Subset(plain, val.dataset.indices), batch_size=batch_size,
                         shuffle=False, num_workers=num_workers)
    n_val = len(val.dataset) if val is not None else 0
    return ImageFolderData(train, val, classes, len(train.dataset), n_val)


__all__ = ["IMAGE_EXTENSIONS", "ImageFolderData", "image_folder_loaders"]

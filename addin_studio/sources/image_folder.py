"""Your own images: a folder with one sub-folder per class, split into training and validation loaders.

Layouts (the class names are the sub-folder names, sorted):

- ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*.png`` — the given split is used;
- ``DIR/<class>/*.png`` plus ``DIR/val/<class>/*.png`` — ``val/`` is the validation split;
- ``DIR/<class>/*.png`` only — a seeded, class-stratified split holds out ``val_fraction``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS as IMAGE_EXTENSIONS
from torchvision.datasets.vision import StandardTransform

from .data import loaders_from_dataset, split_indices


@dataclass
class ImageFolderData:
    """The loaders of an image folder and what they hold."""

    train: DataLoader
    val: DataLoader | None
    classes: list[str]
    num_train: int
    num_val: int


SPLITS = ("train", "val")


def _train_root(root: Path) -> Path:
    return root / "train" if (root / "train").is_dir() else root


def image_folder_classes(root: str | Path) -> list[str]:
    """The class names of an image folder: its training split's sub-folders, sorted (``train/`` and
    ``val/`` are splits, not classes). ValueError when there are fewer than two."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    base = _train_root(root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in SPLITS)
    if len(classes) < 2:
        raise ValueError(
            f"{base} needs at least two class folders (one per class), found {classes or 'none'}"
        )
    return classes


class _ClassFolder(ImageFolder):
    """torchvision's ImageFolder over the given classes (the training split's), in that order."""

    def __init__(self, root: str, transform: Callable | None, classes: list[str]) -> None:
        self._wanted = classes
        super().__init__(root, transform=transform)

    def find_classes(self, directory):  # noqa: ANN001 - torchvision's signature
        found, _ = super().find_classes(directory)
        missing = [c for c in self._wanted if c not in found]
        if missing:
            raise ValueError(
                f"{directory} has no class folder {missing[0]!r} (the training classes are "
                f"{', '.join(self._wanted)})"
            )
        return list(self._wanted), {c: i for i, c in enumerate(self._wanted)}


def _image_folder(root: Path, transform: Callable | None, classes: list[str]) -> ImageFolder:
    try:
        return _ClassFolder(str(root), transform, classes)
    except FileNotFoundError as exc:
        raise ValueError(f"no images in {root}: {exc}") from None


def image_folder_loaders(
    root: str | Path,
    *,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    batch_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_workers: int = 0,
) -> ImageFolderData:
    """Training and validation loaders over an image folder.

    Layouts (the class names are the sub-folder names, sorted): ``DIR/train/<class>/*.png`` and
    ``DIR/val/<class>/*.png`` (the given split is used); ``DIR/<class>/*.png`` plus
    ``DIR/val/<class>/*.png`` (``val/`` is the validation split); or ``DIR/<class>/*.png`` only (a
    seeded, class-stratified split holds out ``val_fraction``). Labels are class indices in
    ``classes`` order.

    Args:
        root: The image folder ``DIR``.
        train_transform: Turns a PIL image into a tensor — e.g. ``NamedModel.transforms(train=True)``
            from :func:`addin_studio.sources.models.create_model`, which follows the model's own data
            configuration.
        val_transform: The same for validation images (the held-out ones of a split too).
        batch_size: Images per batch.
        val_fraction: The share held out for validation when there is no ``val/`` folder, in [0, 1).
        seed: Seeds the split and the training loader's shuffling.
        num_workers: ``DataLoader`` worker processes.

    Returns:
        The :class:`ImageFolderData`: ``train`` and ``val`` loaders (``val`` None when nothing is held
        out), the ``classes`` and the image counts.

    Raises:
        ValueError: The folder does not exist, has fewer than two class folders, lacks a class in
            ``val/``, holds no images, or a setting is out of range.
    """
    root = Path(root)
    classes = image_folder_classes(root)
    train_set = _image_folder(_train_root(root), train_transform, classes)
    if (root / "val").is_dir():
        val_set: Dataset | None = _image_folder(root / "val", val_transform, classes)
    else:  # a seeded, stratified split; the held-out images get the evaluation transform
        train_idx, val_idx = split_indices(
            len(train_set), val_fraction, seed, torch.tensor(train_set.targets)
        )
        held_out = copy.copy(train_set)  # the same file list, read with the other transform
        held_out.transform = val_transform
        held_out.transforms = StandardTransform(val_transform, held_out.target_transform)
        val_set = Subset(held_out, val_idx) if val_idx else None
        train_set = Subset(train_set, train_idx)
    train, val = loaders_from_dataset(
        train_set,
        val_dataset=val_set,
        val_fraction=0,
        batch_size=batch_size,
        seed=seed,
        num_workers=num_workers,
    )
    return ImageFolderData(train, val, classes, len(train_set), len(val_set) if val_set is not None else 0)


__all__ = ["IMAGE_EXTENSIONS", "ImageFolderData", "image_folder_classes", "image_folder_loaders"]

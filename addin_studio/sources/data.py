"""Embedded default data, offline: scikit-learn's bundled digits, your own Datasets, synthetic tasks.

Nothing here downloads anything. Digits are 1,797 grey 8x8 images of the digits 0-9 that ship inside
scikit-learn; they can be upsampled (``image_size``) and repeated to 3 channels for ImageNet-style models.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

TRANSFORMS = ("none", "invert", "rot90", "flip")


def _transform(images: torch.Tensor, name: str) -> torch.Tensor:
    if name == "none":
        return images
    if name == "invert":
        return images.amax() + images.amin() - images  # mirrors the value range, whatever the scaling
    if name == "rot90":
        return torch.rot90(images, 1, dims=(-2, -1))
    if name == "flip":
        return torch.flip(images, dims=(-1,))
    raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")


def load_digits(
    classes: Sequence[int] | None = None,
    *,
    image_size: int | None = None,
    channels: int = 1,
    transform: str = "none",
    relabel: bool = True,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as ``(images [N, channels, S, S] float32, labels [N] int64)``.

    ``classes`` keeps only those digits (in the given order); with ``relabel`` their labels become
    ``0..len(classes)-1`` in that order. Pixels are scaled to [0, 1] (then, with ``normalize``, to mean 0
    and std 1 over all digits). ``image_size`` upsamples bilinearly (e.g. 32 for a ConvNet, 224 for a
    ViT); ``channels=3`` repeats the grey channel; ``transform`` is one of ``invert``, ``rot90``, ``flip``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    raw = _sk_load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(raw.target, dtype=torch.int64)
    if normalize:  # statistics of all 1,797 images, so every class subset is scaled alike
        images = (images - images.mean()) / images.std()
    if classes is not None:
        classes = list(classes)
        bad = [c for c in classes if c not in range(10)]
        if bad or not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct digits 0-9, got {classes!r}")
        keep = torch.isin(labels, torch.tensor(classes))
        images, labels = images[keep], labels[keep]
        if relabel:
            mapping = torch.full((10,), -1, dtype=torch.int64)
            mapping[torch.tensor(classes)] = torch.arange(len(classes))
            labels = mapping[labels]
    images = _transform(images, transform)
    if image_size is not None and image_size != images.shape[-1]:
        images = torch.nn.functional.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    if channels == 3:
        images = images.repeat(1, 3, 1, 1)
    return images.contiguous(), labels


def split_indices(
    n: int, val_fraction: float, seed: int = 0, labels: torch.Tensor | None = None
) -> tuple[list[int], list[int]]:
    """Deterministic train/validation index split; stratified per class when ``labels`` are given."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=g).tolist()
        k = int(round(n * val_fraction))
        return sorted(perm[k:]), sorted(perm[:k])
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = int(round(len(idx) * val_fraction))
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


def loaders_from_dataset(
    dataset: Dataset,
    *,
    val_dataset: Dataset | None = None,
    val_fraction: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    labels: torch.Tensor | None = None,
    collate_fn: Callable | None = None,
) -> tuple[DataLoader, DataLoader | None]:
    """``(train_loader, val_loader)`` for your own map-style ``Dataset`` of ``(inputs, target)`` items.

    Without a ``val_dataset``, ``val_fraction`` of ``dataset`` is held out (seeded, stratified when
    ``labels`` are given); ``val_fraction=0`` gives no validation loader. Training batches are
    shuffled with a generator seeded by ``seed``.

    Args:
        dataset: A map-style dataset (with ``len()``) of ``(inputs, target)`` items.
        val_dataset: A separate validation dataset; ``None`` holds out ``val_fraction`` of ``dataset``.
        val_fraction: The fraction held out for validation when there is no ``val_dataset`` (``0``: none).
        batch_size: The batch size of both loaders.
        seed: Seeds the split and the shuffling.
        num_workers: ``DataLoader`` worker processes.
        labels: The targets of ``dataset``, to stratify the split by class.
        collate_fn: The ``DataLoader`` collate function (``None``: PyTorch's default).

    Returns:
        ``(train_loader, val_loader)``; ``val_loader`` is ``None`` without validation data.

    Raises:
        ValueError: ``batch_size`` is below 1 or the dataset is empty.
        TypeError: ``dataset`` has no ``len()`` (an ``IterableDataset``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "loaders_from_dataset needs a map-style Dataset with len(); "
            "wrap an IterableDataset in a DataLoader yourself"
        ) from None
    if n == 0:
        raise ValueError("the dataset is empty")
    train_set, val_set = dataset, val_dataset
    if val_dataset is None and val_fraction > 0:
        tr, va = split_indices(n, val_fraction, seed, labels)
        train_set, val_set = Subset(dataset, tr), Subset(dataset, va)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    val = (
        DataLoader(
            val_set, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn
        )
        if val_set is not None
        else None
    )
    return train, val


def digits_loaders(
    classes: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    channels: int = 1,
    transform: str = "none",
    relabel: bool = True,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)`` over the embedded digits: a seeded, class-stratified split.

    The number of classes is ``len(classes)`` (10 by default).

    Args:
        classes: Keep only these digits, in this order (``None``: all ten).
        batch_size: The batch size of both loaders.
        val_fraction: The fraction held out for validation, in (0, 1).
        seed: Seeds the split and the shuffling.
        image_size: Upsample bilinearly to this side (e.g. 32 for a ConvNet, 224 for a ViT); ``None``
            keeps 8x8.
        channels: 1, or 3 to repeat the grey channel.
        transform: ``"none"``, ``"invert"``, ``"rot90"`` or ``"flip"``.
        relabel: Whether the labels of ``classes`` become ``0..len(classes)-1`` in that order.

    Returns:
        ``(train_loader, val_loader)`` of ``(images [B, channels, S, S], labels [B])`` batches.

    Raises:
        ValueError: ``val_fraction`` is not in (0, 1), or an argument :func:`load_digits` checks is
            wrong.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    x, y = load_digits(
        classes, image_size=image_size, channels=channels, transform=transform, relabel=relabel
    )
    train, val = loaders_from_dataset(
        TensorDataset(x, y), val_fraction=val_fraction, batch_size=batch_size, seed=seed, labels=y
    )
    assert val is not None
    return train, val


def synthetic_classification(
    n: int = 512,
    num_features: int = 16,
    num_classes: int = 4,
    *,
    seed: int = 0,
    noise: float = 0.5,
    image_shape: Sequence[int] | None = None,
) -> TensorDataset:
    """A learnable synthetic task: Gaussian clusters around random class centres.

    Items are ``(x, label)`` with ``x`` of ``num_features`` values, or of ``image_shape`` (e.g.
    ``(3, 32, 32)``) when given. Lower ``noise`` makes the classes easier to separate.
    """
    if n < 1 or num_classes < 2 or num_features < 1:
        raise ValueError("need n >= 1, num_classes >= 2 and num_features >= 1")
    g = torch.Generator().manual_seed(seed)
    dim = num_features
    if image_shape is not None:
        dim = 1
        for s in image_shape:
            dim *= int(s)
    centres = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    x = centres[labels] + noise * torch.randn(n, dim, generator=g)
    if image_shape is not None:
        x = x.view(n, *image_shape)
    return TensorDataset(x, labels)


# -- a small text task: short sentiment sentences -------------------------------------------------------
SENTIMENT_LABELS = ("negative", "positive")
_SUBJECTS = (
    "the movie",
    "the film",
    "this book",
    "the meal",
    "the service",
    "the hotel",
    "the concert",
    "the game",
    "this phone",
    "the show",
    "the story",
    "the coffee",
    "the lecture",
    "the trip",
)
_POSITIVE = (
    "good",
    "great",
    "wonderful",
    "excellent",
    "delightful",
    "enjoyable",
    "charming",
    "brilliant",
    "pleasant",
    "superb",
)
_NEGATIVE = (
    "bad",
    "terrible",
    "awful",
    "boring",
    "dull",
    "disappointing",
    "poor",
    "horrible",
    "mediocre",
    "tedious",
)
_TEMPLATES = (
    "{s} was {n}{a}.",
    "I thought {s} was {n}{a}.",
    "Honestly, {s} was {n}{a}.",
    "{s} was {n}really {a}.",
    "Everyone said {s} was {n}{a}.",
)


def sentiment_sentences(n: int = 400, *, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """A small offline text task: ``n`` short sentences and their labels (0 negative, 1 positive).

    Sentences come from templates ("I thought the film was not boring.") over 14 subjects, 10 positive and
    10 negative adjectives, half of them with "not " (which flips the label), so a model must read
    more than one word. The ``n`` sentences are distinct, drawn with a generator seeded by
    ``seed`` (the same ``n`` and ``seed`` always give the same list), half of each label for even ``n``.
    Used by notebook 07 and ``benchmarks.methods``; names of the labels: ``SENTIMENT_LABELS``.
    """
    pools: list[list[str]] = [[], []]
    for template in _TEMPLATES:
        for s in _SUBJECTS:
            for positive, adjectives in ((1, _POSITIVE), (0, _NEGATIVE)):
                for a in adjectives:
                    for negated in (False, True):
                        text = template.format(s=s, n="not " if negated else "", a=a)
                        pools[positive ^ negated].append(text[0].upper() + text[1:])
    most = 2 * min(len(p) for p in pools)
    if not isinstance(n, int) or not 2 <= n <= most:
        raise ValueError(f"n must be an integer from 2 to {most}, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    counts = (n // 2, n - n // 2)
    chosen = [
        (pools[label][int(i)], label)
        for label in (0, 1)
        for i in torch.randperm(len(pools[label]), generator=g)[: counts[label]]
    ]
    order = torch.randperm(n, generator=g).tolist()
    texts = [chosen[i][0] for i in order]
    labels = torch.tensor([chosen[i][1] for i in order], dtype=torch.int64)
    return texts, labels

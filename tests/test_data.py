"""Embedded offline data: digits tensors and loaders, user datasets, synthetic tasks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from addin_studio.sources.data import (
    digits_loaders,
    load_digits,
    loaders_from_dataset,
    split_indices,
    synthetic_classification,
)


def test_digits_full_set():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and sorted(y.unique().tolist()) == list(range(10))
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, rel=1e-4)


def test_digits_subset_is_relabelled_in_the_given_order():
    x_all, y_all = load_digits(normalize=False)
    x, y = load_digits([7, 3], normalize=False)
    assert len(y) == int((y_all == 7).sum() + (y_all == 3).sum())
    assert torch.equal(x[y == 0], x_all[y_all == 7]) and torch.equal(x[y == 1], x_all[y_all == 3])
    _, y_raw = load_digits([7, 3], relabel=False)
    assert sorted(y_raw.unique().tolist()) == [3, 7]


def test_digits_upsampled_rgb_and_transformed():
    x, _ = load_digits([0], image_size=32, channels=3)
    assert x.shape[1:] == (3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])
    plain, _ = load_digits([1], normalize=False)
    rot, _ = load_digits([1], normalize=False, transform="rot90")
    assert torch.equal(rot, torch.rot90(plain, 1, dims=(-2, -1)))
    inv, _ = load_digits([1], normalize=False, transform="invert")
    assert torch.allclose(inv, 1.0 - plain)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classes": [3, 10]}, "classes must be distinct digits 0-9"),
        ({"classes": [1, 1]}, "classes must be distinct digits 0-9"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"transform": "blur"}, "unknown transform 'blur'"),
    ],
)
def test_bad_digits_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


def test_digits_loaders_split_is_stratified_disjoint_and_seeded():
    train, val = digits_loaders([0, 1, 2], batch_size=16, val_fraction=0.25, seed=1)
    n = len(train.dataset) + len(val.dataset)
    assert n == len(load_digits([0, 1, 2])[1])
    assert set(train.dataset.indices).isdisjoint(val.dataset.indices)
    val_labels = torch.cat([b[1] for b in val])
    # 178/182/177 images of 0/1/2; 25% of each, rounded half to even: 44.5 -> 44, 45.5 -> 46, 44.25 -> 44
    assert torch.bincount(val_labels).tolist() == [44, 46, 44]
    again, _ = digits_loaders([0, 1, 2], batch_size=16, val_fraction=0.25, seed=1)
    assert again.dataset.indices == train.dataset.indices
    assert torch.equal(next(iter(train))[1], next(iter(again))[1])  # seeded shuffling


def test_loaders_from_user_dataset():
    ds = TensorDataset(torch.randn(50, 3), torch.arange(50) % 2)
    train, val = loaders_from_dataset(ds, val_fraction=0.2, batch_size=8)
    assert len(train.dataset) == 40 and len(val.dataset) == 10 and len(train) == 5
    train, val = loaders_from_dataset(ds, val_fraction=0)
    assert val is None and len(train.dataset) == 50
    train, val = loaders_from_dataset(ds, val_dataset=ds)
    assert val.dataset is ds and train.dataset is ds
    with pytest.raises(ValueError, match="the dataset is empty"):
        loaders_from_dataset(TensorDataset(torch.zeros(0, 2)))
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_indices(10, 1.0)


def test_synthetic_classification_shapes_and_balance():
    ds = synthetic_classification(100, num_features=5, num_classes=4)
    x, y = ds.tensors
    assert x.shape == (100, 5) and torch.bincount(y).tolist() == [25, 25, 25, 25]
    img = synthetic_classification(12, num_classes=3, image_shape=(3, 4, 4))
    assert img.tensors[0].shape == (12, 3, 4, 4)
    a, b = synthetic_classification(10, seed=5), synthetic_classification(10, seed=5)
    assert torch.equal(a.tensors[0], b.tensors[0])


def test_sentiment_sentences_are_a_deterministic_balanced_text_task() -> None:
    from addin_studio.sources.data import SENTIMENT_LABELS, sentiment_sentences

    texts, labels = sentiment_sentences()
    assert len(texts) == 400 == len(set(texts)) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [200, 200] and SENTIMENT_LABELS == ("negative", "positive")
    again, same = sentiment_sentences(400, seed=0)
    assert again == texts and torch.equal(same, labels)
    other, _ = sentiment_sentences(400, seed=1)
    assert other != texts
    table = dict(zip(*sentiment_sentences(2800)))  # every sentence there is, with its label
    assert table["The movie was good."] == 1 and table["The movie was not good."] == 0
    assert table["I thought the film was not boring."] == 1 and table["The film was really dull."] == 0
    assert sum("not " in t for t in table) == 1400
    with pytest.raises(ValueError, match="n must be an integer from 2 to 2800, got 1"):
        sentiment_sentences(1)

"""Top-k accuracy on a hand-checked batch, and the learning-rate schedules' values."""

from __future__ import annotations

import math

import pytest
import torch

from addin_studio.train import AverageMeter, accuracy, lr_factor, topk_correct


def test_topk_on_a_hand_checked_batch():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # target 0: top-1 hit
            [0.1, 0.2, 0.7, 0.0, 0.0, 0.0],  # target 1: 2nd highest -> top-5 hit only
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 0: lowest of 6 -> miss both
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 4: 5th highest -> top-5 hit
        ]
    )
    targets = torch.tensor([0, 1, 0, 4])
    assert topk_correct(logits, targets, (1, 2, 5)) == [1, 2, 3]
    assert accuracy(logits, targets) == [25.0, 75.0]


def test_k_larger_than_classes_counts_all():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1]), (1, 5)) == [0.0, 100.0]


def test_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits must be \\[batch, classes\\]"):
        accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be \\[batch\\]"):
        accuracy(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


def test_average_meter_weights_by_count():
    m = AverageMeter()
    m.update(1.0, 3)
    m.update(3.0, 1)
    assert m.avg == 1.5


def test_cosine_with_warmup_values():
    f = lr_factor("cosine", total_steps=12, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0  # cosine starts at the top after warm-up
    assert f(7) == pytest.approx(0.5)  # half way through the 10 cosine steps
    assert f(2 + 10) == pytest.approx(0.0, abs=1e-12)
    assert f(4) == pytest.approx((1 + math.cos(math.pi * 2 / 10)) / 2)


def test_cosine_min_factor():
    f = lr_factor("cosine", total_steps=10, min_factor=0.1)
    assert f(10) == pytest.approx(0.1) and f(0) == 1.0


def test_step_schedule_values():
    f = lr_factor("step", total_steps=9, step_size=3, gamma=0.5)
    assert [f(i) for i in range(9)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    g = lr_factor("step", total_steps=10, warmup_steps=1, gamma=0.1)  # default step_size = 9 // 3
    assert [g(i) for i in (0, 1, 3, 4, 7)] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.01])


def test_constant_schedule_and_warmup():
    f = lr_factor("constant", total_steps=5, warmup_steps=4)
    assert [f(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scheduler 'poly'; choose one of cosine, step, constant"):
        lr_factor("poly", 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        lr_factor("cosine", 0)


def test_trainer_records_the_schedule_it_used():
    from torch import nn

    from addin_studio.train import Trainer

    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    loader = [(x, y)] * 4
    t = Trainer(
        nn.Linear(3, 2),
        loader,
        epochs=2,
        lr=0.2,
        scheduler="step",
        step_size=3,
        gamma=0.5,
        warmup_steps=1,
        optimizer="sgd",
        progress=False,
    )
    lrs = t.fit()["lr"]
    f = lr_factor("step", 8, 1, step_size=3, gamma=0.5)
    assert lrs == pytest.approx([0.2 * f(i) for i in range(8)])

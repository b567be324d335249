"""Best-epoch adapter checkpoints of a Trainer driving an Attachment."""

from __future__ import annotations

import pytest
import torch

import addin_studio as studio
from addin_studio.sources.data import digits_loaders
from addin_studio.examples import MLPAddin, TutorialMLP
from addin_studio.train import LambdaCallback, Trainer

CONFIG = "(MLPAddin.adapt_output, reduction_dim=8): ...->(fc2){inout1}->...\ntrainable(fc3)"


def _setup(seed=0):
    torch.manual_seed(seed)
    model = TutorialMLP(hidden=32)
    train, val = digits_loaders(batch_size=64, seed=seed)
    att = studio.attach(model, CONFIG, addins={"MLPAddin": MLPAddin}, example_input=torch.zeros(2, 1, 8, 8))
    return model, att, train, val


def test_best_epoch_is_saved_and_reloads(tmp_path):
    model, att, train, val = _setup()
    snapshots = {}

    def snapshot(trainer, epoch, logs):
        snapshots[epoch] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    trainer = Trainer(
        model,
        train,
        val,
        epochs=4,
        lr=5e-3,
        progress=False,
        attachment=att,
        checkpoint_dir=tmp_path,
        callbacks=[LambdaCallback(on_epoch=snapshot)],
    )
    history = trainer.fit()
    best = trainer.best_epoch
    assert history["val_acc1"][best - 1] == max(history["val_acc1"]) == trainer.best_metric
    assert trainer.best_checkpoint == tmp_path / "best.safetensors" and trainer.best_checkpoint.is_file()

    fresh = TutorialMLP(hidden=32)
    fresh.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("addins.")}, strict=False
    )
    reloaded = studio.load(
        fresh,
        str(trainer.best_checkpoint),
        addins={"MLPAddin": MLPAddin},
        example_input=torch.zeros(2, 1, 8, 8),
    )
    for name, p in fresh.named_parameters():
        if name in snapshots[best]:
            assert torch.equal(p, snapshots[best][name]), name
    assert Trainer(fresh, train, progress=False).test(val)["acc1"] == pytest.approx(
        history["val_acc1"][best - 1]
    )
    reloaded.detach()

"""The headless main job (``addin-studio demo``): why add-ins matter, in about a minute on a CPU.

1. Pre-train a small CNN on the embedded digits 0-4 only.
2. Give it a new 10-class head, freeze it, and attach small bottleneck Adapters with a config string.
3. Train only the add-ins and the head (a few % of the parameters) on all ten digits, and compare with
   training the head alone. Write the loss plot, the adapters and an HTML report.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


BASE_CLASSES = (0, 1, 2, 3, 4)
TASK_CLASSES = tuple(range(10))

# One entry per line: three residual bottleneck Adapters after conv1, conv2 and fc1 (on conv maps an
# Adapter's Linear layers act on the channels, i.e. 1x1 convolutions), and the new head trains.
DEMO_CONFIG = """\
(Adapter.adapt_output, bottleneck=8): ...->(conv1){inout1}->...
(Adapter.adapt_output, bottleneck=8): ...->(conv2){inout1}->...
(Adapter.adapt_output, bottleneck=8): ...->(fc1){inout1}->...
trainable(head)"""


class DigitCNN(nn.Module):
    """A small CNN for 1x8x8 digits: conv1 -> conv2 -> pool -> fc1 -> fc2 -> head (about 80k parameters)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        x = torch.relu(self.fc1(self.flatten(x)))
        x = torch.relu(self.fc2(x))
        return self.head(x)


@dataclass
class DemoResult:
    """What the demo measured and wrote."""

    config: str
    trainable: int
    total: int
    base_acc1: float  # the pre-trained model on its own task (digits 0-4)
    before: dict  # the new task before adapting (new random head)
    head_only: dict | None  # the new task, training only the head
    after: dict  # the new task after training add-ins + head
    history: dict
    files: dict = field(default_factory=dict)
    seconds: float = 0.0


def run_demo(
    out_dir: str | Path = "addin-studio-demo",
    *,
    base_epochs: int = 6,
    epochs: int = 15,
    seed: int = 0,
    baseline: bool = True,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> DemoResult:
    """Run the demo end to end and write ``loss.png``, ``adapters.safetensors`` and ``report.html``."""
    import addin_studio as studio
    from ..sources.data import digits_loaders
    from .report import plot_loss, write_report
    from ..train import Trainer

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    log(
        f"1) Pre-training a small CNN on digits {', '.join(map(str, BASE_CLASSES))} (scikit-learn's bundled "
        "8x8 digits; nothing is downloaded)"
    )
    base = DigitCNN(len(BASE_CLASSES))
    b_train, b_val = digits_loaders(BASE_CLASSES, batch_size=32, seed=seed)
    pre = Trainer(
        base, b_train, b_val, epochs=base_epochs, lr=3e-3, seed=seed, progress=progress, device="cpu"
    )
    pre.fit()
    base_acc1 = pre.test()["acc1"]
    log(f"   base model on digits 0-4: Acc@1 {base_acc1:.2f}%")

    log("2) New task: all ten digits (the base model never saw 5-9). New 10-class head, base frozen.")
    base.head = nn.Linear(base.head.in_features, len(TASK_CLASSES))
    train, val = digits_loaders(TASK_CLASSES, batch_size=32, seed=seed)
    example = next(iter(val))[0][:2]

    head_only = None
    if baseline:
        probe = copy.deepcopy(base)
        studio.attach(probe, "trainable(head)", example_input=example)
        log(f"   baseline, training the head only ({studio.summary_line(probe)})")
        t = Trainer(probe, train, val, epochs=epochs, lr=1e-2, seed=seed, progress=progress, device="cpu")
        t.fit()
        head_only = t.test()
        log(f"   head only: Acc@1 {head_only['acc1']:.2f}%  Acc@5 {head_only['acc5']:.2f}%")

    model = base
    att = studio.attach(model, DEMO_CONFIG, example_input=example)
    config = str(att.config)
    trainable, total = studio.count_parameters(model)
    log("3) Adapting with add-ins. Config string (copy it to reproduce the set-up):\n")
    log(config + "\n")
    table = studio.trainable_table(model)
    log(f"{table.splitlines()[-1]}  [{trainable:,} of {total:,}]")
    trainer = Trainer(
        model,
        train,
        val,
        epochs=epochs,
        lr=1e-2,
        seed=seed,
        progress=progress,
        device="cpu",
        attachment=att,
        checkpoint_dir=out / "checkpoints",
    )
    before = trainer.test()
    log(f"   before adapting: Acc@1 {before['acc1']:.2f}%  Acc@5 {before['acc5']:.2f}%")
    history = trainer.fit()
    after = trainer.test()
    log(
        f"   after adapting:  Acc@1 {after['acc1']:.2f}%  Acc@5 {after['acc5']:.2f}%  "
        f"(best epoch {trainer.best_epoch}: {trainer.best_metric:.2f}%)"
    )

    att.save(out / "adapters.safetensors")
    files = {
        "adapters": out / "adapters.safetensors",
        "loss_plot": plot_loss(history, out / "loss.png", title="Add-ins + head on all ten digits"),
    }
    seconds = time.perf_counter() - start
    results = {
        "Base model, digits 0-4 (Acc@1 %)": base_acc1,
        "New task before adapting (Acc@1 %)": before["acc1"],
    }
    if head_only is not None:
        results["Head only (Acc@1 %)"] = head_only["acc1"]
    results.update(
        {
            "Add-ins + head (Acc@1 %)": after["acc1"],
            "Add-ins + head (Acc@5 %)": after["acc5"],
            "Trainable / total parameters": f"{trainable:,} / {total:,} ({100 * trainable / total:.2f}%)",
            "Time (s)": seconds,
        }
    )
    files["report"] = write_report(
        out / "report.html",
        title="Addin Studio demo",
        config=att.config,
        graph=att.graph,
        loss_png=files["loss_plot"],
        results=results,
        parameters=table,
        notes=[
            f"A small CNN pre-trained on digits 0-4 is frozen; bottleneck Adapters and a new head "
            f"({100 * trainable / total:.1f}% of the parameters) learn all ten digits."
        ],
    )
    for name, path in files.items():
        log(f"   wrote {path}")
    log(f"Done in {seconds:.1f} s.")
    return DemoResult(
        config=config,
        trainable=trainable,
        total=total,
        base_acc1=base_acc1,
        before=before,
        head_only=head_only,
        after=after,
        history=history,
        files=files,
        seconds=seconds,
    )

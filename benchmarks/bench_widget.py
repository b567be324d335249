"""Training from the Studio widget vs the same Trainer alone (Python side, no kernel).

The widget trains on a worker thread and publishes a bounded series (at most 4 plot updates a second);
this measures what that costs the training loop: the same epochs of the tutorial MLP on the embedded
digits, once through ``Studio`` (train intent, worker thread, live plot series) and once through a bare
``Trainer.fit()``, arms interleaved. Outside a kernel the trait updates are applied directly and no
comm message leaves the process, so the browser's rendering is not part of this figure.
"""

from __future__ import annotations

import copy
import threading

from .common import Row, describe, interleave, paired_ratio, print_rows, setup_torch

SOURCE = "benchmarks/bench_widget.py"
CONFIG = "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...\ntrainable(fc3)"


def run(quick: bool = False) -> list[Row]:
    import torch

    import addin_studio as studio
    from addin_studio.sources.data import digits_loaders
    from addin_studio.examples import MLPAddin, TutorialMLP
    from addin_studio.widget import Studio

    setup_torch()
    torch.manual_seed(0)
    epochs, n = (1, 2) if quick else (12, 5)
    train, _ = digits_loaders(batch_size=16)
    base = TutorialMLP()
    x = next(iter(train))[0][:2]
    addins = {"MLPAddin": MLPAddin}

    rounds = n + 1  # warm-up included; everything is built before timing, only training is timed

    def make_trainer():
        model = copy.deepcopy(base)
        studio.attach(model, CONFIG, addins, x)
        return studio.Trainer(model, train, epochs=epochs, progress=False, seed=0)

    def make_widget():
        w = Studio(
            copy.deepcopy(base),
            example_input=x,
            addins=addins,
            train_loader=train,
            epochs=epochs,
            trainer_options={"seed": 0},
        )
        w.handle({"type": "apply", "text": CONFIG})
        return w

    trainers = [make_trainer() for _ in range(rounds)]
    widgets = []

    def bare() -> None:
        trainer = trainers.pop()
        # on a thread too, as the widget does: torch's thread pools differ between the main thread
        # and others, which would otherwise dominate the comparison
        worker = threading.Thread(target=trainer.fit)
        worker.start()
        worker.join()

    def widget() -> None:
        w = make_widget_timed.pop()
        w.handle({"type": "train"})
        w._run.join(600)
        assert w.state == "idle" and len(w.history["loss"]) == epochs * len(train), w.status
        widgets.append(w)

    make_widget_timed = [make_widget() for _ in range(rounds)]
    times = interleave({"widget": widget, "trainer": bare}, n=n, warmup=1)
    for w in widgets:
        w.close()
    return [
        Row(
            "training from the widget / bare Trainer (Python side)",
            paired_ratio(times, "widget", "trainer"),
            1.05,
            detail=f"tutorial MLP on digits, {epochs} epochs x {len(train)} steps; " + describe(times),
            source=SOURCE,
        )
    ]


if __name__ == "__main__":
    import sys

    print_rows(run(quick="--quick" in sys.argv))

"""The Studio widget driven from Python: the messages a click sends, traits, errors, attachment."""

from __future__ import annotations

import re
import threading
import time

import pytest
import torch
from torch import nn

from addin_studio.examples import MLPAddin
from addin_studio.widget import Studio
from addin_studio.render import layout as layout_mod  # the module
from addin_studio.widget.printout import printout
from addin_studio.render.tree import TreeBuilder

TUTORIAL = "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->..."


class Blocks(nn.Module):
    """A stem, three identical blocks in a ModuleList, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class SlowLoader:
    def __init__(self, n: int = 200, delay: float = 0.01) -> None:
        torch.manual_seed(0)
        self.batches = [(torch.randn(8, 64), torch.randint(0, 10, (8,))) for _ in range(n)]
        self.delay = delay

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            time.sleep(self.delay)
            yield b


class PausingLoader(SlowLoader):
    """A loader that holds back batch ``pause_at`` of its first pass until ``resume`` is set.

    While ``paused`` is set, the run is surely still training and has made exactly ``pause_at`` steps:
    tests synchronize on these events instead of hoping a slow loader keeps a run going long enough.
    ``resume_on_stop(monkeypatch)`` resumes it as soon as any ``Trainer.stop()`` is called.
    """

    def __init__(self, n: int = 200, pause_at: int = 3) -> None:
        super().__init__(n, delay=0)
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.resume = threading.Event()

    def rearm(self) -> None:
        """Pause again on the next pass."""
        self.paused.clear()
        self.resume.clear()

    def resume_on_stop(self, monkeypatch) -> None:
        from addin_studio.train import Trainer

        real_stop = Trainer.stop

        def stop(trainer):
            real_stop(trainer)
            self.resume.set()

        monkeypatch.setattr(Trainer, "stop", stop)

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i == self.pause_at and not self.paused.is_set():
                self.paused.set()
                if not self.resume.wait(120):  # a test that forgot to resume fails instead of hanging
                    raise RuntimeError("PausingLoader: never resumed")
            yield b


def click(w: Studio, point: str, group: str | None = None) -> None:
    w._on_msg(w, {"type": "point", "point": point, "group": group}, [])  # what the page sends


@pytest.fixture
def studio(mlp):
    return Studio(mlp, example_input=torch.zeros(2, 64), addins={"MLPAddin": MLPAddin})


def test_in_then_out_clicks_give_the_tutorial_string(studio, mlp):
    assert studio.addin == "MLPAddin" and studio.config == ""
    studio.handle({"type": "method", "name": "adapt_across_input"})
    click(studio, "fc1:post")
    assert studio.pending == "fc1:post"
    # {inout} methods after a module, across methods for either side of the {out} still to click
    assert studio.methods == ["adapt_output", "adapt_across_input", "adapt_across_output"]
    assert studio.method == "adapt_across_input"  # the user's choice, as written
    click(studio, "fc3:pre")
    assert studio.config == TUTORIAL and studio.error == "" and studio.pending == ""
    assert studio.labels == {"fc1:post": "in1", "fc3:pre": "out1"}
    assert studio.links == [["fc1:post", "fc3:pre"]] or studio.links == [("fc1:post", "fc3:pre")]
    assert [k for k, _, _ in studio.attachment.entries] == ["MLPAddin_fc3"]
    trainable = sum(p.numel() for p in mlp.parameters() if p.requires_grad)
    assert studio.params.startswith(f"Trainable/total parameters: {trainable:,} / ")
    assert studio.states == {"fc1": "frozen", "fc2": "frozen", "fc3": "frozen"}


def test_same_point_twice_is_inout_and_across_method_becomes_plain(studio):
    studio.handle({"type": "method", "name": "adapt_across_output"})
    click(studio, "fc2:post")
    click(studio, "fc2:post")
    assert studio.config == "(MLPAddin.adapt_output): ...->(fc2){inout1}->..."
    assert studio.labels == {"fc2:post": "inout1"}
    click(studio, "fc1:pre")
    studio.handle({"type": "cancel"})
    assert studio.pending == "" and studio.config == "(MLPAddin.adapt_output): ...->(fc2){inout1}->..."


def test_invalid_string_shows_error_and_changes_nothing(studio, mlp):
    studio.handle({"type": "apply", "text": TUTORIAL})
    att = studio.attachment
    before = {n: p.requires_grad for n, p in mlp.named_parameters()}
    studio.handle({"type": "apply", "text": "(MLPAddin.adapt_input): ...->{inout1}(fc4)->..."})
    assert "no module 'fc4'" in studio.error and "did you mean 'fc3'" in studio.error
    assert re.search(r"\n\s+\^", studio.error)  # the caret line
    assert studio.config == TUTORIAL
    assert studio.attachment is not att and str(studio.attachment.config) == TUTORIAL
    assert {n: p.requires_grad for n, p in mlp.named_parameters()} == before
    studio.handle({"type": "apply", "text": "(MLPAddin.adapt_input: ..."})
    assert studio.error and studio.config == TUTORIAL


def test_config_trait_set_from_python_applies_or_reverts(studio):
    studio.config = "(MLPAddin.adapt_input):  ...->{inout1}(fc2)->..."  # stray space: canonicalized
    assert studio.config == "(MLPAddin.adapt_input): ...->{inout1}(fc2)->..." and studio.error == ""
    studio.config = "(Nope.adapt_input): ...->{inout1}(fc2)->..."
    assert "Nope" in studio.error
    assert studio.config == "(MLPAddin.adapt_input): ...->{inout1}(fc2)->..."


def test_remove_and_clear_restore_the_model(studio, mlp):
    flags = {n: p.requires_grad for n, p in mlp.named_parameters()}
    keys = set(mlp.state_dict())
    studio.handle({"type": "apply", "text": TUTORIAL + "\n(MLPAddin.adapt_output): ...->(fc2){inout1}->..."})
    assert [e["text"] for e in studio.entries] == [
        TUTORIAL,
        "(MLPAddin.adapt_output): ...->(fc2){inout1}->...",
    ]
    studio.handle({"type": "remove", "index": 0})
    assert studio.config == "(MLPAddin.adapt_output): ...->(fc2){inout1}->..."
    studio.handle({"type": "remove", "index": 5})
    assert "no placement 5" in studio.error
    studio.handle({"type": "clear"})
    assert studio.config == "" and studio.attachment is None
    assert {n: p.requires_grad for n, p in mlp.named_parameters()} == flags
    assert set(mlp.state_dict()) == keys


def test_points_in_a_collapsed_group_make_a_range():
    model = Blocks()
    w = Studio(model, example_input=torch.zeros(2, 8), addins={"MLPAddin": MLPAddin})
    assert 'data-path="blocks" data-kind="group" data-range="0:3"' in w.svg
    assert 'data-point="blocks.0.0:post" data-group="blocks:0:3"' in w.svg
    click(w, "blocks.0.0:post", "blocks:0:3")
    click(w, "blocks.0.0:post", "blocks:0:3")
    assert w.config == "(MLPAddin.adapt_output): ...->(blocks[0:3][0]){inout1}->..."
    assert len(w.attachment.entries) == 3
    # {in} inside the group and {out} outside cannot be one placement
    click(w, "blocks.0.1:post", "blocks:0:3")
    click(w, "head:pre")
    assert "same collapsed group" in w.error
    # expanded, each block is its own
    w.handle({"type": "toggle", "path": "blocks"})
    assert 'data-path="blocks.2.0"' in w.svg and "data-range" not in w.svg
    click(w, "blocks.2.0:pre")
    click(w, "blocks.2.0:pre")
    assert w.config.endswith("(MLPAddin.adapt_input): ...->{inout1}(blocks[2][0])->...")


def test_select_and_unknown_requests(studio):
    studio.handle({"type": "select", "path": "fc2"})
    assert studio.selected["path"] == "fc2" and studio.selected["params"] == 32 * 32 + 32
    assert studio.selected["output"] == [2, 32]
    studio.handle({"type": "select", "path": "nope"})
    assert "no module 'nope'" in studio.error
    studio.handle({"type": "explode"})
    assert studio.error == "unknown request 'explode'"
    studio.handle({"type": "addin", "name": "Nope"})
    assert "no add-in 'Nope'" in studio.error
    studio.handle({"type": "train"})
    assert "no train_loader" in studio.error


def test_every_module_and_point_is_drawn_with_both_engines(mlp, monkeypatch):
    from addin_studio.graph import trace

    g = trace(mlp, torch.zeros(1, 64))
    items = TreeBuilder(g).build(set(), set())
    svgs = []
    for engine in ("dot", "builtin") if layout_mod.dot_available() else ("builtin",):
        lay = layout_mod.layout(items, engine)
        from addin_studio.render.svg import render_svg

        svg = render_svg(items, lay)
        svgs.append(svg)
        for path in ("fc1", "fc2", "fc3"):
            assert svg.count(f'data-path="{path}"') == 1
            assert f'data-point="{path}:pre"' in svg and f'data-point="{path}:post"' in svg
        assert len(lay.edges) == 2 and lay.engine == engine
        ys = [lay.boxes[f"leaf:{p}"][1] for p in ("fc1", "fc2", "fc3")]
        assert ys == sorted(ys)  # top to bottom in execution order
    monkeypatch.setattr(layout_mod, "dot_available", lambda: False)
    lay = layout_mod.layout(items)
    assert lay.engine == "builtin" and "graphviz `dot` was not found" in lay.notice
    with pytest.raises(RuntimeError, match="dot"):
        layout_mod.layout(items, "dot")
    w = Studio(mlp, example_input=torch.zeros(1, 64))
    assert "graphviz `dot` was not found" in w.notice


def test_big_models_start_collapsed():
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.LayerNorm(4), nn.Dropout()) for _ in range(150)]
    )
    from addin_studio.graph import trace

    tb = TreeBuilder(trace(model, torch.zeros(1, 4)))
    collapsed = tb.default_collapsed()
    assert len(collapsed) == 150
    assert tb.count(tb.build(set(), collapsed)) == 150
    assert tb.count(tb.build(set(), set())) == 600


def test_printout_mirrors_print_model():
    lines, exact = printout(Blocks())
    assert exact
    assert "\n".join(line.text for line in lines) == repr(Blocks())
    ranged = [line for line in lines if line.range]
    assert len(ranged) == 1 and ranged[0].path == "blocks" and ranged[0].range == "0:3"
    assert ranged[0].text.strip().startswith("(0-2): 3 x Sequential(")
    inner = [line for line in lines if line.group == "blocks:0:3" and line.head]
    assert [line.point or line.path for line in inner] == ["blocks.0", "blocks.0.0", "blocks.0.1"]
    assert inner[0].path == "blocks"  # the "(0-2): 3 x" line selects the container
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert printout(vit)[1]


def test_training_runs_on_a_thread_and_stop_ends_it(mlp, monkeypatch):
    from addin_studio.widget import training

    monkeypatch.setattr(training, "UPDATE_INTERVAL_S", 0.0)  # every step reaches the plot
    loader = PausingLoader(pause_at=3)
    loader.resume_on_stop(monkeypatch)
    w = Studio(
        mlp,
        example_input=torch.zeros(2, 64),
        addins={"MLPAddin": MLPAddin},
        train_loader=loader,
        epochs=3,
        lr=1e-3,
    )
    w.handle({"type": "apply", "text": TUTORIAL})
    assert w.can_train
    w.handle({"type": "train"})
    assert w.state == "training" and not w.can_train
    w.handle({"type": "clear"})
    assert w.error == "stop training before changing the config" and w.config == TUTORIAL
    assert loader.paused.wait(60)  # 3 steps made; the 4th batch is held back until Stop
    assert [i for i, _ in w.plot["loss"]] == [1, 2, 3] and w.state == "training"
    w._on_msg(w, {"type": "stop"}, [])
    w._run.join(60)
    assert w.state == "idle" and w.status.startswith("stopped: 3 steps")
    assert len(w.history["loss"]) == 3  # the stop is checked before each step
    # a new Studio stops any run still going
    loader.rearm()
    w.handle({"type": "train"})
    assert loader.paused.wait(60) and w.state == "training"
    Studio(mlp, example_input=torch.zeros(2, 64))
    w._run.join(60)
    assert not w._run.alive and w.state == "idle" and w.status.startswith("stopped: 3 steps")


def test_training_to_the_end_gives_history(mlp):
    w = Studio(
        mlp,
        example_input=torch.zeros(2, 64),
        addins={"MLPAddin": MLPAddin},
        train_loader=SlowLoader(n=5, delay=0),
        val_loader=SlowLoader(n=2, delay=0),
        epochs=2,
    )
    w.handle({"type": "apply", "text": TUTORIAL})
    w.handle({"type": "train"})
    w._run.join(30)
    assert w.state == "idle" and w.status.startswith("finished: 10 steps")
    assert len(w.history["loss"]) == 10 and len(w.history["val_acc1"]) == 2
    assert [s for s, _ in w.plot["val"]] == [5, 10]

"""The widget's protocol: one table of intents (Studio.INTENTS) that Python handles and the page is sent."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

import pytest
import torch

from addin_studio.examples import MLPAddin
from addin_studio.render.svg import CSS as GRAPH_CSS
from addin_studio.widget import Studio
from addin_studio.widget.intents import BUSY, Intent, protocol, table

JS = (Path(__file__).parents[1] / "addin_studio" / "widget" / "studio.js").read_text()
CSS = Path(__file__).parents[1] / "addin_studio" / "widget" / "studio.css"

NAMES = {
    "point",
    "select",
    "toggle",
    "addin",
    "method",
    "apply",
    "remove",
    "clear",
    "cancel",
    "train",
    "stop",
    "setting",
    "strategy",
    "apply-strategy",
    "search",
    "run",
    "save-adapters",
    "export-peft",
    "copy-code",
    "adapter",
    "running-stats",
}
EDIT_WHILE_IDLE = {
    "point",
    "apply",
    "remove",
    "clear",
    "setting",
    "running-stats",
    "apply-strategy",
    "run",
    "train",
}


@pytest.fixture
def studio(mlp, tmp_path):
    return Studio(
        mlp, example_input=torch.zeros(2, 64), addins={"MLPAddin": MLPAddin}, export_dir=tmp_path / "export"
    )


def camel(name: str) -> str:
    return re.sub(r"-(.)", lambda m: m.group(1).upper(), name)


def test_the_page_is_sent_the_table(studio):
    assert set(Studio.INTENTS) == NAMES
    assert studio.intents == protocol(Studio.INTENTS)
    assert studio.get_state()["intents"] == studio.intents  # synced: the page has it at render
    assert studio.intents["setting"] == ["name", "value", "addin"]
    assert studio.intents["select"] == ["path", "range"]
    assert studio.intents["point"] == ["point", "group"]
    assert studio.intents["train"] == [] and studio.intents["copy-code"] == []


def test_the_page_spells_no_intent_name():
    used = set(re.findall(r"\bsend\.(\w+)\(", JS))
    assert used == {camel(n) for n in NAMES}  # every intent has a control, and no control sends another
    assert JS.count("model.send(") == 1  # the one sender factory; nothing sends {type: ...} by hand
    for name in NAMES - {
        "select",
        "search",
        "addin",
        "method",
        "strategy",
        "apply",
        "clear",
        "train",
        "stop",
        "remove",
        "adapter",
        "running-stats",
        "apply-strategy",
        "save-adapters",
        "export-peft",
        "copy-code",
        "run",
    }:  # names that are also tags, roles or text
        assert f'"{name}"' not in JS, name


def test_training_refuses_exactly_the_intents_the_table_says(studio):
    studio.handle({"type": "apply", "text": "(MLPAddin.adapt_output): ...->(fc2){inout1}->..."})
    before = studio.config
    assert before and not studio.error
    studio.state = "training"  # as while a run trains
    for name in sorted(NAMES):
        studio.error = ""
        studio.handle({"type": name})
        assert (studio.error == BUSY) == (name in EDIT_WHILE_IDLE), (name, studio.error)
        assert studio.config == before, name
    assert {n for n, it in Studio.INTENTS.items() if not it.while_training} == EDIT_WHILE_IDLE
    assert (studio.export_dir / "adapters.safetensors").is_file()  # save-adapters runs while training


def test_fields_the_message_lacks_take_their_defaults_and_others_are_ignored(studio):
    studio.handle({"type": "select"})
    assert studio.error == "no module '' in this model"
    studio.handle({"type": "select", "path": "fc2", "colour": "red"})
    assert studio.selected["path"] == "fc2" and "range" not in studio.selected
    studio.handle({"type": "remove"})
    assert studio.error == "remove needs the number of a listed placement, got None"
    studio.handle(["type", "point"])
    assert studio.error == "unknown request None"
    studio.handle({"type": ["point"]})
    assert studio.error == "unknown request ['point']"


def test_a_table_mistake_is_named():
    def needs(studio, path):  # a field without a default
        pass

    with pytest.raises(
        TypeError,
        match=r"intent 'x': handler .*needs must take only fields with defaults "
        r"after the studio, not path",
    ):
        Intent("x", needs)
    ok = Intent("x", lambda studio, path="": None)
    assert ok.fields == ("path",) and ok.while_training and not ok.edits
    with pytest.raises(ValueError, match="intent 'x' is in the table twice"):
        table(ok, ok)


def test_css_comes_from_its_files(studio):
    assert str(Studio._css) == CSS.read_text()  # anywidget reads the file (and reloads it in dev mode)
    # the graph carries its own look
    assert f"<defs><style>{escape(GRAPH_CSS.read_text(), quote=False)}</style>" in studio.svg
    studio.handle({"type": "toggle", "path": "fc2"})  # not a container: no redraw, an error
    assert studio.svg.count("<style>") == 1

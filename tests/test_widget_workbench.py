"""The Studio as a workbench, driven from Python: edits keep trained add-ins, methods follow the
placement, settings form and strategies, search and details, update norms, run history, export."""

from __future__ import annotations

import json
import runpy

import pytest
import torch
from torch import nn

import addin_studio as studio_api
from addin_studio.examples import MLPAddin
from addin_studio.widget import Studio
from addin_studio.widget.settings import Field, convert, schema

from test_widget import Blocks, PausingLoader, click

LORA1 = "(LoRA.adapt_output, r=2): ...->(fc1){inout1}->..."
LORA2 = "(LoRA.adapt_output, r=2): ...->(fc2){inout1}->..."


@pytest.fixture
def w(mlp):
    return Studio(mlp, example_input=torch.zeros(2, 64), addins={"MLPAddin": MLPAddin})


def lora_of(w, module):
    (addin,) = [a for _, p, a in w.attachment.entries if p.addin == "LoRA" and p.target.module == module]
    return addin


def set_b_to_ones(w, module="fc1"):
    with torch.no_grad():
        lora_of(w, module).lora_B.fill_(1.0)


def b_is_ones(w, module="fc1"):
    b = lora_of(w, module).lora_B
    return torch.equal(b, torch.ones_like(b))


# -- 1. edits keep trained state -----------------------------------------------------------------
def test_adding_a_placement_by_clicks_keeps_the_trained_lora(w):
    w.handle({"type": "apply", "text": LORA1})
    set_b_to_ones(w)
    w.handle({"type": "addin", "name": "LoRA"})
    w.handle({"type": "setting", "name": "r", "value": "2"})
    click(w, "fc2:post")
    click(w, "fc2:post")
    assert w.config == LORA1 + "\n" + LORA2 and w.error == ""
    assert b_is_ones(w) and torch.count_nonzero(lora_of(w, "fc2").lora_B) == 0
    assert w.status == "kept 1 add-in(s) with their weights; built 1 new"


def test_paste_remove_and_strategy_keep_unchanged_placements(w, mlp):
    w.handle({"type": "apply", "text": LORA1 + "\n" + LORA2})
    set_b_to_ones(w)
    kept = lora_of(w, "fc1")
    w.handle({"type": "remove", "index": 1})  # remove
    assert lora_of(w, "fc1") is kept and b_is_ones(w)
    w.handle({"type": "apply", "text": w.config + "\ntrainable(fc3)"})  # paste
    assert lora_of(w, "fc1") is kept and b_is_ones(w)
    assert mlp.fc3.weight.requires_grad and not mlp.fc2.weight.requires_grad
    w.handle({"type": "addin", "name": "LoRA"})
    w.handle({"type": "setting", "name": "r", "value": "2"})  # strategy: lora_all r=2
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    assert [p.target.module for p in w.attachment.config.placements] == ["fc1", "fc2", "fc3"]
    assert lora_of(w, "fc1") is kept and b_is_ones(w)
    assert w.status.startswith("kept 1 add-in(s) with their weights")


def test_a_changed_placement_is_rebuilt_and_named(w):
    w.handle({"type": "apply", "text": LORA1 + "\n" + LORA2})
    set_b_to_ones(w, "fc1")
    set_b_to_ones(w, "fc2")
    w.handle({"type": "apply", "text": LORA1 + "\n" + LORA2.replace("r=2", "r=3")})
    assert b_is_ones(w, "fc1") and torch.count_nonzero(lora_of(w, "fc2").lora_B) == 0
    assert w.status == "kept 1 add-in(s) with their weights; re-initialised 1 (changed): LoRA at fc2:post"
    # a rejected paste keeps the trained objects too
    kept = lora_of(w, "fc1")
    w.handle({"type": "apply", "text": LORA1 + "\n(LoRA.adapt_output): ...->(fc9){inout1}->..."})
    assert "no module 'fc9'" in w.error and lora_of(w, "fc1") is kept and b_is_ones(w)


def test_edits_while_training_are_refused(mlp, monkeypatch):
    loader = PausingLoader(pause_at=1)  # the run waits at its 2nd batch until stopped
    loader.resume_on_stop(monkeypatch)
    w = Studio(mlp, example_input=torch.zeros(2, 64), train_loader=loader, epochs=3)
    w.handle({"type": "apply", "text": LORA1})
    w.handle({"type": "train"})
    try:
        assert loader.paused.wait(60) and w.state == "training"
        for msg in (
            {"type": "apply", "text": LORA2},
            {"type": "setting", "name": "r", "value": "5"},
            {"type": "apply-strategy", "name": "bitfit"},
            {"type": "remove", "index": 0},
        ):
            w.handle(msg)
            assert w.error == "stop training before changing the config" and w.config == LORA1
        att = w.attachment
        w.handle({"type": "strategy", "name": "lora_all"})  # a preview would detach for a moment
        assert w.error == "lora_all: stop training before choosing a strategy"
        assert w.attachment is att and att.attached
        assert not w._editor.apply(LORA2) and w._editor.config == studio_api.parse(LORA1)
    finally:
        w.stop()
        w._run.join(60)
    assert w.state == "idle" and w.status.startswith("stopped: 1 steps")


# -- 2. methods follow the placement -------------------------------------------------------------
def test_method_lists_after_each_click(w):
    assert w.methods == ["adapt_across_input", "adapt_across_output", "adapt_input", "adapt_output"]
    click(w, "fc2:pre")
    assert w.methods == ["adapt_input", "adapt_across_input", "adapt_across_output"]
    assert w.method == "adapt_input"
    w.handle({"type": "method", "name": "adapt_across_output"})
    click(w, "fc3:post")
    assert w.config == "(MLPAddin.adapt_across_output): ...->{in1}(fc2)->...->(fc3){out1}->..."
    assert w.method == "adapt_across_output" and w.method in w.methods  # shown = written
    w.handle({"type": "clear"})
    click(w, "fc1:post")
    w.handle({"type": "method", "name": "adapt_across_input"})
    click(w, "fc3:pre")
    assert w.config == "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->..."
    assert w.method == "adapt_across_input"
    click(w, "fc1:post")
    w.handle({"type": "method", "name": "adapt_input"})  # not offered after a module
    assert "no method 'adapt_input' that can run here" in w.error


# -- 3. settings and strategies ------------------------------------------------------------------
def test_settings_form_is_generated_and_two_way(w):
    w.handle({"type": "addin", "name": "LoRA"})
    form = {f["name"]: f for f in w.settings_form}
    import inspect

    from addin_studio.addins.lora import LoRA

    own = [n for n in inspect.signature(LoRA).parameters if n not in ("point", "source_point")]
    assert list(form) == own and own[:3] == ["r", "alpha", "dropout"]  # the factory's keywords, in order
    assert (form["r"]["kind"], form["r"]["default"], form["r"]["help"]) == ("int", 8, "rank, default 8")
    assert form["alpha"]["optional"] and form["dropout"]["kind"] == "float"
    w.handle({"type": "apply", "text": LORA1})
    assert {f["name"]: f["value"] for f in w.settings_form}["r"] == 2  # string -> form
    w.handle({"type": "setting", "name": "alpha", "value": "4"})  # form -> string
    assert w.config == "(LoRA.adapt_output, alpha=4.0, r=2): ...->(fc1){inout1}->..."
    w.handle({"type": "setting", "name": "r", "value": "8"})  # the default: left out
    assert w.config == "(LoRA.adapt_output, alpha=4.0): ...->(fc1){inout1}->..."
    w.handle({"type": "setting", "name": "r", "value": "two"})
    assert w.error == "setting 'r' needs a int, got 'two'" and "r=" not in w.config
    w.handle({"type": "setting", "name": "r", "value": "0"})
    assert "rank r must be a positive integer" in w.error and "r=" not in w.config
    w.handle({"type": "setting", "name": "rank", "value": "3"})
    assert w.error == f"LoRA has no setting 'rank' (it has: {', '.join(own)})"
    w.handle({"type": "apply", "text": LORA1})  # a pasted r=2 shows in the form ...
    click(w, "fc2:post")
    click(w, "fc2:post")  # ... and new placements take it
    assert w.config == LORA1 + "\n" + LORA2


def test_schema_of_a_plain_function_with_odd_defaults():
    def make(point, width: int = 4, act=torch.tanh, scale: "float | None" = None, **kw):
        """A factory.

        width: hidden width of the branch
        """
        return torch.nn.Identity()

    fields = {f.name: f.as_dict() for f in schema(make)}
    assert list(fields) == ["width", "act", "scale"]
    assert fields["width"] == {
        "name": "width",
        "kind": "int",
        "default": 4,
        "optional": False,
        "help": "hidden width of the branch",
        "depends": "",
        "choices": [],
    }
    assert fields["act"]["default"].startswith("<built-in method tanh")
    assert (fields["scale"]["kind"], fields["scale"]["optional"]) == ("float", True)


def test_convert_handles_each_kind():
    assert convert(Field("b", "bool", False, False, ""), "true") is True
    assert convert(Field("a", "float", None, True, ""), "") is None
    assert convert(Field("n", "int", 3, False, ""), "") == 3
    with pytest.raises(ValueError, match="'n' needs a int, not none"):
        convert(Field("n", "int", 3, False, ""), "none")


def test_strategy_preview_then_apply(w, mlp):
    w.handle({"type": "strategy", "name": "lora", "targets": "fc1, fc3"})
    assert w.preview["labels"] == {"fc1:post": "inout1", "fc3:post": "inout1"}
    assert w.config == "" and w.attachment is None  # previewed only
    w.handle({"type": "apply-strategy", "name": "lora", "targets": "fc1, fc3"})
    assert w.config == "(LoRA.adapt_output, alpha=16, r=8): ...->(fc{1,3}){inout1}->..." or [
        p.target.module for p in w.attachment.config.placements
    ] == ["fc1", "fc3"]
    assert w.preview == {}
    w.handle({"type": "apply-strategy", "name": "head_only"})
    assert w.config == "trainable(fc3)" and mlp.fc3.weight.requires_grad
    w.handle({"type": "strategy", "name": "lora", "targets": "fc7"})
    assert "lora: target" in w.error and "fc7" in w.error
    w.handle({"type": "apply-strategy", "name": "partial_k", "targets": "x"})
    assert "partial_k needs k" in w.error and w.config == "trainable(fc3)"
    w.handle({"type": "apply-strategy", "name": "nope"})
    assert "no strategy 'nope'" in w.error and w.config == "trainable(fc3)"


# -- 4. find and inspect -------------------------------------------------------------------------
def test_partial_k_and_layernorm_from_the_picker():
    w = Studio(Blocks(), example_input=torch.zeros(2, 8))
    w.handle({"type": "apply-strategy", "name": "partial_k", "targets": "1"})
    assert w.error == "" and w.config == str(studio_api.strategies.partial_k(Blocks(), 1))
    w.handle({"type": "apply-strategy", "name": "layernorm"})
    assert "no normalization layer" in w.error


def test_search_expands_the_collapsed_group_and_marks_matches():
    w = Studio(Blocks(), example_input=torch.zeros(2, 8), addins={"MLPAddin": MLPAddin})
    assert 'data-path="blocks.2.0"' not in w.svg  # collapsed: blocks × 3
    w.handle({"type": "search", "query": "blocks[2].0"})
    assert w.matches == ["blocks.2.0"] and w.reveal == "blocks.2.0"
    assert 'data-path="blocks.2.0"' in w.svg  # the group opened
    w.handle({"type": "search", "query": "relu"})  # class names, any case
    assert w.matches == ["blocks.0.1", "blocks.1.1", "blocks.2.1"]
    w.handle({"type": "search", "query": "*.0"})  # glob on paths
    assert w.matches == ["blocks.0", "blocks.0.0", "blocks.1.0", "blocks.2.0"]
    w.handle({"type": "search", "query": "conv"})
    assert w.matches == [] and w.error == "no module matches 'conv'"


def test_details_show_the_path_as_written_and_its_placements(w):
    w.handle({"type": "apply", "text": LORA1})
    w.handle({"type": "select", "path": "fc1"})
    d = w.selected
    assert (d["written"], d["class"], d["input"], d["output"]) == ("fc1", "Linear", [2, 64], [2, 32])
    assert d["params"] == 64 * 32 + 32 and d["trainable"] == "frozen base, LoRA trainable (192 params)"
    assert d["placements"] == [LORA1]
    b = Studio(Blocks(), example_input=torch.zeros(2, 8))
    b.handle({"type": "select", "path": "blocks.1.0"})
    assert b.selected["written"] == "blocks[1][0]"


# -- 5-6. update norms and run history -----------------------------------------------------------
def test_update_norms_during_training_and_two_runs_overlaid(mlp, monkeypatch):
    from addin_studio.widget import training

    monkeypatch.setattr(training, "UPDATE_INTERVAL_S", 0.0)  # every step reaches the page
    loader = PausingLoader(n=40, pause_at=20)
    w = Studio(mlp, example_input=torch.zeros(2, 64), train_loader=loader, epochs=1, lr=1e-2)
    w.handle({"type": "apply", "text": LORA1 + "\n" + LORA2})
    w.handle({"type": "train"})
    assert loader.paused.wait(60)  # 20 of 40 steps made: the norms shown now are live ones
    seen = dict(w.grads)
    assert w.state == "training"
    loader.resume.set()
    w._run.join(60)
    assert w.state == "idle"
    assert set(seen) == {"fc1:post", "fc2:post"}
    assert all(v > 0 for v in seen.values())
    assert [r["key"] for r in w.grad_table] == ["LoRA_fc1", "LoRA_fc2"]
    assert all(r["norm"] > 0 for r in w.grad_table)
    first = w.config
    w.handle({"type": "remove", "index": 1})
    assert w.grads == {} and w.grad_table == []  # measured on the old config: not shown on the new one
    w.handle({"type": "train"})
    w._run.join(60)
    assert [r["n"] for r in w.runs] == [1, 2]
    assert w.runs[0]["config"] == first and w.runs[1]["config"] == LORA1
    assert w.runs[0]["settings"] == {"LoRA": {"r": 2}} and w.runs[1]["metrics"]["steps"] == 40
    assert [r["n"] for r in w.plot["runs"]] == [1, 2] and len(w.plot["runs"][0]["smooth"]) == 40
    assert w.plot["runs"][0]["val"] == []  # no val_loader: no per-epoch accuracy to overlay
    w.handle({"type": "run", "n": 1})
    assert w.config == first and w.status.startswith("restored the string of run 1")
    w.handle({"type": "run", "n": 9})
    assert w.error == "no run 9; runs: 1, 2"


# -- 7. export -----------------------------------------------------------------------------------
def test_export_buttons_write_what_load_and_peft_read(w, mlp, tmp_path):
    w.export_dir = tmp_path
    w.handle({"type": "save-adapters"})
    assert w.error.startswith("nothing to export")
    w.handle({"type": "apply", "text": LORA1 + "\ntrainable(fc3)"})
    set_b_to_ones(w)
    x = torch.randn(3, 64)
    want = mlp(x)
    w.handle({"type": "save-adapters"})
    w.handle({"type": "export-peft"})
    assert w.exported == {
        "save-adapters": str(tmp_path / "adapters.safetensors"),
        "export-peft": str(tmp_path / "peft"),
    }
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 2
    w.handle({"type": "clear"})
    with studio_api.load(mlp, tmp_path / "adapters.safetensors") as att:
        assert str(att.config) == LORA1 + "\ntrainable(fc3)"
        assert torch.allclose(mlp(x), want)
    peft = pytest.importorskip("peft")
    fresh = type(mlp)(in_features=64, hidden=32, num_classes=10)
    fresh.load_state_dict({k: v for k, v in mlp.state_dict().items()})
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    b = dict(loaded.named_parameters())["base_model.model.fc1.lora_B.default.weight"]
    assert torch.equal(b, torch.ones_like(b))


def _write(tmp_path, code):
    path = tmp_path / "snippet.py"
    path.write_text(code)
    return str(path)


def test_copy_code_rebuilds_the_attachment(w, mlp, tmp_path):
    w.handle({"type": "apply", "text": "(MLPAddin.adapt_output): ...->(fc2){inout1}->...\n" + LORA1})
    w.handle({"type": "copy-code"})
    assert "from addin_studio.examples import MLPAddin" in w.code
    fresh = type(mlp)(in_features=64, hidden=32, num_classes=10)
    out = runpy.run_path(_write(tmp_path, w.code), {"model": fresh, "example_input": torch.zeros(2, 64)})
    assert out["att"].config == w.attachment.config
    assert [k for k, _, _ in out["att"].entries] == [k for k, _, _ in w.attachment.entries]


# -- 8. named adapters ---------------------------------------------------------------------------
def test_the_studio_shows_and_switches_the_active_named_adapter(mlp):
    x = torch.randn(3, 64)
    named = studio_api.NamedAdapters(mlp)
    named.add("a", LORA1)
    named.add("b", LORA2)
    w = Studio(mlp, example_input=torch.zeros(2, 64), adapters=named)
    assert w.adapter_names == ["a", "b"] and w.active_adapter == "a" and w.config == LORA1
    set_b_to_ones(w, "fc1")
    # switching in code is shown at once
    named.set_active("b")
    assert w.active_adapter == "b" and w.config == LORA2 and w.attachment is named.attachment
    # switching in the widget runs that adapter
    w.handle({"type": "adapter", "name": "a"})
    assert named.active == "a" and w.config == LORA1 and b_is_ones(w, "fc1")
    with_a = mlp(x)
    w.handle({"type": "adapter", "name": ""})
    assert named.active is None and w.config == "" and w.attachment is None
    assert w.status == "no adapter is active: the bare model runs"
    # with none active an edit has no adapter to go to
    w.handle({"type": "apply", "text": LORA2})
    assert w.error.startswith("no adapter is active") and named.config("a") == studio_api.parse(LORA1)
    # an edit changes the active adapter and keeps its trained LoRA
    w.handle({"type": "adapter", "name": "a"})
    assert torch.equal(mlp(x), with_a)
    w.handle({"type": "apply", "text": LORA1 + "\n" + LORA2})
    assert w.error == "" and str(named.config("a")) == LORA1 + "\n" + LORA2 and b_is_ones(w, "fc1")
    assert w.status == "kept 1 add-in(s) with their weights; built 1 new"
    assert str(named.config("b")) == LORA2
    w.handle({"type": "adapter", "name": "c"})
    assert w.error.startswith("no adapter named 'c'") and named.active == "a"
    assert studio_api.trainable_table(mlp).splitlines()[0] == "Active adapter: 'a' (adapters: a*, b)"
    w.close()
    named.set_active("b")
    assert w.active_adapter == "a"  # a closed widget no longer follows


def test_adapters_must_belong_to_the_same_model(mlp):
    other = studio_api.NamedAdapters(torch.nn.Linear(64, 2))
    with pytest.raises(ValueError, match="NamedAdapters of this same model"):
        Studio(mlp, example_input=torch.zeros(2, 64), adapters=other)


def test_refining_settings_depend_on_their_switch():
    def factory(
        point,
        r: int = 4,
        velora: bool = False,
        velora_groups: int = 64,
        dora: bool = False,
        layout_name: str = "x",
    ):
        return None

    fields = {f.name: f for f in schema(factory)}
    assert fields["velora_groups"].depends == "velora"
    assert [n for n, f in fields.items() if f.depends] == ["velora_groups"]  # layout_name: no switch 'layout'
    lora = {f.name: f.depends for f in schema(studio_api.available_addins()["LoRA"])}
    assert lora["kasa_beta"] == "kasa" and lora["monteclora_samples"] == "monteclora" and lora["r"] == ""


# -- 9. PEFT layout by clicks --------------------------------------------------------------------
def _resnet():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=3, zero_init_last=False)  # every block learns


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)
    ]


def _train_to_the_end(w):
    w.handle({"type": "train"})
    w._run.join(60)
    assert w.state == "idle" and w.status.startswith("finished"), w.status


def test_settings_form_offers_the_choices_of_a_text_setting(w):
    w.handle({"type": "addin", "name": "LoRA"})
    form = {f["name"]: f for f in w.settings_form}
    assert form["layout"]["choices"] == ["balanced", "peft"] and form["layout"]["value"] == "balanced"
    assert (
        form["layout"]["help"] == "of a conv's update: balanced, GIFt's, the default; or peft, PEFT's, "
        "which Export PEFT needs"
    )
    assert form["init"]["choices"] == ["kaiming", "gaussian", "pissa", "olora", "mica"]
    assert form["r"]["choices"] == [] and not w.peft_layout
    w.handle({"type": "apply", "text": LORA1})
    w.handle({"type": "setting", "name": "layout", "value": "diagonal"})
    assert w.error == "setting 'layout' is one of balanced, peft; got 'diagonal'" and w.config == LORA1
    w.handle({"type": "setting", "name": "layout", "value": "peft"})
    assert w.config == "(LoRA.adapt_output, layout=peft, r=2): ...->(fc1){inout1}->..." and w.peft_layout
    assert {f["name"]: f["value"] for f in w.settings_form}["layout"] == "peft"
    w.handle({"type": "setting", "name": "layout", "value": "balanced"})  # the default: left out
    assert w.config == LORA1 and not w.peft_layout


def test_the_peft_layout_box_sets_loras_layout_whatever_addin_is_selected(w):
    w.handle({"type": "addin", "name": "MLPAddin"})
    w.handle({"type": "apply", "text": LORA1 + "\n(MLPAddin.adapt_output): ...->(fc2){inout1}->..."})
    w.handle({"type": "setting", "addin": "LoRA", "name": "layout", "value": "peft"})  # the box, ticked
    assert w.error == "" and w.peft_layout and w.addin == "MLPAddin"
    assert w.config == (
        "(LoRA.adapt_output, layout=peft, r=2): ...->(fc1){inout1}->...\n"
        "(MLPAddin.adapt_output): ...->(fc2){inout1}->..."
    )
    w.handle({"type": "setting", "addin": "Nope", "name": "layout", "value": "peft"})
    assert w.error.startswith("no add-in 'Nope'; choose one of MLPAddin, ")
    w.handle({"type": "clear"})
    assert w.peft_layout  # the choice stays for new LoRAs and strategies
    w.handle({"type": "strategy", "name": "lora_all"})
    assert w.preview["config"].count("layout=peft") == 3 and w.preview["count"] == 3
    w.handle({"type": "setting", "addin": "LoRA", "name": "layout", "value": "balanced"})  # unticked
    assert "layout=" not in w.preview["config"] and not w.peft_layout  # the preview follows the box


def test_resnet_strategy_train_export_peft_by_clicks_only(tmp_path):
    peft = pytest.importorskip("peft")
    model = _resnet()
    w = Studio(
        model,
        example_input=torch.zeros(2, 3, 32, 32),
        train_loader=_batches(),
        epochs=1,
        lr=1e-2,
        export_dir=tmp_path,
    )
    w.handle({"type": "strategy", "name": "lora_all"})
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    assert "(LoRA.adapt_output, r=3): ...->(conv1){inout1}->..." in w.config
    _train_to_the_end(w)
    w.handle({"type": "export-peft"})  # balanced conv LoRAs: refused, naming the fix
    assert w.error == (
        "export-peft failed: the LoRA on 'conv1' and 16 more conv layer(s) is in the balanced "
        'layout, which PEFT cannot hold. Tick "PEFT layout" in the Strategy row (the same '
        "as choosing layout = peft in the LoRA settings): the LoRAs are rebuilt in PEFT's "
        "layout (new weights), then Train and Export PEFT again."
    )
    assert not (tmp_path / "peft" / "adapter_model.safetensors").exists()
    with pytest.raises(
        ValueError,
        match=r"'conv1': a conv LoRA goes to PEFT in PEFT's layout: attach it "
        r"with layout=peft",
    ):
        w.attachment.export_peft(tmp_path / "direct")  # Python keeps its own refusal
    w.handle({"type": "setting", "addin": "LoRA", "name": "layout", "value": "peft"})  # tick the box
    placed = w.attachment.config.placements  # 21 LoRAs on 9 lines (compact string, issue 25)
    assert w.error == "" and w.config.count("layout=peft") == 9 and "r=3" in w.config
    assert len(placed) == 21 and all(p.settings["layout"] == "peft" for p in placed)
    assert w.status == (
        "re-initialised 21 (changed): LoRA at conv1:post, LoRA at layer1.0.conv1:post, "
        "LoRA at layer1.0.conv2:post, LoRA at layer1.1.conv1:post and 17 more"
    )
    _train_to_the_end(w)
    w.handle({"type": "export-peft"})
    w.handle({"type": "save-adapters"})
    assert w.error == "" and w.exported["export-peft"] == str(tmp_path / "peft")
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        want = model(x)
    w.handle({"type": "clear"})
    # the frozen base did not move (its BatchNorm statistics neither): a fresh copy is the same model
    assert all(torch.equal(v, _resnet().state_dict()[k]) for k, v in model.state_dict().items())
    loaded = peft.PeftModel.from_pretrained(_resnet(), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        got = loaded(x)
    trained = [t for n, t in loaded.named_parameters() if "lora_B" in n]
    assert len(trained) == 21 and all(torch.count_nonzero(t) > 0 for t in trained)  # trained, not zeros
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    fresh = _resnet().eval()
    with studio_api.load(fresh, w.exported["save-adapters"]), torch.no_grad():
        assert torch.equal(fresh(x), want)


def test_the_batchnorm_statistics_box_writes_running_stats_and_survives_a_strategy(tmp_path):
    model = _resnet()
    w = Studio(
        model,
        example_input=torch.zeros(2, 3, 32, 32),
        train_loader=_batches(),
        epochs=1,
        lr=1e-2,
        export_dir=tmp_path,
    )
    assert w.has_norm_stats and not w.running_stats
    w.handle({"type": "running-stats", "value": True})
    assert w.error == "" and w.config == "running_stats(*)" and w.running_stats
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    assert w.config.endswith("\nrunning_stats(*)") and w.running_stats
    before = model.bn1.running_mean.clone()
    _train_to_the_end(w)
    assert not torch.equal(model.bn1.running_mean, before)  # chosen: the statistics followed the data
    assert "| bn1.running_mean" in studio_api.trainable_table(model)
    w.handle({"type": "save-adapters"})
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        want = model(x)
    fresh = _resnet().eval()
    with studio_api.load(fresh, w.exported["save-adapters"]), torch.no_grad():
        assert torch.equal(fresh(x), want)
    w.handle({"type": "running-stats", "value": False})
    assert "running_stats" not in w.config and not w.running_stats
    assert torch.equal(model.bn1.running_mean, before)  # off again: the base's own statistics are back
    mlp = Studio(nn.Sequential(nn.Linear(4, 4)), example_input=torch.zeros(2, 4))
    assert not mlp.has_norm_stats
    mlp.handle({"type": "running-stats", "value": True})
    assert mlp.error == "this model has no layer with running statistics (BatchNorm and friends)"


# -- issue 25: defaults, grouped placements, trainable state with add-ins --------------------------------
def test_the_addin_list_starts_on_the_users_addin_else_lora(mlp):
    mine = Studio(mlp, example_input=torch.zeros(2, 64), addins={"MLPAddin": MLPAddin})
    assert (mine.addin, mine.addin_names[0]) == ("MLPAddin", "MLPAddin")
    bare = Studio(mlp, example_input=torch.zeros(2, 64))
    assert (bare.addin, bare.method) == ("LoRA", "adapt_output")
    assert bare.settings_form[0]["name"] == "r"


def test_the_settings_form_follows_the_addin_of_an_applied_strategy(w):
    w.handle({"type": "addin", "name": "Adapter"})
    assert w.addin == "Adapter"
    w.handle({"type": "apply-strategy", "name": "lora", "targets": "fc1, fc2"})
    assert w.error == "" and (w.addin, w.method) == ("LoRA", "adapt_output")
    assert [f["name"] for f in w.settings_form][:3] == ["r", "alpha", "dropout"]
    w.handle({"type": "addin", "name": "Adapter"})
    w.handle({"type": "apply-strategy", "name": "bitfit"})  # places no add-in: the list stays
    assert w.error == "" and w.addin == "Adapter"


def test_placement_rows_carry_their_group_and_count():
    from test_widget import Blocks

    b = Studio(Blocks(), example_input=torch.zeros(2, 8))
    b.handle(
        {
            "type": "apply",
            "text": "(LoRA.adapt_output, r=2): ...->(blocks[0:3][0]){inout1}->...\n"
            "(LoRA.adapt_output): ...->(head){inout1}->...",
        }
    )
    assert b.error == ""
    rows = b.entries
    assert [(r["group"], r["count"]) for r in rows][-1] == ("LoRA.adapt_output", 1)
    assert {r["group"] for r in rows[:-1]} == {"LoRA.adapt_output, r=2"}
    assert sum(r["count"] for r in rows[:-1]) == 3
    assert all(r["text"] == f"({r['group']}): {r['where']}" for r in rows)


def test_details_count_an_addin_on_a_frozen_module_as_trainable(w):
    w.handle({"type": "select", "path": "fc2"})
    assert w.selected["trainable"] == "trainable"  # nothing attached: the plain model trains
    w.handle({"type": "apply", "text": LORA1})
    assert w.selected["trainable"] == "frozen"  # the selection follows every edit
    w.handle({"type": "select", "path": "fc1"})
    lora = lora_of(w, "fc1")
    n = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert w.selected["trainable"] == f"frozen base, LoRA trainable ({n:,} params)"
    table = studio_api.trainable_table(w.model)  # the rows the trainable table lists for it
    assert (
        sum(
            int(line.split("|")[4].replace(",", ""))
            for line in table.splitlines()
            if line.startswith("| addins.")
        )
        == n
    )


def test_a_setting_chosen_at_the_addins_own_default_reaches_the_strategy(w):
    """LoRA's own default r is 8 and lora_all's is 3: r=8 typed in the form is what the strategy places,
    although the string of hand-placed LoRAs leaves the default out."""
    w.handle({"type": "addin", "name": "LoRA"})
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    assert w.error == "" and "r=3" in w.config  # untouched form: the strategy's own r
    w.handle({"type": "setting", "name": "r", "value": "8"})
    assert w.error == "" and "r=" not in w.config  # r=8 is LoRA's default: left out
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    cfg = studio_api.parse(w.config)
    assert w.error == "" and cfg.placements and {p.settings.get("r") for p in cfg.placements} == {8}
    w.handle({"type": "setting", "name": "r", "value": "4"})
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    assert w.error == "" and "r=4" in w.config

"""The Studio widget in real JupyterLab + Chromium: user steps 1-5 on the tutorial MLP and a timm ViT."""

from __future__ import annotations

import re
import time

import pytest

from browser_cells import SLOW_LOADER, kernel_value

# slow: a Jupyter server, Chromium and a kernel per notebook; each test takes 20-40 s per front end
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

SETUP_MLP = (
    """
import os, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
import addin_studio as studio
from addin_studio.examples import TutorialMLP, MLPAddin
from addin_studio.sources.data import digits_loaders
"""
    + SLOW_LOADER
    + """
torch.manual_seed(0)
train_loader, val_loader = digits_loaders(batch_size=16)
model = TutorialMLP()
x = torch.zeros(2, 64)
"""
)
STUDIO_MLP = (
    'w = studio.Studio(model, example_input=x, addins={"MLPAddin": MLPAddin}, '
    "train_loader=SlowLoader(train_loader, 0.03), val_loader=val_loader, epochs=1000, lr=3e-3)\nw"
)
# 1000 epochs of >= 0.03 s per step last hours: the run ends when the test clicks Stop, never by itself
CHECK = (
    'print("CFG=" + repr(w.config)); print("ERR=" + repr(w.error)); '
    'print("ATT=" + repr(w.attachment is not None))'
)
OTHER = 'print("OTHER", 6 * 7)'
HISTORY = 'print("HIST", len(w.history["loss"]), w.state, w.status.split(":")[0])'

TUTORIAL = "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->..."


def _config(page) -> str:
    return page.locator("[data-role=config]").inner_text()


def _wait_config(page, expected: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(
        "t => document.querySelector('[data-role=config]').textContent === t",
        arg=expected,
        timeout=timeout_ms,
    )


def test_mlp_steps_1_to_5(open_notebook):
    lab = open_notebook("mlp.ipynb", [SETUP_MLP, STUDIO_MLP, CHECK, OTHER, HISTORY])
    page = lab.page
    lab.run(0)
    lab.run(1)
    root = page.locator("[data-role=studio]")
    root.wait_for(timeout=60_000)
    page.wait_for_selector("[data-role=studio][data-ready='1']")

    # 1. the graph: every module, its points, the execution order, dot layout
    for path in ("fc1", "fc2", "fc3"):
        assert page.locator(f"svg [data-path='{path}']").count() == 1
        for side in ("pre", "post"):
            assert page.locator(f"[data-point='{path}:{side}']").count() == 1
    assert page.locator("svg.as-graph").get_attribute("data-engine") == "dot"
    assert root.get_attribute("data-state") == "idle"
    assert "85,002 / 85,002" in page.locator("[data-role=params]").inner_text()
    lab.shot("mlp-1-graph", root)

    # 2. pick add-in and method, click {in} then {out}: the tutorial's string, canonical
    page.select_option("[data-role=addin]", "MLPAddin")
    page.select_option("[data-role=method]", "adapt_across_input")
    page.click("[data-point='fc1:post']")
    page.wait_for_selector("[data-point='fc1:post'].as-pending")
    methods = page.locator("[data-role=method] option").all_inner_texts()
    # {inout} methods after a module, across methods for either side of the {out}
    assert methods == ["adapt_output", "adapt_across_input", "adapt_across_output"]
    page.click("[data-point='fc3:pre']")
    _wait_config(page, TUTORIAL)
    assert page.locator("[data-point='fc1:post']").get_attribute("data-placement") == "in1"
    assert page.locator("[data-point='fc3:pre']").get_attribute("data-placement") == "out1"
    page.wait_for_function(  # its own trait: may arrive just after the string
        "() => document.querySelector('[data-role=params]').textContent.includes('8,464 / 93,466')"
    )
    latency = float(root.get_attribute("data-click-latency-ms"))

    # one point twice -> {inout}; then remove it from the list
    page.click("[data-point='fc2:post']")
    page.click("[data-point='fc2:post']")
    _wait_config(page, TUTORIAL + "\n(MLPAddin.adapt_output): ...->(fc2){inout1}->...")
    assert page.locator("[data-point='fc2:post']").get_attribute("data-placement") == "inout1"
    lab.shot("mlp-2-placements", root)
    page.locator("[data-role=remove]").nth(1).click()
    _wait_config(page, TUTORIAL)

    # Escape cancels a started placement
    page.click("[data-point='fc2:pre']")
    page.wait_for_selector("[data-point='fc2:pre'].as-pending")
    page.keyboard.press("Escape")
    page.wait_for_selector("[data-point='fc2:pre'].as-pending", state="detached")
    assert _config(page) == TUTORIAL

    # the print(model) view is clickable the same way
    page.click("[data-role=view-text]")
    page.wait_for_selector("[data-role=printout]")
    assert (
        page.locator("[data-role=printout] [data-path='fc2']").inner_text().strip()
        == "(fc2): Linear(in_features=256, out_features=256, bias=True)"
    )
    page.click("[data-role=printout] [data-point='fc2:pre']")
    page.click("[data-role=printout] [data-point='fc2:pre']")
    with_pre = TUTORIAL + "\n(MLPAddin.adapt_input): ...->{inout1}(fc2)->..."
    _wait_config(page, with_pre)
    lab.shot("mlp-3-printout", root)
    page.click("[data-role=view-graph]")
    page.wait_for_selector("svg [data-point='fc2:pre'][data-placement='inout1']")

    # 3. an invalid string shows the ConfigError (with caret and hint) and changes nothing
    field = page.locator("[data-role=config-input]")
    field.fill("(MLPAddin.adapt_input): ...->{inout1}(fc4)->...")
    field.press("Enter")
    page.wait_for_function("() => document.querySelector('[data-role=error]').textContent.includes('fc4')")
    err = page.locator("[data-role=error]").inner_text()
    assert "did you mean 'fc3'" in err and "^" in err
    assert _config(page) == with_pre
    lab.shot("mlp-4-error", root)
    assert kernel_value(lab, 2, "CFG") == repr(with_pre)
    assert "fc4" in kernel_value(lab, 2, "ERR")
    # a valid pasted string replaces the config
    field.fill(TUTORIAL)
    page.click("[data-role=apply]")
    _wait_config(page, TUTORIAL)
    assert page.locator("[data-role=error]").inner_text() == ""
    assert kernel_value(lab, 2, "CFG") == repr(TUTORIAL)
    assert kernel_value(lab, 2, "ATT") == "True"

    # 4. train: the plot changes while training, other cells run, Stop ends it
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=studio][data-state=training]", timeout=15_000)
    plot = page.locator("[data-role=loss-plot]")
    page.wait_for_function(
        "() => +document.querySelector('[data-role=loss-plot]').dataset.points >= 2", timeout=30_000
    )
    first = plot.inner_html()
    n1 = int(plot.get_attribute("data-points"))
    page.wait_for_function(
        "n => +document.querySelector('[data-role=loss-plot]').dataset.points > n", arg=n1, timeout=30_000
    )
    assert plot.inner_html() != first
    assert page.locator("[data-role=train]").is_disabled()
    assert not page.locator("[data-role=stop]").is_disabled()
    t0 = time.time()
    lab.run(3, timeout_ms=30_000)  # another cell runs during training
    other_s = time.time() - t0
    assert "OTHER 42" in lab.output(3)
    assert root.get_attribute("data-state") == "training"
    lab.shot("mlp-5-training", root)
    t0 = time.time()
    page.click("[data-role=stop]")
    page.wait_for_selector("[data-role=studio][data-state=idle]", timeout=10_000)
    stop_s = time.time() - t0
    assert page.locator("[data-role=status]").inner_text().startswith("stopped")
    # the static PNG lands in the widget's cell so a saved notebook keeps the plot
    page.wait_for_selector(".jp-Cell:nth-child(2) .jp-OutputArea img", timeout=15_000)
    lab.shot("mlp-6-stopped", lab.cell(1))

    # 5. the result in Python
    lab.run(4)
    out = lab.output(4)
    m = re.search(r"HIST (\d+) idle stopped", out)
    assert m and int(m.group(1)) > 0, out
    print(
        f"\nMLP: click-to-string {latency:.1f} ms, other cell during training {other_s:.2f} s, "
        f"stop -> idle {stop_s:.2f} s"
    )


SETUP_VIT = """
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, timm
import addin_studio as studio
torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4)
x = torch.zeros(1, 3, 224, 224)
data = [(torch.randn(2, 3, 224, 224), torch.tensor([0, 1])) for _ in range(4)]
w = studio.Studio(model, example_input=x, train_loader=data, epochs=100_000)  # ends by Stop only
w
"""
VIT_CHECK = 'print("CFG=" + repr(w.config)); print("N=" + str(len(w.attachment.entries)))'
VIT_RANGE = "(LoRA.adapt_output): ...->(blocks[0:12].attn.qkv){inout1}->..."


def test_vit_range_placement_and_training(open_notebook):
    lab = open_notebook("vit.ipynb", [SETUP_VIT, VIT_CHECK, 'print("OTHER", 1 + 1)'])
    page = lab.page
    lab.run(0, timeout_ms=180_000)
    root = page.locator("[data-role=studio]")
    page.wait_for_selector("[data-role=studio][data-ready='1']", timeout=60_000)
    # repeated blocks are one group with a count; its template's points stand for all 12 blocks
    group = page.locator("svg [data-path='blocks'][data-range='0:12']")
    assert group.count() == 1
    assert "blocks × 12" in group.locator(".as-clabel").first.text_content()
    assert page.locator("svg [data-path='blocks.5.attn']").count() == 0
    qkv = "[data-point='blocks.0.attn.qkv:post'][data-group='blocks:0:12']"
    page.select_option("[data-role=addin]", "LoRA")
    page.locator(qkv).scroll_into_view_if_needed()
    page.click(qkv)
    page.click(qkv)
    _wait_config(page, VIT_RANGE)
    assert page.locator(qkv).get_attribute("data-placement") == "inout1"
    lab.shot("vit-1-range", root)
    assert kernel_value(lab, 1, "CFG") == repr(VIT_RANGE)
    assert kernel_value(lab, 1, "N") == "12"

    # expanding the group draws every block; a point there is one block only
    page.click("svg [data-toggle='blocks']")
    page.wait_for_selector("svg [data-path='blocks.5.attn']")
    page.locator("[data-point='blocks.11.mlp.fc2:post']").scroll_into_view_if_needed()
    page.click("[data-point='blocks.11.mlp.fc2:post']")
    page.click("[data-point='blocks.11.mlp.fc2:post']")
    _wait_config(page, VIT_RANGE + "\n(LoRA.adapt_output): ...->(blocks[11].mlp.fc2){inout1}->...")
    lab.shot("vit-2-expanded", root)

    # a string LoRA cannot run (a pre point) is rejected with the engine's error
    field = page.locator("[data-role=config-input]")
    field.fill("(LoRA.adapt_output): ...->{inout1}(head)->...")
    field.press("Enter")
    page.wait_for_function("() => document.querySelector('[data-role=error]').textContent.length > 0")
    assert page.locator("[data-role=error]").inner_text() != ""
    assert _config(page).startswith(VIT_RANGE)

    # train a few steps, watch the plot, stop
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=studio][data-state=training]", timeout=30_000)
    page.wait_for_function(
        "() => +document.querySelector('[data-role=loss-plot]').dataset.points >= 2", timeout=60_000
    )
    lab.run(2, timeout_ms=60_000)
    assert "OTHER 2" in lab.output(2)
    page.click("[data-role=stop]")
    page.wait_for_selector("[data-role=studio][data-state=idle]", timeout=30_000)
    assert page.locator("[data-role=status]").inner_text().startswith("stopped")
    lab.shot("vit-3-stopped", root)

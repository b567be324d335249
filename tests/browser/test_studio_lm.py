"""A tiny causal LM in the Studio, in real JupyterLab / Notebook 7 (Chromium): the repeated layers are one
group, LoRA goes onto an attention projection by clicks, Train runs on the model's own loss (dict batches
with labels) and the plot shows the points. Render and click-to-string times go to
artifacts/browser/bench-lm.json (measured, not asserted)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"

SETUP = """
import os, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, transformers
import addin_studio as studio
transformers.logging.set_verbosity_error()
torch.manual_seed(0)
model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
    vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0))
ids = (torch.arange(16).repeat(4, 1) * 3) % 64
batches = [{"input_ids": ids, "labels": ids} for _ in range(24)]   # labels: the model's own loss
"""
STUDIO = (
    't = time.perf_counter(); w = studio.Studio(model, example_input={"input_ids": ids[:1]}, '
    'train_loader=batches, epochs=1, lr=3e-2, trainer_options={"device": "cpu"}); '
    'print(f"BUILD={time.perf_counter() - t:.3f}"); w'
)
CHECK = (
    'print("CFG=" + repr(w.config)); h = w.history["loss"]; '
    'print("LOSS=" + repr((len(h), round(h[0], 4), round(h[-1], 4))))'
)


def test_causal_lm_lora_by_clicks_and_train(open_notebook):
    lab = open_notebook("causal_lm.ipynb", [SETUP, STUDIO, CHECK], height=2300)  # the widget fits
    page = lab.page
    lab.run(0, timeout_ms=180_000)
    t0 = time.perf_counter()
    lab.run(1, wait=False)
    cell = lab.cell(1)
    cell.locator("[data-role=studio][data-ready='1']").wait_for(timeout=180_000)
    wall = time.perf_counter() - t0
    root = cell.locator("[data-role=studio]")
    # the two transformer blocks are one group; its points stand for both blocks
    assert cell.locator("svg [data-path='transformer.h'][data-range='0:2']").count() == 1
    point = cell.locator("[data-point='transformer.h.0.attn.c_attn:post']")
    assert point.get_attribute("data-group") == "transformer.h:0:2"
    page.select_option("[data-role=addin]", "LoRA")
    page.select_option("[data-role=method]", "adapt_output")
    point.scroll_into_view_if_needed()
    point.click()
    point.click()
    want = "(LoRA.adapt_output): ...->(transformer.h[0:2].attn.c_attn){inout1}->..."
    page.wait_for_function(
        f"() => document.querySelector('[data-role=config]').textContent === {want!r}", timeout=30_000
    )
    click_ms = float(root.get_attribute("data-click-latency-ms"))
    assert point.get_attribute("data-placement") == "inout1"
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=runs] [data-run='1']", timeout=180_000)  # the run finished
    page.wait_for_selector("[data-role=studio][data-state=idle]", timeout=60_000)
    assert page.locator("[data-role=error]").inner_text() == ""
    assert page.locator("[data-role=status]").inner_text().startswith("finished: 24 steps")
    assert int(page.locator("[data-role=loss-plot]").get_attribute("data-points")) == 24
    n, first, last = eval_tuple(lab, 2)
    assert n == 24 and last < first
    root.scroll_into_view_if_needed()
    shot = lab.shot("widget-causal-lm", root)
    out = lab.output(1)
    results = {
        "frontend": lab.frontend,
        "cell_to_widget_s": round(wall, 3),
        "python_build_s": float(re.search(r"BUILD=([\d.]+)", out).group(1)),
        "browser_render_ms": float(root.get_attribute("data-initial-render-ms")),
        "click_to_string_ms": click_ms,
        "loss_first_last": [first, last],
        "screenshot": shot.name,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"bench-lm-{lab.frontend}.json").write_text(json.dumps(results, indent=2))
    print("\n" + json.dumps(results, indent=2))


def eval_tuple(lab, cell: int) -> tuple[int, float, float]:
    """Run the CHECK cell; read ``LOSS=(steps, first, last)`` back without eval."""
    lab.run(cell)
    m = re.search(r"^LOSS=\((\d+), ([\d.]+), ([\d.]+)\)$", lab.output(cell), re.M)
    assert m, lab.output(cell)
    return int(m.group(1)), float(m.group(2)), float(m.group(3))

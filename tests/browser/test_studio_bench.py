"""Browser measurements: graph render time (vit_base_patch16_224, a ~1,000-module model) and
click-to-string latency. Numbers are printed and written to artifacts/browser/bench.json; they are
not asserted (timings are noisy), only that they were measured."""

from __future__ import annotations

import json
import re
import statistics
import time

import pytest

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

SETUP = '''
import os, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, timm
from torch import nn
import addin_studio as studio

def thousand():
    """100 stages of 9 modules with different widths (nothing collapses into a group): 1,000 modules."""
    stages = []
    for i in range(100):
        d = 8 + i % 7
        stages.append(nn.Sequential(nn.Linear(8, d), nn.LayerNorm(d), nn.GELU(), nn.Dropout(0.0),
                                    nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 8), nn.Identity(),
                                    nn.Dropout(0.0)))
    return nn.Sequential(*stages)

vit_base = timm.create_model("vit_base_patch16_224", pretrained=False)
'''
CELLS = {
    "vit_base": "t = time.perf_counter(); "
    "w = studio.Studio(vit_base, example_input=torch.zeros(1, 3, 224, 224)); "
    'print(f"BUILD={time.perf_counter() - t:.3f}"); w',
    "thousand": 'm = thousand(); print("MODULES=" + str(len(list(m.modules())))); t = time.perf_counter(); '
    "w = studio.Studio(m, example_input=torch.zeros(1, 8)); "
    'print(f"BUILD={time.perf_counter() - t:.3f}"); w',
    "thousand_expanded": "t = time.perf_counter(); w = studio.Studio(m, example_input=torch.zeros(1, 8), "
    'auto_collapse=False); print(f"BUILD={time.perf_counter() - t:.3f}"); w',
}


def test_render_times_and_click_latency(open_notebook):
    names = list(CELLS)
    lab = open_notebook("bench.ipynb", [SETUP] + [CELLS[n] for n in names])
    page = lab.page
    lab.run(0, timeout_ms=180_000)
    results: dict = {}
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        lab.run(i, wait=False)
        cell = lab.cell(i)
        cell.locator("[data-role=studio][data-ready='1']").wait_for(timeout=180_000)
        wall = time.perf_counter() - t0
        root = cell.locator("[data-role=studio]")
        out = lab.output(i)
        boxes = cell.locator("svg.as-graph [data-path]").count()
        results[name] = {
            "cell_to_widget_s": round(wall, 3),
            "python_build_s": float(re.search(r"BUILD=([\d.]+)", out).group(1)),
            "browser_render_ms": float(root.get_attribute("data-initial-render-ms")),
            "graph_insert_ms": float(root.get_attribute("data-render-ms")),
            "drawn_modules": boxes,
            "points": cell.locator("svg.as-graph [data-point]").count(),
        }
        lab.shot(f"bench-{name}", root)
        if name == "vit_base":
            qkv = cell.locator("[data-point='blocks.0.attn.qkv:post']")
            qkv.scroll_into_view_if_needed()
            page.select_option("[data-role=addin] >> nth=0", "LoRA")
            lat = []
            for _ in range(5):
                qkv.click()
                qkv.click()
                page.wait_for_function(
                    "() => document.querySelector('[data-role=config]').textContent.includes('qkv')"
                )
                lat.append(float(root.get_attribute("data-click-latency-ms")))
                cell.locator("[data-role=clear]").click()
                page.wait_for_function(
                    "() => document.querySelector('[data-role=config]').textContent === ''"
                )
            results[name]["click_to_string_ms"] = {
                "median": statistics.median(lat),
                "max": max(lat),
                "all": lat,
            }
            t1 = time.perf_counter()  # expand the 12 blocks: a round trip plus a new layout
            cell.locator("svg [data-toggle='blocks']").click()
            cell.locator("svg [data-path='blocks.11.mlp.fc2']").wait_for(timeout=60_000)
            results[name]["expand_blocks_s"] = round(time.perf_counter() - t1, 3)
            results[name]["expanded_drawn_modules"] = cell.locator("svg.as-graph [data-path]").count()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bench.json").write_text(json.dumps(results, indent=2))
    print("\n" + json.dumps(results, indent=2))
    assert all(r["drawn_modules"] > 0 for r in results.values())

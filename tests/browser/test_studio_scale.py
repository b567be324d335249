"""The Studio at real scale (issue 25) in JupyterLab and Notebook 7 (Chromium): a timm ResNet-50 with LoRA
on every conv and a ViT-B with LoRA on qkv, fc1 and fc2. One session per model checks the defaults (LoRA,
adapt_output), the settings form (refinements display:none until their switch is on, names not cut, no
raw backticks), the placements grouped with counts, the string folded and never broken inside a token,
Train/Stop, the plot and Export in view without scrolling past a list, the same loss on the plot, the
status line and the run item, and details that count a LoRA as trainable. Render and click-to-string
times are printed and written to artifacts/browser/scale-<model>[-nb7].json; the JupyterLab screenshots
go to docs/img/widget-resnet50.png and docs/img/widget-vit-b.png."""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

import pytest

from browser_cells import kernel_value

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
DOCS_IMG = ROOT / "docs" / "img"
FOLD_AT = 8  # studio.js: a list longer than this starts folded

SETUP = """
import os, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, timm
import addin_studio as studio
torch.manual_seed(0)
"""
MODELS = {
    "resnet50": ("timm.create_model('resnet50', pretrained=False, num_classes=3)", 64, 4, 2),
    "vit-b": ("timm.create_model('vit_base_patch16_224', pretrained=False, num_classes=3)", 224, 2, 1),
}
STUDIO = """
model = {make}
g = torch.Generator().manual_seed(1)
batches = [(torch.randn({batch}, 3, {size}, {size}, generator=g),
            torch.randint(0, 3, ({batch},), generator=g)) for _ in range({steps})]
t = time.perf_counter()
w = studio.Studio(model, example_input=torch.zeros(1, 3, {size}, {size}), train_loader=batches, epochs=1,
                  lr=1e-3, export_dir="scale_export")
print(f"BUILD={{time.perf_counter() - t:.3f}}")
w
"""
CHECK = (
    'print("CFG=" + repr(w.config)); print("N=" + str(len(w.attachment.config.placements) '
    'if w.attachment else 0)); print("STATUS=" + repr(w.status))'
)


def _js(page, fn: str, arg=None):
    return page.evaluate(fn, arg)


def _wait(page, test: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        f"() => {{ const t = document.querySelector('[data-role=config]').textContent; return {test}; }}",
        timeout=timeout_ms,
    )


def _displays(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => getComputedStyle(e).display)")


def _check_settings_form(page) -> None:
    """Item 4: refinements hidden (computed display none) until their switch is on; names; help."""
    refinements = "[data-role=settings] .as-field[data-depends]:not([data-depends=''])"
    assert _displays(page, refinements) == ["none"] * 11  # velora_*, kasa_*, monteclora_*
    assert not page.locator("[data-setting=velora_groups]").is_visible()
    page.check("[data-setting=velora]")
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector("
        "'[data-setting=velora_groups]').closest('.as-field')).display !== 'none'"
    )
    assert page.locator("[data-setting=velora_groups]").is_visible()
    assert _displays(page, ".as-field[data-depends=velora]") == ["contents"] * 3
    others = ".as-field[data-depends=kasa], .as-field[data-depends=monteclora]"
    assert set(_displays(page, others)) == {"none"}
    page.uncheck("[data-setting=velora]")
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector("
        "'[data-setting=velora_groups]').closest('.as-field')).display === 'none'"
    )
    # every visible name is shown whole (the column is as wide as the longest name)
    cut = page.eval_on_selector_all(
        "[data-role=settings] .as-fname",
        "els => els.filter(e => e.offsetParent)"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)",
    )
    assert cut == []
    widths = page.eval_on_selector_all(
        "[data-role=settings] .as-fname", "els => els.map(e => e.getBoundingClientRect().width)"
    )
    assert len(set(round(x) for x in widths if x)) == 1  # one column for all names
    box = page.locator("[data-role=settings]").inner_text()
    assert "``" not in box and "param" in box
    assert page.locator("[data-role=settings] .as-fhelp code").count() >= 3  # ``adapt_weight`` -> <code>


def _check_actions_in_view(page, viewport_h: int) -> dict:
    """Item 2: Train/Stop, the plot and the export buttons lie inside the viewport and above every list,
    with the side panel's scrolling part not scrolled."""
    root = page.locator("[data-role=studio]")
    root.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(200)
    assert page.locator("[data-role=side-body]").evaluate("e => e.scrollTop") == 0
    side = page.locator(".as-side").bounding_box()
    boxes = {}
    for role in ("train", "stop", "loss-plot", "save-adapters", "export-peft", "copy-code"):
        b = page.locator(f"[data-role={role}]").bounding_box()
        assert b is not None, role
        assert 0 <= b["y"] and b["y"] + b["height"] <= viewport_h, (role, b, viewport_h)
        assert side["y"] <= b["y"] and b["y"] + b["height"] <= side["y"] + side["height"], (role, b, side)
        boxes[role] = b
    for lst in ("config", "placements"):
        assert page.locator(f"[data-role={lst}]").bounding_box()["y"] > boxes["export-peft"]["y"], lst
    return boxes


def _check_tokens(page) -> int:
    """No token of the string is drawn on two lines: a drawn line ends at `->`, `, `, `): ` or the end of
    a line of the string. Returns how many lines were wrapped (not ended by the string's own newline)."""
    broken = page.eval_on_selector_all(
        "[data-role=config] .as-tok",
        "els => els.filter(e => e.getClientRects().length !== 1).map(e => e.textContent)",
    )
    assert broken == []
    cfg = page.locator("[data-role=config]")
    assert cfg.evaluate("e => e.scrollWidth <= e.clientWidth + 1")  # nothing sticks out sideways
    ends = cfg.evaluate("""e => { const out = []; const toks = [...e.querySelectorAll('.as-tok')];
        toks.forEach((t, i) => {
          const next = toks[i + 1];
          if (!next || next.getBoundingClientRect().top <= t.getBoundingClientRect().top + 2) return;
          let n = t.nextSibling; while (n && n.nodeType === 1 && n.tagName === 'WBR') n = n.nextSibling;
          out.push({text: t.textContent, own: !!n && n.nodeType === 3 && n.textContent === '\\n'}); });
        return out; }""")
    wrapped = [x["text"] for x in ends if not x["own"]]
    assert all(x.endswith(("->", ", ", "): ")) for x in wrapped), wrapped
    return len(wrapped)


def _session(lab, name: str) -> dict:
    page = lab.page
    make, size, steps, batch = MODELS[name]
    timings: dict = {}
    lab.run(0, timeout_ms=180_000)
    t0 = time.perf_counter()
    lab.run(1, wait=False)
    page.wait_for_selector("[data-role=studio][data-ready='1']", timeout=180_000)
    timings["cell_to_widget_s"] = round(time.perf_counter() - t0, 3)
    lab.wait_done(1)
    root = page.locator("[data-role=studio]")
    timings["python_build_s"] = float(re.search(r"BUILD=([\d.]+)", lab.output(1)).group(1))
    timings["page_render_ms"] = float(root.get_attribute("data-initial-render-ms"))

    # item 1: no addins= given: the list starts on LoRA with adapt_output; the form is LoRA's
    assert page.locator("[data-role=addin]").input_value() == "LoRA"
    assert page.locator("[data-role=method]").input_value() == "adapt_output"
    assert page.locator("[data-role=settings] [data-setting=r]").count() == 1
    _check_settings_form(page)

    # click -> string, on an empty config (3 times, cleared in between)
    point = "conv1:post" if name == "resnet50" else "blocks.0.attn.qkv:post"
    target = "(conv1)" if name == "resnet50" else "attn.qkv)"
    lat = []
    for _ in range(3):
        dot = page.locator(f"[data-point='{point}']")
        dot.scroll_into_view_if_needed()
        dot.click()
        dot.click()
        _wait(page, f"t.includes({target!r})")
        lat.append(float(root.get_attribute("data-click-latency-ms")))
        page.click("[data-role=clear]")
        _wait(page, "t === ''")
    timings["click_to_string_ms"] = {"median": statistics.median(lat), "max": max(lat)}

    # item 1: the form follows the add-in of the applied strategy
    page.select_option("[data-role=addin]", "Adapter")
    page.wait_for_function("() => !document.querySelector('[data-role=settings] [data-setting=velora]')")
    if name == "resnet50":
        page.select_option("[data-role=strategy]", "lora_all")
    else:
        page.select_option("[data-role=strategy]", "lora")
        page.fill("[data-role=strategy-targets]", "qkv, fc1, fc2")
        page.locator("[data-role=strategy-targets]").press("Tab")
    page.wait_for_selector("[data-role=strategy-preview]:has-text('placement(s)')")
    t1 = time.perf_counter()
    page.click("[data-role=apply-strategy]")
    _wait(page, "t.includes('(fc)')" if name == "resnet50" else "t.includes('fc2')")
    timings["strategy_to_string_s"] = round(time.perf_counter() - t1, 3)
    page.wait_for_function("() => document.querySelector('[data-role=addin]').value === 'LoRA'")
    page.wait_for_selector("[data-role=settings] [data-setting=velora]")
    n = int(kernel_value(lab, 2, "N"))
    cfg = re.search(r"^CFG=(.*)$", lab.output(2), re.M).group(1)
    assert n == (54 if name == "resnet50" else 36)
    assert page.locator("[data-role=config]").text_content() == eval_repr(cfg)

    # item 2: placements grouped with counts; the string folded with its count of lines
    lines = eval_repr(cfg).count("\n") + 1
    plist = page.locator("[data-role=placements]")
    assert plist.get_attribute("data-count") == str(n)
    assert page.locator(".as-h", has_text=f"Placements ({n}").count() == 1
    rows = page.locator("[data-role=placements] li").count()
    if lines > FOLD_AT:
        groups = plist.locator("details.as-group")
        assert groups.count() >= 1
        assert sum(int(g) for g in groups.evaluate_all("els => els.map(e => e.dataset.count)")) == n
        first = groups.first
        assert f"· {first.get_attribute('data-count')} placements" in first.locator("summary").inner_text()
        assert not first.locator("[data-role=remove]").first.is_visible()  # folded
        cfg_el = page.locator("[data-role=config]")
        assert "as-clip" in cfg_el.get_attribute("class")
        assert cfg_el.evaluate("e => e.scrollHeight > e.clientHeight + 20")
        assert page.locator("[data-role=config-more]").inner_text() == f"show all {lines} lines"
        _check_actions_in_view(page, lab.viewport_h)
        # open every list: the actions stay where they were
        first.locator("summary").click()
        page.click("[data-role=config-more]")
        assert first.locator("[data-role=remove]").first.is_visible()
        assert "as-clip" not in cfg_el.get_attribute("class")
        assert rows == lines
    wrapped = _check_tokens(page)
    if name == "resnet50":
        assert wrapped > 0  # long lines (layer1[0].downsample[0]) do wrap, each at a token boundary
    _check_actions_in_view(page, lab.viewport_h)

    # item 5: train; the plot's label, the status line and the run item give the same last-step loss
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=runs] [data-run='1']", timeout=300_000)
    page.wait_for_selector("[data-role=studio][data-state=idle]", timeout=60_000)
    shown = page.locator("[data-role=loss-plot]").get_attribute("data-loss")
    label = page.locator("[data-role=loss-plot] .as-plot-legend").text_content()
    status = page.locator("[data-role=status]").inner_text()
    run = page.locator("[data-role=runs] [data-run='1']").inner_text()
    assert label.startswith(f"last step: loss {shown}")
    assert f"last loss {shown}" in status and f"last step loss {shown}" in run, (shown, status, run)
    fold = page.locator("[data-role=grad-fold]")
    assert fold.locator("tr[data-key]").count() == n
    assert fold.evaluate("e => e.open") == (n <= FOLD_AT)
    boxes = _check_actions_in_view(page, lab.viewport_h)

    # item 5: details count the LoRA on a frozen module as trainable
    module, written = (
        ("conv1", "conv1") if name == "resnet50" else ("blocks.0.attn.qkv", "blocks[0].attn.qkv")
    )
    page.locator(f"svg [data-path='{module}'] .as-shape").first.click()
    page.wait_for_function(
        f"() => document.querySelector('[data-role=details]').textContent.startsWith({written!r})"
    )
    details = page.locator("[data-role=details]").inner_text()
    assert "(frozen base, LoRA trainable (" in details and "(frozen)" not in details, details

    # fold the lists again for the picture; Export works from the action area
    if lines > FOLD_AT:
        page.locator("[data-role=placements] details.as-group").first.locator("summary").click()
        page.click("[data-role=config-more]")
    page.click("[data-role=save-adapters]")
    page.wait_for_function(
        "() => document.querySelector('[data-role=status]').textContent.startsWith('saved adapters to')"
    )
    root.evaluate("e => e.scrollIntoView({block: 'start'})")
    lab.shot(f"scale-{name}", root)
    if lab.frontend == "lab":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        root.screenshot(path=str(DOCS_IMG / f"widget-{name}.png"))
    timings["train_button_y_px"] = round(boxes["train"]["y"], 1)
    timings["export_button_y_px"] = round(boxes["export-peft"]["y"], 1)
    timings.update(placements=n, string_lines=lines, wrapped_lines=wrapped, frontend=lab.frontend)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if lab.frontend == "lab" else "-nb7"
    (ARTIFACTS / f"scale-{name}{suffix}.json").write_text(json.dumps(timings, indent=2))
    print(f"\n{name} [{lab.frontend}]: " + json.dumps(timings))
    return timings


def eval_repr(text: str) -> str:
    """A ``repr`` of a str printed by the kernel, read back without eval."""
    import ast

    return ast.literal_eval(text)


@pytest.mark.parametrize("name", list(MODELS))
def test_studio_at_scale(open_notebook, name):
    make, size, steps, batch = MODELS[name]
    cells = [SETUP, STUDIO.format(make=make, size=size, steps=steps, batch=batch), CHECK]
    lab = open_notebook(f"scale-{name}.ipynb", cells, height=1000)
    lab.viewport_h = 1000
    _session(lab, name)

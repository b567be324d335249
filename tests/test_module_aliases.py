"""Modules that moved into subpackages (scale/, app/, sources/) keep their old import paths: every old
name imports, is the very module object of the new one, and ``python -m addin_studio.cli`` still runs;
``import addin_studio`` itself imports none of them."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import addin_studio
from addin_studio import _aliases

ROOT = Path(__file__).resolve().parents[1]
OLD_TO_NEW = {
    "addin_studio.bigmodel": "addin_studio.scale.bigmodel",
    "addin_studio.distributed": "addin_studio.scale.distributed",
    "addin_studio.fsdp": "addin_studio.scale.fsdp",
    "addin_studio.cli": "addin_studio.app.cli",
    "addin_studio.demo": "addin_studio.app.demo",
    "addin_studio.report": "addin_studio.app.report",
    "addin_studio.data": "addin_studio.sources.data",
    "addin_studio.image_folder": "addin_studio.sources.image_folder",
    "addin_studio.models": "addin_studio.sources.models",
}


def test_the_alias_table_is_the_list_of_moves_and_no_old_file_is_left():
    assert {f"addin_studio.{old}": f"addin_studio.{new}" for old, new in _aliases.MOVED.items()} == OLD_TO_NEW
    for old, new in OLD_TO_NEW.items():
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), old
        assert (ROOT / (new.replace(".", "/") + ".py")).is_file(), new


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_an_old_path_is_the_new_module_object(old):
    new = OLD_TO_NEW[old]
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]
    assert getattr(addin_studio, old.rpartition(".")[2]) is module
    # the module keeps its own identity: name, spec and file are the new ones
    assert (module.__name__, module.__spec__.name) == (new, new)
    assert Path(module.__file__) == ROOT / (new.replace(".", "/") + ".py")


def test_from_imports_of_old_paths_give_the_same_objects():
    from addin_studio.models import create_model
    from addin_studio.scale.fsdp import save_adapters
    from addin_studio.sources.models import create_model as new_create_model

    import addin_studio.fsdp
    from addin_studio import distributed

    assert create_model is new_create_model is addin_studio.create_model
    assert addin_studio.fsdp.save_adapters is save_adapters
    assert distributed is importlib.import_module("addin_studio.scale.distributed")


def test_the_finder_answers_only_the_moved_names():
    with pytest.raises(ModuleNotFoundError, match="No module named 'addin_studio.nothing_here'"):
        importlib.import_module("addin_studio.nothing_here")
    finder = _aliases.AliasFinder()
    assert finder.find_spec("addin_studio.graph") is None
    assert finder.find_spec("other_package.cli") is None
    assert finder.find_spec("addin_studio.app.cli") is None
    assert sum(isinstance(f, _aliases.AliasFinder) for f in sys.meta_path) == 1
    _aliases.install()
    assert sum(isinstance(f, _aliases.AliasFinder) for f in sys.meta_path) == 1


def test_import_addin_studio_imports_no_moved_module_and_python_m_old_cli_runs():
    code = (
        "import sys, addin_studio\n"
        "print(sorted(m for m in sys.modules if m.startswith('addin_studio.')))\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["['addin_studio._aliases']", "False"]
    for name in ("addin_studio.cli", "addin_studio.app.cli"):
        run = subprocess.run(
            [sys.executable, "-W", "error", "-m", name, "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        version = f"addin-studio {addin_studio.__version__}\n"
        assert (run.returncode, run.stdout, run.stderr) == (0, version, "")

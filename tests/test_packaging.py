"""What a user sees of the package before reading code: license, version, declared dependencies."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import addin_studio

ROOT = Path(__file__).resolve().parents[1]


def test_license_version_and_python_are_declared():
    meta = importlib.metadata.metadata("addin-studio")
    assert meta["License-Expression"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert meta["Version"] == addin_studio.__version__
    assert meta["Requires-Python"] == ">=3.10"


def test_every_core_dependency_is_imported_by_the_package():
    """A dependency the package never imports is a declaration to drop (or a dev extra)."""
    meta = importlib.metadata.metadata("addin-studio")
    core = [re.split(r"[<>=!~ ;\[]", r)[0] for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    import_name = {"scikit-learn": "sklearn"}
    sources = "\n".join(p.read_text() for p in (ROOT / "addin_studio").rglob("*.py"))
    for dist in core:
        module = import_name.get(dist, dist).replace("-", "_")
        assert re.search(rf"^\s*(from|import) {module}\b", sources, re.M), (
            f"{dist} is declared but addin_studio never imports {module}"
        )

"""binder/ (the mybinder.org set-up) stays consistent with pyproject.toml, the README and .ci/run.

Binder cannot be launched here, so these checks read the files: every runtime dependency is installed,
the torch pins are the ones CI and the README use, the torch wheels are the CPU ones, graphviz comes
from apt, the package itself is installed, and the badge opens the quickstart notebook.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
QUICKSTART = "notebooks/01_quickstart.ipynb"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def binder_lines() -> list[str]:
    text = (BINDER / "requirements.txt").read_text(encoding="utf-8")
    return [line.split(" #")[0].strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def binder_requirements() -> dict[str, Requirement]:
    reqs = {}
    for line in binder_lines():
        if line.startswith("-") or line in (".", "./"):
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in reqs, f"binder/requirements.txt lists {req.name} twice"
        reqs[name] = req
    return reqs


def pins(text: str) -> dict[str, str]:
    """``{"torch": "2.14.1", "torchvision": "0.29.1"}`` from ``pip install torch==... torchvision==...``."""
    return dict(re.findall(r"\b(torch|torchvision)==([0-9][\w.+]*)", text))


def test_every_runtime_dependency_is_installed_on_binder() -> None:
    reqs = binder_requirements()
    for dep in pyproject()["project"]["dependencies"]:
        want = Requirement(dep)
        name = canonicalize_name(want.name)
        assert name in reqs, \
            f"pyproject.toml needs {dep!r} but binder/requirements.txt does not install {want.name}"
        have = reqs[name].specifier
        pinned = [s.version for s in have if s.operator == "=="]
        if pinned:  # a pin must satisfy pyproject's range
            assert want.specifier.contains(pinned[0], prereleases=True), (
                f"binder pins {want.name}=={pinned[0]}, outside pyproject.toml's {dep!r}")
        else:
            assert have == want.specifier, (
                f"binder/requirements.txt has {reqs[name]}, pyproject.toml has {dep!r}: keep them the same")


def test_binder_installs_nothing_pyproject_does_not_know() -> None:
    project = pyproject()["project"]
    known = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        known |= {canonicalize_name(Requirement(d).name) for d in extra}
    extra_on_binder = set(binder_requirements()) - known
    assert not extra_on_binder, \
        f"binder/requirements.txt installs {sorted(extra_on_binder)}, unknown to pyproject.toml"


def test_binder_installs_the_package_itself() -> None:
    assert any(line in (".", "./", "-e .", "-e ./") for line in binder_lines()), (
        "binder/requirements.txt must install the repository itself ('.' or '-e .')")


def test_torch_pins_match_readme_and_ci() -> None:
    binder = {name: str(req.specifier).removeprefix("==") for name, req in binder_requirements().items()
              if name in ("torch", "torchvision")}
    readme = pins((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = pins((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert readme and readme.keys() == {"torch", "torchvision"}, f"README.md pins: {readme}"
    assert binder == readme == ci, f"binder {binder}, README {readme}, .ci/run {ci}"


def test_torch_comes_from_the_cpu_wheel_index() -> None:
    assert f"--extra-index-url {CPU_INDEX}" in binder_lines(), (
        f"binder/requirements.txt needs '--extra-index-url {CPU_INDEX}' for the CPU-only torch")


def test_apt_installs_graphviz() -> None:
    packages = (BINDER / "apt.txt").read_text(encoding="utf-8").split()
    assert "graphviz" in packages


def test_binder_python_satisfies_requires_python() -> None:
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    m = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert m, f"binder/runtime.txt should read like 'python-3.11', got {runtime!r}"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(m[1])


def test_readme_binder_badge_opens_the_quickstart() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"https://mybinder\.org/v2/gh/[^\s)]+", readme)
    if not links:
        pytest.fail("README.md has no mybinder.org badge link")
    for link in links:
        m = re.search(r"[?&]labpath=([^&\s)]+)", link)
        assert m, f"the Binder link {link} does not open a notebook (labpath=...)"
        path = m[1].replace("%2F", "/").replace("%2f", "/")
        assert path == QUICKSTART, f"the Binder link opens {path}, not {QUICKSTART}"
    assert (ROOT / QUICKSTART).is_file()

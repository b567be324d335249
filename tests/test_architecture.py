"""The package's shape, read from its source with ``ast``: imports point one way (down the layers below),
no cycles between subpackages, nothing but the widget imports the widget, the core imports no Jupyter or
matplotlib, and docs/architecture.md's import graph is exactly the one the code has.

Run ``python tests/test_architecture.py`` to print the graph block for docs/architecture.md.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "addin_studio"
DOC = ROOT / "docs" / "architecture.md"
API = "addin_studio"  # the package's __init__: the public API, which the outer ring builds on

# Top to bottom; a unit (subpackage or top-level module) may import only units of lower layers.
LAYERS: list[list[str]] = [
    ["app"],
    [API],
    ["widget", "integrations"],
    ["train", "render"],
    ["named"],
    ["strategies", "checkpoint", "scale"],
    ["engine", "examples"],
    ["graph", "addins", "params", "sources"],
    ["config", "inputs", "_aliases"],
]
OUTER = {"app", API, "widget", "train", "render", "integrations"}
JUPYTER = (
    "IPython",
    "ipywidgets",
    "anywidget",
    "traitlets",
    "jupyter",
    "jupyterlab",
    "ipykernel",
    "notebook",
    "comm",
)


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(ROOT).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``addin_studio.engine.hooks`` -> ``engine``; the package itself -> ``addin_studio``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else API


def _targets(node: ast.AST, path: Path) -> list[str]:
    """Absolute module names an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if not node.level:
        return [node.module or ""]
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = ".".join(package[: len(package) - node.level + 1])
    if node.module:
        return [f"{base}.{node.module}"]
    # from . import x: x is a submodule when there is one, else a name of the package itself
    folder = ROOT.joinpath(*base.split("."))
    return [
        f"{base}.{a.name}" if (folder / a.name).is_dir() or (folder / f"{a.name}.py").is_file() else base
        for a in node.names
    ]


def _lazy_targets(tree: ast.Module) -> list[str]:
    """Modules named in the public API's module-level tables of lazy imports (``_EXPORTS = {"Name":
    ("addin_studio.x", attr)}``, ``_COMPANIONS = {"addin_studio.x": "addin_studio.y"}``)."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            for const in ast.walk(node.value):
                if (
                    isinstance(const, ast.Constant)
                    and isinstance(const.value, str)
                    and const.value.startswith(API + ".")
                ):
                    found.append(const.value)
    return found


def scan() -> tuple[dict[str, set[str]], list[tuple[str, str, int, str, bool]]]:
    """The unit graph ``{unit: {units it imports}}`` and every import as
    ``(file, target module, line, unit, at module level)``."""
    edges: dict[str, set[str]] = defaultdict(set)
    imports = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        # imports under `if TYPE_CHECKING:` at module level are not run; they are still counted
        unit = unit_of(_module_name(path))
        edges.setdefault(unit, set())
        for node in ast.walk(tree):
            for target in _targets(node, path):
                imports.append(
                    (str(path.relative_to(ROOT)), target, node.lineno, unit, id(node) in top_level)
                )
                if target == API or target.startswith(API + "."):
                    if unit_of(target) != unit:
                        edges[unit].add(unit_of(target))
        for target in _lazy_targets(tree):
            imports.append((str(path.relative_to(ROOT)), target, 0, unit, False))
            if unit_of(target) != unit:
                edges[unit].add(unit_of(target))
    return dict(edges), imports


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(edges):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def render_graph(edges: dict[str, set[str]]) -> str:
    """The import graph as docs/architecture.md shows it: layers top to bottom, ``unit -> imports``."""
    layers = [[u for u in layer if u in edges] for layer in LAYERS]
    width = max(len(u) for layer in layers for u in layer)
    blocks = []
    for layer in filter(None, layers):
        lines = [f"{u:<{width}} -> {', '.join(sorted(edges[u])) or '(nothing of ours)'}" for u in layer]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def documented_graph() -> str:
    """The ```text block after the ``<!-- import-graph -->`` marker in docs/architecture.md."""
    m = re.search(r"<!-- import-graph -->\s*```text\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, "docs/architecture.md has no ```text block after <!-- import-graph -->"
    return m.group(1)


# -- tests ------------------------------------------------------------------------------------------
EDGES, IMPORTS = scan()
RANK = {u: i for i, layer in enumerate(LAYERS) for u in layer}


def test_every_unit_has_a_layer():
    assert sorted(set(EDGES) - set(RANK)) == [], "new subpackage/module: give it a layer in LAYERS"


def test_no_cycle_between_subpackages():
    assert find_cycle(EDGES) is None, f"import cycle: {' -> '.join(find_cycle(EDGES) or [])}"


def upward(edges: dict[str, set[str]]) -> list[str]:
    """The imports ``a -> b`` whose target is not in a lower layer than their source."""
    return sorted(
        f"{a} -> {b}" for a, bs in edges.items() for b in bs if a in RANK and b in RANK and RANK[b] <= RANK[a]
    )


def test_imports_point_down():
    up = upward(EDGES)
    assert up == [], f"imports that do not point to a lower layer: {up}"


def test_a_wrong_direction_import_is_caught():
    # allowed: down the layers (app -> scale, scale -> engine); caught: the core importing the outer ring
    # (scale -> app), a unit importing its own layer (graph -> addins), a lower layer importing a higher
    # one (engine -> checkpoint)
    assert upward(
        {"app": {"scale"}, "scale": {"app", "engine"}, "graph": {"addins"}, "engine": {"checkpoint"}}
    ) == ["engine -> checkpoint", "graph -> addins", "scale -> app"]


def test_engine_does_not_import_checkpoint_and_core_not_the_outer_ring():
    assert "checkpoint" not in EDGES["engine"]
    core = set(RANK) - OUTER
    bad = sorted(f"{a} -> {b}" for a in core for b in EDGES.get(a, ()) if b in OUTER)
    assert bad == []


def test_nothing_but_the_widget_imports_the_widget():
    # the public API's lazy `studio.Studio` is the one door to it
    users = sorted(a for a, bs in EDGES.items() if "widget" in bs and a not in ("widget", API))
    assert users == []


def test_core_imports_no_jupyter_and_matplotlib_only_lazily():
    core = set(RANK) - OUTER
    # outside the widget, Jupyter is only ever imported inside a function (cli's `lab` command)
    jupyter = [
        (f, t, n)
        for f, t, n, unit, top in IMPORTS
        if unit != "widget" and t.split(".")[0] in JUPYTER and (top or unit in core)
    ]
    assert jupyter == [], f"Jupyter imports outside addin_studio/widget: {jupyter}"
    mpl = [
        (f, t, n)
        for f, t, n, unit, top in IMPORTS
        if t.split(".")[0] == "matplotlib" and (top or unit in core)
    ]
    assert mpl == [], f"matplotlib imported at module level or in the core: {mpl}"


def test_docs_show_the_import_graph_of_the_code():
    want = render_graph(EDGES)
    assert documented_graph() == want, (
        "docs/architecture.md's import graph differs from the code; replace the block with:\n" + want
    )


def test_the_scanner_sees_function_level_and_relative_imports(tmp_path):
    # the shape test is only as good as its reading of imports: check it on the two hard cases
    path = PACKAGE / "train" / "trainer.py"
    tree = ast.parse("from ..scale import distributed as d\ndef f():\n    from ..engine import attach\n")
    got = [t for node in ast.walk(tree) for t in _targets(node, path)]
    assert got == ["addin_studio.scale", "addin_studio.engine"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


if __name__ == "__main__":
    sys.stdout.write(render_graph(EDGES) + "\n")


def test_attachment_save_is_plugged_in_by_the_checkpoint_package(tmp_path):
    # a fresh interpreter: the engine alone has no writer (a clear error); studio.attach brings it
    import subprocess

    script = f"""
import torch, sys
from torch import nn
from addin_studio.engine import attach
assert "addin_studio.checkpoint" not in sys.modules
att = attach(nn.Sequential(nn.Linear(2, 2)), "(LoRA.adapt_output): ...->(0){{inout1}}->...")
try:
    att.save({str(tmp_path / "a.safetensors")!r})
except RuntimeError as exc:
    print("error:", exc)
att.detach()
import addin_studio as studio
att = studio.attach(nn.Sequential(nn.Linear(2, 2)), "(LoRA.adapt_output): ...->(0){{inout1}}->...")
att.save({str(tmp_path / "b.safetensors")!r})
print("saved")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "error: Attachment.save needs the checkpoint formats: import addin_studio.checkpoint"
    ) in proc.stdout
    assert proc.stdout.rstrip().endswith("saved") and (tmp_path / "b.safetensors").is_file()
    assert not (tmp_path / "a.safetensors").exists()

"""Build notebooks/*.ipynb from their sources notebooks/src/*.py (no outputs).

A source is plain Python in the "percent" format: ``# %%`` starts a code cell and ``# %% [markdown]``
a Markdown cell whose lines are comments (``# `` is stripped). Edit the source, then run::

    python tools/build_notebooks.py          # rewrite the notebooks
    python tools/build_notebooks.py --check  # exit 1 if a notebook differs from its source

tests/test_notebooks.py runs ``--check`` and executes every notebook.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def cells_from_source(text: str) -> list[nbformat.NotebookNode]:
    """The cells of a percent-format source."""
    cells, kind, lines = [], None, []

    def flush() -> None:
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            md = "\n".join(
                line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.split("\n")
            )
            cells.append(nbformat.v4.new_markdown_cell(md))
        elif kind == "code" and body:
            cells.append(nbformat.v4.new_code_cell(body))
        elif kind is None and body:
            raise ValueError("text before the first '# %%' cell marker")

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(source: Path) -> str:
    """The notebook JSON (nbformat 4, no outputs, stable ids) for one source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    nb.cells = cells_from_source(source.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb.cells):
        cell.id = f"{source.stem[:2]}-{i:02d}"  # stable ids keep the committed files diff-friendly
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SRC.glob("*.py")):
        target = OUT / f"{source.stem}.ipynb"
        text = build(source)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target.relative_to(ROOT))
        if not args.check:
            target.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date (run python tools/build_notebooks.py):", *stale, sep="\n  ")
        return 1
    if not args.check:
        print("wrote", *stale or ["nothing (all up to date)"], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())

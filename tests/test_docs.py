"""The docs site builds strictly, and every ```python block of every docs/*.md page runs.

A page's blocks run in order in one fresh Python process (one namespace), from a script in which each
code line sits on the same line number as in the page, so a traceback's line is the page's line. Blocks
fenced as ```python no-run (or any other language, e.g. ```text) are not run. A block that must not run
for a reason outside the page goes in SKIP_BLOCKS with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGE_TIMEOUT_S = 300

# (page, line of the opening fence) -> why the block is not run. Keep this empty when possible.
SKIP_BLOCKS: dict[tuple[str, int], str] = {}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: ``info`` is the text after the fence (``"python no-run"``), ``line`` the
    1-based line of the opening fence, ``code`` the dedented lines between the fences."""

    info: str
    line: int
    code: tuple[str, ...]

    @property
    def runs(self) -> bool:
        words = self.info.split()
        return bool(words) and words[0] == "python" and "no-run" not in words[1:]


def extract_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, in order (unterminated fences are an error)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info, start = m["indent"], m["fence"], m["info"], i + 1
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"]
            ):
                break
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        else:
            raise ValueError(f"line {start}: the code block opened here is never closed")
        blocks.append(Block(info, start, tuple(textwrap.dedent("\n".join(body)).split("\n"))))
        i += 1
    return blocks


def page_script(
    text: str, page: str, skip: dict[tuple[str, int], str] = SKIP_BLOCKS
) -> tuple[str, list[Block]]:
    """The page's runnable blocks as one script whose line N is the page's line N, and those blocks."""
    lines = [""] * (len(text.splitlines()) + 1)
    run = [b for b in extract_blocks(text) if b.runs and (page, b.line) not in skip]
    for b in run:
        for offset, code in enumerate(b.code):
            lines[b.line + 1 + offset] = code  # the fence is on line b.line; its code starts on the next
    return "\n".join(lines[1:]) + "\n", run


def failing_line(stderr: str, script: Path) -> int | None:
    """The last line of ``script`` in a Python traceback (or a SyntaxError report), if any."""
    found = re.findall(rf'File "{re.escape(str(script))}", line (\d+)', stderr)
    return int(found[-1]) if found else None


def run_page(page: Path, workdir: Path) -> None:
    """Run the page's python blocks; fail naming the page, the line and the block."""
    text = page.read_text(encoding="utf-8")
    source, blocks = page_script(text, page.name)
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks to run")
    script = workdir / f"{page.name}.py"
    script.write_text(source, encoding="utf-8")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"docs/{page.name}: its python blocks ran longer than {PAGE_TIMEOUT_S} s")
    if proc.returncode != 0:
        line = failing_line(proc.stderr, script)
        where = f"docs/{page.name}"
        if line is not None:
            block = max((b for b in blocks if b.line < line), key=lambda b: b.line, default=None)
            opened = f" (the ```python block opened at line {block.line})" if block else ""
            where += f", line {line}" + opened
        pytest.fail(f"{where} failed:\n{proc.stderr[-4000:]}", pytrace=False)


PAGES = sorted(DOCS.glob("*.md"))


@pytest.mark.slow  # each page's code runs in a fresh Python and some pages train models: up to ~20 s a page
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_python_blocks_run(page: Path, tmp_path: Path) -> None:
    run_page(page, tmp_path)


def test_skipped_blocks_exist() -> None:
    """A skip entry must name the opening line of a python block, so stale entries do not pile up."""
    for (page, line), reason in SKIP_BLOCKS.items():
        assert reason.strip(), f"skip of docs/{page}:{line} needs a reason"
        blocks = extract_blocks((DOCS / page).read_text(encoding="utf-8"))
        assert any(b.line == line and b.runs for b in blocks), (
            f"SKIP_BLOCKS names docs/{page}, line {line}, which no longer opens a ```python block"
        )


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    # no --quiet: it hides warnings from mkdocs' strict-mode counter, and the build would pass anyway
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    html = (tmp_path / "site" / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert "no-run" not in html  # the hook renders ```python no-run as a plain Python block
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    import addin_studio as studio

    for obj in (studio.attach, studio.parse, studio.Trainer, studio.create_model):
        first = obj.__doc__.strip().splitlines()[0]
        summary = re.split(r"``|:\w+:`", first)[0].strip()
        assert summary in api, f"the API reference lacks {obj.__name__}'s docstring"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w.-]+\.md)\s*$", nav, re.MULTILINE))
    assert listed == {p.name for p in PAGES}, (
        f"only in mkdocs.yml: {sorted(listed - {p.name for p in PAGES})}; "
        f"only in docs/: {sorted({p.name for p in PAGES} - listed)}"
    )


# ----------------------------------------------------------------------------- the runner itself
SAMPLE = """# Page

```python
x = 1
```

  ```python
  y = x + 1
  ```

```python no-run
import does_not_exist
```

```text
not python
```

~~~python
assert y == 2
raise RuntimeError("boom")
~~~
"""


def test_extract_blocks_finds_fences_languages_and_lines() -> None:
    blocks = extract_blocks(SAMPLE)
    assert [(b.info, b.line, b.runs) for b in blocks] == [
        ("python", 3, True),
        ("python", 7, True),
        ("python no-run", 11, False),
        ("text", 15, False),
        ("python", 19, True),
    ]
    assert blocks[1].code == ("y = x + 1",)


def test_page_script_keeps_line_numbers_and_skips() -> None:
    source, run = page_script(SAMPLE, "sample.md", skip={("sample.md", 7): "reason"})
    lines = source.splitlines()
    assert lines[3] == "x = 1" and lines[20] == 'raise RuntimeError("boom")'
    assert "y = x + 1" not in source and "does_not_exist" not in source
    assert [b.line for b in run] == [3, 19]


def test_unclosed_fence_is_reported() -> None:
    with pytest.raises(ValueError, match="line 2: the code block opened here is never closed"):
        extract_blocks("text\n```python\nx = 1\n")


def test_failure_names_page_line_and_block(tmp_path: Path) -> None:
    page = tmp_path / "sample.md"
    page.write_text(SAMPLE, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(pytest.fail.Exception) as info:
        run_page(page, work)
    message = str(info.value)
    assert "docs/sample.md, line 21 (the ```python block opened at line 19) failed" in message
    assert "RuntimeError: boom" in message


def test_hook_drops_the_no_run_marker() -> None:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert (
        hooks.on_page_markdown("a\n  ```python no-run\nx\n  ```\n``` text\n")
        == "a\n  ```python\nx\n  ```\n``` text\n"
    )

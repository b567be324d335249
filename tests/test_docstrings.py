"""Every object docs/api.md renders documents its parameters in a Google-style ``Args:`` section.

mkdocs.yml sets mkdocstrings' ``docstring_style: google``; a parameter missing from ``Args:`` (or a
docstring in another style) shows no row in the API reference's parameter table. The docstrings are
parsed with griffe's Google parser, the one mkdocstrings uses.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

griffe = pytest.importorskip("griffe")  # comes with mkdocstrings[python] (the dev extra)

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"
_ENTRY = re.compile(r"^::: (addin_studio(?:\.\w+)*)\s*$", re.M)
_SKIPPED_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def api_entries(text: str) -> list[str]:
    """The dotted paths of the ``::: addin_studio.…`` lines of a Markdown page, in order."""
    return _ENTRY.findall(text)


def resolve(path: str) -> Any:
    """The object a docs path names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


def documented(doc: str | None, kinds: tuple[str, ...] = ("parameters",)) -> set[str] | None:
    """Names in the docstring's sections of ``kinds`` (Google style), or None without a docstring."""
    if not doc:
        return None
    parsed = griffe.Docstring(doc, parser="google", parser_options={"warnings": False}).parsed
    return {item.name.lstrip("*") for s in parsed if s.kind.value in kinds for item in s.value}


def parameters(fn: Any, drop_first: bool) -> list[str]:
    """The named parameters of ``fn`` (not ``*args``/``**kwargs``, not private ``_x`` ones)."""
    params = list(inspect.signature(fn).parameters.values())
    if drop_first:
        params = params[1:]
    return [p.name for p in params if p.kind not in _SKIPPED_KINDS and not p.name.startswith("_")]


def gaps(path: str, obj: Any) -> Iterator[str]:
    """One line per public function/method of ``obj`` whose Args section misses a parameter."""
    if inspect.ismodule(obj):
        for name in getattr(obj, "__all__", ()):
            yield from gaps(f"{path}.{name}", getattr(obj, name))
    elif inspect.isclass(obj):
        own = vars(obj)
        if "__init__" in own or "__dataclass_fields__" in own:
            names = parameters(obj, drop_first=False)
            # a class documents its constructor in its own docstring (Args, or Attributes for the
            # fields of a dataclass) or, for one not built by hand, in __init__'s
            init_doc = inspect.getdoc(own["__init__"]) if "__init__" in own else None
            known = (documented(inspect.getdoc(obj), ("parameters", "attributes")) or set()) | (
                documented(init_doc) or set()
            )
            missing = [n for n in names if n not in known]
            if missing:
                yield f"{path}(): not in Args/Attributes: {', '.join(missing)}"
        for name, member in own.items():
            if name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                yield from _function_gaps(
                    f"{path}.{name}", member.__func__, drop_first=isinstance(member, classmethod)
                )
            elif inspect.isfunction(member):
                yield from _function_gaps(f"{path}.{name}", member, drop_first=True)
    elif callable(obj):
        yield from _function_gaps(path, obj, drop_first=False)


def _function_gaps(path: str, fn: Any, drop_first: bool) -> Iterator[str]:
    names = parameters(fn, drop_first)
    doc = inspect.getdoc(fn)
    if not doc:
        yield f"{path}: no docstring"
        return
    known = documented(doc) or set()
    missing = [n for n in names if n not in known]
    if missing:
        yield f"{path}: not in Args: {', '.join(missing)}"


def test_api_page_lists_the_public_api() -> None:
    entries = api_entries(API_PAGE.read_text(encoding="utf-8"))
    assert len(entries) >= 30, entries
    assert "addin_studio.config.parse" in entries and "addin_studio.train.Trainer" in entries
    for path in entries:
        assert resolve(path) is not None, path


def test_every_api_object_documents_its_parameters_google_style() -> None:
    problems = [
        line
        for path in api_entries(API_PAGE.read_text(encoding="utf-8"))
        for line in gaps(path, resolve(path))
    ]
    assert problems == [], "Google-style Args missing (mkdocs.yml: docstring_style google):\n" + "\n".join(
        problems
    )


def test_the_check_sees_a_missing_or_misnamed_parameter() -> None:
    def good(model: Any, r: int = 8, *args: Any, **kwargs: Any) -> None:
        """Do it.

        Args:
            model: The model.
            r: The rank.
        """

    def misnamed(model: Any, rank: int = 8) -> None:
        """Do it.

        Args:
            model: The model.
            r: The rank.
        """

    def other_style(model: Any) -> None:
        """Do it.

        :param model: The model.
        """

    class Thing:
        """A thing.

        Args:
            size: Its size.
        """

        def __init__(self, size: int, colour: str) -> None:
            self.size, self.colour = size, colour

        def grow(self, by: int) -> None:
            """Grow ``by``."""

    assert list(gaps("good", good)) == []
    assert list(gaps("misnamed", misnamed)) == ["misnamed: not in Args: rank"]
    assert list(gaps("other_style", other_style)) == ["other_style: not in Args: model"]
    assert list(gaps("Thing", Thing)) == [
        "Thing(): not in Args/Attributes: colour",
        "Thing.grow: not in Args: by",
    ]
    assert api_entries("::: addin_studio.config.parse\n\n:::addin_studio.x\n::: other.y\n") == [
        "addin_studio.config.parse"
    ]

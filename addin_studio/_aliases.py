"""Old import paths of modules that moved into subpackages, kept working as aliases.

``import addin_studio.fsdp``, ``from addin_studio.models import create_model`` and
``python -m addin_studio.cli`` reach the moved module itself (the same module object as
``addin_studio.scale.fsdp``, ...): a finder on ``sys.meta_path`` answers only the names in :data:`MOVED`
and imports the new module the first time an old name is imported. Installing it imports nothing of the
package, so ``import addin_studio`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType
from typing import Sequence

PACKAGE = __name__.rpartition(".")[0]

#: old module name -> new module name, both relative to the package
MOVED: dict[str, str] = {
    "bigmodel": "scale.bigmodel",
    "distributed": "scale.distributed",
    "fsdp": "scale.fsdp",
    "cli": "app.cli",
    "demo": "app.demo",
    "report": "app.report",
    "data": "sources.data",
    "image_folder": "sources.image_folder",
    "models": "sources.models",
}


class _AliasSpec(importlib.machinery.ModuleSpec):
    """The spec of an old name: its parent package is the new module's, so that the new module's
    relative imports resolve when ``python -m <old name>`` runs its code as ``__main__``."""

    def __init__(self, name: str, loader: _AliasLoader, target: importlib.machinery.ModuleSpec):
        super().__init__(name, loader, origin=target.origin)
        self._target_parent = target.parent

    @property
    def parent(self) -> str | None:
        return self._target_parent


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the new module object itself (imported once, under its new name)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system sets __spec__ to the alias's; put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code (``python -m`` of an old name runs it)."""
        spec = importlib.util.find_spec(self.target)
        loader = spec.loader if spec else None
        get_code = getattr(loader, "get_code", None)
        return get_code(self.target) if get_code else None


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED` (and nothing else)."""

    package = PACKAGE

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        new = f"{PACKAGE}.{MOVED[name]}"
        new_spec = importlib.util.find_spec(new)
        if new_spec is None:
            return None
        return _AliasSpec(fullname, _AliasLoader(new), new_spec)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once): an old name is answered before any path
    finder could find a stale file of that name (e.g. another checkout's)."""
    if not any(
        type(f).__name__ == "AliasFinder" and getattr(f, "package", None) == PACKAGE for f in sys.meta_path
    ):
        sys.meta_path.insert(0, AliasFinder())

"""The Studio's export buttons: adapters (safetensors), a PEFT folder, and Python code (no Jupyter)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from ..config import Config
from ..engine import Attachment


def save_adapters(att: Attachment, directory: str | Path) -> Path:
    """``<directory>/adapters.safetensors`` (add-in weights, config in the metadata)."""
    path = Path(directory) / "adapters.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    att.save(path)
    return path


def export_peft(att: Attachment, directory: str | Path) -> Path:
    """``<directory>/peft/`` with ``adapter_model.safetensors`` and ``adapter_config.json``."""
    path = Path(directory) / "peft"
    path.mkdir(parents=True, exist_ok=True)
    att.export_peft(path)
    return path


def _import_line(name: str, factory: Callable) -> str:
    module = getattr(factory, "__module__", None)
    qual = getattr(factory, "__qualname__", "")
    if module and module != "__main__" and qual and "." not in qual and "<" not in qual:
        return f"from {module} import {qual}" + (f" as {name}" if qual != name else "")
    return f"# {name}: the add-in you passed to Studio(addins=...) (defined in your notebook)"


def code_snippet(cfg: Config, addins: Mapping[str, Callable]) -> str:
    """Python that rebuilds the same attachment on ``model`` with ``studio.attach``."""
    used = [n for n in dict.fromkeys(p.addin for p in cfg.placements) if n in addins]
    lines = ["import addin_studio as studio"]
    lines += [_import_line(n, addins[n]) for n in used]
    text = str(cfg)
    quoted = '"""' + text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') + '"""'
    lines += ["", f"config = {quoted}"]
    extra = ", addins={" + ", ".join(f"{n!r}: {n}" for n in used) + "}" if used else ""
    lines.append(f"att = studio.attach(model, config{extra}, example_input=example_input)")
    return "\n".join(lines) + "\n"


__all__ = ["code_snippet", "export_peft", "save_adapters"]

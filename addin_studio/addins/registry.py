"""The built-in add-in registry: names usable in config strings without passing ``addins=``."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

_REGISTRY: dict[str, Callable[..., Any]] = {}
T = TypeVar("T")


def register_addin(cls: T | None = None, *, name: str | None = None) -> Any:
    """Register an add-in class under ``name`` (default: the class name). Usable as a decorator.

    Args:
        cls: The add-in class; leave it out to get a decorator (``@register_addin(name="X")``).
        name: The name config strings use for it; defaults to the class name.

    Returns:
        ``cls`` itself, or a decorator that registers and returns its class.

    Raises:
        ValueError: The name is not a Python identifier.
    """

    def deco(c: T) -> T:
        key = name or c.__name__  # type: ignore[attr-defined]
        if not key.isidentifier():
            raise ValueError(f"add-in name {key!r} must be an identifier to be written in a string")
        _REGISTRY[key] = c  # type: ignore[assignment]
        return c

    return deco(cls) if cls is not None else deco


def get_addin(name: str) -> Callable[..., Any]:
    """The registered add-in factory called ``name``.

    Args:
        name: The add-in name, as written in config strings (``"LoRA"``).

    Returns:
        The registered add-in class (factory).

    Raises:
        KeyError: No add-in is registered under ``name``; the message lists the known ones.
    """
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no built-in add-in {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def available_addins() -> dict[str, Callable[..., Any]]:
    """All registered add-ins, by name."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def _load_builtins() -> None:
    # the built-ins register themselves on import; importing here keeps `import addin_studio` light
    from . import builtins  # noqa: F401

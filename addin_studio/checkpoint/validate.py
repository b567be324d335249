"""What a checkpoint file may hold: each malformed field is one ValueError naming the file and the field;
tensors must be floating point (where the model's are) and finite."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch


def json_field(meta: Mapping[str, str], field: str, source: str) -> Any:
    """The JSON value of metadata ``field`` (ValueError if it is missing or not JSON)."""
    if field not in meta:
        raise ValueError(f"{source}: the metadata has no field '{field}'")
    try:
        return json.loads(meta[field])
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:
        raise ValueError(f"{source}: metadata field '{field}' is not valid JSON ({exc})") from None


def expect(value: Any, kind: str, source: str, field: str) -> Any:
    """Check a JSON value's type; ``kind`` is one of str, int, number, bool, list[str], str or list[str],
    object, shape (a list of non-negative ints). Returns the value."""
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "bool": lambda v: isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "str or list[str]": lambda v: (
            isinstance(v, str) or isinstance(v, list) and all(isinstance(x, str) for x in v)
        ),
        "object": lambda v: isinstance(v, dict),
        "shape": lambda v: (
            isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        ),
    }[kind]
    if not ok(value):
        want = {
            "number": "a finite number",
            "list[str]": "a list of strings",
            "str or list[str]": "a string or a list of strings",
            "object": "an object",
            "shape": "a list of non-negative integers",
        }.get(kind, f"a {kind}")
        raise ValueError(f"{source}: field '{field}' must be {want}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = (
        json.dumps(value)
        if isinstance(value, (dict, list, str, int, float, bool, type(None)))
        else repr(value)
    )
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def check_fingerprint_fields(expected: Any, source: str) -> None:
    """A fingerprint is ``{"root": str, "params": [[name, shape], ...]}``."""
    expect(expected, "object", source, "fingerprint")
    expect(expected.get("root"), "str", source, "fingerprint.root")
    params = _list(expected.get("params"), source, "fingerprint.params")
    for i, item in enumerate(params):
        where = f"fingerprint.params[{i}]"
        if not (isinstance(item, list) and len(item) == 2):
            raise ValueError(f"{source}: field '{where}' must be [name, shape], got {_show(item)}")
        expect(item[0], "str", source, where + "[0]")
        expect(item[1], "shape", source, where + "[1]")


def _list(value: Any, source: str, field: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{source}: field '{field}' must be a list, got {_show(value)}")
    return value


def check_tensor(
    t: torch.Tensor, like: torch.Tensor, name: str, source: str, allow_nonfinite: bool = False
) -> None:
    """A tensor from a file may replace ``like`` only with the same shape, a floating dtype where
    ``like`` is floating (the same dtype otherwise) and finite values."""
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(
            f"{source}: tensor '{name}' has shape {tuple(t.shape)}, the model's is {tuple(like.shape)}"
        )
    if like.is_floating_point():
        if not t.is_floating_point():
            raise ValueError(
                f"{source}: tensor '{name}' has dtype {t.dtype}; a floating-point tensor is "
                f"needed (the model's is {like.dtype})"
            )
        if not allow_nonfinite and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{source}: tensor '{name}' holds non-finite values (inf or nan)")
    elif t.dtype != like.dtype:
        raise ValueError(f"{source}: tensor '{name}' has dtype {t.dtype}, the model's is {like.dtype}")

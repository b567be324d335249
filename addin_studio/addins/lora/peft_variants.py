"""PEFT's sub-configs of LoRA variants (``kasa_config``, ``velora_config``, ``monteclora_config`` in
``adapter_config.json``): each variant module declares its fields; these helpers write and read them."""

from __future__ import annotations

from typing import Any, Mapping

NUMBER = (int, float)


def as_json(value: Any) -> Any:
    """A hashable sub-config (sorted item tuples, or None) as the JSON object PEFT writes."""
    return dict(value) if isinstance(value, tuple) else value


def _is(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, kind)


def read_subconfig(
    config: Mapping[str, Any], source: str, field: str, switch: str, fields: Mapping[str, tuple[str, Any]]
) -> dict[str, Any]:
    """Our settings for PEFT's sub-config ``field`` (``{its key: (our setting, JSON type)}``; a key left out
    keeps our default, which is PEFT's): JSON types checked here, naming the field; the LoRA checks the
    values themselves. Empty when the config does not have it."""
    value = config.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: field '{field}' must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: field '{field}' has '{unknown[0]}', which is not supported ({', '.join(fields)})"
        )
    out: dict[str, Any] = {switch: True}
    for key, (ours, kind) in fields.items():
        if key not in value:
            continue
        if not _is(value[key], kind):
            name = {int: "an integer", str: "a string", bool: "true or false"}.get(kind, "a number")
            raise ValueError(f"{source}: field '{field}.{key}' must be {name}, got {value[key]!r}")
        out[ours] = value[key]
    return out

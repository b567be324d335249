"""The Studio's protocol: one table of the intents the page may send, and how Python handles each.

A message from the page is ``{"type": name, **fields}``. Each :class:`Intent` names its handler, whether
it may run while a training run is going, and whether it edits the config (then the editor's last
message is cleared before it and the editor's state is pushed to the page after it). The fields of an
intent are its handler's keyword parameters: the table is the only place where names and fields are
written. The page receives them (:func:`protocol`, the Studio's ``intents`` trait) and builds one
sender per intent from it, so a name the table does not hold fails in the page, not silently here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: the reply to an intent that edits the config while a run trains
BUSY = "stop training before changing the config"


@dataclass(frozen=True)
class Intent:
    """One request the page can send: its name, its handler ``(studio, **fields)`` and when it may run."""

    name: str
    handler: Callable[..., None]
    while_training: bool = True  # False: refused while a run trains (BUSY)
    edits: bool = False  # clear the editor's message before, push the editor's state to the page after
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        params = list(inspect.signature(self.handler).parameters.values())[1:]  # after the studio
        bad = [p.name for p in params if p.kind is not p.POSITIONAL_OR_KEYWORD or p.default is p.empty]
        if bad:
            raise TypeError(
                f"intent {self.name!r}: handler {self.handler.__qualname__} must take only "
                f"fields with defaults after the studio, not {', '.join(bad)}"
            )
        object.__setattr__(self, "fields", tuple(p.name for p in params))

    def run(self, studio: Any, msg: Mapping[str, Any]) -> None:
        """Call the handler with the message's fields (a field the message lacks takes its default)."""
        self.handler(studio, **{f: msg[f] for f in self.fields if f in msg})


def table(*intents: Intent) -> dict[str, Intent]:
    """The intents by name; a name given twice is a mistake in the table."""
    out: dict[str, Intent] = {}
    for it in intents:
        if it.name in out:
            raise ValueError(f"intent {it.name!r} is in the table twice")
        out[it.name] = it
    return out


def protocol(intents: Mapping[str, Intent]) -> dict[str, list[str]]:
    """What the page needs to send each intent: its name and the fields it may carry."""
    return {name: list(it.fields) for name, it in intents.items()}

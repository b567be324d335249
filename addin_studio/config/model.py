"""Immutable values a config string describes: Point, Placement, Config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

Side = Literal["pre", "post"]
SIDES = ("pre", "post")


@dataclass(frozen=True)
class Point:
    """An insertion point: just before (``pre``) or just after (``post``) a module.

    Attributes:
        module: The dotted path of ``named_modules`` (``"blocks.3.attn.qkv"``).
        side: ``"pre"`` (the module's input) or ``"post"`` (its output).

    Raises:
        ValueError: ``side`` is neither ``"pre"`` nor ``"post"``.
    """

    module: str
    side: Side

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"Point side must be 'pre' or 'post', not {self.side!r}")

    def __str__(self) -> str:
        return f"{self.module}:{self.side}"

    @classmethod
    def from_str(cls, text: str) -> "Point":
        """Inverse of ``str(point)``: ``"fc1:post"`` -> ``Point("fc1", "post")``.

        Args:
            text: ``"<module path>:pre"`` or ``"<module path>:post"`` (config-string paths such as
                ``blocks[3].attn`` are accepted).

        Returns:
            The point, with the module path in dotted form.

        Raises:
            ValueError: ``text`` does not end in ``:pre`` or ``:post``.
        """
        module, sep, side = text.rpartition(":")
        if not sep or side not in SIDES:
            raise ValueError(f"expected '<module path>:pre' or '<module path>:post', got {text!r}")
        from .paths import to_dotted

        return cls(to_dotted(module), side)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Placement:
    """One add-in instance placed in the model.

    For ``{inout}`` placements ``source == target``; for ``{in}``...``{out}`` placements the feature at
    ``source`` is cached and the method runs at ``target``.

    Attributes:
        addin: The add-in name as written in the config (``"LoRA"``).
        method: The add-in method that runs (``"adapt_output"``).
        source: The point whose feature the add-in reads.
        target: The point where the method runs (equal to ``source`` for ``{inout}``).
        settings: The settings written in the config (``r=8`` -> ``{"r": 8}``).
        span: Offsets ``(start, end)`` of the entry in the config string, for error positions; not
            part of equality.
    """

    addin: str
    method: str
    source: Point
    target: Point
    settings: Mapping[str, Any] = field(default_factory=dict)
    span: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", dict(self.settings))

    @property
    def kind(self) -> Literal["inout", "across"]:
        return "inout" if self.source == self.target else "across"

    def __hash__(self) -> int:
        return hash(
            (
                self.addin,
                self.method,
                self.source,
                self.target,
                tuple(sorted((k, repr(v)) for k, v in self.settings.items())),
            )
        )


class Config:
    """A parsed config string: placements, kept-trainable patterns and running-statistics layers.

    Holds the placements (in order), kept-trainable parameter patterns and the normalization layers
    whose running statistics update while the add-ins train (``running_stats``).

    Immutable; ``str(cfg)`` is the canonical string and ``parse(str(cfg)) == cfg``.

    Args:
        placements: The placements, in order.
        trainable: Patterns of base-model parameters kept trainable (duplicates dropped, order kept).
        text: The config string this was parsed from, if any (used for error positions).
        trainable_spans: Offset in ``text`` of each trainable pattern (for error positions); not part
            of equality.
        running_stats: Module patterns of normalization layers whose running statistics update.

    Raises:
        TypeError: A placement is not a :class:`Placement`.
    """

    __slots__ = ("_placements", "_trainable", "_running_stats", "text", "trainable_spans")

    def __init__(
        self,
        placements: Iterable[Placement] = (),
        trainable: Iterable[str] = (),
        text: str | None = None,
        *,
        trainable_spans: Mapping[str, int] | None = None,
        running_stats: Iterable[str] = (),
    ) -> None:
        self._placements = tuple(placements)
        self._trainable = tuple(dict.fromkeys(trainable))  # de-duplicated, order kept
        self._running_stats = tuple(dict.fromkeys(running_stats))
        for p in self._placements:
            if not isinstance(p, Placement):
                raise TypeError(f"Config placements must be Placement objects, got {type(p).__name__}")
        self.text = text
        # offset in ``text`` of each trainable pattern (for error positions); not part of equality
        self.trainable_spans: dict[str, int] = dict(trainable_spans or {})

    @property
    def placements(self) -> tuple[Placement, ...]:
        return self._placements

    @property
    def trainable(self) -> tuple[str, ...]:
        return self._trainable

    @property
    def running_stats(self) -> tuple[str, ...]:
        """Module patterns (``running_stats(...)``) of normalization layers whose running statistics
        follow the training data; they are saved with the adapters. Every other BatchNorm-like layer
        of a frozen base keeps its statistics fixed (see docs/training.md)."""
        return self._running_stats

    def add(self, placement: Placement) -> "Config":
        """A new Config with ``placement`` appended.

        Args:
            placement: The placement to add at the end.

        Returns:
            The new Config; this one is unchanged.
        """
        return Config(self._placements + (placement,), self._trainable, running_stats=self._running_stats)

    def remove(self, index: int) -> "Config":
        """A new Config without the placement at ``index``.

        Args:
            index: The position of the placement to drop (negative counts from the end).

        Returns:
            The new Config; this one is unchanged.

        Raises:
            IndexError: The config has no placement at ``index``.
        """
        if not -len(self._placements) <= index < len(self._placements):
            raise IndexError(f"no placement {index}; the config has {len(self._placements)}")
        items = list(self._placements)
        del items[index]
        return Config(items, self._trainable, running_stats=self._running_stats)

    def with_trainable(self, patterns: Iterable[str]) -> "Config":
        """A new Config whose kept-trainable patterns are ``patterns``.

        Args:
            patterns: Patterns of base-model parameters to keep trainable (they replace the current ones).

        Returns:
            The new Config; this one is unchanged.
        """
        return Config(self._placements, patterns, running_stats=self._running_stats)

    def with_running_stats(self, patterns: Iterable[str]) -> "Config":
        """A new Config whose ``running_stats(...)`` patterns are ``patterns``.

        Args:
            patterns: Module patterns of normalization layers whose running statistics update (they
                replace the current ones).

        Returns:
            The new Config; this one is unchanged.
        """
        return Config(self._placements, self._trainable, running_stats=patterns)

    def __add__(self, other: "Config") -> "Config":
        if not isinstance(other, Config):
            return NotImplemented
        return Config(
            self._placements + other._placements,
            self._trainable + other._trainable,
            running_stats=self._running_stats + other._running_stats,
        )

    def __len__(self) -> int:
        return len(self._placements)

    def __bool__(self) -> bool:
        return bool(self._placements or self._trainable or self._running_stats)

    def __iter__(self):
        return iter(self._placements)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return (
            self._placements == other._placements
            and self._trainable == other._trainable
            and self._running_stats == other._running_stats
        )

    def __hash__(self) -> int:
        return hash((self._placements, self._trainable, self._running_stats))

    def __str__(self) -> str:
        from .emit import emit

        return emit(self)

    def __repr__(self) -> str:
        return f"Config({str(self)!r})"

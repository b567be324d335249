"""Recursive-descent parser for config strings (grammar: docs/config-strings.md).

Every mistake raises :class:`ConfigError` with the offset of the offending character.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .model import Config, Placement, Point, Side

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")
_PATTERN_SEGMENT = re.compile(r"[A-Za-z0-9_\-*?]+")
_INT = re.compile(r"\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)")
_LABEL = re.compile(r"\{\s*(inout|in|out)\s*(\d*)\s*\}")
_ELLIPSIS = ("...", "…")
MAX_RANGE = 100_000  # a guard against "blocks[0:999999999]" exhausting memory
# Limits on one string (docs/config-strings.md, "Limits"); all are checked before anything is expanded.
MAX_PLACEMENTS = 100_000  # placements plus trainable patterns, after ranges are expanded
MAX_NUMBER_CHARS = 40  # characters of one number literal
MAX_INT = 10**15  # magnitude of an integer setting
MAX_INDEX_DIGITS = 9  # digits of an index, a range bound or a label number


@dataclass
class _Range:
    start: int
    stop: int
    pos: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class _Path:
    segments: list  # str or _Range
    pos: int
    end: int

    def expand(self, step: int) -> str:
        return ".".join(str(s.start + step) if isinstance(s, _Range) else s for s in self.segments)

    def ranges(self) -> list[_Range]:
        return [s for s in self.segments if isinstance(s, _Range)]


@dataclass
class _Label:
    kind: str
    number: int | None  # None for an unnumbered label ({inout}, {in}, {out})
    path: _Path
    side: Side
    pos: int

    @property
    def text(self) -> str:
        return f"{{{self.kind}{'' if self.number is None else self.number}}}"


def parse(text: str) -> Config:
    """Parse a config string into a :class:`Config`.

    Accepts ZhiJian's one-line syntax (``(Addin.method): ...->{inout1}(fc2)->...``), several entries
    (one per line, or separated by ``,``/``;``), settings (``(LoRA.adapt_output, r=8): ...``) and
    kept-trainable parameters (``trainable(head, pos_embed)``).

    Args:
        text: The config string.

    Returns:
        The parsed :class:`Config`; ``str()`` of it is the canonical string.

    Raises:
        ConfigError: The string has a syntax mistake; the error gives the offset of the offending
            character.
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() expects a config string, got {type(text).__name__}")
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.count = 0  # placements + trainable patterns so far (MAX_PLACEMENTS)
        self.trainable_spans: dict[str, int] = {}  # pattern -> offset of its first occurrence

    def reserve(self, n: int, pos: int) -> None:
        """Count ``n`` more expanded items against MAX_PLACEMENTS before building them."""
        self.count += n
        if self.count > MAX_PLACEMENTS:
            raise self.error(
                f"this string expands to more than {MAX_PLACEMENTS:,} placements and "
                f"trainable patterns (ranges are expanded); the limit is per string",
                pos,
                hint="use fewer or shorter ranges",
            )

    def small_int(self, digits: str, pos: int, what: str) -> int:
        if len(digits) > MAX_INDEX_DIGITS:
            raise self.error(
                f"{what} {digits[:12]}{'...' if len(digits) > 12 else ''} is too large "
                f"(at most {MAX_INDEX_DIGITS} digits)",
                pos,
            )
        return int(digits)

    # -- helpers ---------------------------------------------------------------------------------
    def error(self, message: str, pos: int | None = None, hint: str | None = None) -> ConfigError:
        return ConfigError(message, self.text, self.i if pos is None else pos, hint)

    def skip_ws(self, newlines: bool = False) -> None:
        chars = " \t\r\n" if newlines else " \t\r"
        while self.i < len(self.text) and self.text[self.i] in chars:
            self.i += 1

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.i)

    def expect(self, s: str, what: str, hint: str | None = None) -> None:
        self.skip_ws()
        if not self.peek(s):
            raise self.error(f"expected {what}, found {self.describe_here()}", hint=hint)
        self.i += len(s)

    def describe_here(self) -> str:
        if self.i >= len(self.text):
            return "the end of the string"
        ch = self.text[self.i]
        if ch == "\n":
            return "a line break"
        return repr(self.text[self.i : self.i + 12].split("\n")[0])

    def match(self, pattern: re.Pattern) -> re.Match | None:
        m = pattern.match(self.text, self.i)
        if m:
            self.i = m.end()
        return m

    # -- grammar ---------------------------------------------------------------------------------
    def parse(self) -> Config:
        pending: list[Callable[[], list[Placement]]] = []
        trainable: list[str] = []
        running_stats: list[str] = []
        self.skip_ws(newlines=True)
        while self.i < len(self.text):
            start = self.i
            if self.peek("("):
                pending.append(self.entry(start))
            elif self.text.startswith("trainable", self.i):
                trainable.extend(
                    self.pattern_entry(
                        "trainable", "a parameter or module name", "trainable(head, pos_embed)"
                    )
                )
            elif self.text.startswith("running_stats", self.i):
                running_stats.extend(
                    self.pattern_entry("running_stats", "a module name", "running_stats(layer4, bn1)")
                )
            else:
                raise self.error(
                    f"expected an entry such as '(Addin.method): ...->{{inout1}}(module)->...', "
                    f"'trainable(...)' or 'running_stats(...)', found {self.describe_here()}"
                )
            self.skip_ws()
            if self.i < len(self.text):
                if self.text[self.i] in ",;\n":
                    self.i += 1
                    self.skip_ws(newlines=True)
                    while self.i < len(self.text) and self.text[self.i] in ",;":
                        self.i += 1
                        self.skip_ws(newlines=True)
                else:
                    raise self.error(
                        f"unexpected {self.describe_here()} after an entry",
                        hint="separate entries with a new line or ','",
                    )
        placements = [p for expand in pending for p in expand()]
        return Config(
            placements,
            trainable,
            text=self.text,
            trainable_spans=self.trainable_spans,
            running_stats=running_stats,
        )

    def entry(self, start: int) -> Callable[[], list[Placement]]:
        addin, method, settings = self.header()
        self.expect(":", "':' after the header")
        labels = self.chain()
        if not labels:
            raise self.error(
                "this entry places no add-in: it has no {inout1} or {in1}...{out1} label",
                start,
                hint="mark a point, e.g. '...->{inout1}(fc2)->...'",
            )
        steps = self.range_length(labels)
        pairs = self.pair(labels)
        self.reserve(steps * len(pairs), start)
        span = (start, self.i)

        def expand() -> list[Placement]:  # run after the whole string is checked against the limits
            return [
                Placement(
                    addin,
                    method,
                    Point(src.path.expand(step), src.side),
                    Point(dst.path.expand(step), dst.side),
                    settings,
                    span=span,
                )
                for step in range(steps)
                for src, dst in pairs
            ]

        return expand

    def header(self) -> tuple[str, str, dict[str, Any]]:
        self.expect("(", "'(' to start the header")
        self.skip_ws()
        name = self.match(_NAME)
        if not name:
            raise self.error(
                f"expected an add-in name, found {self.describe_here()}",
                hint="write the header as '(AddinName.method)'",
            )
        self.skip_ws()
        if not self.peek("."):
            raise self.error(
                f"expected '.' and a method name after add-in {name.group()!r}, found {self.describe_here()}",
                hint=f"e.g. '({name.group()}.adapt_output)'",
            )
        self.i += 1
        self.skip_ws()
        method = self.match(_NAME)
        if not method:
            raise self.error(f"expected a method name, found {self.describe_here()}")
        settings: dict[str, Any] = {}
        self.skip_ws()
        while self.peek(","):
            self.i += 1
            self.skip_ws()
            key_pos = self.i
            key = self.match(_NAME)
            if not key:
                raise self.error(
                    f"expected a setting name, found {self.describe_here()}",
                    hint="settings look like 'r=8, alpha=16'",
                )
            if key.group() in settings:
                raise self.error(f"setting {key.group()!r} is given twice", key_pos)
            self.expect("=", f"'=' after setting {key.group()!r}")
            settings[key.group()] = self.value()
            self.skip_ws()
        self.expect(")", "')' to close the header")
        return name.group(), method.group(), settings

    def value(self) -> Any:
        self.skip_ws()
        ch = self.text[self.i] if self.i < len(self.text) else ""
        if ch in "\"'":
            return self.quoted(ch)
        num = _NUMBER.match(self.text, self.i)
        if num:
            return self.number(num)
        word = self.match(_NAME)
        if word:
            return {"true": True, "false": False, "none": None}.get(word.group().lower(), word.group())
        raise self.error(
            f"expected a value (number, true/false, a name or a quoted string), found {self.describe_here()}"
        )

    def number(self, num: re.Match) -> int | float:
        """A number setting: at most MAX_NUMBER_CHARS characters, finite, integers within MAX_INT."""
        s, pos = num.group(), num.start()
        if len(s) > MAX_NUMBER_CHARS:
            raise self.error(
                f"number {s[:12]}... is too long ({len(s)} characters; at most {MAX_NUMBER_CHARS})", pos
            )
        if any(c in s for c in ".eE"):
            value: int | float = float(s)
            if not math.isfinite(value):
                raise self.error(
                    f"number {s} is too large: it is infinite as a float",
                    pos,
                    hint="settings must be finite numbers",
                )
        else:
            value = int(s)
            if abs(value) > MAX_INT:
                raise self.error(f"integer {s} is too large (at most {MAX_INT:.0e} in magnitude)", pos)
        self.i = num.end()
        return value

    def quoted(self, quote: str) -> str:
        start = self.i
        self.i += 1
        out = []
        while self.i < len(self.text):
            ch = self.text[self.i]
            if ch == "\\" and self.i + 1 < len(self.text):
                out.append(self.text[self.i + 1])
                self.i += 2
                continue
            if ch == quote:
                self.i += 1
                return "".join(out)
            out.append(ch)
            self.i += 1
        raise self.error("unterminated string", start, hint=f"close it with {quote}")

    def chain(self) -> list[_Label]:
        labels: list[_Label] = []
        while True:
            self.skip_ws(newlines=True)  # after ':' or '->' the chain may go on on the next line
            if any(self.peek(e) for e in _ELLIPSIS):
                self.i += 3 if self.peek("...") else 1
            else:
                labels.extend(self.element())
            # an arrow continues the chain, also at the start of the next line
            save = self.i
            self.skip_ws(newlines=True)
            if self.peek("->"):
                self.i += 2
                continue
            self.i = save
            return labels

    def element(self) -> list[_Label]:
        before = self.labels()
        self.skip_ws()
        if not self.peek("("):
            if before:
                kind, number, pos = before[-1]
                text = f"{{{kind}{'' if number is None else number}}}"
                raise self.error(
                    f"label {text} is not next to a module",
                    pos,
                    hint=f"write '{text}(module)' for the point before a module or "
                    f"'(module){text}' for the point after it",
                )
            raise self.error(
                f"expected '...', a label like '{{inout1}}' or a module like '(fc1)', "
                f"found {self.describe_here()}"
            )
        path = self.module()
        after = self.labels()
        return [_Label(k, n, path, "pre", p) for k, n, p in before] + [
            _Label(k, n, path, "post", p) for k, n, p in after
        ]

    def labels(self) -> list[tuple[str, int | None, int]]:
        found: list[tuple[str, int | None, int]] = []
        while True:
            self.skip_ws()
            if not self.peek("{"):
                return found
            pos = self.i
            m = self.match(_LABEL)
            if not m:
                raise self.error(
                    "bad label: expected '{inoutN}', '{inN}' or '{outN}' (the number N may "
                    "be left out where one pair per entry makes it clear)",
                    pos,
                )
            found.append(
                (m.group(1), self.small_int(m.group(2), pos, "label number") if m.group(2) else None, pos)
            )

    def module(self) -> _Path:
        self.expect("(", "'(' before a module path")
        self.skip_ws()
        start = self.i
        segments = self.path_segments(_SEGMENT, "a module path")
        end = self.i
        self.skip_ws()
        hint = "ranges go in brackets: blocks[0:12]" if self.peek(":") else None
        self.expect(")", "')' to close the module path", hint=hint)
        return _Path(segments, start, end)

    def path_segments(self, seg_re: re.Pattern, what: str) -> list:
        segments: list = []
        m = self.match(seg_re)
        if not m:
            if self.peek("["):
                pass  # a path may start with an index: "[0].fc" for an nn.Sequential root
            else:
                raise self.error(f"expected {what}, found {self.describe_here()}")
        else:
            segments.append(m.group())
        while True:
            if self.peek("."):
                self.i += 1
                m = self.match(seg_re)
                if not m:
                    raise self.error(f"expected a name after '.', found {self.describe_here()}")
                segments.append(m.group())
            elif self.peek("["):
                segments.append(self.index())
            else:
                if not segments:
                    raise self.error(f"expected {what}, found {self.describe_here()}")
                return segments

    def index(self) -> str | _Range:
        self.i += 1  # "["
        self.skip_ws()
        pos = self.i
        a = self.match(_INT)
        if not a:
            raise self.error(
                f"expected an index or a range 'a:b' inside [], found {self.describe_here()}",
                hint="e.g. blocks[3] or blocks[0:12]",
            )
        self.skip_ws()
        if self.peek(":"):
            self.i += 1
            self.skip_ws()
            b = self.match(_INT)
            if not b:
                raise self.error(f"expected the end of the range after ':', found {self.describe_here()}")
            start = self.small_int(a.group(), pos, "range start")
            stop = self.small_int(b.group(), b.start(), "range end")
            if stop <= start:
                raise self.error(
                    f"empty range [{start}:{stop}]: the end is exclusive and must be greater than the start",
                    pos,
                    hint=f"e.g. [{start}:{start + 1}]",
                )
            if stop - start > MAX_RANGE:
                raise self.error(f"range [{start}:{stop}] is too long (more than {MAX_RANGE})", pos)
            result: str | _Range = _Range(start, stop, pos)
        else:
            result = str(self.small_int(a.group(), pos, "index"))
        self.expect("]", "']' to close the index")
        return result

    def range_length(self, labels: list[_Label]) -> int:
        length: int | None = None
        first: _Range | None = None
        seen: set[int] = set()
        for lab in labels:
            for r in lab.path.ranges():
                if r.pos in seen:
                    continue
                seen.add(r.pos)
                if length is None:
                    length, first = len(r), r
                elif len(r) != length and first is not None:
                    raise self.error(
                        f"ranges in one entry advance together and must have equal length: "
                        f"[{r.start}:{r.stop}] has {len(r)} steps but [{first.start}:{first.stop}] "
                        f"has {length}",
                        r.pos,
                    )
        return length or 1

    def pair(self, labels: list[_Label]) -> list[tuple[_Label, _Label]]:
        numbered = [lab for lab in labels if lab.number is not None]
        pairs = self.pair_numbered(numbered) + self.pair_unnumbered(
            [lab for lab in labels if lab.number is None]
        )
        return sorted(pairs, key=lambda pair: min(pair[0].pos, pair[1].pos))

    def pair_unnumbered(self, labels: list[_Label]) -> list[tuple[_Label, _Label]]:
        """``{inout}`` labels stand alone; one ``{in}`` and one ``{out}`` make a pair."""
        pairs = [(lab, lab) for lab in labels if lab.kind == "inout"]
        ins = [lab for lab in labels if lab.kind == "in"]
        outs = [lab for lab in labels if lab.kind == "out"]
        if not ins and not outs:
            return pairs
        if len(ins) == 1 and len(outs) == 1:
            return pairs + [self.check_pair(ins[0], outs[0])]
        if len(ins) > 1 or len(outs) > 1:
            extra = sorted(ins if len(ins) > 1 else outs, key=lambda lab: lab.pos)[1]
            raise self.error(
                f"more than one unnumbered {extra.text} in this entry: which {{in}} goes "
                f"with which {{out}} is ambiguous",
                extra.pos,
                hint="number the pairs: {in1}...{out1}, {in2}...{out2}",
            )
        lone = (ins or outs)[0]
        other = "{out}" if lone.kind == "in" else "{in}"
        raise self.error(
            f"label {lone.text} has no matching {other}",
            lone.pos,
            hint=f"add '{other}' where the add-in "
            f"{'reads its input' if other == '{in}' else 'result goes back'}",
        )

    def pair_numbered(self, labels: list[_Label]) -> list[tuple[_Label, _Label]]:
        by_number: dict[int | None, list[_Label]] = {}
        for lab in labels:
            by_number.setdefault(lab.number, []).append(lab)
        kinds = [lab.kind for lab in labels]
        # ZhiJian's tutorial writes "{in1}(fc2){in2}" for in-then-out: accept exactly that shape.
        if kinds.count("in") == 2 and len(kinds) == 2 and len(by_number) == 2:
            first, second = sorted(labels, key=lambda lab: lab.pos)
            return [
                self.check_pair(first, _Label("out", second.number, second.path, second.side, second.pos))
            ]
        pairs = []
        for number, labs in sorted(by_number.items(), key=lambda kv: kv[1][0].pos):
            ks = sorted(lab.kind for lab in labs)
            if ks == ["inout"]:
                pairs.append((labs[0], labs[0]))
            elif ks == ["in", "out"]:
                src = next(lab for lab in labs if lab.kind == "in")
                dst = next(lab for lab in labs if lab.kind == "out")
                pairs.append(self.check_pair(src, dst))
            elif ks == ["in"]:
                raise self.error(
                    f"label {{in{number}}} has no matching {{out{number}}}",
                    labs[0].pos,
                    hint=f"add '{{out{number}}}' where the add-in's result goes back",
                )
            elif ks == ["out"]:
                raise self.error(
                    f"label {{out{number}}} has no matching {{in{number}}}",
                    labs[0].pos,
                    hint=f"add '{{in{number}}}' where the add-in reads its input",
                )
            else:
                dup = sorted(labs, key=lambda lab: lab.pos)[1]
                raise self.error(
                    f"label number {number} is used more than once "
                    f"({', '.join('{' + k + str(number) + '}' for k in ks)})",
                    dup.pos,
                    hint="give each placement its own number",
                )
        return pairs

    def check_pair(self, src: _Label, dst: _Label) -> tuple[_Label, _Label]:
        if dst.pos < src.pos:
            raise self.error(
                f"{dst.text} comes before {src.text}: an add-in must "
                f"read its input before its result goes back",
                dst.pos,
            )
        if src.path.segments == dst.path.segments and src.side == dst.side:
            n = "" if src.number is None else src.number
            raise self.error(
                f"{src.text} and {dst.text} are the same point",
                dst.pos,
                hint=f"use '{{inout{n}}}' for one point",
            )
        return src, dst

    def pattern_entry(self, keyword: str, what: str, example: str) -> list[str]:
        """``trainable(...)`` / ``running_stats(...)``: comma-separated name patterns (ranges expand)."""
        self.i += len(keyword)
        self.expect("(", f"'(' after '{keyword}'", hint=f"write {example}")
        patterns: list[str] = []
        while True:
            self.skip_ws()
            pos = self.i
            path = _Path(self.path_segments(_PATTERN_SEGMENT, what), pos, self.i)
            ranges = path.ranges()
            n = len(ranges[0]) if ranges else 1
            for r in ranges[1:]:
                if len(r) != n:
                    raise self.error("ranges in one pattern must have equal length", r.pos)
            self.reserve(n, pos)
            for step in range(n):
                pattern = path.expand(step)
                self.trainable_spans.setdefault(pattern, pos)
                patterns.append(pattern)
            self.skip_ws()
            if self.peek(","):
                self.i += 1
                continue
            self.expect(")", f"')' to close {keyword}(...)")
            return patterns

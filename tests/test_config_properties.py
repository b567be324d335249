"""Property tests: canonical strings round-trip; random input only ever raises ConfigError."""

import signal

import pytest
from hypothesis import given, strategies as st

from addin_studio import Config, ConfigError, Placement, Point, parse

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
segment = st.one_of(names, st.integers(0, 30).map(str))
paths = st.lists(segment, min_size=1, max_size=4).map(".".join)
sides = st.sampled_from(["pre", "post"])
values = st.one_of(
    st.integers(-1000, 1000),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
    names,
)
settings = st.dictionaries(names, values, max_size=3)


@st.composite
def placements(draw):
    addin, method = draw(names), draw(names)
    source = Point(draw(paths), draw(sides))
    if draw(st.booleans()):
        target = source
    else:
        target = Point(draw(paths), draw(sides))
        if target == source:
            target = Point(source.module, "post" if source.side == "pre" else "pre")
        if target.module == source.module and (source.side, target.side) == ("post", "pre"):
            source, target = target, source  # same module: only pre -> post can be written
    return Placement(addin, method, source, target, draw(settings))


patterns = st.lists(st.one_of(paths, paths.map(lambda p: "*." + p)), max_size=3)
configs = st.builds(Config, st.lists(placements(), max_size=6), patterns)


@pytest.mark.slow  # CI's hypothesis profile draws 2000 examples: 30-50 s (300 locally: a few s)
@given(configs)
def test_canonical_string_round_trips(cfg):
    text = str(cfg)
    again = parse(text)
    assert again == cfg
    assert str(again) == text


@pytest.mark.slow  # CI's hypothesis profile draws 2000 examples: 30-50 s (300 locally: a few s)
@given(st.lists(placements(), min_size=2, max_size=2), st.integers(2, 14))
def test_runs_of_blocks_compress_and_expand(pair, n):
    p = pair[0]
    run = [
        Placement(
            p.addin,
            p.method,
            Point(f"blocks.{i}.attn", p.source.side),
            Point(f"blocks.{i}.attn", p.source.side),
            p.settings,
        )
        for i in range(n)
    ]
    cfg = Config(run)
    assert "[0:%d]" % n in str(cfg)
    assert parse(str(cfg)) == cfg


alphabet = st.sampled_from(
    list("(){}[].:,;-> \n\t=\"'*abcdefinoutr0123456789")
    + ["...", "->", "{in1}", "{out1}", "{inout1}", "(fc1)", "(A.m):"]
)


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout()


@given(st.one_of(st.text(max_size=80), st.lists(alphabet, max_size=40).map("".join)))
def test_random_strings_only_raise_config_error(text):
    # a hang is a failure, not a stuck CI run; the timer counts this process's CPU time (SIGPROF), so a
    # busy machine, which only delays the parse, never fires it
    old = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, 2.0)
    try:
        cfg = parse(text)
    except ConfigError as err:
        assert err.position is None or 0 <= err.position <= len(text)
        assert err.message
    else:
        assert parse(str(cfg)) == cfg
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


# -- compact strings: steps of several placements whose indices advance together (issue 25) ------------
@st.composite
def stepped_configs(draw):
    """Configs made of runs, ``width`` placements per step for ``steps`` steps, indices advancing by one
    in some segments, mixed with single placements; every placement of a run has one header."""
    out: list[Placement] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            out.append(draw(placements()))
            continue
        head = draw(placements())
        width, steps, start = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(0, 3))
        tails = [draw(st.lists(segment, max_size=2)) for _ in range(width)]
        sides = [draw(st.sampled_from(["pre", "post", "across"])) for _ in range(width)]
        for i in range(start, start + steps):
            for tail, side in zip(tails, sides):
                path = ".".join(["layer", str(i)] + tail)
                if side == "across":  # from this block's input to the next block's input
                    src, dst = Point(path, "pre"), Point(".".join(["layer", str(i + 1)] + tail), "pre")
                else:
                    src = dst = Point(path, side)
                out.append(Placement(head.addin, head.method, src, dst, head.settings))
    return Config(out, draw(patterns))


@pytest.mark.slow
@given(stepped_configs())
def test_stepped_runs_round_trip(cfg):
    text = str(cfg)
    again = parse(text)
    assert again == cfg  # the same placements in the same order
    assert str(again) == text
    # every line holds at most MAX_PLAIN placements unless its ranges say how many steps it makes
    assert len([line for line in text.splitlines() if line.startswith("(")]) <= len(cfg.placements)

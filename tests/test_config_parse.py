"""Config strings: ZhiJian's tutorial examples, our extensions, and every mistake as a ConfigError."""

import pytest

from addin_studio import Config, ConfigError, Placement, Point, format_path, parse

PRE, POST = "pre", "post"


def only(cfg):
    assert len(cfg.placements) == 1
    return cfg.placements[0]


# The example strings of ZhiJian's "Customize Pre-trained Models" tutorial, with the points each means.
TUTORIAL = [
    ("(MLPAddin.adapt_input): ...->{inout1}(fc2)->...", "adapt_input", ("fc2", PRE), ("fc2", PRE)),
    ("(MLPAddin.adapt_output): ...->(fc1){inout1}->...", "adapt_output", ("fc1", POST), ("fc1", POST)),
    ("(MLPAddin.adapt_input): ...->(fc2){inout1}->...", "adapt_input", ("fc2", POST), ("fc2", POST)),
    (
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...",
        "adapt_across_input",
        ("fc1", POST),
        ("fc3", PRE),
    ),
    (
        "(MLPAddin.adapt_across_input): ...->{in1}(fc2)->{out1}(fc3)->...",
        "adapt_across_input",
        ("fc2", PRE),
        ("fc3", PRE),
    ),
    (
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{in2}(fc3)->...",
        "adapt_across_input",
        ("fc1", POST),
        ("fc3", PRE),
    ),
    (
        "(MLPAddin.adapt_across_output): ...->{in1}(fc2){in2}->...",
        "adapt_across_output",
        ("fc2", PRE),
        ("fc2", POST),
    ),
    (
        "(MLPAddin.adapt_across_output): ...->(fc1){in1}->(fc2){in2}->...",
        "adapt_across_output",
        ("fc1", POST),
        ("fc2", POST),
    ),
]


@pytest.mark.parametrize("text,method,source,target", TUTORIAL)
def test_tutorial_examples_parse_to_documented_points(text, method, source, target):
    p = only(parse(text))
    assert p == Placement("MLPAddin", method, Point(*source), Point(*target))
    assert p.kind == ("inout" if source == target else "across")


def test_in_in_spelling_is_emitted_as_canonical_out():
    cfg = parse("(MLPAddin.adapt_across_output): ...->{in1}(fc2){in2}->...")
    assert str(cfg) == "(MLPAddin.adapt_across_output): ...->{in1}(fc2){out1}->..."
    assert parse(str(cfg)) == cfg


@pytest.mark.parametrize("text", [t for t, *_ in TUTORIAL])
def test_canonical_form_round_trips(text):
    cfg = parse(text)
    assert parse(str(cfg)) == cfg
    assert str(parse(str(cfg))) == str(cfg)


def test_canonical_strings_of_plain_examples_are_unchanged():
    for text in [
        "(MLPAddin.adapt_input): ...->{inout1}(fc2)->...",
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...",
    ]:
        assert str(parse(text)) == text


def test_whitespace_is_tolerated():
    a = parse("(MLPAddin.adapt_input): ...->{inout1}(fc2)->...")
    b = parse("  ( MLPAddin . adapt_input ) :  ... -> { inout1 } ( fc2 ) -> ...  ")
    assert a == b


def test_both_index_spellings_and_ranges():
    assert parse("(A.m): ...->(blocks[3].attn.qkv){inout1}->...") == parse(
        "(A.m): ...->(blocks.3.attn.qkv){inout1}->..."
    )
    cfg = parse("(A.m): ...->(blocks[0:12].attn.qkv){inout1}->...")
    assert [p.source.module for p in cfg.placements] == [f"blocks.{i}.attn.qkv" for i in range(12)]
    assert str(cfg) == "(A.m): ...->(blocks[0:12].attn.qkv){inout1}->..."


def test_several_ranges_advance_together():
    cfg = parse("(A.m): ...->(blocks[0:3]){in1}->...->{out1}(blocks[1:4].norm)->...")
    assert [(p.source.module, p.target.module) for p in cfg.placements] == [
        ("blocks.0", "blocks.1.norm"),
        ("blocks.1", "blocks.2.norm"),
        ("blocks.2", "blocks.3.norm"),
    ]
    assert parse(str(cfg)) == cfg


def test_ranges_of_different_length_are_an_error():
    text = "(A.m): ...->(blocks[0:3]){in1}->...->{out1}(blocks[1:3])->..."
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert "equal length" in e.value.message
    assert text[e.value.position :].startswith("1:3")


def test_several_entries_by_line_and_comma():
    a = parse("(A.m): ...->{inout1}(fc1)->...\n(B.n): ...->(fc2){inout1}->...")
    b = parse("(A.m): ...->{inout1}(fc1)->..., (B.n): ...->(fc2){inout1}->...")
    assert a == b and len(a) == 2
    assert [p.addin for p in a] == ["A", "B"]


def test_settings_and_trainable_are_part_of_the_string():
    text = (
        '(LoRA.adapt_output, r=8, alpha=16, dropout=0.1, bias=false, mode="a b"): '
        "...->(qkv){inout1}->...\n"
        "trainable(head, blocks[0:2].norm1, *.bias)"
    )
    cfg = parse(text)
    p = only(Config(cfg.placements))
    assert p.settings == {"r": 8, "alpha": 16, "dropout": 0.1, "bias": False, "mode": "a b"}
    assert cfg.trainable == ("head", "blocks.0.norm1", "blocks.1.norm1", "*.bias")
    assert parse(str(cfg)) == cfg
    assert str(cfg).splitlines()[-1] == "trainable(head, blocks[0:2].norm1, *.bias)"


def test_chain_may_continue_on_the_next_line():
    cfg = parse("(A.m): ...->(blocks[0].norm1)->\n   {inout1}(blocks[0].attn.qkv)->...")
    assert only(cfg).target == Point("blocks.0.attn.qkv", "pre")


def test_several_placements_in_one_entry():
    cfg = parse("(A.m): ...->{inout1}(fc1)->(fc2){inout2}->...")
    assert [str(p.target) for p in cfg] == ["fc1:pre", "fc2:post"]


def test_root_sequential_index_paths():
    assert only(parse("(A.m): ...->{inout1}([0])->...")).target == Point("0", "pre")
    assert only(parse("(A.m): ...->{inout1}(0)->...")).target == Point("0", "pre")
    assert format_path("0.fc") == "[0].fc"
    assert str(parse("(A.m): ...->{inout1}(0.fc)->...")) == "(A.m): ...->{inout1}([0].fc)->..."


def test_config_editing_is_immutable():
    cfg = parse("(A.m): ...->{inout1}(fc1)->...")
    p = Placement("B", "n", Point("fc2", "post"), Point("fc2", "post"), {"r": 2})
    bigger = cfg.add(p)
    assert len(cfg) == 1 and len(bigger) == 2
    assert bigger.remove(0) == Config([p])
    assert str(bigger.remove(1)) == str(cfg)
    with pytest.raises(IndexError):
        cfg.remove(3)


def test_point_string_round_trip():
    assert str(Point("blocks.3.attn", "post")) == "blocks.3.attn:post"
    assert Point.from_str("blocks[3].attn:pre") == Point("blocks.3.attn", "pre")
    with pytest.raises(ValueError):
        Point.from_str("fc1:middle")


BAD = [
    # (string, expected text in message, the string at the caret starts with)
    ("(MLPAddin.adapt_input) ...->{inout1}(fc2)->...", "expected ':'", "...->"),
    ("(MLPAddin): ...->{inout1}(fc2)->...", "expected '.' and a method name", "): "),
    ("(MLPAddin.adapt_input): ...->{inout1}->(fc2)->...", "is not next to a module", "{inout1}"),
    ("(MLPAddin.adapt_input): ...->{inot1}(fc2)->...", "bad label", "{inot1}"),
    ("(MLPAddin.adapt_input): ...->(fc1){in1}->...", "has no matching {out1}", "{in1}"),
    ("(MLPAddin.adapt_input): ...->(fc1){out1}->...", "has no matching {in1}", "{out1}"),
    ("(MLPAddin.adapt_input): ...->{out1}(fc1)->(fc2){in1}->...", "comes before", "{out1}"),
    ("(MLPAddin.adapt_input): ...->{in1}(fc1){in1}->...", "used more than once", "{in1}->"),
    ("(MLPAddin.adapt_input): ...->{in1}{out1}(fc1)->...", "same point", "{out1}"),
    ("(MLPAddin.adapt_input): ...->{inout1}(fc2", "expected ')' to close the module path", ""),
    ("(MLPAddin.adapt_input): ...->{inout1}(blocks[1:1])->...", "empty range", "1:1"),
    ("(MLPAddin.adapt_input): ...->{inout1}(blocks[i])->...", "expected an index", "i])"),
    ("(MLPAddin.adapt_input): ...->{inout1}(blocks.1:3)->...", "expected ')'", ":3)"),
    ("(MLPAddin.adapt_input): ...->{inout1}(fc2)->... extra", "unexpected", "extra"),
    ("(MLPAddin.adapt_input, r=): ...->{inout1}(fc2)->...", "expected a value", "): "),
    ("(MLPAddin.adapt_input, r=1, r=2): ...->{inout1}(fc2)->...", "given twice", "r=2"),
    ('(MLPAddin.adapt_input, s="abc): ...', "unterminated string", '"abc'),
    ("(MLPAddin.adapt_input): ...->...", "places no add-in", "(MLPAddin"),
    ("MLPAddin.adapt_input: ...->{inout1}(fc2)", "expected an entry", "MLPAddin"),
    ("trainable head", "expected '(' after 'trainable'", "head"),
    ("(A.m): ...->(fc1){in}->...->{in}(fc3)->(fc3){out}", "more than one unnumbered {in}", "{in}(fc3)"),
    ("(A.m): ...->(fc1){in}->...", "has no matching {out}", "{in}"),
    ("(A.m): ...->{out}(fc1)->...", "has no matching {in}", "{out}"),
    ("(A.m): ...->{out}(fc1)->(fc2){in}->...", "comes before", "{out}"),
    ("(A.m): ...->{in}{out}(fc1)->...", "same point", "{out}"),
]


@pytest.mark.parametrize("text,message,at", BAD)
def test_mistakes_raise_config_error_with_position(text, message, at):
    with pytest.raises(ConfigError) as e:
        parse(text)
    err = e.value
    assert message in err.message
    assert err.position is not None and 0 <= err.position <= len(text)
    assert text[err.position :].startswith(at)
    # the rendered message shows the string with a caret under the position
    lines = str(err).splitlines()
    caret_line = next(i for i, line in enumerate(lines) if line.strip() == "^")
    assert lines[caret_line].index("^") - 2 == err.position
    assert lines[caret_line - 1] == "  " + text


def test_error_in_second_line_names_the_line():
    text = "(A.m): ...->{inout1}(fc1)->...\n(B.n): ...->{inout1}(fc1->..."
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert "line 2:" in str(e.value)
    assert e.value.position > text.index("\n")


def test_hint_for_ranges_outside_brackets():
    with pytest.raises(ConfigError) as e:
        parse("(A.m): ...->{inout1}(blocks.0:3)->...")
    assert e.value.hint == "ranges go in brackets: blocks[0:12]"


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse(None)


UNNUMBERED = [
    ("(MLPAddin.adapt_input): ...->{inout}(fc2)->...", "(MLPAddin.adapt_input): ...->{inout1}(fc2)->..."),
    (
        "(MLPAddin.adapt_across_input): ...->(fc1){in}->...->{out}(fc3)->...",
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...",
    ),
    (
        "(MLPAddin.adapt_across_input): ...->(fc1){ in }->...->{ out }(fc3)->...",
        "(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...",
    ),
]


@pytest.mark.parametrize("text,numbered", UNNUMBERED)
def test_unnumbered_labels_mean_the_same_as_numbered(text, numbered):
    cfg = parse(text)
    assert cfg == parse(numbered)
    assert "{inout1}" in str(cfg) or "{in1}" in str(cfg)  # the canonical string numbers them
    assert parse(str(cfg)) == cfg


def test_unnumbered_inouts_each_place_one_addin_and_mix_with_numbered_pairs():
    cfg = parse("(A.m): ...->{inout}(fc1)->{in1}(fc2)->{inout}(fc3){out1}->...")
    got = [(p.source.module, p.source.side, p.target.module, p.target.side) for p in cfg.placements]
    assert got == [("fc1", "pre", "fc1", "pre"), ("fc2", "pre", "fc3", "post"), ("fc3", "pre", "fc3", "pre")]
    assert parse(str(cfg)) == cfg


def test_empty_and_blank_configs_parse_to_the_empty_config():
    for text in ("", "   ", "\n\t\n"):
        cfg = parse(text)
        assert cfg == Config() and not cfg and str(cfg) == ""

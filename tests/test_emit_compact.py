"""Compact canonical strings (issue 25): repeated blocks are written as ranges, order kept."""

import pytest

from addin_studio import Config, Placement, Point, parse
from addin_studio.config.emit import MAX_PLAIN, entry_spans


def _lora(path: str, side: str = "post", **settings) -> Placement:
    return Placement("LoRA", "adapt_output", Point(path, side), Point(path, side), settings or {"r": 8})


def test_steps_of_several_placements_share_ranges():
    cfg = Config([_lora(f"blocks.{i}.{m}") for i in range(12) for m in ("attn.qkv", "mlp.fc1", "mlp.fc2")])
    assert str(cfg) == (
        "(LoRA.adapt_output, r=8): ...->(blocks[0:12].attn.qkv){inout1}->...->"
        "(blocks[0:12].mlp.fc1){inout2}->...->(blocks[0:12].mlp.fc2){inout3}->..."
    )
    assert parse(str(cfg)) == cfg
    assert entry_spans(cfg.placements) == [(0, 36)]


def test_a_block_that_breaks_the_pattern_gets_its_own_line():
    paths = [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.1.conv1",
        "layer1.1.conv2",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.0.downsample.0",
        "layer2.1.conv1",
        "layer2.1.conv2",
        "fc",
    ]
    cfg = Config([_lora(p) for p in paths])
    assert str(cfg).splitlines() == [
        "(LoRA.adapt_output, r=8): ...->(conv1){inout1}->...",
        "(LoRA.adapt_output, r=8): ...->(layer1[0:2].conv1){inout1}->...->(layer1[0:2].conv2){inout2}->...",
        "(LoRA.adapt_output, r=8): ...->(layer2[0].conv1){inout1}->...->(layer2[0].conv2){inout2}->...->"
        "(layer2[0].downsample[0]){inout3}->...",
        "(LoRA.adapt_output, r=8): ...->(layer2[1].conv1){inout1}->...->(layer2[1].conv2){inout2}->...",
        "(LoRA.adapt_output, r=8): ...->(fc){inout1}->...",
    ]
    assert parse(str(cfg)) == cfg
    assert entry_spans(cfg.placements) == [(0, 1), (1, 5), (5, 8), (8, 10), (10, 11)]


def test_different_settings_or_add_ins_never_share_a_line():
    cfg = Config(
        [
            _lora("blocks.0.qkv", r=8),
            _lora("blocks.1.qkv", r=4),
            Placement(
                "Adapter", "adapt_output", Point("blocks.2.qkv", "post"), Point("blocks.2.qkv", "post")
            ),
        ]
    )
    assert len(str(cfg).splitlines()) == 3
    assert parse(str(cfg)) == cfg


def test_across_placements_in_one_step():
    ps = []
    for i in range(3):
        ps.append(
            Placement(
                "Adapter",
                "adapt_across_output",
                Point(f"blocks.{i}", "post"),
                Point(f"blocks.{i + 1}", "post"),
            )
        )
        ps.append(
            Placement(
                "Adapter",
                "adapt_across_output",
                Point(f"blocks.{i}.attn", "pre"),
                Point(f"blocks.{i}.attn", "post"),
            )
        )
    cfg = Config(ps)
    assert str(cfg) == (
        "(Adapter.adapt_across_output): ...->(blocks[0:3]){in1}->...->(blocks[1:4]){out1}"
        "->...->{in2}(blocks[0:3].attn){out2}->..."
    )
    assert parse(str(cfg)) == cfg


def test_unindexed_placements_keep_a_line_each_and_plain_lines_are_bounded():
    cfg = Config([_lora(p) for p in ("fc1", "fc2", "fc3")])
    assert len(str(cfg).splitlines()) == 3
    many = Config([_lora(f"block.0.m{j}") for j in range(MAX_PLAIN + 3)])
    assert [b - a for a, b in entry_spans(many.placements)] == [MAX_PLAIN, 3]
    assert parse(str(many)) == many


def test_emission_is_deterministic_and_existing_strings_still_parse():
    old = (
        "(LoRA.adapt_output, r=8): ...->(layer1[0].conv1){inout1}->...\n"
        "(LoRA.adapt_output, r=8): ...->(layer1[0].conv2){inout1}->...\n"
        "(LoRA.adapt_output, r=8): ...->(layer1[1].conv1){inout1}->...\n"
        "(LoRA.adapt_output, r=8): ...->(layer1[1].conv2){inout1}->..."
    )
    cfg = parse(old)
    assert (
        str(cfg)
        == str(parse(old))
        == (
            "(LoRA.adapt_output, r=8): ...->(layer1[0:2].conv1){inout1}"
            "->...->(layer1[0:2].conv2){inout2}->..."
        )
    )
    assert parse(str(cfg)) == cfg


def test_lora_all_on_resnet18_is_at_most_13_lines():
    timm = pytest.importorskip("timm")
    from addin_studio import strategies

    cfg = strategies.lora_all(timm.create_model("resnet18", pretrained=False))
    text = str(cfg)
    assert len(cfg.placements) == 21
    assert len(text.splitlines()) == 9  # was 21 lines, one per conv
    assert "(layer1[0:2].conv1){inout1}->...->(layer1[0:2].conv2){inout2}" in text
    assert parse(text) == cfg

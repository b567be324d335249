"""The headless main job end to end, its add-in and its report."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

import addin_studio as studio
from addin_studio.app.demo import DEMO_CONFIG, DigitCNN, run_demo
from addin_studio.app.report import graph_svg, plot_loss, write_report


@pytest.mark.slow  # the whole demo end to end: about a minute on 2 CPU cores
def test_demo_end_to_end(tmp_path):
    lines = []
    result = run_demo(tmp_path, progress=False, log=lines.append)
    text = "\n".join(lines)
    assert result.after["acc1"] >= 90.0
    assert result.base_acc1 >= 95.0
    assert result.before["acc1"] < 30.0  # a new, untrained head
    assert result.head_only is not None and result.after["acc1"] > result.head_only["acc1"]
    assert 0 < result.trainable < 0.1 * result.total  # a small share of the parameters trains
    # add-ins: conv1 136+144, conv2 264+288, fc1 1032+1152 = 3016; head 650; base 79,370
    assert (result.trainable, result.total) == (3016 + 650, 79370 + 3016)
    assert str(studio.parse(DEMO_CONFIG)) == DEMO_CONFIG  # printed as written: canonical
    assert "\n" + DEMO_CONFIG + "\n" in text and "Trainable/total parameters:" in text
    assert f"Acc@1 {result.after['acc1']:.2f}%" in text
    for key, name in (
        ("adapters", "adapters.safetensors"),
        ("loss_plot", "loss.png"),
        ("report", "report.html"),
    ):
        assert result.files[key] == tmp_path / name and (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with safe_open(str(tmp_path / "adapters.safetensors"), "pt") as f:
        assert studio.parse(f.metadata()["config"]) == studio.parse(DEMO_CONFIG)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert 'data-point="conv1:post" data-placement="#1"' in html
    assert 'data-point="fc1:post" data-placement="#3"' in html
    assert len(result.history["loss"]) == 15 * 45


def test_demo_adapters_start_as_identity_and_train():
    torch.manual_seed(0)
    model = DigitCNN(10)
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    att = studio.attach(model, DEMO_CONFIG, example_input=x)
    assert torch.equal(model(x), before)
    assert len(att.addins) == 3
    shapes = {k: tuple(m.down.weight.shape) for k, m in att.addins.items()}
    assert shapes == {"Adapter_conv1": (8, 16), "Adapter_conv2": (8, 32), "Adapter_fc1": (8, 128)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable and "fc1.weight" not in trainable
    att.detach()


def test_demo_adapter_is_the_residual_1x1_conv_bottleneck():
    # the demo once had its own add-in: x + up(relu(down(x))) with 1x1 convs on maps; the built-in
    # Adapter computes exactly that, from the same random draws
    torch.manual_seed(0)
    model = DigitCNN(10)
    x = torch.randn(4, 1, 8, 8)
    att = studio.attach(model, DEMO_CONFIG, example_input=x)
    for m in att.addins.values():
        torch.nn.init.normal_(m.up.weight)
    feature = torch.randn(4, 16, 8, 8)
    a = att.addins["Adapter_conv1"]
    conv = torch.nn.functional.conv2d
    h = torch.relu(conv(feature, a.down.weight[:, :, None, None], a.down.bias))
    want = feature + conv(h, a.up.weight[:, :, None, None], a.up.bias)
    torch.testing.assert_close(a.adapt_output(model.conv1, (x,), feature), want)
    torch.manual_seed(1)
    old_down = torch.nn.Conv2d(16, 8, 1)
    torch.manual_seed(1)
    new = studio.get_addin("Adapter")(
        studio.PointInfo(model.conv1, "post", (4, 16, 8, 8), "conv1"), bottleneck=8
    )
    assert torch.equal(new.down.weight, old_down.weight.flatten(1))
    assert torch.equal(new.down.bias, old_down.bias)
    att.detach()


def test_graph_svg_marks_inout_and_across_points():
    model = DigitCNN()
    x = torch.randn(2, 1, 8, 8)
    cfg = studio.parse(
        "(Bottleneck.adapt_output): ...->(conv2){inout1}->...\n"
        "(Bottleneck.adapt_across_output): ...->{in1}(fc1)->...->(fc2){out1}->..."
    )
    svg = graph_svg(studio.trace(model, x), cfg)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'data-point="conv2:post" data-placement="#1"' in svg
    assert 'data-point="fc1:pre" data-placement="#2 in"' in svg
    assert 'data-point="fc2:post" data-placement="#2 out"' in svg
    assert len(re.findall(r"<path d=\"M \d", svg)) == 1  # one arc, for the across placement
    order = [m for m in re.findall(r'<g data-path="([^"]+)"', svg)]
    assert order == ["conv1", "conv2", "pool", "flatten", "fc1", "fc2", "head"]


def test_report_and_plot(tmp_path):
    png = plot_loss(
        {"loss": [2.0 - 0.1 * i for i in range(20)], "train_loss": [1.5, 0.6], "val_acc1": [50.0, 80.0]},
        tmp_path / "p" / "loss.png",
    )
    assert png.read_bytes()[:4] == b"\x89PNG"
    page = write_report(
        tmp_path / "r.html",
        title="T <1>",
        config="trainable(head)",
        loss_png=png,
        results={"Acc@1 (%)": 91.234},
        parameters="table",
    )
    html = page.read_text()
    assert "<title>T &lt;1&gt;</title>" in html and "91.23" in html
    assert '<pre data-role="config">trainable(head)</pre>' in html

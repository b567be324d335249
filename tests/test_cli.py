"""The addin-studio command: argument errors, train on a small model, lab's command line."""
from __future__ import annotations

import os
import sys

import pytest
from safetensors import safe_open

from addin_studio.cli import build_parser, main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required"),
    (["fly"], "invalid choice: 'fly'"),
    (["train", "--config", "x"], "the following arguments are required: --model"),
    (["train", "--model", "resnet18", "--config", "x"], "expected timm:NAME or torchvision:NAME"),
    (["train", "--model", "timm:resnet81", "--config", "x"], "unknown timm model 'resnet81'; did you mean"),
    (["train", "--model", "torchvision:resnet81", "--config", "x"], "unknown torchvision model 'resnet81'"),
    (["train", "--model", "timm:resnet18", "--config", "(Bad"], "--config is not a valid config string"),
    (["train", "--model", "timm:resnet18", "--config", "x", "--epochs", "0"], "expected a number >= 1, got 0"),
    (["train", "--model", "timm:resnet18", "--config", "x", "--lr", "abc"], "expected a number, got 'abc'"),
    (["train", "--model", "timm:resnet18", "--config", "x", "--data", "cifar"], "invalid choice: 'cifar'"),
    (["train", "--model", "timm:resnet18", "--config", "x", "--weights", "/no/such.pt"], "no such file"),
    (["demo", "--epochs", "-1"], "expected a number >= 1, got -1"),
    (["lab", "--notebook", "/no/such.ipynb"], "no notebook at /no/such.ipynb"),
])
def test_bad_arguments_exit_2_naming_the_mistake(capsys, argv, message):
    assert message in _error(capsys, argv)


def test_config_that_does_not_fit_the_model(capsys):
    err = _error(capsys, ["train", "--model", "timm:resnet18", "--no-progress",
                          "--config", "(Bottleneck.adapt_output): ...->(layer9){inout1}->..."])
    assert "--config does not fit timm:resnet18" in err and "did you mean 'layer4'?" in err


def test_train_writes_adapters_plot_and_report(tmp_path, capsys):
    code = main(["train", "--model", "timm:resnet18", "--image-size", "16", "--max-steps", "2",
                 "--no-progress", "--out", str(tmp_path),
                 "--config", "(Bottleneck.adapt_output, dim=4): ...->(layer4){inout1}->..."])
    out = capsys.readouterr().out
    assert code == 0
    assert "(Bottleneck.adapt_output, dim=4): ...->(layer4){inout1}->...\ntrainable(fc)" in out
    assert "Trainable/total parameters:" in out and "Acc@1 " in out
    for name in ("adapters.safetensors", "loss.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    with safe_open(str(tmp_path / "adapters.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("layer4" in k for k in keys)


def test_lab_prints_its_command(tmp_path, capsys):
    nb = tmp_path / "q.ipynb"
    nb.write_text("{}")
    assert main(["lab", "--notebook", str(nb), "--print-command"]) == 0
    assert capsys.readouterr().out.strip() == f"{sys.executable} -m jupyter lab {nb}"


def test_lab_runs_jupyter(monkeypatch, tmp_path):
    nb = tmp_path / "q.ipynb"
    nb.write_text("{}")
    calls = []
    monkeypatch.setattr("addin_studio.cli.subprocess.call", lambda cmd: calls.append(cmd) or 0)
    assert main(["lab", "--notebook", str(nb)]) == 0
    assert calls == [[sys.executable, "-m", "jupyter", "lab", str(nb)]]


def test_help_lists_the_commands():
    text = build_parser().format_help()
    assert "demo" in text and "train" in text and "lab" in text


@pytest.mark.slow  # the full demo run (minutes on a loaded CPU), like its twin in test_demo.py
def test_demo_command_exits_0_and_writes_its_files(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-progress", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "after adapting:  Acc@1 " in out and "head only" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters.safetensors", "checkpoints", "loss.png",
                                                          "report.html"]

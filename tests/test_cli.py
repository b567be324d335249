"""The addin-studio command: argument errors, train on a small model, lab's command line."""

from __future__ import annotations

import os
import sys

import pytest
from safetensors import safe_open

from addin_studio.app.cli import build_parser, main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--config", "x"], "the following arguments are required: --model"),
        (
            ["train", "--model", "resnet18", "--config", "x"],
            "expected timm:NAME, torchvision:NAME or transformers",
        ),
        (
            ["train", "--model", "timm:resnet81", "--config", "x"],
            "unknown timm model 'resnet81'; did you mean",
        ),
        (
            ["train", "--model", "torchvision:resnet81", "--config", "x"],
            "unknown torchvision model 'resnet81'",
        ),
        (["train", "--model", "timm:resnet18", "--config", "(Bad"], "--config is not a valid config string"),
        (
            ["train", "--model", "timm:resnet18", "--config", "x", "--epochs", "0"],
            "expected a number >= 1, got 0",
        ),
        (
            ["train", "--model", "timm:resnet18", "--config", "x", "--lr", "abc"],
            "expected a number, got 'abc'",
        ),
        (
            ["train", "--model", "timm:resnet18", "--config", "x", "--data", "cifar"],
            "expected digits or imagefolder:DIR, got 'cifar'",
        ),
        (
            ["train", "--model", "timm:resnet18", "--config", "x", "--data", "imagefolder:/no/such"],
            "--data imagefolder:/no/such: no such folder",
        ),
        (["train", "--model", "timm:resnet18", "--config", ""], "--config places no add-in"),
        (["train", "--model", "timm:resnet18", "--config", "  \n "], "--config places no add-in"),
        (
            ["train", "--model", "timm:resnet18", "--config", "x", "--", "--port", "1"],
            "only 'lab' passes options",
        ),
        (["train", "--model", "timm:resnet18", "--config", "x", "--weights", "/no/such.pt"], "no such file"),
        (["eval", "--model", "timm:resnet18"], "one of the arguments --adapters --out is required"),
        (
            ["eval", "--model", "timm:resnet18", "--adapters", "/no/such.safetensors"],
            "--adapters: no such file '/no/such.safetensors'",
        ),
        (
            ["eval", "--model", "timm:resnet18", "--out", "/no/such/run"],
            "--out '/no/such/run': no adapters.safetensors there",
        ),
        (["eval", "--model", "timm:resnet81", "--adapters", __file__], "unknown timm model 'resnet81'"),
        (["eval", "--model", "timm:resnet18", "--adapters", "a", "--out", "b"], "not allowed with argument"),
        (["demo", "--epochs", "-1"], "expected a number >= 1, got -1"),
        (["lab", "--notebook", "/no/such.ipynb"], "no notebook at /no/such.ipynb"),
    ],
)
def test_bad_arguments_exit_2_naming_the_mistake(capsys, argv, message):
    assert message in _error(capsys, argv)


def test_config_that_does_not_fit_the_model(capsys):
    err = _error(
        capsys,
        [
            "train",
            "--model",
            "timm:resnet18",
            "--no-progress",
            "--config",
            "(Adapter.adapt_output): ...->(layer9){inout1}->...",
        ],
    )
    assert "--config does not fit timm:resnet18" in err and "did you mean 'layer4'?" in err


def test_train_writes_adapters_plot_and_report(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "timm:resnet18",
            "--image-size",
            "16",
            "--max-steps",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path),
            "--config",
            "(Adapter.adapt_output, bottleneck=4): ...->(layer4){inout}->...",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "(Adapter.adapt_output, bottleneck=4): ...->(layer4){inout1}->...\ntrainable(fc)" in out
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
    root = ["--allow-root"] if os.geteuid() == 0 else []
    lab_command = [sys.executable, "-m", "jupyter", "lab", str(nb)] + root
    assert capsys.readouterr().out.strip() == " ".join(lab_command)


def test_lab_runs_jupyter(monkeypatch, tmp_path):
    nb = tmp_path / "q.ipynb"
    nb.write_text("{}")
    calls = []
    monkeypatch.setattr("addin_studio.app.cli.subprocess.call", lambda cmd: calls.append(cmd) or 0)
    assert main(["lab", "--notebook", str(nb)]) == 0
    root = ["--allow-root"] if os.geteuid() == 0 else []
    assert calls == [[sys.executable, "-m", "jupyter", "lab", str(nb)] + root]


def test_help_lists_the_commands():
    text = build_parser().format_help()
    assert "demo" in text and "train" in text and "eval" in text and "lab" in text


@pytest.mark.slow  # runs the whole demo (pre-train, freeze, adapt): about a minute on 2 CPU cores
def test_demo_command_exits_0_and_writes_its_files(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-progress", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "after adapting:  Acc@1 " in out and "head only" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapters.safetensors",
        "checkpoints",
        "loss.png",
        "report.html",
    ]


def test_version_and_fast_help_without_torch():
    import subprocess

    from addin_studio import __version__

    code = (
        "import sys\nfrom addin_studio.app.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "try:\n    main(['eval', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().endswith("TORCH False")  # --help answers before torch is imported
    assert "(default: 64)" in run.stdout and "(default: adamw)" in run.stdout  # defaults are shown
    assert "--adapters FILE | --out DIR" in run.stdout  # eval's help
    run = subprocess.run(
        [sys.executable, "-m", "addin_studio.app.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == f"addin-studio {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        [
            "train",
            "--model",
            "timm:resnet18",
            "--config",
            "(Adapter.adapt_output): ...->(layer4){inout}->...",
        ],
    ],
)
def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path, capsys, command):
    afile = tmp_path / "report.txt"
    afile.write_text("keep me")
    err = _error(capsys, command + ["--out", str(afile)])
    assert f"--out '{afile}' is a file, not a folder" in err and "Traceback" not in err
    err = _error(capsys, command + ["--out", str(afile / "sub")])
    assert "cannot be written to" in err
    assert afile.read_text() == "keep me"
    assert "Acc@1" not in capsys.readouterr().out  # nothing was trained


def test_demo_says_why_it_exits_1_with_min_acc(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    import addin_studio.app.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: SimpleNamespace(after={"acc1": 42.5}))
    assert main(["demo", "--out", str(tmp_path), "--min-acc", "90"]) == 1
    assert "reached Acc@1 42.50%, below --min-acc 90%" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path)]) == 0  # no hidden threshold


def test_lab_passes_jupyter_options_through(tmp_path, capsys):
    nb = tmp_path / "q.ipynb"
    nb.write_text("{}")
    assert (
        main(["lab", "--notebook", str(nb), "--print-command", "--", "--port", "8899", "--allow-root"]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{sys.executable} -m jupyter lab {nb} --port 8899 --allow-root"
    assert "running as root" not in captured.err  # the user passed --allow-root already


def test_train_on_an_image_folder_from_pretrained_timm_weights(tmp_path, capsys, make_image_folder):
    import timm
    import torch
    from safetensors.torch import save_file

    root = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "owl"), per_class=6, size=20)
    torch.manual_seed(0)
    published = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(weights))
    code = main(
        [
            "train",
            "--model",
            "timm:resnet18",
            "--pretrained",
            "--weights",
            str(weights),
            "--data",
            f"imagefolder:{root}",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--no-progress",
            "--config",
            "(LoRA.adapt_output, r=2): ...->(layer4[1].conv2){inout}->...",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Image folder" in out and "classes cat, dog, owl" in out
    assert "training and 3 validation images" in out  # a seeded 20 % split of 18 images, stratified
    assert "trainable(fc)" in out and "Acc@1 " in out


def _metrics_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("Acc@1 ")]
    assert len(lines) == 1, out
    return lines[0]


def _train_then_eval(capsys, shared: list[str], train_only: list[str], out_dir) -> tuple[str, str]:
    """Run ``train --out out_dir`` then ``eval --out out_dir`` with the same shared options; return the
    two 'Acc@1 ...  Acc@5 ...  loss ...' lines."""
    assert main(["train", *shared, *train_only, "--no-progress", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    trained, config = _metrics_line(out), out.split("Config string:\n")[1].split("\n\n")[0]
    assert main(["eval", *shared, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Adapters {out_dir / 'adapters.safetensors'}:\n{config}\n\n" in out  # the file's config
    return trained, _metrics_line(out)


def test_eval_reproduces_what_train_printed_on_the_digits(tmp_path, capsys):
    # a LayerNorm model with a random (seeded) base: eval rebuilds the same base, loads the final epoch's
    # adapter file and evaluates the same validation split, so all three numbers are equal
    shared = ["--model", "timm:vit_tiny_patch16_224", "--image-size", "32", "--seed", "3"]
    trained, evaluated = _train_then_eval(
        capsys,
        shared,
        ["--max-steps", "3", "--config", "(LoRA.adapt_output, r=2): ...->(blocks[0].attn.qkv){inout}->..."],
        tmp_path,
    )
    assert evaluated == trained


def test_eval_reproduces_what_train_printed_on_an_image_folder_with_batchnorm(
    tmp_path, capsys, make_image_folder
):
    root = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "owl"), per_class=6, size=20)
    shared = [
        "--model",
        "timm:resnet18",
        "--data",
        f"imagefolder:{root}",
        "--image-size",
        "32",
        "--batch-size",
        "4",
    ]
    trained, evaluated = _train_then_eval(
        capsys,
        shared,
        ["--epochs", "2", "--config", "(LoRA.adapt_output, r=2): ...->(layer4[1].conv2){inout}->..."],
        tmp_path / "run",
    )
    assert evaluated == trained


def test_eval_refuses_an_adapter_file_of_another_model(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--model",
                "timm:resnet18",
                "--image-size",
                "16",
                "--max-steps",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path),
                "--config",
                "(Adapter.adapt_output, bottleneck=4): ...->(layer4){inout}->...",
            ]
        )
        == 0
    )
    capsys.readouterr()
    err = _error(capsys, ["eval", "--model", "timm:resnet34", "--image-size", "16", "--out", str(tmp_path)])
    assert f"--out: {tmp_path / 'adapters.safetensors'} does not load into timm:resnet34:" in err
    assert "does not fit this ResNet" in err and "Traceback" not in err

"""The ``addin-studio`` command: ``demo``, ``train``, ``eval`` and ``lab``.

Only the standard library is imported until a command runs, so ``--help`` and ``--version`` answer at
once. Every argument is checked before any work starts: a mistake exits with status 2 and one clear
line (argparse's ``usage:`` and ``error:``), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .. import __version__

QUICKSTART = Path("notebooks") / "01_quickstart.ipynb"
MODEL_SOURCES = ("timm", "torchvision", "transformers")


# -- argument types ---------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def _percent(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {value}")
    return value


def _model_spec(text: str) -> tuple[str, str]:
    source, sep, name = text.partition(":")
    if not sep or source not in MODEL_SOURCES or not name:
        raise argparse.ArgumentTypeError(
            f"expected timm:NAME, torchvision:NAME or transformers:NAME_OR_DIR (e.g. timm:resnet18), "
            f"got {text!r}"
        )
    return source, name


def _data_spec(text: str) -> tuple[str, str | None]:
    if text == "digits":
        return "digits", None
    kind, sep, where = text.partition(":")
    if kind == "imagefolder" and sep and where:
        return "imagefolder", where
    raise argparse.ArgumentTypeError(f"expected digits or imagefolder:DIR, got {text!r}")


# -- the parser -------------------------------------------------------------------------------------
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, keeps the descriptions' line breaks."""


def _add_model_and_data_options(p: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``eval`` share: with equal values they build the same base model and the
    same validation split."""
    p.add_argument(
        "--model",
        required=True,
        type=_model_spec,
        metavar="timm:NAME|torchvision:NAME|transformers:NAME_OR_DIR",
        help="the base model",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start from the library's published weights (downloaded once, then cached); "
        "with --weights, from that local copy through the library's loading",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="base weights: a .safetensors or torch state-dict file",
    )
    p.add_argument(
        "--data",
        default="digits",
        type=_data_spec,
        metavar="digits|imagefolder:DIR",
        help="the embedded digits, or a folder with one sub-folder per class (a val/ split "
        "is used when present, otherwise --val-fraction is held out)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="held-out share of an image folder without val/"
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch size")
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="input size (default: 32 for digits, the model's own for an image folder)",
    )
    p.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed (of the data split, and of the base model's random weights)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="addin-studio",
        formatter_class=_Formatter,
        description="Customize pre-trained PyTorch models with add-ins placed by config strings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,eval,lab}")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="pre-train a small CNN, adapt it with add-ins, write a report",
        description="Offline demo on scikit-learn's bundled digits (about a minute on a CPU): pre-train a "
        "small CNN on digits 0-4,\nfreeze it, adapt it to all ten digits with adapters, write "
        "loss.png, adapters.safetensors and report.html.",
    )
    demo.add_argument("--out", default="addin-studio-demo", metavar="DIR", help="output folder")
    demo.add_argument("--epochs", type=_positive_int, default=15, help="adaptation epochs")
    demo.add_argument("--base-epochs", type=_positive_int, default=6, help="pre-training epochs")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--no-baseline", action="store_true", help="skip the head-only comparison")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument(
        "--min-acc",
        type=_percent,
        default=None,
        metavar="PERCENT",
        help="exit with status 1 (and say so) when the adapted Acc@1 is below this",
    )

    train = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        help="train add-ins on a timm/torchvision/transformers model with any config string",
        description="Build a model (random, --pretrained, or --weights FILE), attach --config, train on "
        "--data, evaluate.\nThe classifier is resized to the data's classes and trains with "
        "the add-ins (unless --freeze-head).\nExample:\n  addin-studio train --model "
        "timm:resnet18 --pretrained --data imagefolder:DIR \\\n"
        "    --config '(LoRA.adapt_output, r=8): ...->(layer4[1].conv2){inout}->...'",
    )
    _add_model_and_data_options(train)
    train.add_argument(
        "--config", required=True, help="the config string (ZhiJian syntax, one entry per line)"
    )
    train.add_argument("--epochs", type=_positive_int, default=1, help="training epochs")
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate")
    train.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "sgd"], help="optimizer")
    train.add_argument(
        "--scheduler", default="cosine", choices=["cosine", "step", "constant"], help="learning-rate schedule"
    )
    train.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many steps")
    train.add_argument(
        "--freeze-head", action="store_true", help="do not keep the (new) classifier trainable"
    )
    train.add_argument(
        "--out", default=None, metavar="DIR", help="write adapters, loss.png and report.html here"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument(
        "--strategy",
        default="ddp",
        choices=["ddp", "fsdp"],
        help="under torchrun: DDP, or FSDP2 sharding of the attached model",
    )

    evaluate = sub.add_parser(
        "eval",
        formatter_class=_Formatter,
        help="evaluate an adapter file that 'train' wrote, on the same validation split",
        description="Build the model as 'train' did (same --model, --pretrained/--weights, --seed), load "
        "the adapter file,\nand print Acc@1, Acc@5 and loss on the validation split 'train' "
        "used (same --data,\n--val-fraction, --seed, --image-size, --batch-size). For the run "
        "folder's adapters.safetensors\n(the final epoch) this is the line 'train' printed; "
        "--adapters DIR/checkpoints/best.safetensors\ngives the best epoch's validation "
        "numbers.\nExample:\n  addin-studio eval --model timm:resnet18 --pretrained "
        "--data imagefolder:DIR --out run1",
    )
    _add_model_and_data_options(evaluate)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--adapters", default=None, metavar="FILE", help="an adapter file (att.save / 'train' --out wrote it)"
    )
    source.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="the folder 'train --out DIR' wrote: its adapters.safetensors",
    )

    lab = sub.add_parser(
        "lab",
        formatter_class=_Formatter,
        help="open JupyterLab on the quickstart notebook",
        description="Open JupyterLab on a notebook. Options after -- go to Jupyter unchanged, e.g.\n"
        "  addin-studio lab -- --port 8899 --no-browser\nAs root, --allow-root is added "
        "(Jupyter refuses to run as root without it).",
    )
    lab.add_argument(
        "--notebook",
        default=None,
        metavar="PATH",
        help=f"notebook to open (default: {QUICKSTART} of the project)",
    )
    lab.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``addin-studio`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if passthrough and args.command != "lab":
        parser.error(f"only 'lab' passes options after '--' on (to Jupyter); got {' '.join(passthrough)}")
    if args.command == "demo":
        return _demo(parser, args)
    if args.command == "train":
        return _train(parser, args)
    if args.command == "eval":
        return _eval(parser, args)
    return _lab(parser, args, passthrough)


def _writable_dir(parser: argparse.ArgumentParser, option: str, value: str) -> Path:
    """Create the output folder now (before any work) and prove it can be written to."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        parser.error(f"{option} {value!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        parser.error(f"{option} {value!r} cannot be written to: {exc.strerror or exc}")
    return path


# -- demo ------------------------------------------------------------------------------------------
def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    out = _writable_dir(parser, "--out", args.out)
    from .demo import run_demo

    result = run_demo(
        out,
        base_epochs=args.base_epochs,
        epochs=args.epochs,
        seed=args.seed,
        baseline=not args.no_baseline,
        progress=not args.no_progress,
    )
    if args.min_acc is not None and result.after["acc1"] < args.min_acc:
        print(
            f"addin-studio demo: the adapted model reached Acc@1 {result.after['acc1']:.2f}%, below "
            f"--min-acc {args.min_acc:g}% (more --epochs usually help): exit status 1",
            file=sys.stderr,
        )
        return 1
    return 0


# -- train and eval: the same model and data --------------------------------------------------------
def _check_model_and_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The shared options' checks that need no torch: a mistake exits 2 before any work."""
    if args.weights is not None and not Path(args.weights).is_file():
        parser.error(f"--weights: no such file {args.weights!r}")
    data_kind, data_dir = args.data
    if data_kind == "imagefolder" and not Path(data_dir).is_dir():
        parser.error(f"--data imagefolder:{data_dir}: no such folder")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")


def _check_model_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from ..sources.models import ModelLoadError, check_model_name

    try:
        check_model_name(*args.model)
    except ModelLoadError as exc:
        parser.error(str(exc))


def _build(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """``(named model, train loader, val loader)`` from the shared options. ``train`` and ``eval`` build
    through here, so equal options give the same base weights (random ones are drawn after
    ``torch.manual_seed(--seed)``) and the same validation split, transforms and batches."""
    import torch

    from ..sources.models import ModelLoadError, create_model

    source, name = args.model
    data_kind, data_dir = args.data
    if data_kind == "imagefolder":
        from ..sources.image_folder import image_folder_classes

        try:
            classes = image_folder_classes(data_dir)
        except ValueError as exc:
            parser.error(f"--data imagefolder:{data_dir}: {exc}")
    else:
        classes = [str(c) for c in range(10)]
    torch.manual_seed(args.seed)  # a random base (no --pretrained/--weights) is the same in train and eval
    try:
        named = create_model(
            f"{source}:{name}",
            len(classes),
            pretrained=args.pretrained,
            weights=args.weights,
            image_size=args.image_size,
        )
    except ModelLoadError as exc:
        parser.error(str(exc))
    if data_kind == "imagefolder":
        from ..sources.image_folder import image_folder_loaders

        size = None if named.fixed_size else args.image_size  # None: the model's own input size
        try:
            data = image_folder_loaders(
                data_dir,
                train_transform=named.transforms(True, size),
                val_transform=named.transforms(False, size),
                batch_size=args.batch_size,
                val_fraction=args.val_fraction,
                seed=args.seed,
            )
        except ValueError as exc:
            parser.error(f"--data imagefolder:{data_dir}: {exc}")
        print(
            f"Image folder {data_dir}: {data.num_train} training and {data.num_val} validation images, "
            f"classes {', '.join(data.classes)}"
        )
        return named, data.train, data.val
    from ..sources.data import digits_loaders

    size = named.input_size[-1] if named.fixed_size else (args.image_size or 32)
    train, val = digits_loaders(batch_size=args.batch_size, image_size=size, channels=3, seed=args.seed)
    return named, train, val


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    source, name = args.model
    _check_model_and_data(parser, args)
    out = _writable_dir(parser, "--out", args.out) if args.out else None

    import addin_studio as studio

    _check_model_name(parser, args)
    try:
        cfg = studio.parse(args.config)
    except studio.ConfigError as exc:
        parser.error(f"--config is not a valid config string:\n{exc}")
    if not cfg.placements and not cfg.trainable:
        parser.error(
            "--config places no add-in and keeps nothing trainable; write a placement such as "
            "'(LoRA.adapt_output, r=8): ...->(fc){inout}->...' (or trainable(...) to train "
            "base weights only)"
        )

    named, train, val = _build(parser, args)
    if named.head is not None and not args.freeze_head:
        cfg = cfg.with_trainable(tuple(cfg.trainable) + (named.head,))
    example = next(iter(val if val is not None else train))[0][:2]
    from ..examples import MLPAddin

    try:
        att = studio.attach(named.model, cfg, addins={"MLPAddin": MLPAddin}, example_input=example)
    except studio.ConfigError as exc:
        parser.error(f"--config does not fit {source}:{name}:\n{exc}")
    return _fit(parser, args, att, train, val, out, f"{source}:{name}")


def _print_result(result: dict) -> None:
    print(f"Acc@1 {result['acc1']:.2f}%  Acc@5 {result['acc5']:.2f}%  loss {result['loss']:.4f}")


def _eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    source, name = args.model
    _check_model_and_data(parser, args)
    if args.adapters is not None:
        option, adapters = "--adapters", Path(args.adapters)
        if not adapters.is_file():
            parser.error(f"--adapters: no such file {args.adapters!r}")
    else:
        option, adapters = "--out", Path(args.out) / "adapters.safetensors"
        if not adapters.is_file():
            parser.error(
                f"--out {args.out!r}: no adapters.safetensors there (the folder 'train --out' "
                f"wrote holds one; or pass --adapters FILE)"
            )

    import addin_studio as studio

    _check_model_name(parser, args)
    named, train, val = _build(parser, args)
    example = next(iter(val))[0][:2]
    from ..examples import MLPAddin
    from ..train import Trainer

    try:
        att = studio.load(named.model, adapters, addins={"MLPAddin": MLPAddin}, example_input=example)
    except ValueError as exc:  # ConfigError is a ValueError: a foreign or damaged file, another model
        parser.error(f"{option}: {adapters} does not load into {source}:{name}:\n{exc}")
    print(f"Adapters {adapters}:\n{att.config}\n")
    try:
        trainer = Trainer(
            att.model, val, val, device=args.device, amp=args.amp, progress=False, attachment=att
        )
    except ValueError as exc:
        parser.error(str(exc))
    _print_result(trainer.test())
    return 0


def _fit(
    parser: argparse.ArgumentParser, args: argparse.Namespace, att, train, val, out: Path | None, title: str
) -> int:
    import addin_studio as studio
    from ..scale.distributed import init_distributed, is_main_process
    from ..train import Trainer

    init_distributed()  # joins the process group when launched by torchrun; no-op otherwise
    model = att.model
    print("Config string:\n" + str(att.config) + "\n")
    print(studio.trainable_table(model).splitlines()[-1])
    try:
        trainer = Trainer(
            model,
            train,
            val,
            epochs=args.epochs,
            lr=args.lr,
            optimizer=args.optimizer,
            scheduler=args.scheduler,
            max_steps=args.max_steps,
            amp=args.amp,
            device=args.device,
            seed=args.seed,
            progress=not args.no_progress,
            attachment=att,
            checkpoint_dir=(out / "checkpoints") if out else None,
            strategy=args.strategy,
        )
    except ValueError as exc:
        parser.error(str(exc))
    history = trainer.fit()
    result = trainer.test()
    _print_result(result)
    adapters = out / "adapters.safetensors" if out is not None else None
    if adapters is not None:  # every rank calls: rank 0 writes (an FSDP2 model's shards are gathered first)
        att.save(adapters)
    if out is not None and is_main_process():  # under torchrun, rank 0 writes the files
        from .report import plot_loss, write_report

        files = [adapters, plot_loss(history, out / "loss.png")]
        files.append(
            write_report(
                out / "report.html",
                title=f"Addin Studio: {title}",
                config=att.config,
                graph=att.graph,
                loss_png=files[1],
                parameters=studio.trainable_table(model),
                results={"Acc@1 (%)": result["acc1"], "Acc@5 (%)": result["acc5"], "Loss": result["loss"]},
            )
        )
        for f in files:
            print(f"wrote {f}")
    return 0


# -- lab -------------------------------------------------------------------------------------------
def _lab(parser: argparse.ArgumentParser, args: argparse.Namespace, jupyter_args: list[str]) -> int:
    if args.notebook is not None:
        notebook = Path(args.notebook)
    else:
        notebook = Path(__file__).resolve().parent.parent / QUICKSTART
        if not notebook.is_file():
            notebook = Path.cwd() / QUICKSTART
    if not notebook.is_file():
        parser.error(f"no notebook at {notebook}; pass --notebook PATH")
    extra = list(jupyter_args)
    if _is_root() and "--allow-root" not in extra:
        print(
            "addin-studio lab: running as root, so --allow-root is passed to Jupyter (it refuses root "
            "otherwise); prefer a normal user account where you can",
            file=sys.stderr,
        )
        extra.append("--allow-root")
    command = [sys.executable, "-m", "jupyter", "lab", str(notebook), *extra]
    if args.print_command:
        print(" ".join(command))
        return 0
    if shutil.which("jupyter") is None:
        try:
            import jupyterlab  # noqa: F401
        except ImportError:
            parser.error("JupyterLab is not installed: pip install jupyterlab")
    return subprocess.call(command)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``addin-studio`` command: ``demo``, ``train`` and ``lab``."""
from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from torch import nn

QUICKSTART = Path("notebooks") / "01_quickstart.ipynb"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _model_spec(text: str) -> tuple[str, str]:
    source, sep, name = text.partition(":")
    if not sep or source not in ("timm", "torchvision") or not name:
        raise argparse.ArgumentTypeError(
            f"expected timm:NAME or torchvision:NAME (e.g. timm:resnet18), got {text!r}")
    return source, name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="addin-studio",
        description="Customize pre-trained PyTorch models with add-ins placed by config strings.")
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,lab}")
    sub.required = True

    demo = sub.add_parser("demo", help="pre-train a small CNN, adapt it with add-ins, write a report",
                          description="Offline demo on scikit-learn's bundled digits (about a minute on a CPU).")
    demo.add_argument("--out", default="addin-studio-demo", metavar="DIR",
                      help="folder for loss.png, adapters.safetensors, report.html (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=15, help="adaptation epochs (default: %(default)s)")
    demo.add_argument("--base-epochs", type=_positive_int, default=6,
                      help="pre-training epochs (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-baseline", action="store_true", help="skip the head-only comparison")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    train = sub.add_parser("train", help="train add-ins on a timm/torchvision model with any config string",
                           description="Builds the model with random weights (nothing is downloaded; "
                                       "use --weights for a local file), attaches --config, trains.")
    train.add_argument("--model", required=True, type=_model_spec, metavar="timm:NAME|torchvision:NAME")
    train.add_argument("--config", required=True, help="the config string (ZhiJian syntax, one entry per line)")
    train.add_argument("--data", default="digits", choices=["digits"], help="dataset (default: %(default)s)")
    train.add_argument("--epochs", type=_positive_int, default=1)
    train.add_argument("--lr", type=_positive_float, default=1e-3)
    train.add_argument("--batch-size", type=_positive_int, default=64)
    train.add_argument("--image-size", type=_positive_int, default=32,
                       help="digits are upsampled to this size, 3 channels (default: %(default)s)")
    train.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "sgd"])
    train.add_argument("--scheduler", default="cosine", choices=["cosine", "step", "constant"])
    train.add_argument("--max-steps", type=_positive_int, default=None)
    train.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU)")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument("--weights", default=None, metavar="FILE",
                       help="base weights to load first (.safetensors, or a torch state dict)")
    train.add_argument("--freeze-head", action="store_true",
                       help="do not keep the (new, 10-class) classifier trainable")
    train.add_argument("--out", default=None, metavar="DIR", help="write adapters, loss.png and report.html here")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"],
                       help="under torchrun: DDP, or FSDP2 sharding of the attached model (default: %(default)s)")

    lab = sub.add_parser("lab", help="open JupyterLab on the quickstart notebook")
    lab.add_argument("--notebook", default=None, metavar="PATH",
                     help=f"notebook to open (default: {QUICKSTART} of the project)")
    lab.add_argument("--print-command", action="store_true", help="print the command instead of running it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``addin-studio`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        result = run_demo(args.out, base_epochs=args.base_epochs, epochs=args.epochs, seed=args.seed,
                          baseline=not args.no_baseline, progress=not args.no_progress)
        return 0 if result.after["acc1"] >= 90.0 else 1
    if args.command == "train":
        return _train(parser, args)
    return _lab(parser, args)


# ---------------------------------------------------------------------------------------- train
def _create_model(parser: argparse.ArgumentParser, source: str, name: str, num_classes: int,
                  image_size: int) -> tuple[nn.Module, str | None]:
    """The model with random weights, and the path of its classifier (or None when unknown)."""
    _check_model_name(parser, source, name)
    if source == "timm":
        import timm

        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
        except TypeError:  # most ConvNets take any input size and no img_size argument
            model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
        return model, head if isinstance(head, str) else None
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, image_size=image_size)
    except (TypeError, ValueError):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    return model, (linears[-1] if linears else None)


def _check_model_name(parser: argparse.ArgumentParser, source: str, name: str) -> None:
    if source == "timm":
        import timm

        known = timm.list_models()
    else:
        import torchvision

        known = torchvision.models.list_models()
    if name not in known:
        parser.error(f"unknown {source} model {name!r}{_did_you_mean(name, known)}")


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _load_weights(model: nn.Module, path: str) -> None:
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    print(f"loaded {path}: {len(state) - len(unexpected)} tensors ({len(missing)} missing, "
          f"{len(unexpected)} unexpected — a new classifier is expected to be missing)")


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import addin_studio as studio
    from .data import digits_loaders
    from .demo import Bottleneck
    from .examples import MLPAddin
    from .distributed import init_distributed, is_main_process
    from .train import Trainer, save_adapters

    init_distributed()  # joins the process group when launched by torchrun; no-op otherwise

    if args.weights is not None and not Path(args.weights).is_file():
        parser.error(f"--weights: no such file {args.weights!r}")
    source, name = args.model
    _check_model_name(parser, source, name)
    try:
        cfg = studio.parse(args.config)
    except studio.ConfigError as exc:
        parser.error(f"--config is not a valid config string:\n{exc}")
    model, head = _create_model(parser, source, name, 10, args.image_size)
    if args.weights:
        _load_weights(model, args.weights)
    train, val = digits_loaders(batch_size=args.batch_size, image_size=args.image_size, channels=3,
                                seed=args.seed)
    if head is not None and not args.freeze_head:
        cfg = cfg.with_trainable(tuple(cfg.trainable) + (head,))
    example = next(iter(val))[0][:2]
    try:
        att = studio.attach(model, cfg, addins={"Bottleneck": Bottleneck, "MLPAddin": MLPAddin},
                            example_input=example)
    except studio.ConfigError as exc:
        parser.error(f"--config does not fit {source}:{name}:\n{exc}")
    print("Config string:\n" + str(att.config) + "\n")
    print(studio.trainable_table(model).splitlines()[-1])
    out = Path(args.out) if args.out else None
    try:
        trainer = Trainer(model, train, val, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                          scheduler=args.scheduler, max_steps=args.max_steps, amp=args.amp, device=args.device,
                          seed=args.seed, progress=not args.no_progress, attachment=att,
                          checkpoint_dir=(out / "checkpoints") if out else None, strategy=args.strategy)
    except ValueError as exc:
        parser.error(str(exc))
    history = trainer.fit()
    result = trainer.test()
    print(f"Acc@1 {result['acc1']:.2f}%  Acc@5 {result['acc5']:.2f}%  loss {result['loss']:.4f}")
    adapters = out / "adapters.safetensors" if out is not None else None
    if adapters is not None and trainer.strategy == "fsdp" and trainer.distributed:
        from .fsdp import save_adapters as save_sharded

        save_sharded(att, adapters)  # gathers the shards: every rank takes part, rank 0 writes
    if out is not None and is_main_process():  # under torchrun, rank 0 writes the files
        from .report import plot_loss, write_report

        if not (trainer.strategy == "fsdp" and trainer.distributed):
            save_adapters(att, adapters)
        files = [adapters, plot_loss(history, out / "loss.png")]
        files.append(write_report(out / "report.html", title=f"Addin Studio: {source}:{name}", config=att.config,
                                  graph=att.graph, loss_png=files[1], parameters=studio.trainable_table(model),
                                  results={"Acc@1 (%)": result["acc1"], "Acc@5 (%)": result["acc5"],
                                           "Loss": result["loss"]}))
        for f in files:
            print(f"wrote {f}")
    return 0


# ---------------------------------------------------------------------------------------- lab
def _lab(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.notebook is not None:
        notebook = Path(args.notebook)
    else:
        notebook = Path(__file__).resolve().parent.parent / QUICKSTART
        if not notebook.is_file():
            notebook = Path.cwd() / QUICKSTART
    if not notebook.is_file():
        parser.error(f"no notebook at {notebook}; pass --notebook PATH")
    command = [sys.executable, "-m", "jupyter", "lab", str(notebook)]
    if args.print_command:
        print(" ".join(command))
        return 0
    if shutil.which("jupyter") is None:
        try:
            import jupyterlab  # noqa: F401
        except ImportError:
            parser.error("JupyterLab is not installed: pip install jupyterlab")
    return subprocess.call(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

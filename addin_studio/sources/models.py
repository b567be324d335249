"""Build a model by name from timm, torchvision or transformers — random or pre-trained — for a task.

``create_model("timm:resnet18", num_classes=10, pretrained=True)`` loads the published weights the way
the library itself does (timm's ``create_model``, torchvision's weights enums, transformers'
``from_pretrained``; each downloads once and caches), gives the model a new classifier for the task, and
says which transforms its inputs need. Offline, a clear :class:`ModelLoadError` explains what to do.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

SOURCES = ("timm", "torchvision", "transformers")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelLoadError(ValueError):
    """A model or its weights could not be created or loaded (the message says why and what to do)."""


@dataclass
class NamedModel:
    """A model built by :func:`create_model`, with what the training data must look like.

    Attributes:
        model: The model.
        source: ``"timm"``, ``"torchvision"`` or ``"transformers"``.
        name: The model name in that source.
        head: The path of the classifier module (kept trainable by the CLI), ``None`` when unknown.
        input_size: ``(channels, height, width)`` the model expects.
        mean: The per-channel mean the inputs are normalized with.
        std: The per-channel standard deviation the inputs are normalized with.
        fixed_size: ``True`` when the model only accepts ``input_size`` (e.g. a transformers ViT).
    """

    model: nn.Module
    source: str
    name: str
    head: str | None  # path of the classifier module (kept trainable by the CLI), None when unknown
    input_size: tuple[int, int, int]  # (channels, height, width) the model expects
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    fixed_size: bool = False  # True when the model only accepts input_size (e.g. a transformers ViT)
    _transform_factory: Callable[[bool, int | None], Callable] | None = None

    def transforms(self, train: bool = False, image_size: int | None = None) -> Callable:
        """The PIL-image -> tensor transform for this model (training adds light augmentation).

        Args:
            train: Whether to add the training augmentation.
            image_size: The side of the square output image (``None``: the model's input size).

        Returns:
            A callable from a PIL image to a normalized tensor.
        """
        if self._transform_factory is not None:
            return self._transform_factory(train, image_size)
        return default_transforms(image_size or self.input_size[-1], self.mean, self.std, train)


def parse_model_spec(text: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; ValueError naming the mistake otherwise."""
    source, sep, name = text.partition(":")
    if not sep or source not in SOURCES or not name:
        raise ValueError(
            f"expected timm:NAME, torchvision:NAME or transformers:NAME_OR_DIR "
            f"(e.g. timm:resnet18), got {text!r}"
        )
    return source, name


def check_model_name(source: str, name: str) -> None:
    """ValueError with close names when timm/torchvision do not know ``name`` (hub names are not
    checked offline for transformers)."""
    if source == "timm":
        import timm

        known = timm.list_models()
    elif source == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
    else:
        return
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelLoadError(f"unknown {source} model {name!r}{hint}")


def create_model(
    spec: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    image_size: int | None = None,
) -> NamedModel:
    """Build ``spec`` with a ``num_classes`` classifier.

    Args:
        spec: ``timm:NAME``, ``torchvision:NAME`` or ``transformers:NAME_OR_DIR``.
        num_classes: The number of classes of the new classifier.
        pretrained: With ``True`` the library's published weights are loaded (timm, torchvision:
            ImageNet; transformers: the hub repository or a local ``save_pretrained`` folder) and the
            classifier is replaced.
        weights: A local file: with ``pretrained`` it goes through the library's own loading (timm's
            ``pretrained_cfg_overlay=dict(file=...)``, which adapts the classifier and input layers);
            without, it is a state dict (``.safetensors`` or a torch file, read with
            ``weights_only=True``) loaded into the random model, skipping tensors whose shape does not
            fit (the new classifier).
        image_size: The input image size, for timm and torchvision models that take one.

    Returns:
        The :class:`NamedModel`: the model with its classifier's path, input size and transforms.

    Raises:
        ValueError: ``spec`` is not of one of the forms above.
        ModelLoadError: The model name is unknown, the weights file is missing, or the model or its
            weights could not be created or loaded (the message says why and what to do).
    """
    source, name = parse_model_spec(spec)
    if weights is not None and not Path(weights).is_file():
        raise ModelLoadError(f"no weights file at {weights}")
    check_model_name(source, name)
    build = {"timm": _timm, "torchvision": _torchvision, "transformers": _transformers}[source]
    named = build(name, num_classes, pretrained, weights, image_size)
    if weights is not None and not (pretrained and source == "timm"):
        load_weights(named.model, weights)
    return named


# -- timm ---------------------------------------------------------------------------------------------
def _timm(name: str, num_classes: int, pretrained: bool, weights: Any, image_size: int | None) -> NamedModel:
    import timm
    from timm.data import create_transform, resolve_data_config

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if pretrained and weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        try:
            model = timm.create_model(
                name, pretrained=pretrained, **({"img_size": image_size} if image_size else {}), **kwargs
            )
        except TypeError:  # most ConvNets take any input size and no img_size argument
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm raises many kinds when a download fails
        if not pretrained:
            raise
        raise _offline_error("timm", name, exc) from None
    cfg = resolve_data_config({}, model=model)
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")

    def transforms(train: bool, size: int | None) -> Callable:
        c = dict(cfg)
        if size:
            c["input_size"] = (c["input_size"][0], size, size)
            c["crop_pct"] = 1.0
        return create_transform(**c, is_training=train)

    return NamedModel(
        model,
        "timm",
        name,
        head if isinstance(head, str) else None,
        tuple(cfg["input_size"]),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        _transform_factory=transforms,
    )


# -- torchvision --------------------------------------------------------------------------------------
def _torchvision(
    name: str, num_classes: int, pretrained: bool, weights: Any, image_size: int | None
) -> NamedModel:
    import torchvision

    if not pretrained:
        try:
            model = torchvision.models.get_model(
                name,
                weights=None,
                num_classes=num_classes,
                **({"image_size": image_size} if image_size else {}),
            )
        except (TypeError, ValueError):
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return NamedModel(model, "torchvision", name, _last_linear(model), (3, 224, 224))
    enum = torchvision.models.get_model_weights(name).DEFAULT
    try:
        if weights is not None:  # the user's copy of the published file, loaded the way torchvision does
            model = torchvision.models.get_model(name, weights=None)
            model.load_state_dict(_read_state(weights))
        else:
            model = torchvision.models.get_model(name, weights=enum)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, hash mismatch...
        raise _offline_error("torchvision", name, exc) from None
    head = replace_classifier(model, num_classes)
    preset = enum.transforms()
    size = int(preset.crop_size[0]) if getattr(preset, "crop_size", None) else 224

    def transforms(train: bool, size_override: int | None) -> Callable:
        if size_override:
            return default_transforms(size_override, tuple(preset.mean), tuple(preset.std), train)
        if not train:
            return preset
        from torchvision import transforms as T

        return T.Compose([T.RandomHorizontalFlip(), preset])

    return NamedModel(
        model,
        "torchvision",
        name,
        head,
        (3, size, size),
        tuple(preset.mean),
        tuple(preset.std),
        _transform_factory=transforms,
    )


# -- transformers -------------------------------------------------------------------------------------
def _transformers(
    name: str, num_classes: int, pretrained: bool, weights: Any, image_size: int | None
) -> NamedModel:
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise ModelLoadError(
            "transformers models need the transformers package: pip install transformers"
        ) from None
    try:
        if pretrained:
            model = AutoModelForImageClassification.from_pretrained(
                name, num_labels=num_classes, ignore_mismatched_sizes=True
            )
        else:
            config = AutoConfig.from_pretrained(name, num_labels=num_classes)
            model = AutoModelForImageClassification.from_config(config)
    except Exception as exc:  # noqa: BLE001 - OSError, hub errors, ValueError for unknown configs
        raise _offline_error("transformers", name, exc) from None
    config = model.config
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else int(size[0])
    channels = int(getattr(config, "num_channels", 3))
    mean, std = (0.5,) * channels, (0.5,) * channels
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(name)
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    except Exception:  # noqa: BLE001 - no processor saved: the config's size and 0.5/0.5 normalization
        pass
    head = next(
        (
            path
            for path, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.out_features == num_classes
        ),
        None,
    )
    return NamedModel(model, "transformers", name, head, (channels, size, size), mean, std, fixed_size=True)


# -- helpers ------------------------------------------------------------------------------------------
def _offline_error(source: str, name: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load the pre-trained weights of {source}:{name} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). Without a network connection they can only come "
        f"from the library's cache: download them once while online, or pass a local file with --weights "
        f"(python: weights=...)"
    )


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = str(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def load_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load a state dict file into ``model``, skipping tensors whose shape differs (a new classifier).

    Returns ``(skipped, missing)`` parameter names. Raises ModelLoadError when nothing fits.
    """
    state = _read_state(path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    skipped = sorted(k for k in state if k not in fitting)
    if not fitting:
        raise ModelLoadError(
            f"none of the {len(state)} tensors in {path} fit this "
            f"{type(model).__name__} (first: {next(iter(state), None)!r})"
        )
    model.load_state_dict(fitting, strict=False)
    missing = sorted(k for k in own if k not in fitting)
    return skipped, missing


def _last_linear(model: nn.Module) -> str | None:
    linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Swap the model's last ``nn.Linear`` for a new one with ``num_classes`` outputs; returns its path."""
    path = _last_linear(model)
    if path is None:
        raise ModelLoadError(f"{type(model).__name__} has no nn.Linear classifier to resize")
    old = model.get_submodule(path)
    if old.out_features != num_classes:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        model.set_submodule(path, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return path


def default_transforms(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, train: bool = False
) -> Callable:
    """Resize + centre-crop to ``size`` (random-resized crop and flip when training), tensor, normalize."""
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(size), T.CenterCrop(size)]
    return T.Compose(steps + [T.Lambda(_rgb), T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


def _rgb(image: Any) -> Any:
    return image.convert("RGB") if hasattr(image, "convert") and image.mode != "RGB" else image


__all__ = [
    "ModelLoadError",
    "NamedModel",
    "SOURCES",
    "create_model",
    "default_transforms",
    "load_weights",
    "parse_model_spec",
    "replace_classifier",
]

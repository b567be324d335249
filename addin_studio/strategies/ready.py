"""Ready-made strategies: LoRA-all (GIFt), LoRA on PEFT-style target modules, BitFit, head-only, full."""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

from torch import nn

from ..addins.lora import WEIGHT_METHOD, fused_expert_params, hook_problem, is_hf_conv1d
from ..addins.peft_patterns import pattern_value
from ..config import Config
from ..graph import ModuleGraph, module_aliases, parent_reads, trace
from .capabilities import Claim, ModuleInfo, ParamCap, Strategy, placement

LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _lora_settings(r: int, alpha: float | None, dropout: float) -> dict:
    settings: dict = {"r": r}
    if alpha is not None:
        settings["alpha"] = alpha
    if dropout:
        settings["dropout"] = dropout
    return settings


def _is_lora_layer(info: ModuleInfo, embeddings: bool = False) -> bool:
    """A layer LoRA-all adapts: Linear, Conv1d/2d/3d, transformers Conv1D, MultiheadAttention (as a
    whole: its out_proj is reached through it), and with ``embeddings`` nn.Embedding."""
    m = info.module
    if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear) and isinstance(
        info.parent, nn.MultiheadAttention
    ):
        return False  # claimed with its MultiheadAttention
    return (
        isinstance(m, LORA_LAYERS + (nn.MultiheadAttention,))
        or is_hf_conv1d(m)
        or (embeddings and isinstance(m, nn.Embedding))
    )


def _never_run(model: nn.Module, example_input: Any, graph: ModuleGraph | None) -> set[str]:
    """Paths of modules that did not run in the traced forward pass (empty without a trace)."""
    if graph is None and example_input is not None:
        graph = trace(model, example_input)
    if graph is None or not graph.traced:
        return set()
    return {n.path for n in graph.nodes if n.order is None}


def warn_untraced(
    cfg: Config, model: nn.Module, strategy: str, example_input: Any, graph: ModuleGraph | None
) -> None:
    """Warn at once, without a traced forward pass, about hooks that may never run.

    When neither ``example_input`` nor a traced ``graph`` was given and an output hook the strategy chose
    sits on a layer whose parent's forward reads its weight itself
    (:func:`~addin_studio.graph.parent_reads`): such a layer may never run as a module, attach would then
    refuse the hook, and only a trace tells which layers need ``adapt_weight``.

    Args:
        cfg: The config the strategy built.
        model: The model it was built for.
        strategy: The strategy's name, for the message (``lora_all``).
        example_input: The strategy's ``example_input`` argument.
        graph: The strategy's ``graph`` argument.

    Warns:
        UserWarning: Naming the first such layer, how many more, and ``example_input=``.
    """
    if example_input is not None or (graph is not None and graph.traced):
        return
    hooks = [p.target.module for p in cfg.placements if p.method == "adapt_output"]
    readers = parent_reads(model, hooks)
    if not readers:
        return
    first, why = next(iter(readers.items()))
    more = f" (and {len(readers) - 1} more layer(s) like it)" if len(readers) > 1 else ""
    warnings.warn(
        f"strategies.{strategy} got no example_input= (nor a traced graph=): it chose the output "
        f"hook for '{first}'{more}, but {why}, so that layer may never run as a module and attach "
        f"would refuse the hook. Pass example_input= (one input for a traced forward pass) so "
        f"that the strategy gives the layers that never run adapt_weight",
        UserWarning,
        stacklevel=3,
    )


def _lora_action(
    settings: dict | Callable[[str], dict],
    never_run: set[str],
    train: Callable[[ModuleInfo], Iterable[str]] | None = None,
) -> Callable[[ModuleInfo], Claim]:
    """Place LoRA on a layer: the output hook where it is right, else ``adapt_weight`` — on a layer that
    never runs as a module (its parent reads its weight), a layer whose own forward transforms its input
    or weight (timm's Conv2dSame, ScaledStdConv2d) and nn.MultiheadAttention (in_proj and out_proj)."""
    settings_of = settings if callable(settings) else (lambda path: settings)

    def action(info: ModuleInfo) -> Claim:
        m = info.module
        settings = settings_of(info.path)
        weight_settings = {k: v for k, v in settings.items() if k != "dropout"}  # no input to drop out
        kept = tuple(train(info)) if train else ()
        if isinstance(m, nn.MultiheadAttention):
            if m._qkv_same_embed_dim:
                found = [placement(info.path, "LoRA", WEIGHT_METHOD, **weight_settings)]
            else:
                found = [
                    placement(info.path, "LoRA", WEIGHT_METHOD, param=n, **weight_settings)
                    for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight")
                ]
            found.append(placement(f"{info.path}.out_proj", "LoRA", WEIGHT_METHOD, **weight_settings))
            return Claim(tuple(found), kept)
        if info.path in never_run or hook_problem(m):
            return Claim((placement(info.path, "LoRA", WEIGHT_METHOD, **weight_settings),), kept)
        return Claim((placement(info.path, "LoRA", "adapt_output", **settings),), kept)

    return action


def _expert_action(
    settings: dict | Callable[[str], dict], names: Callable[[ModuleInfo], Sequence[str]]
) -> Callable[[ModuleInfo], Claim]:
    """Place ``LoRA.adapt_weight`` with ``param=`` on each of a module's parameters ``names(info)`` (fused
    expert weights, PEFT's ``target_parameters``): one update per expert on a 3-D one. ``settings`` may be
    a function of ``"<module>.<param>"`` (PEFT's key for its rank/alpha patterns); no dropout (PEFT's
    ParamWrapper refuses it: a weight update has no input to drop out)."""
    settings_of = settings if callable(settings) else (lambda key: settings)

    def action(info: ModuleInfo) -> Claim:
        found = []
        for name in names(info):
            weight_settings = {k: v for k, v in settings_of(f"{info.path}.{name}").items() if k != "dropout"}
            found.append(placement(info.path, "LoRA", WEIGHT_METHOD, param=name, **weight_settings))
        return Claim(tuple(found))

    return action


def lora_all_strategy(
    r: int = 3,
    alpha: float | None = None,
    dropout: float = 0.0,
    train_bias: bool = False,
    never_run: Iterable[str] = (),
    experts: bool = True,
) -> Strategy:
    """GIFt's ``LoRAAllStrategy``: LoRA on every Linear and Conv1d/2d/3d (and transformers Conv1D,
    MultiheadAttention, and with ``experts`` the fused 3-D expert weights of mixture-of-experts modules);
    everything else frozen.

    Args:
        r: The LoRA rank.
        alpha: The LoRA alpha; ``None`` means ``r`` (scale 1).
        dropout: The LoRA dropout probability.
        train_bias: Whether the adapted layers' biases stay trainable.
        never_run: Paths that get ``adapt_weight`` (layers that never run as modules).
        experts: Whether mixture-of-experts modules' fused expert weights get LoRA (one update per expert).

    Returns:
        The :class:`Strategy`; call it on a model to get a :class:`Config`.
    """
    train = (
        (lambda info: [f"{info.path}.bias"] if getattr(info.module, "bias", None) is not None else [])
        if train_bias
        else None
    )
    settings = _lora_settings(r, alpha, dropout)
    strategy = Strategy(name="lora_all").register_module_cap(
        _is_lora_layer, _lora_action(settings, set(never_run), train)
    )
    if experts:
        strategy.register_module_cap(
            lambda info: bool(fused_expert_params(info.module)),
            _expert_action(settings, lambda info: fused_expert_params(info.module)),
        )
    return strategy


def lora_all(
    model: nn.Module,
    r: int = 3,
    alpha: float | None = None,
    dropout: float = 0.0,
    train_bias: bool = False,
    example_input: Any = None,
    graph: ModuleGraph | None = None,
    experts: bool = True,
) -> Config:
    """LoRA of rank ``r`` on every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of ``model`` (GIFt's LoRA-all).

    Also on transformers ``Conv1D`` (GPT-2), ``nn.MultiheadAttention`` (torchvision's ViT) and the fused
    expert weights of mixture-of-experts modules (transformers 5's Mixtral, Qwen2-MoE, ...: the 3-D
    parameters whose first dimension is the module's ``num_experts``), each with one update per expert
    (``LoRA.adapt_weight`` with ``param=``, as PEFT's ``target_parameters``). All other parameters are
    frozen. On torchvision's resnet18 with ``r=3`` this trains 75,063 parameters.

    Each layer gets the output hook (``adapt_output``) where it is right and ``adapt_weight`` where it
    cannot be: MultiheadAttention, conv subclasses with their own ``forward`` and — given
    ``example_input`` (or a traced ``graph``) — layers that never run as modules because their parent
    reads their weight (BEiT's, EVA-02's and torchvision Swin's ``qkv``). Without an example input
    such layers get the hook, and attach's first forward pass reports them: the strategy warns at once
    (naming ``example_input=``) where a layer's parent reads its weight in its own ``forward``.

    Args:
        model: The model to adapt.
        r: The LoRA rank.
        alpha: The LoRA alpha; defaults to ``r`` (scale 1, as GIFt).
        dropout: The LoRA dropout probability.
        train_bias: Whether the adapted layers' biases stay trainable (frozen by default).
        example_input: An input for one traced forward pass, to find layers that never run as modules.
        graph: A :class:`ModuleGraph` traced with an example input, instead of ``example_input``.
        experts: Whether fused expert weights get LoRA (default); ``False`` leaves them frozen.

    Returns:
        The :class:`Config`; attach it with :func:`attach`.
    """
    cfg = lora_all_strategy(r, alpha, dropout, train_bias, _never_run(model, example_input, graph), experts)(
        model
    )
    warn_untraced(cfg, model, "lora_all", example_input, graph)
    return cfg


def _target_check(targets: str | Sequence[str]):
    if isinstance(targets, str):
        try:
            regex = re.compile(targets)
        except re.error as exc:
            raise ValueError(f"targets {targets!r} is not a valid regular expression: {exc}") from None
        return lambda path: regex.fullmatch(path) is not None
    names = list(targets)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError(
            f"targets must be a regex string or a non-empty list of module names, got {targets!r}"
        )
    return lambda path: any(path == t or path.endswith("." + t) for t in names)


def lora(
    model: nn.Module,
    targets: str | Sequence[str] | None = None,
    r: int = 8,
    alpha: float | None = 16,
    dropout: float = 0.0,
    trainable: Iterable[str] = (),
    example_input: Any = None,
    graph: ModuleGraph | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    target_parameters: Sequence[str] | None = None,
    **variant: Any,
) -> Config:
    r"""LoRA on the modules PEFT's ``target_modules`` would pick, and on the parameters its
    ``target_parameters`` would pick.

    Linear, Conv, transformers Conv1D, nn.Embedding and nn.MultiheadAttention layers can be targets;
    the method is chosen as in :func:`lora_all`. A target parameter gets ``LoRA.adapt_weight`` with
    ``param=``: a 2-D one one update, a 3-D stack of experts (Mixtral's ``experts.gate_up_proj``) one
    update per expert.

    Args:
        model: The model to adapt.
        targets: A list of names matched against the end of each module path (``"qkv"`` matches
            ``blocks.0.attn.qkv``), or one string read as a regular expression that must match a whole
            path. May be left out (or empty) when ``target_parameters`` is given.
        r: The LoRA rank.
        alpha: The LoRA alpha (``None``: ``r``).
        dropout: The LoRA dropout probability.
        trainable: Extra parameter patterns kept trainable (e.g. ``["head"]``).
        example_input: An input for one traced forward pass, as for :func:`lora_all`.
        graph: A :class:`ModuleGraph` traced with an example input, instead of ``example_input``.
        rank_pattern: Gives some layers another rank (PEFT's name and matching: the first key ``k``
            matching ``(.*\.)?(k)$``; the key subset of ``addins/peft_patterns.py``).
        alpha_pattern: Gives some layers another alpha, matched as ``rank_pattern``.
        target_parameters: Parameter names matched, as PEFT does, against the end of each parameter's
            path (``"experts.gate_up_proj"`` matches ``model.layers.0.mlp.experts.gate_up_proj``); each must
            be 2-D or 3-D (experts). Patterns match ``<module>.<param>`` for these, as in PEFT.
        **variant: LoRA settings for every layer: ``rslora=True``, ``dora=True``, ``bias=True``,
            ``init="pissa"`` ...

    Returns:
        The :class:`Config`; attach it with :func:`attach`.

    Raises:
        ValueError: A target matches no such layer (naming it), ``targets`` is not a valid regular
            expression or an empty list, a target parameter matches no parameter, is not 2-D or 3-D or
            belongs to a module ``targets`` also adapts, or a pattern key or value is bad.
    """
    params = _parameter_targets(target_parameters)
    if params and (targets is None or not isinstance(targets, str) and not list(targets)):
        targets = None  # parameters only, as PEFT's target_modules=[] with target_parameters
    matches = _target_check(targets) if targets is not None else (lambda path: False)
    base = {**_lora_settings(r, alpha, dropout), **variant}

    def settings_for(path: str) -> dict:
        settings = dict(base)
        settings["r"] = pattern_value(rank_pattern, path, r, "strategies.lora", "rank_pattern")
        found = pattern_value(alpha_pattern, path, None, "strategies.lora", "alpha_pattern")
        if found is not None:
            settings["alpha"] = found
        return settings

    for name, patterns in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        pattern_value(patterns, "", None, "strategies.lora", name)  # not a mapping: fails here
        for key, value in (patterns or {}).items():  # every key and value checked, by name
            pattern_value({key: value}, "", None, "strategies.lora", name)

    def named_params(info: ModuleInfo) -> list[str]:
        found = [
            n
            for n, _ in info.module.named_parameters(recurse=False)
            if any(f"{info.path}.{n}" == t or f"{info.path}.{n}".endswith("." + t) for t in params)
        ]
        for n in found:
            if info.module._parameters[n].dim() not in (2, 3):
                raise ValueError(
                    f"target parameter '{info.path}.{n}' has shape "
                    f"{tuple(info.module._parameters[n].shape)}; LoRA adapts a 2-D parameter or "
                    f"a 3-D stack of expert matrices"
                )
        if found and matches(info.path) and _is_lora_layer(info, embeddings=True):
            raise ValueError(
                f"'{info.path}' is both a target module and holds target parameter "
                f"'{info.path}.{found[0]}'; adapt it one way (PEFT refuses both too)"
            )
        return found

    strategy = Strategy(name="lora")
    if params:
        strategy.register_module_cap(
            lambda info: bool(named_params(info)), _expert_action(settings_for, named_params)
        )
    strategy.register_module_cap(
        lambda info: matches(info.path) and _is_lora_layer(info, embeddings=True),
        _lora_action(settings_for, _never_run(model, example_input, graph)),
    )
    cfg = strategy(model)
    warn_untraced(cfg, model, "lora", example_input, graph)
    for t in params:
        if not any(
            f"{p.target.module}.{p.settings['param']}" == t
            or f"{p.target.module}.{p.settings['param']}".endswith("." + t)
            for p in cfg.placements
            if "param" in p.settings
        ):
            raise ValueError(
                f"target parameter {t!r} matches no parameter of {type(model).__name__} "
                f"(PEFT matches the end of '<module>.<param>', e.g. 'experts.gate_up_proj')"
            )
    if targets is None:
        return cfg.with_trainable(list(cfg.trainable) + list(trainable))
    kinds = LORA_LAYERS + (nn.Embedding, nn.MultiheadAttention)
    if not cfg.placements:
        layers = [n for n, m in model.named_modules() if isinstance(m, kinds) or is_hf_conv1d(m)][:6]
        raise ValueError(
            f"targets {targets!r} match no Linear/Conv layer of {type(model).__name__} (nor "
            f"an Embedding or MultiheadAttention; its layers include: {', '.join(layers)})"
            + "".join(_alias_note(model, t) for t in ([] if isinstance(targets, str) else targets))[:1000]
        )
    if not isinstance(targets, str):
        hit = {p.target.module for p in cfg.placements if matches(p.target.module)}
        for t in targets:
            if not any(h == t or h.endswith("." + t) for h in hit):
                raise ValueError(
                    f"target {t!r} matches no Linear/Conv layer of {type(model).__name__} "
                    f"(nor an Embedding or MultiheadAttention){_alias_note(model, t)}"
                )
    return cfg.with_trainable(list(cfg.trainable) + list(trainable))


def _alias_note(model: nn.Module, target: str) -> str:
    """Why ``target`` matched nothing when it names another name of a shared module ('' otherwise)."""
    shared = [(a, c) for a, c in module_aliases(model).items() if a == target or a.endswith("." + target)]
    if not shared:
        return ""
    return (
        f"; '{shared[0][0]}' is another name of '{shared[0][1]}', a module shared by several parents: "
        f"targets match canonical names (the first named_modules() gives), as PEFT's do"
    )


def _parameter_targets(target_parameters: Sequence[str] | None) -> list[str]:
    """The checked ``target_parameters`` list (empty for None)."""
    if target_parameters is None:
        return []
    names = [] if isinstance(target_parameters, str) else list(target_parameters)
    if isinstance(target_parameters, str) or not all(isinstance(t, str) and t for t in names):
        raise ValueError(
            f"target_parameters must be a list of parameter names (PEFT's form, e.g. "
            f"['experts.gate_up_proj']), got {target_parameters!r}"
        )
    return names


def bitfit(model: nn.Module) -> Config:
    """BitFit: only the biases train (``trainable(*.bias)``).

    Args:
        model: The model to adapt.

    Returns:
        The config.

    Raises:
        ValueError: The model has no bias parameters.
    """
    strategy = Strategy(
        name="bitfit", param_caps=[ParamCap(lambda p: p.name == "bias", True, pattern="*.bias")]
    )
    cfg = strategy(model)
    if not cfg.trainable:
        raise ValueError(f"{type(model).__name__} has no bias parameters for BitFit to train")
    return cfg


def _default_head(model: nn.Module) -> str:
    getter = getattr(model, "get_classifier", None)  # timm models name their classifier
    if callable(getter):
        head = getter()
        for name, module in model.named_modules():
            if module is head and name:
                return name
    for name in ("head", "fc", "classifier", "heads", "last_linear"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    raise ValueError(f"cannot tell the head of {type(model).__name__}; pass head='<module path>'")


def head_only(model: nn.Module, head: str | None = None) -> Config:
    """Only the classifier head trains (``trainable(head)``); ``head`` defaults to timm's
    ``get_classifier()``, then ``head``/``fc``/``classifier``, then the last Linear layer.

    Args:
        model: The model to adapt.
        head: The head's module path, or ``None`` to find it.

    Returns:
        The config.

    Raises:
        ValueError: No head is found, ``head`` names no module, or the head has no parameters.
    """
    path = head or _default_head(model)
    modules = dict(model.named_modules())
    if path not in modules:
        raise ValueError(f"no module {path!r} in {type(model).__name__} to use as the head")
    prefix = path + "."
    strategy = Strategy(
        name="head_only", param_caps=[ParamCap(lambda p: p.path.startswith(prefix), True, pattern=path)]
    )
    cfg = strategy(model)
    if not cfg.trainable:
        raise ValueError(f"head {path!r} has no parameters")
    return cfg


def full(model: nn.Module) -> Config:
    """Full fine-tuning: every parameter trains (``trainable(*)``).

    Args:
        model: The model to adapt.

    Returns:
        The config.
    """
    strategy = Strategy(name="full", param_caps=[ParamCap(lambda p: True, True, pattern="*")])
    return strategy(model)

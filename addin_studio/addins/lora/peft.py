"""LoRA's PEFT form: ``peft_type`` LORA on ``nn.Linear``, transformers ``Conv1D`` (PEFT's
``fan_in_fan_out``), ``nn.Embedding`` and ``nn.Conv1d/2d/3d`` layers (grouped ones too) and named 2-D
parameters (``target_parameters``), tensors named as PEFT names them (``lora_A.weight`` /
``lora_B.weight``; ``lora_embedding_A`` / ``lora_embedding_B`` for embeddings, same layouts as ours; convs
in PEFT's layout, ``layout=peft``), with the variants PEFT holds once per adapter: ``use_rslora``,
``use_dora`` (``lora_magnitude_vector``), ``lora_bias`` (``lora_B.bias``), ``init_lora_weights`` (true,
gaussian, pissa, olora, mica), ``kasa_config`` (``lora_diag``) and ``velora_config``
(``lora_velora_embed``), ``monteclora_config``: each variant's fields and tensors come from its
variant object (``addins/lora/variant.py``); ``trainable_token_indices`` are
``TrainableTokens`` (``addins/trainable_tokens.py``).

``nn.MultiheadAttention``: PEFT's LoRA on one (``target_modules`` naming it) holds ``<mha>.lora_A/B`` for its
``in_proj_weight`` and ``<mha>.base_layer.out_proj.lora_A/B`` for its ``out_proj``, with one r and alpha;
ours is ``LoRA.adapt_weight`` on ``<mha>`` and on ``<mha>.out_proj``. Files saved by PEFT < 0.22 (which
added out_proj's update twice) are refused by their ``peft_version`` (``MHA_REFUSAL``)."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ...config import Placement, Point
from ..interop import PeftEntry, PeftImport, PeftMapping
from ..peft_patterns import listed_by_peft, pattern_value
from .layout import WEIGHT_METHOD, default_param, hook_problem, is_hf_conv1d
from .peft_variants import as_json
from .variant import VARIANTS

_PARTS = ("lora_A", "lora_B")
_EMBEDDING_PARTS = {"lora_embedding_A": "lora_A", "lora_embedding_B": "lora_B"}
_MAGNITUDE = "lora_magnitude_vector"
_KINDS = "nn.Linear, nn.Conv1d/2d/3d, nn.Embedding and transformers Conv1D layers"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# LoraConfig fields whose non-empty values change what the adapter computes in ways we do not model
_UNSUPPORTED = (
    "layer_replication",
    "use_qalora",
    "alora_invocation_tokens",
    "arrow_config",
    "loftq_config",
    "megatron_config",
    "corda_config",
    "eva_config",
    "use_bdlora",
)
# why PEFT's MultiheadAttention LoRA files saved before PEFT 0.22 are refused (PEFT 0.21.2's
# MultiheadAttention.merge, which its forward calls too, wrote out_proj's delta into the weight, then
# out_proj.merge() added it again; PEFT 0.22 doubles such a file's out_proj lora_B when it loads it)
MHA_REFUSAL = (
    "PEFT before 0.22 added the out_proj update twice (its forward and merge computed "
    "out_proj with W + 2*scale*B@A; huggingface/peft PR #3774), so this file's out_proj tensors "
    "do not mean what its config says; load it with PEFT >= 0.22 (which doubles out_proj's "
    "lora_B) and save it again (save_pretrained) to import it"
)
# the first PEFT release whose MultiheadAttention LoRA computes W + scale*B@A on in_proj and on out_proj
MHA_PEFT_VERSION = "0.22.0"
_OUT_PROJ = ".base_layer.out_proj"  # PEFT's name for a MultiheadAttention's out_proj, below the MHA
_BASE_LAYER = ".base_layer"  # PEFT's name for a wrapped layer (nested ParamWrappers: one per parameter)
_MHA_LAYERS = (nn.MultiheadAttention, nn.modules.linear.NonDynamicallyQuantizableLinear)
_INITS = {True: "kaiming", "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "mica": "mica"}


def _peft_kind(module: nn.Module) -> str | None:
    """ "linear", "conv1d" (transformers), "embedding" or "conv" (nn.Conv1d/2d/3d) for the layers PEFT's
    LoRA can hold, else None."""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return None  # PEFT reaches an out_proj only through its MultiheadAttention
    if isinstance(module, nn.Linear):
        return "linear"
    if is_hf_conv1d(module):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _CONVS):
        return "conv"
    return None


def _variant(addin: Any) -> dict[str, Any]:
    """The settings of a LoRA that PEFT holds once per adapter (its LoraConfig flags, from its variant)."""
    return addin.variant.peft_fields()


class LoraPeft(PeftMapping):
    """LoRA <-> PEFT ``LoraConfig``: ranks/alphas as ``r``/``lora_alpha`` plus per-module patterns."""

    peft_type = "LORA"

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        dropouts = set()
        variants: dict[str, set] = {}
        fan_in_fan_out = False  # PEFT switches it per layer as it meets Linear or Conv1D layers
        # PEFT's target_parameters: a named 2-D parameter of another layer kind, or a 3-D stack of experts;
        # {"<module>.<param>": its entry}
        params: dict[str, PeftEntry] = {}
        mha, entries = _mha_entries(entries)
        for path, pair in mha.items():  # PEFT's MultiheadAttention LoRA: in_proj + out_proj, one r/alpha
            for e, where in zip(pair, ("", _OUT_PROJ)):
                tensors[f"{path}{where}.lora_A.weight"] = e.addin.lora_A
                tensors[f"{path}{where}.lora_B.weight"] = e.addin.lora_B
                for flag, value in _variant(e.addin).items():
                    variants.setdefault(flag, set()).add(value)
            ranks[path] = pair[0].addin.r
            alphas[path] = pair[0].addin.alpha
        for e in entries:
            path = e.placement.target.module
            kind = _peft_kind(e.module)
            if _parameter_target(e, kind):
                kind = "parameter"
                path = f"{path}.{e.addin.param}"  # PEFT's key for it (rank_pattern, alpha_pattern too)
                if path not in ranks:
                    params[path] = e
            if kind is None:
                raise ValueError(
                    f"PEFT export covers LoRA on {_KINDS} and nn.MultiheadAttention; '{path}' "
                    f"is a {type(e.module).__name__}"
                )
            if kind != "parameter" and (
                e.placement.method not in ("adapt_output", "adapt_weight")
                or getattr(e.addin, "param", "weight") != "weight"
            ):
                raise ValueError(
                    f"PEFT export covers LoRA.adapt_output and LoRA.adapt_weight on a "
                    f"layer's weight; '{e.key}' is not one"
                )
            if kind == "conv" and (
                e.addin.lora_B.shape[0] != e.module.out_channels
                or e.module.groups != 1
                and not e.addin.grouped
            ):
                raise ValueError(
                    f"'{path}': a conv LoRA goes to PEFT in PEFT's layout: attach it with "
                    f"layout=peft (the balanced layout is not PEFT's)"
                )
            if path in ranks:
                raise ValueError(f"two LoRAs on '{path}' cannot be one PEFT adapter")
            r = e.addin.r
            ones = [1] * (e.module.weight.dim() - 2) if kind == "conv" else []
            if kind == "parameter":
                pass  # named below, once every parameter of its module is known (PEFT nests them)
            elif kind == "embedding":
                tensors[f"{path}.lora_embedding_A"] = e.addin.lora_A
                tensors[f"{path}.lora_embedding_B"] = e.addin.lora_B
            else:
                tensors[f"{path}.lora_A.weight"] = (
                    e.addin.lora_A
                    if kind != "conv"
                    else e.addin.lora_A.reshape(r, e.module.in_channels, *e.module.kernel_size)
                )
                # [out, r] ([out, r/groups] on a grouped conv) with PEFT's 1x1 kernel dims
                tensors[f"{path}.lora_B.weight"] = e.addin.lora_B.reshape(*e.addin.lora_B.shape, *ones)
            extra = e.addin.variant.peft_tensors(e.addin)  # the variant's own (lora_B.bias, lora_diag, ...)
            tensors.update({f"{path}.{suffix}": t for suffix, t in extra.items()})
            for flag, value in _variant(e.addin).items():
                variants.setdefault(flag, set()).add(value)
            fan_in_fan_out |= kind == "conv1d"
            ranks[path] = e.addin.r
            alphas[path] = e.addin.alpha
            dropouts.add(e.addin.dropout)
        if len(dropouts) > 1:
            raise ValueError(f"PEFT has one lora_dropout per adapter; these LoRAs use {sorted(dropouts)}")
        if params and any(dropouts):
            raise ValueError(
                f"PEFT's LoRA on target_parameters ('{sorted(params)[0]}') refuses "
                f"lora_dropout, and PEFT has one per adapter; these LoRAs use "
                f"dropout={max(dropouts):g}"
            )
        tensors.update(_parameter_tensors(params.values()))
        for flag, values in variants.items():
            if len(values) > 1:
                raise ValueError(
                    f"PEFT has one {flag} per adapter; these LoRAs mix "
                    f"{[as_json(v) for v in sorted(values, key=str)]}"
                )
        r = _most_common(ranks.values())
        alpha = _most_common(alphas.values())
        for path in params:
            if (ranks[path], alphas[path]) != (r, alpha):  # PEFT would match patterns to '<module>.<param>'
                raise ValueError(
                    f"'{params[path].placement.target.module}': a LoRA on a named parameter "
                    f"goes to PEFT (target_parameters) with the adapter's common r={r} and "
                    f"alpha={_num(alpha)}, not r={ranks[path]}, alpha={_num(alphas[path])}"
                )
        modules = sorted(m for m in ranks if m not in params)
        config = {
            "r": r,
            "lora_alpha": _num(alpha),
            "lora_dropout": dropouts.pop() if dropouts else 0.0,
            "bias": "none",
            "target_modules": modules or None,
            "exclude_modules": None,
            "target_parameters": sorted(params) or None,
            "rank_pattern": {f"^{m}$": v for m, v in ranks.items() if v != r},
            "alpha_pattern": {f"^{m}$": _num(v) for m, v in alphas.items() if v != alpha},
            "fan_in_fan_out": fan_in_fan_out,
            "layers_to_transform": None,
            "layers_pattern": None,
            **{flag: as_json(values.pop()) for flag, values in variants.items()},
        }
        if mha:  # PEFT >= 0.22 reads the out_proj tensors as they are (older files get lora_B doubled)
            config["peft_version"] = MHA_PEFT_VERSION
        return tensors, config

    def claims(self, name: str) -> bool:
        # every LoRA-family tensor (``lora_*``, PEFT's trainable tokens), so that ``read`` refuses an
        # adapter by the config option it cannot model (VeLoRA, MonteCLoRA, ...) or names the key
        return ".lora_" in name or ".token_adapter." in name

    def read(
        self,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        model: nn.Module,
        addin: str,
        source: str,
    ) -> list[PeftImport]:
        for flag in _UNSUPPORTED:  # fan_in_fan_out: the layer's kind says it
            if config.get(flag):
                raise ValueError(f"{source}: {flag} is not supported")
        init = config.get("init_lora_weights", True)
        if init is False or init == "orthogonal":  # initialise lora_A/B only: the file's tensors replace them
            init = True
        if not isinstance(init, (bool, str)) or init not in _INITS:
            raise ValueError(
                f"{source}: init_lora_weights={init!r} is not supported "
                f"(true, false, 'gaussian', 'orthogonal', 'pissa', 'olora' or 'mica')"
            )
        if "lora_alpha" in config and config["lora_alpha"] is None:
            raise ValueError(f"{source}: field 'lora_alpha' is null; PEFT needs a number")
        variant: dict[str, Any] = {"rslora": bool(config.get("use_rslora")), "init": _INITS[init]}
        variant = {k: v for k, v in variant.items() if v not in (False, "kaiming")}
        for cls in VARIANTS:
            variant.update(cls.settings_from_peft(config, source))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        tokens = _token_imports(config, tensors, model, source)
        tensors = {n: t for n, t in tensors.items() if ".token_adapter." not in n}
        for name, t in tensors.items():
            for embedding_part, part in _EMBEDDING_PARTS.items():
                module, marker, rest = name.partition(f".{embedding_part}")
                if marker and rest in ("", ".default"):
                    pairs.setdefault(module, {})[part] = t
                    break
            else:
                _pair(name, t, pairs, source)
        if not pairs:
            raise ValueError(f"{source} holds no LoRA weights")
        modules = dict(model.named_modules())
        pairs, out_projs = _mha_imports(config, pairs, modules, source)
        params = _target_parameters(config, pairs, modules, source)
        for path in pairs:
            if path in params:
                continue
            owner = path.partition(".base_layer.")[0]
            if path in out_projs or isinstance(modules.get(path), nn.MultiheadAttention):
                _check_targeted(config, out_projs.get(path, path), pairs[path], source)
                continue
            if path not in modules and owner in modules:  # PEFT's MultiheadAttention wrapper
                raise ValueError(
                    f"from_peft imports LoRA on {_KINDS}; the adapter's '{owner}' is a "
                    f"{type(modules[owner]).__name__}"
                )
            if path not in modules:
                raise ValueError(
                    f"the adapter has LoRA weights for module '{path}', which this "
                    f"{type(model).__name__} does not have"
                )
            if _peft_kind(modules[path]) is None:
                raise ValueError(
                    f"from_peft imports LoRA on {_KINDS}; the adapter's '{path}' is "
                    f"a {type(modules[path]).__name__}"
                )
            _check_targeted(config, path, pairs[path], source)
        order = {name: i for i, name in enumerate(modules)}

        def position(key: str) -> tuple[int, int]:
            if key not in params:
                return order[key], 0
            path, name = params[key]
            return order[path], list(modules[path]._parameters).index(name)

        out = []
        for key in sorted(pairs, key=position):
            pair = pairs[key]
            path, param = params.get(key, (key, None))
            want = set(_PARTS) | {
                ours
                for cls in VARIANTS
                if cls.switch and variant.get(cls.switch.name)
                for ours in cls.peft_tensor_names.values()
            }
            if set(pair) != want:
                missing, extra = want - set(pair), set(pair) - want
                raise ValueError(
                    f"the adapter's LoRA for '{path}' "
                    + (
                        f"lacks {sorted(missing)[0]}"
                        if missing
                        else f"has {sorted(extra)[0]}, which its config does not switch on"
                    )
                )
            conv = _peft_kind(modules[path]) == "conv" and not param
            for part in _PARTS:  # matrices ([r, in, *k] / [out, r, 1, ...] for PEFT's conv LoRA)
                t = pair[part]
                if t.dim() < 2 or (t.dim() != 2 and not conv) or min(t.shape) < 1:
                    raise ValueError(
                        f"{source}: the adapter's {part} for '{path}' has shape "
                        f"{tuple(t.shape)}; LoRA factors are non-empty matrices"
                    )
            named = f"{path}.{param}" if param else out_projs.get(path, path)  # PEFT's key for its patterns
            alpha = pattern_value(
                config.get("alpha_pattern"), named, config.get("lora_alpha", 8), source, "alpha_pattern"
            )
            settings: dict[str, Any] = {"r": _rank(pair, modules[path], param, source, named)}
            settings["alpha"] = alpha
            if config.get("lora_dropout"):
                settings["dropout"] = float(config["lora_dropout"])
            settings.update(variant)
            if conv:
                r = settings["r"]
                settings["layout"] = "peft"
                pair = {
                    k: t.reshape(r, -1) if k == "lora_A" else t.flatten(1) if k == "lora_B" else t.reshape(-1)
                    for k, t in pair.items()
                }
            elif "lora_magnitude" in pair:
                pair["lora_magnitude"] = pair["lora_magnitude"].reshape(-1)
            point = Point(path, "post")
            method = WEIGHT_METHOD if hook_problem(modules[path]) or param else "adapt_output"
            if param:
                settings["param"] = param
                settings.pop("layout", None)
            if method == WEIGHT_METHOD:
                settings.pop("dropout", None)
            out.append(PeftImport(Placement(addin, method, point, point, settings), dict(pair)))
        return out + tokens


def _mha_entries(
    entries: Sequence[PeftEntry],
) -> tuple[dict[str, tuple[PeftEntry, PeftEntry]], list[PeftEntry]]:
    """``({MultiheadAttention path: (in_proj entry, out_proj entry)}, the other entries)``: PEFT's
    MultiheadAttention LoRA adapts both projections with one r and alpha, plain LoRA on the weight only."""
    ins: dict[str, PeftEntry] = {}
    outs: dict[str, PeftEntry] = {}
    for e in entries:
        path = e.placement.target.module
        if isinstance(e.module, nn.MultiheadAttention):
            found, key = ins, path
        elif isinstance(e.module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            found, key = outs, path.rpartition(".")[0]
        else:
            continue
        if key in found:
            raise ValueError(f"two LoRAs on '{path}' cannot be one PEFT adapter")
        if e.placement.method != "adapt_weight" or e.addin.param != default_param(e.module):
            raise ValueError(
                f"PEFT's nn.MultiheadAttention LoRA is LoRA.adapt_weight on in_proj_weight and "
                f"on out_proj's weight; '{e.key}' is not one"
            )
        if e.addin.variant.peft_tensors(e.addin):
            raise ValueError(
                f"PEFT's nn.MultiheadAttention LoRA is plain LoRA (no DoRA, lora_bias, KaSA, "
                f"VeLoRA or MonteCLoRA); '{e.key}' is not"
            )
        found[key] = e
    for owner, e in outs.items():
        if owner not in ins:
            raise ValueError(
                f"PEFT's nn.MultiheadAttention LoRA adapts in_proj and out_proj together; "
                f"'{e.placement.target.module}' has a LoRA but its MultiheadAttention '{owner}' "
                f"has none: attach LoRA.adapt_weight on '{owner}' too (same r and alpha)"
            )
    for path, e in ins.items():
        if path not in outs:
            raise ValueError(
                f"PEFT's nn.MultiheadAttention LoRA adapts in_proj and out_proj together; "
                f"'{path}' has a LoRA but its out_proj '{path}.out_proj' has none: attach "
                f"LoRA.adapt_weight on '{path}.out_proj' too (same r and alpha)"
            )
        o = outs[path]
        if (e.addin.r, e.addin.alpha) != (o.addin.r, o.addin.alpha):
            raise ValueError(
                f"PEFT gives an nn.MultiheadAttention's in_proj and out_proj one r and alpha; "
                f"'{path}' has r={e.addin.r}, alpha={_num(e.addin.alpha)}, '{path}.out_proj' "
                f"r={o.addin.r}, alpha={_num(o.addin.alpha)}"
            )
    rest = [e for e in entries if not isinstance(e.module, _MHA_LAYERS)]
    return {path: (e, outs[path]) for path, e in ins.items()}, rest


def _saved_before_fix(config: Mapping[str, Any], source: str) -> bool:
    """Whether the adapter was saved by a PEFT whose MultiheadAttention LoRA added out_proj's update twice:
    PEFT 0.22's own rule (no ``peft_version``: before 0.18; a release before 0.22; a dev version before
    0.21.1)."""
    version = config.get("peft_version")
    if version is None:
        return True
    found = (
        re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(.*)$", version.partition("@")[0])
        if isinstance(version, str)
        else None
    )
    if found is None:
        raise ValueError(
            f"{source}: field 'peft_version' is {version!r}; PEFT writes a version such as "
            f"'{MHA_PEFT_VERSION}'"
        )
    release = (int(found[1]), int(found[2]), int(found[3] or 0))
    return release < (0, 21, 1) or ("dev" not in found[4] and release < (0, 22, 0))


def _mha_imports(
    config: Mapping[str, Any],
    pairs: dict[str, dict[str, torch.Tensor]],
    modules: Mapping[str, nn.Module],
    source: str,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """``pairs`` with PEFT's ``<mha>.base_layer.out_proj`` renamed to our ``<mha>.out_proj``, and
    ``{out_proj path: its MultiheadAttention}``. Both projections must be there, and the file must come
    from PEFT >= 0.22 (``MHA_REFUSAL``)."""
    owners = sorted(
        {
            p.partition(".base_layer.")[0]
            for p in pairs
            if isinstance(modules.get(p.partition(".base_layer.")[0]), nn.MultiheadAttention)
        }
    )
    if not owners:
        return pairs, {}
    if _saved_before_fix(config, source):
        version = config.get("peft_version")
        saved = f"PEFT {version}" if version else "a PEFT before 0.18 (its config has no peft_version)"
        raise ValueError(
            f"{source}: from_peft does not import this nn.MultiheadAttention LoRA (the "
            f"adapter's '{owners[0]}', saved by {saved}): {MHA_REFUSAL}"
        )
    renamed, out_projs = dict(pairs), {}
    for owner in owners:
        theirs = f"{owner}{_OUT_PROJ}"
        for path, part in ((owner, "in_proj"), (theirs, "out_proj")):
            if path not in pairs:
                raise ValueError(
                    f"{source}: the adapter's nn.MultiheadAttention LoRA for '{owner}' lacks "
                    f"its {part} tensors ('base_model.model.{path}.lora_A.weight', "
                    f"'base_model.model.{path}.lora_B.weight'); PEFT adapts both projections"
                )
        other = next((p for p in pairs if p.startswith(f"{owner}.base_layer.") and p != theirs), None)
        if other is not None:
            raise ValueError(
                f"{source}: unexpected LoRA weights for '{other}' (PEFT's nn.MultiheadAttention "
                f"LoRA holds '{owner}' and '{theirs}')"
            )
        ranks = {p: pairs[p]["lora_A"].shape[0] for p in (owner, theirs) if "lora_A" in pairs[p]}
        if len(set(ranks.values())) > 1:
            raise ValueError(
                f"{source}: the adapter's nn.MultiheadAttention LoRA for '{owner}' has rank "
                f"{ranks.get(owner)} on in_proj and {ranks.get(theirs)} on out_proj; PEFT gives "
                f"both one r"
            )
        renamed[f"{owner}.out_proj"] = renamed.pop(theirs)
        out_projs[f"{owner}.out_proj"] = owner
    return renamed, out_projs


def _layer_index(config: Mapping[str, Any], path: str) -> int | str | None:
    """The layer number PEFT's ``layers_to_transform`` reads from a listed target's ``path`` (``"none"``
    when it finds none, so the module is not adapted); None when no layer filter applies or its
    ``layers_pattern`` is a regex beyond plain names (not checked)."""
    wanted, patterns = config.get("layers_to_transform"), config.get("layers_pattern")
    if wanted is None or wanted == [] or not isinstance(wanted, (int, list)):
        return None
    patterns = ([patterns] if patterns else []) if isinstance(patterns, str) else patterns or []
    if not isinstance(patterns, list) or not all(
        isinstance(p, str) and p.replace("_", "a").isalnum() for p in patterns
    ):
        return None
    found = (
        re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", path)
        if not patterns
        else next(
            (m for m in (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", path) for p in patterns) if m), None
        )
    )
    return int(found.group("idx")) if found else "none"


def _check_targeted(
    config: Mapping[str, Any], path: str, pair: Mapping[str, torch.Tensor], source: str
) -> None:
    """The file's LoRA for ``path`` is one PEFT would load: a module a list ``target_modules`` names (and a
    list ``exclude_modules`` does not; PEFT skips the others' tensors), of the rank ``r`` / ``rank_pattern``
    gives it (PEFT refuses other shapes). Regex-string targets are not checked."""
    targets, excluded = config.get("target_modules"), config.get("exclude_modules")
    if (
        isinstance(targets, list)
        and not listed_by_peft(targets, path)
        or isinstance(excluded, list)
        and listed_by_peft(excluded, path)
    ):
        raise ValueError(
            f"{source}: the adapter holds LoRA weights for '{path}', which the config's "
            f"target_modules {targets} (exclude_modules {excluded}) does not adapt; PEFT "
            f"would leave them out, so the files disagree"
        )
    saved = next(
        (m for m in config.get("modules_to_save") or [] if f".{path}.".find(f".{m}.") >= 0), None
    )  # PEFT: (^|.*\.)m($|\..*)
    if saved is not None:
        raise ValueError(
            f"{source}: the adapter holds LoRA weights for '{path}', inside modules_to_save "
            f"entry '{saved}', which PEFT keeps out of LoRA; the files disagree"
        )
    layer = _layer_index(config, path) if isinstance(targets, list) and path not in targets else None
    wanted = config.get("layers_to_transform")
    if layer is not None and layer not in (wanted if isinstance(wanted, list) else [wanted]):
        where = f"layer {layer}" if layer != "none" else "no layer number PEFT can read"
        raise ValueError(
            f"{source}: the adapter holds LoRA weights for '{path}' ({where}), which the "
            f"config's layers_to_transform {wanted} does not adapt; PEFT would leave them out, "
            f"so the files disagree"
        )
    r = pattern_value(config.get("rank_pattern"), path, config.get("r", 8), source, "rank_pattern")
    a = pair.get("lora_A")  # a missing or malformed one is named later
    if a is not None and a.dim() and a.shape[0] != r:
        raise ValueError(
            f"{source}: the adapter's lora_A for '{path}' has rank {a.shape[0]}; the "
            f"config's r / rank_pattern give '{path}' rank {r!r}"
        )


def _parameter_target(e: PeftEntry, kind: str | None) -> bool:
    """Whether ``e`` goes to PEFT as a ``target_parameters`` entry: ``adapt_weight`` with ``param=`` on a
    layer PEFT's LoRA does not wrap (not MultiheadAttention: PEFT holds those as MultiheadAttention LoRA),
    plain LoRA only."""
    return (
        kind is None
        and e.placement.method == "adapt_weight"
        and "param" in e.placement.settings
        and not isinstance(e.module, _MHA_LAYERS)
        and len(e.addin.weight_shape) in (2, 3)
        and not e.addin.variant.peft_tensors(e.addin)
    )


def _parameter_tensors(entries: Iterable[PeftEntry]) -> dict[str, torch.Tensor]:
    """PEFT's tensors of LoRAs on ``target_parameters``: a ``ParamWrapper`` per parameter, nested when a
    module has several (the first in the module's registration order innermost, as PEFT wraps them), so
    ``<module>.lora_A.weight`` is its last adapted parameter's, ``<module>.base_layer.lora_A.weight`` the one
    before, ... Our ``lora_A`` / ``lora_B`` are PEFT's tensors as they are (``experts.py``)."""
    by_module: dict[str, list[PeftEntry]] = {}
    for e in entries:
        by_module.setdefault(e.placement.target.module, []).append(e)
    tensors = {}
    for path, found in by_module.items():
        order = list(found[0].module._parameters)
        found.sort(key=lambda e: order.index(e.addin.param))
        for k, e in enumerate(found):
            where = path + _BASE_LAYER * (len(found) - 1 - k)
            tensors[f"{where}.lora_A.weight"] = e.addin.lora_A
            tensors[f"{where}.lora_B.weight"] = e.addin.lora_B
    return tensors


def _token_imports(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: nn.Module, source: str
) -> list[PeftImport]:
    """The TrainableTokens placements of ``trainable_token_indices`` (``addins/trainable_tokens.py``)."""
    from ..trainable_tokens import TOKEN_KEY, read_tokens, token_layers

    spec = config.get("trainable_token_indices")
    tokens = {n: t for n, t in tensors.items() if ".token_adapter." in n}
    if not spec:
        if tokens:
            raise ValueError(
                f"{source}: tensor 'base_model.model.{sorted(tokens)[0]}' holds "
                f"trainable tokens, which the config's trainable_token_indices does not list"
            )
        return []
    if not isinstance(spec, (dict, list)):
        raise ValueError(
            f"{source}: field 'trainable_token_indices' must be a list of token numbers or an "
            f"object of them by layer, got {type(spec).__name__}"
        )
    bad = sorted(n for n in tokens if not n.endswith("." + TOKEN_KEY))
    if bad:
        raise ValueError(f"{source}: unexpected key 'base_model.model.{bad[0]}'")
    return read_tokens(token_layers(spec, model, source), tokens, TOKEN_KEY, model, "TrainableTokens", source)


def _target_parameters(
    config: Mapping[str, Any], pairs: Mapping[str, Any], modules: Mapping[str, nn.Module], source: str
) -> dict[str, tuple[str, str]]:
    """``{the file's module key: (module path, parameter name)}`` for the adapter's LoRAs on
    ``target_parameters`` (PEFT's ``ParamWrapper``: ``lora_A [r, shape[1]]``, ``lora_B [shape[0], r]`` on a
    2-D parameter, our ``param=`` layout; ``[E*r, in]`` / ``[out, r*E]`` on a 3-D stack of experts,
    ``experts.py``). Several parameters of one module are nested wrappers: the key ``<module>`` holds the
    last adapted one (in the module's registration order), ``<module>.base_layer`` the one before, ..."""
    targets = config.get("target_parameters") or []
    found: dict[str, tuple[str, str]] = {}
    for key in pairs:
        path, depth = key, 0
        while path.endswith(_BASE_LAYER):
            path, depth = path[: -len(_BASE_LAYER)], depth + 1
        module = modules.get(path)
        if module is None:
            continue
        names = [
            n for n, p in module.named_parameters(recurse=False) if listed_by_peft(targets, f"{path}.{n}")
        ]
        if not names:
            continue
        if depth >= len(names):
            raise ValueError(
                f"{source}: unexpected key 'base_model.model.{key}.lora_A.weight' "
                f"(target_parameters adapts {len(names)} parameter(s) of '{path}': "
                f"{', '.join(names)})"
            )
        name = names[len(names) - 1 - depth]
        if module._parameters[name].dim() not in (2, 3):
            raise ValueError(
                f"{source}: target_parameters '{path}.{name}' has shape "
                f"{tuple(module._parameters[name].shape)}; LoRA adapts a matrix or a 3-D "
                f"stack of expert matrices"
            )
        found[key] = (path, name)
    return found


def _rank(
    pair: Mapping[str, torch.Tensor], module: nn.Module, param: str | None, source: str, named: str
) -> int:
    """The rank of the file's LoRA: ``lora_A``'s rows (a stack of ``E`` experts: ``E*r`` rows)."""
    rows = int(pair["lora_A"].shape[0]) if pair["lora_A"].dim() else 0
    if param is None or module._parameters[param].dim() != 3:
        return rows
    experts = module._parameters[param].shape[0]
    if rows % experts or not rows:
        raise ValueError(
            f"{source}: the adapter's lora_A for '{named}' has shape "
            f"{tuple(pair['lora_A'].shape)}; PEFT's LoRA on {experts} experts has "
            f"{experts}*r rows"
        )
    return rows // experts


def _pair(name: str, t: torch.Tensor, pairs: dict, source: str) -> None:
    """File one ``lora_A`` / ``lora_B`` (weight or bias) / ``lora_magnitude_vector`` tensor under its
    module."""
    module, marker, rest = name.partition(f".{_MAGNITUDE}")
    if marker and rest in ("", ".weight", ".default", ".default.weight"):
        pairs.setdefault(module, {})["lora_magnitude"] = t
        return
    for theirs, ours in ((t, o) for cls in VARIANTS for t, o in cls.peft_tensor_names.items()):
        module, marker, rest = name.partition(f".{theirs}")
        if marker and rest in ("", ".default"):
            pairs.setdefault(module, {})[ours] = t
            return
    for part in _PARTS:
        module, marker, rest = name.partition(f".{part}.")
        if marker:
            if part == "lora_B" and rest in ("bias", "default.bias"):
                pairs.setdefault(module, {})["lora_bias"] = t
                return
            if rest not in ("weight", "default.weight"):
                raise ValueError(f"{source}: unexpected key 'base_model.model.{name}'")
            pairs.setdefault(module, {})[part] = t
            return
    raise ValueError(f"{source}: unexpected key 'base_model.model.{name}'")


def _most_common(values: Any) -> Any:
    values = list(values)
    return max(set(values), key=values.count)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x

"""The PEFT form of LoRA's VeLoRA, KaSA and MonteCLoRA settings (``velora_config`` / ``kasa_config`` /
``monteclora_config`` in ``adapter_config.json``; the tensors ``lora_velora_embed``, ``lora_diag`` and
``lora_monteclora_sampler.*``); MiCA is an ``init_lora_weights`` value and needs nothing here."""
from __future__ import annotations

from typing import Any, Mapping

#: PEFT's extra adapter tensors (file key suffix) -> our tensor names, and the setting that has them
EXTRA_TENSORS = {"lora_diag": ("lora_diag", "kasa"), "lora_velora_embed": ("lora_velora_embed", "velora"),
                 **{f"lora_monteclora_sampler.{n}": (f"lora_monteclora.{n}", "monteclora")
                    for n in ("std_prior", "expert_weights_prior", "gaussian_var_prior", "expert_weights")}}
# our MonteCLoRA settings -> PEFT's MontecloraConfig fields
_MONTECLORA = {"samples": "num_samples", "entropy": "use_entropy", "prior": "dirichlet_prior",
               "scaler": "sample_scaler", "kl_weight": "kl_loss_weight", "buffer_size": "buffer_size"}


def variant_fields(addin: Any) -> dict[str, Any]:
    """The ``LoraConfig`` sub-configs of one LoRA, hashable (sorted item tuples, or None)."""
    kasa = velora = monteclora = None
    if getattr(addin, "kasa", False):
        kasa = (("beta", addin.kasa_beta), ("gamma", addin.kasa_gamma))
    if getattr(addin, "velora", False):
        velora = (("init_type", addin.velora_init), ("num_groups", addin.velora_groups),
                  ("scale", addin.velora_scale))
    if getattr(addin, "monteclora", False):
        sampler = addin.lora_monteclora
        monteclora = tuple(sorted((theirs, getattr(sampler, ours)) for ours, theirs in _MONTECLORA.items()))
    return {"kasa_config": kasa, "velora_config": velora, "monteclora_config": monteclora}


def as_json(value: Any) -> Any:
    """A hashable sub-config from :func:`variant_fields` as the JSON object PEFT writes."""
    return dict(value) if isinstance(value, tuple) else value


def extra_tensors(addin: Any) -> dict[str, Any]:
    """``{PEFT suffix: tensor}`` of the extra tensors this LoRA has."""
    out = {}
    for theirs, (ours, flag) in EXTRA_TENSORS.items():
        if getattr(addin, flag, False):
            owner, _, leaf = ours.rpartition(".")
            out[theirs] = getattr(addin.get_submodule(owner) if owner else addin, leaf)
    return out


_NUMBER = (int, float)
# PEFT's sub-config -> (our switch, {its field: (our setting, JSON type)}); a field left out keeps our
# default, which is PEFT's
_SUBCONFIGS = {
    "kasa_config": ("kasa", {"beta": ("kasa_beta", _NUMBER), "gamma": ("kasa_gamma", _NUMBER)}),
    "velora_config": ("velora", {"num_groups": ("velora_groups", int), "init_type": ("velora_init", str),
                                 "scale": ("velora_scale", _NUMBER)}),
    "monteclora_config": ("monteclora", {
        "num_samples": ("monteclora_samples", int), "use_entropy": ("monteclora_entropy", bool),
        "dirichlet_prior": ("monteclora_prior", _NUMBER), "sample_scaler": ("monteclora_scaler", _NUMBER),
        "kl_loss_weight": ("monteclora_kl", _NUMBER), "buffer_size": ("monteclora_buffer", int)}),
}


def _is(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, kind)


def import_settings(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our LoRA settings for a PEFT config's ``kasa_config`` / ``velora_config`` / ``monteclora_config``
    (JSON types checked here, naming the field; the LoRA checks the values themselves)."""
    out: dict[str, Any] = {}
    for field, (switch, fields) in _SUBCONFIGS.items():
        value = config.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{source}: field '{field}' must be a JSON object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"{source}: field '{field}' has '{unknown[0]}', which is not supported "
                             f"({', '.join(fields)})")
        out[switch] = True
        for key, (ours, kind) in fields.items():
            if key not in value:
                continue
            if not _is(value[key], kind):
                name = {int: "an integer", str: "a string", bool: "true or false"}.get(kind, "a number")
                raise ValueError(f"{source}: field '{field}.{key}' must be {name}, got {value[key]!r}")
            out[ours] = value[key]
    return out

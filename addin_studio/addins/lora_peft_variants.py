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


def _sub(config: Mapping[str, Any], field: str, keys: dict[str, Any], source: str) -> dict | None:
    value = config.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: field '{field}' must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ValueError(f"{source}: field '{field}' has '{unknown[0]}', which is not supported "
                         f"({', '.join(keys)})")
    for key, kind in keys.items():
        if key in value and (not isinstance(value[key], bool) if kind is bool else
                             (isinstance(value[key], bool) or not isinstance(value[key], kind))):
            name = "a number" if isinstance(kind, tuple) else \
                {int: "an integer", str: "a string", bool: "true or false"}[kind]
            raise ValueError(f"{source}: field '{field}.{key}' must be {name}, got {value[key]!r}")
    return value


def import_settings(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our LoRA settings for a PEFT config's ``kasa_config`` / ``velora_config`` (validated; the LoRA
    checks the values themselves)."""
    out: dict[str, Any] = {}
    kasa = _sub(config, "kasa_config", {"beta": (int, float), "gamma": (int, float)}, source)
    if kasa is not None:
        out.update(kasa=True, kasa_beta=kasa.get("beta", 1e-4), kasa_gamma=kasa.get("gamma", 1e-3))
    velora = _sub(config, "velora_config", {"num_groups": int, "scale": (int, float), "init_type": str}, source)
    if velora is not None:
        out.update(velora=True, velora_groups=velora.get("num_groups", 64),
                   velora_init=velora.get("init_type", "batch_average"), velora_scale=velora.get("scale", 1.0))
    number = (int, float)
    monteclora = _sub(config, "monteclora_config", {"num_samples": int, "use_entropy": bool, "dirichlet_prior": number,
                                                    "sample_scaler": number, "kl_loss_weight": number,
                                                    "buffer_size": int}, source)
    if monteclora is not None:
        defaults = {"num_samples": 8, "use_entropy": False, "dirichlet_prior": 0.1, "sample_scaler": 1e-4,
                    "kl_loss_weight": 1e-5, "buffer_size": 150}
        names = {"num_samples": "samples", "use_entropy": "entropy", "dirichlet_prior": "prior",
                 "sample_scaler": "scaler", "kl_loss_weight": "kl", "buffer_size": "buffer"}
        out["monteclora"] = True
        out.update({f"monteclora_{ours}": monteclora.get(theirs, defaults[theirs]) for theirs, ours in names.items()})
    return out

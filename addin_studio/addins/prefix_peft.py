"""Prefix tuning's PEFT form: ``peft_type`` PREFIX_TUNING, one tensor ``prompt_embeddings``
``[num_virtual_tokens, num_layers * 2 * token_dim]`` (the prefixes themselves, as PEFT saves them even
with ``prefix_projection``) for a transformers model's backbone. PEFT's prompt-learning files name it
without a prefix, and ``modules_to_save`` under ``base_model.``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import Placement, Point
from .interop import PeftEntry, PeftImport, PeftMapping

TENSOR = "prompt_embeddings"
METHOD = "adapt_forward"
_TASKS = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
)


def _whole(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: field '{name}' must be a positive integer, got {value!r}")
    return value


class PrefixPeft(PeftMapping):
    """PrefixTuning on a transformers backbone <-> PEFT ``PrefixTuningConfig``."""

    peft_type = "PREFIX_TUNING"
    lead = "base_model."
    bare = frozenset({TENSOR})

    def task_type(self, model: nn.Module) -> str | None:
        name = type(model).__name__
        return next((task for end, task in _TASKS if name.endswith(end)), "FEATURE_EXTRACTION")

    def export(self, entries: Sequence[PeftEntry]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        for e in entries:
            if e.addin.kind != "transformers":
                raise ValueError(
                    f"PEFT's prefix tuning holds the prefixes of a transformers model's "
                    f"backbone; '{e.key}' is on a {type(e.module).__name__}, which PEFT "
                    f"cannot hold"
                )
        if len(entries) != 1:
            raise ValueError(
                f"a PEFT prefix-tuning adapter holds one prefix encoder; this attachment has "
                f"{len(entries)} ({', '.join(e.key for e in entries)})"
            )
        addin = entries[0].addin
        dim = addin.heads * addin.head_dim
        with torch.no_grad():
            rows = addin.prefix().detach().clone()
        fields = {
            "num_virtual_tokens": addin.num_tokens,
            "num_layers": addin.layers,
            "token_dim": dim,
            "num_attention_heads": addin.heads,
            "num_transformer_submodules": 1,
            "encoder_hidden_size": dim,
            "prefix_projection": False,
            "init_weights": None,
        }
        return {TENSOR: rows}, fields

    def claims(self, name: str) -> bool:
        return name == TENSOR

    def read(
        self,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        model: nn.Module,
        addin: str,
        source: str,
    ) -> list[PeftImport]:
        from .prefix import _hf_shape, place_kind  # prefix.py imports this module

        if TENSOR not in tensors:
            raise ValueError(f"{source} holds no {TENSOR}")
        if not isinstance(config.get("task_type"), str):
            raise ValueError(
                f"{source}: field 'task_type' is {config.get('task_type')!r}; "
                f"PEFT adds the prefixes "
                f"only in the model class of a task type "
                f"(CAUSAL_LM, SEQ_CLS, FEATURE_EXTRACTION, ...), "
                f"without one its PeftModel runs the base model alone"
            )
        n = _whole(config.get("num_virtual_tokens"), "num_virtual_tokens", source)
        layers = _whole(config.get("num_layers"), "num_layers", source)
        dim = _whole(config.get("token_dim"), "token_dim", source)
        heads = _whole(config.get("num_attention_heads"), "num_attention_heads", source)
        if config.get("num_transformer_submodules") not in (None, 1):  # PEFT fills None in: 1 for decoders
            raise ValueError(
                f"{source}: num_transformer_submodules="
                f"{config.get('num_transformer_submodules')!r}; prefix tuning of "
                f"encoder-decoder models is not supported"
            )
        t = tensors[TENSOR]
        if tuple(t.shape) != (n, layers * 2 * dim):
            raise ValueError(
                f"{source}: {TENSOR} has shape {tuple(t.shape)}; the config says "
                f"{(n, layers * 2 * dim)} (num_virtual_tokens, num_layers * 2 * token_dim)"
            )
        path = next((p for p, m in model.named_modules() if p and place_kind(m) == "transformers"), None)
        if path is None:
            raise ValueError(
                f"{type(model).__name__} has no transformers backbone below its root whose "
                f"forward takes a cache, where prefix tuning goes"
            )
        backbone = model.get_submodule(path)
        own_layers, own_heads, head_dim = _hf_shape(backbone.config)
        if (own_layers, own_heads, own_heads * head_dim) != (layers, heads, dim):
            raise ValueError(
                f"{source} is for {layers} layers of {heads} key/value heads ({dim} "
                f"values); '{path}' has {own_layers} layers of {own_heads} ("
                f"{own_heads * head_dim} values)"
            )
        point = Point(path, "pre")
        placement = Placement(addin, METHOD, point, point, {"num_tokens": n})
        return [PeftImport(placement, {"prefix.embedding.weight": t})]

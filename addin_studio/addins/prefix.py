"""Prefix tuning (Li & Liang, 2021): learned key/value prefixes that every attention layer also attends to.

Two placements, one add-in (a *forward method*, see ``addins.base.forward_method``):

- on a **transformers** model's backbone (the module whose forward takes a ``cache``, e.g. GPT-2's
  ``transformer``, Llama's ``model``, BERT's ``bert``): one add-in holds the prefixes of every layer and
  passes them in as a pre-filled ``DynamicCache``, with the ``attention_mask`` extended by the prefix —
  what PEFT's ``PrefixTuningConfig`` does, so the outputs equal PEFT's on identical weights;
- on a **timm** ``Attention`` (ViT, DeiT, ... ``blocks[i].attn``): one add-in per attention layer; it
  computes timm's attention (q/k norms, fused or not, attention dropout, projection) with the learned
  prefixes in front of the keys and values.

The prefixes come from PEFT's prefix encoder: an ``embedding`` of ``num_tokens`` rows, or with
``projection=true`` a smaller embedding passed through a two-layer MLP (``transform``).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._sizing import positive_int
from .base import AddinBase, PointInfo, forward_method
from .prefix_peft import PrefixPeft
from .registry import register_addin

WHERE = (
    "prefix tuning goes on a transformers model's backbone (the module whose forward takes a "
    "cache, e.g. GPT-2's 'transformer', Llama's 'model', BERT's 'bert') or on a timm Attention "
    "('blocks[0:12].attn'), written {inout1}(module)"
)


class PrefixEncoder(nn.Module):
    """PEFT's prefix encoder: ``num_tokens`` rows of ``width`` values (``[tokens, layers * 2 * dim]``).

    ``projection=True``: an embedding of ``dim`` values per token through ``Linear(dim, hidden)``,
    ``tanh``, ``Linear(hidden, width)`` (PEFT's ``prefix_projection``; same parameter names).
    """

    def __init__(self, num_tokens: int, dim: int, width: int, projection: bool, hidden: int) -> None:
        super().__init__()
        self.projection = projection
        if projection:
            self.embedding = nn.Embedding(num_tokens, dim)
            self.transform = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.embedding = nn.Embedding(num_tokens, width)

    def forward(self) -> torch.Tensor:
        """The prefixes, ``[num_tokens, width]``."""
        rows = self.embedding.weight
        return self.transform(rows) if self.projection else rows


def _timm_attention(module: nn.Module) -> bool:
    """Whether ``module`` is timm's ViT ``Attention`` (not a subclass with a forward of its own)."""
    for where in ("timm.layers.attention", "timm.models.vision_transformer"):  # newer, older timm
        cls = getattr(sys.modules.get(where), "Attention", None)
        if cls is not None and isinstance(module, cls) and type(module).forward is cls.forward:
            return True
    return False


def _cache_argument(module: nn.Module) -> str | None:
    """The name under which a transformers model's forward takes its key/value cache, or None."""
    hf = sys.modules.get("transformers.modeling_utils")
    if hf is None or not isinstance(module, hf.PreTrainedModel):
        return None
    try:
        params = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in ("cache", "past_key_values") if n in params), None)


def _hf_shape(config: Any) -> tuple[int, int, int]:
    """``(layers, key/value heads, head dim)`` of a transformers config, as PEFT reads them."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return int(layers), int(kv_heads), int(head_dim)


def place_kind(module: nn.Module) -> str | None:
    """``"transformers"`` or ``"timm"``: where prefix tuning can go on ``module``; else None."""
    if _cache_argument(module) is not None and not getattr(module.config, "is_encoder_decoder", False):
        return "transformers"
    return "timm" if _timm_attention(module) else None


@register_addin
class PrefixTuning(AddinBase):
    """Learned key/value prefixes for attention.

    ``(PrefixTuning.adapt_forward, num_tokens=20): ...->{inout1}(transformer)->...`` on a transformers
    backbone (all layers), or ``...->{inout1}(blocks[0:12].attn)->...`` on timm attention layers.
    Settings: ``num_tokens`` (PEFT's ``num_virtual_tokens``, default 10), ``projection`` (PEFT's
    ``prefix_projection``: an MLP makes the prefixes, default false) and ``hidden`` (its hidden width,
    PEFT's ``encoder_hidden_size``; default: the prefix width per layer).

    Not an identity at attach: with ``n`` prefix tokens every attention also attends to ``n`` learned
    keys and values (initialised like PEFT, from ``N(0, 1)``), so the outputs change. The prefixes are
    used as they are: no positional encoding, no key norm is applied to them.
    """

    peft = PrefixPeft()  # its Hugging Face PEFT form (addins/prefix_peft.py)
    offers = ("adapt_forward",)  # the methods a string may name

    def __init__(
        self, point: PointInfo, num_tokens: int = 10, projection: bool = False, hidden: int | None = None
    ) -> None:
        super().__init__()
        positive_int(num_tokens, "num_tokens", "PrefixTuning")
        if hidden is not None:
            positive_int(hidden, "hidden", "PrefixTuning")
            if projection is not True:
                raise ValueError(
                    f"PrefixTuning hidden={hidden} is the width of the projection's hidden "
                    f"layer; "
                    f"it needs projection=true (without a projection there is no hidden layer)"
                )
        module = point.module
        where = f"'{point.path}' ({type(module).__name__})" if point.path else type(module).__name__
        self.cache_argument = _cache_argument(module)
        if self.cache_argument is not None:
            if getattr(module.config, "is_encoder_decoder", False):
                raise ValueError(
                    f"prefix tuning of encoder-decoder models ({where}) is not supported; {WHERE}"
                )
            self.kind = "transformers"
            self.layers, self.heads, self.head_dim = _hf_shape(module.config)
        elif _timm_attention(module):
            self.kind = "timm"
            self.layers, self.heads, self.head_dim = 1, module.num_heads, module.head_dim
        else:
            raise ValueError(f"prefix tuning cannot go on {where}: {WHERE}")
        if point.side != "pre":
            raise ValueError(f"prefix tuning replaces the forward of {where}: write it {{inout1}}(module)")
        self.num_tokens = num_tokens
        dim = self.heads * self.head_dim
        self.prefix = PrefixEncoder(num_tokens, dim, self.layers * 2 * dim, projection, hidden or dim)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, num_tokens={self.num_tokens}, layers={self.layers}, heads={self.heads}, "
            f"head_dim={self.head_dim}, projection={self.prefix.projection}"
        )

    def placement_hint(self, graph: Any) -> str:
        return WHERE

    def key_values(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The prefixes as ``[layers, 2, batch, heads, num_tokens, head_dim]`` (keys, then values)."""
        rows = self.prefix().to(dtype)
        kv = rows.view(self.num_tokens, self.layers, 2, self.heads, self.head_dim)
        return kv.permute(1, 2, 3, 0, 4).unsqueeze(2).expand(-1, -1, batch, -1, -1, -1)

    @forward_method
    def adapt_forward(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """Run ``module`` with the prefixes: as its cache (transformers) or in its attention (timm)."""
        if self.kind == "timm":
            return self._timm_forward(module, *args, **kwargs)
        return self._hf_forward(module, forward, args, kwargs)

    # -- transformers ----------------------------------------------------------------------------
    def _hf_forward(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        from transformers.cache_utils import DynamicCache

        if module.training and any(getattr(m, "gradient_checkpointing", False) for m in module.modules()):
            raise ValueError(
                "prefix tuning on a transformers model does not work with gradient "
                "checkpointing (checkpointed layers drop the cache that holds the prefixes); "
                "call gradient_checkpointing_disable(), as PEFT asks too"
            )
        params = list(inspect.signature(forward).parameters)
        call = dict(zip(params, args))
        call.update(kwargs)
        tokens = call.get("input_ids")
        if tokens is None:
            tokens = call.get("inputs_embeds")
        if tokens is None:
            raise ValueError("prefix tuning needs input_ids or inputs_embeds to size its prefixes")
        batch = tokens.shape[0]
        cache = call.get(self.cache_argument)
        if cache is None:
            cache = DynamicCache()
        if cache.get_seq_length() == 0:  # a fresh cache: put the prefixes in (a later step has them)
            dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
            kv = self.key_values(batch, dtype)
            for layer in range(self.layers):
                cache.update(kv[layer, 0], kv[layer, 1], layer)
        # positions count the prefixes, as PEFT's do: given ones (generate()'s) are counted without them
        if call.get("position_ids") is not None:
            call["position_ids"] = call["position_ids"] + self.num_tokens
        position = call.get("cache_position")
        if position is not None and position.numel():
            call["cache_position"] = position - position[0] + cache.get_seq_length()
        call[self.cache_argument] = cache
        mask = call.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError(
                f"prefix tuning extends a [batch, tokens] attention_mask by its "
                f"{self.num_tokens} prefixes; got one of shape {tuple(mask.shape)}"
            )
        if mask is not None:  # PEFT's rule: the prefixes are always visible
            ones = torch.ones(batch, self.num_tokens, dtype=mask.dtype, device=mask.device)
            call["attention_mask"] = torch.cat([ones, mask], dim=1)
        return forward(**call)

    # -- timm --------------------------------------------------------------------------------------
    def _timm_forward(
        self,
        module: nn.Module,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, _ = x.shape
        H, D = self.heads, self.head_dim
        gate = module.gate(x).sigmoid() if getattr(module, "gate", None) is not None else None
        q, k, v = module.qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = module.q_norm(q), module.k_norm(k)
        kv = self.key_values(B, q.dtype)[0]
        k = torch.cat([kv[0], k], dim=2)
        v = torch.cat([kv[1], v], dim=2)
        mask = _prefixed_mask(attn_mask, is_causal, N, self.num_tokens, q.device)
        if module.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=module.attn_drop.p if module.training else 0.0
            )
        else:
            attn = (q * module.scale) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else attn + mask
            x = module.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B, N, H * D)
        if getattr(module, "norm", None) is not None:  # timm's scale_norm (older versions have none)
            x = module.norm(x)
        if gate is not None:
            x = x * gate
        return module.proj_drop(module.proj(x))


def _prefixed_mask(
    mask: torch.Tensor | None, is_causal: bool, n: int, prefix: int, device: torch.device
) -> torch.Tensor | None:
    """An attention mask over ``prefix + n`` keys: the prefixes visible to every query, the rest as
    ``mask`` / ``is_causal`` say (bool: True attends; float: added to the scores)."""
    if is_causal:
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        mask = (
            causal
            if mask is None
            else (causal & mask if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf")))
        )
    if mask is None:
        return None
    lead = mask.shape[:-1] + (prefix,)
    visible = (
        torch.ones(lead, dtype=torch.bool, device=mask.device)
        if mask.dtype == torch.bool
        else torch.zeros(lead, dtype=mask.dtype, device=mask.device)
    )
    return torch.cat([visible, mask], dim=-1)

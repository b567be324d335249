"""LoRA: a low-rank update ``(alpha/r) * B @ A`` of a layer's weight, as an output hook or on the weight.

Two ways to place it, both written in the string at the layer's output point ``(layer){inout1}``:

- ``adapt_output`` (a forward hook): ``out + (alpha/r) * B(A(dropout(x)))``. The cheapest in training
  (rank-r products only) and the default; it needs the layer to be *called* (its hook must run) and its
  ``forward`` to be the plain ``F.linear``/``conv`` of its class.
- ``adapt_weight`` (a weight method): ``layer.weight`` reads ``W + (alpha/r) * B @ A`` wherever it is
  read — a layer whose parent reads its weight directly (``F.linear(x, qkv.weight)`` in BEiT, EVA-02,
  torchvision's Swin), a conv subclass with its own ``forward`` (timm's ``Conv2dSame``,
  ``ScaledStdConv2d``), ``nn.MultiheadAttention`` (``in_proj_weight``, and its ``out_proj``), or any
  named 2-D parameter (``param=``). Merged equals unmerged by construction.

``B`` is zeros and ``A`` Kaiming-uniform (``nn.Embedding``: ``A`` zeros and ``B`` ~ N(0, 1), as PEFT
starts it), so the layer is unchanged at attach. Layouts (``B @ A`` is
``[h, w]``): Linear ``[out, in]``; transformers ``Conv1D`` (GPT-2, weight ``[in, out]``) ``[out, in]``,
transposed onto the weight (PEFT's ``fan_in_fan_out``); ``nn.Embedding`` ``[dim, num]`` transposed, as
PEFT's ``lora_embedding_A [r, num]`` / ``lora_embedding_B [dim, r]``; convolutions use GIFt's "balanced"
factorization: the kernel ``[out, in/groups, k0, k1, ...]`` is seen as ``[out*k0, in/groups*k1*...]``
(Conv1d: ``[out, in/groups*k0]``), or with ``layout=peft`` PEFT's ``[out, in/groups*k0*k1*...]`` (so a
conv LoRA can go to PEFT and back; the same as balanced for Conv1d and 1x1 kernels).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AddinBase, PointInfo, weight_method
from .lora_grouped import check_grouped, grouped_branch, grouped_shapes, is_grouped_peft, peft_dora_delta
from .lora_kasa import check_kasa, kasa_loss, truncated
from .lora_mica import mica_init
from .lora_monteclora import MonteCLoRASampler, check_monteclora
from .lora_peft import LoraPeft
from .lora_variants import (BASE_MOVING_INITS, INITS, check_variant_settings, dora_norm, dora_view,
                            gaussian_init, lora_scaling, matrix_of, svd_init)
from .lora_velora import VeloraProjection, batch_projection, check_velora, initial_projection
from .registry import register_addin

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_HOOK_METHOD = "adapt_output"
WEIGHT_METHOD = "adapt_weight"


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): ``y = x @ W + b`` with ``W`` stored ``[in, out]``.

    Recognised by its class name and layout, so the core never imports transformers.
    """
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2
            and getattr(module, "nf", None) == module.weight.shape[1])


def _layout(module: nn.Module, param: str, peft_conv: bool = False,
            named: bool = False) -> tuple[int, int, bool]:
    """``(h, w, transposed)``: ``B @ A`` is ``[h, w]``; transposed when the weight is stored ``[w, h]``.
    ``peft_conv``: convolutions in PEFT's layout ``[out, in/groups*k0*k1*...]``. ``named``: ``param``
    was given explicitly, so a module of no known kind is adapted as a plain parameter."""
    known = isinstance(module, (nn.Linear, nn.Embedding) + _CONV) or is_hf_conv1d(module)
    if param != "weight" or isinstance(module, nn.MultiheadAttention) or (named and not known):
        weight = getattr(module, "_parameters", {}).get(param)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{type(module).__name__} has no parameter '{param}' for LoRA to adapt")
        if weight.dim() < 2:
            raise TypeError(f"LoRA adapts a matrix; '{param}' of {type(module).__name__} has shape "
                            f"{tuple(weight.shape)}")
        return weight.shape[0], math.prod(weight.shape[1:]), False
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    if is_hf_conv1d(module):
        return module.weight.shape[1], module.weight.shape[0], True
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, module.num_embeddings, True
    if isinstance(module, _CONV):
        out, in_per_group, *kernel = module.weight.shape
        if isinstance(module, nn.Conv1d) or peft_conv:
            return out, in_per_group * math.prod(kernel), False
        return out * kernel[0], in_per_group * math.prod(kernel[1:]), False
    raise TypeError(f"LoRA works on nn.Linear, nn.Conv1d/2d/3d, nn.Embedding, nn.MultiheadAttention and "
                    f"transformers Conv1D layers (or a named parameter with param=), not "
                    f"{type(module).__name__}")


def lora_shape(module: nn.Module, param: str = "weight") -> tuple[int, int]:
    """``(h, w)`` of the matrix LoRA factorizes for ``module``: ``B`` is ``[h, r]``, ``A`` is ``[r, w]``."""
    h, w, _ = _layout(module, param)
    return h, w


def default_param(module: nn.Module) -> str:
    """The parameter LoRA adapts on ``module``: ``in_proj_weight`` for MultiheadAttention, else ``weight``."""
    return "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"


def hook_problem(module: nn.Module) -> str | None:
    """Why the output hook cannot be right on ``module`` (so ``adapt_weight`` is needed), or None."""
    name = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        return "nn.MultiheadAttention computes with in_proj_weight; its output is not a plain tensor"
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "it is the out_proj of an nn.MultiheadAttention, which reads its weight without calling it"
    if isinstance(module, nn.Linear):
        return None  # Linear subclasses (timm's Linear, ...) compute F.linear(x, weight, bias)
    for base in (nn.Embedding,) + _CONV:
        if isinstance(module, base):
            if type(module).forward is not base.forward:
                return (f"{name} has its own forward (it transforms its input or weight before the "
                        f"{base.__name__} computation), so an update added to the output would not match")
            return None
    if is_hf_conv1d(module):
        return None
    return f"{name} is not a layer the output hook knows"


def check_lora_target(module: nn.Module, path: str = "") -> None:
    """Raise a clear error if LoRA cannot be placed on ``module`` at all."""
    _layout(module, default_param(module))
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        where = f" '{path}'" if path else ""
        raise TypeError(f"LoRA on nn.MultiheadAttention{where} needs equal query/key/value sizes "
                        f"(one in_proj_weight); adapt q_proj_weight/k_proj_weight/v_proj_weight with "
                        f"param=")


@register_addin
class LoRA(AddinBase):
    """Low-rank adaptation of a layer's weight.

    At the layer's output point, as an output hook (``adapt_output``) or on the weight itself
    (``adapt_weight``; see the module docstring for when each is right)::

        (LoRA.adapt_output, r=8, alpha=16): ...->(blocks[0:12].mlp.fc1){inout1}->...
        (LoRA.adapt_weight, r=8, alpha=16): ...->(blocks[0:12].attn.qkv){inout1}->...

    Settings: ``r`` (rank, default 8), ``alpha`` (scale numerator; default ``r``, i.e. a scale of 1 as
    in GIFt), ``dropout`` (on the LoRA branch's input, default 0; output hook only), ``param`` (the
    parameter ``adapt_weight`` adapts; default ``weight``, ``in_proj_weight`` on MultiheadAttention),
    ``layout`` (of a conv's update: balanced, GIFt's, the default; or peft, PEFT's, which Export PEFT
    needs).
    Parameters: ``lora_A`` ``[r, w]`` and ``lora_B`` ``[h, r]``. ``merge(module)`` folds
    ``(alpha/r) * B @ A`` into the weight (``Attachment.merge``).

    Variants (as PEFT computes them; ``addins/lora_variants.py``): ``rslora=true`` scales by
    ``alpha/sqrt(r)``; ``bias=true`` adds a trained bias on ``B`` (``lora_bias``, one per output channel;
    merged into the layer's bias); ``init=gaussian`` draws ``A ~ N(0, 1/r)``; ``init=pissa`` /
    ``init=olora`` start ``B @ A`` from the weight's top singular vectors / its QR decomposition and
    move that part out of the base weight (restored bit for bit at detach); ``dora=true`` is DoRA:
    a trained magnitude per output row (``lora_magnitude``, the row norms of the weight at attach)
    times the direction ``(W + delta) / ||W + delta||`` (the norm is not differentiated, as in PEFT).

    PEFT's newer variants, one at a time (each in its own module): ``init=mica`` (``lora_mica.py``:
    ``B`` from the weight's minor singular vectors, frozen; ``A`` zero);
    ``velora`` (VeLoRA, ``lora_velora.py``: A's gradient from a compressed input) with
    ``velora_groups`` (sub-tokens each input is cut into, default 64), ``velora_init`` (the projection:
    batch_average, batch_average_once or random) and ``velora_scale`` (scale of the rebuilt input, default 1);
    ``kasa`` (KaSA, ``lora_kasa.py``: drops the weight's r smallest singular components at attach, a trained
    diagonal between B and A) with ``kasa_beta`` (weight of the diagonal's L2 term in kasa_loss, default 1e-4)
    and ``kasa_gamma`` (weight of the orthogonality term in kasa_loss, default 1e-3);
    ``monteclora`` (MonteCLoRA, ``lora_monteclora.py``: a sampled mixture of noisy copies of A in training)
    with ``monteclora_samples`` (noisy copies mixed, default 8), ``monteclora_prior`` (Dirichlet prior of the
    mixture weights, default 0.1), ``monteclora_scaler`` (scale of the noise, default 1e-4),
    ``monteclora_kl`` (weight of the KL term in monteclora_loss, default 1e-5), ``monteclora_entropy``
    (add the mixture weights' entropy term) and ``monteclora_buffer`` (noise samples drawn at a time,
    default 150).
    """

    # LoRA rewrites the layer's output from its input; the generic ZhiJian methods make no sense here.
    adapt_input = None  # type: ignore[assignment]
    adapt_across_input = None  # type: ignore[assignment]
    adapt_across_output = None  # type: ignore[assignment]
    peft = LoraPeft()  # its Hugging Face PEFT form (addins/lora_peft.py)
    #: the values a text setting takes (the Studio's settings form offers them as a list)
    setting_choices = {"init": INITS, "layout": ("balanced", "peft")}

    def __init__(self, point: PointInfo, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
                 param: str | None = None, source_point: PointInfo | None = None, rslora: bool = False,
                 bias: bool = False, init: str = "kaiming", dora: bool = False,
                 layout: str = "balanced", velora: bool = False, velora_groups: int = 64,
                 velora_init: str = "batch_average", velora_scale: float = 1.0, kasa: bool = False,
                 kasa_beta: float = 1e-4, kasa_gamma: float = 1e-3, monteclora: bool = False,
                 monteclora_samples: int = 8, monteclora_prior: float = 0.1, monteclora_scaler: float = 1e-4,
                 monteclora_kl: float = 1e-5, monteclora_entropy: bool = False,
                 monteclora_buffer: int = 150) -> None:
        super().__init__()
        module = point.module
        if point.side != "post":
            raise ValueError(f"LoRA goes after its layer: write ({point.path}){{inout1}} with "
                             f"adapt_output or adapt_weight, not a point before it")
        if source_point is not None and (source_point.path, source_point.side) != (point.path, point.side):
            raise ValueError("LoRA is an {inout} add-in: its input is the layer's own input, so it "
                             "takes no separate {in} point")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(f"LoRA alpha must be a number, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
        if param is not None and (not isinstance(param, str) or not param.isidentifier()):
            raise ValueError(f"LoRA param must be a parameter name, got {param!r}")
        alpha_value = float(r if alpha is None else alpha)
        self.init = check_variant_settings(rslora, bias, init, dora)
        self.velora, self.kasa, self.monteclora = _check_exclusive(velora, kasa, monteclora, dora, bias,
                                                                   self.init)
        if monteclora:
            check_monteclora(monteclora_samples, monteclora_prior, monteclora_scaler, monteclora_kl,
                             monteclora_entropy, monteclora_buffer)
        if velora:
            self.velora_init = check_velora(velora_groups, velora_init, velora_scale)
            self.velora_groups, self.velora_scale = velora_groups, float(velora_scale)
        if kasa:
            check_kasa(kasa_beta, kasa_gamma)
            self.kasa_beta, self.kasa_gamma = float(kasa_beta), float(kasa_gamma)
        if param is None:
            check_lora_target(module, point.path)
        self.param = param or default_param(module)
        if layout not in ("balanced", "peft"):
            raise ValueError(f"LoRA layout must be balanced or peft, got {layout!r}")
        self.layout = layout
        # PEFT's grouped conv LoRA (addins/lora_grouped.py): a dense A conv and a grouped 1x1 B conv
        self.grouped = is_grouped_peft(module, layout, self.param)
        h, w, self.transposed = _layout(module, self.param, layout == "peft", named=param is not None)
        b_cols = r
        if self.grouped:
            check_grouped(module, r, self.init)
            (_, w), (h, b_cols) = grouped_shapes(module, r)
        weight = module._parameters[self.param]
        self.weight_shape = tuple(weight.shape)
        self.r = r
        self.alpha = alpha_value
        self.dropout = float(dropout)
        self.rslora = rslora
        self.dora = dora
        self.scaling = lora_scaling(r, self.alpha, rslora)
        self.is_conv = isinstance(module, _CONV) and self.param == "weight"
        self.is_embedding = isinstance(module, nn.Embedding) and self.param == "weight"
        self.hook_problem = hook_problem(module) if self.param == default_param(module) else \
            f"param={self.param!r} is adapted on the weight"
        self.lora_A = nn.Parameter(torch.empty(r, w, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(h, b_cols, dtype=weight.dtype, device=weight.device))
        _check_kind(self, module, param)
        if self.is_embedding and self.init in ("kaiming", "gaussian"):
            # PEFT's nn.Embedding LoRA (either init): A zeros, B ~ N(0, 1); B @ A is zero all the same
            nn.init.zeros_(self.lora_A)
            nn.init.normal_(self.lora_B)
        elif self.init == "gaussian":
            gaussian_init(self.lora_A, r)
        elif self.init == "mica":
            if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise ValueError(f"LoRA init=mica needs a float weight, not {weight.dtype}")
            with torch.no_grad():
                A, B = mica_init(matrix_of(weight.detach().float(), h, w, self.transposed), r)
                self.lora_A.copy_(A)
                self.lora_B.copy_(B)
            self.lora_B.requires_grad_(False)  # MiCA trains A only (PEFT freezes lora_B too)
        elif self.init in BASE_MOVING_INITS:
            if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise ValueError(f"LoRA init={self.init} needs a float weight, not {weight.dtype}")
            with torch.no_grad():
                A, B = svd_init(self.init, matrix_of(weight.detach().float(), h, w, self.transposed),
                                r, self.scaling)
                self.lora_A.copy_(A)
                self.lora_B.copy_(B)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if bias:
            if self.is_embedding or self.param != default_param(module) or \
                    isinstance(module, nn.MultiheadAttention):
                raise ValueError(f"LoRA bias=true adds to a layer's output: not on "
                                 f"{type(module).__name__} (param={self.param}); PEFT has no lora_bias there")
            channels = weight.shape[1] if self.transposed else weight.shape[0]
            self.lora_bias = nn.Parameter(torch.zeros(channels, dtype=weight.dtype, device=weight.device))
        if dora:
            with torch.no_grad():
                base = weight.detach() - self.delta() if self.moves_base else weight.detach()
                norm = dora_norm(base + self._norm_delta().to(weight.dtype), self.transposed)
            self.lora_magnitude = nn.Parameter(norm.clone())
        if kasa:
            truncated(weight, r)  # refuses r >= min(out, in) here, before attach changes anything
            self.lora_diag = nn.Parameter(torch.randn(r, dtype=weight.dtype, device=weight.device))
        if velora:
            v, self.velora_ready = initial_projection(w, velora_groups, self.velora_init, weight)
            self.register_buffer("lora_velora_embed", v)
        if monteclora:
            self.lora_monteclora = MonteCLoRASampler(w, r, monteclora_samples, monteclora_prior,
                                                     monteclora_scaler, monteclora_kl, monteclora_entropy,
                                                     monteclora_buffer, weight)

    @property
    def moves_base(self) -> bool:
        """Whether attach moves part of the base weight into the adapter (PiSSA/OLoRA): the engine then
        snapshots the layer's parameters before :meth:`move_base` and restores them at detach."""
        return self.init in BASE_MOVING_INITS or self.kasa

    def move_base(self, module: nn.Module) -> None:
        """PiSSA/OLoRA: leave the residual ``W - scaling * B @ A`` in the base weight; KaSA: drop the
        weight's ``r`` smallest singular components (called once, at attach, before any training or
        loading)."""
        if self.kasa:
            weight = module._parameters[self.param]
            weight.copy_(truncated(weight, self.r))
        elif self.moves_base:
            weight = module._parameters[self.param]
            weight.copy_((weight.float() - self.delta().float()).to(weight.dtype))

    def merge_problem(self, module: nn.Module) -> str | None:
        """Why :meth:`merge` cannot fold this LoRA into ``module``, or None."""
        if self.grouped:
            return (f"a LoRA on a grouped convolution (groups={module.groups}) in PEFT's layout is not an "
                    f"update of the layer's weight (its A conv mixes all input channels), so it cannot be "
                    f"folded in (PEFT refuses this merge too)")
        if hasattr(self, "lora_bias") and getattr(module, "bias", None) is None:
            return ("LoRA bias=true cannot be merged: the layer has no bias to fold it into (PEFT "
                    "refuses this merge too)")
        return None

    def extra_repr(self) -> str:
        param = "" if self.param == "weight" else f", param={self.param}"
        for flag in ("rslora", "dora", "velora", "kasa", "monteclora"):
            if getattr(self, flag):
                param += f", {flag}=true"
        if hasattr(self, "lora_bias"):
            param += ", bias=true"
        if self.init != "kaiming":
            param += f", init={self.init}"
        if self.layout != "balanced":
            param += f", layout={self.layout}"
        return (f"r={self.r}, alpha={self.alpha:g}, dropout={self.dropout:g}{param}, "
                f"A={tuple(self.lora_A.shape)}, B={tuple(self.lora_B.shape)}")

    def check_method(self, method: str) -> None:
        """Called by the engine at attach: refuse a method that could not be right here."""
        if method == _HOOK_METHOD and self.hook_problem:
            raise ValueError(f"the output hook cannot adapt this layer: {self.hook_problem}; use "
                             f"{WEIGHT_METHOD}, which adapts the weight wherever it is read")
        if method == WEIGHT_METHOD and self.grouped:
            raise ValueError("a LoRA on a grouped convolution in PEFT's layout is not an update of the "
                             "weight: use adapt_output (or layout=balanced)")
        if method == WEIGHT_METHOD and (self.velora or self.monteclora):
            raise ValueError(f"{'velora' if self.velora else 'monteclora'}=true acts on the LoRA branch in "
                             f"training, which adapt_weight does not have: use adapt_output")
        if method == WEIGHT_METHOD and self.dropout:
            raise ValueError("dropout acts on the LoRA branch's input, which adapt_weight does not "
                             "have: use adapt_output or dropout=0")
        if method == WEIGHT_METHOD and hasattr(self, "lora_bias"):
            raise ValueError("LoRA bias=true adds to the layer's output, which adapt_weight does not "
                             "change: use adapt_output or bias=false")

    def weight_param(self, module: nn.Module) -> str:
        """The parameter :meth:`adapt_weight` adapts."""
        return self.param

    def delta(self) -> torch.Tensor:
        """``(alpha/r) * B @ A`` in the shape of the adapted weight."""
        if self.grouped:
            raise ValueError("a LoRA on a grouped convolution in PEFT's layout has no weight update "
                             "(see addins/lora_grouped.py)")
        B = self.lora_B * self.lora_diag if self.kasa else self.lora_B
        d = (B @ self.lora_A).mul(self.scaling)
        if self.transposed:
            d = d.t()
        return d.reshape(self.weight_shape)

    def delta_weight(self, module: nn.Module | None = None) -> torch.Tensor:
        """The update in the weight's shape (``module`` is accepted for compatibility)."""
        return self.delta()

    def _norm_delta(self) -> torch.Tensor:
        """What DoRA's norm adds to the weight: :meth:`delta`, or PEFT's matrix for a grouped conv."""
        if self.grouped:
            return peft_dora_delta(self.lora_A, self.lora_B, self.weight_shape, self.scaling)
        return self.delta()

    def _dora_scale(self, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """DoRA's ``magnitude / ||W + delta||`` per output row (the norm not differentiated)."""
        norm = dora_norm(weight + delta.detach().to(weight.dtype), self.transposed).detach()
        return self.lora_magnitude / norm

    def _bias_term(self, outputs: torch.Tensor) -> torch.Tensor:
        b = self.lora_bias * self.scaling
        return b.view(-1, *([1] * (outputs.dim() - 2))) if self.is_conv else b

    def forward(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """The LoRA branch alone: ``(alpha/r) * B(A(dropout(x)))`` (``module`` is needed for convs)."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        return self._branch(x, module)

    def _branch(self, x: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        """``scaling * B(A(x))`` (+ ``scaling * lora_bias``) of an already dropped-out input."""
        if self.is_conv:
            if module is None:
                raise ValueError("a conv LoRA needs its base module to run")
            out = self._conv_branch(module, x)
        else:
            h = self._embed(x, module) if self.is_embedding else F.linear(x, self.lora_A)
            if self.scaling != 1.0:
                h = h * self.scaling  # cheapest place for the scale: the rank-r tensor
            out = F.linear(h, self.lora_B)
        return out + self._bias_term(out) if hasattr(self, "lora_bias") else out

    def _conv_branch(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grouped:
            return grouped_branch(module, self.lora_A, self.lora_B, x) * self.scaling
        return module._conv_forward(x, self.delta(), None)

    def _embed(self, x: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        if module is None:
            return F.embedding(x, self.lora_A.t())
        # dense gradients even for a sparse=True layer: A is a transposed view, which takes no sparse one
        return F.embedding(x, self.lora_A.t(), module.padding_idx, module.max_norm, module.norm_type,
                           module.scale_grad_by_freq, False)

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        if self.dora or hasattr(self, "lora_bias"):
            return self._adapt_output_variant(module, inputs[0], outputs)
        if self.velora or self.kasa or self.monteclora:
            return self._adapt_output_peft_variant(inputs[0], outputs)
        x = inputs[0]
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.is_conv:
            return outputs + self._conv_branch(module, x)
        h = self._embed(x, module) if self.is_embedding else F.linear(x, self.lora_A)
        if outputs.dim() >= 2 and outputs.is_contiguous():
            # one fused kernel for "outputs + scaling * h @ B^T": every extra op costs a thread sync
            n = outputs.shape[-1]
            return torch.addmm(outputs.reshape(-1, n), h.reshape(-1, self.r), self.lora_B.t(),
                               alpha=self.scaling).view(outputs.shape)
        if self.scaling != 1.0:
            h = h * self.scaling
        return outputs + F.linear(h, self.lora_B)

    def _adapt_output_peft_variant(self, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """The output hook with VeLoRA, KaSA or MonteCLoRA, in PEFT's order of operations."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.velora and self.training and torch.is_grad_enabled():
            if self.velora_init != "random" and not (self.velora_init == "batch_average_once"
                                                     and self.velora_ready):
                v = batch_projection(x, self.velora_groups)
                self.lora_velora_embed.copy_(v.to(self.lora_velora_embed.dtype))
                self.velora_ready = True
            h = VeloraProjection.apply(x, self.lora_A, self.lora_velora_embed, self.velora_groups,
                                       self.velora_scale)
        elif self.monteclora and self.training:
            h = F.linear(x, self.lora_monteclora.sampled_A(self.lora_A))
        else:
            h = F.linear(x, self.lora_A)
        if self.kasa:
            h = h * self.lora_diag
        return outputs + F.linear(h, self.lora_B) * self.scaling

    def kasa_loss(self) -> torch.Tensor:
        """KaSA's regularizer for this layer (``kasa_beta``/``kasa_gamma``; add it to the training loss,
        as PEFT's ``_get_kasa_loss``); zero without ``kasa=true``."""
        if not self.kasa:
            return self.lora_A.new_zeros(())
        return kasa_loss(self.lora_A, self.lora_B, self.lora_diag, self.kasa_beta, self.kasa_gamma)

    def monteclora_loss(self) -> torch.Tensor:
        """MonteCLoRA's variational loss for this layer from its last training forward (add the mean over
        layers to the training loss, as PEFT's ``_get_monteclora_loss``); zero in eval mode or without
        ``monteclora=true``."""
        if not self.monteclora:
            return self.lora_A.new_zeros(())
        return self.lora_monteclora.variational_loss()

    def _adapt_output_variant(self, module: nn.Module, x: torch.Tensor,
                              outputs: torch.Tensor) -> torch.Tensor:
        """The output hook with a LoRA bias and/or DoRA (PEFT's ``DoraLinearLayer.forward``)."""
        dropped = self.dropout and self.training
        if dropped:
            x = F.dropout(x, self.dropout, True)  # one mask for the branch and (DoRA) the base
        branch = self._branch(x, module)
        if not self.dora:
            return outputs + branch
        weight = module._parameters[self.param]
        scale = self._dora_scale(weight, self._norm_delta())
        if self.is_conv:
            scale = scale.view(-1, *([1] * (outputs.dim() - 2)))
        if dropped:  # PEFT recomputes the base output from the dropped-out input
            base = self._base_without_bias(module, x, weight)
        else:
            bias = getattr(module, "bias", None)
            base = outputs
            if isinstance(bias, torch.Tensor):
                base = outputs - (bias.view(-1, *([1] * (outputs.dim() - 2))) if self.is_conv else bias)
        return outputs + (scale - 1) * base + scale * branch

    def _base_without_bias(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            return module._conv_forward(x, weight, None)
        if self.transposed and not self.is_embedding:  # transformers Conv1D: x @ W
            return x @ weight
        return F.linear(x, weight)

    @weight_method()
    def adapt_weight(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with: ``W + (alpha/r) * B @ A`` (DoRA: rescaled per row)."""
        delta = self.delta().to(weight.dtype)
        if self.dora:
            scale = self._dora_scale(weight, delta)
            return dora_view(scale, weight.dim(), self.transposed) * (weight + delta)
        return weight + delta

    @property
    def merge_adds(self) -> bool:
        """Whether :meth:`merge` adds to the stored weight what the hook adds to the output (not DoRA)."""
        return not self.dora

    def merge(self, module: nn.Module) -> None:
        """Fold the update into the stored weight (and a LoRA bias into the layer's bias); the
        Attachment snapshots the layer's parameters first and restores them on unmerge."""
        problem = self.merge_problem(module)
        if problem:
            raise ValueError(problem)
        weight = module._parameters[self.param]
        if self.dora:
            weight.copy_(self.adapt_weight(module, weight))
        else:
            weight.add_(self.delta().to(weight.dtype))
        if hasattr(self, "lora_bias"):
            module.bias.add_((self.lora_bias * self.scaling).to(module.bias.dtype))


def _check_exclusive(velora: object, kasa: object, monteclora: object, dora: bool, bias: bool,
                     init: str) -> tuple[bool, bool, bool]:
    """VeLoRA, KaSA, MonteCLoRA, MiCA and DoRA are alternatives (PEFT resolves one variant per layer)."""
    for name, value in (("velora", velora), ("kasa", kasa), ("monteclora", monteclora)):
        if not isinstance(value, bool):
            raise ValueError(f"LoRA {name} must be true or false, got {value!r}")
    chosen = [n for n, on in (("dora=true", dora), ("velora=true", velora), ("kasa=true", kasa),
                              ("monteclora=true", monteclora), ("init=mica", init == "mica")) if on]
    if len(chosen) > 1:
        raise ValueError(f"LoRA {chosen[0]} cannot be combined with {chosen[1]} (PEFT has one variant per "
                         f"layer)")
    if bias and (velora or kasa or monteclora):
        raise ValueError(f"LoRA bias=true cannot be combined with {chosen[0]}")
    return bool(velora), bool(kasa), bool(monteclora)


def _check_kind(lora: LoRA, module: nn.Module, param: str | None) -> None:
    """Where PEFT has VeLoRA and MonteCLoRA (Linear-like layers), KaSA (nn.Linear) and MiCA (not convs)."""
    kind = type(module).__name__
    for flag, name in (("velora", "VeLoRA"), ("monteclora", "MonteCLoRA")):
        if getattr(lora, flag) and (lora.is_conv or lora.is_embedding or param is not None
                                    or not (isinstance(module, nn.Linear) or is_hf_conv1d(module))):
            raise ValueError(f"LoRA {flag}=true works on nn.Linear and transformers Conv1D layers (as PEFT's "
                             f"{name}), not on {kind}" + (f" (param={param})" if param else ""))
    if lora.kasa and (not isinstance(module, nn.Linear) or lora.param != "weight"):
        raise ValueError(f"LoRA kasa=true works on nn.Linear weights (as PEFT's KaSA), not on {kind}"
                         + (f" (param={param})" if param else ""))
    if lora.init == "mica" and lora.is_conv:
        raise ValueError(f"LoRA init=mica works on Linear, Embedding and transformers Conv1D layers (as "
                         f"PEFT's MiCA), not on {kind}")

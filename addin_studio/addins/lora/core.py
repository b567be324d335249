"""LoRA: a low-rank update ``(alpha/r) * B @ A`` of a layer's weight, as an output hook or on the weight.

Two ways to place it, both written in the string at the layer's output point ``(layer){inout1}``:

- ``adapt_output`` (a forward hook): ``out + (alpha/r) * B(A(dropout(x)))``. The cheapest in training
  (rank-r products only) and the default; it needs the layer to be *called* (its hook must run) and its
  ``forward`` to be the plain ``F.linear``/``conv`` of its class.
- ``adapt_weight`` (a weight method): ``layer.weight`` reads ``W + (alpha/r) * B @ A`` wherever it is
  read — a layer whose parent reads its weight directly (``F.linear(x, qkv.weight)`` in BEiT, EVA-02,
  torchvision's Swin), a conv subclass with its own ``forward`` (timm's ``Conv2dSame``,
  ``ScaledStdConv2d``), ``nn.MultiheadAttention`` (``in_proj_weight``, and its ``out_proj``), or any
  named 2-D parameter (``param=``), or a 3-D stack of expert matrices (``param=`` on a mixture-of-experts
  module's fused weights: one update per expert, as PEFT's ``target_parameters``; ``experts.py``).
  Merged equals unmerged by construction.

``B`` is zeros and ``A`` Kaiming-uniform (``nn.Embedding``: ``A`` zeros and ``B`` ~ N(0, 1), as PEFT
starts it), so the layer is unchanged at attach. ``layout.py`` holds where LoRA applies (layer kinds, the
``[h, w]`` matrix it factorizes on each, ``layout=peft``); ``variant.py`` the variant object each LoRA
has (plain LoRA, or one of ``bias.py``, ``dora.py``, ``velora.py``, ``kasa.py``, ``monteclora.py``,
``mica.py``), which this class calls and never branches on.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import is_computed, peek_weight, write_weight
from ..base import AddinBase, PointInfo, weight_method
from ..registry import register_addin
from .experts import EXPERT_INITS, expert_delta, expert_dims, expert_transposed, is_expert_param
from .grouped import check_grouped, grouped_branch, grouped_shapes, is_grouped_peft
from .inits import INITS
from .layout import (
    CONVS,
    HOOK_METHOD,
    WEIGHT_METHOD,
    check_lora_target,
    default_param,
    hook_problem,
    matrix_layout,
)
from .peft import LoraPeft
from .variant import LISTENERS, LoraVariant, exposed_names, make_variant, variant_settings


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

    Variants (as PEFT computes them; one per LoRA, chosen from its settings at construction: ``variant``,
    a :class:`~addin_studio.addins.lora.variant.LoraVariant`): ``rslora=true`` scales by
    ``alpha/sqrt(r)``; ``init=gaussian`` draws ``A ~ N(0, 1/r)``; ``init=pissa`` / ``init=olora`` start
    ``B @ A`` from the weight's top singular vectors / its QR decomposition and move that part out of the
    base weight (restored bit for bit at detach); ``bias=true`` (``lora/bias.py``) adds a trained bias on
    ``B`` (``lora_bias``; merged into the layer's bias); ``dora=true`` (``lora/dora.py``) is DoRA, a
    trained magnitude per output row (``lora_magnitude``) times the direction ``(W + delta) /
    ||W + delta||``; ``init=mica`` (``lora/mica.py``), ``velora=true`` (``lora/velora.py``),
    ``kasa=true`` (``lora/kasa.py``) and ``monteclora=true`` (``lora/monteclora.py``) are PEFT's newer
    variants, each with its own settings (listed in the settings form). Reading ``lora.dora``,
    ``lora.init``, ``lora.kasa_beta``, ... gives the variant's settings, as before the variants split.
    """

    # LoRA rewrites the layer's output from its input (or its weight); the generic ZhiJian methods make
    # no sense here, so it does not offer them
    offers = ("adapt_output", "adapt_weight")
    peft = LoraPeft()  # its Hugging Face PEFT form (addins/lora/peft.py)
    #: the values a text setting takes (the Studio's settings form offers them as a list)
    setting_choices = {"init": INITS, "layout": ("balanced", "peft")}
    variant: LoraVariant

    def __init__(
        self,
        point: PointInfo,
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        param: str | None = None,
        source_point: PointInfo | None = None,
        layout: str = "balanced",
        **variant: Any,
    ) -> None:
        super().__init__()
        module = point.module
        if point.side != "post":
            raise ValueError(
                f"LoRA goes after its layer: write ({point.path}){{inout1}} with "
                f"adapt_output or adapt_weight, not a point before it"
            )
        if source_point is not None and (source_point.path, source_point.side) != (point.path, point.side):
            raise ValueError(
                "LoRA is an {inout} add-in: its input is the layer's own input, so it "
                "takes no separate {in} point"
            )
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(f"LoRA alpha must be a number, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
        if param is not None and (not isinstance(param, str) or not param.isidentifier()):
            raise ValueError(f"LoRA param must be a parameter name, got {param!r}")
        self.variant = make_variant(variant)  # chosen once: every variant-specific step below is its
        if param is None:
            check_lora_target(module, point.path)
        self.param = param or default_param(module)
        if layout not in ("balanced", "peft"):
            raise ValueError(f"LoRA layout must be balanced or peft, got {layout!r}")
        self.layout = layout
        # PEFT's grouped conv LoRA (lora/grouped.py): a dense A conv and a grouped 1x1 B conv
        self.grouped = is_grouped_peft(module, layout, self.param)
        #: experts in a 3-D expert parameter (``experts.py``), else 0
        self.experts = 0
        if param is not None and is_expert_param(module, self.param):
            self.experts, h, w = expert_dims(module, module._parameters[self.param])
            self.transposed = expert_transposed(module)
            self._check_experts()
        else:
            h, w, self.transposed = matrix_layout(
                module, self.param, layout == "peft", named=param is not None
            )
        b_cols = r * max(self.experts, 1)
        if self.grouped:
            check_grouped(module, r, self.variant.init)
            (_, w), (h, b_cols) = grouped_shapes(module, r)
        # a parametrized weight: what the layer computes with (read without moving spectral_norm's buffers)
        weight = module._parameters.get(self.param)
        if weight is None:
            weight = peek_weight(module, self.param)
        if self.variant.moves_base and is_computed(module, self.param):
            raise ValueError(
                f"LoRA {self.variant.describe()[-1]} moves part of the weight out of the base "
                f"layer, but '{point.path}.{self.param}' is computed (parametrized: "
                f"weight_norm, spectral_norm, ...), not stored; use init=kaiming or gaussian"
            )
        self.weight_shape = tuple(weight.shape)
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.dropout = float(dropout)
        self.scaling = self.variant.scaling(r, self.alpha)
        self.is_conv = isinstance(module, CONVS) and self.param == "weight"
        self.is_embedding = isinstance(module, nn.Embedding) and self.param == "weight"
        self.hook_problem = (
            hook_problem(module)
            if self.param == default_param(module)
            else f"param={self.param!r} is adapted on the weight"
        )
        self.lora_A = nn.Parameter(
            torch.empty(r * max(self.experts, 1), w, dtype=weight.dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(torch.zeros(h, b_cols, dtype=weight.dtype, device=weight.device))
        self.variant.check_target(self, module, param)
        self.variant.init_factors(self, weight, h, w)
        self.variant.add_parameters(self, module, weight, w)

    def _check_experts(self) -> None:
        """Refuse what PEFT's expert LoRA (``ParamWrapper``) does not compute: variants, base-weight inits."""
        what = f"LoRA on the expert weights '{self.param}' (one update per expert)"
        if type(self.variant) is not LoraVariant:
            raise ValueError(
                f"{what} is plain LoRA (rslora allowed), as PEFT's target_parameters; not "
                f"{self.variant.label()}"
            )
        if self.variant.init not in EXPERT_INITS:
            raise ValueError(
                f"{what} starts from init={' or init='.join(EXPERT_INITS)}, not init={self.variant.init}"
            )

    @property
    def moves_base(self) -> bool:
        """Whether attach moves part of the base weight into the adapter (PiSSA/OLoRA, KaSA): the engine
        then snapshots the layer's parameters before :meth:`move_base` and restores them at detach."""
        return self.variant.moves_base

    def move_base(self, module: nn.Module) -> None:
        """Take the variant's part out of the base weight (called once, at attach, before any training
        or loading)."""
        self.variant.move_base(self, module)

    def merge_problem(self, module: nn.Module) -> str | None:
        """Why :meth:`merge` cannot fold this LoRA into ``module``, or None."""
        if self.grouped:
            return (
                f"a LoRA on a grouped convolution (groups={module.groups}) in PEFT's layout is not an "
                f"update of the layer's weight (its A conv mixes all input channels), so it cannot be "
                f"folded in (PEFT refuses this merge too)"
            )
        return self.variant.merge_problem(self, module)

    def extra_repr(self) -> str:
        settings = ([] if self.param == "weight" else [f"param={self.param}"]) + self.variant.describe()
        if self.experts:
            settings.append(f"experts={self.experts}")
        if self.layout != "balanced":
            settings.append(f"layout={self.layout}")
        param = "".join(f", {s}" for s in settings)
        return (
            f"r={self.r}, alpha={self.alpha:g}, dropout={self.dropout:g}{param}, "
            f"A={tuple(self.lora_A.shape)}, B={tuple(self.lora_B.shape)}"
        )

    def check_method(self, method: str) -> None:
        """Called by the engine at attach: refuse a method that could not be right here."""
        if method == HOOK_METHOD and self.hook_problem:
            raise ValueError(
                f"the output hook cannot adapt this layer: {self.hook_problem}; use "
                f"{WEIGHT_METHOD}, which adapts the weight wherever it is read"
            )
        if method != WEIGHT_METHOD:
            return
        if self.grouped:
            raise ValueError(
                "a LoRA on a grouped convolution in PEFT's layout is not an update of the "
                "weight: use adapt_output (or layout=balanced)"
            )
        problem = self.variant.weight_method_problem(self)
        if problem:
            raise ValueError(problem)
        if self.dropout:
            raise ValueError(
                "dropout acts on the LoRA branch's input, which adapt_weight does not "
                "have: use adapt_output or dropout=0"
            )

    def weight_param(self, module: nn.Module) -> str:
        """The parameter :meth:`adapt_weight` adapts."""
        return self.param

    def delta(self) -> torch.Tensor:
        """``(alpha/r) * B @ A`` in the shape of the adapted weight."""
        if self.grouped:
            raise ValueError(
                "a LoRA on a grouped convolution in PEFT's layout has no weight update "
                "(see addins/lora/grouped.py)"
            )
        if self.experts:
            return expert_delta(self.lora_A, self.lora_B, self.experts, self.transposed).mul(self.scaling)
        d = self.variant.product(self).mul(self.scaling)
        if self.transposed:
            d = d.t()
        return d.reshape(self.weight_shape)

    def delta_weight(self, module: nn.Module | None = None) -> torch.Tensor:
        """The update in the weight's shape (``module`` is accepted for compatibility)."""
        return self.delta()

    def forward(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """The LoRA branch alone: ``(alpha/r) * B(A(dropout(x)))`` (``module`` is needed for convs)."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        return self.branch(x, module)

    def branch(self, x: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        """``scaling * B(A(x))`` of an already dropped-out input (+ what the variant adds: ``lora_bias``)."""
        if self.is_conv:
            if module is None:
                raise ValueError("a conv LoRA needs its base module to run")
            out = self._conv_branch(module, x)
        else:
            h = self._embed(x, module) if self.is_embedding else F.linear(x, self.lora_A)
            if self.scaling != 1.0:
                h = h * self.scaling  # cheapest place for the scale: the rank-r tensor
            out = F.linear(h, self.lora_B)
        return self.variant.finish_branch(self, out)

    def _conv_branch(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grouped:
            return grouped_branch(module, self.lora_A, self.lora_B, x) * self.scaling
        return module._conv_forward(x, self.delta(), None)

    def _embed(self, x: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        if module is None:
            return F.embedding(x, self.lora_A.t())
        # dense gradients even for a sparse=True layer: A is a transposed view, which takes no sparse one
        return F.embedding(
            x,
            self.lora_A.t(),
            module.padding_idx,
            module.max_norm,
            module.norm_type,
            module.scale_grad_by_freq,
            False,
        )

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        """The output hook: ``outputs`` plus the update, as the variant computes it."""
        return self.variant.adapt_output(self, module, inputs[0], outputs)

    def plain_output(self, module: nn.Module, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """Plain LoRA's output hook: ``outputs + scaling * B(A(dropout(x)))``."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        if self.is_conv:
            return outputs + self._conv_branch(module, x)
        h = self._embed(x, module) if self.is_embedding else F.linear(x, self.lora_A)
        if outputs.dim() >= 2 and outputs.is_contiguous():
            # one fused kernel for "outputs + scaling * h @ B^T": every extra op costs a thread sync
            n = outputs.shape[-1]
            return torch.addmm(
                outputs.reshape(-1, n), h.reshape(-1, self.r), self.lora_B.t(), alpha=self.scaling
            ).view(outputs.shape)
        if self.scaling != 1.0:
            h = h * self.scaling
        return outputs + F.linear(h, self.lora_B)

    def variant_loss(self, name: str | None = None) -> torch.Tensor:
        """The variant's regularizer for this layer (KaSA's, MonteCLoRA's; add it to the training loss);
        zero for a variant without one, or when ``name`` is not this LoRA's variant."""
        if name is not None and name != (self.variant.switch.name if self.variant.switch else None):
            return self.lora_A.new_zeros(())
        return self.variant.loss(self)

    def kasa_loss(self) -> torch.Tensor:
        """KaSA's regularizer for this layer (``kasa_beta``/``kasa_gamma``; add it to the training loss,
        as PEFT's ``_get_kasa_loss``); zero without ``kasa=true``."""
        return self.variant_loss("kasa")

    def monteclora_loss(self) -> torch.Tensor:
        """MonteCLoRA's variational loss for this layer from its last training forward (add the mean over
        layers to the training loss, as PEFT's ``_get_monteclora_loss``); zero in eval mode or without
        ``monteclora=true``."""
        return self.variant_loss("monteclora")

    @weight_method()
    def adapt_weight(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with: ``W + (alpha/r) * B @ A`` (DoRA: rescaled per row)."""
        return self.variant.adapt_weight(self, weight, self.delta().to(weight.dtype))

    @property
    def merge_adds(self) -> bool:
        """Whether :meth:`merge` adds to the stored weight what the hook adds to the output (not DoRA)."""
        return self.variant.merge_adds

    def merge(self, module: nn.Module) -> None:
        """Fold the update into the stored weight (the variant's rule: DoRA rescales, a LoRA bias goes into
        the layer's bias); the Attachment snapshots the layer's parameters first and restores them on
        unmerge."""
        problem = self.merge_problem(module)
        if problem:
            raise ValueError(problem)
        if not is_computed(module, self.param):
            self.variant.merge(self, module, module._parameters[self.param])
            return
        # a parametrized weight: merge into its value, then write that back through the parametrization
        # (engine/weights.write_weight: exact or refused)
        weight = peek_weight(module, self.param).clone()
        self.variant.merge(self, module, weight)
        write_weight(module, self.param, weight)


def publish_settings(cls: type = LoRA) -> None:
    """Give ``LoRA`` its public signature and settings help: the core settings of ``__init__`` and, as
    keywords, every registered variant's (the engine checks config strings against it; the Studio builds
    its settings form from it). Called again whenever a variant is registered."""
    init = cls.__dict__["__init__"]
    if "_core_signature" not in init.__dict__:  # the signature as written, before any publishing
        init._core_signature = inspect.signature(init)
    core = [p for p in init._core_signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [
        inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default, annotation=s.annotation)
        for s in variant_settings()
    ]
    init.__signature__ = inspect.Signature(core + extra)
    for name in exposed_names():  # lora.dora, lora.init, lora.kasa_beta, ... as before the variants split
        if name not in cls.__dict__:
            setattr(cls, name, _setting_reader(name))
    init.__doc__ = "Variant settings (one variant per LoRA; see ``addins/lora/variant.py``):\n\n" + "\n".join(
        f"    {s.name}: {s.help}" for s in variant_settings()
    )


def _setting_reader(name: str) -> property:
    def read(self: LoRA) -> Any:
        exposed = self.variant.exposed()
        if name not in exposed:
            raise AttributeError(
                f"this LoRA's variant ({type(self.variant).__name__}) has no setting '{name}'"
            )
        return exposed[name]

    return property(read, doc=f"The variant's ``{name}`` setting (read-only).")


LISTENERS.append(publish_settings)
publish_settings()

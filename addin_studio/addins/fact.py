"""FacT (Jie & Deng, AAAI 2023): factor tuning with factors shared by every adapted layer.

FacT sees the weight increments of all adapted layers as one tensor of ``d x d`` slabs (a ViT-B's
qkv is 3 slabs, proj 1, fc1 and fc2 4 each: 12 per block) and factorises it. Every slab is
``V @ S_k @ U``: ``U`` (``r x d``) and ``V`` (``d x r``) are shared by all layers, the ``r x r`` core
``S_k`` is the slab's own in FacT-TT and ``C x_3 p_k`` (a shared ``r x r x r`` tensor ``C`` times the
slab's coefficient vector ``p_k``) in FacT-TK. Parameters: ``2dr + 12 L r^2`` (TT) and
``2dr + r^3 + 12 L r`` (TK) for ``L`` blocks.

In the engine each placement gets its own add-in; those of one ``attach`` with the same kind, width
``d`` and rank ``r`` find the same factors (:func:`shared_factors`) through the ``shared`` dict the engine
passes, so ``U``, ``V`` (and ``C``) are one set of Parameters registered in every placement's add-in
(tied: counted once by ``parameters()``, written once by ``att.save``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .weights import is_computed, peek_weight, write_weight
from ._sizing import positive_int
from .base import AddinBase, PointInfo, weight_method
from .registry import register_addin

KINDS = ("tt", "tk")


def shared_factors(
    kind: str, width: int, r: int, like: torch.Tensor | None = None
) -> dict[str, nn.Parameter]:
    """New factors for one group of FacT placements: ``u`` (``r x d``, ``nn.Linear``'s default init),
    ``v`` (``d x r``, zeros: every placement starts as an identity) and, for FacT-TK, the core tensor
    ``c`` (``r x r x r``, Xavier-uniform); on the device and in the dtype of ``like`` (a layer's weight)."""
    kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    u = torch.empty(r, width, **kw)
    nn.init.kaiming_uniform_(u, a=math.sqrt(5))
    factors = {"u": nn.Parameter(u), "v": nn.Parameter(torch.zeros(width, r, **kw))}
    if kind == "tk":
        factors["c"] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(r, r, r, **kw)))
    return factors


def _number(value: object, name: str, low: float, high: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
        or (high is not None and value >= high)
    ):
        span = f"in [{low:g}, {high:g})" if high is not None else "a finite number"
        raise ValueError(f"FacT {name} must be {span}, got {value!r}")
    return float(value)


class FacT(AddinBase):
    """FacT on an ``nn.Linear`` layer: adds ``scale * V(drop(S(U(x))))`` slab by slab to its output.

    Use the registered names :class:`FacT_tt` or :class:`FacT_tk` (ZhiJian's). Settings: ``r`` (the
    rank of the shared factors, default 8), ``scale`` (default 1.0; the paper tunes it per task),
    ``dropout`` (on the core's output, default 0.1 as the paper), ``width`` (the slab width
    ``d``; default the smaller of the layer's in/out features, which must both be multiples of it).
    ZhiJian's ``fact_tt_dim`` / ``fact_tk_dim`` is the rank ``r`` here.
    """

    kind: ClassVar[str] = ""
    offers = ("adapt_output", "adapt_weight")  # the methods a string may name

    def __init__(
        self,
        point: PointInfo,
        shared: dict[Any, Any] | None = None,
        r: int = 8,
        scale: float = 1.0,
        dropout: float = 0.1,
        width: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if self.kind not in KINDS:
            raise TypeError(f"{name}: use FacT_tt or FacT_tk (kind {self.kind!r} is not one of {KINDS})")
        module = point.module
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name} adapts nn.Linear layers; '{point.path}' is {type(module).__name__}")
        positive_int(r, "r", name)
        self.scale = _number(scale, "scale", -math.inf)
        p = _number(dropout, "dropout", 0.0, 1.0)
        fan_in, fan_out = module.in_features, module.out_features
        d = min(fan_in, fan_out) if width is None else positive_int(width, "width", name)
        if fan_in % d or fan_out % d:
            raise ValueError(
                f"{name} shares factors of width {d} across layers, but '{point.path}' "
                f"(Linear {fan_in} -> {fan_out}) is not made of {d}x{d} slabs: "
                f"set width= to one "
                f"that divides both"
            )
        self.width, self.r, self.slabs_in, self.slabs_out = d, r, fan_in // d, fan_out // d
        self.group_key = ("FacT", self.kind, d, r)
        store = shared if shared is not None else {}
        if self.group_key not in store:
            # built on the layer's device (as LoRA, in its dtype): a later .to() to another kind of
            # device (e.g. meta) would give each add-in its own copy
            store[self.group_key] = shared_factors(self.kind, d, r, module.weight)
        # the same Parameter objects in every add-in of the group (tied, like a language model's
        # embedding and head): each module holds its own slot, so moving, meta runs and state_dict
        # treat them as ties; parameters() yields each once
        for key, param in store[self.group_key].items():
            self.register_parameter(key, param)
        self.dropout = nn.Dropout(p) if p else nn.Identity()
        self._init_core()

    def _init_core(self) -> None:
        raise NotImplementedError

    def core_matrix(self) -> torch.Tensor:
        """The placement's core as one ``(slabs_out * r) x (slabs_in * r)`` matrix: block ``(i, j)``
        maps input slab ``j`` to output slab ``i``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"width={self.width}, r={self.r}, slabs={self.slabs_out}x{self.slabs_in}, scale={self.scale:g}"

    def share_into(self, shared: dict[Any, Any]) -> None:
        """Offer this add-in's factors to add-ins built later in the same attach (used when it is reused)."""
        shared.setdefault(self.group_key, {n: getattr(self, n) for n in self.shared_names()})

    def shared_names(self) -> tuple[str, ...]:
        """Names of the parameters this add-in shares with the others of its group."""
        return ("u", "v", "c") if self.kind == "tk" else ("u", "v")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # .to(x): a model spread over devices has one copy of the shared factors, on one of them
        h = F.linear(x.unflatten(-1, (self.slabs_in, self.width)), self.u.to(x))  # [..., a, r]
        h = self.dropout(F.linear(h.flatten(-2), self.core_matrix().to(x)))  # [..., b * r]
        y = F.linear(h.unflatten(-1, (self.slabs_out, self.r)), self.v.to(x))  # [..., b, d]
        return y.flatten(-2) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """``scale * dW`` as the layer's ``out x in`` weight: slab ``(i, j)`` is ``V @ S_ij @ U``."""
        b, a, r = self.slabs_out, self.slabs_in, self.r
        core = self.core_matrix().view(b, r, a, r)
        delta = torch.einsum("dp,ipjq,qe->idje", self.v.to(core), core, self.u.to(core))
        return delta.reshape(b * self.width, a * self.width) * self.scale

    def adapt_output(self, module: nn.Module, inputs: tuple, outputs: torch.Tensor) -> torch.Tensor:
        return outputs + self(inputs[0])

    @weight_method()
    def adapt_weight(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with, ``W + scale * dW`` (for layers whose weight is read
        without calling them)."""
        return weight + self.delta_weight().to(weight.dtype)

    def check_method(self, method: str) -> None:
        if method == "adapt_weight" and isinstance(self.dropout, nn.Dropout):
            raise ValueError(
                "dropout acts inside the FacT branch, which adapt_weight does not run: "
                "use adapt_output or dropout=0"
            )

    merge_adds: ClassVar[bool] = True  # merge() adds to the weight what adapt_output adds (engine check)

    def merge(self, module: nn.Module) -> None:
        """Fold ``scale * dW`` into the layer's weight (the Attachment restores it on unmerge)."""
        if is_computed(module, "weight"):  # parametrized: through its right_inverse, exact or refused
            weight = peek_weight(module, "weight").clone()
            write_weight(module, "weight", weight + self.delta_weight().to(weight.dtype))
            return
        weight = module._parameters["weight"]  # the stored weight, not what weight methods make of it
        weight.add_(self.delta_weight().to(weight.dtype))


@register_addin
class FacT_tt(FacT):  # noqa: N801 - ZhiJian's name, as users write it in strings
    """FacT-TT: every slab has its own ``r x r`` core (a layer of ``a`` input and ``b`` output slabs
    holds one ``(b r) x (a r)`` matrix, ``nn.Linear``'s default init); ``U`` and ``V`` are shared.

    The paper's placement, on every block of a timm ViT (``studio.strategies.fact`` writes it)::

        (FacT_tt.adapt_output, r=8): ...->(blocks[0:12].attn.qkv){inout1}->...

    Settings: ``r`` (rank, default 8), ``scale`` (default 1.0), ``dropout`` (default 0.1), ``width``
    (slab width, default min(in, out) features).
    """

    kind = "tt"

    def _init_core(self) -> None:
        self.s = nn.Parameter(
            torch.empty(
                self.slabs_out * self.r, self.slabs_in * self.r, device=self.u.device, dtype=self.u.dtype
            )
        )
        nn.init.kaiming_uniform_(self.s, a=math.sqrt(5))

    def core_matrix(self) -> torch.Tensor:
        return self.s


@register_addin
class FacT_tk(FacT):  # noqa: N801 - ZhiJian's name
    """FacT-TK: the core of slab ``k`` is ``C x_3 p_k``, with the ``r x r x r`` tensor ``C`` shared
    like ``U`` and ``V`` and a coefficient vector ``p_k`` (length ``r``, Xavier-uniform) per slab.

    ``(FacT_tk.adapt_output, r=8): ...->(blocks[0:12].mlp.fc1){inout1}->...``

    Settings: ``r`` (rank, default 8), ``scale`` (default 1.0), ``dropout`` (default 0.1), ``width``
    (slab width, default min(in, out) features). Slab ``k = i * a + j`` maps input slab ``j`` to
    output slab ``i``.
    """

    kind = "tk"

    def _init_core(self) -> None:
        self.p = nn.Parameter(
            torch.empty(self.r, self.slabs_out * self.slabs_in, device=self.u.device, dtype=self.u.dtype)
        )
        nn.init.xavier_uniform_(self.p)

    def core_matrix(self) -> torch.Tensor:
        b, a, r = self.slabs_out, self.slabs_in, self.r
        # slab n's core is C x_3 p_n: cores[q, o, n] = sum_k C[q, o, k] p[k, n], used as u @ core
        # (q in, o out); a plain matmul keeps p's gradient contiguous (DDP's buckets expect that)
        cores = (self.c.to(self.p).reshape(r * r, r) @ self.p).view(r, r, b, a)
        return cores.permute(2, 1, 3, 0).reshape(b * r, a * r)

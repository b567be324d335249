"""MonteCLoRA (PEFT's ``monteclora_config``, Monte Carlo LoRA): in training, ``A`` is replaced by a learned
mixture of ``samples`` noisy copies of itself; eval and merging use plain LoRA.

As PEFT computes it (``tuners/lora/monteclora.py``): each training forward takes the next pre-drawn noise
sample ``(z_mvn [samples, in, r], z_wishart [r, r], z_dirichlet [samples])`` from a buffer of
``buffer_size`` samples (drawn at the first training forward, redrawn when used up), and with
``std = diag(exp(std_prior))``

- ``var = diag(clip(diag(std z_wishart std^T), 1e-3))``, ``noise = scaler * z_mvn @ cholesky(var)``;
- ``weights = softmax(L z_dirichlet + mu)``, the logistic-normal approximation of a Dirichlet with
  concentration ``exp(expert_weights_prior)`` (``L`` the Cholesky factor of its covariance);
- ``A_train = (sum_n weights[n] * (A^T + noise[n]))^T``.

:meth:`MonteCLoRASampler.variational_loss` is the KL (and optional entropy) term the training loop adds
(PEFT's ``_get_monteclora_loss`` averages it over the layers).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .peft_variants import NUMBER, read_subconfig
from .variant import PeftOrderVariant, Setting, register_variant
from .velora import check_linear_like

if TYPE_CHECKING:
    from .core import LoRA

_EPS = 1e-3


def check_monteclora(
    samples: object, prior: object, scaler: object, kl_weight: object, entropy: object, buffer: object
) -> None:
    """Validate the MonteCLoRA settings (PEFT's rules). Raises ``ValueError``."""
    for name, value in (("monteclora_samples", samples), ("monteclora_buffer", buffer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"LoRA {name} must be a positive integer, got {value!r}")
    for name, value, low in (
        ("monteclora_prior", prior, "positive"),
        ("monteclora_scaler", scaler, None),
        ("monteclora_kl", kl_weight, None),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (low and not value > 0):
            raise ValueError(f"LoRA {name} must be a {low + ' ' if low else ''}number, got {value!r}")
    if not isinstance(entropy, bool):
        raise ValueError(f"LoRA monteclora_entropy must be true or false, got {entropy!r}")


class MonteCLoRASampler(nn.Module):
    """The variational parameters of one MonteCLoRA layer (``in_features`` of the layer, rank ``r``).

    Parameters ``std_prior [r]`` and ``expert_weights_prior [samples]`` (``U(0, 1)`` at attach);
    buffers ``gaussian_var_prior [r, r]`` and ``expert_weights [samples]`` (the last sampled values,
    saved in files as PEFT saves them).
    """

    def __init__(
        self,
        in_features: int,
        r: int,
        samples: int,
        prior: float,
        scaler: float,
        kl_weight: float,
        entropy: bool,
        buffer: int,
        like: torch.Tensor,
    ) -> None:
        super().__init__()
        self.in_features, self.r, self.samples = in_features, r, samples
        self.prior, self.scaler, self.kl_weight = float(prior), float(scaler), float(kl_weight)
        self.entropy, self.buffer_size = entropy, buffer
        kw = {"dtype": like.dtype, "device": like.device}
        self.std_prior = nn.Parameter(torch.rand(r, **kw))
        self.expert_weights_prior = nn.Parameter(torch.rand(samples, **kw))
        self.register_buffer("gaussian_var_prior", torch.eye(r, **kw))
        self.register_buffer("expert_weights", torch.ones(samples, **kw) / samples)
        self.noise: list[dict[str, torch.Tensor]] = []  # pre-drawn samples, drawn when first needed
        self.index = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (var, weights) with their graph

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_last"] = None  # tensors with a graph cannot be copied (copy.deepcopy, pickle)
        return state

    def _refill(self) -> None:
        from torch.distributions.wishart import Wishart  # only where training needs it

        dtype, device = self.std_prior.dtype, self.std_prior.device
        wishart = Wishart(df=self.r, scale_tril=torch.eye(self.r, device=device))
        with torch.no_grad():
            z_mvn = torch.randn(
                (self.buffer_size, self.samples, self.in_features, self.r), device=device, dtype=dtype
            )
            z_dirichlet = torch.randn((self.buffer_size, self.samples), device=device, dtype=dtype)
            self.noise = [
                {
                    "z_mvn": z_mvn[i],
                    "z_wishart": wishart._bartlett_sampling(torch.Size()).to(dtype),
                    "z_dirichlet": z_dirichlet[i],
                }
                for i in range(self.buffer_size)
            ]
        self.index = 0

    def _next(self) -> dict[str, torch.Tensor]:
        if self.index >= len(self.noise):
            self._refill()
        sample = self.noise[self.index]
        self.index += 1
        return sample

    def _dirichlet_logits(self, alpha: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        alpha = torch.clamp(alpha, min=1e-6)
        mu = torch.log(alpha) - torch.log(alpha).mean()
        n = self.samples
        diag = torch.clamp(1 / alpha * (1 - 2 / n) + 1 / (n**2) * (1 / alpha).sum(), min=1e-6)
        eye = torch.eye(len(alpha), device=alpha.device, dtype=alpha.dtype)
        sigma = torch.diag(diag) + 1e-6 * eye
        try:
            L = torch.linalg.cholesky(sigma.float())
        except torch.linalg.LinAlgError:
            sigma = sigma + 1e-4 * eye
            L = torch.linalg.cholesky(sigma.float())
        return L.to(sigma.dtype) @ z + mu

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw: ``(noise [samples, in, r], weights [samples])``."""
        sample = self._next()
        dtype, device = self.std_prior.dtype, self.std_prior.device
        z_mvn, z_wishart, z_dirichlet = (
            sample[k].to(device=device, dtype=dtype) for k in ("z_mvn", "z_wishart", "z_dirichlet")
        )
        std = torch.diag(torch.exp(self.std_prior))
        var = torch.diag(torch.clip((std @ z_wishart @ std.T).diag(), min=_EPS))
        L = torch.linalg.cholesky(var.float()).to(var.dtype)
        noise = self.scaler * torch.nan_to_num(torch.einsum("eio,op->eip", z_mvn, L), nan=_EPS)
        weights = torch.softmax(
            self._dirichlet_logits(torch.exp(self.expert_weights_prior), z_dirichlet), dim=-1
        )
        self._last = (var, weights)
        with torch.no_grad():
            self.gaussian_var_prior.copy_(var)
            self.expert_weights.copy_(weights)
        return noise, weights

    def sampled_A(self, lora_A: torch.Tensor) -> torch.Tensor:
        """``A`` for one training forward: the weighted mixture of its noisy copies."""
        noise, weights = self()
        if torch.isnan(noise).any() or torch.isnan(weights).any():
            warnings.warn("MonteCLoRA sampling produced NaNs; using the plain A for this forward")
            return lora_A
        return torch.einsum("n,nij->ij", weights, lora_A.T + torch.nan_to_num(noise, nan=0.0)).T

    def variational_loss(self) -> torch.Tensor:
        """``kl_weight * (KL_dirichlet + KL_wishart + KL_gaussian)`` (+ ``sum(weights^2)`` with
        ``monteclora_entropy``), from the last training forward's draw; zero in eval mode."""
        if not self.training:
            return self.std_prior.new_zeros(())
        var, weights = (
            self._last if self._last is not None else (self.gaussian_var_prior, self.expert_weights)
        )
        alpha2 = torch.exp(self.expert_weights_prior)
        alpha1 = torch.full((self.samples,), self.prior, device=alpha2.device)

        def gamma(t: torch.Tensor) -> torch.Tensor:
            return torch.lgamma(t).exp()

        kl_dirichlet = (
            torch.log(gamma(alpha2.sum()) / gamma(alpha1.sum()))
            + torch.log(gamma(alpha2) / gamma(alpha1)).sum()
            + ((alpha2 - alpha1) * (torch.digamma(alpha2) - torch.digamma(alpha2.sum()))).sum()
        )
        std = torch.diag(torch.exp(self.std_prior))
        s = torch.diag((std @ std.T).diag())
        kl_wishart = 0.5 * (-torch.log(s).trace() * self.r + s.trace() * self.r - self.r**2)
        v = torch.clamp(var, min=1e-6)
        kl_gauss = self.samples * 0.5 * (v.trace() - torch.log(v).trace() - self.r)
        loss = self.kl_weight * (kl_dirichlet + kl_wishart + kl_gauss)
        return loss + (weights**2).sum() if self.entropy else loss


# our MonteCLoRA settings -> PEFT's MontecloraConfig fields (and their JSON types)
_PEFT_FIELDS = {
    "num_samples": ("monteclora_samples", int),
    "use_entropy": ("monteclora_entropy", bool),
    "dirichlet_prior": ("monteclora_prior", NUMBER),
    "sample_scaler": ("monteclora_scaler", NUMBER),
    "kl_loss_weight": ("monteclora_kl", NUMBER),
    "buffer_size": ("monteclora_buffer", int),
}
# the sampler's attributes -> PEFT's MontecloraConfig fields
_SAMPLER_FIELDS = {
    "samples": "num_samples",
    "entropy": "use_entropy",
    "prior": "dirichlet_prior",
    "scaler": "sample_scaler",
    "kl_weight": "kl_loss_weight",
    "buffer_size": "buffer_size",
}


@register_variant
class MonteCLoRAVariant(PeftOrderVariant):
    """In training, ``A`` is a sampled mixture of noisy copies of itself (``lora_monteclora``)."""

    switch = Setting(
        "monteclora",
        False,
        "bool",
        "MonteCLoRA, ``lora/monteclora.py``: a sampled mixture of noisy copies of A in training",
    )
    settings = (
        Setting("monteclora_samples", 8, "int", "noisy copies mixed, default 8"),
        Setting("monteclora_prior", 0.1, "float", "Dirichlet prior of the mixture weights, default 0.1"),
        Setting("monteclora_scaler", 1e-4, "float", "scale of the noise, default 1e-4"),
        Setting("monteclora_kl", 1e-5, "float", "weight of the KL term in monteclora_loss, default 1e-5"),
        Setting("monteclora_entropy", False, "bool", "add the mixture weights' entropy term"),
        Setting("monteclora_buffer", 150, "int", "noise samples drawn at a time, default 150"),
    )
    flag_attribute = True
    peft_off = {"monteclora_config": None}
    peft_tensor_names = {
        f"lora_monteclora_sampler.{n}": f"lora_monteclora.{n}"
        for n in ("std_prior", "expert_weights_prior", "gaussian_var_prior", "expert_weights")
    }

    def __init__(
        self,
        rslora: bool = False,
        init: str = "kaiming",
        monteclora_samples: int = 8,
        monteclora_prior: float = 0.1,
        monteclora_scaler: float = 1e-4,
        monteclora_kl: float = 1e-5,
        monteclora_entropy: bool = False,
        monteclora_buffer: int = 150,
    ) -> None:
        super().__init__(rslora, init)
        check_monteclora(
            monteclora_samples,
            monteclora_prior,
            monteclora_scaler,
            monteclora_kl,
            monteclora_entropy,
            monteclora_buffer,
        )
        self._sampler_settings = (
            monteclora_samples,
            monteclora_prior,
            monteclora_scaler,
            monteclora_kl,
            monteclora_entropy,
            monteclora_buffer,
        )

    def check_target(self, lora: LoRA, module: nn.Module, param: str | None) -> None:
        check_linear_like(lora, module, param, "monteclora", "MonteCLoRA")

    def add_parameters(self, lora: LoRA, module: nn.Module, weight: torch.Tensor, w: int) -> None:
        lora.lora_monteclora = MonteCLoRASampler(w, lora.r, *self._sampler_settings, weight)

    def weight_method_problem(self, lora: LoRA) -> str | None:
        return (
            "monteclora=true acts on the LoRA branch in training, which adapt_weight does not have: use "
            "adapt_output"
        )

    def project(self, lora: LoRA, x: torch.Tensor) -> torch.Tensor:
        if lora.training:
            return F.linear(x, lora.lora_monteclora.sampled_A(lora.lora_A))
        return F.linear(x, lora.lora_A)

    def loss(self, lora: LoRA) -> torch.Tensor:
        return lora.lora_monteclora.variational_loss()

    def peft_fields(self) -> dict[str, Any]:
        samples, prior, scaler, kl_weight, entropy, buffer = self._sampler_settings
        ours = {
            "samples": samples,
            "entropy": entropy,
            "prior": float(prior),
            "scaler": float(scaler),
            "kl_weight": float(kl_weight),
            "buffer_size": buffer,
        }  # as the sampler holds them
        return {
            **super().peft_fields(),
            "monteclora_config": tuple(
                sorted((theirs, ours[name]) for name, theirs in _SAMPLER_FIELDS.items())
            ),
        }

    @classmethod
    def settings_from_peft(cls, config: Mapping[str, Any], source: str) -> dict[str, Any]:
        return read_subconfig(config, source, "monteclora_config", "monteclora", _PEFT_FIELDS)

"""PEFT's custom-model LoRA matrix (``tests/test_custom_models.py`` of huggingface/peft, the 46 LoraConfig
rows of its ``TEST_CASES`` at commit 5d602fdbf), reproduced on identical weights.

Every row we support gives PEFT's outputs, gradients (input and every adapter tensor) and merged weights,
and unmerge/detach restore the base bit for bit (``tests/peft_compare.py``); where PEFT files can hold
the row, PEFT's saved adapter loads with :func:`from_peft` and gives PEFT's outputs. The rows we do not
support are listed with the exact message ``from_peft`` refuses their PEFT directory with.

The two ``nn.MultiheadAttention`` rows depend on the installed PEFT: from 0.22 they are supported rows
whose gradients are compared with the math (``peft_compare.math_grads``), because PEFT 0.22's MHA
backward runs after it unmerged the weights; before 0.22 (out_proj's update added twice) PEFT's files
are refused by their ``peft_version``.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import addin_studio as studio
from peft_compare import compare, from_peft_refusal, peft_mha_fixed, perturb_peft

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402
from peft import KasaConfig, MontecloraConfig, VeloraConfig  # noqa: E402


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(x.float())))))


class EmbConv1D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 5)
        self.conv1d = Conv1D(1, 5)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin0(self.flat(self.relu(self.conv1d(self.emb(x))))))


class _Conv(nn.Module):
    """PEFT's ModelConv1D / ModelConv2D / ModelConv3D: a conv, ReLU, flatten, Linear, LogSoftmax."""

    def __init__(self, conv: nn.Module, name: str, shape: tuple[int, ...], features: int) -> None:
        super().__init__()
        self.add_module(name, conv)
        self.name, self.shape = name, shape
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(features, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = x.float()
        if len(self.shape) == 4 and x.dim() == 2:  # Conv3d: a 2-D input becomes a volume
            x = torch.stack([x] * 3, dim=-1)
        x = getattr(self, self.name)(x.reshape(-1, *self.shape))
        return self.sm(self.lin0(self.flat(self.relu(x))))


class Conv2dGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(90, 288)
        self.conv2d = nn.Conv2d(16, 16, 3, groups=8)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin1 = nn.Linear(16, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = self.lin0(x.float().flatten()).reshape(2, 16, 3, 3)
        return self.sm(self.lin1(self.flat(self.relu(self.conv2d(x)))))


class Conv2dGroups2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(16, 32, 3, padding=1, groups=2)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(12800, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = torch.arange(9 * 16 * 20 * 20, device=x.device).view(9, 16, 20, 20).float()
        return self.sm(self.lin0(self.flat(self.relu(self.conv2d(x)))))


class Mha(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(10, 2)
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = x.float()
        return self.sm(self.lin0(self.mha(x, x, x)[0]))


class _LinearUsingParameter(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features))
        self.bias = nn.Parameter(torch.ones(out_features))

    def forward(self, x):
        return x @ self.weight + self.bias


class MlpUsingParameters(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = _LinearUsingParameter(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = _LinearUsingParameter(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.relu(self.lin0(x.float()))))


MODELS = {
    "MLP": MLP,
    "EmbConv1D": EmbConv1D,
    "Conv1d": lambda: _Conv(nn.Conv1d(1, 1, 2), "conv1d", (1, 10), 9),
    "Conv2d": lambda: _Conv(nn.Conv2d(5, 10, 3), "conv2d", (5, 3, 3), 10),
    "Conv3d": lambda: _Conv(nn.Conv3d(5, 10, 3), "conv3d", (5, 3, 3, 3), 10),
    "Conv2dGroups": Conv2dGroups,
    "Conv2dGroups2": Conv2dGroups2,
    "MHA": Mha,
    "MlpUsingParameters": MlpUsingParameters,
}


def _make(model_id: str):
    def make():
        torch.manual_seed(0)
        return MODELS[model_id]().eval()

    return make


X = torch.arange(90).view(9, 10)

# (name, model, LoraConfig fields) — the rows we support
SUPPORTED = [
    ("Vanilla MLP 1 LoRA", "MLP", {"target_modules": "lin0"}),
    ("Vanilla MLP 2 LoRA", "MLP", {"target_modules": ["lin0"]}),
    ("Vanilla MLP 3 LoRA", "MLP", {"target_modules": ["lin1"]}),
    ("Vanilla MLP 4 LoRA", "MLP", {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 5 LoRA", "MLP", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 LoRA", "MLP", {"target_modules": ["lin0"], "lora_alpha": 4, "lora_dropout": 0.1}),
    ("Vanilla MLP 7 LoRA with DoRA", "MLP", {"target_modules": ["lin0"], "use_dora": True}),
    ("Vanilla MLP 8 LoRA with DoRA", "MLP", {"target_modules": ["lin0", "lin1"], "use_dora": True}),
    ("Vanilla MLP 9 LoRA with DoRA", "MLP", {"target_modules": "lin1", "use_dora": True, "lora_alpha": 32}),
    ("Embedding + transformers Conv1D 1 LoRA", "EmbConv1D", {"target_modules": ["conv1d"]}),
    ("Embedding + transformers Conv1D 2 LoRA", "EmbConv1D", {"target_modules": ["emb"]}),
    ("Embedding + transformers Conv1D 3 LoRA", "EmbConv1D", {"target_modules": ["emb", "conv1d"]}),
    ("Embedding + transformers Conv1D 1 DoRA", "EmbConv1D", {"target_modules": ["conv1d"], "use_dora": True}),
    ("Embedding + transformers Conv1D 2 DoRA", "EmbConv1D", {"target_modules": ["emb"], "use_dora": True}),
    (
        "Embedding + transformers Conv1D 3 DoRA",
        "EmbConv1D",
        {"target_modules": ["emb", "conv1d"], "use_dora": True},
    ),
    ("Conv1d LoRA", "Conv1d", {"target_modules": ["conv1d"]}),
    ("Conv1d LoRA with DoRA", "Conv1d", {"target_modules": ["conv1d"], "use_dora": True}),
    ("Conv2d 1 LoRA", "Conv2d", {"target_modules": ["conv2d"]}),
    ("Conv2d 2 LoRA", "Conv2d", {"target_modules": ["conv2d", "lin0"]}),
    ("Conv2d 1 LoRA with DoRA", "Conv2d", {"target_modules": ["conv2d"], "use_dora": True}),
    ("Conv2d 2 LoRA with DoRA", "Conv2d", {"target_modules": ["conv2d", "lin0"], "use_dora": True}),
    ("Conv3d 1 LoRA", "Conv3d", {"target_modules": ["conv3d"]}),
    ("Conv3d 2 LoRA", "Conv3d", {"target_modules": ["conv3d", "lin0"]}),
    ("Conv3d 1 LoRA with DoRA", "Conv3d", {"target_modules": ["conv3d"], "use_dora": True}),
    ("Conv3d 2 LoRA with DoRA", "Conv3d", {"target_modules": ["conv3d", "lin0"], "use_dora": True}),
    (
        "Vanilla MLP 1 LoRA with lora_b bias",
        "MLP",
        {"target_modules": ["lin0", "lin1"], "lora_bias": True, "lora_alpha": 32},
    ),
    (
        "Conv2d 1 LoRA with lora_b bias",
        "Conv2d",
        {"target_modules": ["conv2d"], "lora_bias": True, "lora_alpha": 32},
    ),
    (
        "Conv3d 1 LoRA with lora_b bias",
        "Conv3d",
        {"target_modules": ["conv3d"], "lora_bias": True, "lora_alpha": 32},
    ),
    ("MLP 1 using nn.Parameter LoRA", "MlpUsingParameters", {"target_parameters": ["lin0.weight"]}),
    (
        "MLP 2 using nn.Parameter LoRA",
        "MLP",
        {"target_modules": ["lin0"], "target_parameters": ["lin1.weight"]},
    ),
    # trainable tokens (addins/trainable_tokens.py): a TrainableTokens add-in beside the LoRA
    (
        "Embedding + transformers Conv1D 1 LoRA trainable_tokens",
        "EmbConv1D",
        {"target_modules": ["conv1d"], "trainable_token_indices": {"emb": [0, 10]}},
    ),
    # grouped convs (addins/lora_grouped.py): output hook only, neither side can merge them
    ("Conv2d Groups LoRA", "Conv2dGroups", {"target_modules": ["conv2d"]}),
    ("Conv2d Groups2 LoRA", "Conv2dGroups2", {"target_modules": ["conv2d"]}),
    ("Conv2d Groups LoRA with DoRA", "Conv2dGroups", {"target_modules": ["conv2d"], "use_dora": True}),
    ("Conv2d Groups2 LoRA with DoRA", "Conv2dGroups2", {"target_modules": ["conv2d"], "use_dora": True}),
    # the variants of addins/lora_kasa.py, lora_mica.py and lora_velora.py (also compared while training)
    (
        "Vanilla MLP 1 LoRA with KaSA",
        "MLP",
        {"target_modules": ["lin0"], "kasa_config": KasaConfig(), "r": 4},
    ),
    (
        "Vanilla MLP 1 LoRA with MiCA",
        "MLP",
        {"target_modules": ["lin0"], "init_lora_weights": "mica", "r": 4},
    ),
    (
        "Vanilla MLP 10 LoRA with VeLoRA random",
        "MLP",
        {"target_modules": ["lin0"], "velora_config": VeloraConfig(num_groups=2, init_type="random")},
    ),
    (
        "Vanilla MLP 11 LoRA with VeLoRA batch_average",
        "MLP",
        {
            "target_modules": ["lin0", "lin1"],
            "velora_config": VeloraConfig(num_groups=2, init_type="batch_average"),
        },
    ),
    (
        "Vanilla MLP 12 LoRA with VeLoRA batch_average_once",
        "MLP",
        {
            "target_modules": ["lin0"],
            "velora_config": VeloraConfig(num_groups=2, init_type="batch_average_once"),
        },
    ),
    # stochastic in training: compared there with PEFT's own pre-drawn noise (peft_compare.share_noise)
    (
        "Vanilla MLP 1 LoRA with Monteclora",
        "MLP",
        {"target_modules": ["lin0"], "monteclora_config": MontecloraConfig(num_samples=2)},
    ),
]
from addin_studio.addins.lora_peft import MHA_REFUSAL  # noqa: E402

MHA_ROWS = [
    ("MHA 1 LoRA", "MHA", {"target_modules": ["mha"]}),
    ("MHA 2 LoRA", "MHA", {"target_modules": ["mha", "lin0"]}),
]
# rows whose gradients are compared with the math, not with PEFT (PEFT 0.22's MHA backward sees W)
MATH_GRADS = {name for name, _, _ in MHA_ROWS}
if peft_mha_fixed():
    SUPPORTED += MHA_ROWS
# every supported row's PEFT directory loads with from_peft
FILES = {name for name, _, _ in SUPPORTED}
# rows whose LoRA is not an update of the base weight: PEFT and we both refuse to merge
UNMERGEABLE = {name: "conv2d" for name, model_id, _ in SUPPORTED if model_id.startswith("Conv2dGroups")}


def _ours(fields: dict):
    """Our config for a row: strategies.lora with the row's targets and settings; a target parameter
    (PEFT's ``target_parameters``) is ``LoRA.adapt_weight`` with ``param=``."""
    if "target_parameters" in fields:
        lines = [
            f"(LoRA.adapt_output, r=8, alpha=8): ...->({m}){{inout1}}->..."
            for m in fields.get("target_modules", [])
        ]
        lines += [
            f"(LoRA.adapt_weight, r=8, alpha=8, param={p.rpartition('.')[2]}): "
            f"...->({p.rpartition('.')[0]}){{inout1}}->..."
            for p in fields["target_parameters"]
        ]
        return "\n".join(lines)
    tokens = "".join(
        f'\n(TrainableTokens.adapt_weight, indices="{", ".join(map(str, v))}"): ...->({k}){{inout1}}->...'
        for k, v in fields.get("trainable_token_indices", {}).items()
    )
    if tokens:
        rest = {k: v for k, v in fields.items() if k != "trainable_token_indices"}
        return lambda model: str(_ours(rest)(model)) + tokens
    targets = fields["target_modules"]
    kwargs = {
        "r": fields.get("r", 8),
        "alpha": fields.get("lora_alpha", 8),
        "dropout": fields.get("lora_dropout", 0.0),
        "trainable": fields.get("modules_to_save", ()),
        "layout": "peft",
    }
    for theirs, ours in (("use_dora", "dora"), ("lora_bias", "bias"), ("use_rslora", "rslora")):
        if fields.get(theirs):
            kwargs[ours] = True
    kwargs.update(_variant_settings(fields))
    return lambda model: studio.strategies.lora(model, targets, **kwargs)


def _variant_settings(fields: dict) -> dict:
    """Our settings for PEFT's KaSA, MiCA, MonteCLoRA and VeLoRA fields."""
    out: dict = {}
    if fields.get("kasa_config"):
        kasa = fields["kasa_config"]
        out.update(kasa=True, kasa_beta=kasa.beta, kasa_gamma=kasa.gamma)
    if fields.get("init_lora_weights") == "mica":
        out["init"] = "mica"
    if fields.get("monteclora_config"):
        mc = fields["monteclora_config"]
        out.update(
            monteclora=True,
            monteclora_samples=mc.num_samples,
            monteclora_prior=mc.dirichlet_prior,
            monteclora_scaler=mc.sample_scaler,
            monteclora_kl=mc.kl_loss_weight,
            monteclora_entropy=mc.use_entropy,
            monteclora_buffer=mc.buffer_size,
        )
    if fields.get("velora_config"):
        velora = fields["velora_config"]
        out.update(
            velora=True,
            velora_groups=velora.num_groups,
            velora_init=velora.init_type,
            velora_scale=velora.scale,
        )
    return out


@pytest.mark.parametrize("name, model_id, fields", SUPPORTED, ids=[row[0] for row in SUPPORTED])
def test_supported_row_equals_peft(name, model_id, fields, tmp_path):
    make = _make(model_id)
    # the variants whose training differs from plain LoRA (VeLoRA's gradients and projection updates,
    # MiCA's frozen B, KaSA's diagonal) are also compared over a few training steps
    steps = 3 if _variant_settings(fields) else 0
    pm, _ = compare(
        make,
        X,
        peft.LoraConfig(**fields),
        _ours(fields),
        train_steps=steps,
        merge=name not in UNMERGEABLE,
        grads="math" if name in MATH_GRADS else "peft",
    )
    if name in UNMERGEABLE:
        _both_refuse_merge(make, fields, pm, UNMERGEABLE[name])
    if name not in FILES:
        return
    pm.save_pretrained(str(tmp_path))
    model = make()
    att = studio.from_peft(model, tmp_path, modules_to_save=True)
    assert att.config.trainable == tuple(
        sorted(f"{m}.{p}" for m in fields.get("modules_to_save", ()) for p in ("bias", "weight"))
    )
    torch.testing.assert_close(model(X), pm(X), rtol=1e-5, atol=1e-6)


def _both_refuse_merge(make, fields, pm, layer: str) -> None:
    """PEFT raises on merge; our merge names the reason and leaves the model as it was."""
    with pytest.raises(NotImplementedError, match="groups > 1"):
        pm.base_model.merge_adapter()
    model = make()
    att = studio.attach(model, _ours(fields)(model))
    with torch.no_grad():
        for p in att.addins.parameters():
            p.add_(0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(X)
    groups = dict(model.named_modules())[layer].groups
    with pytest.raises(ValueError) as info:
        att.merge()
    assert str(info.value) == (
        f"cannot merge LoRA_{layer} into '{layer}': a LoRA on a grouped convolution (groups={groups}) in "
        f"PEFT's layout is not an update of the layer's weight (its A conv mixes all input channels), so it "
        f"cannot be folded in (PEFT refuses this merge too)"
    )
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(X), before)
    att.detach()


from peft.tuners.lora.config import BdLoraConfig  # noqa: E402

# (name, model, LoraConfig fields, the message from_peft refuses PEFT's directory with)
REFUSED = [
    (
        "BD-LoRA A only",
        "MLP",
        {
            "target_modules": ["lin0", "lin1"],
            "use_bdlora": BdLoraConfig(target_modules_bd_a=["lin0"], match_strict=False),
        },
        "use_bdlora is not supported",
    ),
    (
        "BD-LoRA B only",
        "MLP",
        {
            "target_modules": ["lin0", "lin1"],
            "use_bdlora": BdLoraConfig(target_modules_bd_b=["lin1"], nblocks=2, match_strict=False),
        },
        "use_bdlora is not supported",
    ),
    (
        "BD-LoRA both A and B",
        "MLP",
        {
            "target_modules": ["lin0", "lin1"],
            "use_bdlora": BdLoraConfig(target_modules_bd_a=["lin0"], target_modules_bd_b=["lin1"], nblocks=2),
        },
        "use_bdlora is not supported",
    ),
]
if not peft_mha_fixed():
    REFUSED += [
        (
            name,
            model_id,
            fields,
            f"from_peft does not import this nn.MultiheadAttention LoRA (the adapter's 'mha', saved by "
            f"PEFT {peft.__version__}): " + MHA_REFUSAL,
        )
        for name, model_id, fields in MHA_ROWS
    ]


def test_matrix_has_every_row():
    assert len(SUPPORTED) + len(REFUSED) == 46
    assert len({row[0] for row in SUPPORTED + REFUSED}) == 46


@pytest.mark.parametrize("name, model_id, fields, message", REFUSED, ids=[row[0] for row in REFUSED])
def test_unsupported_row_is_refused_with_its_reason(name, model_id, fields, message, tmp_path):
    pm = peft.get_peft_model(_make(model_id)(), peft.LoraConfig(**fields))
    perturb_peft(pm)
    pm.save_pretrained(str(tmp_path))
    assert from_peft_refusal(_make(model_id)(), tmp_path).removeprefix(f"{tmp_path}: ") == message

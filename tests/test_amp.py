"""Add-ins under autocast: bf16 on the CPU (always), fp16/bf16 on CUDA (``@pytest.mark.cuda``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.examples import MLPAddin, TutorialMLP

CONFIG = """(MLPAddin.adapt_across_output): ...->(fc1){in1}->...->(fc2){out1}->...
(MLPAddin.adapt_input): ...->{inout1}(fc2)->...
(LoRA.adapt_output, r=4, alpha=8): ...->(fc3){inout1}->...
(Identity.adapt_output): ...->(fc1){inout1}->..."""


class _Probe(nn.Module):
    """Records the output dtype of each MLPAddin's last layer (its ``forward`` is called directly, so the
    hook goes on its ``fc2`` submodule)."""

    def __init__(self, att: studio.Attachment) -> None:
        super().__init__()
        self.dtypes: dict[str, torch.dtype] = {}
        self.handles = [
            a.fc2.register_forward_hook(self._record(k))
            for k, a in att.addins.items()
            if isinstance(a, MLPAddin)
        ]

    def _record(self, key: str):
        def hook(module, args, out):
            self.dtypes[key] = out.dtype

        return hook


def _attached(device: str = "cpu"):
    torch.manual_seed(0)
    model = TutorialMLP(64, 32, 10).to(device)
    x = torch.randn(8, 64, device=device)
    att = studio.attach(model, CONFIG, addins={"MLPAddin": MLPAddin}, example_input=x)
    with torch.no_grad():  # a trained-looking LoRA (B starts at zero)
        for name, p in att.addins.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    return model, att, x


def _check_autocast_forward(device: str, dtype: torch.dtype, rtol: float) -> None:
    model, att, x = _attached(device)
    with torch.no_grad():
        reference = model(x)
    probe = _Probe(att)
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    # both MLPAddins ran their matmuls in the low precision
    assert len(probe.dtypes) == 2 and set(probe.dtypes.values()) == {dtype}
    torch.testing.assert_close(out.float(), reference, rtol=rtol, atol=rtol * float(reference.abs().max()))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast casts copies only
    assert all(a.inputs_cache is None for a in att.addins.values())


def _check_autocast_training(device: str, amp: str) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model, att, _ = _attached(device)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=g)
    y = x[:, :10].argmax(1)  # learnable
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    trainer = studio.Trainer(
        model, loader, epochs=6, lr=1e-2, amp=amp, device=device, seed=0, progress=False, scheduler="constant"
    )
    before = copy.deepcopy(att.addins.state_dict())
    history = trainer.fit()
    losses = history["train_loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    after = att.addins.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())  # master weights stay fp32
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_addins_follow_bf16_autocast_on_cpu():
    _check_autocast_forward("cpu", torch.bfloat16, rtol=3e-2)


def test_training_with_addins_under_bf16_autocast_on_cpu():
    _check_autocast_training("cpu", "bf16")


def test_addins_attached_to_a_bf16_model_are_bf16():
    torch.manual_seed(0)
    model = TutorialMLP(64, 32, 10).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    att = studio.attach(model, "(LoRA.adapt_output, r=4): ...->(fc2){inout1}->...", example_input=x)
    assert {p.dtype for p in att.addins.parameters()} == {torch.bfloat16}
    assert model(x).dtype == torch.bfloat16


def test_autocast_compiled_attached_model_matches_eager_autocast():
    import torch._dynamo as dynamo

    dynamo.reset()
    model, _, x = _attached()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    dynamo.reset()
    assert compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_addins_follow_autocast_on_cuda(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _check_autocast_forward("cuda", dtype, rtol=3e-2 if dtype == torch.bfloat16 else 5e-3)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_training_with_addins_under_autocast_on_cuda(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _check_autocast_training("cuda", amp)

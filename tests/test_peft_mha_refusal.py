"""Why PEFT's ``nn.MultiheadAttention`` LoRA rows stay refused: PEFT 0.21.2 applies out_proj's update twice.

If this test starts failing, PEFT computes MHA LoRA as its config says (huggingface/peft PR #3774): the two
MHA rows of ``tests/test_peft_matrix.py`` can then be supported (LoRA.adapt_weight on the attention's
``in_proj_weight`` and on its ``out_proj``)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.mha(x, x, x)[0]


def test_peft_mha_lora_adds_the_out_proj_update_twice():
    torch.manual_seed(0)
    base = Attention().eval()
    x = torch.randn(3, 2, 8)
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["mha"], r=2, lora_alpha=4))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    mha = pm.base_model.model.mha
    out_proj = mha.base_layer.out_proj
    d_in = (mha.lora_B["default"].weight @ mha.lora_A["default"].weight) * mha.scaling["default"]
    d_out = (out_proj.lora_B["default"].weight @ out_proj.lora_A["default"].weight) * out_proj.scaling["default"]
    theirs = pm(x)

    def reference(times: int) -> torch.Tensor:
        ref = copy.deepcopy(base)
        with torch.no_grad():
            ref.mha.in_proj_weight.add_(d_in)
            ref.mha.out_proj.weight.add_(times * d_out)
        return ref(x)

    torch.testing.assert_close(theirs, reference(2), rtol=1e-5, atol=1e-5)
    assert (theirs - reference(1)).abs().max() > 1e-2

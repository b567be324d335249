"""Every supported row of PEFT's LoRA matrix goes back to PEFT: PEFT's saved adapter, loaded with
``from_peft`` and written again with ``export_peft``, loads in PEFT and gives PEFT's outputs (and the file
holds the same tensors under the same names)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import addin_studio as studio
from peft_compare import perturb_peft
from test_peft_matrix import SUPPORTED, X, _make

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("name, model_id, fields", SUPPORTED, ids=[row[0] for row in SUPPORTED])
def test_supported_row_goes_back_to_peft(name, model_id, fields, tmp_path):
    make = _make(model_id)
    pm = peft.get_peft_model(make(), peft.LoraConfig(**fields))
    perturb_peft(pm)
    pm.eval()
    pm.save_pretrained(str(tmp_path / "theirs"))
    model = make()
    att = studio.from_peft(model, tmp_path / "theirs", modules_to_save=True)
    att.export_peft(tmp_path / "ours")
    theirs = load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    ours = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key, t in theirs.items():
        assert torch.equal(ours[key], t), key
    back = peft.PeftModel.from_pretrained(make(), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(back(X), pm(X), rtol=1e-5, atol=1e-6)


def test_a_named_parameter_exports_as_target_parameters_with_the_common_rank(tmp_path):
    import json

    from test_peft_matrix import _LinearUsingParameter

    model = torch.nn.Sequential(_LinearUsingParameter(4, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 2))
    lines = (
        "(LoRA.adapt_weight, r=2, param=weight): ...->(0){inout1}->...\n"
        "(LoRA.adapt_output, r=2): ...->(1){inout1}->...\n(LoRA.adapt_output, r=2): ...->(2){inout1}->..."
    )
    with studio.attach(model, lines) as att:
        att.export_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["target_modules"], config["target_parameters"], config["r"]) == (
        ["1", "2"],
        ["0.weight"],
        2,
    )
    with studio.attach(model, lines.replace("r=2, param", "r=4, param")) as att:
        with pytest.raises(
            ValueError,
            match=r"'0': a LoRA on a named parameter goes to PEFT \(target_parameters\) "
            r"with the adapter's common r=2 and alpha=2, not r=4, alpha=4",
        ):
            att.export_peft(tmp_path / "mixed")

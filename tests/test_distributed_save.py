"""Saving works wherever training works: under torchrun (2 gloo processes on CPU), ``att.save``,
``att.export_peft`` and the Trainer's best-epoch checkpoint, called the ordinary way on every rank of an
FSDP2-sharded or a DDP-wrapped model, write each file once (rank 0), and every file gives back, in one
process on a fresh base model, the outputs the distributed model computed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import addin_studio as studio
from addin_studio.checkpoint import collective

# one_rank_group is a fixture: importing it makes it available to the tests here
from test_ddp import _load, _torchrun, needs_gloo, one_rank_group  # noqa: F401

pytest.importorskip("timm")
peft = pytest.importorskip("peft")
WORKER = Path(__file__).with_name("save_worker.py")
sys.path.insert(0, str(WORKER.parent))
from save_worker import probe, vit  # noqa: E402


def _rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _outputs_from_files(out: Path) -> dict[str, torch.Tensor]:
    """The eval outputs, in this one process, of a fresh base model with each saved file loaded."""
    x = probe()
    found = {}
    for name in ("adapters.safetensors", "alias.safetensors", "checkpoints/best.safetensors"):
        model = vit()
        studio.load(model, out / name, example_input=x[:1])
        with torch.no_grad():
            found[name] = model.eval()(x)
    loaded = peft.PeftModel.from_pretrained(vit(), str(out / "peft")).eval()
    with torch.no_grad():
        found["peft"] = loaded(x)
    return found


def _check_round_trip(out: Path) -> list[dict]:
    infos = json.loads((out / "info.json").read_text())
    want = load_file(str(out / "outputs.safetensors"))["outputs"]
    with torch.no_grad():
        untrained = vit().eval()(probe())
    assert _rel_diff(untrained, want) > 1e-2  # training changed the outputs: the files carry something
    for name, got in _outputs_from_files(out).items():
        # measured: 0 (save, best, alias) and 1.5e-7 (PEFT), under FSDP and DDP alike
        assert _rel_diff(got, want) <= 1e-5, name
    a, meta = _load(out / "adapters.safetensors")
    assert len(a) == 8  # 3 LoRAs x (A, B), the head's weight and bias: whole tensors, not shards
    assert a["addins.LoRA_blocks_0_attn_qkv.lora_A"].shape == (4, 32)
    assert a["addins.LoRA_patch_embed_proj.lora_B"].shape == (32, 2)
    b, meta_b = _load(out / "alias.safetensors")
    assert meta == meta_b and sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    # one writer: rank 0 wrote each file once, rank 1 none; saving left the model as it was
    assert [i["save_wrote"] for i in infos] == [["adapters.safetensors"], []]
    assert [i["export_wrote"] for i in infos] == [["adapter_model.safetensors"], []]
    assert [i["alias_wrote"] for i in infos] == [["alias.safetensors"], []]
    assert [i["alias_returned"] for i in infos] == [str(out / "alias.safetensors"), "None"]
    assert all(i["outputs_unchanged"] for i in infos)
    return infos


@pytest.mark.slow
@needs_gloo
def test_att_save_and_export_peft_under_fsdp_gather_and_load_in_one_process(tmp_path):
    _torchrun(str(WORKER), str(tmp_path), "fsdp", timeout=180)
    infos = _check_round_trip(tmp_path)
    assert [(i["sharded"], i["wrapper"]) for i in infos] == [(True, "FSDPVisionTransformer")] * 2
    # a collective: when the call returns, the file exists on every rank
    assert all(i["adapters_exist"] and i["peft_exist"] for i in infos)
    # rank 0 could not write: every rank raises (none waits forever), rank 1 names rank 0's error
    err = "[Errno 17] File exists: '" + str(tmp_path / "a-file") + "'"
    assert infos[0]["error"] == f"FileExistsError: {err}"
    target = tmp_path / "a-file" / "adapters.safetensors"
    assert infos[1]["error"] == f"RuntimeError: rank 0 could not write {target}: FileExistsError: {err}"


@pytest.mark.slow
@needs_gloo
def test_att_save_and_export_peft_under_ddp_write_once(tmp_path):
    _torchrun(str(WORKER), str(tmp_path), "ddp", timeout=180)
    infos = _check_round_trip(tmp_path)
    assert [(i["sharded"], i["wrapper"]) for i in infos] == [(False, "DistributedDataParallel")] * 2
    assert not any("error" in i for i in infos)
    # the rank-0 idiom (`if is_main_process(): att.save(...)`) needs no other rank
    r0, _ = _load(tmp_path / "rank0.safetensors")
    a, _ = _load(tmp_path / "adapters.safetensors")
    assert all(torch.equal(r0[k], a[k]) for k in a)


def test_one_process_writes_and_full_tensors_copies_to_cpu(tmp_path):
    assert not dist.is_initialized() and collective.writes_here()
    t = torch.arange(6.0).reshape(2, 3).t()  # not contiguous
    got = collective.full_tensors({"t": t})
    assert got["t"].is_contiguous() and torch.equal(got["t"], t) and got["t"].data_ptr() != t.data_ptr()
    with collective.one_writer(torch.nn.Linear(2, 2), tmp_path) as writes:
        assert writes


@pytest.mark.usefixtures("one_rank_group")
def test_save_trainable_names_the_models_own_parameters_under_ddp(tmp_path):
    from addin_studio.scale import distributed as D
    from addin_studio.train import save_trainable

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    ddp = D.wrap_model(model, device="cpu")
    assert save_trainable(ddp, tmp_path / "t.safetensors") == tmp_path / "t.safetensors"
    got = load_file(str(tmp_path / "t.safetensors"))
    assert sorted(got) == ["1.bias", "1.weight"]  # not DDP's "module.1.weight"
    assert torch.equal(got["1.weight"], model[1].weight.detach())

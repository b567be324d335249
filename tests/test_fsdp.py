"""FSDP2 (``fully_shard``) on CPU: 2 processes with gloo on 127.0.0.1 under torchrun train the same
add-ins as one process, write one adapter-only checkpoint that loads into a single-process model, and
refuse ``merge()`` on the sharded model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import addin_studio as studio
from addin_studio.scale import fsdp

from test_ddp import ACC_LINE, _load, _run, _torchrun

timm = pytest.importorskip("timm")
WORKER = Path(__file__).with_name("fsdp_worker.py")


def _vit():
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=4,
    )


@pytest.mark.slow  # two torchrun ranks plus a one-process run: process start-up and gloo dominate
def test_two_rank_fsdp_trains_the_same_adapters_as_one_process(tmp_path):
    _run([sys.executable, str(WORKER), str(tmp_path / "single")])
    _torchrun(str(WORKER), str(tmp_path / "fsdp"))
    single = json.loads((tmp_path / "single" / "history.json").read_text())
    sharded = json.loads((tmp_path / "fsdp" / "history.json").read_text())
    assert (single["world"], single["sharded"], sharded["world"], sharded["sharded"]) == (1, False, 2, True)
    assert single["steps"] == sharded["steps"] == 8
    assert sharded["blocks"] == ["blocks.0", "blocks.1"]  # fully_shard per block, then the root
    # the add-ins were sharded: DTensor parameters, each rank holding half of their elements
    assert sharded["addin_param_types"] == ["DTensor"]
    assert sharded["local_addin_numel"] * 2 == sharded["addin_numel"] == single["addin_numel"]
    assert sharded["merge_error"].startswith("cannot merge an FSDP-sharded model")
    assert sharded["train_loss"] == pytest.approx(single["train_loss"], rel=1e-6)

    initial, _ = _load(tmp_path / "single" / "initial.safetensors")
    a, meta_a = _load(tmp_path / "single" / "adapters.safetensors")
    b, meta_b = _load(tmp_path / "fsdp" / "adapters.safetensors")
    assert meta_a["config"] == meta_b["config"]
    assert sorted(a) == sorted(b) == sorted(initial) and len(a) == 10  # 2 LoRAs, an Adapter, the head
    assert min(float((a[k] - initial[k]).abs().max()) for k in a) > 1e-3  # every tensor trained
    for k in a:
        # float32 round-off from reduce-scattering in a different order: measured 6.1e-8
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    best = tmp_path / "fsdp" / "checkpoints" / "best.safetensors"
    assert best.is_file()

    # the gathered checkpoint re-attaches to a single-process model, and merge works there
    torch.manual_seed(0)
    model = _vit()
    att = studio.load(
        model, tmp_path / "fsdp" / "adapters.safetensors", example_input=torch.zeros(1, 3, 16, 16)
    )
    state = {f"addins.{k}": v for k, v in att.addins.state_dict().items()}
    for k, v in b.items():
        got = state[k] if k.startswith("addins.") else dict(model.named_parameters())[k[len("base.") :]]
        assert torch.equal(got, v), k
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        before = model(x)
        att.merge()
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # torchrun with two gloo ranks: process start-up dominates
def test_cli_train_with_fsdp_under_torchrun(tmp_path):
    proc = _torchrun(
        "-m",
        "addin_studio.app.cli",
        "train",
        "--model",
        "timm:vit_tiny_patch16_224",
        "--image-size",
        "16",
        "--config",
        "(LoRA.adapt_output, r=2): ...->(blocks[0:2].attn.qkv){inout1}->...",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
        "--strategy",
        "fsdp",
        "--out",
        str(tmp_path / "out"),
        timeout=300,
    )
    # the ranks' unbuffered prints may share a line: find each result, not each line
    results = ACC_LINE.findall(proc.stdout)
    assert len(results) == 2 and results[0] == results[1]
    assert proc.stdout.count("wrote ") == 3  # rank 0 only
    tensors, meta = _load(tmp_path / "out" / "adapters.safetensors")
    assert len([k for k in tensors if "lora_" in k]) == 4  # 2 LoRAs x (A, B): whole tensors, not shards
    assert tensors["addins.LoRA_blocks_0_attn_qkv.lora_A"].shape == (2, 192)
    assert all(not isinstance(t, torch.distributed.tensor.DTensor) for t in tensors.values())
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, num_classes=10)
    studio.load(model, tmp_path / "out" / "adapters.safetensors")


def test_repeated_blocks_finds_the_transformer_layers():
    assert fsdp.repeated_blocks(_vit()) == ["blocks.0", "blocks.1"]
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=20, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
        )
    )
    assert fsdp.repeated_blocks(bert) == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2))
    assert fsdp.repeated_blocks(gpt2) == ["h.0", "h.1"]
    mixed = nn.Sequential(
        nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    )
    assert fsdp.repeated_blocks(mixed) == []  # children of different classes: no repeated blocks


def test_shard_model_and_trainer_strategy_errors():
    model = _vit()
    with pytest.raises(RuntimeError, match="init_distributed"):
        fsdp.shard_model(model)
    assert not fsdp.is_sharded(model)
    loader = [(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ValueError, match="strategy must be 'ddp' or 'fsdp'"):
        studio.Trainer(model, loader, strategy="deepspeed")


def test_save_adapters_without_a_process_group_writes_the_usual_file(tmp_path):
    torch.manual_seed(0)
    model = _vit()
    att = studio.attach(
        model,
        "(LoRA.adapt_output, r=2): ...->(blocks[0].attn.qkv){inout1}->...",
        example_input=torch.zeros(1, 3, 16, 16),
    )
    assert fsdp.save_adapters(att, tmp_path / "a.safetensors") == tmp_path / "a.safetensors"
    att.save(tmp_path / "b.safetensors")
    a, meta_a = _load(tmp_path / "a.safetensors")
    b, meta_b = _load(tmp_path / "b.safetensors")
    assert meta_a == meta_b and all(torch.equal(a[k], b[k]) for k in a)

"""One entry point per job: ``att.save`` and ``att.export_peft`` write adapter files; every other name
(checkpoint, Trainer, widget, FSDP, integrations) calls them."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

import addin_studio as studio
from addin_studio import checkpoint, train
from addin_studio.engine import attachment as engine_attachment
from addin_studio.scale import fsdp
from addin_studio.widget import export as widget_export

PACKAGE = Path(studio.__file__).parent


def _attached():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    return net, studio.attach(net, "(LoRA.adapt_output, r=2): ...->(0){inout1}->...")


def test_the_engine_writes_through_one_writer_per_job():
    assert engine_attachment._IO == {
        "save": checkpoint.adapters._write_attachment,
        "export_peft": checkpoint.peft._write_peft,
    }


def test_old_names_call_att_save_and_att_export_peft(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine_attachment.Attachment, "save", lambda self, path: calls.append(("save", path)))
    monkeypatch.setattr(
        engine_attachment.Attachment, "export_peft", lambda self, directory: calls.append(("peft", directory))
    )
    _, att = _attached()
    checkpoint.save_attachment(att, tmp_path / "a.safetensors")
    assert train.save_adapters(att, str(tmp_path / "b.safetensors")) == tmp_path / "b.safetensors"
    assert fsdp.save_adapters(att, tmp_path / "c.safetensors") == tmp_path / "c.safetensors"
    assert widget_export.save_adapters(att, tmp_path / "w") == tmp_path / "w" / "adapters.safetensors"
    checkpoint.export_peft(att, tmp_path / "p")
    assert widget_export.export_peft(att, tmp_path / "w") == tmp_path / "w" / "peft"
    assert calls == [
        ("save", tmp_path / "a.safetensors"),
        ("save", str(tmp_path / "b.safetensors")),
        ("save", tmp_path / "c.safetensors"),
        ("save", tmp_path / "w" / "adapters.safetensors"),
        ("peft", tmp_path / "p"),
        ("peft", tmp_path / "w" / "peft"),
    ]


def test_the_aliases_write_the_same_file_as_att_save(tmp_path):
    net, att = _attached()
    with torch.no_grad():
        att.addins["LoRA_0"].lora_B.normal_()
    att.save(tmp_path / "new.safetensors")
    checkpoint.save_attachment(att, tmp_path / "old.safetensors")
    train.save_adapters(att, tmp_path / "trainer.safetensors")
    files = [safe_open(str(tmp_path / f"{n}.safetensors"), "pt") for n in ("new", "old", "trainer")]
    assert files[0].metadata() == files[1].metadata() == files[2].metadata()
    keys = sorted(files[0].keys())
    assert keys == sorted(files[1].keys()) == sorted(files[2].keys()) and keys
    assert all(torch.equal(files[0].get_tensor(k), f.get_tensor(k)) for k in keys for f in files[1:])
    x = torch.randn(3, 4)
    trained = net(x)
    att.detach()
    with studio.load(net, tmp_path / "old.safetensors"):
        assert torch.equal(net(x), trained)


def test_only_the_checkpoint_package_writes_adapter_files():
    """A second implementation would need safetensors' writer: only checkpoint/ and the Trainer's
    no-attachment fallback (train/checkpointing.py save_trainable) reach it."""
    writers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if re.search(r"\bsave_file\(|\bfiles\.write\(|\bwrite_adapters\(", p.read_text())
    )
    assert writers == [
        "checkpoint/adapters.py",
        "checkpoint/files.py",
        "checkpoint/peft.py",
        "train/checkpointing.py",
    ]

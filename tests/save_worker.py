"""Worker for tests/test_distributed_save.py: trains a tiny ViT with LoRA (a Linear and a Conv2d one, plus a
trainable head) under torchrun with ``strategy="fsdp"`` or ``"ddp"``, then saves it with the ordinary calls —
``att.save``, ``att.export_peft`` and the Trainer's best-epoch checkpoint — made on every rank.

Rank 0 writes ``<out>/outputs.safetensors`` (the trained model's eval outputs on ``probe()``) and
``<out>/info.json`` (what each rank saw: files it wrote, whether the files existed when the calls returned,
the errors it got).

Usage: torchrun --nproc_per_node 2 tests/save_worker.py OUT_DIR {fsdp,ddp}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import addin_studio as studio
from addin_studio.scale import distributed as D
from addin_studio.scale import fsdp
from addin_studio.checkpoint import files

CONFIG = (
    "(LoRA.adapt_output, r=4, alpha=8): ...->(blocks[0:2].attn.qkv){inout1}->...\n"
    "(LoRA.adapt_output, r=2, alpha=4, layout=peft): ...->(patch_embed.proj){inout1}->...\n"
    "trainable(head)"
)


def vit() -> torch.nn.Module:
    """The base model: the same weights in every process (seeded)."""
    torch.manual_seed(0)
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


def probe() -> torch.Tensor:
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))


def main(out: Path, strategy: str) -> None:
    torch.set_num_threads(1)
    D.init_distributed(backend="gloo")
    world, rank = D.get_world_size(), D.get_rank()
    g = torch.Generator().manual_seed(123)
    data = TensorDataset(torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 4, (32,), generator=g))
    loader = DataLoader(
        data,
        batch_size=4,
        sampler=DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=7),
    )
    model = vit()
    att = studio.attach(model, CONFIG, example_input=data.tensors[0][:2])
    trainer = studio.Trainer(
        model,
        loader,
        epochs=1,
        lr=1e-2,
        optimizer="adamw",
        device="cpu",
        seed=0,
        progress=False,
        attachment=att,
        strategy=strategy,
        checkpoint_dir=out / "checkpoints",
    )
    trainer.fit()
    info: dict = {
        "rank": rank,
        "world": world,
        "sharded": fsdp.is_sharded(model),
        "wrapper": type(trainer.model).__name__,
    }

    written: list[str] = []
    atomic_write = files.atomic_write

    def counting(path, write):  # every safetensors file our writers make goes through here
        written.append(Path(path).name)
        atomic_write(path, write)

    files.atomic_write = counting
    trainer.model.eval()
    with torch.no_grad():
        outputs = trainer.model(probe())  # FSDP: every rank runs the whole forward pass

    att.save(out / "adapters.safetensors")  # every rank
    info["save_wrote"] = list(written)
    info["adapters_exist"] = (out / "adapters.safetensors").is_file()
    written.clear()
    att.export_peft(out / "peft")  # every rank
    info["export_wrote"] = list(written)
    info["peft_exist"] = (out / "peft" / "adapter_model.safetensors").is_file() and (
        out / "peft" / "adapter_config.json"
    ).is_file()
    written.clear()
    info["alias_returned"] = str(fsdp.save_adapters(att, out / "alias.safetensors"))
    info["alias_wrote"] = list(written)
    with torch.no_grad():
        info["outputs_unchanged"] = bool(torch.equal(trainer.model(probe()), outputs))
    if not info["sharded"] and D.is_main_process():  # the rank-0 idiom: no other rank takes part
        att.save(out / "rank0.safetensors")
    if info["sharded"]:  # rank 0 cannot write there: every rank must hear it, none may wait forever
        if D.is_main_process():
            (out / "a-file").write_text("not a folder")
        D.barrier()
        try:
            att.save(out / "a-file" / "adapters.safetensors")
        except Exception as exc:  # noqa: BLE001 — recorded for the test to check
            info["error"] = f"{type(exc).__name__}: {exc}"
    files.atomic_write = atomic_write

    infos: list = [None] * world
    dist.all_gather_object(infos, info)
    if D.is_main_process():
        save_file({"outputs": outputs.contiguous()}, str(out / "outputs.safetensors"))
        (out / "info.json").write_text(json.dumps(infos))
    D.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

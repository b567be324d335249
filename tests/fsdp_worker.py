"""Worker for tests/test_fsdp.py: trains a tiny ViT with LoRA (and a trainable head), with or without FSDP2.

Run under ``torchrun --nproc_per_node 2`` (the Trainer shards the model with ``strategy="fsdp"``) or as a
plain script (one process). The data, seed and global batch are the same in both cases, so the add-ins
both runs save (``<out>/adapters.safetensors``, gathered and written on rank 0) must agree.

Usage: python tests/fsdp_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import addin_studio as studio
from addin_studio.scale import distributed as D
from addin_studio.scale import fsdp

GLOBAL_BATCH = 8
SAMPLES = 32
EPOCHS = 2
CONFIG = (
    "(LoRA.adapt_output, r=4, alpha=8): ...->(blocks[0:2].attn.qkv){inout1}->...\n"
    "(Adapter.adapt_across_output, bottleneck=8): "
    "...->(blocks[0].norm2){in1}->...->(blocks[1].mlp){out1}->...\n"
    "trainable(head)"
)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    D.init_distributed(backend="gloo")
    world = D.get_world_size()
    g = torch.Generator().manual_seed(123)
    data = TensorDataset(
        torch.randn(SAMPLES, 3, 16, 16, generator=g), torch.randint(0, 4, (SAMPLES,), generator=g)
    )
    sampler = DistributedSampler(data, num_replicas=world, rank=D.get_rank(), shuffle=True, seed=7)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=4,
    )
    att = studio.attach(model, CONFIG, example_input=data.tensors[0][:2])
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        att.save(out / "initial.safetensors")
    trainer = studio.Trainer(
        model,
        loader,
        epochs=EPOCHS,
        lr=1e-2,
        optimizer="adamw",
        scheduler="cosine",
        device="cpu",
        seed=0,
        progress=False,
        attachment=att,
        strategy="fsdp",
        checkpoint_dir=out / "checkpoints",
        grad_clip=1.0,
    )
    history = trainer.fit()
    info = {
        "steps": len(history["loss"]),
        "world": world,
        "train_loss": history["train_loss"],
        "sharded": fsdp.is_sharded(model),
        "blocks": fsdp.repeated_blocks(model),
        "addin_param_types": sorted({type(p).__name__ for p in att.addins.parameters()}),
    }
    if fsdp.is_sharded(model):
        try:
            att.merge()
        except RuntimeError as exc:
            info["merge_error"] = str(exc)
        # each rank holds only its shard of every add-in tensor
        info["local_addin_numel"] = sum(p.to_local().numel() for p in att.addins.parameters())
    info["addin_numel"] = sum(p.numel() for p in att.addins.parameters())
    fsdp.save_adapters(att, out / "adapters.safetensors")  # a collective: every rank; rank 0 writes
    if D.is_main_process():
        (out / "history.json").write_text(json.dumps(info))
    D.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

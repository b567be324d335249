"""Worker for tests/test_ddp.py: trains the tutorial MLP with add-ins, with or without DDP.

Run under ``torchrun --nproc_per_node 2`` (distributed) or as a plain script (one process); both save the
trained add-ins to ``<out>/adapters.safetensors`` (rank 0 only). The data, seed and global batch are the
same in both cases, so the saved add-ins must agree.

Usage: python tests/ddp_worker.py OUT_DIR [--manual] [--fact]

By default the Trainer does the distributed set-up itself (DDP, sampler epochs, rank-0 checkpoints);
``--manual`` adds ``SamplerEpoch`` and (when distributed) wraps the model with ``distributed.wrap_model`` by
hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import addin_studio as studio
from addin_studio.scale import distributed as D
from addin_studio.examples import MLPAddin, TutorialMLP

GLOBAL_BATCH = 8
SAMPLES = 64
EPOCHS = 2
CONFIG = (
    "(MLPAddin.adapt_across_output): ...->(fc1){in1}->...->(fc2){out1}->...\n"
    "(MLPAddin.adapt_input): ...->{inout1}(fc3)->..."
)
# --fact: FacT-TK on fc1 (64 -> 32) and fc2 (32 -> 32), whose U, V and C are one set of shared Parameters
FACT_CONFIG = (
    "(FacT_tk.adapt_output, r=4, dropout=0.0): ...->(fc1){inout1}->...\n"
    "(FacT_tk.adapt_output, r=4, dropout=0.0): ...->(fc2){inout1}->..."
)


def _save(att: studio.Attachment, path: Path) -> None:
    att.save(path)  # the adapter-only checkpoint (safetensors, config string in the metadata)


def main(out: Path, manual: bool, config: str = CONFIG) -> None:
    torch.set_num_threads(1)
    distributed = D.init_distributed(backend="gloo")
    world = D.get_world_size()

    g = torch.Generator().manual_seed(123)
    data = TensorDataset(torch.randn(SAMPLES, 64, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g))
    # A DistributedSampler with one replica shuffles exactly like the 2-rank one (same permutation per
    # epoch), and each global batch of 8 is the union of the two ranks' batches of 4.
    sampler = DistributedSampler(data, num_replicas=world, rank=D.get_rank(), shuffle=True, seed=7)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    torch.manual_seed(0)
    model = TutorialMLP(64, 32, 10)
    att = studio.attach(model, config, addins={"MLPAddin": MLPAddin}, example_input=data.tensors[0][:2])
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        _save(att, out / "initial.safetensors")
    trained = D.wrap_model(model, attachment=att, device="cpu") if manual and distributed else model
    trainer = studio.Trainer(
        trained,
        loader,
        epochs=EPOCHS,
        lr=1e-2,
        optimizer="adamw",
        scheduler="cosine",
        device="cpu",
        seed=0,
        progress=False,
        attachment=att,
        callbacks=[D.SamplerEpoch(loader)] if manual else [],
        checkpoint_dir=out / f"checkpoints-rank{D.get_rank()}",
    )
    history = trainer.fit()
    if D.is_main_process():
        _save(att, out / "adapters.safetensors")
        (out / "history.json").write_text(
            json.dumps({"steps": len(history["loss"]), "world": world, "train_loss": history["train_loss"]})
        )
    D.cleanup()


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        manual="--manual" in sys.argv[2:],
        config=FACT_CONFIG if "--fact" in sys.argv[2:] else CONFIG,
    )

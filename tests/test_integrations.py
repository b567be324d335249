"""An attached model trains inside Hugging Face ``transformers.Trainer`` and PyTorch Lightning; the
documented callbacks write adapter-only checkpoints that re-attach to a fresh model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import addin_studio as studio


def test_the_core_imports_no_trainer_framework():
    code = (
        "import sys, addin_studio, addin_studio.engine, addin_studio.checkpoint, addin_studio.train;"
        "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- Hugging Face Trainer ----------------------------------------------------------------------------
LORA_BERT = (
    "(LoRA.adapt_output, r=4, alpha=8): ...->(bert.encoder.layer[0:2].attention.self.query){inout1}->..."
)


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 60, (n, 8), generator=g)
        self.labels = self.ids[:, 0] % 3  # learnable from the first token

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


def test_hf_trainer_trains_the_adapters_and_the_callback_writes_them(tmp_path):
    transformers = pytest.importorskip("transformers")
    from addin_studio.integrations.hf import SaveAdaptersCallback

    model = _tiny_bert()
    data = _Tokens()
    example = {"input_ids": data.ids[:2]}
    att = studio.attach(model, LORA_BERT, example_input=example)
    base_before = {k: v for k, v in _snapshot(model).items() if not k.startswith("addins.")}
    addins_before = _snapshot(att.addins)
    callback = SaveAdaptersCallback(att)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    # the Trainer optimizes exactly the add-ins: the frozen base has requires_grad=False
    trainer.train()
    assert trainer.state.global_step == 4
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in att.addins.parameters()}

    after = _snapshot(model)
    for k, v in base_before.items():
        assert torch.equal(after[k], v), k  # the base never moved
    moved = [k for k, v in _snapshot(att.addins).items() if not torch.equal(v, addins_before[k])]
    assert len(moved) == len(addins_before) == 4  # A and B of two LoRAs all trained

    out = tmp_path / "hf"
    assert [p.relative_to(out).as_posix() for p in callback.written] == [
        "checkpoint-2/adapters.safetensors",
        "checkpoint-4/adapters.safetensors",
        "adapters.safetensors",
    ]
    fresh = _tiny_bert()
    loaded = studio.load(fresh, out / "adapters.safetensors", example_input=example)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**example).logits, model(**example).logits, rtol=0, atol=0)
    assert str(loaded.config) == str(att.config)


def test_hf_callback_rejects_a_model_instead_of_an_attachment():
    pytest.importorskip("transformers")
    from addin_studio.integrations.hf import SaveAdaptersCallback

    with pytest.raises(TypeError, match="needs an Attachment"):
        SaveAdaptersCallback(nn.Linear(2, 2))


# -- PyTorch Lightning -------------------------------------------------------------------------------
LORA_MLP = "(LoRA.adapt_output, r=4): ...->(fc1){inout1}->...->(fc2){inout2}->..."


def _lightning_module(model: nn.Module, params):
    L = pytest.importorskip("lightning")

    class Classifier(L.LightningModule):
        strict_loading = False  # adapter-only checkpoints hold no base weights

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(params, lr=1e-2)

    return Classifier()


def test_lightning_trains_the_adapters_with_adapter_only_checkpoints(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from addin_studio.examples import TutorialMLP
    from addin_studio.integrations.lightning import AdapterCheckpoint

    torch.manual_seed(0)
    model = TutorialMLP(16, 16, 4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    att = studio.attach(model, LORA_MLP, example_input=x[:2])
    base_before = {k: v for k, v in _snapshot(model).items() if not k.startswith("addins.")}
    addins_before = _snapshot(att.addins)
    module = _lightning_module(model, list(att.parameters()))
    adapters = AdapterCheckpoint(att, dirpath=tmp_path / "adapters")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ckpt, adapters],
    )
    trainer.fit(module, loader)
    assert trainer.global_step == 4

    after = _snapshot(model)
    for k, v in base_before.items():
        assert torch.equal(after[k], v), k
    assert all(not torch.equal(v, addins_before[k]) for k, v in _snapshot(att.addins).items())

    ckpts = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(ckpts) == 2
    state = torch.load(ckpts[-1], weights_only=True, map_location="cpu")["state_dict"]
    assert sorted(state) == sorted(f"model.addins.{k}" for k in addins_before)  # no base weight
    for k, v in _snapshot(att.addins).items():
        assert torch.equal(state[f"model.addins.{k}"], v)

    assert adapters.written and adapters.written[-1] == tmp_path / "adapters" / "adapters.safetensors"
    from addin_studio.examples import TutorialMLP as Fresh

    torch.manual_seed(0)
    fresh = Fresh(16, 16, 4)
    studio.load(fresh, adapters.written[-1], example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)

    # resuming from an adapter-only .ckpt restores the add-ins into a model whose LoRAs start fresh
    torch.manual_seed(1)
    other = Fresh(16, 16, 4)
    other.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("addins.")})
    other_att = studio.attach(other, LORA_MLP, example_input=x[:2])
    resumed = _lightning_module(other, list(other_att.parameters()))
    trainer2 = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "resume",
        enable_checkpointing=False,
    )
    trainer2.fit(resumed, loader, ckpt_path=str(ckpts[-1]))
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)  # loaded, and no step left to run

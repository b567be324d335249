"""TrainableTokens (``addins/trainable_tokens.py``): train some rows of an embedding, as PEFT's trainable
tokens; identity at attach, one step moves only the listed rows, save/load, merge, detach, PEFT both ways."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import addin_studio as studio
from peft_compare import from_peft_refusal
from addin_studio.addins.trainable_tokens import format_indices, parse_indices

peft = pytest.importorskip("peft")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(self.emb(x)).mean(1)


def _tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


X = torch.tensor([[0, 3, 10, 19], [5, 10, 10, 2]])
STRING = '(TrainableTokens.adapt_weight, indices="3, 10"): ...->(emb){inout1}->...'


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "addins" not in k}


def test_indices_strings_parse_and_print_canonically():
    assert parse_indices("0, 10, 32000:32004") == [0, 10, 32000, 32001, 32002, 32003]
    assert parse_indices(7) == [7] and parse_indices([4, 2]) == [4, 2]
    assert format_indices([0, 10, 32000, 32001, 32002, 32003]) == "0, 10, 32000:32004"
    assert format_indices([3, 4]) == "3, 4"
    cfg = studio.parse('(TrainableTokens.adapt_weight, indices="5:9"): ...->(emb){inout1}->...')
    assert studio.parse(str(cfg)) == cfg
    with pytest.raises(
        ValueError, match=r"'4-6' is not a token number or a range 'start:end' \(in '1, 4-6'\)"
    ):
        parse_indices("1, 4-6")
    with pytest.raises(ValueError, match="the range '5:5' is empty"):
        parse_indices("5:5")


def test_identity_at_attach_one_step_moves_only_the_rows_and_detach_is_exact():
    model = _tiny()
    before, out = _state(model), model(X)
    att = studio.attach(model, STRING)
    assert torch.equal(model(X), out)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["addins.TrainableTokens_emb.rows"]
    opt = torch.optim.SGD(att.addins.parameters(), lr=0.5)
    model(X).square().sum().backward()
    opt.step()
    read = model.emb.weight  # the weight as the layer reads it
    changed = (read != before["emb.weight"]).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 10]
    assert torch.equal(read[[3, 10]], att.addins["TrainableTokens_emb"].rows)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())  # stored weight untouched
    trained = model(X)
    att.merge()
    assert torch.equal(model.emb._parameters["weight"], read)
    torch.testing.assert_close(model(X), trained)
    att.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    att.detach()
    assert torch.equal(model(X), out) and all(p.requires_grad for p in model.parameters())


def test_save_and_load_on_a_fresh_model(tmp_path):
    model = _tiny()
    att = studio.attach(model, STRING)
    with torch.no_grad():
        att.addins["TrainableTokens_emb"].rows.add_(1.0)
    att.save(tmp_path / "tokens.safetensors")
    fresh = _tiny()
    loaded = studio.load(fresh, tmp_path / "tokens.safetensors")
    assert str(loaded.config) == STRING
    assert torch.equal(fresh(X), model(X))


@pytest.mark.parametrize(
    "setting, message",
    [
        ("indices=20", "TrainableTokens index 20 is out of range: the layer has 20 rows (tokens 0 to 19)"),
        ('indices="3, 4, 3"', "TrainableTokens index 3 is listed twice"),
        ('indices="0:1000000000"', "TrainableTokens index 999999999 is out of range: the layer has 20 rows"),
        (
            'indices="0:20, 0:20"',
            "TrainableTokens indices list more tokens than the layer's 20 rows: some are listed twice",
        ),
        ('indices="3 4"', "TrainableTokens indices: '3 4' is not a token number or a range 'start:end'"),
        ("indices=1.5", "TrainableTokens indices must be a number, a list of numbers or a string like"),
    ],
)
def test_bad_indices_are_refused_and_leave_the_model_untouched(setting, message):
    model = _tiny()
    before = _state(model)
    with pytest.raises(studio.ConfigError) as info:
        studio.attach(model, f"(TrainableTokens.adapt_weight, {setting}): ...->(emb){{inout1}}->...")
    assert message in str(info.value)
    assert not hasattr(model, "addins") and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_a_layer_without_token_rows_is_refused():
    with pytest.raises(
        studio.ConfigError,
        match="TrainableTokens needs a layer with a 2-D weight of token rows "
        r"\(nn.Embedding\), not ReLU",
    ):
        studio.attach(
            nn.Sequential(nn.Embedding(5, 2), nn.ReLU()),
            "(TrainableTokens.adapt_weight, indices=1): ...->(1){inout1}->...",
            example_input=torch.tensor([[1, 2]]),
        )


def _tied_lm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=30, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    ).eval()


def test_tied_embeddings_adapt_only_the_placed_layer_and_merge_needs_untie():
    model = _tied_lm()
    ids = torch.tensor([[1, 4, 7]])
    att = studio.attach(
        model,
        '(TrainableTokens.adapt_weight, indices="4"): ...->(transformer.wte){inout1}->...',
        example_input=ids,
    )
    with torch.no_grad():
        att.addins["TrainableTokens_transformer_wte"].rows.add_(1.0)
    assert not torch.equal(model.transformer.wte.weight[4], model.lm_head.weight[4])  # lm_head reads W
    out = model(ids).logits
    with pytest.raises(
        ValueError,
        match=r"'transformer.wte.weight': it is the same parameter as 'lm_head.weight' "
        r"\(tied weights\)",
    ):
        att.merge()
    att.merge(untie=True)
    torch.testing.assert_close(model(ids).logits, out)
    att.detach()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_peft_trainable_tokens_config_both_ways(tmp_path):
    pm = peft.get_peft_model(
        _tiny(), peft.TrainableTokensConfig(target_modules=["emb"], token_indices=[3, 10])
    )
    with torch.no_grad():
        pm.base_model.model.emb.trainable_tokens_delta["default"].add_(0.5)
    pm.save_pretrained(str(tmp_path / "theirs"))
    model = _tiny()
    att = studio.from_peft(model, tmp_path / "theirs")
    assert str(att.config) == STRING
    torch.testing.assert_close(model(X), pm(X))
    att.export_peft(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["target_modules"], config["token_indices"]) == (
        "TRAINABLE_TOKENS",
        ["emb"],
        [3, 10],
    )
    back = peft.PeftModel.from_pretrained(_tiny(), str(tmp_path / "ours"))
    torch.testing.assert_close(back(X), pm(X))


def test_lora_with_trainable_token_indices_as_a_list_targets_the_input_embedding(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)

    def make():
        cfg = transformers.GPT2Config(
            vocab_size=30, n_positions=8, n_embd=8, n_layer=1, n_head=2, tie_word_embeddings=False
        )
        return transformers.GPT2LMHeadModel(cfg).eval()

    base = make()
    pm = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(target_modules=["c_attn"], trainable_token_indices=[2, 5])
    )
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.1)
    pm.save_pretrained(str(tmp_path))
    ids = torch.tensor([[2, 5, 1]])
    model = make()
    model.load_state_dict(base.state_dict())
    att = studio.from_peft(model, tmp_path)
    targets = [p.target.module for p in att.config.placements]
    assert targets == ["transformer.h.0.attn.c_attn", "transformer.wte"]
    torch.testing.assert_close(model(ids).logits, pm(ids).logits)


def test_from_peft_refuses_tokens_on_a_tied_embedding(tmp_path):
    pm = peft.get_peft_model(
        _tied_lm(), peft.LoraConfig(target_modules=["c_attn"], trainable_token_indices=[2])
    )
    pm.save_pretrained(str(tmp_path))
    assert from_peft_refusal(_tied_lm(), tmp_path).endswith(
        "trainable tokens on 'transformer.wte', whose weight is tied to 'lm_head.weight': PEFT adapts both; "
        "from_peft imports trainable tokens on untied layers only"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c, t: c.update(trainable_token_indices={"emb": [0, 500]}),
            "the token indices for 'emb': TrainableTokens index 500 is out of range: the layer has 100 rows "
            "(tokens 0 to 99)",
        ),
        (
            lambda c, t: c.update(trainable_token_indices={"nowhere": [0]}),
            "trainable tokens for module 'nowhere', which this EmbConv1D does not have",
        ),
        (
            lambda c, t: t.update(
                {"base_model.model.lin0.token_adapter.trainable_tokens_delta": torch.zeros(1, 10)}
            ),
            "tensor 'base_model.model.lin0.token_adapter.trainable_tokens_delta' "
            "belongs to no layer the config's "
            "token indices name",
        ),
    ],
)
def test_bad_peft_trainable_tokens_are_refused_by_name(change, message, tmp_path):
    from safetensors.torch import load_file, save_file
    from test_peft_matrix import _make

    make = _make("EmbConv1D")
    pm = peft.get_peft_model(
        make(), peft.LoraConfig(target_modules=["conv1d"], trainable_token_indices={"emb": [0, 10]})
    )
    pm.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    change(config, tensors)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    assert from_peft_refusal(make(), tmp_path) == f"{tmp_path}: {message}"

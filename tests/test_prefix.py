"""Prefix tuning: equal to PEFT's PREFIX_TUNING on transformers models, timm attention against a
hand-written reference, training moves only the prefixes, save/load, exact detach, PEFT files both ways,
clear refusals that leave the model untouched; and the engine's forward methods it is built on."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import timm
import torch
from torch import nn

import addin_studio as studio
from addin_studio import AddinBase, ConfigError
from addin_studio.addins.base import forward_method, methods_for
from addin_studio.checkpoint.peft import from_peft

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOKENS = torch.tensor([[5, 7, 11, 13, 2], [3, 17, 19, 23, 29]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second sequence padded on the right


def _gpt2():
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    )


def _llama():  # grouped-query attention (2 key/value heads for 4 heads) and rotary positions
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=37,
            vocab_size=50,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )


def _bert():
    return transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=50
        )
    )


class _Wrapped(nn.Module):
    """A BertModel under a head, as a task model holds it (prefix tuning goes on the backbone)."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = _bert()
        self.head = nn.Linear(32, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)


def _vit(**kw):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3, **kw
    ).eval(), torch.randn(2, 3, 32, 32)


def _pair(make):
    """Two copies of one model: ours and the one PEFT wraps."""
    torch.manual_seed(0)
    ours = make().eval()
    theirs = make().eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {
            n: (type(m), len(m._forward_pre_hooks), len(m._forward_hooks), "forward" in m.__dict__)
            for n, m in model.named_modules()
        },
    )


def _assert_untouched(model, snapshot):
    state, flags, modules = _snapshot(model)
    assert list(state) == list(snapshot[0]) and all(torch.equal(state[k], snapshot[0][k]) for k in state)
    assert flags == snapshot[1] and modules == snapshot[2]


@pytest.mark.parametrize("make, backbone", [(_gpt2, "transformer"), (_llama, "model")], ids=["gpt2", "llama"])
@pytest.mark.parametrize("projection", [False, True], ids=["embedding", "projection"])
def test_prefix_equals_peft_on_identical_weights(make, backbone, projection):
    ours, theirs = _pair(make)
    kwargs = {"encoder_hidden_size": 16} if projection else {}
    theirs = peft.get_peft_model(
        theirs,
        peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=projection, **kwargs
        ),
    )
    setting = ", projection=true, hidden=16" if projection else ""
    att = studio.attach(
        ours,
        f"(PrefixTuning.adapt_forward, num_tokens=3{setting}): ...->{{inout1}}({backbone})->...",
        example_input=TOKENS,
    )
    addin = att.addins[f"PrefixTuning_{backbone}"]
    encoder = theirs.prompt_encoder["default"]
    assert {n: p.shape for n, p in addin.prefix.named_parameters()} == {
        n: p.shape for n, p in encoder.named_parameters()
    }
    addin.prefix.load_state_dict(encoder.state_dict())
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]])  # given positions count without prefixes
    embeddings = ours.get_input_embeddings()(TOKENS).detach()
    for extra in (
        {"input_ids": TOKENS, "attention_mask": MASK},
        {"input_ids": TOKENS},
        {"input_ids": TOKENS, "attention_mask": MASK.flip(1), "position_ids": positions},
        {"inputs_embeds": embeddings, "attention_mask": MASK},
    ):
        want = theirs(**extra).logits
        torch.testing.assert_close(ours(**extra).logits, want, rtol=0, atol=1e-5)
    trainable, _ = studio.count_parameters(ours)
    assert trainable == sum(p.numel() for p in encoder.parameters())


@pytest.mark.parametrize("make, path", [(_gpt2, "transformer"), (_Wrapped, "bert")], ids=["gpt2", "bert"])
def test_padding_is_hidden_and_prefixes_visible(make, path):
    """With the extended mask, a right-padded sequence gives the outputs of the same tokens unpadded."""
    torch.manual_seed(0)
    model = make().eval()
    bare = copy.deepcopy(model)
    studio.attach(
        model,
        f"(PrefixTuning.adapt_forward, num_tokens=4): ...->{{inout1}}({path})->...",
        example_input=TOKENS,
    )

    def out(net, ids, mask):
        y = net(input_ids=ids, attention_mask=mask)
        return y.logits if hasattr(y, "logits") else y

    ones = torch.ones(1, 3, dtype=torch.long)
    alone = out(model, TOKENS[1:, :3], ones)[0]
    torch.testing.assert_close(out(model, TOKENS, MASK)[1, :3], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(alone, out(bare, TOKENS[1:, :3], ones)[0], atol=1e-3)  # the prefixes count


@pytest.mark.parametrize("make, backbone", [(_gpt2, "transformer"), (_llama, "model")], ids=["gpt2", "llama"])
def test_generate_with_the_cache_equals_the_full_forward_pass(make, backbone):
    """generate() fills its cache once with the prefixes and counts positions past them: each step's
    scores equal a forward pass over the whole sequence so far. (PEFT 0.21's own generate() with
    transformers 5 loses the prefixes — it passes them as past_key_values, renamed cache — so it is
    not the reference here.)"""
    torch.manual_seed(0)
    model = make().eval()
    studio.attach(model, f"(PrefixTuning.adapt_forward, num_tokens=3): ...->{{inout1}}({backbone})->...")
    out = model.generate(
        input_ids=TOKENS,
        attention_mask=torch.ones_like(TOKENS),
        max_new_tokens=3,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    assert len(out.scores) == 3
    for step, scores in enumerate(out.scores):
        seq = out.sequences[:, : TOKENS.shape[1] + step]
        full = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]
        torch.testing.assert_close(scores, full, rtol=0, atol=1e-5)


def _reference(
    attn: nn.Module,
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm's attention written out by hand, with ``keys``/``values`` ``[heads, n, head_dim]`` in front."""
    B, N, C = x.shape
    H = attn.num_heads
    D = C // H
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).view(B, N, 3, H, D).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
    q, k = attn.q_norm(q), attn.k_norm(k)
    k = torch.cat([keys.expand(B, -1, -1, -1), k], dim=2)
    v = torch.cat([values.expand(B, -1, -1, -1), v], dim=2)
    scores = q @ k.transpose(-1, -2) / D**0.5
    if mask is not None:
        scores = scores.masked_fill(
            ~torch.cat([torch.ones(N, keys.shape[1], dtype=torch.bool), mask], 1), float("-inf")
        )
    out = attn.norm((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))  # Identity unless scale_norm
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize(
    "norms", [{}, {"qk_norm": True}, {"scale_attn_norm": True}], ids=["plain", "qk_norm", "scale_norm"]
)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "manual"])
def test_timm_attention_equals_a_hand_written_reference(norms, fused):
    vit, x = _vit(**norms)
    for name in norms:  # random affine norms, so that a skipped norm shows
        norm = vit.blocks[0].attn.norm if name == "scale_attn_norm" else vit.blocks[0].attn.k_norm
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    att = studio.attach(
        vit,
        "(PrefixTuning.adapt_forward, num_tokens=4): ...->{inout1}(blocks[0:2].attn)->...",
        example_input=x,
    )
    assert len(att.addins) == 2
    attn = vit.blocks[0].attn
    attn.fused_attn = fused
    addin = att.addins["PrefixTuning_blocks_0_attn"]
    rows = addin.prefix.embedding.weight.detach().view(4, 2, 3, 64)  # [tokens, k/v, heads, head_dim]
    keys, values = rows[:, 0].transpose(0, 1), rows[:, 1].transpose(0, 1)
    h = torch.randn(2, 17, 192)
    with torch.no_grad():
        torch.testing.assert_close(attn(h), _reference(attn, h, keys, values), rtol=0, atol=1e-5)
        causal = torch.ones(17, 17, dtype=torch.bool).tril()
        torch.testing.assert_close(
            attn(h, is_causal=True), _reference(attn, h, keys, values, causal), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            attn(h, attn_mask=causal), _reference(attn, h, keys, values, causal), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("kind", ["timm", "gpt2"])
def test_prefix_trains_only_its_parameters_saves_loads_and_detaches_exactly(tmp_path, kind):
    if kind == "timm":
        model, x = _vit()
        config = (
            "(PrefixTuning.adapt_forward, num_tokens=2, projection=true): "
            "...->{inout1}(blocks[0:2].attn)->..."
        )
        run = model
    else:
        torch.manual_seed(0)
        model, x = _gpt2().eval(), TOKENS
        config = "(PrefixTuning.adapt_forward, num_tokens=2): ...->{inout1}(transformer)->..."

        def run(ids):
            return model(input_ids=ids, attention_mask=MASK).logits

    fresh = copy.deepcopy(model)
    snapshot, y0 = _snapshot(model), run(x).detach()
    att = studio.attach(model, config, example_input=x)
    y_attached = run(x).detach()
    assert not torch.allclose(y_attached, y0)  # not an identity: the attention also sees the prefixes
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    added = {n: p.detach().clone() for n, p in att.addins.named_parameters()}
    assert added and all(p.requires_grad for p in att.addins.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    opt.zero_grad()
    run(x).square().mean().backward()
    opt.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, added[n]) for n, p in att.addins.named_parameters())
    y1 = run(x).detach()
    pickled = pickle.loads(pickle.dumps(model))  # the forward method travels with the model
    pickled_run = (
        pickled if kind == "timm" else (lambda ids: pickled(input_ids=ids, attention_mask=MASK).logits)
    )
    torch.testing.assert_close(pickled_run(x), y1, rtol=0, atol=0)
    att.save(tmp_path / "prefix.safetensors")
    att.detach()
    _assert_untouched(model, snapshot)
    torch.testing.assert_close(run(x), y0, rtol=0, atol=0)
    loaded = studio.load(fresh, tmp_path / "prefix.safetensors", example_input=x)
    fresh_run = fresh if kind == "timm" else (lambda ids: fresh(input_ids=ids, attention_mask=MASK).logits)
    torch.testing.assert_close(fresh_run(x), y1, rtol=0, atol=0)
    loaded.detach()


def test_peft_directories_both_ways(tmp_path):
    ours, theirs = _pair(_gpt2)
    theirs_model = peft.get_peft_model(
        theirs,
        peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
        ),
    )
    theirs_model.save_pretrained(tmp_path / "peft")
    want = theirs_model(input_ids=TOKENS, attention_mask=MASK).logits
    fresh = copy.deepcopy(ours)
    att = from_peft(ours, tmp_path / "peft", example_input=TOKENS)
    assert str(att.config) == "(PrefixTuning.adapt_forward, num_tokens=3): ...->{inout1}(transformer)->..."
    torch.testing.assert_close(ours(input_ids=TOKENS, attention_mask=MASK).logits, want, rtol=0, atol=1e-5)
    att.export_peft(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (
        config["peft_type"],
        config["task_type"],
        config["num_virtual_tokens"],
        config["num_layers"],
        config["token_dim"],
        config["num_attention_heads"],
    ) == ("PREFIX_TUNING", "CAUSAL_LM", 3, 2, 32, 4)
    back = peft.PeftModel.from_pretrained(fresh, tmp_path / "ours")
    torch.testing.assert_close(back(input_ids=TOKENS, attention_mask=MASK).logits, want, rtol=0, atol=1e-5)


def test_peft_import_refuses_a_model_that_does_not_fit(tmp_path):
    _, theirs = _pair(_gpt2)
    peft.get_peft_model(
        theirs, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    ).save_pretrained(tmp_path / "peft")
    other = _llama().eval()  # 2 key/value heads of 8 values, not 4 of 8
    snapshot = _snapshot(other)
    with pytest.raises(
        ValueError,
        match=r"is for 2 layers of 4 key/value heads \(32 values\); 'model' has "
        r"2 layers of 2 \(16 values\)",
    ):
        from_peft(other, tmp_path / "peft")
    _assert_untouched(other, snapshot)
    vit, x = _vit()
    with pytest.raises(ValueError, match="VisionTransformer has no transformers backbone"):
        from_peft(vit, tmp_path / "peft")


def test_timm_prefixes_have_no_peft_form(tmp_path):
    vit, x = _vit()
    att = studio.attach(
        vit, "(PrefixTuning.adapt_forward): ...->{inout1}(blocks[0].attn)->...", example_input=x
    )
    with pytest.raises(
        ValueError, match="PrefixTuning_blocks_0_attn' is on a Attention, which PEFT cannot hold"
    ):
        att.export_peft(tmp_path / "out")
    att.detach()


@pytest.mark.parametrize(
    "config, message",
    [
        (
            "(PrefixTuning.adapt_forward): ...->{inout1}(blocks[0].attn.qkv)->...",
            r"prefix tuning cannot go on 'blocks.0.attn.qkv' \(Linear\): "
            r"prefix tuning goes on a transformers "
            r"model's backbone .* or on a timm Attention",
        ),
        (
            "(PrefixTuning.adapt_forward): ...->{inout1}(blocks[0])->...",
            r"prefix tuning cannot go on 'blocks.0' \(Block\)",
        ),
        (
            "(PrefixTuning.adapt_forward): ...->(blocks[0].attn){inout1}->...",
            r"prefix tuning replaces the forward of 'blocks.0.attn' \(Attention\): "
            r"write it \{inout1\}\(module\)",
        ),
        (
            "(PrefixTuning.adapt_forward, num_tokens=0): ...->{inout1}(blocks[0].attn)->...",
            r"PrefixTuning num_tokens must be a positive integer, got 0",
        ),
        (
            "(PrefixTuning.adapt_forward, hidden=64): ...->{inout1}(blocks[0].attn)->...",
            r"PrefixTuning hidden=64 is the width of the projection's hidden layer; it needs projection=true",
        ),
        (
            "(PrefixTuning.adapt_forward): ...->{inout1}(blocks[0].attn)->...\n"
            "(PrefixTuning.adapt_forward): ...->{inout1}(blocks[0].attn)->...",
            r"replaces the forward of 'blocks\[0\].attn', but its forward is already replaced by "
            r"\(PrefixTuning.adapt_forward\) at blocks.0.attn:pre in this config",
        ),
    ],
)
def test_wrong_placements_are_config_errors_and_leave_the_model_untouched(config, message):
    vit, x = _vit()
    snapshot = _snapshot(vit)
    with pytest.raises(ConfigError, match=message):
        studio.attach(vit, config, example_input=x)
    _assert_untouched(vit, snapshot)


class _Doubler(AddinBase):
    """A forward method that runs the module's own forward and doubles the result."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    @forward_method
    def double_forward(self, module, forward, args, kwargs):
        return forward(*args, **kwargs) * self.scale


def test_prefix_tuning_is_written_before_the_module():
    prefix = studio.available_addins()["PrefixTuning"]
    assert methods_for(prefix, "pre") == ["adapt_forward"] and methods_for(prefix, "post") == []


def test_forward_methods_are_pre_only_stack_with_hooks_and_detach_exactly():
    assert methods_for(_Doubler, "pre") == ["adapt_across_input", "adapt_input", "double_forward"]
    assert "double_forward" not in methods_for(_Doubler, "post")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    y0 = model(x)
    config = (
        "(Doubler.double_forward): ...->{inout1}(0)->...\n(LoRA.adapt_output, r=2): ...->(0){inout1}->..."
    )
    att = studio.attach(model, config, addins={"Doubler": _Doubler})
    lora = att.addins["LoRA_0"]
    with torch.no_grad():
        lora.lora_B.fill_(0.1)
    h = model[0]
    expected = model[2](torch.relu(2 * nn.functional.linear(x, h.weight, h.bias) + lora(x)))
    torch.testing.assert_close(model(x), expected)  # the hook sees the replaced forward's output
    with pytest.raises(ConfigError, match=r"its forward is already replaced by \(Doubler.double_forward\)"):
        studio.attach(
            model,
            "(Doubler.double_forward): ...->{inout1}(0)->...",
            addins={"Doubler": _Doubler},
            freeze=False,
        )
    att.detach()
    assert "forward" not in h.__dict__ and type(h) is nn.Linear
    torch.testing.assert_close(model(x), y0, rtol=0, atol=0)


class _Broken(AddinBase):
    @forward_method
    def adapt_forward(self, module, forward, args, kwargs):
        return forward(*args, **kwargs)[..., :1]  # a wrong width for the next layer


def test_attach_names_the_forward_method_that_breaks_the_forward_pass():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(2, 2))
    snapshot = _snapshot(model)
    config = "(LoRA.adapt_output): ...->(0){inout1}->...\n(Broken.adapt_forward): ...->{inout1}(1)->..."
    with pytest.raises(ConfigError, match=r"\(Broken.adapt_forward\) at 1:pre breaks the forward pass"):
        studio.attach(model, config, addins={"Broken": _Broken}, example_input=torch.randn(3, 4))
    _assert_untouched(model, snapshot)


def test_a_four_dimensional_mask_is_refused_clearly():
    torch.manual_seed(0)
    model = _gpt2().eval()
    studio.attach(model, "(PrefixTuning.adapt_forward, num_tokens=3): ...->{inout1}(transformer)->...")
    with pytest.raises(
        ValueError,
        match=r"extends a \[batch, tokens\] attention_mask by its 3 prefixes; "
        r"got one of shape \(2, 1, 5, 5\)",
    ):
        model(input_ids=TOKENS, attention_mask=torch.ones(2, 1, 5, 5))


def test_the_strategy_places_prefix_tuning_where_it_goes():
    vit, x = _vit()
    cfg = studio.strategies.prefix_tuning(vit, num_tokens=4, trainable=["head"])
    assert str(cfg) == (
        "(PrefixTuning.adapt_forward, num_tokens=4): ...->{inout1}(blocks[0:2].attn)->...\ntrainable(head)"
    )
    with studio.attach(vit, cfg, example_input=x):
        assert studio.count_parameters(vit)[0] == 2 * 4 * 2 * 192 + 192 * 3 + 3
    gpt = _gpt2()
    assert str(studio.strategies.prefix_tuning(gpt, projection=True, hidden=16)) == (
        "(PrefixTuning.adapt_forward, hidden=16, num_tokens=10, projection=true): "
        "...->{inout1}(transformer)->..."
    )
    with pytest.raises(
        ValueError,
        match="Sequential has no module prefix tuning can go on: prefix tuning goes "
        "on a transformers model's backbone",
    ):
        studio.strategies.prefix_tuning(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="below the model's root, and GPT2Model is one itself"):
        studio.strategies.prefix_tuning(gpt.transformer)


def test_gradient_checkpointing_is_refused_on_transformers_and_works_on_timm():
    torch.manual_seed(0)
    model = _gpt2()
    studio.attach(model, "(PrefixTuning.adapt_forward, num_tokens=3): ...->{inout1}(transformer)->...")
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="does not work with gradient checkpointing"):
        model(input_ids=TOKENS)
    model.eval()  # checkpointing is off outside training
    assert model(input_ids=TOKENS).logits.shape == (2, 5, 50)
    vit, x = _vit()
    att = studio.attach(
        vit,
        "(PrefixTuning.adapt_forward, num_tokens=3): ...->{inout1}(blocks[0:2].attn)->...",
        example_input=x,
    )
    vit.train()
    vit(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in att.addins.named_parameters()}
    att.addins.zero_grad()
    vit.set_grad_checkpointing(True)
    vit(x).sum().backward()
    for n, p in att.addins.named_parameters():
        torch.testing.assert_close(p.grad, plain[n])


def test_peft_classifier_heads_come_as_modules_to_save_both_ways(tmp_path):
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=50,
        n_positions=64,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    ours = transformers.GPT2ForSequenceClassification(config).eval()
    theirs = copy.deepcopy(ours)
    peft.get_peft_model(
        theirs, peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)
    ).save_pretrained(tmp_path / "peft")
    with pytest.raises(ValueError, match="overwrites base module 'score' \\(modules_to_save\\)"):
        from_peft(ours, tmp_path / "peft")
    att = from_peft(ours, tmp_path / "peft", modules_to_save=True)
    assert str(att.config) == (
        "(PrefixTuning.adapt_forward, num_tokens=3): ...->{inout1}(transformer)->...\ntrainable(score.weight)"
    )
    with torch.no_grad():
        ours.score.weight.add_(1.0)  # a trained head
    att.export_peft(tmp_path / "ours")
    from safetensors.torch import load_file

    written = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert sorted(written) == ["base_model.score.weight", "prompt_embeddings"]
    assert torch.equal(written["base_model.score.weight"], ours.score.weight)
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    att.detach()
    fresh = copy.deepcopy(ours)
    back = from_peft(fresh, tmp_path / "ours", modules_to_save=True)
    assert torch.equal(
        back.addins["PrefixTuning_transformer"].prefix.embedding.weight, written["prompt_embeddings"]
    )
    assert torch.equal(fresh.score.weight, written["base_model.score.weight"])

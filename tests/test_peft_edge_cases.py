"""PEFT interop as an adversarial user meets it: real PEFT 0.21 directories for config options the other
PEFT tests do not list, and hand-edited ones. Each either loads with PEFT's outputs (and exports back to a
directory PEFT loads with the same outputs) or is refused with one ValueError naming the file and the
option, leaving the model untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import addin_studio as studio
from peft_compare import from_peft_refusal

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.lin0 = nn.Linear(6, 8)
        self.lin1 = nn.Linear(8, 3)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(self.emb(x))))


def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=40,
    )
    return transformers.LlamaForCausalLM(config).eval()


X = torch.tensor([[1, 2, 3], [4, 5, 9]])


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def _save(make, config, directory: Path) -> Path:
    """A PEFT directory for ``config`` on ``make()``, every trainable tensor perturbed (so B is not zero)."""
    pm = peft.get_peft_model(make(), config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    pm.save_pretrained(directory)
    return directory


def _peft_out(make, directory: Path) -> torch.Tensor:
    return _out(peft.PeftModel.from_pretrained(make(), directory).eval(), X)


def _refused(make, directory: Path, *needles: str, **kwargs) -> str:
    message = from_peft_refusal(make(), directory, **kwargs)
    assert str(directory) in message
    for needle in needles:
        assert needle in message, message
    return message


def _edit_config(directory: Path, **fields) -> None:
    config = json.loads((directory / CONFIG).read_text())
    config.update(fields)
    (directory / CONFIG).write_text(json.dumps(config))


def _round_trip(make, directory: Path, tmp_path: Path) -> None:
    """from_peft gives PEFT's outputs; export_peft writes a directory PEFT loads with the same outputs."""
    want = _peft_out(make, directory)
    model = make()
    att = studio.from_peft(model, directory)
    torch.testing.assert_close(_out(model, X), want, rtol=1e-5, atol=1e-6)
    att.export_peft(tmp_path / "back")
    torch.testing.assert_close(_peft_out(make, tmp_path / "back"), want, rtol=1e-5, atol=1e-6)


def test_targeted_embedding_saved_with_its_base_weight_loads(tmp_path):
    # PEFT's save_embedding_layers="auto" writes the targeted embed_tokens' base weight beside its LoRA
    directory = _save(llama, peft.LoraConfig(target_modules=["embed_tokens", "q_proj"], r=4), tmp_path / "a")
    from safetensors.torch import load_file

    assert "base_model.model.model.embed_tokens.base_layer.weight" in load_file(directory / WEIGHTS)
    _round_trip(llama, directory, tmp_path)


def test_saved_embedding_weight_that_differs_from_the_model_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = _save(llama, peft.LoraConfig(target_modules=["embed_tokens", "q_proj"], r=4), tmp_path / "a")
    tensors = load_file(directory / WEIGHTS)
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    tensors[key] = tensors[key] + 1
    save_file(tensors, directory / WEIGHTS)
    _refused(llama, directory, key, "save_embedding_layers", "'model.embed_tokens.weight'")


def test_orthogonal_init_loads(tmp_path):
    # "orthogonal" initialises lora_A/B only (the base weights stay), so the file's tensors are the adapter
    directory = _save(
        tiny,
        peft.LoraConfig(target_modules=["lin0", "lin1"], r=4, init_lora_weights="orthogonal"),
        tmp_path / "a",
    )
    _round_trip(tiny, directory, tmp_path)


def test_bdlora_is_refused_by_name(tmp_path):
    from peft.tuners.lora.config import BdLoraConfig

    bd = BdLoraConfig(target_modules_bd_a=["lin1"], target_modules_bd_b=["lin0"], nblocks=2)
    directory = _save(
        tiny, peft.LoraConfig(target_modules=["lin0", "lin1"], r=4, use_bdlora=bd), tmp_path / "a"
    )
    _refused(tiny, directory, "use_bdlora")


@pytest.mark.parametrize(
    "field, value, want",
    [
        ("target_parameters", [3], "a list of strings"),
        ("target_parameters", "lin0.weight", "a list of strings"),
        ("target_modules", 5, "a string or a list of strings"),
        ("exclude_modules", {"a": 1}, "a string or a list of strings"),
        ("lora_bias", "yes", "a bool"),
    ],
)
def test_target_fields_of_the_wrong_json_type_are_refused(tmp_path, field, value, want):
    directory = _save(tiny, peft.LoraConfig(target_modules=["lin0"], r=4), tmp_path / "a")
    _edit_config(directory, **{field: value})
    _refused(tiny, directory, f"'{field}'", want)


def test_lora_tensors_for_a_module_the_config_does_not_target_are_refused(tmp_path):
    # PEFT skips them (its outputs would differ from loading them), so the directory contradicts itself
    directory = _save(tiny, peft.LoraConfig(target_modules=["lin0", "lin1"], r=4), tmp_path / "a")
    _edit_config(directory, target_modules=["lin0"])
    _refused(tiny, directory, "'lin1'", "target_modules")
    _edit_config(directory, target_modules=["lin0", "lin1"], exclude_modules=["lin1"])
    _refused(tiny, directory, "'lin1'", "exclude_modules")


def test_tensor_rank_that_contradicts_r_or_rank_pattern_is_refused(tmp_path):
    directory = _save(
        tiny, peft.LoraConfig(target_modules=["lin0", "lin1"], r=4, rank_pattern={"lin1": 2}), tmp_path / "a"
    )
    _round_trip(tiny, directory, tmp_path)
    _edit_config(directory, rank_pattern={})
    _refused(tiny, directory, "'lin1'", "rank 2", "rank 4")
    _edit_config(directory, r=8, rank_pattern={"lin1": 2})
    _refused(tiny, directory, "'lin0'", "rank 4", "rank 8")


class Nested(nn.Module):
    """A root ``fc`` and a ``sub.fc``: PEFT's list ``target_modules=["fc"]`` reaches both."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.sub = nn.Sequential()
        self.sub.add_module("fc", nn.Linear(6, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.sub(torch.relu(self.fc(x))))


def nested() -> Nested:
    torch.manual_seed(0)
    return Nested().eval()


@pytest.mark.parametrize("init", ["kaiming", "pissa"])
def test_export_targets_only_the_attached_module_when_its_name_is_a_suffix_of_another(tmp_path, init):
    model = nested()
    x = torch.randn(3, 6)
    att = studio.attach(model, f"(LoRA.adapt_output, r=2, init={init}): ...->(fc){{inout1}}->...")
    with torch.no_grad():
        for _, _, addin in att.entries:
            addin.lora_B.add_(0.3)
        want = model(x)
    att.export_peft(tmp_path)
    pm = peft.PeftModel.from_pretrained(nested(), tmp_path).eval()
    adapted = sorted(
        n.removeprefix("base_model.model.").removesuffix(".lora_A")
        for n, _ in pm.named_modules()
        if n.endswith(".lora_A")
    )
    assert adapted == ["fc"]
    assert torch.equal(pm.base_model.model.sub.fc.weight, nested().sub.fc.weight)  # PiSSA left it alone
    with torch.no_grad():
        torch.testing.assert_close(pm(x), want, rtol=1e-5, atol=1e-6)
    again = nested()
    studio.from_peft(again, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), want, rtol=1e-5, atol=1e-6)


class Matmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):
        return x @ self.weight


def test_export_of_a_target_parameter_whose_name_is_a_suffix_of_another_is_refused(tmp_path):
    model = nested()
    model.fc, model.sub.fc = Matmul(), Matmul()
    att = studio.attach(model, "(LoRA.adapt_weight, r=2, param=weight): ...->(fc){inout1}->...")
    with pytest.raises(
        ValueError, match=r"target_parameters \['fc.weight'\] would adapt 'sub.fc.weight' too"
    ):
        att.export_peft(tmp_path)
    assert not (tmp_path / WEIGHTS).exists()


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def test_modules_to_save_names_a_nested_module_by_its_last_name(tmp_path):
    # PEFT's modules_to_save entries are suffixes: "embed_tokens" is Llama's "model.embed_tokens"
    directory = _save(
        llama,
        peft.LoraConfig(target_modules=["q_proj"], r=4, modules_to_save=["embed_tokens"]),
        tmp_path / "a",
    )
    want = _peft_out(llama, directory)
    _refused(llama, directory, "'embed_tokens'", "modules_to_save=True")
    model = llama()
    att = studio.from_peft(model, directory, modules_to_save=["embed_tokens"])
    torch.testing.assert_close(_out(model, X), want, rtol=1e-5, atol=1e-6)
    assert model.model.embed_tokens.weight.requires_grad
    att.export_peft(tmp_path / "back")
    torch.testing.assert_close(_peft_out(llama, tmp_path / "back"), want, rtol=1e-5, atol=1e-6)


def test_lora_on_a_tied_lm_head_loads(tmp_path):
    # GPT-2's lm_head shares wte's weight; PEFT's save_embedding_layers writes it as lm_head.base_layer.weight
    directory = _save(gpt2, peft.LoraConfig(target_modules=["lm_head", "c_attn"], r=4), tmp_path / "a")
    _round_trip(gpt2, directory, tmp_path)


def test_modules_to_save_on_a_tied_weight_is_refused(tmp_path):
    directory = _save(
        gpt2, peft.LoraConfig(target_modules=["c_attn"], r=4, modules_to_save=["lm_head"]), tmp_path / "a"
    )
    _refused(gpt2, directory, "'lm_head.weight'", "ties to 'transformer.wte.weight'", modules_to_save=True)


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=1,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        vocab_size=40,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config).eval()


def test_bias_all_with_modules_to_save_loads(tmp_path):
    # bias="all" also saves the modules_to_save wrapper's inner biases (classifier.modules_to_save.bias,
    # classifier.original_module.bias) beside classifier.bias
    from safetensors.torch import load_file, save_file

    config = peft.LoraConfig(
        target_modules=["query"], r=4, bias="all", modules_to_save=["classifier"], task_type="SEQ_CLS"
    )
    directory = _save(bert, config, tmp_path / "a")
    tensors = load_file(directory / WEIGHTS)
    assert "base_model.model.classifier.original_module.bias" in tensors
    want = _peft_out(bert, directory)
    model = bert()
    att = studio.from_peft(model, directory, modules_to_save=True, base_biases=True)
    torch.testing.assert_close(_out(model, X), want, rtol=1e-5, atol=1e-6)
    att.export_peft(tmp_path / "back")
    torch.testing.assert_close(_peft_out(bert, tmp_path / "back"), want, rtol=1e-5, atol=1e-6)
    tensors["base_model.model.classifier.modules_to_save.bias"] += 1  # the two copies disagree
    save_file(tensors, directory / WEIGHTS)
    _refused(bert, directory, "'classifier.bias'", "twice", modules_to_save=True, base_biases=True)


def test_prefix_tuning_fields_peft_fills_in_or_ignores(tmp_path):
    directory = _save(
        llama, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3), tmp_path / "a"
    )
    want = _peft_out(llama, directory)
    _edit_config(directory, num_transformer_submodules=None)  # PEFT fills in 1 for a decoder
    assert torch.equal(_peft_out(llama, directory), want)
    model = llama()
    studio.from_peft(model, directory)
    torch.testing.assert_close(_out(model, X), want, rtol=1e-5, atol=1e-6)
    _edit_config(directory, task_type=None)  # PEFT's PeftModel then leaves the prefixes out
    assert torch.equal(_peft_out(llama, directory), _out(llama(), X))
    _refused(llama, directory, "'task_type'")


@pytest.mark.parametrize(
    "indices, needle", [([1, 1], "list token 1 twice"), ("1, 3", "must be a list of token numbers, got str")]
)
def test_trainable_token_indices_peft_cannot_mean(tmp_path, indices, needle):
    directory = _save(
        llama,
        peft.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=[1, 3]),
        tmp_path / "a",
    )
    _round_trip(llama, directory, tmp_path)
    _edit_config(directory, token_indices=indices)
    _refused(llama, directory, "'model.embed_tokens'", needle)
    lora = _save(
        llama,
        peft.LoraConfig(target_modules=["q_proj"], r=4, trainable_token_indices=[1, 3]),
        tmp_path / "lora",
    )
    _edit_config(lora, trainable_token_indices={"embed_tokens": indices})
    _refused(llama, lora, "'model.embed_tokens'", needle)


def test_export_of_some_but_not_all_adapted_biases_is_refused_by_name(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    lines = "(LoRA.adapt_output, r=2): ...->(0){inout1}->...\n(LoRA.adapt_output, r=2): ...->(1){inout1}->..."
    with studio.attach(model, lines + "\ntrainable(0.bias)") as att:
        with pytest.raises(
            ValueError,
            match=r"bias='lora_only' trains the bias of every adapted layer; the "
            r"kept-trainable biases leave out '1.bias'",
        ):
            att.export_peft(tmp_path / "some")
    with studio.attach(model, lines + "\ntrainable(0.bias, 1.bias, 2.bias)") as att:
        att.export_peft(tmp_path / "all")  # every bias: bias="all"
    assert json.loads((tmp_path / "all" / CONFIG).read_text())["bias"] == "all"
    with studio.attach(
        model, "(LoRA.adapt_output, r=2): ...->(0){inout1}->...\ntrainable(0.bias, 2.bias)"
    ) as att:
        with pytest.raises(ValueError, match=r"the kept-trainable '2.bias' is neither"):
            att.export_peft(tmp_path / "mixed")
    assert not (tmp_path / "some").exists() and not (tmp_path / "mixed").exists()


def test_pickled_or_named_adapter_directories_are_explained(tmp_path):
    pm = peft.get_peft_model(tiny(), peft.LoraConfig(target_modules=["lin0"], r=4))
    pm.save_pretrained(tmp_path / "bin", safe_serialization=False)
    _refused(tiny, tmp_path / "bin", "adapter_model.bin", "safe_serialization=True")
    pm = peft.get_peft_model(tiny(), peft.LoraConfig(target_modules=["lin0"], r=4), adapter_name="mine")
    pm.save_pretrained(tmp_path / "named")
    with pytest.raises(FileNotFoundError, match="in a folder of its name: mine"):
        studio.from_peft(tiny(), tmp_path / "named")
    studio.from_peft(tiny(), tmp_path / "named" / "mine")


@pytest.mark.parametrize("pattern", [None, "layers", ["layers"]])
def test_lora_tensors_outside_layers_to_transform_are_refused(tmp_path, pattern):
    config = peft.LoraConfig(
        target_modules=["q_proj", "v_proj"], r=4, layers_to_transform=[1], layers_pattern=pattern
    )
    directory = _save(llama, config, tmp_path / "a")
    _round_trip(llama, directory, tmp_path)
    _edit_config(directory, layers_to_transform=0)  # the file's layer-1 tensors: PEFT would skip them
    _refused(llama, directory, "'model.layers.1.self_attn.q_proj' (layer 1)", "layers_to_transform 0")
    _edit_config(directory, layers_to_transform=[1], layers_pattern="blocks")
    _refused(llama, directory, "no layer number PEFT can read")


def test_config_fields_peft_cannot_load_are_refused(tmp_path):
    directory = _save(tiny, peft.LoraConfig(target_modules=["lin0", "lin1"], r=4), tmp_path / "a")
    _edit_config(directory, lora_alpha=None)
    _refused(tiny, directory, "'lora_alpha' is null")
    _edit_config(directory, lora_alpha=8, modules_to_save=["lin1"])  # PEFT keeps those out of LoRA
    _refused(tiny, directory, "'lin1'", "modules_to_save", modules_to_save=True)


def test_a_variant_setting_the_addin_refuses_names_the_directory(tmp_path):
    from peft.tuners.lora.config import VeloraConfig

    config = peft.LoraConfig(target_modules=["lin0"], r=4, velora_config=VeloraConfig(num_groups=2))
    directory = _save(tiny, config, tmp_path / "a")
    _round_trip(tiny, directory, tmp_path)
    _edit_config(directory, velora_config={"num_groups": 2, "init_type": "foo"})
    message = _refused(tiny, directory, "velora_init must be one of")
    assert message.startswith(str(directory / CONFIG))

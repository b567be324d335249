# %% [markdown]
# # 03 · LoRA on a timm ViT: train, merge, save, load, export to PEFT
#
# LoRA on the attention `qkv` layers of a Vision Transformer, chosen the way PEFT's `target_modules`
# chooses them, trained on the embedded digits, folded into the weights, saved as a small adapter file,
# and exported in PEFT's own format.
#
# Offline, the ViT starts from random weights and sees the 8×8 digits upsampled to 32×32, so the
# accuracies below show the mechanics, not what a pre-trained ViT reaches. With internet access, start
# from ImageNet weights instead (and feed it 224×224 images):
#
# ```python
# vit = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=10)
# ```

# %%
import copy
import json
import os

import matplotlib.pyplot as plt
import timm
import torch

import addin_studio as studio
from addin_studio.sources.data import digits_loaders

torch.manual_seed(0)
vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
train, val = digits_loaders(batch_size=64, image_size=32, channels=3)
images = next(iter(val))[0][:4]
base = copy.deepcopy(vit)  # the untouched "pre-trained" model, for the comparisons at the end
print(studio.summary_line(vit))

# %% [markdown]
# ## The model's modules
#
# Config strings name modules as `print(model)` does. The graph finds the repeated blocks and the
# layers inside one of them:

# %%
graph = studio.trace(vit, images)
print("repeated groups:", graph.repeated_groups())
for node in graph.nodes:
    if node.path.startswith("blocks.0.") and node.is_leaf:
        print(f"({studio.format_path(node.path)}) {node.class_name:9} -> {node.output_shape}")

# %% [markdown]
# ## LoRA via `strategies.lora`
#
# `targets=["qkv"]` matches every module whose path ends in `qkv`, as PEFT's `target_modules` does;
# `trainable=["head"]` keeps the new classifier trainable. The result is a config string:

# %%
cfg = studio.strategies.lora(vit, targets=["qkv"], r=8, alpha=16, trainable=["head"])
print(cfg)
assert studio.parse(str(cfg)) == cfg

# %%
att = studio.attach(vit, cfg, example_input=images)
print(studio.trainable_table(vit))

# %% [markdown]
# ## Train

# %%
trainer = studio.Trainer(vit, train, val, epochs=2, lr=2e-3, seed=0, progress=False, attachment=att)
history = trainer.fit()
metrics = trainer.test()
print(f"Acc@1: {metrics['acc1']:.2f}  Acc@5: {metrics['acc5']:.2f}")

fig, ax = plt.subplots(figsize=(6, 2.5))
ax.plot(history["loss"])
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_title("LoRA on qkv + head")
plt.show()

# %% [markdown]
# ## Merge and unmerge
#
# `merge()` folds `(alpha / r) · B·A` into each `qkv` weight and turns the hooks off, so inference costs
# nothing extra; `unmerge()` takes it out again.

# %%
vit.eval()
with torch.no_grad():
    hooked = vit(images)
    att.merge()
    merged = vit(images)
    att.unmerge()
    unmerged = vit(images)
print("max |merged - hooked|:", (merged - hooked).abs().max().item())
assert torch.allclose(merged, hooked, atol=1e-4) and torch.allclose(unmerged, hooked, atol=1e-5)

# %% [markdown]
# ## Save and load the adapters
#
# `att.save` writes the add-ins' tensors (and the kept-trainable head) to a safetensors file whose
# metadata holds the config string and a fingerprint of the model; `studio.load` re-attaches from the
# file alone.

# %%
att.save("vit-lora.safetensors")
print(f"adapter file: {os.path.getsize('vit-lora.safetensors') / 1e3:.0f} kB "
      f"(the whole model: {sum(p.numel() for p in base.parameters()) * 4 / 1e6:.1f} MB)")
att.detach()

restored = studio.load(vit, "vit-lora.safetensors")
print(restored.config)
with torch.no_grad():
    assert torch.allclose(vit(images), hooked, atol=1e-5)

# %% [markdown]
# ## Export to PEFT
#
# `export_peft` writes `adapter_model.safetensors` and `adapter_config.json` — PEFT's format, with the
# LoRA weights and the head (`modules_to_save`). PEFT loads it onto the untouched base model:

# %%
restored.export_peft("vit-lora-peft")
print(sorted(os.listdir("vit-lora-peft")))
peft_config = json.load(open("vit-lora-peft/adapter_config.json"))
print({k: peft_config[k] for k in ("peft_type", "r", "lora_alpha", "modules_to_save")})
print("target_modules:", peft_config["target_modules"][:3], "...")

# %%
from peft import PeftModel

peft_vit = PeftModel.from_pretrained(copy.deepcopy(base), "vit-lora-peft").eval()
with torch.no_grad():
    assert torch.allclose(peft_vit(images), hooked, atol=1e-5)
print("PEFT computes the same outputs")

# %% [markdown]
# And back: `studio.from_peft` attaches a PEFT LoRA directory to a model.

# %%
restored.detach()
fresh = copy.deepcopy(base).eval()
from_peft = studio.from_peft(fresh, "vit-lora-peft", example_input=images, modules_to_save=["head"])
print(from_peft.config)
with torch.no_grad():
    assert torch.allclose(fresh(images), hooked, atol=1e-5)

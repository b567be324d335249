# %% [markdown]
# # 06 · Your own images: a folder, a pre-trained CNN, clicks, a PEFT adapter
#
# The journey most users come with: *a folder of my images and a pre-trained network — put add-ins on
# it, train them, ship a small adapter.* This notebook does it end to end, offline, in about a minute on
# a CPU:
#
# 1. a folder of PNG images, one sub-folder per class (made here from the digits that ship with
#    scikit-learn: put your own folder in its place);
# 2. a pre-trained timm CNN with a new classifier (`studio.create_model`) and its loaders
#    (`studio.image_folder_loaders`);
# 3. the Studio widget: a strategy, its settings, **Train**, **Save adapters**, **Export PEFT**;
# 4. the adapter loaded back onto a fresh model, with `studio.load` and with PEFT's
#    `PeftModel.from_pretrained`, giving the same outputs;
# 5. the same in three lines of code.
#
# As in notebook 01, the cells marked *"the same from Python"* send the messages the clicks send, so the
# notebook also runs top to bottom on its own.

# %%
import asyncio
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits

import addin_studio as studio

# %% [markdown]
# ## A folder of images
#
# `image_folder_loaders` reads the layout torchvision's `ImageFolder` reads: `DIR/<class>/*.png`
# (optionally `DIR/val/<class>/...` for a fixed validation split). Here the images are the handwritten
# digits 6-9 as 32×32 PNGs, 50 per class. **With your own images**, skip this cell and point `DIR` at
# your folder.

# %%
DIR = Path("my_images")
digits = load_digits()


def write_pngs(root: Path, classes, per_class: int) -> None:
    """Digits as 32x32 RGB PNG files, one sub-folder per class."""
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(digits.images[digits.target == c][:per_class]):
            img = Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((32, 32), Image.BILINEAR)
            img.convert("RGB").save(root / str(c) / f"{i:03d}.png")


write_pngs(DIR, classes=(6, 7, 8, 9), per_class=50)
print({c.name: len(list(c.glob("*.png"))) for c in sorted(DIR.iterdir())})

fig, axes = plt.subplots(1, 8, figsize=(8, 1.2))
for ax, path in zip(axes, sorted(DIR.glob("*/00[01].png"))):
    ax.imshow(Image.open(path))
    ax.set_title(path.parent.name)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## A pre-trained CNN
#
# With internet access this is one line — timm's ImageNet weights, a new 4-class classifier:
#
# ```python
# named = studio.create_model("timm:resnet10t", num_classes=4, pretrained=True)
# ```
#
# Offline there are no published weights, so the next cell makes a stand-in *pre-trained checkpoint*: the
# same network trained for one epoch on **other** classes (the digits 0-5), saved to a safetensors file.
# `create_model(..., weights=FILE)` then loads it the way it loads any local checkpoint: every tensor
# that fits, while the classifier, which has 6 outputs in the file and 4 here, starts new.

# %%
SPEC, SIZE = "timm:resnet10t", 16   # small inputs keep the notebook fast on a CPU
write_pngs(Path("pretrain_images"), classes=range(6), per_class=200)
torch.manual_seed(0)
source = studio.create_model(SPEC, num_classes=6, image_size=SIZE)
pre = studio.image_folder_loaders("pretrain_images", train_transform=source.transforms(False, SIZE),
                                  val_transform=source.transforms(False, SIZE), batch_size=32)
studio.Trainer(source.model, pre.train, pre.val, epochs=1, lr=3e-3, seed=0, progress=False).fit()
save_file(source.model.state_dict(), "resnet10t-digits.safetensors")
CHECKPOINT = "resnet10t-digits.safetensors"

# %%
named = studio.create_model(SPEC, num_classes=4, image_size=SIZE, weights=CHECKPOINT)
model = named.model
print("the classifier:", named.head, model.get_submodule(named.head))
print(studio.summary_line(model))   # all of it trains, before add-ins

# %% [markdown]
# `named.transforms(train)` is the transform the model expects (timm's data config: resize, crop,
# normalize). Training transforms add flips and crops, which would turn a 6 into something else, so both
# splits take the evaluation transform here. Without a `val/` folder, 20 % of each class is held out
# with a fixed seed.

# %%
data = studio.image_folder_loaders(DIR, train_transform=named.transforms(False, SIZE),
                                   val_transform=named.transforms(False, SIZE), batch_size=16)
print(data.classes, f"{data.num_train} training / {data.num_val} validation images")
images, labels = next(iter(data.val))
x = images[:2]   # an example input: the widget traces the model with it

# %% [markdown]
# ## The widget
#
# **Try it:** in the *Strategy* row choose `lora_all` (LoRA on every convolution and linear layer); in
# the add-in list choose `LoRA` and set `r` to 4 in its settings; tick **PEFT layout** (LoRA on a
# convolution in PEFT's layout, which the PEFT export needs) and **update BatchNorm statistics** (the
# statistics follow your images and ship with the adapters); **Apply strategy**. The new classifier
# `fc` should train in full rather than through a LoRA: remove its line (`×`) and add `trainable(fc)`
# in the string field. Then **Train**, **Save adapters** and **Export PEFT**.

# %%
w = studio.Studio(model, example_input=x, train_loader=data.train, val_loader=data.val,
                  epochs=5, lr=3e-3, export_dir="studio_export")
w

# %% [markdown]
# *The same from Python* — each `handle` call is the message a click sends:

# %%
if not w.config:  # skip if you set it up by clicking
    w.handle({"type": "addin", "name": "LoRA"})
    w.handle({"type": "setting", "name": "r", "value": "4"})
    w.handle({"type": "setting", "name": "layout", "value": "peft"})   # the "PEFT layout" box
    w.handle({"type": "strategy", "name": "lora_all"})                   # preview
    w.handle({"type": "apply-strategy", "name": "lora_all"})
    w.handle({"type": "running-stats", "value": True})                   # "update BatchNorm statistics"
    fc_line = next(i for i, e in enumerate(w.entries) if "(fc)" in e["text"])
    w.handle({"type": "remove", "index": fc_line})                       # the x on the fc line
    w.handle({"type": "apply", "text": w.config + "\ntrainable(fc)"})    # typed into the field
assert not w.error, w.error
print(w.config)
print(w.params)

# %% [markdown]
# ## Train
#
# **Train** runs the Trainer in a background thread of the kernel; the plot updates live. *The same from
# Python:* start it, then wait without blocking the kernel.

# %%
w.handle({"type": "train"})
while w.state == "training":
    await asyncio.sleep(0.25)
print(w.status)
print("val Acc@1 per epoch:", [round(a, 1) for a in w.history["val_acc1"]])

# %% [markdown]
# ## Save adapters, export PEFT
#
# **Save adapters** writes `studio_export/adapters.safetensors` (the add-ins, the trained classifier,
# the BatchNorm statistics and the config string); **Export PEFT** writes `studio_export/peft/` in
# PEFT's own format.

# %%
w.handle({"type": "save-adapters"})
print(w.status)
w.handle({"type": "export-peft"})
print(w.status)
for path in sorted(Path("studio_export").rglob("*.*")):
    print(f"{path}  {path.stat().st_size / 1e3:.0f} kB")
print(f"the checkpoint itself: {os.path.getsize(CHECKPOINT) / 1e6:.1f} MB")

# %% [markdown]
# ## Load it back, as a new session would
#
# A fresh model from the same checkpoint (its classifier is new and random again), the adapters loaded
# with `studio.load`, and — separately — PEFT loading its folder onto another fresh model. Both compute
# what the trained model computes:

# %%
model.eval()
with torch.no_grad():
    trained = model(images)

fresh = studio.create_model(SPEC, num_classes=4, image_size=SIZE, weights=CHECKPOINT).model.eval()
att = studio.load(fresh, "studio_export/adapters.safetensors")
with torch.no_grad():
    reloaded = fresh(images)
print("studio.load:   max |difference| =", (reloaded - trained).abs().max().item())

from peft import PeftModel

base = studio.create_model(SPEC, num_classes=4, image_size=SIZE, weights=CHECKPOINT).model
peft_model = PeftModel.from_pretrained(base, "studio_export/peft").eval()
with torch.no_grad():
    from_peft = peft_model(images)
print("PEFT:          max |difference| =", (from_peft - trained).abs().max().item())
assert torch.allclose(reloaded, trained, atol=1e-5) and torch.allclose(from_peft, trained, atol=1e-5)
print("val Acc@1 of the reloaded model:", (reloaded.argmax(1) == labels).float().mean().item() * 100)

# %% [markdown]
# ## The same in three lines of code
#
# For those who prefer code: the strategy gives the config, the Trainer trains it, the attachment saves
# and exports it (on a fresh model from the same checkpoint):

# %%
model2 = studio.create_model(SPEC, num_classes=4, image_size=SIZE, weights=CHECKPOINT).model

cfg = studio.strategies.lora(model2, r".*(conv|downsample).*", r=4, alpha=None, layout="peft",
                             trainable=["fc"]).with_running_stats(["*"])
att2 = studio.attach(model2, cfg, example_input=x)
studio.Trainer(model2, data.train, data.val, epochs=5, lr=3e-3, seed=0, progress=False).fit()
att2.save("adapters.safetensors")
att2.export_peft("peft")

# %% [markdown]
# The strategy made the same config as the clicks (`alpha=None` is `lora_all`'s scale 1):

# %%
print(cfg == studio.parse(w.config))
print(studio.summary_line(model2))

# %% [markdown]
# Next: `07_language_model.ipynb` — a pre-trained language model with LoRA, prefix tuning and IA³.

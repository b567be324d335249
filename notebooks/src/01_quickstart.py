# %% [markdown]
# # 01 · Quickstart: the Studio widget
#
# Place an add-in on a model by clicking its graph, copy the config string that the clicks write, and
# train inline — in a couple of minutes on a CPU, with nothing downloaded (the data are the 1,797 digits
# that ship with scikit-learn).
#
# Run the cells one by one in JupyterLab (or on Binder). The cells marked *"the same from Python"* do
# what the clicks do, so that the notebook also runs top to bottom on its own.

# %%
import asyncio

import torch

import addin_studio as studio
from addin_studio.sources.data import digits_loaders
from addin_studio.examples import MLPAddin, TutorialMLP

torch.manual_seed(0)
train, val = digits_loaders(batch_size=64)   # 8x8 digits: a seeded 80/20 split
x = next(iter(val))[0][:2]                   # an example input: the widget traces the model with it
model = TutorialMLP()                        # fc1 -> ReLU -> fc2 -> ReLU -> fc3
print(model)

# %% [markdown]
# ## The widget
#
# Modules are drawn in execution order with their output shapes and parameter counts; the small circles
# above and below each module are the **insertion points** (before it, after it).
#
# **Try it:** keep the add-in `MLPAddin`, pick the method `adapt_across_input`, click the point
# **after `fc1`**, then the point **before `fc3`**. The string under the graph becomes
# `(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...` — the add-in reads fc1's
# output and adds its result to fc3's input. **Copy** puts the string on the clipboard. Clicking the same
# point twice makes an `{inout}` placement instead.

# %%
w = studio.Studio(model, example_input=x, addins={"MLPAddin": MLPAddin},
                  train_loader=train, val_loader=val, epochs=4, lr=3e-3)
w

# %% [markdown]
# *The same from Python* — each `handle` call is the message a click sends:

# %%
if not w.config:  # skip if you placed it by clicking
    w.handle({"type": "addin", "name": "MLPAddin"})
    w.handle({"type": "method", "name": "adapt_across_input"})
    w.handle({"type": "point", "point": "fc1:post"})   # click: after fc1 -> {in1}
    w.handle({"type": "point", "point": "fc3:pre"})    # click: before fc3 -> {out1}
print(w.config)
print(w.params)

# %% [markdown]
# ## Paste a string
#
# The field under the string takes a config string (Enter applies it). A string that cannot work is
# refused with an error that points at the mistake, and the widget keeps the last good config. The
# tutorial's `(MLPAddin.adapt_input): ...->(fc2){inout1}->...` is such a string: `(fc2){inout1}` is
# *after* `fc2`, where a method is called with `(module, inputs, outputs)`.

# %%
good = w.config
w.config = "(MLPAddin.adapt_input): ...->(fc2){inout1}->..."   # the same as pasting it
print(w.error)
assert w.config == good

# %% [markdown]
# ## Train inline
#
# **Train** runs the Trainer in a background thread of the kernel: the loss plot updates live, other
# cells keep working, **Stop** ends the run after the current step. When the run ends a static picture
# of the plot is added below the widget, so a saved notebook keeps it.
#
# *The same from Python:* start it, then wait without blocking the kernel (`await asyncio.sleep` lets the
# widget's updates through).

# %%
w.handle({"type": "train"})
while w.state == "training":
    await asyncio.sleep(0.25)
print(w.status)
print("val Acc@1 per epoch:", [round(a, 2) for a in w.history["val_acc1"]])

# %% [markdown]
# ## Edit after training, compare runs, export
#
# Edits keep what was trained: adding a placement leaves the trained add-in as it is (the status line
# says which add-ins were kept, built new or re-initialised). The *Settings* form edits an add-in's
# settings, the *Strategy* picker fills the whole config (`lora_all`, `lora`, `bitfit`, `head_only`),
# the search field finds a module. A second run is overlaid on the first in the plot and listed under
# *Runs* (click one to get its string back); while training, each placement is coloured by how much
# its add-in changes. The *Export* buttons save the adapters, write a PEFT folder, or copy Python code.
#
# *The same from Python:*

# %%
w.handle({"type": "method", "name": "adapt_output"})
w.handle({"type": "point", "point": "fc2:post"})
w.handle({"type": "point", "point": "fc2:post"})   # the same point twice: an {inout} after fc2
print(w.status)                                     # the trained add-in at fc3 was kept
w.handle({"type": "train"})
while w.state == "training":
    await asyncio.sleep(0.25)
for run in w.run_history:
    print(f"run {run['n']}: val Acc@1 {run['metrics']['val_acc1'][-1]:.2f}%  "
          f"{len(run['config'].splitlines())} placement line(s)")
print(w.grad_table)                                 # update norm per add-in at the end of the run
w.handle({"type": "copy-code"})
print(w.code)

# %% [markdown]
# ## Use the results
#
# The widget changed `model` in place: `w.attachment` is the live attachment (base frozen, add-in
# trained), so the model can be evaluated, saved or detached like any other.

# %%
metrics = studio.Trainer(model, train, val, progress=False).test()
print(studio.summary_line(model))
print(f"Acc@1: {metrics['acc1']:.2f}  Acc@5: {metrics['acc5']:.2f}")
w.attachment.save("quickstart.safetensors")   # the add-in's weights and the config string

# %% [markdown]
# The copied string reproduces the set-up on any other copy of the model, in a script or elsewhere:

# %%
other = TutorialMLP()
with studio.attach(other, w.config, addins={"MLPAddin": MLPAddin}, example_input=x) as att:
    print(att.config)
    print(studio.summary_line(other))

# %% [markdown]
# Next: `02_config_strings.ipynb` (the string syntax, with every example of ZhiJian's tutorial),
# `03_lora_vit.ipynb` (LoRA on a ViT), `04_gift_strategies.ipynb` (strategies),
# `05_custom_addins.ipynb` (your own add-ins).

# %% [markdown]
# # 02 · Config strings: ZhiJian's "Customize Pre-trained Models" tutorial, redone
#
# ZhiJian's tutorial takes a three-layer MLP, writes an add-in `MLPAddin(AddinBase)` with four hook
# methods, and places it with one-line config strings such as
# `(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...`.
# This notebook runs **every example string of that tutorial** with Addin Studio: each one is shown as a
# graph, attached to a pre-trained MLP, trained briefly on the digits embedded in scikit-learn (nothing is
# downloaded), and reported with ZhiJian's "Trainable/total parameters" line and Acc@1 / Acc@5.
#
# The whole notebook runs in well under a minute on two CPU cores.

# %%
import torch
from torch import nn
from IPython.display import SVG, display

import addin_studio as studio
from addin_studio.sources.data import digits_loaders
from addin_studio.render import chain, graph_svg

torch.manual_seed(0)

# %% [markdown]
# ## The custom model
#
# The tutorial's MLP, sized for the 8×8 digits (64 inputs) instead of 224×224 images. It is the same as
# `addin_studio.examples.TutorialMLP`.


# %%
class MLP(nn.Module):
    """fc1 -> ReLU -> fc2 -> ReLU -> fc3."""

    def __init__(self, in_features: int = 64, hidden: int = 256, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


model = MLP()
print(model)

# %% [markdown]
# ## Pre-train it, and pick a new task
#
# "Pre-trained" here means: trained on the upright digits. The new task is the same digits **rotated by
# 90°**, which the pre-trained model reads badly. The add-ins will adapt the frozen model to it.

# %%
upright_train, upright_val = digits_loaders(batch_size=64)
train, val = digits_loaders(batch_size=64, transform="rot90")
x = next(iter(val))[0][:2]  # an example input: the engine traces shapes and execution order with it

pretrain = studio.Trainer(model, upright_train, upright_val, epochs=8, lr=3e-3, seed=0, progress=False)
pretrain.fit()
print("pre-trained, upright digits:", pretrain.test())
print("pre-trained, rotated digits:", studio.Trainer(model, train, val, progress=False).test())
before = {k: v.clone() for k, v in model.state_dict().items()}

# %% [markdown]
# ## The add-in
#
# The tutorial's `MLPAddin`: a bottleneck `Linear(d, 16) -> ReLU -> Linear(16, d)` with the four hook
# methods. ZhiJian passes the sizes through `model_config`; here the engine hands the add-in a `PointInfo`
# with the feature shape at its point (`source_point` for the `{in}` point of a cross-layer placement),
# so one class fits wherever it is placed.


# %%
class MLPAddin(studio.AddinBase):
    def __init__(self, point, source_point=None, reduction_dim=16, output_size=None):
        super().__init__()
        reads = source_point or point              # the feature the add-in reads
        embed_dim = reads.shape[-1]
        self.fc1 = nn.Linear(embed_dim, reduction_dim)
        self.fc2 = nn.Linear(reduction_dim, output_size or point.shape[-1])

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def adapt_input(self, module, inputs):               # before a module: replaces its input
        return self.forward(inputs[0])

    def adapt_output(self, module, inputs, outputs):     # after a module: replaces its output
        return self.forward(outputs)

    def adapt_across_input(self, module, inputs):        # {in} ... {out} before a module
        return inputs[0] + self.forward(self.inputs_cache)

    def adapt_across_output(self, module, inputs, outputs):  # {in} ... {out} after a module
        return outputs + self.forward(self.inputs_cache)


ADDINS = {"MLPAddin": MLPAddin}
print("methods valid before a module:", studio.methods_for(MLPAddin, "pre"))
print("methods valid after a module: ", studio.methods_for(MLPAddin, "post"))

# %% [markdown]
# ## The model as a graph
#
# `studio.trace` runs one forward pass and records every module's path, class, output shape, parameter
# count and execution order. The paths are the names `print(model)` shows — the names config strings use.

# %%
graph = studio.trace(model, x)
for node in graph.executed():
    print(f"{node.order}: ({node.path}) {node.class_name:8} -> {node.output_shape}  {node.num_params:,} params")


# %%
def show(text):
    """Parse a string, print it canonically with its placements and full chain, and draw it."""
    cfg = studio.parse(text)
    print("string:   ", text)
    print("canonical:", cfg)
    for p in cfg.placements:
        print(f"  {p.addin}.{p.method}: reads {p.source}, writes {p.target} ({p.kind})")
    print("chain:    ", chain(cfg, graph))  # the string's `...` written out
    display(SVG(graph_svg(graph, cfg)))
    return cfg


# %% [markdown]
# ## Adapt with each example string
#
# For each string: draw it, attach it (the base model is frozen; only the add-in trains), train 4 epochs
# on the rotated digits, print the tutorial's parameter line and the accuracies, then **detach** — which
# puts the model back exactly as it was, so the next example starts from the same pre-trained weights.

# %%
results = {}


def run(text, base=model, epochs=4):
    cfg = show(text)
    torch.manual_seed(0)
    with studio.attach(base, cfg, addins=ADDINS, example_input=x) as att:
        print(studio.summary_line(base))
        trainer = studio.Trainer(base, train, val, epochs=epochs, lr=3e-3, seed=0, progress=False,
                                 attachment=att)
        trainer.fit()
        metrics = trainer.test()
    print(f"Acc@1: {metrics['acc1']:.2f}  Acc@5: {metrics['acc5']:.2f}")
    results[str(cfg)] = metrics
    return metrics


# %% [markdown]
# ### Inter-layer insertion `{inout}`
#
# `{inout1}(fc2)`: the point *before* `fc2`. `adapt_input` reads fc2's input and its return value
# replaces it, so the original features no longer enter `fc2` — they all pass through the 16-wide
# bottleneck.

# %%
run("(MLPAddin.adapt_input): ...->{inout1}(fc2)->...")

# %% [markdown]
# `(fc1){inout1}`: the point *after* `fc1`; `adapt_output` replaces fc1's output (the tutorial's
# "performed after `fc1`").

# %%
run("(MLPAddin.adapt_output): ...->(fc1){inout1}->...")

# %% [markdown]
# ### A teaching moment: the tutorial's second figure
#
# The tutorial also draws `(MLPAddin.adapt_input): ...->(fc2){inout1}->...`. The point `(fc2){inout1}` is
# *after* `fc2`, where a hook is called as `method(module, inputs, outputs)`; `adapt_input(self, module,
# inputs)` cannot take that call. In ZhiJian this fails in the middle of the first forward pass. Addin
# Studio checks every signature **at attach time**, raises a `ConfigError` that points at the mistake and
# suggests the methods that fit, and leaves the model untouched:

# %%
bad = "(MLPAddin.adapt_input): ...->(fc2){inout1}->..."
try:
    studio.attach(model, bad, addins=ADDINS, example_input=x)
except studio.ConfigError as err:
    print(err)
    error = err
assert "cannot run at fc2:post" in str(error)
assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched

# %% [markdown]
# The fix the hint suggests: `adapt_output` after `fc2`.

# %%
run("(MLPAddin.adapt_output): ...->(fc2){inout1}->...")

# %% [markdown]
# ### Cross-layer concatenation `{in}` … `{out}`
#
# The feature at `{in1}` is stored in the add-in's `inputs_cache`; at `{out1}` the method runs and adds
# the add-in's output to the feature there (a residual connection that skips layers).

# %%
run("(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{out1}(fc3)->...")

# %%
run("(MLPAddin.adapt_across_input): ...->{in1}(fc2)->{out1}(fc3)->...")

# %% [markdown]
# The tutorial also writes cross-layer placements as two `in` labels, `{in1}`…`{in2}`; its printed
# result (`'hook': [['get_pre', 'pre'], ['adapt_across_output', 'post']]`) shows it means in-then-out.
# Addin Studio accepts that spelling and writes it canonically with `{out1}`:

# %%
run("(MLPAddin.adapt_across_input): ...->(fc1){in1}->...->{in2}(fc3)->...")

# %%
run("(MLPAddin.adapt_across_output): ...->{in1}(fc2){in2}->...")

# %%
run("(MLPAddin.adapt_across_output): ...->(fc1){in1}->(fc2){in2}->...")

# %% [markdown]
# ## Beyond the tutorial
#
# **Settings** in the string reach the add-in's constructor, and `trainable(...)` keeps base parameters
# trainable, so a copied string reproduces the whole set-up. This run trains `fc3` itself, so it works
# on a copy of the pre-trained model:

# %%
import copy

run("(MLPAddin.adapt_output, reduction_dim=4): ...->(fc1){inout1}->...\ntrainable(fc3)",
    base=copy.deepcopy(model))

# %% [markdown]
# **Mistakes are errors with a caret**, not silently ignored as in ZhiJian:

# %%
for text in ["(MLPAddin.adapt_output): ...->(fc4){inout1}->...",      # no such module
             "(MLPAddin.adapt_across_output): ...->(fc1){in1}->...",  # {in1} without {out1}
             "(MLPAddin.adapt_across_input): ...->{in1}(fc3)->...->{out1}(fc1)->..."]:  # out before in
    try:
        studio.attach(model, text, addins=ADDINS, example_input=x)
    except studio.ConfigError as err:
        print(err, end="\n\n")
    else:
        raise AssertionError(f"expected a ConfigError for {text!r}")

# %% [markdown]
# ## Summary
#
# Every add-in was detached after its run, so the pre-trained model is bit-identical to before:

# %%
assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
print(f"{'config':72} {'Acc@1':>6} {'Acc@5':>6}")
for text, m in results.items():
    print(f"{text.replace(chr(10), ' | '):72} {m['acc1']:6.2f} {m['acc5']:6.2f}")

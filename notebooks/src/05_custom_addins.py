# %% [markdown]
# # 05 · Custom add-ins, cross-layer links on a ViT, and the built-ins
#
# An add-in is an `nn.Module` (a subclass of `studio.AddinBase`) whose methods run at the points a
# config string names. This notebook writes one, links the blocks of a ViT with it across layers
# (`{in}` … `{out}`), and compares it with the built-in VPT, SSF, Adapter and AdaptFormer.
#
# Offline the ViT has random weights, a small depth and 32×32 inputs so that every run takes seconds;
# with internet access use `timm.create_model("vit_base_patch16_224", pretrained=True, num_classes=10)`.

# %%
import timm
import torch
from torch import nn

import addin_studio as studio
from addin_studio.sources.data import digits_loaders

torch.manual_seed(0)


def make_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                             img_size=32, patch_size=8, depth=6)


vit = make_vit()
train, val = digits_loaders(batch_size=64, image_size=32, channels=3)
images = next(iter(val))[0][:4]
print(studio.summary_line(vit), "| blocks:", studio.trace(vit, images).repeated_groups())

# %% [markdown]
# ## Writing an add-in
#
# The engine calls the constructor with the arguments it accepts: `point` (a `PointInfo` with the
# module path, side and feature `shape` there), `source_point` (the `{in}` point of a cross-layer
# placement) and the settings written in the string. The methods follow ZhiJian's signatures:
# `method(module, inputs)` before a module, `method(module, inputs, outputs)` after it. During an
# `{in}`…`{out}` placement the feature read at `{in}` waits in `self.inputs_cache`.
#
# `GatedLink` adds a projected copy of a feature, scaled by a learnable gate that starts at zero — so the
# model is unchanged at attach, and training decides how much of the link to use.


# %%
class GatedLink(studio.AddinBase):
    def __init__(self, point, source_point=None, width: int = 32):
        super().__init__()
        d_in = (source_point or point).shape[-1]
        self.proj = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, point.shape[-1]))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.gate * self.proj(x)

    def adapt_output(self, module, inputs, outputs):              # {inout} after a module
        return outputs + self.forward(outputs)

    def adapt_across_output(self, module, inputs, outputs):       # {in} ... {out} after a module
        return outputs + self.forward(self.inputs_cache)


ADDINS = {"GatedLink": GatedLink}
print("before a module:", studio.methods_for(GatedLink, "pre"))
print("after a module: ", studio.methods_for(GatedLink, "post"))

# %% [markdown]
# ## Cross-layer links on a ViT
#
# Ranges advance together: `(blocks[0:4]){in1}` … `(blocks[2:6]){out1}` is four placements, each reading
# block *i*'s output and adding to block *i+2*'s. The settings go in the header.

# %%
text = "(GatedLink.adapt_across_output, width=16): ...->(blocks[0:4]){in1}->...->(blocks[2:6]){out1}->..."
cfg = studio.parse(text)
for p in cfg.placements:
    print(f"{p.source} -> {p.target}  {p.settings}")
print(cfg)

# %% [markdown]
# `{in}` must run before `{out}`; the engine checks that against the traced execution order before it
# changes anything:

# %%
try:
    studio.attach(vit, "(GatedLink.adapt_across_output): ...->(blocks[3]){in1}->...->(blocks[1]){out1}->...",
                  addins=ADDINS, example_input=images)
except studio.ConfigError as err:
    print(err)

# %% [markdown]
# Attached, the model computes exactly what it did (the gates are zero) until it is trained:

# %%
vit.eval()
with torch.no_grad():
    before = vit(images)
    att = studio.attach(vit, cfg.with_trainable(["head"]), addins=ADDINS, example_input=images)
    assert torch.equal(vit(images), before)
print(studio.trainable_table(vit).splitlines()[-1])
att.detach()

# %% [markdown]
# ## The built-ins, side by side
#
# Each config below trains its add-ins and the classifier head for one epoch on the digits, on the same
# frozen ViT. Several entries can share one string (one per line). From random weights and one epoch the
# accuracies are low and close together: they show that every set-up trains and what it costs in
# parameters, not which method is best — that needs pre-trained weights.

# %%
CONFIGS = {
    "GatedLink (custom)": text,
    "VPT (deep, 5 tokens)": "(VPT.adapt_input, num_tokens=5): ...->{inout1}(blocks[0:6])->...",
    "SSF (qkv, fc1)": "(SSF.adapt_output): ...->(blocks[0:6].attn.qkv){inout1}->...\n"
                      "(SSF.adapt_output): ...->(blocks[0:6].mlp.fc1){inout1}->...",
    "Adapter": "(Adapter.adapt_output, bottleneck=16): ...->(blocks[0:6].mlp){inout1}->...",
    "AdaptFormer": "(AdaptFormer.adapt_across_output, bottleneck=16): ...->{in1}(blocks[0:6].mlp){out1}->...",
    "head only": "",
}
results = {}
for name, text in CONFIGS.items():
    cfg = studio.parse(text).with_trainable(["head"])
    model = make_vit()
    att = studio.attach(model, cfg, addins=ADDINS, example_input=images)
    trainable, total = studio.count_parameters(model)
    trainer = studio.Trainer(model, train, val, epochs=1, lr=3e-3, seed=0, progress=False, attachment=att)
    trainer.fit()
    m = trainer.test()
    results[name] = (trainable, m["acc1"], m["acc5"])
    print(f"{name:22} trainable {trainable:7,} / {total:,}  Acc@1 {m['acc1']:6.2f}  Acc@5 {m['acc5']:6.2f}")
    att.detach()

# %% [markdown]
# ## Mixing add-ins in one string
#
# SSF on every `qkv` and an Adapter after every MLP, with the head trainable — one string, which is what
# you copy to reproduce the set-up elsewhere:

# %%
mixed = """
(SSF.adapt_output): ...->(blocks[0:6].attn.qkv){inout1}->...
(Adapter.adapt_output, bottleneck=8): ...->(blocks[0:6].mlp){inout1}->...
trainable(head)
"""
model = make_vit()
with studio.attach(model, mixed, example_input=images) as att:
    print(att.config)
    print(studio.summary_line(model))
    print(sorted({type(a).__name__ for a in att.addins.values()}))

# %% [markdown]
# A method that cannot run at its point is caught at attach time — VPT inserts tokens *before* a block
# and has no `adapt_output`:

# %%
try:
    studio.attach(model, "(VPT.adapt_output): ...->(blocks[0]){inout1}->...", example_input=images)
except studio.ConfigError as err:
    print(err)

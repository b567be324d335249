# %% [markdown]
# # 04 · Strategies: GIFt's notebook, redone
#
# GIFt (Generic and Intuitive Fine-tuning) fine-tunes a network with *capabilities*: check-and-action pairs for
# modules and checks for parameters, applied while walking the model. Its README ends with LoRA on every
# convolution and linear layer of a resnet18: **11,689,512 → 75,063 trainable parameters**.
#
# Addin Studio's `studio.strategies` keeps that model — first match wins, unmatched parameters are frozen —
# but a strategy does not rewrite the network: it returns a **config** (the string you can read, draw and
# copy), and `studio.attach` puts it on with hooks that `detach()` takes off again.
#
# Everything here runs offline: `resnet18(weights=None)` has random weights
# (with internet: `resnet18(weights="IMAGENET1K_V1")`).

# %%
import pickle

import torch
from torch import nn
from torchvision.models import resnet18

import addin_studio as studio
from addin_studio.sources.data import digits_loaders
from addin_studio.strategies import Strategy, place

torch.manual_seed(0)

# %% [markdown]
# ## Iterating over the modules
#
# GIFt's `ModuleIterator` yields each module's name, global name, class and whether it has children.
# The same walk in Addin Studio is the module graph: `studio.trace` lists every named submodule with its
# dotted path (the name config strings use), class, depth, children and the parameters it owns.


# %%
class TestNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.nn_seq = nn.Sequential(nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


net = TestNet()
graph = studio.trace(net)  # no forward needed (TestNet has none): paths, classes, parameters
for node in graph.nodes:
    print(f"{'  ' * (node.depth - 1) + node.name:10} {node.path:10} {node.class_name:10} "
          f"children={bool(node.children)!s:5} own={node.own_params}")

# %% [markdown]
# ## Capabilities
#
# A `Strategy` holds **module capabilities** (`check(info) -> bool`, `action(info) -> Claim`) and
# **parameter capabilities** (`check(info) -> bool`, `train`). Walking the model parents-first:
#
# - the first module capability whose check matches *claims* the module: its action returns placements
#   (e.g. `place("LoRA", r=3)`: LoRA after this module) and its children are not visited;
# - the own parameters of unclaimed modules go to the parameter capabilities: the first match decides
#   whether the parameter trains; **unmatched parameters are frozen**.
#
# The ready-made strategies, applied to `TestNet` — each result is a config string:

# %%
for name in ["lora_all", "bitfit", "head_only", "full"]:
    cfg = getattr(studio.strategies, name)(net)
    print(f"--- strategies.{name}(net)\n{cfg}\n")

# %% [markdown]
# ## A custom strategy
#
# LoRA (rank 4) on the convolutions only, and the last layer `nn_seq.2` kept fully trainable. The
# checks see a `ModuleInfo` (`path`, `name`, `module`, `parent`, `class_name`) or a `ParamInfo`
# (`owner`, `name`, `path`, `param`):

# %%
mine = (Strategy(name="conv-lora+last")
        .register_module_cap(lambda m: isinstance(m.module, nn.Conv2d), place("LoRA", r=4))
        .register_param_cap(lambda p: p.path.startswith("nn_seq.2."), pattern="nn_seq.2"))
cfg = mine(net)
print(cfg)
with studio.attach(net, cfg):
    print(studio.trainable_table(net))

# %% [markdown]
# Strategies combine with `+` (GIFt's `merger_strategy`): the left one's capabilities are tried first.

# %%
both = mine + Strategy(name="biases").register_param_cap(lambda p: p.name == "bias", pattern="*.bias")
print(both(net))

# %% [markdown]
# ## LoRA-all on resnet18: 11,689,512 → 75,063
#
# GIFt's LoRA on every `Conv` and `Linear` layer with rank 3. Convolutions use the "balanced"
# factorization: the kernel `[out, in, k0, k1]` is seen as a matrix `[out·k0, in·k1]`, `B` is
# `[out·k0, r]` (zeros) and `A` is `[r, in·k1]`.

# %%
resnet = resnet18(weights=None)
print("before:", studio.count_parameters(resnet))
cfg = studio.strategies.lora_all(resnet, r=3)
print(f"{len(cfg.placements)} LoRA placements, e.g.\n" + "\n".join(str(cfg).splitlines()[:3]) + "\n...")
att = studio.attach(resnet, cfg)
trainable, total = studio.count_parameters(resnet)
print(f"after: {trainable:,} trainable of {total:,}")
assert studio.count_parameters(resnet) == (75_063, 11_689_512 + 75_063)

# %%
print(studio.trainable_table(resnet))

# %% [markdown]
# `B` starts at zero, so the network computes exactly what it did before, and `detach()` restores the
# original model.

# %%
x = torch.randn(2, 3, 64, 64)
resnet.eval()
with torch.no_grad():
    with_lora = resnet(x)
    att.detach()
    without = resnet(x)
assert torch.equal(with_lora, without)
assert studio.count_parameters(resnet) == (11_689_512, 11_689_512)
print("LoRA-all starts as the identity; detach() restores all 11,689,512 trainable parameters")

# %% [markdown]
# ## Train it on the embedded digits
#
# A 10-class resnet18 on the digits upsampled to 32×32 RGB. A strategy in one line: LoRA on every
# convolution, and the new classifier `fc` trained in full.

# %%
train, val = digits_loaders(batch_size=64, image_size=32, channels=3)
model = resnet18(weights=None, num_classes=10)
strategy = (Strategy(name="conv-lora+fc")
            .register_module_cap(lambda m: isinstance(m.module, nn.Conv2d), place("LoRA", r=3))
            .register_param_cap(lambda p: p.path.startswith("fc."), pattern="fc"))
cfg = strategy(model)
att = studio.attach(model, cfg, example_input=next(iter(val))[0][:2])
print(studio.summary_line(model))
trainer = studio.Trainer(model, train, val, epochs=2, lr=3e-3, seed=0, progress=False, attachment=att)
history = trainer.fit()
metrics = trainer.test()
print(f"Acc@1: {metrics['acc1']:.2f}  Acc@5: {metrics['acc5']:.2f}")

# %% [markdown]
# ## GIFt's rough edges, smoothed
#
# - **Pickling**: GIFt's lambdas make a fine-tuned model unpicklable; Addin Studio's hooks are objects.
# - **Enabling twice** fails in GIFt; here attach, detach and attach again.
# - **Saving**: `att.save` writes only the add-ins (and kept-trainable parameters), with the config string.

# %%
clone = pickle.loads(pickle.dumps(model))
model.eval()
clone.eval()
with torch.no_grad():
    assert torch.allclose(clone(x[:, :, :32, :32]), model(x[:, :, :32, :32]))

att.save("resnet18-lora.safetensors")
att.detach()
again = studio.load(model, "resnet18-lora.safetensors")
print(again.config.trainable, len(again.config.placements), "placements re-attached from the file")
with torch.no_grad():
    assert torch.allclose(model(x[:, :, :32, :32]), clone(x[:, :, :32, :32]), atol=1e-5)
again.detach()

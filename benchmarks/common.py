"""Shared benchmark harness: interleaved arms, medians, ratios, memory probes and the Row type.

Contract for every ``benchmarks/bench_*.py`` (``benchmarks/run.py`` collects them):

    def run(quick: bool = False) -> list[Row]: ...

``quick=True`` must finish in a few seconds (tiny N, small inputs): the smoke test runs it. Timing rows
are *ratios* of arms measured in the same run with :func:`interleave` (round-robin, warm-up, median of
N), because the machine is shared and absolute seconds mean nothing across runs. A row's ``target`` is an
upper bound (``value <= target`` passes); ``None`` marks a row printed for information.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2


@dataclass
class Row:
    """One line of the results table.

    ``value`` is a ratio (``unit="x"``) or, for the few absolute targets the issue sets, a quantity in
    ``unit`` ("ms", "MB", "us/module", ...). ``detail`` carries the arms' medians so a reader can see
    what the ratio is made of.
    """

    name: str
    value: float | None
    target: float | None = None
    unit: str = "x"
    detail: str = ""
    source: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        """True/False against the target; None for information rows and failed measurements."""
        if self.target is None or self.value is None or self.error:
            return None
        return self.value <= self.target

    @property
    def status(self) -> str:
        if self.error:
            return "ERROR"
        if self.value is None:
            return "missing"
        return {True: "pass", False: "FAIL", None: "info"}[self.passed]

    def formatted_value(self) -> str:
        if self.value is None:
            return "-"
        if self.unit == "x":
            return f"{self.value:.3f}"
        if not self.unit:
            return f"{self.value:.2f}"
        return f"{_num(self.value)} {self.unit}"

    def formatted_target(self) -> str:
        if self.target is None:
            return "-"
        return f"<= {self.target:g}" + ("" if self.unit in ("x", "") else f" {self.unit}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def setup_torch(threads: int = THREADS) -> None:
    """Pin torch to ``threads`` intra-op threads (the issue's CPU setting), deterministic seed."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    torch.manual_seed(0)


# -- timing --------------------------------------------------------------------------------------
def interleave(arms: Mapping[str, Callable[[], Any]], n: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time every arm ``n`` times, round-robin, after ``warmup`` untimed rounds.

    The order rotates each round (round ``i`` starts at arm ``i % k``) so that no arm always runs
    right after the same neighbour (caches, turbo, a noisy co-tenant). Returns seconds per call.
    """
    names = list(arms)
    if not names:
        raise ValueError("interleave() needs at least one arm")
    if n < 1:
        raise ValueError(f"interleave() needs n >= 1, got {n}")
    for _ in range(warmup):
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection landing inside one arm's timing is pure noise
    try:
        for i in range(n):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                arms[name]()
                times[name].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(times: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median of ``num`` over median of ``den``."""
    return median(times[num]) / median(times[den])


def paired_ratio(times: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median of the per-round ratios ``num[i] / den[i]`` (rounds are adjacent in time, so slow
    phases of a shared machine cancel out)."""
    return median([a / b for a, b in zip(times[num], times[den])])


def describe(times: Mapping[str, list[float]], scale: float = 1e3, unit: str = "ms") -> str:
    """``"ours 812 ms, peft 845 ms (median of 7)"``."""
    n = min(len(v) for v in times.values())
    parts = [f"{name} {_num(median(v) * scale)} {unit}" for name, v in times.items()]
    return ", ".join(parts) + f" (median of {n})"


# -- memory --------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_json_subprocess(module: str, args: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m module *args`` in a fresh interpreter and parse the last stdout line as JSON.

    A fresh process gives each memory arm its own peak-RSS high-water mark.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(THREADS))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"python -m {module} {' '.join(args)} printed nothing")
    return json.loads(lines[-1])


# -- machine -------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """CPU model, cores, threads used and library versions, for the report."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        info["memory"] = f"{total_kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    for lib in ("timm", "peft", "torchinfo"):
        try:
            info[lib] = __import__(lib).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not listed
            info[lib] = "not installed"
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        info["commit"] = commit
    return info


def growth_exponent(n_small: int, t_small: float, n_large: int, t_large: float) -> float:
    """``log(t_large / t_small) / log(n_large / n_small)``: 1.0 is linear growth, 2.0 quadratic."""
    return math.log(t_large / t_small) / math.log(n_large / n_small)


def print_rows(rows: list[Row]) -> None:
    """Print rows as a plain table (for running one bench_*.py on its own)."""
    from .report import text_table

    print(text_table(rows))


# -- models shared by several benchmarks ----------------------------------------------------------
LORA_STRING = "(LoRA.adapt_output, r=8, alpha=16): ...->(blocks[0:12].attn.qkv){inout1}->..."


def lora_config(model: Any) -> Any:
    """LoRA r=8, alpha=16 on every ``qkv``: ``studio.strategies.lora`` when it exists, else the
    equivalent config string (a ViT with 12 blocks)."""
    import addin_studio as studio

    try:
        lora = studio.strategies.lora
    except (AttributeError, ImportError):
        return LORA_STRING
    return lora(model, targets=["qkv"], r=8, alpha=16)


def peft_lora(model: Any) -> Any:
    """The same LoRA with Hugging Face PEFT (``target_modules=["qkv"]``), wrapping ``model``."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["qkv"]))


def vit(name: str = "vit_small_patch16_224", **kwargs: Any) -> Any:
    """A timm model with random weights (``pretrained=False``: nothing is downloaded)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def vit_train_batch(quick: bool, batch: int = 8) -> tuple[Any, Any, Any]:
    """``(model, x, y)``: vit_small in train mode (2 blocks at 64 px in quick mode) and a random batch."""
    import torch

    kwargs = {"img_size": 64, "depth": 2} if quick else {}
    model = vit("vit_small_patch16_224", **kwargs).train()
    size = model.patch_embed.img_size[0]
    batch = 2 if quick else batch
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, model.num_classes, (batch,))
    return model, x, y


def train_step(model: Any, x: Any, y: Any, params: Any = None) -> Callable[[], None]:
    """One AdamW train step (forward, cross-entropy, backward, step) over ``params`` (default: the
    parameters that require grad), as a callable for :func:`interleave`."""
    import torch

    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def same_lora_weights(att, peft) -> None:
    """Give both LoRA arms the same random A and B (B is zero at attach, a no-op update)."""
    import torch

    torch.manual_seed(1)
    base = peft.base_model.model
    with torch.no_grad():
        for _, placement, addin in att.entries:
            addin.lora_B.normal_(0, 0.02)
            layer = base.get_submodule(placement.target.module)
            layer.lora_A["default"].weight.copy_(addin.lora_A)
            layer.lora_B["default"].weight.copy_(addin.lora_B)

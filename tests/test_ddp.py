"""DDP on CPU (gloo, 2 processes on 127.0.0.1 via torchrun) trains the same add-ins as one process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from addin_studio import AddinBase
from addin_studio.scale import distributed as D

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: one rank's final line of ``addin-studio train``
ACC_LINE = re.compile(r"Acc@1 \S+\s+Acc@5 \S+\s+loss \S+?(?=Acc@1|\s|$)")


def _run(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# failures of the machine, not of the code under test, that a second run does not repeat: a port taken
# between choosing and binding it, and a rank's C++ abort in gloo's teardown at exit (seen about once in
# ten 2-rank FSDP runs on the shared 2-core machine, after the work was done)
_RETRIED = ("address already in use", "terminate called without an active exception")


def _torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Two processes on 127.0.0.1; a run that fails for one of the ``_RETRIED`` reasons runs once more
    (and must then pass in full)."""
    for attempt in (1, 2):
        try:
            return _run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node",
                    "2",
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    str(_free_port()),
                    *args,
                ],
                timeout,
            )
        except AssertionError as exc:
            if attempt == 2 or not any(reason in str(exc).lower() for reason in _RETRIED):
                raise


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# the one real reason not to run the torchrun tests: this torch build cannot run two CPU ranks
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _train_single_and_ddp(out: Path, *flags: str) -> None:
    _run([sys.executable, str(WORKER), str(out / "single"), *flags])
    _torchrun(str(WORKER), str(out / "ddp"), *flags)


def _history(run: Path) -> dict:
    return json.loads((run / "history.json").read_text())


def _assert_same_training(out: Path) -> None:
    single_run, ddp_run = _history(out / "single"), _history(out / "ddp")
    assert (single_run["steps"], single_run["world"], ddp_run["steps"], ddp_run["world"]) == (16, 1, 16, 2)
    initial, _ = _load(out / "single" / "initial.safetensors")
    ddp_initial, _ = _load(out / "ddp" / "initial.safetensors")
    single, meta_single = _load(out / "single" / "adapters.safetensors")
    ddp, meta_ddp = _load(out / "ddp" / "adapters.safetensors")

    assert meta_single["config"] == meta_ddp["config"]
    assert sorted(single) == sorted(ddp) == sorted(initial)
    assert len(single) == 8  # two MLPAddins, each fc1/fc2 weight and bias
    for k in initial:
        assert torch.equal(initial[k], ddp_initial[k]), k
    # training moved every add-in tensor, and DDP moved it the same way
    assert min(float((single[k] - initial[k]).abs().max()) for k in single) > 1e-3
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=0, atol=1e-6, msg=k)
    # the DDP checkpoint re-attaches to a fresh model by itself
    import addin_studio as studio
    from addin_studio.examples import MLPAddin, TutorialMLP

    att = studio.load(
        TutorialMLP(64, 32, 10),
        out / "ddp" / "adapters.safetensors",
        addins={"MLPAddin": MLPAddin},
        example_input=torch.zeros(1, 64),
    )
    assert str(att.config) == meta_ddp["config"] and len(att.entries) == 2


@pytest.mark.slow  # torchrun with two gloo ranks (and a one-process run): process start-up dominates
@needs_gloo
def test_two_rank_ddp_by_hand_trains_the_same_adapters_as_one_process(tmp_path):
    """wrap_model + SamplerEpoch around an unmodified Trainer."""
    _train_single_and_ddp(tmp_path, "--manual")
    _assert_same_training(tmp_path)


@pytest.mark.slow  # torchrun with two gloo ranks (and a one-process run): process start-up dominates
@needs_gloo
def test_trainer_under_torchrun_trains_the_same_adapters_as_one_process(tmp_path):
    """The Trainer wraps the model, reshuffles the sampler, averages the epoch loss over ranks and
    writes its best-epoch checkpoint on rank 0 only."""
    _train_single_and_ddp(tmp_path)
    _assert_same_training(tmp_path)
    # the epoch loss is averaged over both ranks: the whole data set, as in one process
    single_loss = _history(tmp_path / "single")["train_loss"]
    assert _history(tmp_path / "ddp")["train_loss"] == pytest.approx(single_loss, rel=1e-6)
    assert (tmp_path / "ddp" / "checkpoints-rank0" / "best.safetensors").is_file()
    assert not (tmp_path / "ddp" / "checkpoints-rank1").exists()


def test_helpers_without_a_process_group():
    assert not dist.is_initialized()
    assert (D.is_distributed(), D.get_rank(), D.get_world_size(), D.is_main_process()) == (False, 0, 1, True)
    assert D.all_reduce_mean(2.5, weight=3) == 2.5
    assert D.rank_zero_only(lambda x: x + 1)(1) == 2
    with pytest.raises(RuntimeError, match="init_distributed"):
        D.wrap_model(nn.Linear(2, 2))


def test_init_distributed_without_torchrun_env_does_nothing(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert D.init_distributed() is False
    assert not dist.is_initialized()


def test_distributed_loader_and_unwrap_without_a_process_group():
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4)
    assert D.distributed_loader(loader) is loader
    with pytest.raises(TypeError, match="DataLoader"):
        D.distributed_loader([1, 2, 3])
    model = nn.Linear(2, 2)
    assert D.unwrap_model(model) is model


def test_two_shards_of_half_batches_cover_each_full_batch():
    """The data split the DDP test relies on: per step, rank 0's and rank 1's batches of 4 together
    are exactly the one-process batch of 8 (same shuffled permutation per epoch)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    data = TensorDataset(torch.arange(64))

    def batches(world: int, rank: int, epoch: int) -> list[set[int]]:
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(epoch)
        return [set(b[0].tolist()) for b in DataLoader(data, batch_size=8 // world, sampler=sampler)]

    for epoch in (0, 1):
        full = batches(1, 0, epoch)
        assert [a | b for a, b in zip(batches(2, 0, epoch), batches(2, 1, epoch))] == full
    assert batches(1, 0, 0) != batches(1, 0, 1)  # reshuffled between epochs


@pytest.fixture
def one_rank_group():
    """A real gloo process group with one rank, in this process."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class _Scale(AddinBase):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class _WithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)  # never called in forward

    def forward(self, x):
        return self.body(x)


def test_wrap_model_and_loader_in_a_process_group(one_rank_group):
    import addin_studio as studio
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    assert D.is_distributed() and D.get_world_size() == 1 and D.init_distributed() is True
    torch.manual_seed(0)
    model = _WithSpare()
    with pytest.raises(ValueError, match="requires_grad"):
        D.wrap_model(model.requires_grad_(False))
    model.requires_grad_(True)
    x = torch.randn(3, 4)
    att = studio.attach(
        model, "(Scale.adapt_output): ...->(body){inout1}->...", addins={"Scale": _Scale}, example_input=x
    )
    ddp = D.wrap_model(model, attachment=att)
    assert D.unwrap_model(ddp) is model and D.wrap_model(ddp) is ddp
    assert not ddp.find_unused_parameters
    # only trainable parameters are synchronized: DDP registered exactly the requires_grad ones
    assert [p for p in ddp.parameters() if p.requires_grad] == list(att.addins.parameters())
    ddp(x).sum().backward()
    assert att.addins["Scale_body"].scale.grad is not None
    att.detach()

    with pytest.raises(studio.ConfigError, match="'spare' .* never runs as a module"):
        studio.attach(
            model,
            "(Scale.adapt_output): ...->(spare){inout1}->...",
            addins={"Scale": _Scale},
            example_input=x,
        )
    # without an example input nobody knows whether every add-in runs: DDP must look for unused ones
    spare = studio.attach(model, "(Scale.adapt_output): ...->(spare){inout1}->...", addins={"Scale": _Scale})
    assert D.wrap_model(model, attachment=spare).find_unused_parameters
    spare.detach()

    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4, shuffle=True)
    dl = D.distributed_loader(loader)
    assert isinstance(dl.sampler, DistributedSampler) and dl.sampler.shuffle and dl.batch_size == 4
    assert D.distributed_loader(dl) is dl
    assert sorted(float(x) for b in dl for x in b[0]) == [float(i) for i in range(10)]
    assert D.all_reduce_mean(3.0, weight=2) == 3.0


@pytest.mark.slow  # torchrun with two gloo ranks: process start-up dominates
@needs_gloo
def test_cli_train_under_torchrun(tmp_path):
    proc = _torchrun(
        "-m",
        "addin_studio.app.cli",
        "train",
        "--model",
        "timm:resnet10t",
        "--config",
        "(LoRA.adapt_output, r=2): ...->(layer4[0].conv1){inout1}->...",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
        "--out",
        str(tmp_path / "out"),
        timeout=180,
    )
    # the ranks' unbuffered prints may share a line: find each result, not each line
    results = ACC_LINE.findall(proc.stdout)
    assert len(results) == 2 and results[0] == results[1]  # both ranks hold the same synchronized model
    assert proc.stdout.count("wrote ") == 3  # rank 0 only
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written >= {"adapters.safetensors", "loss.png", "report.html"}
    assert (tmp_path / "out" / "checkpoints" / "best.safetensors").is_file()

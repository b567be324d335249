import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(2)

# CI runs the property tests with thousands of examples; locally a quicker profile is the default.
settings.register_profile(
    "ci", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def kernel_of_this_python(tmp_path_factory):
    """Kernels started by the tests (nbclient, ``jupyter lab``) run on the interpreter running the tests.

    Jupyter resolves the kernel name ``python3`` through its kernelspec path, where a user-level spec
    (``~/.local/share/jupyter/kernels/python3``, common on laptops) can point at another environment. A spec
    ``python3`` with ``sys.executable`` goes first on ``JUPYTER_PATH`` (searched before every other place,
    by this process and the subprocesses it starts) for the session; the variable is restored afterwards.
    """
    root = tmp_path_factory.mktemp("jupyter-path")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "metadata": {"debugger": True},
            }
        ),
        encoding="utf-8",
    )
    previous = os.environ.get("JUPYTER_PATH")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(root)] + ([previous] if previous else [])))
        yield spec


@pytest.fixture
def mlp():
    from addin_studio.examples import TutorialMLP

    torch.manual_seed(0)
    return TutorialMLP(in_features=64, hidden=32, num_classes=10)


@pytest.fixture
def make_image_folder():
    """Builds a tiny image folder (one sub-folder per class of PNGs whose colour depends on the class)."""
    from pathlib import Path

    def make(root, classes=("a", "b"), per_class=4, size=16, seed=0, mode="RGB"):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        for c, name in enumerate(classes):
            folder = Path(root) / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros((size, size, 3)) + 255.0 * (c + 1) / (len(classes) + 1)
                pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype("uint8")
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
        return Path(root)

    return make


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models run ~5x faster than with threads fighting busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def digits_batch():
    torch.manual_seed(1)
    return torch.randn(4, 64)


def _global_state() -> dict:
    """Process-wide state a test could leak into the tests that run after it."""
    import torch._dynamo.config as dynamo_config

    from addin_studio.addins.registry import available_addins

    return {
        "default dtype": torch.get_default_dtype(),
        "torch threads": torch.get_num_threads(),
        "grad mode": torch.is_grad_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "working directory": os.getcwd(),
        "add-in registry": sorted(available_addins()),
        "torch._dynamo.config": dynamo_config.get_config_copy(),
    }


@pytest.fixture(autouse=True)
def _no_leaked_global_state():
    """Fail a test that leaves global state changed (and restore it, so the next test starts clean).

    Tests that need another value use the owner's scoped mechanism (``torch._dynamo.config.patch``,
    ``monkeypatch.chdir``, ...), which undoes itself.
    """
    before = _global_state()
    yield
    after = _global_state()
    leaked = [k for k in before if before[k] != after[k]]
    if not leaked:
        return
    import torch._dynamo.config as dynamo_config

    changed_cfg = sorted(
        k
        for k, v in before["torch._dynamo.config"].items()
        if after["torch._dynamo.config"].get(k, object()) != v
    )
    torch.set_default_dtype(before["default dtype"])
    torch.set_num_threads(before["torch threads"])
    torch.set_grad_enabled(before["grad mode"])
    torch.use_deterministic_algorithms(before["deterministic algorithms"])
    os.chdir(before["working directory"])
    from addin_studio.addins import registry

    for name in set(registry._REGISTRY) - set(before["add-in registry"]):
        del registry._REGISTRY[name]
    dynamo_config.load_config(before["torch._dynamo.config"])
    detail = f" (torch._dynamo.config: {', '.join(changed_cfg)})" if changed_cfg else ""
    pytest.fail(
        f"the test leaked global state: {', '.join(leaked)}{detail}; restore it with a scoped mechanism",
        pytrace=False,
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """pytest-randomly shuffles the tests; print its seed even under -q so an order failure reruns."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(
            f"tests ran in random order, seed {seed} (rerun that order with --randomly-seed={seed})"
        )

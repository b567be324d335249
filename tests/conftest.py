import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(2)

# CI runs the property tests with thousands of examples; locally a quicker profile is the default.
settings.register_profile("ci", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def mlp():
    from addin_studio.examples import TutorialMLP

    torch.manual_seed(0)
    return TutorialMLP(in_features=64, hidden=32, num_classes=10)


@pytest.fixture
def digits_batch():
    torch.manual_seed(1)
    return torch.randn(4, 64)

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on a 2-core machine: one thread each, so that they share
    # the cores instead of both spinning on both (subprocesses the tests start keep torch's default).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def images():
    return torch.randn(4, 3, 32, 32)


@pytest.fixture
def targets():
    return torch.tensor([0, 1, 2, 3])

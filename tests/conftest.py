import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def images():
    return torch.randn(4, 3, 32, 32)


@pytest.fixture
def targets():
    return torch.tensor([0, 1, 2, 3])

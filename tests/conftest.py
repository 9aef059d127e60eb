import os
import signal

import pytest
import torch

# The suite Ctrl-C's itself and its children: launched from a script in the background (`nohup ... &`
# without job control) it inherits SIGINT ignored, which Python and every child it starts keep.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


# The longest files first: `make test`'s two workers take a file at a time in this order, so that
# no long file starts last beside an idle worker (within a file the order stays as written).
LONGEST_FIRST = ["test_reproduce.py", "test_tune.py", "test_dvc.py", "test_distributed.py", "test_resume.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)

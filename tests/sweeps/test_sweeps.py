"""The black-box sweeps of the `ffl` command line as a marked suite: every case of
tests/sweeps/adversarial.py (a hostile user) and tests/sweeps/careless.py (a careless one) is a
test. `make test-adversarial` (or `pytest -m adversarial tests/sweeps`) runs them; `make test`
does not (about 25 minutes on 2 cores). Each module also runs as a script that writes its
results table (tests/sweeps/results/)."""

import pytest

from tests.sweeps import adversarial, careless

pytestmark = pytest.mark.adversarial


@pytest.fixture(scope="module", autouse=True)
def _starting_points():
    """The sweep's starting points (a prepared dataset, a trained model, a repository) are built
    once, by the first case that needs each, and removed after the last."""
    yield
    for ctx in adversarial.FIXTURES.ctxs:
        ctx.cleanup()


@pytest.mark.parametrize("case", adversarial.CASES, ids=lambda c: c.name)
def test_a_hostile_user(case):  # tests/sweeps/adversarial.py
    result = adversarial.run_case(case, keep=False)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.passed, "; ".join(result.why)


@pytest.fixture(scope="module")
def careless_session():
    session = careless.Session()
    yield session
    session.close()


@pytest.mark.parametrize("case", list(careless.CASES.values()), ids=lambda c: c.name)
def test_a_careless_user(case, careless_session):  # tests/sweeps/careless.py
    outcome = careless_session.run(case)
    assert outcome.ok, "; ".join(outcome.problems)

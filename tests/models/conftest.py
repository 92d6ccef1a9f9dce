"""Model tests: torch runs on one thread (the machine's cores are shared; the numbers the tests
compare do not depend on it). torch is imported by the fixture, not at collection."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    torch = pytest.importorskip("torch")

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

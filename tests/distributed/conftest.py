"""What every distributed test module shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The parent's reference runs use one thread, as the workers do: on a busy machine torch's
    thread pool spins against the other processes (seconds instead of a fraction of one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

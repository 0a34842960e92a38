"""The vision backend tests run tiny models whose every op is microseconds of work: on a
small shared machine, torch's intra-op threads spin against each other and against other
processes and make them 50x slower. One thread is the right size for them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared by the policy tests: tiny models run fastest, and steadiest next to other processes,
with one intra-op thread (two thrash on a shared 2-core CPU)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny float64 ops run faster on one thread, and avoid spin contention on a 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

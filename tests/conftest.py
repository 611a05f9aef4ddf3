"""Fixtures every test folder may ask for (`pytestmark = pytest.mark.usefixtures(...)`)."""
import pytest


@pytest.fixture
def torch_threads_restored():
    """Puts torch's thread count back after a test whose run sets the suite's count in this process."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread(torch_threads_restored):
    """One torch thread: the same reductions in every run of a test, so bitwise comparisons hold."""
    import torch

    torch.set_num_threads(1)

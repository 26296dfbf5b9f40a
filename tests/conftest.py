import os
from pathlib import Path

import pytest
import torch

from cnnlab.core.env import DATA_ENV, data_root

# The data sets where `make test` finds them (the Makefile's CNNLAB_DATA default), read through
# cnnlab's one resolver, as the commands under test read them.
os.environ.setdefault(DATA_ENV, str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
DATA_ROOT = data_root()[0]

# Under pytest-xdist (`make test` runs two workers), each worker computes with one thread, and
# so do the commands it starts: two workers of two OpenMP threads each on two cores would make
# every op wait at a barrier (see `one_torch_thread`).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache; each session gets its own. Session-wide: a module's
    fixture that trains runs before any function-scoped fixture does."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-batch tests: on a shared 2-core machine, with two
    OpenMP threads a busy neighbour makes every op wait at a barrier (measured 10x slower);
    one thread is steady and repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data_dir(name: str) -> Path:
    """A real data set under CNNLAB_DATA, or skip the test with the reason."""
    path = DATA_ROOT / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (set CNNLAB_DATA)")
    return path

import pytest
import torch

import lcattn

HAS_CUDA = torch.cuda.is_available() and lcattn.cuda_kernels_built()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    # Every test marked `cuda` needs a GPU and the CUDA kernels built.
    if not HAS_CUDA:
        skip = pytest.mark.skip(reason="needs a CUDA GPU and build")
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def fresh_seed():
    # Fresh random inputs every run; the seed is printed on failure to replay it.
    seed = torch.seed() % (2**31)
    torch.manual_seed(seed)
    yield seed

import pytest
import torch

import lcattn

HAS_CUDA = torch.cuda.is_available() and lcattn.cuda_kernels_built()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and build")])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def fresh_seed():
    # Fresh random inputs every run; the seed is printed on failure to replay it.
    seed = torch.seed() % (2**31)
    torch.manual_seed(seed)
    yield seed

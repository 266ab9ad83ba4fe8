import os

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
def fresh_seed(request):
    # Fresh random inputs every run; a failure's report shows the seed, LCATTN_SEED=<seed> replays it.
    replay = os.environ.get("LCATTN_SEED")
    seed = int(replay) if replay else torch.seed() % (2**31)
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    seed = dict(item.user_properties).get("seed")
    if report.failed and seed is not None:
        report.sections.append(("seed", f"LCATTN_SEED={seed} python -m pytest '{item.nodeid}'"))

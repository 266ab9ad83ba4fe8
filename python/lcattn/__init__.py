"""lcattn: DeepSeek-V4 long-context attention and MoE ops, called as torch.ops.lcattn.*."""
import glob
import os

import torch


def _load_extension():
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")))
    if not found:
        raise ImportError(f"[lcattn] the compiled extension lcattn/_C*.so is missing under {here}: "
                          "install the package with `pip install --no-build-isolation .`")
    rebuild = "rebuild it against this torch with `pip install --no-build-isolation .`"
    try:
        torch.ops.load_library(found[0])
    except OSError as err:
        raise ImportError(f"[lcattn] cannot load {found[0]} with torch {torch.__version__} ({err}); it was likely "
                          f"built against another torch: {rebuild}") from err
    built = torch.ops.lcattn._built_with_torch()
    if built not in ("unknown", torch.__version__):
        raise ImportError(f"[lcattn] {found[0]} was built against torch {built}, but torch {torch.__version__} "
                          f"is installed: {rebuild}")


_load_extension()

from lcattn import ops, reference  # noqa: E402

__all__ = ["ops", "reference", "cuda_kernels_built"]


def cuda_kernels_built() -> bool:
    """True when this build registered the CUDA implementations."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("lcattn::sparse_attn", "CUDA")

"""Builds the lcattn torch extension: CUDA kernels for sm_90a when torch has CUDA, else CPU only.

LCATTN_CUDA=1 makes a missing CUDA toolchain an error, LCATTN_CUDA=0 builds CPU only.
CUTLASS/CuTe headers come from the nvidia-cutlass wheel or CUTLASS_DIR.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cutlass_includes():
    root = os.environ.get("CUTLASS_DIR")
    if root is None:
        try:
            import cutlass_library
        except ImportError:
            return []
        root = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    return [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]


def with_cuda():
    want = os.environ.get("LCATTN_CUDA", "")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if want == "0":
        return False
    if not available:
        why = "torch has no CUDA" if torch.version.cuda is None else "no CUDA toolkit found (set CUDA_HOME)"
        if want == "1":
            raise RuntimeError(f"[lcattn] LCATTN_CUDA=1 but {why}")
        print(f"\n[lcattn] building the CPU-only extension: {why}\n", flush=True)
    return available


def extension():
    sources = sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/torch/*.cpp"))
    includes = [os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc/kernels")]
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if not with_cuda():
        return CppExtension("lcattn._C", sources, include_dirs=includes, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"], py_limited_api=True)
    cutlass = cutlass_includes()
    if not cutlass:
        raise RuntimeError("[lcattn] the CUDA build needs the CUTLASS headers: pip install --no-deps "
                           "nvidia-cutlass==4.2.0.0, or set CUTLASS_DIR to a CUTLASS checkout (or LCATTN_CUDA=0)")
    # -DNDEBUG: CUTLASS's device asserts would split its wgmma pipelines across calls (ptxas C7510).
    nvcc = ["-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr",
            "-DLCATTN_WITH_CUDA", "-DNDEBUG", "-lineinfo"]
    return CUDAExtension("lcattn._C", sources + sorted(glob.glob("csrc/kernels/*.cu")),
                         include_dirs=includes + cutlass,
                         extra_compile_args={"cxx": cxx + ["-DLCATTN_WITH_CUDA"], "nvcc": nvcc},
                         extra_link_args=["-fopenmp"], py_limited_api=True)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)

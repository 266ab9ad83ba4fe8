"""Builds the lcattn torch extension against the installed torch: CUDA kernels for sm_90a when torch
has CUDA and a CUDA toolkit is found, else CPU only (said loudly).

    pip install --no-build-isolation .

LCATTN_CUDA=1 makes a missing CUDA toolchain an error, LCATTN_CUDA=0 builds CPU only. The toolkit is
CUDA_HOME, else CUDA_PATH, else the one of the nvcc on PATH, else /usr/local/cuda: the first that has
bin/nvcc and include/cuda_runtime_api.h. CUTLASS/CuTe headers come from the nvidia-cutlass wheel or
CUTLASS_DIR.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

try:
    import torch
except ImportError:
    sys.exit("[lcattn] setup.py builds against the installed torch, and none is importable here. Install "
             "torch (e.g. pip install torch==2.11.0), then build with: pip install --no-build-isolation .")
if "pip-build-env" in torch.__file__:
    sys.exit(f"[lcattn] pip is building in an isolated environment, with torch {torch.__version__} fetched for "
             "the build; the extension must be built against the torch it will run with. Build with: "
             "pip install --no-build-isolation .")

import torch.utils.cpp_extension as cpp_extension  # noqa: E402

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


def cuda_toolkit():
    """The first candidate toolkit with nvcc and the runtime headers (a wrapper nvcc on PATH, say in
    /usr/local/bin, makes torch guess /usr/local, which has no headers)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None, "/usr/local/cuda"]
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return None


def with_cuda():
    want = os.environ.get("LCATTN_CUDA", "")
    if want == "0":
        return False
    home = cuda_toolkit() if torch.version.cuda is not None else None
    if home is None:
        why = ("torch has no CUDA" if torch.version.cuda is None else
               "no CUDA toolkit with bin/nvcc and include/cuda_runtime_api.h found (set CUDA_HOME)")
        if want == "1":
            raise RuntimeError(f"[lcattn] LCATTN_CUDA=1 but {why}")
        print(f"\n[lcattn] building the CPU-only extension: {why}\n", file=sys.stderr, flush=True)
        return False
    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home  # torch's build helpers read this module global
    print(f"\n[lcattn] building the CUDA kernels (sm_90a) with the toolkit in {home}\n", file=sys.stderr, flush=True)
    return True


def cxx_standard():
    """The C++ standard the installed torch's headers require (C++17 up to torch 2.11, C++20 after)."""
    header = os.path.join(os.path.dirname(torch.__file__), "include", "c10", "util", "C++17.h")
    try:
        text = open(header).read()
    except OSError:
        text = ""
    return "c++20" if "202002L" in text else "c++17"


def extension():
    sources = sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/torch/*.cpp"))
    includes = [os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc/kernels")]
    std = f"-std={cxx_standard()}"
    # The torch this is built against, checked when lcattn is imported.
    built_with = f"-DLCATTN_TORCH_VERSION=\"{torch.__version__}\""
    cxx = ["-O3", std, "-fopenmp", built_with]
    if not with_cuda():
        return cpp_extension.CppExtension("lcattn._C", sources, include_dirs=includes,
                                          extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
                                          py_limited_api=True)
    cutlass = cutlass_includes()
    if not cutlass:
        raise RuntimeError("[lcattn] the CUDA build needs the CUTLASS headers: pip install --no-deps "
                           "nvidia-cutlass==4.2.0.0, or set CUTLASS_DIR to a CUTLASS checkout (or LCATTN_CUDA=0)")
    # -DNDEBUG: CUTLASS's device asserts would split its wgmma pipelines across calls (ptxas C7510).
    nvcc = ["-O3", std, "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr",
            "-DLCATTN_WITH_CUDA", "-DNDEBUG", "-lineinfo"]
    return cpp_extension.CUDAExtension("lcattn._C", sources + sorted(glob.glob("csrc/kernels/*.cu")),
                                       include_dirs=includes + cutlass,
                                       extra_compile_args={"cxx": cxx + ["-DLCATTN_WITH_CUDA"], "nvcc": nvcc},
                                       extra_link_args=["-fopenmp"], py_limited_api=True)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
